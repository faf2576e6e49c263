"""Pure: channel writes -> AlphaX uplink documents and MQTT messages (no sockets)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from adapters.alphax import _uplinks, codec
from broker._envelope import ChannelWrite, Envelope, Metric

TOKEN = "tok-unit-7781"
TS = 1_700_000_000.0


def write(nid: str, channel: int, value: float, ts: float | None = TS) -> Envelope:
    return Envelope(
        source="t", body=ChannelWrite(network_id=nid, channel=channel, value=value, timestamp=ts)
    )


def test_groups_by_device_and_timestamp_in_arrival_order() -> None:
    batch = [
        write("a", 1, 1.0),
        write("b", 1, 2.0),
        write("a", 2, 3.0),
        write("a", 1, 4.0, TS + 1),
        write("a", 1, 5.0),  # channel 1 of (a, TS) again: a second group, after the first
    ]
    groups, failures = _uplinks.group_writes(batch)
    assert failures == []
    shape = [(g.network_id, g.ts_ms, [(p.channel, p.value) for p in g.points]) for g in groups]
    ms = int(TS * 1000)
    assert shape == [
        ("a", ms, [(1, 1.0), (2, 3.0)]),
        ("b", ms, [(1, 2.0)]),
        ("a", ms + 1000, [(1, 4.0)]),
        ("a", ms, [(1, 5.0)]),
    ]


def test_envelope_ts_is_used_without_a_timestamp() -> None:
    env = Envelope(
        source="t", ts=1_700_000_123.4567, body=ChannelWrite(network_id="a", channel=3, value=1.0)
    )
    (group,), _ = _uplinks.group_writes([env])
    assert group.ts_ms == 1_700_000_123_457


def test_unencodable_writes_fail_with_a_reason_each() -> None:
    bad = [
        write("a", 40, 1.0),
        write("a", 1, float("nan")),
        write("a", 1, 1.0, ts=1_700_000.0),  # seconds / 1000 by mistake: not 13 digits
        write("", 1, 1.0),
        Envelope(source="t", body=Metric(module="m", name="n", value=1.0)),
    ]
    groups, failures = _uplinks.group_writes([*bad, write("a", 2, 2.0)])
    assert [len(g.points) for g in groups] == [1]
    reasons = {env.id: reason for env, reason in failures}
    assert len(reasons) == 5
    assert "channel 40 is outside" in reasons[bad[0].id]
    assert "not finite" in reasons[bad[1].id]
    assert "13-digit" in reasons[bad[2].id]
    assert "network_id is empty" in reasons[bad[3].id]
    assert "not metric" in reasons[bad[4].id]


def test_v2_docs_carry_every_channel_of_a_group() -> None:
    groups, _ = _uplinks.group_writes([write("a", ch, ch * 1.5) for ch in (5, 1, 255)])
    docs, failures = _uplinks.build_docs(groups, TOKEN, "v2", "v2")
    assert failures == [] and len(docs) == 1
    body = codec.decode_v2_body(docs[0].body)
    assert body.token == TOKEN and body.network_id == "a" and body.timestamp_ms == TS * 1000
    assert [(v.channel, v.value) for v in body.values] == [(5, 7.5), (1, 1.5), (255, 382.5)]
    assert len(docs[0].envelopes) == 3


def test_v1_takes_the_run_from_channel_1_and_sends_the_rest_as_v2() -> None:
    envs = [write("a", 1, 1.25), write("a", 2, -2.5), write("a", 4, 4.0), write("a", 255, 3600)]
    groups, _ = _uplinks.group_writes(envs)
    docs, failures = _uplinks.build_docs(groups, TOKEN, "v1", "v2")
    assert failures == []
    assert [d.form for d in docs] == ["v1", "v2"]
    v1 = codec.decode_v1_body(docs[0].body)
    assert v1.payload.channels == (1.25, -2.5) and v1.payload.voltage_mv == 3600
    assert v1.payload.rssi == 0  # unknown device fields are padded with 0000
    v2 = codec.decode_v2_body(docs[1].body)
    assert [(v.channel, v.value) for v in v2.values] == [(4, 4.0)]
    assert {e.id for d in docs for e in d.envelopes} == {e.id for e in envs}


def test_v1_gaps_can_fail_instead() -> None:
    envs = [write("a", 2, 2.0), write("a", 252, 1.5)]  # no channel 1; error code not an int
    groups, _ = _uplinks.group_writes(envs)
    docs, failures = _uplinks.build_docs(groups, TOKEN, "v1", "fail")
    assert docs == []
    assert sorted(e.body.channel for e, _ in failures) == [2, 252]  # type: ignore[union-attr]
    assert all("v1_gaps" in reason for _, reason in failures)


def test_v1_sends_values_too_big_for_int32_as_v2() -> None:
    groups, _ = _uplinks.group_writes([write("a", 1, 1.0), write("a", 2, 3_000_000.0)])
    docs, _ = _uplinks.build_docs(groups, TOKEN, "v1", "v2")
    assert codec.decode_v1_body(docs[0].body).payload.channels == (1.0,)
    assert codec.decode_v2_body(docs[1].body).values[0].value == 3_000_000.0


def test_datagrams_are_split_by_channel_under_the_limit() -> None:
    envs = [write("device-with-a-longish-id", ch, ch + 0.123456789) for ch in range(1, 33)]
    groups, _ = _uplinks.group_writes(envs)
    docs, _ = _uplinks.build_docs(groups, TOKEN, "v2", "v2")
    assert len(docs[0].body) > 1200
    small, failures = _uplinks.split_for_datagrams(docs, TOKEN, 1200)
    assert failures == [] and len(small) > 1
    assert all(len(d.body) <= 1200 for d in small)
    seen = [v.channel for d in small for v in codec.decode_v2_body(d.body).values]
    assert sorted(seen) == list(range(1, 33))


def test_a_single_channel_over_the_datagram_limit_fails() -> None:
    groups, _ = _uplinks.group_writes([write("x" * 1300, 1, 1.0)])
    docs, _ = _uplinks.build_docs(groups, TOKEN, "v2", "v2")
    small, failures = _uplinks.split_for_datagrams(docs, TOKEN, 1200)
    assert small == [] and len(failures) == 1 and "max_datagram_bytes" in failures[0][1]


def test_mqtt_messages_for_each_topic_form() -> None:
    envs = [write("dev-9", 1, 4.0), write("dev-9", 2, 0.5), write("dev-9", 7, 7.0)]
    groups, _ = _uplinks.group_writes(envs)
    bulk, _ = _uplinks.build_messages(groups, TOKEN, "bulk", "v2")
    assert [m.topic for m in bulk] == [f"{TOKEN}/dev-9/0/data"]
    assert len(codec.decode_v2_body(bulk[0].payload).values) == 3
    channel, _ = _uplinks.build_messages(groups, TOKEN, "channel", "v2")
    assert [(m.topic, m.payload) for m in channel] == [
        (f"{TOKEN}/dev-9/1/data", b"4.0"),
        (f"{TOKEN}/dev-9/2/data", b"0.5"),
        (f"{TOKEN}/dev-9/7/data", b"7.0"),
    ]
    v4, failures = _uplinks.build_messages(groups, TOKEN, "v4", "v2")
    assert failures == []
    assert [m.topic for m in v4] == [f"{TOKEN}/dev-9/publish/v4", f"{TOKEN}/dev-9/0/data"]
    assert codec.decode_v1_hex(v4[0].payload.decode()).channels == (4.0, 0.5)
    assert json.loads(v4[1].payload)["data"] == [{"channelId": 7, "value": 7.0}]


def test_a_network_id_that_cannot_be_a_topic_level_fails() -> None:
    groups, _ = _uplinks.group_writes([write("a/b", 1, 1.0), write("ok", 1, 1.0)])
    messages, failures = _uplinks.build_messages(groups, TOKEN, "bulk", "v2")
    assert [m.topic for m in messages] == [f"{TOKEN}/ok/0/data"]
    assert len(failures) == 1 and "networkId contains '/'" in failures[0][1]
    assert TOKEN not in failures[0][1]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from([*range(1, 33), 252, 253, 254, 255]),
            st.integers(-2_000_000, 2_000_000).map(lambda n: n / 1000),
            st.integers(0, 3),
        ),
        max_size=60,
    ),
    st.sampled_from(["v1", "v2"]),
)
def test_every_write_lands_in_exactly_one_doc_or_failure(
    writes: list[tuple[str, int, float, int]], uplink: str
) -> None:
    envs = [write(nid, ch, value, TS + dt) for nid, ch, value, dt in writes]
    groups, failures = _uplinks.group_writes(envs)
    docs, more = _uplinks.build_docs(groups, TOKEN, uplink, "v2")  # type: ignore[arg-type]
    ids = [e.id for d in docs for e in d.envelopes] + [e.id for e, _ in failures + more]
    assert sorted(ids) == sorted(e.id for e in envs)
    for doc in docs:  # and every doc decodes back to the values it claims
        decoded = codec.decode_uplink_body(doc.body)
        if isinstance(decoded, codec.V2Uplink):
            got = {v.channel: v.value for v in decoded.values}
        else:
            got = decoded.payload.as_channels()
        for env in doc.envelopes:
            body = env.body
            assert isinstance(body, ChannelWrite)
            assert got[body.channel] == body.value
