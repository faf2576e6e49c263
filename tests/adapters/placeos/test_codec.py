"""The PlaceOS codec against golden frames of ``docs/protocols/placeos.md``, the public docs'
wrong forms ("Where the public docs are wrong"), malformed input, and round trips (hypothesis)
in both directions."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.placeos.codec import (
    PING_FRAME,
    PONG_FRAME,
    BindRequest,
    CodecError,
    DebugFrame,
    DebugRequest,
    ErrorCode,
    ErrorFrame,
    ExecRequest,
    IgnoreRequest,
    MalformedFrameError,
    Meta,
    NotifyFrame,
    Request,
    RequestJSONError,
    RequestParseError,
    RequestSchemaError,
    SuccessFrame,
    UnbindRequest,
    decode_server_frame,
    decode_value,
    encode_debug,
    encode_error,
    encode_notify,
    encode_request,
    encode_success,
    error_code_name,
    parse_request,
)

META = Meta(sys="sys-1234", mod="Bookings", index=1, name="bookings")
META_JSON = '{"sys":"sys-1234","mod":"Bookings","index":1,"name":"bookings"}'


# ----------------------------------------------------------------- golden server frames


def test_bind_success_has_meta() -> None:
    frame = decode_server_frame(f'{{"id":1,"type":"success","meta":{META_JSON}}}')
    assert frame == SuccessFrame(id=1, meta=META)
    assert frame.value is msgspec.UNSET and frame.code is None


def test_unbind_success_is_bare() -> None:
    assert decode_server_frame('{"id":2,"type":"success"}') == SuccessFrame(id=2)


def test_exec_success_keeps_value_raw_and_code() -> None:
    text = f'{{"id":3,"type":"success","meta":{META_JSON},"value":{{"a":[1,2]}},"code":200}}'
    frame = decode_server_frame(text)
    assert isinstance(frame, SuccessFrame)
    assert isinstance(frame.value, msgspec.Raw)
    assert bytes(frame.value) == b'{"a":[1,2]}'
    assert decode_value(frame.value) == {"a": [1, 2]}
    assert frame.code == 200 and frame.meta == META


def test_exec_success_with_null_value_is_not_unset() -> None:
    frame = decode_server_frame('{"id":3,"type":"success","value":null,"code":200}')
    assert isinstance(frame, SuccessFrame) and isinstance(frame.value, msgspec.Raw)
    assert decode_value(frame.value) is None


def test_notify_value_is_embedded_json() -> None:
    frame = decode_server_frame(f'{{"id":18,"type":"notify","value":[],"meta":{META_JSON}}}')
    assert isinstance(frame, NotifyFrame)
    assert decode_value(frame.value) == [] and frame.id == 18 and frame.meta == META


def test_notify_null_value_means_deleted() -> None:
    frame = decode_server_frame(f'{{"id":18,"type":"notify","value":null,"meta":{META_JSON}}}')
    assert isinstance(frame, NotifyFrame) and bytes(frame.value) == b"null"


def test_notify_without_value_is_null() -> None:
    frame = decode_server_frame('{"id":18,"type":"notify"}')
    assert isinstance(frame, NotifyFrame) and decode_value(frame.value) is None


def test_error_code_travels_in_error_code() -> None:
    text = '{"id":5,"type":"error","error_code":6,"msg":"could not find module","code":500}'
    frame = decode_server_frame(text)
    assert frame == ErrorFrame(id=5, error_code=6, msg="could not find module", code=500)
    assert isinstance(frame, ErrorFrame) and frame.error_name == "MODULE_NOT_FOUND"


def test_error_with_an_unknown_code_still_decodes() -> None:
    frame = decode_server_frame('{"id":5,"type":"error","error_code":42,"msg":"new"}')
    assert isinstance(frame, ErrorFrame) and frame.error_name == "UNKNOWN_ERROR_CODE_42"


def test_debug_frame() -> None:
    text = (
        '{"type":"debug","mod":"mod-ABC","level":"info","msg":"input changed",'
        '"meta":{"sys":"sys-1","mod":"mod-ABC","index":1,"name":"debug"}}'
    )
    frame = decode_server_frame(text)
    assert frame == DebugFrame(
        mod="mod-ABC", msg="input changed", level="info", meta=Meta("sys-1", "mod-ABC", 1, "debug")
    )


def test_heartbeats_are_raw_text_not_json() -> None:
    assert decode_server_frame("pong") is PONG_FRAME
    assert decode_server_frame(b"pong") is PONG_FRAME
    assert decode_server_frame("ping") is PING_FRAME
    with pytest.raises(MalformedFrameError):
        decode_server_frame('"pong"')


# ---------------------------------------------------------- the public docs' wrong forms


def test_seed_stringified_notify_value_stays_a_string() -> None:
    """The docs show ``"value": "[]"``; the value is then the JSON *string* "[]"."""
    frame = decode_server_frame(f'{{"id":18,"type":"notify","value":"[]","meta":{META_JSON}}}')
    assert isinstance(frame, NotifyFrame)
    assert decode_value(frame.value) == "[]"


def test_seed_unbind_success_with_meta_is_tolerated() -> None:
    frame = decode_server_frame(f'{{"id":2,"type":"success","meta":{META_JSON}}}')
    assert frame == SuccessFrame(id=2, meta=META)


def test_seed_debug_success_with_mod_id_and_short_meta_is_tolerated() -> None:
    text = (
        '{"id":4,"type":"success","mod_id":"mod-Z6XXB1doL4",'
        '"meta":{"sys":"sys-Z6XXA-Kc_v","mod":"Bookings","index":1}}'
    )
    assert decode_server_frame(text) == SuccessFrame(
        id=4, meta=Meta("sys-Z6XXA-Kc_v", "Bookings", 1, "")
    )


def test_seed_debug_frame_with_klass_and_no_id() -> None:
    text = (
        '{"type":"debug","mod":"mod-Z6XXB1doL4","klass":"::Some::Display",'
        '"level":"debug","msg":"input changed to HDMI"}'
    )
    frame = decode_server_frame(text)
    assert frame == DebugFrame(mod="mod-Z6XXB1doL4", msg="input changed to HDMI", level="debug")


def test_seed_string_id_request_is_a_parse_failure() -> None:
    text = '{"id":"abc","cmd":"bind","sys":"sys-1234","mod":"Bookings","name":"bookings"}'
    with pytest.raises(RequestSchemaError, match=r"\$\.id"):
        parse_request(text)


def test_seed_ignore_with_null_index_parses_as_index_1() -> None:
    text = (
        '{"id":5,"cmd":"ignore","sys":"sys-Z6XXA-Kc_v","mod":"mod-Z6XXB1doL4",'
        '"index":null,"name":"ignore"}'
    )
    assert parse_request(text) == IgnoreRequest(
        id=5, sys="sys-Z6XXA-Kc_v", mod="mod-Z6XXB1doL4", index=1, name="ignore"
    )


# ----------------------------------------------------------------- malformed server frames


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "not json",
        "[1,2]",
        "42",
        '{"id":1}',
        '{"id":1,"type":"greeting"}',
        '{"id":"1","type":"success"}',
        '{"id":1.5,"type":"notify","value":1}',
        '{"type":"error","error_code":1}',
        '{"id":1,"type":"error","error_code":"6"}',
        '{"id":1,"type":"success","meta":{"sys":"s"}}',
        '{"type":"debug","msg":"no module"}',
    ],
)
def test_malformed_server_frames_raise(text: str) -> None:
    with pytest.raises(MalformedFrameError) as caught:
        decode_server_frame(text)
    assert isinstance(caught.value, CodecError) and isinstance(caught.value, ValueError)
    assert caught.value.excerpt == text


def test_malformed_frame_excerpt_is_truncated() -> None:
    text = '{"id":1,"type":"nope","pad":"' + "x" * 5000 + '"}'
    with pytest.raises(MalformedFrameError) as caught:
        decode_server_frame(text)
    assert len(caught.value.excerpt) < 200
    assert caught.value.excerpt.startswith('{"id":1,"type":"nope"')
    assert "more chars" in caught.value.excerpt and "$.type" in caught.value.reason


# ----------------------------------------------------------------- error codes


def test_error_codes_have_the_documented_values() -> None:
    assert [(c.name, c.value) for c in ErrorCode] == [
        ("PARSE_ERROR", 0),
        ("BAD_REQUEST", 1),
        ("ACCESS_DENIED", 2),
        ("REQUEST_FAILED", 3),
        ("UNKNOWN_COMMAND", 4),
        ("SYSTEM_NOT_FOUND", 5),
        ("MODULE_NOT_FOUND", 6),
        ("UNEXPECTED_FAILURE", 7),
    ]


@pytest.mark.parametrize(
    ("code", "name"),
    [(0, "PARSE_ERROR"), (7, "UNEXPECTED_FAILURE"), (8, "UNKNOWN_ERROR_CODE_8"),
     (-1, "UNKNOWN_ERROR_CODE_-1"), (None, "MISSING_ERROR_CODE")],
)  # fmt: skip
def test_error_code_name_never_raises(code: int | None, name: str) -> None:
    assert error_code_name(code) == name


# ----------------------------------------------------------------- client request encoding


def test_requests_encode_with_cmd_and_without_defaults() -> None:
    bind = BindRequest(id=1, sys="sys-1234", mod="Bookings", name="bookings")
    assert json.loads(encode_request(bind)) == {
        "cmd": "bind", "id": 1, "sys": "sys-1234", "mod": "Bookings", "name": "bookings"
    }  # fmt: skip
    exec_ = ExecRequest(id=3, sys="s", mod="Bookings", index=2, name="make", args=[1631058815])
    assert json.loads(encode_request(exec_)) == {
        "cmd": "exec", "id": 3, "sys": "s", "mod": "Bookings", "index": 2, "name": "make",
        "args": [1631058815],
    }  # fmt: skip
    no_args = ExecRequest(id=4, sys="s", mod="m", name="f")
    assert "args" not in json.loads(encode_request(no_args))
    assert json.loads(encode_request(UnbindRequest(id=5, sys="s", mod="m", name="n")))["cmd"] == (
        "unbind"
    )


# ----------------------------------------------------------------- server-side parsing

GOOD = {"id": 7, "cmd": "bind", "sys": "sys-1", "mod": "Display", "name": "power"}


def _with(**changes: Any) -> str:
    fields = {**GOOD, **changes}
    return json.dumps({k: v for k, v in fields.items() if v is not ...})


def test_parse_request_accepts_every_command() -> None:
    for cmd, cls in [
        ("bind", BindRequest),
        ("unbind", UnbindRequest),
        ("exec", ExecRequest),
        ("debug", DebugRequest),
        ("ignore", IgnoreRequest),
    ]:
        req = parse_request(_with(cmd=cmd, index=3))
        assert type(req) is cls and req.index == 3 and req.id == 7


def test_parse_request_keeps_exec_args_and_drops_them_elsewhere() -> None:
    req = parse_request(_with(cmd="exec", args=[1, "a", None, {"k": [True]}]))
    assert isinstance(req, ExecRequest) and req.args == [1, "a", None, {"k": [True]}]
    # The server's Request declares args nilable for every command; bind ignores it.
    assert parse_request(_with(args=[1])) == BindRequest(
        id=7, sys="sys-1", mod="Display", name="power"
    )


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", RequestJSONError),
        ("{", RequestJSONError),
        ("ping ", RequestJSONError),
        ("[1]", RequestSchemaError),
        ('"bind"', RequestSchemaError),
        (_with(id="7"), RequestSchemaError),
        (_with(id=7.0), RequestSchemaError),
        (_with(id=True), RequestSchemaError),
        (_with(id=None), RequestSchemaError),
        (_with(id=2**63), RequestSchemaError),
        (_with(id=...), RequestSchemaError),
        (_with(cmd="subscribe"), RequestSchemaError),
        (_with(cmd="BIND"), RequestSchemaError),
        (_with(cmd=...), RequestSchemaError),
        (_with(sys=...), RequestSchemaError),
        (_with(mod=...), RequestSchemaError),
        (_with(name=...), RequestSchemaError),
        (_with(sys=None), RequestSchemaError),
        (_with(index="1"), RequestSchemaError),
        (_with(index=2**31), RequestSchemaError),
        (_with(args={"a": 1}), RequestSchemaError),
        (_with(extra=1), RequestSchemaError),
    ],
)
def test_parse_request_rejects_what_the_server_cannot_parse(
    text: str, error: type[RequestParseError]
) -> None:
    with pytest.raises(error) as caught:
        parse_request(text)
    assert caught.value.excerpt == text


def test_parse_error_salvages_the_id_for_the_log() -> None:
    with pytest.raises(RequestSchemaError) as caught:
        parse_request(_with(extra=1))
    assert caught.value.request_id == 7
    with pytest.raises(RequestSchemaError) as caught:
        parse_request(_with(id="7"))
    assert caught.value.request_id is None


# ----------------------------------------------------------------- server-side encoders


def test_server_encoders_write_the_servers_shapes() -> None:
    assert encode_success(2) == '{"id":2,"type":"success"}'
    assert json.loads(encode_success(1, meta=META)) == {
        "id": 1, "type": "success", "meta": json.loads(META_JSON)
    }  # fmt: skip
    exec_ok = encode_success(3, meta=META, value=msgspec.Raw(b"{}"), code=200)
    assert exec_ok == f'{{"id":3,"type":"success","value":{{}},"meta":{META_JSON},"code":200}}'
    error = encode_error(5, ErrorCode.MODULE_NOT_FOUND, "could not find module")
    assert (
        error == '{"id":5,"type":"error","msg":"could not find module","error_code":6,"code":500}'
    )
    notify = encode_notify(18, msgspec.Raw(b"null"), META)
    assert notify == f'{{"id":18,"type":"notify","value":null,"meta":{META_JSON}}}'
    debug = encode_debug(4, "mod-ABC", "info", "hello", Meta("sys-1", "mod-ABC", 1, "debug"))
    assert json.loads(debug) == {
        "id": 4, "type": "debug", "msg": "hello", "mod": "mod-ABC", "level": "info",
        "meta": {"sys": "sys-1", "mod": "mod-ABC", "index": 1, "name": "debug"},
    }  # fmt: skip


def test_server_frames_decode_on_the_client() -> None:
    assert decode_server_frame(encode_success(2)) == SuccessFrame(id=2)
    error = decode_server_frame(encode_error(9, 3, "module raised: boom"))
    assert error == ErrorFrame(id=9, error_code=3, msg="module raised: boom", code=500)
    debug = decode_server_frame(encode_debug(4, "mod-A", "warn", "x", META))
    assert debug == DebugFrame(mod="mod-A", msg="x", level="warn", id=4, meta=META)


# ----------------------------------------------------------------- round trips

_text = st.text(max_size=20)
_int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
_json = st.recursive(
    st.none()
    | st.booleans()
    | _int64
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)


def _requests() -> st.SearchStrategy[Request]:
    common = {"id": _int64, "sys": _text, "mod": _text, "index": _int32, "name": _text}
    plain = [
        st.builds(cls, **common)
        for cls in (BindRequest, UnbindRequest, DebugRequest, IgnoreRequest)
    ]
    exec_ = st.builds(ExecRequest, args=st.none() | st.lists(_json, max_size=4), **common)
    return st.one_of(*plain, exec_)


@given(_requests())
def test_client_requests_round_trip_through_the_strict_server_parser(req: Request) -> None:
    assert parse_request(encode_request(req)) == req
    assert parse_request(encode_request(req).encode()) == req


@given(_int64, _json)
def test_notify_values_round_trip_server_to_client(bind_id: int, value: Any) -> None:
    text = encode_notify(bind_id, msgspec.Raw(msgspec.json.encode(value)), META)
    frame = decode_server_frame(text)
    assert isinstance(frame, NotifyFrame) and frame.id == bind_id and frame.meta == META
    assert decode_value(frame.value) == value
