"""Every decoder is total (issue 17, item 1): for any input it returns a value or raises its
own documented error type, never a msgspec error, RecursionError, UnicodeEncodeError or
ValueError from ``int()`` of its own.

One hypothesis property per decoder, fed arbitrary bytes and arbitrary JSON-ish values put
where the decoder takes any JSON (notify values, command params, read records, a stored
envelope's value), including deep nesting, huge numbers, long strings, NaN / Infinity,
escaped lone surrogates and invalid UTF-8 spliced into the bytes, each also given as
``str`` (lone surrogates and all). Then the choices those bounds make, pinned one by one,
and the stored envelope read back totally from the outbox and the dead-letter store.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.allxon import codec as allxon
from adapters.alphax import codec as alphax
from adapters.placeos import codec as placeos
from broker import Envelope, Metric, StatusChange, decode, encode

# --------------------------------------------------------------------------- the decoders


def placeos_frame(data: str | bytes) -> object:
    """A server frame as the adapter uses it: the frame, then its value."""
    frame = placeos.decode_server_frame(data)
    if isinstance(frame, placeos.NotifyFrame | placeos.SuccessFrame) and isinstance(
        frame.value, msgspec.Raw
    ):
        return placeos.decode_value(frame.value)
    return frame


def allxon_frame(data: str | bytes) -> object:
    frame = allxon.decode_frame(data)
    if isinstance(frame, allxon.AgentErrorFrame):
        return frame.kind  # reads the code: must not raise either
    return frame


def alphax_v4(data: str | bytes) -> object:
    return [r.epoch_s for r in alphax.decode_v4_records(data)]


def alphax_v6(data: str | bytes) -> object:
    return [(r.val_date, r.value) for r in alphax.decode_v6_records(data)]


def text_only(decoder: Callable[[str], object]) -> Callable[[str | bytes], object]:
    def call(data: str | bytes) -> object:
        return decoder(data if isinstance(data, str) else data.decode("utf-8", "surrogateescape"))

    return call


_COMMAND = allxon.encode_message(
    allxon.PluginCommand(
        params=allxon.CommandParams(
            app_guid="g",
            epoch="1700000000",
            command_id="c",
            module_name="m",
            commands=[
                allxon.CommandInvocation(
                    name="n", params=[allxon.NamedValue(name="p", value="SENTINEL")]
                )
            ],
        )
    )
).replace('"SENTINEL"', "VALUE")

_STORED = (
    '{"source":"s","body":{"kind":"status_change","system":"s","module":"M","name":"n",'
    '"value":VALUE}}'
)

#: name -> (decoder, the errors it may raise, frames around VALUE: any JSON goes there)
DECODERS: dict[str, tuple[Callable[[Any], object], type[Exception], tuple[str, ...]]] = {
    "placeos frame": (
        placeos_frame,
        placeos.MalformedFrameError,
        (
            '{"id":1,"type":"notify","value":VALUE,"meta":{"sys":"s","mod":"M","name":"n"}}',
            '{"id":1,"type":"success","value":VALUE,"code":200}',
            '{"id":1,"type":"error","error_code":VALUE,"msg":"m"}',
        ),
    ),
    "placeos request": (
        placeos.parse_request,
        placeos.RequestParseError,
        ('{"id":1,"cmd":"exec","sys":"s","mod":"M","name":"n","args":[VALUE]}',),
    ),
    "allxon frame": (
        allxon_frame,
        allxon.CodecError,
        (
            _COMMAND,
            '{"jsonrpc":"2.0","method":"v2/notifyPluginAlarmUpdate","params":VALUE}',
            '{"jsonrpc":"2.0","error":{"code":VALUE,"message":"m"},"id":null}',
        ),
    ),
    "allxon credential": (
        allxon.decode_credential,
        allxon.CredentialError,
        ('{"app_guid":"g","access_key":VALUE}',),
    ),
    "alphax uplink body": (
        alphax.decode_uplink_body,
        alphax.CodecError,
        ('{"networkId":"n","token":"t","timestamp":1700000000000,"data":VALUE}',),
    ),
    "alphax v2 body": (
        alphax.decode_v2_body,
        alphax.CodecError,
        ('{"networkId":"n","token":"t","timestamp":1700000000000,"data":[VALUE]}',),
    ),
    "alphax v4 records": (
        alphax_v4,
        alphax.CodecError,
        ('[{"channel":1,"networkID":"n","value":1,"timestamp":VALUE}]', "VALUE"),
    ),
    "alphax v6 records": (
        alphax_v6,
        alphax.CodecError,
        ('[{"val_date":1,"dev_netid":"n","dev_chid":1,"val_raw":VALUE}]', "VALUE"),
    ),
    "alphax error body": (
        alphax.decode_error_body,
        alphax.CodecError,
        ('{"code":VALUE,"error":"e"}',),
    ),
    "alphax channel payload": (alphax.decode_channel_value, alphax.CodecError, ("VALUE",)),
    "alphax topic": (text_only(alphax.parse_topic), alphax.CodecError, ("t/n/VALUE/data",)),
    "alphax v1 hex": (text_only(alphax.decode_v1_hex), alphax.CodecError, ("VALUE",)),
    "stored envelope": (decode, msgspec.DecodeError, (_STORED,)),
}

# --------------------------------------------------------------------------- the inputs

_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
_values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)
_hostile = st.one_of(
    st.integers(100, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(100, 3000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(120, 140).map(lambda n: "[" * n + "1" + "]" * n),  # around the bound
    st.integers(300, 5000).map(lambda n: "1" + "0" * n),
    st.integers(0, 40).map(lambda n: '"' + "1" * 4290 + "1" * n + '"'),  # digits in a string
    st.sampled_from(
        [
            "1e400",
            "-1e400",
            "1e-400",
            "NaN",
            "Infinity",
            "-Infinity",
            '"\\ud800"',
            '"\\udc00x"',
            '"\\ud800\\u0041"',
            '{"a":1,"a":2}',
            '"²"',
            '"١٢٣"',
            "\ufeff1",
            "",
        ]
    ),
    st.integers(0, 100_000).map(lambda n: '"' + "x" * n + '"'),
)
_value_text = st.one_of(_values.map(lambda v: msgspec.json.encode(v).decode()), _hostile)
_BAD_BYTES = [b"\xff", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\x00", b'"', b"\\"]


@st.composite
def inputs(draw: st.DrawFn, templates: tuple[str, ...]) -> str | bytes:
    """Arbitrary bytes, or a template with a value, maybe spliced with bad bytes, maybe str."""
    if draw(st.integers(0, 4)) == 0:
        data = draw(st.binary(max_size=300))
    else:
        template = draw(st.sampled_from(templates))
        data = template.replace("VALUE", draw(_value_text)).encode("utf-8", "surrogatepass")
        if draw(st.booleans()):
            at = draw(st.integers(0, len(data)))
            data = data[:at] + draw(st.sampled_from(_BAD_BYTES)) + data[at:]
    if draw(st.booleans()):
        return data.decode("utf-8", "surrogateescape")  # lone surrogates where bytes were bad
    return data


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_each_decoder_returns_a_value_or_raises_its_own_error(name: str) -> None:
    decoder, error, templates = DECODERS[name]

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(inputs(templates))
    def total(data: str | bytes) -> None:
        with contextlib.suppress(error):
            decoder(data)

    total()


# --------------------------------------------------------------------------- what is accepted
# can be kept: a value a peer decoder returns goes into an envelope and comes back out


@settings(max_examples=100, deadline=None)
@given(_value_text)
def test_whatever_placeos_accepts_is_stored_and_read_back(value: str) -> None:
    frame = '{"id":1,"type":"notify","value":VALUE}'.replace("VALUE", value)
    try:
        decoded = placeos_frame(frame)
    except placeos.MalformedFrameError:
        return
    env = Envelope(
        source="placeos",
        body=StatusChange(system="s", module="M", name="n", value=decoded),
    )
    assert decode(encode(env)) == env


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


_tricky_text = st.text(alphabet='[]{}"\\\n/ux', max_size=8)
_tricky = st.recursive(
    st.none() | st.integers() | _tricky_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_tricky_text, inner, max_size=3),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_tricky, st.integers(0, 6))
def test_the_depth_count_is_exact_whatever_the_strings_hold(value: Any, limit: int) -> None:
    from broker._json import _deeper_than

    text = msgspec.json.encode(value)
    assert _deeper_than(text, limit) == (_depth(value) > limit)
    assert _deeper_than(text.decode(), limit) == (_depth(value) > limit)


# --------------------------------------------------------------------------- the choices


def _any_json_decoders() -> list[tuple[str, Callable[[str], object], type[Exception], str]]:
    return [
        ("placeos", placeos_frame, placeos.MalformedFrameError, DECODERS["placeos frame"][2][0]),
        ("allxon", allxon_frame, allxon.CodecError, _COMMAND),
        ("alphax", alphax.decode_error_body, alphax.CodecError, '{"code":1,"error":VALUE}'),
        ("stored", decode, msgspec.DecodeError, _STORED),
    ]


@pytest.mark.parametrize("value", ["1" + "0" * 4300, "-1" + "0" * 5000, "1e400", "-2e308"])
@pytest.mark.parametrize(
    ("name", "decoder", "error", "frame"),
    [d for d in _any_json_decoders() if d[0] != "alphax"],  # its numbers are typed: below
    ids=lambda x: str(x)[:8],
)
def test_a_number_too_large_is_refused_naming_the_bound(
    name: str, decoder: Callable[[str], object], error: type[Exception], frame: str, value: str
) -> None:
    with pytest.raises(error, match="4,300 digits, or beyond"):
        decoder(frame.replace("VALUE", value))
    decoder(frame.replace("VALUE", "1" + "0" * 4299))  # 4,300 digits: exact
    decoder(frame.replace("VALUE", "1e-400"))  # underflow: 0.0


@pytest.mark.parametrize("value", ["1" + "0" * 4300, "-1" + "0" * 5000, "1e400", "-2e308"])
def test_a_float_field_refuses_a_number_beyond_a_double_naming_the_bound(value: str) -> None:
    frame = '[{"val_date":1,"dev_netid":"n","dev_chid":1,"val_raw":VALUE}]'
    with pytest.raises(alphax.MalformedJsonError, match="4,300 digits, or beyond"):
        alphax.decode_v6_records(frame.replace("VALUE", value))
    (record,) = alphax.decode_v6_records(frame.replace("VALUE", "1e-400"))
    assert record.val_raw == 0.0


def test_a_field_no_one_reads_is_only_checked_for_syntax_and_depth() -> None:
    body = alphax.decode_error_body(b'{"code":1,"error":"e","x":["\xff", 1' + b"0" * 5000 + b"]}")
    assert body == alphax.ErrorBody(1, "e")
    with pytest.raises(alphax.MalformedJsonError, match="128 levels"):
        alphax.decode_error_body('{"code":1,"error":"e","x":' + "[" * 128 + "]" * 128 + "}")


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "nan", "inf"])
@pytest.mark.parametrize(
    ("name", "decoder", "error", "frame"), _any_json_decoders(), ids=lambda x: str(x)[:8]
)
def test_nan_and_infinity_are_not_json(
    name: str, decoder: Callable[[str], object], error: type[Exception], frame: str, value: str
) -> None:
    with pytest.raises(error, match="malformed"):
        decoder(frame.replace("VALUE", value))


@pytest.mark.parametrize(
    ("name", "decoder", "error", "frame"), _any_json_decoders(), ids=lambda x: str(x)[:8]
)
def test_invalid_utf8_and_lone_surrogates_are_the_decoders_own_error(
    name: str, decoder: Callable[[Any], object], error: type[Exception], frame: str
) -> None:
    with pytest.raises(error, match="UTF-8"):  # bytes: an invalid sequence in a string
        decoder(frame.replace("VALUE", '"SPOT"').encode().replace(b"SPOT", b"\xed\xa0\x80"))
    with pytest.raises(error, match="UTF-8"):  # str: a lone surrogate itself
        decoder(frame.replace("VALUE", '"\ud800"'))
    with pytest.raises(error, match=r"malformed|truncated"):  # an escaped one
        decoder(frame.replace("VALUE", '"\\ud800"'))


def test_a_key_given_twice_the_last_one_wins() -> None:
    frame = '{"id":1,"id":2,"type":"notify","value":{"a":1,"a":2}}'
    notify = placeos.decode_server_frame(frame)
    assert isinstance(notify, placeos.NotifyFrame) and notify.id == 2
    assert placeos.decode_value(notify.value) == {"a": 2}
    with pytest.raises(placeos.MalformedFrameError, match="Invalid value 'notify'"):
        placeos.decode_server_frame('{"type":"error","id":1,"type":"notify"}')
    body = alphax.decode_error_body('{"code":1,"error":"x","code":"503"}')
    assert body.code == 503
    stored = decode(_STORED.replace("VALUE", '{"v":1,"v":[2]}'))
    assert isinstance(stored.body, StatusChange) and stored.body.value == {"v": [2]}


def test_a_byte_order_mark_is_refused() -> None:
    with pytest.raises(placeos.MalformedFrameError, match="malformed"):
        placeos.decode_server_frame(b"\xef\xbb\xbf" + b'{"id":1,"type":"notify"}')


def test_alphax_text_that_is_not_json_is_malformed_not_a_shape_error() -> None:
    """Issue 17, item 10: msgspec meets the wrong type before the syntax error."""
    for raw in (
        b'{"networkId":"n","token":"t","timestamp":1,"data":5 not json',
        b'{"networkId":1 }}}',
        b'{"data":5,',
    ):
        with pytest.raises(alphax.MalformedJsonError, match="not JSON"):
            alphax.decode_uplink_body(raw)
    with pytest.raises(alphax.JsonShapeError, match=r"Expected `str \| array`, got `int`"):
        alphax.decode_uplink_body(b'{"networkId":"n","token":"t","timestamp":1,"data":5}')
    with pytest.raises(alphax.MalformedJsonError):
        alphax.decode_v4_records(b'[{"channel":"x"} trailing')
    with pytest.raises(alphax.MalformedJsonError):
        alphax.decode_error_body(b'{"code":[] ,,')
    with pytest.raises(allxon.MalformedFrameError, match="not JSON"):
        allxon.decode_frame('{"jsonrpc":2 garbage')


def test_numbers_written_as_strings_are_ascii_digits_of_a_bounded_length() -> None:
    for stamp in ("²", "1" * 5000, "١٢٣"):
        with pytest.raises(alphax.JsonShapeError, match="epoch seconds"):
            alphax.decode_v4_records(
                f'{{"channel":1,"networkID":"n","value":1,"timestamp":"{stamp}"}}'
            )
    for code in ("²", "9" * 5000):
        with pytest.raises(alphax.JsonShapeError, match="not a number"):
            alphax.decode_error_body(f'{{"code":"{code}","error":"e"}}')
    with pytest.raises(alphax.TopicError, match="not a number"):
        alphax.parse_topic(f"t/n/{'1' * 5000}/data")


def test_a_read_response_over_16_mib_is_refused_naming_the_bound() -> None:
    body = b'[{"channel":1,"networkID":"' + b"n" * (16 << 20) + b'","value":1,"timestamp":1}]'
    with pytest.raises(alphax.MalformedJsonError, match=f"over the bound of {16 << 20} bytes"):
        alphax.decode_v4_records(body)


# --------------------------------------------------------------------------- stored envelopes


def _metric(value: float, name: str = "t") -> Envelope:
    return Envelope(source="s", body=Metric(module="m", name=name, value=value))


def test_a_pending_row_that_does_not_decode_becomes_a_dead_letter(tmp_path: Path) -> None:
    """A NaN float is stored as null (msgspec) and does not decode: it used to raise out of
    ``Outbox.load`` (the router's refill), stopping the queue for good."""
    from broker._outbox import Outbox

    box = Outbox(tmp_path / "o.db", checkpoints=False)
    try:
        box.append("sink", "r", [_metric(1.0), _metric(math.nan, "bad"), _metric(3.0)])
        assert box.rows == 3
        rows = box.load("sink", "r", 0, 100)
        assert [r.envelope.body.value for r in rows] == [1.0, 3.0]  # type: ignore[union-attr]
        assert box.rows == 2 and box.unreadable == 1
        (dead,) = box.dead_rows()
        assert dead.route == "r" and dead.target == "sink" and dead.stage == "deliver"
        assert dead.kind == "?" and dead.reason.startswith("unreadable stored envelope")
        assert "Expected `float`, got `null`" in dead.reason and b'"bad"' in dead.body
        assert [r.seq for r in box.load("sink", "r", 0, 100)] == [rows[0].seq, rows[1].seq]
        # queued for replay, it does not decode either: back to the dead letters, not raised
        assert box.queue_replay([dead]) == 1
        assert box.next_replays(10) == [] and box.replay_waiting() == 0
        (again,) = box.dead_rows()
        assert again.reason.startswith("unreadable stored envelope") and box.unreadable == 2
    finally:
        box.close()


def _as_bytes(data: str | bytes) -> bytes:
    return data if isinstance(data, bytes) else data.encode("utf-8", "surrogateescape")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=80), inputs((_STORED,)).map(_as_bytes)), max_size=6))
def test_the_outbox_reads_any_stored_bytes(bodies: list[bytes]) -> None:
    from broker._dlq_format import full
    from broker._outbox import Outbox

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "o.db"
        Outbox(path, checkpoints=False).close()  # the schema
        good = encode(_metric(1.0))
        db = sqlite3.connect(str(path), isolation_level=None)
        for body in [*bodies, good]:
            db.execute(
                "INSERT INTO pending (target, route, env_id, created, size, body) "
                "VALUES ('sink', 'r', 'x', 0, ?, ?)",
                (len(body), body),
            )
        db.close()
        box = Outbox(path, checkpoints=False)
        try:
            rows = box.load("sink", "r", 0, 100)
            assert len(rows) + box.unreadable == len(bodies) + 1
            assert box.rows == len(rows) and rows[-1].envelope == decode(good)
            for dead in box.dead_rows():
                assert full(dead)  # dlq show prints any stored body
        finally:
            box.close()
