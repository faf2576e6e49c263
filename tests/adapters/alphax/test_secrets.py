"""The token and the MQTT password never reach a log line, an error text or a status.

Everything runs at DEBUG (httpx and httpcore included) with pytest's own handler, which does
NOT use Junction's redacting formatter: a token that shows up here was written out by someone.
The server is made to echo the token in an error body, to check bodies are redacted too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

from adapters.alphax.sim import open_alphax_simulator
from broker._runtime import Loaded
from tests.adapters.alphax.conftest import TOKEN, alphax_table, route, table
from tests.conftest import wait_for
from tests.support.alphax_plugin import stats
from tests.support.core_plugin import received
from tests.support.mosquitto import MosquittoBroker

PASSWORD = "pw-5e2d0c9bb1"


def texts(caplog: pytest.LogCaptureFixture, rt: Any) -> list[str]:
    """Every text a person could see: log lines, tracebacks, dead-letter reasons, statuses."""
    out = [caplog.text]
    for record in caplog.records:
        out.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            out.append(repr(record.exc_info[1]))
        if record.exc_text:
            out.append(record.exc_text)
    out += [str(e.headers) for e in received("dlq")]
    out += [repr(status) for status in rt.statuses.values()]
    return out


async def test_no_token_in_logs_errors_or_statuses(
    mosquitto: MosquittoBroker,
    load_alphax: Callable[[str], Loaded],
    start_runtime: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    with trio.fail_after(30):
        async with open_alphax_simulator([TOKEN], mqtt_url=mosquitto.url) as sim:
            # the server echoes the token in an error body, then throttles once
            sim.fail_next(1, 400, error=f"token {TOKEN} looks wrong", endpoints=["post/v2"])
            sim.fail_next(1, 429, endpoints=["post/v2"])
            common = {"type": "alphax_tracked", "token": TOKEN, "tier": "enterprise"}
            now = time.time() + 0.5  # ahead of the poller's first window
            cfg = (
                table("src", type="channel_source", channels=[1, 2], ticks=4, start_ts=now)
                + table("src2", type="channel_source", devices=["bad/id", "ok"], ticks=2)
                + alphax_table(
                    "http",
                    base_url=sim.url,
                    read_url=sim.url,
                    backoff_initial_s=0.05,
                    poll={"interval_s": 0.1, "settle_s": 0, "start_lookback_s": 60},
                    **common,
                )
                + alphax_table(
                    "mqtt",
                    "mqtt",
                    url=mosquitto.url,
                    password=PASSWORD,
                    topic_form="channel",
                    **common,
                )
                + alphax_table(
                    "offline",
                    base_url="http://127.0.0.1:9",  # nothing listens: network errors
                    read_url="http://127.0.0.1:9",
                    poll={"interval_s": 0.1},
                    **common,
                )
                + table("sink", type="collector")
                + route("w", "src", ["http", "mqtt"])
                + route("bad", "src2", "mqtt")
                + route("r", "http", "sink", kind="channel_reading")
            )
            async with start_runtime(load_alphax(cfg)) as rt:
                await wait_for(lambda: len(received("sink")) >= 6, what="values read back")
                await wait_for(lambda: len(received("dlq")) == 4, what="4 dead letters")
                await wait_for(lambda: stats("mqtt")["acked"] == 10, what="mqtt acked")
                await wait_for(lambda: stats("offline")["poll"]["failures"] >= 1)
                seen = texts(caplog, rt)
    # the token was really used: in read URLs (shown redacted), bodies and topics
    assert any("token=***" in r.path for r in sim.requests)
    assert sim.store.count() == 6 + 10  # http: 8 less 2 refused; mqtt: 8 + 2
    reasons = [e.headers["x-dead-letter-reason"] for e in received("dlq")]
    assert sum("HTTP 400" in r and "token *** looks wrong" in r for r in reasons) == 2
    assert sum("networkId contains '/'" in r for r in reasons) == 2
    assert "conduitv6: network error" in caplog.text  # the offline adapter logged its trouble
    for text in seen:
        assert TOKEN not in text
        assert PASSWORD not in text
