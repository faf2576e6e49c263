"""The bounded per-route queues: each overflow policy, fairness, requeue, wake-ups."""

from __future__ import annotations

import threading
import time

from broker._envelope import Envelope, Metric
from broker._inlet import Inlet


def envs(n: int, start: int = 0) -> list[Envelope]:
    return [
        Envelope(source="s", body=Metric(module="m", name="n", value=float(i)))
        for i in range(start, start + n)
    ]


def values(batch: list[Envelope]) -> list[float]:
    return [e.body.value for e in batch]  # type: ignore[union-attr]


def test_drop_newest_refuses_what_does_not_fit() -> None:
    inlet = Inlet("t")
    result = inlet.offer("r", envs(15), capacity=10, policy="drop_newest")
    assert result.accepted == 10
    assert [values([e])[0] for e, _ in result.dropped] == [float(i) for i in range(10, 15)]
    assert {reason for _, reason in result.dropped} == {"queue_full"}
    route, batch = inlet.take() or ("", [])
    assert route == "r" and values(batch) == [float(i) for i in range(10)]


def test_drop_oldest_keeps_the_latest() -> None:
    inlet = Inlet("t")
    result = inlet.offer("r", envs(15), capacity=10, policy="drop_oldest")
    assert result.accepted == 15 and len(result.dropped) == 5
    assert values([e for e, _ in result.dropped]) == [0.0, 1.0, 2.0, 3.0, 4.0]
    _, batch = inlet.take() or ("", [])
    assert values(batch) == [float(i) for i in range(5, 15)]


def test_block_hands_the_rest_back_and_loses_nothing_as_room_is_made() -> None:
    inlet = Inlet("t")
    got: list[float] = []
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set() or inlet.pending():
            item = inlet.take(limit=3)
            if item is None:
                time.sleep(0.001)
                continue
            got.extend(values(item[1]))
            inlet.done(item[0], len(item[1]))

    worker = threading.Thread(target=consume)
    worker.start()
    rest, accepted, handed_back = envs(200), 0, 0
    while rest:  # what the router does: offer, and on a hand-back wait for room
        room = threading.Event()
        inlet.when_room(room.set)
        result = inlet.offer("r", rest, capacity=5, policy="block")
        assert not result.dropped
        accepted += result.accepted
        handed_back += bool(result.waiting)
        rest = result.waiting
        if rest:
            assert room.wait(5)
    stop.set()
    worker.join(5)
    assert accepted == 200 and handed_back > 0
    assert got == [float(i) for i in range(200)]


def test_routes_are_served_round_robin() -> None:
    inlet = Inlet("t")
    inlet.offer("a", envs(4), 100, "drop_newest")
    inlet.offer("b", envs(4, 100), 100, "drop_newest")
    order = []
    while (item := inlet.take(limit=2)) is not None:
        order.append(item[0])
        inlet.done(item[0], len(item[1]))
    assert order == ["a", "b", "a", "b"]


def test_requeue_puts_a_batch_back_in_front() -> None:
    inlet = Inlet("t")
    inlet.offer("r", envs(6), 100, "drop_newest")
    _, batch = inlet.take(limit=3) or ("", [])
    assert inlet.pending() == 6  # 3 queued + 3 in flight
    inlet.requeue("r", batch)
    _, again = inlet.take(limit=10) or ("", [])
    assert values(again) == [float(i) for i in range(6)]


def test_waker_called_once_per_idle_period() -> None:
    inlet = Inlet("t")
    calls: list[int] = []
    inlet.attach(lambda: calls.append(1))
    inlet.offer("r", envs(3), 100, "drop_newest")
    inlet.offer("r", envs(3), 100, "drop_newest")
    assert len(calls) == 1
    while inlet.take() is not None:
        pass
    inlet.offer("r", envs(1), 100, "drop_newest")
    assert len(calls) == 2


def test_a_failing_waker_keeps_the_data() -> None:
    inlet = Inlet("t")

    def gone() -> None:
        raise RuntimeError("loop finished")

    inlet.attach(gone)
    result = inlet.offer("r", envs(3), 100, "drop_newest")
    assert result.accepted == 3 and inlet.pending() == 3
    calls: list[int] = []
    inlet.attach(lambda: calls.append(1))  # a restarted adapter is woken for what waits
    assert calls == [1]


def test_block_hands_back_what_did_not_fit_without_waiting() -> None:
    inlet = Inlet("t", block_timeout_s=60)  # a wait would outlast the test run
    result = inlet.offer("r", envs(15), capacity=10, policy="block")
    assert result.accepted == 10 and result.dropped == []
    assert values(result.waiting) == [float(i) for i in range(10, 15)]
    assert inlet.depth("r") == 10


def test_when_room_calls_its_waiter_once_from_the_taking_thread() -> None:
    inlet = Inlet("t")
    inlet.offer("r", envs(10), capacity=10, policy="block")
    calls: list[str] = []
    inlet.when_room(lambda: calls.append(threading.current_thread().name))
    taker = threading.Thread(target=lambda: inlet.take(4), name="taker")
    taker.start()
    taker.join()
    inlet.take(4)
    assert calls == ["taker"]
    inlet.when_room(lambda: calls.append("forgotten"))
    inlet.when_room(None)
    inlet.take(4)
    assert calls == ["taker"]


def test_what_the_adapter_took_is_owed_until_it_reports_it() -> None:
    inlet = Inlet("t")
    inlet.offer("r", envs(6), capacity=10, policy="drop_newest")
    route, batch = inlet.take() or ("", [])
    inlet.defer(route, batch[:2])  # acknowledged later by the peer
    inlet.report(route, batch[2:3])  # failed during the call
    sent = inlet.settle_batch(route, batch)
    assert values(sent) == [3.0, 4.0, 5.0]  # neither deferred nor reported
    assert inlet.settle_batch(route, batch) == []  # settled once only
    inlet.report(route, batch[:1])  # the peer acknowledged one of the deferred
    assert {r: values(e) for r, e in inlet.release_owed().items()} == {"r": [1.0]}
    assert inlet.release_owed() == {}
    assert inlet.route_pending("r") == 6  # the router still has to count all six


def test_one_envelope_on_two_routes_is_owed_once_per_route() -> None:
    inlet = Inlet("t")
    [env] = envs(1)
    inlet.offer("a", [env], capacity=10, policy="drop_newest")
    inlet.offer("b", [env], capacity=10, policy="drop_newest")
    first = inlet.take()
    assert first is not None
    inlet.defer(first[0], first[1])
    assert inlet.settle_batch(*first) == []  # a's copy: its peer acknowledges later
    second = inlet.take()
    assert second is not None and second[0] != first[0]
    assert inlet.settle_batch(*second) == [env]  # b's copy is sent
    assert inlet.release_owed() == {first[0]: [env]}  # a's is still owed


def test_only_the_batch_being_delivered_can_be_deferred() -> None:
    inlet = Inlet("t")
    inlet.offer("r", envs(3), capacity=10, policy="drop_newest")
    [stranger] = envs(1, start=9)
    route, batch = inlet.take() or ("", [])
    inlet.defer(route, [stranger])  # never handed out: nothing to owe
    assert inlet.settle_batch(route, batch) == batch
    assert inlet.release_owed() == {}
