"""Reading a route's ``options`` table, with errors that say which option and why.

A transform factory gets the route's options as a plain dict (TOML already parsed).
Whatever it raises as ``ValueError`` becomes a configuration error that Junction
reports with the TOML path of the table, e.g.::

    junction.toml: routes[2].transforms[0].options: transform 'threshold_alert'
    rejected its options: unknown option(s) ['abov']; did you mean 'above'? ...

so every message here names the option and what would be valid.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

_REQUIRED: Any = object()


class Options:
    """One transform's options: unknown names are refused up front, values type-checked."""

    def __init__(self, options: Mapping[str, Any], valid: Sequence[str]) -> None:
        unknown = sorted(set(options) - set(valid))
        if unknown:
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, valid, n=1)
                if close:
                    hints.append(f"did you mean {close[0]!r} for {name!r}?")
            hint = f" {' '.join(hints)}" if hints else ""
            raise ValueError(f"unknown option(s) {unknown};{hint} valid: {', '.join(valid)}")
        self._options = dict(options)

    def has(self, key: str) -> bool:
        """True when the route set ``key``."""
        return key in self._options

    def text(self, key: str, default: Any = _REQUIRED) -> str:
        """A string option; a missing required one is an error naming it."""
        value = self._get(key, default)
        if not isinstance(value, str) or not value:
            raise ValueError(f"option {key!r} must be a non-empty string, got {value!r}")
        return value

    def number(self, key: str, default: Any = _REQUIRED, minimum: float | None = None) -> float:
        """A finite number (int or float, not a boolean), optionally at least ``minimum``."""
        value = self._get(key, default)
        number = as_float(value)
        if number is None:
            raise ValueError(f"option {key!r} must be a number, got {value!r}")
        if minimum is not None and number < minimum:
            raise ValueError(f"option {key!r} must be at least {minimum}, got {value!r}")
        return number

    def table(self, key: str, default: Any = _REQUIRED) -> dict[str, Any]:
        """A TOML table (dict) option."""
        value = self._get(key, default)
        if not isinstance(value, dict):
            raise ValueError(f"option {key!r} must be a table, got {value!r}")
        return value

    def choice(self, key: str, choices: Sequence[str], default: str) -> str:
        """One of ``choices``."""
        value = self._get(key, default)
        if value not in choices:
            raise ValueError(f"option {key!r} must be one of {list(choices)}, got {value!r}")
        return str(value)

    def _get(self, key: str, default: Any) -> Any:
        if key in self._options:
            return self._options[key]
        if default is _REQUIRED:
            raise ValueError(f"option {key!r} is required")
        return default


def is_number(value: Any) -> bool:
    """True for int and float values; False for booleans (``True == 1`` in Python)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def as_float(value: Any) -> float | None:
    """``value`` as a finite float when it is an int or float (not a boolean), else None."""
    if not is_number(value):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None
