"""The NATS config: checked without the network, each mistake one line naming its key.

Plus the version rule (pure): which configured features a server version lacks.
"""

from __future__ import annotations

import pytest

from adapters.nats.codec import compile_subject_template, missing_features, subject_token
from adapters.nats.config import NatsConfig
from broker._config import loads
from broker._envelope import Envelope, Metric
from broker._errors import ConfigError

BASE = '[adapters.bus]\ntype = "nats"\nservers = ["nats://127.0.0.1:4999"]\n'
PUB = "[adapters.bus.publish]\n"
STREAM = '[[adapters.bus.streams]]\nname = "S"\nsubjects = ["junction.>"]\n'


def load_one(body: str, base: str = BASE) -> NatsConfig:
    cfg = loads(base + body, "t.toml", {"nats": NatsConfig}).adapters["bus"]
    assert isinstance(cfg, NatsConfig)
    return cfg


def test_a_sink_and_source_config_loads() -> None:
    cfg = load_one(
        STREAM
        + 'retention = "workqueue"\n'
        + PUB
        + 'subject = "junction.{kind}.{source}.{subject}"\n'
        + '[adapters.bus.consume]\nstream = "S"\nack_wait_s = 2\n'
    )
    assert cfg.publish is not None and cfg.consume is not None
    assert cfg.streams[0].retention == "workqueue" and cfg.consume.durable == "junction"


@pytest.mark.parametrize(
    ("body", "path", "words"),
    [
        ("", "adapters.bus", "set [publish] (a sink), [consume] (a source), or both"),
        (PUB + 'subject = "junction.{kindd}"', "adapters.bus.publish", "unknown field {kindd}"),
        (PUB + 'subject = "junction.*.{kind}"', "adapters.bus.publish", "not a publish subject"),
        (PUB + 'subject = "junction..{kind}"', "adapters.bus.publish", "empty token"),
        (PUB + "ack_timeout_s = 0", "adapters.bus.publish.ack_timeout_s", "must be > 0"),
        (PUB + "max_pendin = 5", "adapters.bus.publish.max_pendin", "did you mean 'max_pending'"),
        (STREAM + 'retention = "workq"\n' + PUB, "adapters.bus.streams[0].retention", "workq"),
        (STREAM + "replicas = 0\n" + PUB, "adapters.bus.streams[0].replicas", ">= 1"),
        ('[[adapters.bus.streams]]\nname = "a.b"\nsubjects = ["x"]\n' + PUB,
         "adapters.bus.streams[0]", "name 'a.b'"),
        ('[[adapters.bus.streams]]\nname = "S"\nsubjects = ["a.>.b"]\n' + PUB,
         "adapters.bus.streams[0]", "'>' may only be the last token"),
        ('[adapters.bus.consume]\nstream = "S"\nbatch = 50\nmax_ack_pending = 10',
         "adapters.bus.consume", "batch (50) must be <= max_ack_pending (10)"),
        ('[adapters.bus.consume]\nstream = "S"\nmax_deliver = 0', "adapters.bus.consume",
         "max_deliver must be -1 or >= 1"),
        ('[adapters.bus.consume]\ndurable = "x"', "adapters.bus.consume.stream", "missing"),
        ('token = "tok-12345678"\nuser = "u"\npassword = "pw-12345678"\n' + PUB, "adapters.bus",
         "one way to log in, not token and user/password"),
        ('user = "u"\n' + PUB, "adapters.bus", "user and password go together"),
        ('nkey_seed = "XXnotaseed1"\n' + PUB, "adapters.bus", "must be a user seed"),
        ('ca_file = "/nonexistent/ca.pem"\n' + PUB, "adapters.bus", "ca_file"),
        (PUB + "msg_ttl_s = 60\n" + STREAM, "adapters.bus", "needs a stream with allow_msg_ttl"),
    ],
)  # fmt: skip
def test_mistakes_are_one_line_naming_the_key(body: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_one(body)
    (problem,) = info.value.problems
    text = str(problem)
    assert "\n" not in text
    assert problem.path == path and words in text, text


@pytest.mark.parametrize(
    ("servers", "words"),
    [
        ('["http://x:4222"]', "is not nats://host[:port] or tls://host[:port]"),
        ('["nats://x:99999"]', "bad port"),
        ("[]", "servers is empty"),
        (
            '["nats://127.0.0.1:4222", "nats://u:pw-secret@h:4222"]',
            "servers[1]: credentials in the URL (user:password@) are refused",
        ),
    ],
)
def test_bad_server_urls(servers: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_one(PUB, base=f'[adapters.bus]\ntype = "nats"\nservers = {servers}\n')
    assert words in str(info.value)
    assert "pw-secret" not in str(info.value) and "\n" not in str(info.value).strip()


def test_a_token_to_a_remote_clear_text_server_is_warned_about_not_refused() -> None:
    base = '[adapters.bus]\ntype = "nats"\nservers = ["nats://10.1.2.3:4222"]\n'
    cfg = loads(base + 'token = "tok-12345678"\n' + PUB, "t.toml", {"nats": NatsConfig})
    assert any("servers[0]" in str(w) for w in cfg.warnings)  # type: ignore[attr-defined]


def test_subject_values_become_single_tokens() -> None:
    assert subject_token("sys-1/Display_1/power") == "sys-1/Display_1/power"
    assert subject_token("a.b c*>\n") == "a_b_c___"
    assert subject_token("") == "_"
    render = compile_subject_template("junction.{kind}.{subject}", "k")
    env = Envelope(source="s", subject="room.1", body=Metric(module="m", name="n", value=1.0))
    assert render(env, "r") == "junction.metric.room_1"


def test_the_version_rule() -> None:
    ttl = load_one(STREAM + "allow_msg_ttl = true\n" + PUB + "msg_ttl_s = 30\n")
    lines = missing_features(ttl, "2.9.10")
    assert lines == [
        "streams[].allow_msg_ttl: per-message TTL needs nats-server 2.11+, the server is 2.9.10",
        "publish.msg_ttl_s: per-message TTL needs nats-server 2.11+, the server is 2.9.10",
    ]
    assert missing_features(ttl, "2.11.0") == []
    assert missing_features(ttl, "v2.15.1") == []
    s2 = load_one(STREAM + 'compression = "s2"\n' + PUB)
    assert missing_features(s2, "2.9.10") == [
        "streams[].compression: stream compression needs nats-server 2.10+, the server is 2.9.10"
    ]
    assert missing_features(load_one(STREAM + PUB), "2.2.0") == []
