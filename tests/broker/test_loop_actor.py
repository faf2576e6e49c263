"""A pykka actor served on the shared loop: messages in order on the loop's thread, asks
from other threads, errors back to the asker, a flood that lets other tasks run, a wait
that does not block the loop, and a clean end by stop or by the loop closing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest
import trio

from broker._loop import SharedLoop
from broker._loop_actor import BURST, LoopActor
from tests.conftest import wait_until


class Recorder(LoopActor):
    """Keeps what it is told; answers "seen?" with it; "boom" raises; "hold" waits."""

    #: the instances started, newest last (the test reads their state)
    started: list[Recorder] = []

    def __init__(self, loop: SharedLoop) -> None:
        super().__init__(loop=loop)
        Recorder.started.append(self)
        self.seen: list[Any] = []
        self.on_loop: list[bool] = []
        self.holding = False
        self.release = threading.Event()

    def on_receive(self, message: Any) -> Any:
        assert self.loop is not None
        self.on_loop.append(self.loop.on_loop_thread())
        if message == "seen?":
            return list(self.seen)
        if message == "boom":
            raise ValueError("boom")
        if message == "hold":
            self.holding = True
        self.seen.append(message)
        return None

    def blocked(self) -> bool:
        return self.holding

    async def wait_unblocked(self) -> None:
        while not self.release.is_set():
            await trio.sleep(0.005)
        self.holding = False


@pytest.fixture
def loop() -> Iterator[SharedLoop]:
    loop = SharedLoop("test-loop")
    loop.start()
    yield loop
    loop.close()


def test_messages_from_several_threads_are_handled_in_order_on_the_loop(
    loop: SharedLoop,
) -> None:
    ref = Recorder.start(loop)
    senders = [
        threading.Thread(target=lambda k=k: [ref.tell((k, i)) for i in range(500)])
        for k in range(3)
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    seen = ref.ask("seen?", timeout=10)
    assert len(seen) == 1500
    for k in range(3):  # each sender's messages in the order it sent them
        assert [i for s, i in seen if s == k] == list(range(500))
    assert all(Recorder.started[-1].on_loop)
    ref.stop()


def test_a_tell_from_a_task_on_the_loop_is_handled_too(loop: SharedLoop) -> None:
    ref = Recorder.start(loop)

    async def teller() -> None:
        for i in range(10):
            ref.tell(i)
            await trio.sleep(0)

    loop.spawn(teller, "teller")
    for _ in range(200):
        if len(ref.ask("seen?", timeout=10)) == 10:
            break
        threading.Event().wait(0.01)
    assert ref.ask("seen?", timeout=10) == list(range(10))
    ref.stop()


def test_an_error_reaches_the_asker_and_the_actor_carries_on(loop: SharedLoop) -> None:
    ref = Recorder.start(loop)
    with pytest.raises(ValueError, match="boom"):
        ref.ask("boom", timeout=10)
    ref.tell("after")
    assert ref.ask("seen?", timeout=10) == ["after"]
    ref.stop()


def test_a_flood_lets_the_loops_other_tasks_run(loop: SharedLoop) -> None:
    n = 20 * BURST
    ticks: list[int] = []
    busy, release = threading.Event(), threading.Event()

    async def hog() -> None:  # holds the loop's thread until every message is queued
        busy.set()
        release.wait()

    loop.spawn(hog, "hog")
    assert busy.wait(10)
    ref = Recorder.start(loop)
    for i in range(n):
        ref.tell(i)
    actor = Recorder.started[-1]

    async def ticker() -> None:
        while len(actor.seen) < n:
            ticks.append(len(actor.seen))
            await trio.sleep(0)

    loop.spawn(ticker, "ticker")
    release.set()
    assert len(ref.ask("seen?", timeout=10)) == n
    # the ticker ran between bursts while the actor worked through its inbox
    during = {k for k in ticks if 0 < k < n}
    assert len(during) >= 10, ticks
    ref.stop()


@pytest.mark.parametrize("from_loop", [False, True], ids=["from-a-thread", "from-the-loop"])
def test_a_blocked_actor_waits_without_blocking_the_loop(loop: SharedLoop, from_loop: bool) -> None:
    ref = Recorder.start(loop)
    told = threading.Event()

    async def tell_both() -> None:
        ref.tell("hold")
        ref.tell("next")  # not handled while the actor waits
        told.set()

    if from_loop:
        loop.spawn(tell_both, "teller")
        assert told.wait(10)
    else:
        ref.tell("hold")
        ref.tell("next")
    actor = Recorder.started[-1]
    wait_until(lambda: actor.holding, what="the actor to take 'hold'")
    ran = threading.Event()

    async def other() -> None:
        ran.set()

    loop.spawn(other, "other")
    assert ran.wait(5)  # the loop runs while the actor waits
    assert actor.seen == ["hold"]  # and "next" waits
    actor.release.set()
    assert ref.ask("seen?", timeout=10) == ["hold", "next"]
    ref.stop()


def test_stop_ends_it_and_later_messages_are_refused(loop: SharedLoop) -> None:
    ref = Recorder.start(loop)
    ref.stop(timeout=10)
    assert not ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("late")


def test_the_loop_closing_ends_it() -> None:
    loop = SharedLoop("test-loop")
    loop.start()
    ref = Recorder.start(loop)
    ref.tell("x")
    assert ref.ask("seen?", timeout=10) == ["x"]
    loop.close()
    assert not ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("seen?", timeout=10)


def test_it_needs_a_loop() -> None:
    class Bare(LoopActor):
        pass

    with pytest.raises(RuntimeError, match="needs a running loop"):
        Bare.start()


def test_asking_from_the_loop_it_runs_on_is_an_error_not_a_deadlock(loop: SharedLoop) -> None:
    ref = Recorder.start(loop)
    outcome: list[str] = []
    done = threading.Event()

    async def asker() -> None:
        try:
            ref.ask("seen?", timeout=2)
            outcome.append("answered")
        except RuntimeError as err:
            outcome.append(str(err))
        done.set()

    loop.spawn(asker, "asker")
    assert done.wait(10)
    assert len(outcome) == 1 and "would deadlock" in outcome[0]
    assert ref.ask("seen?", timeout=10) == []  # from another thread: fine
    ref.stop()


class Lingering(Recorder):
    """Asks, when its turn ends, to be called again in 10 ms, twice (an open outbox
    transaction waiting out its linger), then has nothing more pending."""

    def __init__(self, loop: SharedLoop) -> None:
        super().__init__(loop)
        self.turn_ends = 0
        self.pending = 0

    def on_receive(self, message: Any) -> Any:
        self.pending = 2
        return super().on_receive(message)

    def turn_ended(self) -> float | None:
        self.turn_ends += 1
        if self.pending:
            self.pending -= 1
            return 0.01
        return None


def test_an_idle_actor_is_called_again_when_its_turn_asked_for_it(loop: SharedLoop) -> None:
    ref = Lingering.start(loop)
    actor = Recorder.started[-1]
    assert isinstance(actor, Lingering)
    wait_until(lambda: actor.turn_ends == 1)  # idle, nothing asked: waits for mail
    ref.tell("one")
    # no more mail: the two asked-for calls come by themselves, then it waits again
    wait_until(lambda: actor.turn_ends == 4)
    assert actor.pending == 0 and actor.seen == ["one"]
    ref.stop()
