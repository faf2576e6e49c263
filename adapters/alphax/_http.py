"""HTTP to AlphaX: posting uplinks (paced, gzip, retried) and the GET used by the poller.

Posts go through an :class:`~adapters.alphax._http11.Http11Pool` (keep-alive HTTP/1.1 on trio
and h11) to the write host (``base_url``): at ~1 post per PlaceOS change, httpx's per-request
cost took most of a core. The poller's GETs to the read host (``read_url``) use one
``httpx.AsyncClient`` per adapter instance. Both use the same TLS settings (httpx's default
verification, or ``ca_file``). Outcome of a post, by status:

- 2xx: stored.
- 429, 408, 5xx and network errors: retried with capped, jittered exponential back-off, the
  data kept (deliveries wait meanwhile), up to ``max_attempts`` (0 = until it works).
- 401, 403: the token is refused -- the site's problem, not the data's: status
  ``auth-failed``, the values held (deliveries wait, so the outbox keeps what follows) and
  posted again after a back-off growing to ``auth_backoff_s``, however long it takes; never
  dead-lettered, never counted toward ``max_attempts``.
- any other 4xx (400, 404, 405, 413): failed at once with the status and the server's error
  body (``code`` a number or a string) -- retrying would not change the answer.

httpx logs every request URL at INFO, and read URLs carry ``?token=``: its logger is set to
WARNING (unless configured), and a filter on the httpx and httpcore loggers rewrites each
record through :func:`codec.redact` first, so the token is masked even at DEBUG and for
handlers that do not use Junction's redacting formatter.
"""

from __future__ import annotations

import gzip
import logging
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from adapters.alphax import codec
from adapters.alphax._codec_base import MAX_RESPONSE_BYTES
from adapters.alphax._http11 import Http11Error, Http11Pool, Http11Response
from adapters.alphax._pacing import WritePacer
from adapters.alphax._uplinks import Doc, Failure, encode_docs
from adapters.alphax._writer import Sent
from adapters.alphax.config import AlphaXConfig, HttpWrite
from broker import AdapterStatus, Envelope, LogGate, backoff_delay, redact, truncate

_RETRY_STATUSES = frozenset({408, 429})
#: The token refused: held and retried, never dead-lettered (see HttpWriter._wait_for_auth).
_AUTH_STATUSES = frozenset({401, 403})
#: Connections of the read client (the poller reads one call at a time).
_READ_CONNECTIONS = 6
_FILTERED_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
)


class _RedactTokens(logging.Filter):
    """Rewrites a record whose text holds a ``token=`` parameter or a registered secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a broken record is not ours to fix; let logging report it
            return True
        clean = redact(codec.redact(text))
        if clean != text:
            record.msg, record.args = clean, None
        return True


def install_log_filter() -> None:
    """Put the redacting filter on httpx's and httpcore's loggers (idempotent).

    httpx also logs one INFO line per request; unless someone set its level, it is raised to
    WARNING (a bridge posting hundreds of times a second would drown its own log).
    """
    httpx_logger = logging.getLogger("httpx")
    if httpx_logger.level == logging.NOTSET:
        httpx_logger.setLevel(logging.WARNING)
    for name in _FILTERED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactTokens) for f in logger.filters):
            logger.addFilter(_RedactTokens())


install_log_filter()


_HEADERS = {"Accept-Encoding": "gzip", "User-Agent": "junction-alphax"}


def _tls_context(cfg: AlphaXConfig) -> ssl.SSLContext:
    """httpx's default verification (certifi's CA bundle), or the private CA of ``ca_file``."""
    if cfg.ca_file:
        return ssl.create_default_context(cafile=cfg.ca_file)
    return httpx.create_ssl_context()


def build_client(cfg: AlphaXConfig) -> httpx.AsyncClient:
    """The adapter's HTTP client for reads: timeouts, TLS verification, pool size."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(cfg.timeout_s, connect=cfg.connect_timeout_s),
        verify=_tls_context(cfg),
        limits=httpx.Limits(max_connections=_READ_CONNECTIONS),
        headers=_HEADERS,
        follow_redirects=False,
    )


def build_pool(cfg: AlphaXConfig, http: HttpWrite) -> Http11Pool:
    """The adapter's connections for posts to ``base_url`` (``concurrency`` posts at a time)."""
    https = urlsplit(http.base_url).scheme == "https"
    return Http11Pool(
        http.base_url,
        max_connections=http.concurrency,
        connect_timeout_s=cfg.connect_timeout_s,
        timeout_s=cfg.timeout_s,
        ssl_context=_tls_context(cfg) if https else None,
        default_headers=_HEADERS,
    )


def error_text(response: httpx.Response | Http11Response, token: str) -> str:
    """``HTTP <status>: <error> (code <code>)`` from the JSON error body, redacted."""
    try:
        body = codec.decode_error_body(response.content)
        detail = f"{body.error} (code {body.code})"
    except codec.CodecError:
        detail = truncate(response.text.strip() or response.reason_phrase, 200)
    return codec.redact(f"HTTP {response.status_code}: {detail}", token)


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    retry: bool
    reason: str = ""
    status: int | None = None


class HttpWriter:
    """Posts uplink documents: ``concurrency`` at a time, paced to the tier, retried.

    An :class:`~adapters.alphax._writer.UplinkWriter`: a batch is acknowledged (2xx) or
    failed when ``send`` returns.
    """

    defers_acks = False

    def __init__(
        self,
        cfg: AlphaXConfig,
        http: HttpWrite,
        status: AdapterStatus,
        log: logging.Logger,
    ) -> None:
        self.cfg = cfg
        self.http = http
        self.status = status
        self.log = log
        self.token = cfg.token
        self.host = urlsplit(http.base_url).netloc
        self.pacer = WritePacer(cfg.write_limit_per_s, margin_s=http.pace_margin_s)
        self.limiter = trio.CapacityLimiter(http.concurrency)
        self._pool: Http11Pool | None = None
        self.unencodable = 0
        self.posts = 0
        self.gzipped = 0
        self.retries = 0
        self.rejected = 0
        #: Posts answered 401/403 (the values were held and posted again later).
        self.auth_refusals = 0
        self._auth_attempts = 0  # refusals in a row: the back-off grows with them
        self.statuses: dict[int, int] = {}
        self._gate = LogGate(every_s=30.0)

    @property
    def pool(self) -> Http11Pool:
        """The connections for posts, made on first use (bound to the trio run that uses it)."""
        if self._pool is None:
            self._pool = build_pool(self.cfg, self.http)
        return self._pool

    def open(self) -> None:
        """Nothing to connect ahead: connections are made by the first posts."""
        self.status.set("ready", "http to AlphaX")

    async def send(self, batch: Sequence[Envelope]) -> Sent:
        """Encode ``batch`` as uplinks and post them; the failures with their reasons."""
        docs, failures = encode_docs(batch, self.token, self.cfg.uplink, self.cfg.v1_gaps)
        self.unencodable += len(failures)
        return Sent(failures + await self.send_docs(docs))

    async def send_docs(self, docs: Sequence[Doc]) -> list[Failure]:
        """Post every doc (retrying as configured); returns what could not be stored."""
        failures: list[Failure] = []
        if len(docs) == 1:
            await self._deliver(docs[0], failures)
            return failures
        async with trio.open_nursery() as nursery:
            for doc in docs:
                nursery.start_soon(self._deliver, doc, failures)
        return failures

    def stats(self) -> dict[str, Any]:
        """Posts, gzipped bodies, retries, rejections, statuses seen, paced waits."""
        return {
            "unencodable": self.unencodable,
            "posts": self.posts,
            "gzipped": self.gzipped,
            "retries": self.retries,
            "rejected": self.rejected,
            "auth_refusals": self.auth_refusals,
            "statuses": dict(self.statuses),
            "paced_waits": self.pacer.waits,
        }

    async def aclose(self) -> None:
        """Close the post connections."""
        if self._pool is not None:
            await self._pool.aclose()

    async def _deliver(self, doc: Doc, failures: list[Failure]) -> None:
        attempt = 0
        while True:
            attempt += 1
            async with self.limiter:
                await self.pacer.acquire()
                try:
                    outcome = await self._post(doc)
                finally:
                    self.pacer.release()
            if outcome.ok:
                self._auth_attempts = 0
                if attempt > 1:
                    self.log.info("post/%s stored after %d attempts", doc.form, attempt)
                self.status.set("connected", f"posting to {self.host}")
                return
            if outcome.status in _AUTH_STATUSES:  # the site's token, not the data's fault
                await self._wait_for_auth(doc, outcome)
                continue
            if not outcome.retry:
                self.rejected += 1
                text = f"post/{doc.form} rejected, not retried: {outcome.reason}"
                self._log_once(logging.ERROR, text)
                reason = f"AlphaX post/{doc.form} rejected: {outcome.reason}"
                failures += [(env, reason) for env in doc.envelopes]
                return
            if self.cfg.max_attempts and attempt >= self.cfg.max_attempts:
                reason = f"AlphaX post/{doc.form} failed {attempt} times: {outcome.reason}"
                self._log_once(logging.ERROR, reason)
                failures += [(env, reason) for env in doc.envelopes]
                return
            self.retries += 1
            delay = backoff_delay(attempt, self.cfg.backoff_initial_s, self.cfg.backoff_max_s)
            self.status.set("retrying", f"{outcome.reason}; retrying in {delay:.1f} s")
            self._log_once(
                logging.WARNING,
                f"post/{doc.form} to {self.host}: {outcome.reason}; retrying with back-off "
                "(the values are kept)",
            )
            await trio.sleep(delay)

    async def _wait_for_auth(self, doc: Doc, outcome: _Outcome) -> None:
        """AlphaX refused the token (401/403): hold the values and ask again later.

        A refused token is for the operator to fix, not a fault of the data: the values are
        kept (this delivery waits, so the route's queue or outbox holds what comes behind
        it), the adapter reports ``auth-failed``, and the post is tried again after a
        back-off that grows to ``auth_backoff_s``. It does not count toward
        ``max_attempts``: dead-lettering a site's whole stream for a token would lose it.
        """
        self.auth_refusals += 1
        self._auth_attempts += 1
        delay = backoff_delay(
            self._auth_attempts, self.cfg.backoff_initial_s, self.cfg.auth_backoff_s
        )
        self.status.set(
            "auth-failed", f"{outcome.reason}; values held, asking again in {delay:.0f} s"
        )
        self._log_once(
            logging.ERROR,
            f"post/{doc.form} to {self.host}: the token was refused ({outcome.reason}); the "
            f"values are held and the post retried until it is accepted: check [adapters."
            f"{self.status.name}] token",
        )
        await trio.sleep(delay)

    async def _post(self, doc: Doc) -> _Outcome:
        body = doc.body
        headers = {"Content-Type": "application/json"}
        if len(body) > self.http.gzip_over_bytes:
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
            self.gzipped += 1
        self.posts += 1
        try:
            response = await self.pool.post(f"/post/{doc.form}", body, headers)
        except Http11Error as err:
            return _Outcome(False, True, codec.redact(f"network error: {err}", self.token))
        code = response.status_code
        self.statuses[code] = self.statuses.get(code, 0) + 1
        if 200 <= code < 300:
            return _Outcome(True, False, status=code)
        retry = code in _RETRY_STATUSES or code >= 500
        return _Outcome(False, retry, error_text(response, self.token), code)

    def _log_once(self, level: int, text: str) -> None:
        """Log ``text`` unless the same line was logged in the last 30 seconds."""
        allowed, held = self._gate.allow(text)
        if allowed:
            more = f" ({held} more like it held back)" if held else ""
            self.log.log(level, "%s%s", codec.redact(text, self.token), more)


class ResponseTooLarge(httpx.TransportError):
    """A read response past ``MAX_RESPONSE_BYTES`` once decompressed: not read further."""


async def get_records(
    client: httpx.AsyncClient, cfg: AlphaXConfig, api: str, params: Mapping[str, str | int]
) -> httpx.Response:
    """``GET {read_url}/conduit{api}?token=...&...``; transport errors propagate (httpx).

    The body is streamed and given up on past ``MAX_RESPONSE_BYTES`` (counted after gzip
    is undone), so a hostile or broken server cannot make the poller hold more than that.
    The response returned holds the decoded body (its encoding headers dropped).
    """
    url = f"{cfg.read_url.rstrip('/')}/conduit{api}"
    async with client.stream("GET", url, params={"token": cfg.token, **params}) as response:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise ResponseTooLarge(
                    f"response body over {MAX_RESPONSE_BYTES:,} bytes (decompressed); not read"
                )
            chunks.append(chunk)
        headers = [
            (k, v)
            for k, v in response.headers.multi_items()
            if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        return httpx.Response(
            response.status_code,
            headers=headers,
            content=b"".join(chunks),
            request=response.request,
        )
