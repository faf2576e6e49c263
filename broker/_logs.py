"""Logging set-up: a readable line for people, JSON for machines, secrets never shown.

Every secret the config expands (``${ENV}``, ``${file:...}``) and every secret an
adapter registers is replaced by ``***`` in every record, whatever logger wrote it,
including exception text and tracebacks.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import Counter, deque
from typing import Any

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
MIN_SECRET_LEN = 4


def register_secret(secret: str) -> None:
    """Redact ``secret`` from every log line from now on (short strings are ignored)."""
    if len(secret) >= MIN_SECRET_LEN:
        with _secrets_lock:
            _secrets.add(secret)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    if not _secrets:
        return text
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return text


def truncate(text: str, limit: int = 200) -> str:
    """Shorten ``text`` for a log line, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more chars)"


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class HumanFormatter(_RedactingFormatter):
    """``03:04:05.123 INFO  broker._router  message``."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s  %(message)s", "%H:%M:%S"
        )


class JsonFormatter(_RedactingFormatter):
    """One JSON object per line: ts, level, logger, msg (+ exc, + extra ``fields``)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "thread": record.threadName,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(out, default=str))


def setup(level: str = "info", fmt: str = "human", stream: Any = None) -> None:
    """Configure the root logger once for the process (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_junction", False):
            root.removeHandler(old)
    handler._junction = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.Formatter.converter = time.localtime


class RecentLines(logging.Handler):
    """Keeps the last few formatted lines (for a live view that owns the terminal)."""

    def __init__(self, size: int = 6, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.lines: deque[str] = deque(maxlen=size)
        self.setFormatter(HumanFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record).splitlines()[0][:160])


def divert_to_file(path: str, recent: RecentLines) -> None:
    """Send log lines to ``path`` and ``recent`` instead of the terminal (live views)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_junction", False):
            root.removeHandler(old)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(HumanFormatter())
    handler._junction = True  # type: ignore[attr-defined]
    recent._junction = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.addHandler(recent)


class LogGate:
    """At most ``per`` lines per key every ``every_s`` seconds; says how many were held back.

    A key's window starts with the first line it lets through; the first line of the
    next window carries the count held back in the one before.  Keys may be whole texts
    (a reason with a server's answer in it): past ``max_keys`` distinct keys the gate
    forgets them all, so it cannot grow without bound.
    """

    def __init__(self, every_s: float = 10.0, per: int = 1, max_keys: int = 1000) -> None:
        self.every_s = every_s
        self.per = per
        self.max_keys = max_keys
        #: per key: when its window started and how many lines it let through in it
        self._window: dict[str, tuple[float, int]] = {}
        self._held: Counter[str] = Counter()

    def allow(self, key: str) -> tuple[bool, int]:
        """(log it?, how many were held back since the last window of this key)."""
        now = time.monotonic()
        window = self._window.get(key)
        if window is not None and now - window[0] < self.every_s:
            start, used = window
            if used < self.per:
                self._window[key] = (start, used + 1)
                return True, 0
            self._held[key] += 1
            return False, 0
        if window is None and len(self._window) >= self.max_keys:
            self._window.clear()
            self._held.clear()
        self._window[key] = (now, 1)
        held = self._held.pop(key, 0)
        return True, held
