"""The AlphaX config: defaults derived from the tier, and mistakes reported with their path."""

from __future__ import annotations

import pytest

from adapters.alphax.config import AlphaXConfig, HttpWrite, MqttWrite, TcpWrite, UdpWrite
from broker._config import loads
from broker._errors import ConfigError


def load_one(body: str) -> AlphaXConfig:
    text = f'[adapters.ax]\ntype = "alphax"\ntoken = "tok-1234"\n{body}\n'
    cfg = loads(text, "test.toml", {"alphax": AlphaXConfig}).adapters["ax"]
    assert isinstance(cfg, AlphaXConfig)
    return cfg


def test_tier_defaults() -> None:
    basic = load_one("")
    assert basic.write == HttpWrite() and basic.write.transport == "http"
    assert basic.write_limit_per_s == 100
    assert basic.read_interval_s == 15.0 and basic.poll_interval_s == 15.0
    assert MqttWrite().url_for(basic.tier) == "mqtt://mqtt.alphax.cloud:1883"
    ent = load_one('tier = "enterprise"\n[adapters.ax.poll]\ndevices = ["4106"]')
    assert ent.write_limit_per_s is None and ent.read_interval_s == 0
    assert ent.poll_interval_s == 2.0 and MqttWrite().url_for(ent.tier).startswith("mqtts://")
    assert ent.poll is not None and ent.poll.devices == ["4106"] and ent.poll.api == "v6"
    # a poll interval shorter than the tier allows is raised to the tier's limit
    premium = load_one('tier = "premium"\n[adapters.ax.poll]\ninterval_s = 1')
    assert premium.poll_interval_s == 5.0
    unpaced = load_one('[adapters.ax.write]\ntransport = "http"\nwrites_per_s = 0')
    assert unpaced.write_limit_per_s is None  # 0: not paced
    assert load_one('write = { transport = "http", writes_per_s = 7 }').write_limit_per_s == 7


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('transport = "http"\nconcurrency = 2', HttpWrite(concurrency=2)),
        (
            'transport = "mqtt"\nurl = "mqtt://127.0.0.1:1883"\ntopic_form = "channel"',
            MqttWrite(url="mqtt://127.0.0.1:1883", topic_form="channel"),
        ),
        ('transport = "udp"\nport = 9013', UdpWrite(port=9013)),
        ('transport = "tcp"\nport = 9812\ntls = true', TcpWrite(port=9812, tls=True)),
    ],
)
def test_the_write_table_picks_the_transport_by_its_tag(table: str, expected: object) -> None:
    cfg = load_one(f"[adapters.ax.write]\n{table}")
    assert cfg.write == expected
    assert cfg.write.transport == table.split('"')[1]


W = "[adapters.ax.write]\n"


@pytest.mark.parametrize(
    ("body", "path", "words"),
    [
        (W + 'transport = "mqtt"\nurl = "http://x"', "adapters.ax.write", "url must be mqtt://"),
        (W + 'transport = "carrier-pigeon"', "adapters.ax.write.transport", "must be one of"),
        (W + 'transport = "mqt"', "adapters.ax.write.transport", "did you mean 'mqtt'?"),
        (W + "port = 9012", "adapters.ax.write.transport", "missing required key; one of http"),
        (
            W + 'transport = "mqtt"\nmax_inflight = 100\nmax_queued = 10',
            "adapters.ax.write",
            "max_queued (10)",
        ),
        (
            W + 'transport = "mqtt"\nmax_queued = 70000',
            "adapters.ax.write",
            "max_queued must be at most 65535 (MQTT message ids), got 70000",
        ),
        (
            W + 'transport = "mqtt"\nreconnect_min_s = 9\nreconnect_max_s = 3',
            "adapters.ax.write",
            "reconnect_min_s <= reconnect_max_s",
        ),
        ("[adapters.ax.poll]\nchannels = [40]", "adapters.ax.poll", "channel 40"),
        ("[adapters.ax.poll]\nintervall_s = 3", "adapters.ax.poll.intervall_s", "unknown key"),
        # tls belongs to tcp: on another transport it is an unknown key, the valid ones listed
        (W + 'transport = "udp"\ntls = true', "adapters.ax.write.tls", "valid: host, max_"),
        (W + 'transport = "http"\nbase_url = "ftp://x"', "adapters.ax.write", "base_url must"),
        ('read_url = "x"', "adapters.ax", "read_url must be an http(s) URL"),
    ],
)
def test_mistakes_name_their_place(body: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_one(body)
    text = str(info.value)
    assert path in text and words in text


def test_a_token_that_cannot_be_a_topic_level_is_refused() -> None:
    with pytest.raises(ConfigError, match="cannot go in an MQTT topic"):
        loads('[adapters.ax]\ntype = "alphax"\ntoken = "a/b"\n', "t.toml", {"alphax": AlphaXConfig})


@pytest.mark.parametrize(
    ("old", "words"),
    [
        ('transport = "mqtt"', 'write it as transport = "http" | "mqtt" | "udp" | "tcp"'),
        ('mqtt_url = "mqtt://x"', 'write it as url in [adapters.ax.write] with transport = "mqtt"'),
        ('password = "pw-123456"', 'password in [adapters.ax.write] with transport = "mqtt"'),
        ("max_inflight = 10", 'max_inflight in [adapters.ax.write] with transport = "mqtt"'),
        ('base_url = "http://x"', 'base_url in [adapters.ax.write] with transport = "http"'),
        ("concurrency = 2", 'concurrency in [adapters.ax.write] with transport = "http"'),
        ("port = 9012", 'port in [adapters.ax.write] with transport = "udp" or "tcp"'),
        ("tls = true", 'tls in [adapters.ax.write] with transport = "tcp"'),
        ("max_datagram_bytes = 900", 'with transport = "udp"'),
    ],
)
def test_a_moved_key_names_its_new_place(old: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_one(old)
    (problem,) = info.value.problems
    key = old.split(" ")[0]
    assert problem.path == f"adapters.ax.{key}" and words in str(problem)


def test_every_moved_key_of_an_old_file_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_one('transport = "mqtt"\nmqtt_url = "mqtt://x"\ntopic_form = "bulk"')
    paths = [p.path for p in info.value.problems]
    assert paths == ["adapters.ax.transport", "adapters.ax.mqtt_url", "adapters.ax.topic_form"]


POSITIVE = ("connect_timeout_s", "timeout_s", "backoff_initial_s", "backoff_max_s")


@pytest.mark.parametrize(
    ("body", "path", "words"),
    [
        *[(f"{key} = 0", f"adapters.ax.{key}", "must be > 0 (got 0)") for key in POSITIVE],
        ("auth_backoff_s = -1", "adapters.ax.auth_backoff_s", "must be > 0 (got -1)"),
        ("max_attempts = -1", "adapters.ax.max_attempts", "must be >= 0 (got -1)"),
        *[
            (W + f'transport = "http"\n{key} = {value}', f"adapters.ax.write.{key}", words)
            for key, value, words in [
                ("gzip_over_bytes", "-1", "must be >= 0 (got -1)"),
                ("concurrency", "0", "must be >= 1 (got 0)"),
                ("writes_per_s", "-1", "must be >= 0 (got -1)"),
                ("pace_margin_s", "-0.1", "must be >= 0 (got -0.1)"),
            ]
        ],
        *[
            (W + f'transport = "mqtt"\n{key} = {value}', f"adapters.ax.write.{key}", words)
            for key, value, words in [
                ("max_inflight", "0", "must be >= 1 (got 0)"),
                ("max_queued", "0", "must be >= 1 (got 0)"),
                ("ack_timeout_s", "0", "must be > 0 (got 0)"),
                ("keepalive_s", "0", "must be >= 1 (got 0)"),
                ("reconnect_min_s", "0", "must be >= 1 (got 0)"),
                ("reconnect_max_s", "0", "must be >= 1 (got 0)"),
            ]
        ],
        *[
            (W + f'transport = "{kind}"\nport = {port}', "adapters.ax.write.port", words)
            for kind in ("udp", "tcp")
            for port, words in [
                ("0", "must be from 1 to 65535 (got 0)"),
                ("65536", "must be from 1 to 65535 (got 65536)"),
            ]
        ],
        (
            W + 'transport = "udp"\nmax_datagram_bytes = 199',
            "adapters.ax.write.max_datagram_bytes",
            "must be >= 200 (got 199)",
        ),
        *[
            (f"[adapters.ax.poll]\n{key} = {value}", f"adapters.ax.poll.{key}", words)
            for key, value, words in [
                ("interval_s", "0", "must be > 0 (got 0)"),
                ("start_lookback_s", "-1", "must be >= 0 (got -1)"),
                ("settle_s", "-1", "must be >= 0 (got -1)"),
                ("records_per_call", "0", "must be >= 1 (got 0)"),
            ]
        ],
    ],
)
def test_each_bound_names_file_key_and_value(body: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_one(body)
    (problem,) = info.value.problems
    assert str(problem) == f"test.toml: {path}: {words}"
