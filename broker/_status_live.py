"""The live terminal view of ``junction demo`` (``junction run --status-every`` prints the
same picture as lines instead, since its log stays on the terminal).

A rich ``Live`` display on the terminal's alternate screen: the run loop hands it a fresh
snapshot (and the caller's extra lines) every second, and rich redraws it four times a
second at the terminal's current size, so a resized window is redrawn to fit within a
quarter of a second (:func:`broker._status.renderable` decides what fits). The last line
is a footer (where the full log is, how to stop) that always shows. On exit the terminal's
own screen comes back as it was.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from broker._status import renderable

__all__ = ["LiveStatus"]


class LiveStatus:
    """A live view of the latest snapshot (see the module docstring)."""

    def __init__(self, footer: str, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)
        self.footer = footer
        self._lock = threading.Lock()
        self._snapshot: Mapping[str, Any] = {}
        self._extra: list[str] = []
        self._live = Live(
            console=self.console,
            screen=True,
            auto_refresh=True,
            refresh_per_second=4,
            get_renderable=self._render,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def show(self, snapshot: Mapping[str, Any], extra: Callable[[], str] | None = None) -> None:
        """The picture to draw from now on (``extra``'s lines go under the tables)."""
        lines = extra().splitlines() if extra is not None else []
        with self._lock:
            self._snapshot, self._extra = snapshot, lines

    def _render(self) -> RenderableType:
        with self._lock:
            snapshot, extra = self._snapshot, self._extra
        width, height = self.console.size
        footer = Text(self.footer, no_wrap=True, overflow="ellipsis", style="dim")
        return Group(renderable(snapshot, width, max(1, height - 1), extra), footer)

    def __enter__(self) -> LiveStatus:
        self._live.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.stop()
