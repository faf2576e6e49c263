"""adapters.alphax._mqtt_client: paho's small reads served from one large read, per socket."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from paho.mqtt import _packet as paho_packet
from paho.mqtt.enums import CallbackAPIVersion

from adapters.alphax._mqtt_client import READ_AHEAD, BatchingClient


class CountingSocket:
    """A real socket (one end of a pair) that counts its ``recv`` calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recvs = 0

    def recv(self, bufsize: int) -> bytes:
        self.recvs += 1
        return self.sock.recv(bufsize)

    def close(self) -> None:  # paho closes its socket when the client goes away
        self.sock.close()


@pytest.fixture
def pair() -> Iterator[tuple[CountingSocket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    yield CountingSocket(ours), theirs
    ours.close()
    theirs.close()


def client_on(sock: object) -> BatchingClient:
    client = BatchingClient(CallbackAPIVersion.VERSION2, client_id="t")
    client._sock = sock  # type: ignore[assignment]
    return client


PUBACK = bytes([0x40, 0x02, 0x00, 0x01])


def test_many_pubacks_take_one_socket_read(pair: tuple[CountingSocket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.sendall(PUBACK * 1000)
    client = client_on(ours)
    got = b""
    for _ in range(1000):  # paho's pattern: the command byte, one length byte, the rest
        got += client._sock_recv(1) + client._sock_recv(1) + client._sock_recv(2)
    assert got == PUBACK * 1000
    assert ours.recvs == 1
    assert not client.read_ahead_pending()
    with pytest.raises(BlockingIOError):  # nothing more: what paho takes as "again later"
        client._sock_recv(1)


def test_a_read_larger_than_what_is_left_gets_the_rest(
    pair: tuple[CountingSocket, socket.socket],
) -> None:
    ours, theirs = pair
    theirs.sendall(b"abcdef")
    client = client_on(ours)
    assert client._sock_recv(4) == b"abcd"
    assert client.read_ahead_pending()
    assert client._sock_recv(100) == b"ef"
    assert not client.read_ahead_pending()


def test_bytes_of_an_old_socket_are_never_served_on_a_new_one(
    pair: tuple[CountingSocket, socket.socket],
) -> None:
    ours, theirs = pair
    theirs.sendall(b"old-bytes")
    client = client_on(ours)
    assert client._sock_recv(3) == b"old"
    new_ours, new_theirs = socket.socketpair()
    try:
        new_ours.setblocking(False)
        new_theirs.sendall(b"new")
        client._sock = new_ours  # type: ignore[assignment]  # what a reconnect does
        assert not client.read_ahead_pending()
        assert client._sock_recv(100) == b"new"
    finally:
        new_ours.close()
        new_theirs.close()


def test_the_peer_closing_is_an_empty_read(pair: tuple[CountingSocket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.sendall(b"xy")
    theirs.shutdown(socket.SHUT_WR)
    client = client_on(ours)
    assert client._sock_recv(READ_AHEAD * 2) == b"xy"
    assert client._sock_recv(1) == b""


def test_corked_packets_go_out_in_one_write_in_order(
    pair: tuple[CountingSocket, socket.socket],
) -> None:
    ours, theirs = pair
    client = client_on(ours.sock)
    client._sock_send(b"first ")  # uncorked: written at once
    client.cork()
    for part in (b"a", b"b", b"c"):
        assert client._sock_send(part) == 1  # paho sees it written
    theirs.setblocking(False)
    assert theirs.recv(100) == b"first "
    with pytest.raises(BlockingIOError):
        theirs.recv(100)  # nothing of the corked batch is on the wire yet
    assert client.want_write()
    client.uncork()
    assert not client.want_write()
    assert theirs.recv(100) == b"abc"


def test_what_the_socket_does_not_take_stays_ahead_of_later_writes(
    pair: tuple[CountingSocket, socket.socket],
) -> None:
    ours, theirs = pair
    ours.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client = client_on(ours.sock)
    big = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes at once
    client.cork()
    client._sock_send(big)
    client.uncork()
    assert client.want_write()  # the rest waits for the socket to drain
    client._sock_send(b"LAST")  # paho writing later: queued behind, not sent first
    got = bytearray()
    theirs.settimeout(5)
    while len(got) < len(big) + 4:
        got += theirs.recv(1 << 16)
        client.loop_write()
    assert bytes(got) == big + b"LAST"
    assert not client.want_write()


def test_a_3_1_1_puback_split_across_reads_reaches_the_hook_without_paho_decoding_it(
    monkeypatch: pytest.MonkeyPatch, pair: tuple[CountingSocket, socket.socket]
) -> None:
    def no_decoding(*args: object) -> None:
        raise AssertionError("paho decoded the PUBACK (a ReasonCode and Properties per ack)")

    monkeypatch.setattr(paho_packet, "decode_puback", no_decoding)
    ours, theirs = pair
    client = client_on(ours)
    acked: list[int] = []
    client.on_puback_mid = acked.append
    theirs.sendall(bytes([0x40, 0x02, 0x01]))  # a PUBACK cut after its first id byte
    assert client.fill_read_ahead()
    assert client.drain_pubacks() == 0  # not whole: left to paho, which begins it
    client.loop_read()
    assert acked == [] and client._in_packet["command"] == 0x40
    theirs.sendall(bytes([0x02]) + PUBACK)  # the rest of it, and one more
    assert client.fill_read_ahead()
    assert client.drain_pubacks() == 0  # paho's packet is unfinished: paho's to finish
    client.loop_read()
    assert acked == [0x0102]
    assert client.drain_pubacks() == 1 and acked == [0x0102, 1]
    assert client._out_messages == {}  # paho never held a message


def test_whole_pubacks_are_drained_in_one_pass_and_the_rest_left_to_paho(
    pair: tuple[CountingSocket, socket.socket],
) -> None:
    ours, theirs = pair
    client = client_on(ours)
    acked: list[int] = []
    client.on_puback_mid = acked.append
    pingresp = bytes([0xD0, 0x00])
    acks = b"".join(bytes([0x40, 0x02, 0x00, m]) for m in range(1, 201))
    theirs.sendall(acks + pingresp + PUBACK)
    assert client.fill_read_ahead() and ours.recvs == 1
    assert client.drain_pubacks() == 200 and acked == list(range(1, 201))
    assert client.read_ahead_pending()  # the PINGRESP stops the pass: paho reads it
    client._ping_t = 1.0
    client.loop_read()
    assert client._ping_t == 0  # paho handled its PINGRESP
    assert client.drain_pubacks() == 1 and acked[-1] == 1
    assert not client.read_ahead_pending() and not client.fill_read_ahead()  # nothing more
    assert ours.recvs == 2


def _publish_packet(mid: int, topic: bytes, payload: bytes, dup: bool = False) -> bytes:
    """A QoS 1 PUBLISH as paho builds it (the reference for write_publish)."""
    from paho.mqtt.client import MQTTMessage

    client = BatchingClient(CallbackAPIVersion.VERSION2, client_id="ref")
    client._sock = object()  # type: ignore[assignment]  # paho builds nothing without one
    sent: list[bytes] = []
    client._packet_queue = lambda cmd, packet, mid, qos, info=None: sent.append(bytes(packet))  # type: ignore[method-assign,assignment,misc]
    message = MQTTMessage(mid, topic)
    client._send_publish(mid, topic, payload, qos=1, dup=dup, info=message)
    client._sock = None
    return sent[0]


@pytest.mark.parametrize(
    ("size", "dup"), [(0, False), (1, True), (120, False), (200, True), (20_000, False)]
)
def test_write_publish_builds_the_packet_paho_builds(
    pair: tuple[CountingSocket, socket.socket], size: int, dup: bool
) -> None:
    ours, theirs = pair
    client = client_on(ours.sock)
    topic, payload = b"tok/dev-1/0/data", bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert client.write_publish(513, topic, payload, dup=dup)
    theirs.settimeout(5)
    want = _publish_packet(513, topic, payload, dup=dup)
    got = b""
    while len(got) < len(want):
        got += theirs.recv(1 << 16)
    assert got == want


@pytest.mark.parametrize(
    ("topic", "payload", "error"),
    [
        (b"", b"x", "cannot be empty"),
        (b"tok/+/0/data", b"x", "wildcards"),
        (b"tok/#", b"x", "wildcards"),
        (b"t" * 65536, b"x", "longer than 65535"),
    ],
)
def test_write_publish_refuses_what_paho_refuses(
    pair: tuple[CountingSocket, socket.socket], topic: bytes, payload: bytes, error: str
) -> None:
    ours, _theirs = pair
    client = client_on(ours.sock)
    with pytest.raises(ValueError, match=error):
        client.write_publish(1, topic, payload)
    assert not client.want_write()  # nothing of it was queued


def test_write_publish_without_a_socket_is_kept_by_the_caller() -> None:
    client = BatchingClient(CallbackAPIVersion.VERSION2, client_id="t")
    assert client.write_publish(1, b"t/1", b"x") is False
    assert not client.want_write()


def test_corked_publishes_go_out_in_one_write(
    pair: tuple[CountingSocket, socket.socket],
) -> None:
    ours, theirs = pair
    client = client_on(ours.sock)
    client.cork()
    for mid in range(1, 101):
        client.write_publish(mid, b"t/1", b"%d" % mid)
    theirs.setblocking(False)
    with pytest.raises(BlockingIOError):
        theirs.recv(100)  # corked: nothing on the wire yet
    client.uncork()
    want = b"".join(_publish_packet(mid, b"t/1", b"%d" % mid) for mid in range(1, 101))
    assert theirs.recv(1 << 16) == want
