"""Operator commands read only ``[junction]`` (issue 17, item 7).

``junction status``, ``dlq`` and ``reload`` run in an operator's shell, which need not
hold the adapters' secrets nor every plugin: they must work on a file whose adapter
tables would not resolve there, and still refuse a broken ``[junction]`` by its key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker import cli
from broker._ops_http import OpsServer

UNRESOLVABLE_ADAPTERS = """
[adapters.alphax]
type = "alphax"
[adapters.alphax.write]
transport = "http"
token = "${JUNCTION_TEST_TOKEN_NOT_EXPORTED}"
[adapters.mystery]
type = "from-a-plugin-this-shell-lacks"
"""


def snapshot() -> dict[str, Any]:
    return {"adapters": {}, "routes": {}, "uptime_s": 1.0}


def write(tmp_path: Path, junction: str) -> str:
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(f'[junction]\nstate_dir = "{tmp_path / "state"}"\n{junction}\n')
    cfg.write_text(cfg.read_text() + UNRESOLVABLE_ADAPTERS)
    return str(cfg)


def test_status_answers_without_the_adapters_secrets_or_plugins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JUNCTION_TEST_TOKEN_NOT_EXPORTED", raising=False)
    server = OpsServer(snapshot, "127.0.0.1:0", 60.0)
    server.start()
    try:
        cfg = write(tmp_path, f'[junction.http]\nlisten = "127.0.0.1:{server.port}"')
        assert cli.main(["status", cfg, "--json"]) == 0, capsys.readouterr().err
        captured = capsys.readouterr()
        assert '"uptime_s": 1.0' in captured.out
        assert "JUNCTION_TEST_TOKEN_NOT_EXPORTED" not in captured.err
    finally:
        server.stop()


def test_dlq_reads_the_store_without_the_adapters_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write(tmp_path, "")
    assert cli.main(["dlq", "list", cfg]) == 1  # no outbox yet: says so, exit 1
    err = capsys.readouterr().err
    assert "no outbox at" in err and "JUNCTION_TEST_TOKEN_NOT_EXPORTED" not in err


@pytest.mark.parametrize("command", [["status"], ["dlq", "list"], ["reload"]])
def test_a_broken_junction_table_is_still_refused_by_its_key(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write(tmp_path, 'shutdown_grace_s = -5\n[junction.http]\nlisten = "127.0.0.1:1"')
    assert cli.main([*command[:-1], command[-1], cfg]) == 2
    err = capsys.readouterr().err
    assert "junction.shutdown_grace_s" in err and "Traceback" not in err
    assert "JUNCTION_TEST_TOKEN_NOT_EXPORTED" not in err
