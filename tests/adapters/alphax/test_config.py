"""The AlphaX config: defaults derived from the tier, and mistakes reported with their path."""

from __future__ import annotations

import pytest

from adapters.alphax.config import AlphaXConfig
from broker.config import loads
from broker.errors import ConfigError


def load_one(body: str) -> AlphaXConfig:
    text = f'[adapters.ax]\ntype = "alphax"\ntoken = "tok-1234"\n{body}\n'
    cfg = loads(text, "test.toml", {"alphax": AlphaXConfig}).adapters["ax"]
    assert isinstance(cfg, AlphaXConfig)
    return cfg


def test_tier_defaults() -> None:
    basic = load_one("")
    assert basic.transport == "http" and basic.write_limit_per_s == 100
    assert basic.read_interval_s == 15.0 and basic.poll_interval_s == 15.0
    assert basic.mqtt_url_or_default == "mqtt://mqtt.alphax.cloud:1883"
    ent = load_one('tier = "enterprise"\n[adapters.ax.poll]\ndevices = ["4106"]')
    assert ent.write_limit_per_s is None and ent.read_interval_s == 0
    assert ent.poll_interval_s == 2.0 and ent.mqtt_url_or_default.startswith("mqtts://")
    assert ent.poll is not None and ent.poll.devices == ["4106"] and ent.poll.api == "v6"
    # a poll interval shorter than the tier allows is raised to the tier's limit
    premium = load_one('tier = "premium"\n[adapters.ax.poll]\ninterval_s = 1')
    assert premium.poll_interval_s == 5.0
    assert load_one("writes_per_s = 0").write_limit_per_s is None  # 0: not paced


@pytest.mark.parametrize(
    ("body", "path", "words"),
    [
        ('transport = "mqtt"\nmqtt_url = "http://x"', "adapters.ax", "mqtt_url must be"),
        ('transport = "carrier-pigeon"', "adapters.ax.transport", "must be one of"),
        ("max_inflight = 100\nmax_queued = 10", "adapters.ax", "max_queued (10)"),
        ("[adapters.ax.poll]\nchannels = [40]", "adapters.ax.poll", "channel 40"),
        ("[adapters.ax.poll]\nintervall_s = 3", "adapters.ax.poll.intervall_s", "unknown key"),
        ('tls = true\ntransport = "udp"', "adapters.ax", "tls applies"),
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
