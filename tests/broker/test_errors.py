"""The exception tree drawn in broker/_errors.py is complete and true: every error class of
the broker is in it, under its real parent, and nothing is drawn that does not exist."""

from __future__ import annotations

import importlib
import pkgutil
import re

import broker
from broker import _errors as errors


def _all_broker_modules() -> None:
    for info in pkgutil.iter_modules(broker.__path__):
        importlib.import_module(f"broker.{info.name}")


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        if sub.__module__.startswith("broker"):
            found |= {sub, *_subclasses(sub)}
    return found


def test_the_drawn_tree_is_every_error_class_under_its_real_parent() -> None:
    _all_broker_modules()
    doc = errors.__doc__ or ""
    drawn: dict[str, str] = {}  # class -> parent, read from the tree's indentation
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        m = re.match(r"^[\s│]*(?:[├└]── )?([A-Z]\w+Error|BridgeUnreachable|StateDirBusy)\b", line)
        if not m:
            continue
        depth = m.start(1)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        drawn[m.group(1)] = stack[-1][1] if stack else ""
        stack.append((depth, m.group(1)))
    real = {cls.__name__: cls for cls in _subclasses(errors.JunctionError)}
    assert set(drawn) - {"JunctionError"} == set(real)
    for name, cls in real.items():
        parents = {base.__name__ for base in cls.__bases__}
        assert drawn[name] in parents, f"{name} is drawn under {drawn[name]}, not {parents}"
