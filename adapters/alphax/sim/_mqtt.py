"""MQTT side of the AlphaX simulator: a paho client subscribed to the three AlphaX topic forms.

The simulator plays AlphaX's ingest behind a broker: it connects to the given broker (in tests a
real mosquitto) and subscribes at QoS 1 to ``+/+/publish/v4``, ``+/+/0/data`` and
``+/+/+/data``. ``+/+/0/data`` is also matched by ``+/+/+/data``; mosquitto 2 delivers such a
message once per client (checked by a test), and paho's single ``on_message`` handles it once.

paho runs its network loop in its own thread (``loop_start``); callbacks hand each message to
``AlphaXSimulator.ingest_mqtt``, which stores under the store's lock. paho sends the PUBACK
after ``on_message`` returns, so an acknowledged message is already in the store. A persistent
session (``clean_session=False``) keeps QoS 1 messages queued at the broker across a short
disconnect; subscriptions are renewed on every connect, so a broker restart (which loses the
session when persistence is off) is survived too.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import trio
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from adapters.alphax.codec import SUBSCRIPTION_FILTERS, redact_topic

log = logging.getLogger(__name__)


class MqttConnectError(RuntimeError):
    """The subscriber could not connect and subscribe in time."""


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """``mqtt://host[:port]`` -> (host, port); port defaults to 1883. TLS is not supported."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ValueError(f"MQTT URL must look like mqtt://host:port, got {url!r}")
    return parts.hostname, parts.port or 1883


class MqttSubscriber:
    """A paho client feeding ``on_message(topic, payload)`` from its own thread."""

    def __init__(
        self,
        url: str,
        on_message: Callable[[str, bytes], object],
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.host, self.port = parse_mqtt_url(url)
        self.url = url
        self._handler = on_message
        self.connects = 0
        self.subacks = 0
        self.errors = 0
        self.connected = False
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._subscribed = trio.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"alphax-sim-{secrets.token_hex(6)}",
            clean_session=False,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    async def start(self, timeout: float = 10.0) -> None:
        """Connect, subscribe, and return once the broker acknowledged the subscriptions."""
        self._trio_token = trio.lowlevel.current_trio_token()
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        with trio.move_on_after(timeout):
            await self._subscribed.wait()
            log.info("AlphaX simulator subscribed on %s", self.url)
            return
        await self.stop()
        raise MqttConnectError(f"no MQTT subscription on {self.url} within {timeout} s")

    async def stop(self) -> None:
        """Disconnect and join paho's thread (off the trio thread)."""
        self.client.disconnect()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.client.loop_stop)

    # -- paho callbacks (paho's thread) ---------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            log.warning("MQTT connect to %s refused: %s", self.url, reason_code)
            return
        self.connects += 1
        self.connected = True
        log.info("MQTT connected to %s (connect #%d)", self.url, self.connects)
        client.subscribe([(topic, 1) for topic in SUBSCRIPTION_FILTERS])

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        self.connected = False
        log.info("MQTT disconnected from %s: %s", self.url, reason_code)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Any,
    ) -> None:
        failed = [str(code) for code in reason_codes if code.is_failure]
        if failed:
            log.error("MQTT subscription refused by %s: %s", self.url, failed)
            return
        self.subacks += 1
        token = self._trio_token
        if token is not None:
            with contextlib.suppress(trio.RunFinishedError):  # the simulator is closing
                token.run_sync_soon(self._subscribed.set)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:  # MQTT requires UTF-8 topics; brokers should not forward this
            self.errors += 1
            log.warning("MQTT message with a non-UTF-8 topic dropped")
            return
        try:
            self._handler(topic, bytes(message.payload))
        except Exception:  # never kill paho's loop thread; count and log the lost message
            self.errors += 1
            log.exception("MQTT message on %s could not be handled", redact_topic(topic))
