"""broker._outbox_txn: the router's outbox commits once per turn, each write still atomic."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from broker import _outbox_txn
from broker._envelope import Envelope, Metric
from broker._outbox import DeadLetter, Outbox, OutboxError


def metric(i: int, size: int = 0) -> Envelope:
    return Envelope(
        source="t", subject=f"m{i}", body=Metric(module="m" * max(1, size), name="n", value=i)
    )


def committed_rows(path: Path) -> int:
    """What another process would see: the committed rows of ``pending``."""
    other = sqlite3.connect(str(path))
    try:
        return int(other.execute("SELECT COUNT(*) FROM pending").fetchone()[0])
    finally:
        other.close()


def bury_refused_by_sqlite(box: Outbox) -> None:
    """A write that SQLite refuses halfway (a trigger aborts the insert into ``dead``)."""
    box._db.execute(
        "CREATE TEMP TRIGGER refuse BEFORE INSERT ON dead "
        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
    )
    with pytest.raises(OutboxError, match="refused by the test"):
        box.bury([DeadLetter("r", "sink", "deliver", metric(2), "why")])


@pytest.fixture
def grouped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Outbox:
    """The router's outbox, new rows committed at the end of their turn (no linger)."""
    monkeypatch.setattr(_outbox_txn, "NEW_ROWS_LINGER_S", 0.0)
    box = Outbox(tmp_path / "o.sqlite3")
    box.txns.grouped = True
    return box


def test_a_turns_writes_share_one_commit_made_when_the_turn_ends(grouped: Outbox) -> None:
    box = grouped
    first, _ = box.append("sink", "r", [metric(i) for i in range(3)])
    box.append("sink", "r", [metric(3)])
    box.remove(first[:2])
    assert committed_rows(box.path) == 0  # nothing committed inside the turn
    assert box.rows == 2 and box.keys() == {("sink", "r"): 2}  # the router sees its own writes
    box.end_turn()
    assert committed_rows(box.path) == 2 and box.txns.commits == 1
    box.close()


def test_a_turn_of_deletes_waits_for_the_next_rows_or_the_linger(
    grouped: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = grouped
    seqs, _ = box.append("sink", "r", [metric(i) for i in range(4)])
    box.end_turn()
    box.remove(seqs[:1])
    box.end_turn()  # deletes only, just begun: left open for the next turn's rows
    assert committed_rows(box.path) == 4 and box.txns.commits == 1
    box.append("sink", "r", [metric(9)])
    box.end_turn()  # the new row and the earlier delete in one commit
    assert committed_rows(box.path) == 4 and box.txns.commits == 2
    box.remove(seqs[1:2])
    monkeypatch.setattr(_outbox_txn, "DELETE_LINGER_S", 0.01)
    time.sleep(0.02)
    box.end_turn()  # open past the linger: committed even with nothing new
    assert committed_rows(box.path) == 3 and box.txns.commits == 3
    box.close()


def test_new_rows_share_a_commit_with_the_turns_that_follow_within_their_linger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_outbox_txn, "NEW_ROWS_LINGER_S", 0.2)
    box = Outbox(tmp_path / "o.sqlite3")
    box.txns.grouped = True
    seqs, _ = box.append("sink", "r", [metric(0)])
    again = box.end_turn()
    assert again is not None and 0 < again <= 0.2  # the router must call again by then
    box.append("sink", "r", [metric(1)])
    box.remove(seqs)  # delivered within the linger: inserted and deleted in one transaction
    assert box.end_turn() is not None and committed_rows(box.path) == 0
    time.sleep(0.21)
    assert box.end_turn() is None  # past the linger: committed, nothing left open
    assert committed_rows(box.path) == 1 and box.txns.commits == 1
    box.close()


def test_a_failing_first_write_leaves_nothing_open(grouped: Outbox) -> None:
    box = grouped
    bury_refused_by_sqlite(box)
    assert not box._db.in_transaction and box.end_turn() is None
    box.append("sink", "r", [metric(3)])
    box.end_turn()
    assert committed_rows(box.path) == 1 and box.rows == 1 and box.dead_count() == 0
    box.close()


def test_a_failing_write_rolls_back_alone_and_the_turn_keeps_the_rest(grouped: Outbox) -> None:
    box = grouped
    box.append("sink", "r", [metric(1)])
    bury_refused_by_sqlite(box)
    box.append("sink", "r", [metric(3)])
    box.end_turn()
    assert committed_rows(box.path) == 2 and box.rows == 2 and box.dead_count() == 0
    box.close()


def test_a_full_disk_mid_turn_leaves_the_counts_true_to_the_file(grouped: Outbox) -> None:
    box = grouped
    box.append("sink", "r", [metric(0)])
    box.end_turn()
    pages = int(box._db.execute("PRAGMA page_count").fetchone()[0])
    box._db.execute(f"PRAGMA max_page_count = {pages + 2}")
    box.append("sink", "r", [metric(1)])  # fits
    with pytest.raises(OutboxError, match="full"):
        for i in range(2, 200):  # about 8 KiB each: the file's last pages run out
            box.append("sink", "r", [metric(i, size=8000)])
    with contextlib.suppress(OutboxError):  # if the commit failed, the turn's rows are gone
        box.end_turn()
    box._db.execute("PRAGMA max_page_count = 1073741823")
    assert box.rows == committed_rows(box.path)  # whatever was lost, the counts say so
    assert box.rows >= 1  # the first turn's row was committed before any of this
    box.close()


def test_a_connection_closed_under_an_open_turn_fails_as_an_outbox_error(grouped: Outbox) -> None:
    box = grouped
    box.append("sink", "r", [metric(1)])
    box._db.close()  # the file becomes unusable with the turn's transaction open
    with pytest.raises(OutboxError, match="commit failed"):
        box.end_turn()  # an OutboxError the router logs, not a sqlite3 error that ends it
    assert not box.txns._open
    with pytest.raises(OutboxError):
        box.append("sink", "r", [metric(2)])


def test_closing_commits_an_open_turn(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    box.txns.grouped = True
    seqs, _ = box.append("sink", "r", [metric(i) for i in range(5)])
    box.remove(seqs[:2])
    box.close()
    again = Outbox(tmp_path / "o.sqlite3")
    assert again.rows == 3 and [r.seq for r in again.load("sink", "r", 0, 10)] == seqs[2:]
    again.close()


def test_ungrouped_writes_commit_one_by_one(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")  # as the junction dlq commands open it
    box.append("sink", "r", [metric(1)])
    assert committed_rows(box.path) == 1 and box.txns.commits == 0
    box.close()


def test_a_source_hears_its_batch_is_kept_only_once_the_rows_are_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker._messages import Delivered, Inbound
    from tests.broker.test_outbox import bare_router, from_src

    monkeypatch.setattr(_outbox_txn, "NEW_ROWS_LINGER_S", 0.0)

    router, inlets, box = bare_router(tmp_path, "persist")
    heard: list[int] = []
    try:
        router.on_receive(Inbound("src", [from_src(0), from_src(1)]))
        assert committed_rows(box.path) == 0  # no source waits: committed when the turn ends
        router.on_receive(
            Inbound("src", [from_src(2)], on_settled=lambda: heard.append(committed_rows(box.path)))
        )
        assert heard == [3]  # told "kept" with all three rows already in the file
        route, batch = inlets["sink"].take()
        router.on_receive(Delivered(route, "sink", len(batch), batch))
        router.turn_ended()  # deletes only: may wait for the next turn's rows
        router.on_receive(Inbound("src", [from_src(3)]))
        router.turn_ended()
        assert committed_rows(box.path) == 1  # rows 0-2 delivered and deleted, 3 kept
    finally:
        box.close()


def refuse_the_next_commit(box: Outbox) -> None:
    """Make the open transaction's COMMIT fail inside SQLite (a deferred foreign key that
    is still broken when it commits), as a full disk or an I/O error would fail it."""
    assert box._db.in_transaction
    box._db.execute("INSERT INTO orphan (parent) VALUES (1)")


@pytest.fixture
def refusable(grouped: Outbox) -> Outbox:
    """The grouped outbox, with a table whose rows can make a COMMIT fail."""
    db = grouped._db
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    db.execute(
        "CREATE TABLE orphan (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
    )
    return grouped


def test_seqs_are_never_used_twice_after_a_lost_commit(refusable: Outbox) -> None:
    box = refusable
    kept, _ = box.append("sink", "r", [metric(0)])
    box.end_turn()
    lost, _ = box.append("sink", "r", [metric(1), metric(2)])
    refuse_the_next_commit(box)
    with pytest.raises(OutboxError, match=r"commit failed \(FOREIGN KEY"):
        box.end_turn()
    assert box.txns.losses == 1 and not box._db.in_transaction
    assert [(row[0], row[3].subject) for row in box.owed.appends] == [
        (lost[0], "m1"),
        (lost[1], "m2"),
    ]  # owed to the file with the seqs they were given
    assert committed_rows(box.path) == 1 and box.rows == 3  # counted as the file will be
    assert [r.seq for r in box.load("sink", "r", 0, 10)] == [kept[0], *lost]  # read as if in
    again, _ = box.append("sink", "r", [metric(3)])  # the owed rows are written first
    box.end_turn()
    assert again[0] > lost[-1] > kept[0]  # SQLite's own counter went back; this one did not
    assert not box.owed and committed_rows(box.path) == 4 == box.rows
    assert [r.seq for r in box.load("sink", "r", 0, 10)] == [kept[0], *lost, again[0]]
    box.close()


def test_a_lost_commit_owes_its_deletes_and_dead_letters_and_writes_them_next(
    refusable: Outbox,
) -> None:
    box = refusable
    seqs, _ = box.append("sink", "r", [metric(i) for i in range(4)])
    box.end_turn()
    box.remove(seqs[:1])
    box.bury([DeadLetter("r", "sink", "deliver", metric(1), "refused", 1, seqs[1])])
    new, _ = box.append("sink", "r", [metric(8), metric(9)])
    box.remove(new[:1])  # added and deleted in the lost transaction: owed nothing
    refuse_the_next_commit(box)
    with pytest.raises(OutboxError, match="commit failed"):
        box.end_turn()
    assert [row[0] for row in box.owed.appends] == [new[1]]
    assert box.owed.deletes == seqs[:1] and [d.seq for d in box.owed.dead] == [seqs[1]]
    assert committed_rows(box.path) == 4 and box.dead_count() == 0  # as the file has it
    # a refill in between skips the rows owed a delete and gets the row owed its insert
    assert [r.seq for r in box.load("sink", "r", 0, 10)] == [*seqs[2:], new[1]]
    assert box.rows == 3
    box.append("sink", "r", [metric(10)])  # the next transaction writes the owed first
    box.end_turn()
    assert committed_rows(box.path) == 4 == box.rows and box.dead_count() == 1
    assert not box.owed
    box.close()


def test_an_owed_row_acknowledged_before_it_reached_the_file_is_settled(
    refusable: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker import _outbox_owed

    box = refusable
    monkeypatch.setattr(_outbox_owed, "OWED_RETRY_S", 60.0)  # the file refuses for a while
    lost, _ = box.append("sink", "r", [metric(1), metric(2)])
    refuse_the_next_commit(box)
    with pytest.raises(OutboxError):
        box.end_turn()
    box._db.execute(
        "CREATE TEMP TRIGGER refuse BEFORE INSERT ON pending "
        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
    )
    with pytest.raises(OutboxError, match="refused by the test"):
        box.append("sink", "r", [metric(3)])  # pays first: refused, owed stays
    assert [row[0] for row in box.owed.appends] == lost
    assert box.remove(lost[:1]) == 1 and box.rows == 1  # acknowledged: owed no more
    box.bury([DeadLetter("r", "sink", "deliver", metric(2), "refused", 1, lost[1])])
    assert not box.owed.appends and box.rows == 0
    box._db.execute("DROP TRIGGER refuse")
    box._owed_retry_at = 0.0
    box.end_turn()
    box.commit()
    assert committed_rows(box.path) == 0 and box.dead_count() == 1 and not box.owed
    box.close()


def test_owed_writes_wait_while_the_file_refuses_them_and_an_idle_router_is_woken(
    refusable: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker import _outbox_owed

    box = refusable
    monkeypatch.setattr(_outbox_owed, "OWED_RETRY_S", 0.05)
    seqs, _ = box.append("sink", "r", [metric(i) for i in range(2)])
    box.end_turn()
    box.remove(seqs[:1])
    box.append("sink", "r", [metric(5)])
    refuse_the_next_commit(box)
    with pytest.raises(OutboxError):
        box.end_turn()
    box._db.execute(
        "CREATE TEMP TRIGGER refuse BEFORE DELETE ON pending "
        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
    )
    again = box.end_turn()  # refused: owed still, and the router must come back for it
    assert box.owed.deletes == seqs[:1] and again is not None and 0 < again <= 0.05
    assert box.rows == 2 and committed_rows(box.path) == 2
    box._db.execute("DROP TRIGGER refuse")
    time.sleep(0.06)
    assert box.end_turn() is None  # written and committed (it holds a new row)
    assert not box.owed and committed_rows(box.path) == 2 == box.rows
    box.close()


def test_closing_writes_what_is_owed(refusable: Outbox, tmp_path: Path) -> None:
    box = refusable
    box.append("sink", "r", [metric(1)])
    box.bury([DeadLetter("r", "", "route", metric(2), "a transform raised")])
    refuse_the_next_commit(box)
    with pytest.raises(OutboxError):
        box.end_turn()
    box._owed_retry_at = time.monotonic() + 60  # not due yet: close does not wait for it
    box.close()
    again = Outbox(box.path)
    assert again.rows == 1 and again.dead_count() == 1
    again.close()


def test_a_rollback_sqlite_made_by_itself_is_noticed_at_the_next_write(grouped: Outbox) -> None:
    box = grouped
    box.append("sink", "r", [metric(1)])
    box._db.execute("ROLLBACK")  # as SQLite does after an I/O error on a read
    box.append("sink", "r", [metric(2)])
    assert box.txns.losses == 1
    box.end_turn()
    assert committed_rows(box.path) == 2 == box.rows  # the first row was written again
    box.close()


def test_a_replay_taken_in_a_lost_transaction_is_not_taken_again(refusable: Outbox) -> None:
    box = refusable
    box.txns.grouped = False
    box.bury([DeadLetter("r", "sink", "deliver", metric(7), "refused")])
    box.queue_replay(box.dead_rows())
    box.txns.grouped = True
    taken = box.take_replays(10)
    assert [r.envelope.subject for r in taken] == ["m7"]
    refuse_the_next_commit(box)
    with pytest.raises(OutboxError):
        box.end_turn()
    assert box.owed.replayed == [taken[0].seq]
    assert box.next_replays(10) == []  # its delete is owed: not handed back twice
    box.close()
    assert Outbox(box.path, checkpoints=False).replay_waiting() == 0


FAN_OUT = """
[junction]
state_dir = "{state}"
[adapters.src]
type = "burst"
[adapters.sink]
type = "collector"
[adapters.slow]
type = "collector"
[[routes]]
name = "r"
from = "src"
to = "sink"
overflow = "persist"
queue_size = 10
[[routes]]
name = "copy"
from = "src"
to = "slow"
overflow = "drop_oldest"
"""


def router_losing_its_next_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, dict[str, Any], Outbox]:
    """A Router driven by direct calls on this thread, whose outbox commits only when told
    (and whose open transaction :func:`refuse_the_next_commit` can poison)."""
    from broker._inlet import Inlet
    from broker._router import Router
    from broker._runtime import load
    from tests.conftest import TEST_PLUGINS

    monkeypatch.setattr(_outbox_txn, "NEW_ROWS_LINGER_S", 60.0)
    config = tmp_path / "fan-out.toml"
    config.write_text(FAN_OUT.format(state=tmp_path / "state"))
    loaded = load(str(config), extra_plugins=TEST_PLUGINS)
    inlets = {name: Inlet(name) for name in ("src", "sink", "slow")}
    box = Outbox(tmp_path / "o.sqlite3")
    box._db.execute("PRAGMA foreign_keys = ON")
    box._db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    box._db.execute(
        "CREATE TABLE orphan (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
    )
    router = Router(loaded.table, inlets, loaded.config.junction, outbox=box, persist_kinds={})
    return router, inlets, box


def deliver_all(router: Any, inlets: dict[str, Any], target: str) -> list[str]:
    """Take and acknowledge all that ``target`` is given (refills included); the subjects."""
    from broker._messages import Delivered

    subjects: list[str] = []
    while (taken := inlets[target].take()) is not None:
        route, batch = taken
        router.on_receive(Delivered(route, target, len(batch), batch))
        subjects += [e.subject for e in batch]
    return subjects


def test_a_lost_commit_loses_no_envelope_and_keeps_the_ledger_balanced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker._messages import Delivered, Inbound, Snapshot
    from tests.broker.test_outbox import from_src

    router, inlets, box = router_losing_its_next_commit(tmp_path, monkeypatch)
    sink = inlets["sink"]
    try:
        router.on_receive(Inbound("src", [from_src(i) for i in range(15)]))  # 10 in the window
        router.on_receive(Snapshot())  # committed
        route, batch = sink.take()
        router.on_receive(Delivered(route, "sink", 2, batch[:2]))  # two rows deleted
        router.on_receive(Inbound("src", [from_src(i) for i in range(15, 19)]))  # spilled
        refuse_the_next_commit(box)
        router.on_receive(Snapshot())  # the commit fails: logged, the router goes on
        assert box.txns.losses == 1 and committed_rows(box.path) == 15
        ledger = router.snapshot()["routes"]["r"]["ledger"]
        assert ledger["balanced"] and ledger["pending"] == 17, ledger
        router.turn_ended()  # the owed rows and deletes are written again
        router.on_receive(Snapshot())
        assert committed_rows(box.path) == 17 and not box.owed
        rest = batch[2:]
        router.on_receive(Delivered(route, "sink", len(rest), rest))
        delivered = [e.subject for e in batch] + deliver_all(router, inlets, "sink")
        assert delivered == [f"m{i}" for i in range(19)]  # each once, in order
        router.on_receive(Snapshot())
        ledger = router.snapshot()["routes"]["r"]["ledger"]
        assert ledger["balanced"] and ledger["pending"] == 0, ledger
        assert committed_rows(box.path) == 0
    finally:
        box.close()


def test_a_receipt_begun_before_a_lost_commit_is_never_called(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its persist copy was in the lost transaction: the source must not acknowledge."""
    from broker._messages import Inbound, Snapshot
    from tests.broker.test_outbox import from_src

    router, inlets, box = router_losing_its_next_commit(tmp_path, monkeypatch)
    heard: list[str] = []
    try:
        router.on_receive(Inbound("src", [from_src(0)], on_settled=lambda: heard.append("a")))
        assert heard == []  # its memory copy (route "copy") is not delivered yet
        refuse_the_next_commit(box)
        router.on_receive(Snapshot())  # the persist copy's row is lost
        assert deliver_all(router, inlets, "slow") == ["m0"]
        assert heard == []  # settled, but after a loss: never called
        assert deliver_all(router, inlets, "sink") == ["m0"]  # its row is owed, not lost
        router.on_receive(Inbound("src", [from_src(1)], on_settled=lambda: heard.append("b")))
        deliver_all(router, inlets, "slow")
        assert heard == ["b"]  # a receipt begun after the loss is called as before
    finally:
        box.close()
