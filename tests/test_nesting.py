"""Every decoder of peer input and of stored envelopes refuses JSON nested too deeply with
its own error type, at any depth (a PlaceOS value nested 1,000 levels deep used to raise
RecursionError out of the codec and crash-loop the adapter).  Where the position takes any
JSON value, the error says it was the nesting; where the type is fixed, the decoder stops
at the first wrong type, before any depth.

The bound is fixed (issue 17, item 1): 128 levels for peer input, the frame's own included,
256 for a stored envelope; not "wherever Python's recursion limit happens to be", which
depends on the caller's stack, so what an adapter accepts the router can always read back."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from adapters.allxon import codec as allxon
from adapters.alphax import codec as alphax
from adapters.placeos import codec as placeos
from broker import NESTED_TOO_DEEP, decode
from broker._envelope import STORED_MAX_DEPTH
from broker._json import MAX_DEPTH

PLACEOS = '{"id":1,"type":"notify","value":VALUE,"meta":{"sys":"s","mod":"M","index":1,"name":"n"}}'
ALLXON = '{"jsonrpc":"2.0","method":"v2/notifyPluginAlarmUpdate","params":VALUE}'
ALLXON_PARAM = '{"jsonrpc":"2.0","method":"v2/notifyPluginAlarmUpdate","params":{"x":VALUE}}'
UPLINK = '{"networkId":"n","token":"t","timestamp":1,"data":VALUE}'
STORED = (
    '{"source":"s","body":{"kind":"status_change","system":"s","module":"M","name":"n",'
    '"value":VALUE}}'
)

#: name -> (decoder, its error type, the frame around VALUE, whether VALUE may be any JSON)
DECODERS: dict[str, tuple[Callable[[str], object], type[Exception], str, bool]] = {
    "placeos frame": (placeos.decode_server_frame, placeos.MalformedFrameError, PLACEOS, True),
    "allxon frame": (allxon.decode_frame, allxon.CodecError, ALLXON, True),
    "allxon params": (allxon.decode_frame, allxon.CodecError, ALLXON_PARAM, True),
    "alphax uplink": (alphax.decode_uplink_body, alphax.CodecError, UPLINK, False),
    "alphax records": (alphax.decode_v4_records, alphax.CodecError, "VALUE", False),
    "alphax error body": (alphax.decode_error_body, alphax.CodecError, '{"x":VALUE}', True),
    "alphax channel payload": (alphax.decode_channel_value, alphax.CodecError, "VALUE", False),
    "stored envelope": (decode, msgspec.DecodeError, STORED, True),
}


@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize("name", sorted(DECODERS))
def test_a_value_nested_too_deeply_is_the_decoders_own_error(name: str, depth: int) -> None:
    decoder, error, frame, any_json = DECODERS[name]
    with pytest.raises(error) as caught:
        decoder(frame.replace("VALUE", "[" * depth + "]" * depth))
    if any_json:
        assert "nested too deeply" in str(caught.value)
        if name != "stored envelope":
            assert NESTED_TOO_DEEP in str(caught.value)


def nest(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_the_bound_is_128_levels_with_the_frames_own() -> None:
    assert MAX_DEPTH == 128
    frame = placeos.decode_server_frame(PLACEOS.replace("VALUE", nest(127)))  # 1 + 127
    assert isinstance(frame, placeos.NotifyFrame)
    assert placeos.decode_value(frame.value) is not None
    with pytest.raises(placeos.MalformedFrameError, match="more than 128 levels"):
        placeos.decode_server_frame(PLACEOS.replace("VALUE", nest(128)))
    for name in ("allxon frame", "allxon params", "alphax error body"):
        decoder, error, template, _ = DECODERS[name]
        levels = template.count("{")
        with pytest.raises(error, match="more than 128 levels"):
            decoder(template.replace("VALUE", nest(MAX_DEPTH + 1 - levels)))
        try:  # one level less: whatever else is wrong, it is not the nesting
            decoder(template.replace("VALUE", nest(MAX_DEPTH - levels)))
        except error as err:
            assert "nested" not in str(err)


def test_a_stored_envelope_may_nest_256_levels() -> None:
    assert STORED_MAX_DEPTH == 256
    envelope = decode(STORED.replace("VALUE", nest(256 - 2)))  # envelope, body, value
    assert envelope.source == "s"
    with pytest.raises(msgspec.DecodeError, match="more than 256 levels"):
        decode(STORED.replace("VALUE", nest(256 - 1)))
