"""Unit tests of the pure AlphaX codec: golden vectors from the vendor docs' examples
(docs/protocols/alphax.md), every named error, and property round trips."""

from __future__ import annotations

import json
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.alphax import codec
from adapters.alphax.codec import (
    ChannelGapError,
    ChannelRangeError,
    ChannelValue,
    CodecError,
    DuplicateChannelError,
    HexFormatError,
    JsonShapeError,
    MalformedJsonError,
    PayloadLengthError,
    PrecisionLossError,
    TimestampError,
    TooManyChannelsError,
    TopicError,
    V1Payload,
    V1Uplink,
    V2Uplink,
    ValueDigitsError,
    ValueRangeError,
)

TS = 1660962091000
SEED_MQTT_HEX = "0A10010001000000A00F0000"
SEED_HTTP_HEX = "0A10010001000000A00FA00F0000"  # the vendor docs' own (malformed) HTTP example

SEED_V2_BODY = b"""{
 "token": "5b131223c67e7abcd81b0617",
 "networkId": "70B3D32111BD648F7",
 "timestamp": 1660962091000,
 "data": [
  {"channelId": 1, "value": 462.467835},
  {"channelId": 255, "value": 3.976}
 ]
}"""

SEED_V6_RECORD = b"""{
"val_date":1608171093, "dev_netid":"842D8Y118754", "dev_chid":1, "val_raw":14,
"val_type":"Count", "dev_tag":"PAX03", "val_description":"Count", "dev_site":"City",
"val_cal":0, "val_offset":0, "dev_type":"device", "dev_label":"Active",
"dev_powersource":"Battery", "dev_network":"LTE CatM1", "loc_lat":-38.146664,
"loc_lng":145.116588, "dev_category":"Device", "dev_supplier":"Minnovation",
"dev_model":null, "dev_manufacturer":"Minnovation", "val_calibrated":14
}"""


def v1_body(data: object, **overrides: object) -> bytes:
    body = {"token": "tok", "networkId": "dev-1", "timestamp": TS, "data": data}
    body.update(overrides)
    return json.dumps(body).encode()


def v2_body(values: list[dict[str, object]], **overrides: object) -> bytes:
    return v1_body(values, **overrides)


# -- v1 hex: golden vectors ---------------------------------------------------------------------


def test_seed_mqtt_example_decodes_to_the_documented_values() -> None:
    payload = codec.decode_v1_hex(SEED_MQTT_HEX)
    assert payload == V1Payload(
        voltage_mv=4106, rssi=1, message_id=1, error_code=0, channels=(4.0,)
    )
    assert payload.as_channels() == {255: 4106.0, 254: 1.0, 253: 1.0, 252: 0.0, 1: 4.0}


def test_seed_mqtt_example_encodes_back_exactly() -> None:
    payload = V1Payload(4106, 1, 1, 0, (4.0,))
    assert codec.encode_v1_hex(payload) == SEED_MQTT_HEX
    assert codec.decode_v1_hex(SEED_MQTT_HEX.lower()) == payload


def test_seed_http_example_is_rejected_with_a_clear_message() -> None:
    with pytest.raises(PayloadLengthError) as info:
        codec.decode_v1_hex(SEED_HTTP_HEX)
    assert "not a multiple of 4" in str(info.value)
    assert "6 bytes" in str(info.value)
    with pytest.raises(PayloadLengthError) as in_body:
        codec.decode_v1_body(v1_body(SEED_HTTP_HEX))
    assert in_body.value.where == "$.data"


def test_negative_values_are_signed_little_endian() -> None:
    payload = V1Payload(voltage_mv=3300, rssi=-70, message_id=65535, channels=(-1.5, 0.001))
    text = codec.encode_v1_hex(payload)
    assert text == "E40CBAFFFFFF0000" + "24FAFFFF" + "01000000"
    assert codec.decode_v1_hex(text) == payload


def test_thirty_two_channels_fit_and_thirty_three_do_not() -> None:
    values = tuple(float(i) for i in range(1, 33))
    text = codec.encode_v1_hex(V1Payload(channels=values))
    assert len(text) == 2 * (8 + 32 * 4)
    assert codec.decode_v1_hex(text).channels == values
    with pytest.raises(TooManyChannelsError):
        codec.encode_v1_hex(V1Payload(channels=(*values, 33.0)))
    with pytest.raises(TooManyChannelsError) as info:
        codec.decode_v1_hex(text + "00000000")
    assert "33 channels" in str(info.value)


def test_int32_limits_of_a_channel() -> None:
    top, bottom = (2**31 - 1) / 1000, -(2**31) / 1000
    text = codec.encode_v1_hex(V1Payload(channels=(top, bottom)))
    assert codec.decode_v1_hex(text).channels == (top, bottom)
    with pytest.raises(ValueRangeError) as info:
        codec.encode_v1_hex(V1Payload(channels=(0.0, 2147483.648)))
    assert info.value.where == "channel 2"
    with pytest.raises(ValueRangeError):
        codec.encode_v1_hex(V1Payload(channels=(bottom - 0.001,)))
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueRangeError):
            codec.encode_v1_hex(V1Payload(channels=(bad,)))


@pytest.mark.parametrize(
    ("field", "value"),
    [("voltage_mv", 65536), ("voltage_mv", -1), ("rssi", 32768), ("message_id", -1)],
)
def test_device_fields_must_fit_16_bits(field: str, value: int) -> None:
    with pytest.raises(ValueRangeError) as info:
        codec.encode_v1_hex(V1Payload(**{field: value}))  # type: ignore[arg-type]
    assert info.value.where == field


def test_precision_rounds_by_default_and_rejects_when_strict() -> None:
    text = codec.encode_v1_hex(V1Payload(channels=(1.23456,)))
    assert codec.decode_v1_hex(text).channels == (1.235,)
    with pytest.raises(PrecisionLossError):
        codec.encode_v1_hex(V1Payload(channels=(1.23456,)), strict_precision=True)
    # Float noise within 1e-6 of a thousandth is not a loss.
    exact = codec.encode_v1_hex(V1Payload(channels=(0.1 + 0.2,)), strict_precision=True)
    assert codec.decode_v1_hex(exact).channels == (0.3,)


@pytest.mark.parametrize(
    ("text", "error", "fragment"),
    [
        ("0A1", HexFormatError, "odd length 3"),
        ("0A10010001000000A00F00G0", HexFormatError, "'G' at offset 22"),
        ("0A10 010001000000", HexFormatError, "' ' at offset 4"),
        ("0A100100", PayloadLengthError, "8 device bytes are mandatory"),
        ("", PayloadLengthError, "0 bytes"),
    ],
)
def test_malformed_hex(text: str, error: type[CodecError], fragment: str) -> None:
    with pytest.raises(error) as info:
        codec.decode_v1_hex(text)
    assert fragment in str(info.value)


def test_payload_from_channel_mapping() -> None:
    payload = codec.v1_payload_from_channels({255: 3600, 254: -80, 2: 2.5, 1: 1.0})
    assert payload == V1Payload(voltage_mv=3600, rssi=-80, channels=(1.0, 2.5))
    with pytest.raises(ChannelGapError) as gap:
        codec.v1_payload_from_channels({1: 1.0, 3: 3.0})
    assert "without channel 2" in str(gap.value)
    with pytest.raises(ChannelRangeError):
        codec.v1_payload_from_channels({40: 1.0})
    with pytest.raises(JsonShapeError):
        codec.v1_payload_from_channels({255: 3.5})


# -- v1 / v2 bodies ------------------------------------------------------------------------------


def test_v1_body_round_trip() -> None:
    uplink = codec.decode_v1_body(v1_body(SEED_MQTT_HEX))
    assert uplink == V1Uplink("tok", "dev-1", TS, V1Payload(4106, 1, 1, 0, (4.0,)))
    assert json.loads(codec.encode_v1_body(uplink)) == json.loads(v1_body(SEED_MQTT_HEX))


def test_seed_v2_example_decodes() -> None:
    uplink = codec.decode_v2_body(SEED_V2_BODY)
    assert uplink.network_id == "70B3D32111BD648F7"
    assert uplink.timestamp_ms == TS
    assert uplink.values == (ChannelValue(1, 462.467835), ChannelValue(255, 3.976))


def test_v2_encoder_rounds_float_noise_to_16_digits() -> None:
    uplink = V2Uplink("tok", "dev-1", TS, (ChannelValue(1, 0.1 + 0.2), ChannelValue(2, -7)))
    wire = json.loads(codec.encode_v2_body(uplink))
    assert wire["data"] == [{"channelId": 1, "value": 0.3}, {"channelId": 2, "value": -7.0}]
    assert wire["networkId"] == "dev-1"


def test_uplink_dispatch_by_data_type_and_unknown_fields() -> None:
    v1 = codec.decode_uplink_body(v1_body(SEED_MQTT_HEX, extra={"x": 1}))
    v2 = codec.decode_uplink_body(v2_body([{"channelId": 3, "value": 1, "unit": "C"}]))
    assert isinstance(v1, V1Uplink)
    assert isinstance(v2, V2Uplink)
    assert v2.values == (ChannelValue(3, 1.0),)


@pytest.mark.parametrize(
    ("body", "error", "where"),
    [
        (v2_body([{"channelId": 0, "value": 1}]), ChannelRangeError, "$.data[0].channelId"),
        (v2_body([{"channelId": 33, "value": 1}]), ChannelRangeError, "$.data[0].channelId"),
        (v2_body([{"channelId": 251, "value": 1}]), ChannelRangeError, "$.data[0].channelId"),
        (v2_body([{"channelId": 1, "value": 1}, {"channelId": 1, "value": 2}]),
         DuplicateChannelError, "$.data[1]"),
        (v2_body([]), JsonShapeError, "$.data"),
        (v2_body([{"channelId": 1, "value": 0.30000000000000004}]),
         ValueDigitsError, "$.data[0].value"),
        (v2_body([{"channelId": 1, "value": 1e16}]), ValueRangeError, "$.data[0].value"),
        (v1_body(SEED_MQTT_HEX, timestamp=1660962091), TimestampError, "$.timestamp"),
        (v1_body(SEED_MQTT_HEX, networkId=""), JsonShapeError, "$.networkId"),
    ],
)  # fmt: skip
def test_v2_and_body_errors_name_the_place(
    body: bytes, error: type[CodecError], where: str
) -> None:
    with pytest.raises(error) as info:
        codec.decode_uplink_body(body)
    assert info.value.where == where


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (v2_body([{"channelId": 1, "value": "1.5"}]), "`$.data[0].value`"),
        (v1_body(SEED_MQTT_HEX, timestamp=1.5e12), "`$.timestamp`"),
        (v1_body(SEED_MQTT_HEX, token=5), "`$.token`"),
        (json.dumps({"token": "t", "networkId": "n", "timestamp": TS}).encode(), "`data`"),
        (v2_body([{"channelId": True, "value": 1}]), "`$.data[0].channelId`"),
    ],
)
def test_wrong_json_types(body: bytes, fragment: str) -> None:
    with pytest.raises(JsonShapeError) as info:
        codec.decode_uplink_body(body)
    assert fragment in str(info.value)


def test_malformed_json_and_wrong_version() -> None:
    with pytest.raises(MalformedJsonError):
        codec.decode_v2_body(b'{"token": ')
    with pytest.raises(JsonShapeError, match="v2 format"):
        codec.decode_v1_body(v2_body([{"channelId": 1, "value": 1}]))
    with pytest.raises(JsonShapeError, match="v1 format"):
        codec.decode_v2_body(v1_body(SEED_MQTT_HEX))


def test_every_error_is_a_codec_error_and_a_value_error() -> None:
    names = [n for n in codec.__all__ if n.endswith("Error")]
    assert len(names) >= 14
    for name in names:
        cls = getattr(codec, name)
        assert issubclass(cls, CodecError)
        assert issubclass(cls, ValueError)


# -- read records and error bodies ---------------------------------------------------------------


def test_v4_records_array_or_single_and_string_timestamps() -> None:
    single = b'{"channel":4,"networkID":"21eea42dd37b","value":0.278,"timestamp":"1537406384"}'
    (record,) = codec.decode_v4_records(single)
    assert (record.channel, record.network_id, record.value) == (4, "21eea42dd37b", 0.278)
    assert record.epoch_s == 1537406384
    both = codec.decode_v4_records(b"[" + single + b"," + single.replace(b"4,", b"5,", 1) + b"]")
    assert [r.channel for r in both] == [4, 5]
    assert codec.decode_v4_records(codec.encode_v4_records(both)) == both
    with pytest.raises(JsonShapeError, match="epoch seconds"):
        codec.decode_v4_records(single.replace(b'"1537406384"', b'"yesterday"'))


def test_v6_seed_record_with_nulls_and_unknown_fields() -> None:
    (record,) = codec.decode_v6_records(SEED_V6_RECORD.replace(b"{", b'{"new_field": [1],', 1))
    assert record.dev_netid == "842D8Y118754"
    assert record.val_date == 1608171093
    assert record.value == 14.0
    assert record.dev_model is None
    assert (record.loc_lat, record.loc_lng) == (-38.146664, 145.116588)
    assert codec.decode_v6_records(codec.encode_v6_records([record])) == [record]
    with pytest.raises(JsonShapeError, match="dev_netid"):
        codec.decode_v6_records(b'[{"val_date": 1, "dev_chid": 1}]')


def test_error_bodies_accept_string_and_number_codes() -> None:
    assert codec.decode_error_body(b'{"code":"405","error":"Method Not Allowed"}').code == 405
    assert codec.decode_error_body(b'{"code": 304, "error": "later"}').code == 304
    assert json.loads(codec.encode_error_body(429, "slow", code_as_string=True))["code"] == "429"
    assert json.loads(codec.encode_error_body(429, "slow"))["code"] == 429
    with pytest.raises(JsonShapeError, match="not a number"):
        codec.decode_error_body(b'{"code": "oops", "error": ""}')


# -- MQTT topics and payloads --------------------------------------------------------------------


def test_topic_builders_and_parser() -> None:
    assert codec.publish_v4_topic("tok", "dev") == "tok/dev/publish/v4"
    assert codec.bulk_topic("tok", "dev") == "tok/dev/0/data"
    assert codec.channel_topic("tok", "dev", 7) == "tok/dev/7/data"
    for text in ("tok/dev/publish/v4", "tok/dev/0/data", "tok/dev/7/data", "tok/dev/254/data"):
        assert codec.format_topic(codec.parse_topic(text)) == text
    assert codec.parse_topic("tok/dev/7/data") == codec.Topic("channel", "tok", "dev", 7)
    assert codec.parse_topic("tok/dev/0/data").kind == "bulk"


@pytest.mark.parametrize(
    ("topic", "error"),
    [
        ("tok/dev/data", TopicError),
        ("tok/dev/publish/v5", TopicError),
        ("tok/dev/x/data", TopicError),
        ("/dev/1/data", TopicError),
        ("tok/dev/33/data", ChannelRangeError),
        ("a/b/c/d/e", TopicError),
    ],
)
def test_bad_topics(topic: str, error: type[CodecError]) -> None:
    with pytest.raises(error):
        codec.parse_topic(topic)


def test_topic_levels_reject_wildcards_and_channel_zero() -> None:
    with pytest.raises(TopicError):
        codec.publish_v4_topic("to+k", "dev")
    with pytest.raises(TopicError):
        codec.bulk_topic("tok", "a/b")
    with pytest.raises(ChannelRangeError):
        codec.channel_topic("tok", "dev", 0)


def test_channel_value_payload() -> None:
    assert codec.decode_channel_value(b"4.25") == 4.25
    assert codec.decode_channel_value(" -7 ") == -7.0
    assert codec.encode_channel_value(0.1 + 0.2) == b"0.3"
    with pytest.raises(MalformedJsonError):
        codec.decode_channel_value(b"abc")
    with pytest.raises(JsonShapeError):
        codec.decode_channel_value(b'"4"')
    with pytest.raises(ValueDigitsError):
        codec.decode_channel_value(b"1.2345678901234567")


# -- redaction -----------------------------------------------------------------------------------


def test_redact_hides_the_token_everywhere() -> None:
    token = "s3cr/t+tok"
    text = (
        f"GET /conduitv4?token=s3cr%2Ft%2Btok&id=1 topic {token}/dev/0/data "
        f'body {{"token": "{token}", "networkId": "dev"}}'
    )
    out = codec.redact(text, token)
    assert "s3cr" not in out
    assert out.count("***") == 3
    assert "dev/0/data" in out and "networkId" in out
    assert codec.redact(b"?token=other&x=1") == "?token=***&x=1"
    assert codec.redact('{"token":"zzz"}') == '{"token":"***"}'
    assert codec.redact_topic("tok/dev/1/data") == "***/dev/1/data"


# -- properties ----------------------------------------------------------------------------------

u16 = st.integers(0, 2**16 - 1)
payloads = st.builds(
    V1Payload,
    voltage_mv=u16,
    rssi=st.integers(-(2**15), 2**15 - 1),
    message_id=u16,
    error_code=u16,
    channels=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=32).map(
        lambda ints: tuple(i / 1000 for i in ints)
    ),
)


@given(payloads)
def test_v1_payload_round_trip(payload: V1Payload) -> None:
    assert codec.decode_v1_hex(codec.encode_v1_hex(payload)) == payload


@given(st.integers(0, 32).flatmap(lambda n: st.binary(min_size=8 + 4 * n, max_size=8 + 4 * n)))
def test_v1_hex_round_trip(raw: bytes) -> None:
    text = raw.hex().upper()
    payload = codec.decode_v1_hex(text)
    assert codec.encode_v1_hex(payload) == text
    assert struct.unpack_from("<h", raw, 2)[0] == payload.rssi


values = st.floats(allow_nan=False, allow_infinity=False, min_value=-9.99e15, max_value=9.99e15)
channel_ids = st.sampled_from([*range(1, 33), 252, 253, 254, 255])


@given(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=20),
    st.integers(10**12, 10**13 - 1),
    st.lists(st.tuples(channel_ids, values), min_size=1, max_size=36, unique_by=lambda t: t[0]),
)
def test_v2_body_round_trip(network_id: str, ts: int, items: list[tuple[int, float]]) -> None:
    uplink = V2Uplink("tok", network_id, ts, tuple(ChannelValue(c, v) for c, v in items))
    wire = codec.encode_v2_body(uplink)
    decoded = codec.decode_v2_body(wire)
    assert decoded.network_id == network_id and decoded.timestamp_ms == ts
    assert [c.channel for c in decoded.values] == [c for c, _ in items]
    for (_, sent), got in zip(items, decoded.values, strict=True):
        assert got.value == pytest.approx(sent, rel=1e-15, abs=0)
    assert codec.encode_v2_body(decoded) == wire
