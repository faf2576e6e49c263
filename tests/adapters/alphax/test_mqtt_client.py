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


def test_a_3_1_1_puback_is_acknowledged_without_paho_decoding_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_decoding(*args: object) -> None:
        raise AssertionError("paho decoded the PUBACK (a ReasonCode and Properties per ack)")

    monkeypatch.setattr(paho_packet, "decode_puback", no_decoding)
    client = BatchingClient(CallbackAPIVersion.VERSION2, client_id="t")
    acked: list[tuple[int, bool]] = []
    client.on_publish = lambda c, u, mid, reason, props: acked.append((mid, reason.is_failure))
    info = client.publish("t/1", b"x", qos=1)  # not connected: kept for after a CONNACK
    client._in_packet["packet"] = bytes([info.mid >> 8, info.mid & 0xFF])
    assert client._handle_pubackcomp("PUBACK") == 0
    assert acked == [(info.mid, False)]
    assert info.mid not in client._out_messages and info._published
    client._in_packet["packet"] = bytes([0, 99])  # an id it never sent: only ignored
    assert client._handle_pubackcomp("PUBACK") == 0 and len(acked) == 1
