"""Logging set-up: a readable line for people, JSON for machines, secrets never shown.

Every secret the config expands (``${ENV}``, ``${file:...}``) and every secret an
adapter registers is replaced by ``***`` in every record, whatever logger wrote it,
including exception text and tracebacks. Only whole occurrences are replaced: a secret
inside a longer word (``connect`` in ``reconnecting``) is not that secret, and blanking
it would only garble the line.

Log lines carry peer text (a frame that is not JSON, a server's error message, a driver's
debug line, an HTTP request line), so no record can forge another or drive the terminal:
control characters in a message are shown escaped (``\n``, ``\x1b``, ``\x00``), never
emitted. In the human format a record's later lines (a traceback) are indented with
``  | ``, so every line that starts with a time really starts a record.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections import Counter, deque
from typing import Any

_secrets_lock = threading.Lock()
#: Shorter secrets are refused by the config (and ignored here): see register_secret.
MIN_SECRET_LEN = 8


#: The registered secrets and one pattern matching any of them, swapped in as one tuple so
#: a thread logging while another registers a secret sees either the old pair or the new.
_registry: tuple[frozenset[str], re.Pattern[str] | None] = (frozenset(), None)


def register_secret(secret: str) -> None:
    """Redact ``secret`` from every log line from now on.

    Strings shorter than :data:`MIN_SECRET_LEN` are ignored: a config refuses such a
    secret (see ``broker._config_secrets``), and a value that short read from the
    environment (a port, a flag) is no credential but would match all over the log.
    """
    global _registry
    if len(secret) < MIN_SECRET_LEN:
        return
    with _secrets_lock:
        known = _registry[0]
        if secret not in known:
            secrets = known | {secret}
            _registry = (secrets, _compile(secrets))


def redact(text: str) -> str:
    """``text`` with every whole occurrence of a registered secret replaced by ``***``.

    Whole: where a secret begins (ends) with a letter or digit, the character before
    (after) it must not be one, so the secret is not part of a longer word. Formatters
    redact the raw text before escaping it (an escape such as ``\\n`` ends in a letter).
    """
    pattern = _registry[1]
    if pattern is None:
        return text
    return pattern.sub("***", text)


def _compile(secrets: frozenset[str]) -> re.Pattern[str]:
    alternatives = []
    for secret in sorted(secrets, key=len, reverse=True):
        before = r"(?<![0-9A-Za-z])" if secret[0].isalnum() else ""
        after = r"(?![0-9A-Za-z])" if secret[-1].isalnum() else ""
        alternatives.append(before + re.escape(secret) + after)
    return re.compile("|".join(alternatives))


#: Characters a log line must not carry raw: C0 controls (newline, ESC, NUL...), DEL,
#: C1 controls (some terminals act on them) and the Unicode line/paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control character shown as an escape (``\n``, ``\x1b``)."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(_escape_one, text)


def _escape_block(text: str) -> str:
    """Escapes for a multi-line block of our own (a traceback): newlines kept."""
    if _CONTROL_BUT_NEWLINE.search(text) is None:
        return text
    return _CONTROL_BUT_NEWLINE.sub(_escape_one, text)


def truncate(text: str, limit: int = 200) -> str:
    """Shorten ``text`` for a log line, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more chars)"


#: How the human format starts each later line of one record (a traceback's lines).
CONTINUATION = "  | "


class HumanFormatter(logging.Formatter):
    """``03:04:05.123 INFO  broker._router  message``; a traceback follows indented."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s  %(message)s", "%H:%M:%S"
        )

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(redact(record.getMessage()))
        record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        extra = []
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            extra.append(record.exc_text)
        if record.stack_info:
            extra.append(self.formatStack(record.stack_info))
        if extra:
            block = _escape_block(redact("\n".join(extra))).rstrip("\n")
            text += "\n" + "\n".join(CONTINUATION + line for line in block.split("\n"))
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (+ exc, + extra ``fields``)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": escape_controls(redact(record.getMessage())),
            "thread": record.threadName,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):  # redacted before encoding: JSON escapes would hide them
            out.update(
                (k, escape_controls(redact(v)) if isinstance(v, str) else v)
                for k, v in fields.items()
            )
        if record.exc_info:
            out["exc"] = _escape_block(redact(self.formatException(record.exc_info)))
        return redact(json.dumps(out, default=str))  # what str() made of other values


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
