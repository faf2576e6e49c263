"""Fixtures for the AlphaX adapter tests: a real mosquitto broker per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mosquitto import MosquittoBroker, run_mosquitto


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A mosquitto broker on a free loopback port (skips if the binary is missing)."""
    with run_mosquitto(tmp_path / "mosquitto") as broker:
        yield broker
