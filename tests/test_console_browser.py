"""The web console in a real browser: Playwright for Python driving Debian's Chromium.

A bridge runs in this process on the demo's simulators (``routes/demo.toml`` as the demo
runs it, through :func:`adapters.demo.runner.serve_console`), with a token on its
operations endpoint and one route of the test's own: a generator whose subject is hostile
markup, through ``flaky`` (tests/support/console_plugin.py: it raises while told to, so
the test makes dead letters when it wants them) to a collector. The page must show every
adapter and route, counts that move, a dead letter replayed from the page that then
arrives, explain's answer, no script run from the bridge's data, and no sideways scroll on
a phone.

The browser is ``/usr/bin/chromium`` (``make test`` installs Debian's package when it is
missing), never one Playwright downloads. Where it cannot start, every test here is
skipped with one message saying why.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from adapters.demo import runner
from broker._runtime import Loaded, Runtime, load
from tests.conftest import TEST_PLUGINS, wait_until
from tests.support import console_plugin, core_plugin

CHROMIUM = "/usr/bin/chromium"
INSTALL = "make browser (as root: apt-get install chromium) and pip install playwright"
TOKEN = "console-browser-token-0123456789"
HOSTILE = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
TEST_ROUTE = "lobby-check"
OWN_PART = f"""

# --- the browser test's own part ---------------------------------------------------------

[junction.http]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[adapters.lobby_sensor]
type = "generator"
kind = "metric"
subject = '{HOSTILE}'
body = {{ module = "lobby", name = "t", value = 20.0 }}
rate = 5

[adapters.lobby_log]
type = "collector"

[[routes]]
name = "{TEST_ROUTE}"
from = "lobby_sensor"
to = ["lobby_log"]
transforms = ["flaky"]
"""


@dataclass
class Bridge:
    url: str
    runtime: Runtime
    loaded: Loaded

    def api(self, path: str) -> Any:
        answer = httpx.get(
            self.url + path.lstrip("/"), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )
        answer.raise_for_status()
        return answer.json()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright, or a skip saying why it cannot start."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError as err:
        pytest.skip(f"the console's browser tests need Playwright for Python ({err}): {INSTALL}")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"the console's browser tests need {CHROMIUM}, which is missing: {INSTALL}")
    manager = sync_playwright().start()
    try:
        chromium = manager.chromium.launch(executable_path=CHROMIUM, headless=True)
    except Error as err:
        manager.stop()
        first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        pytest.skip(f"{CHROMIUM} does not start under Playwright ({first}): {INSTALL}")
    yield chromium
    chromium.close()
    manager.stop()


@pytest.fixture(scope="module")
def bridge(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    """The demo's simulators and a bridge on them, with the console; stopped after."""
    root = tmp_path_factory.mktemp("console")
    path = root / "demo.toml"
    path.write_text(
        (runner.ROUTES_DIR / "demo.toml").read_text(encoding="utf-8") + OWN_PART,
        encoding="utf-8",
    )
    saved = dict(os.environ)
    core_plugin.reset()
    console_plugin.BROKEN.clear()
    sims = runner.PeersThread(str(path), command_every_s=3.0)
    peers = sims.start()
    rt: Runtime | None = None
    try:
        os.environ.update({**peers.env, "JUNCTION_DEMO_STATE_DIR": str(root / "state")})
        loaded = load(str(path), extra_plugins=(*TEST_PLUGINS, "tests.support.console_plugin"))
        url = runner.serve_console(loaded)
        rt = Runtime(loaded)
        rt.start()
        yield Bridge(url, rt, loaded)
    finally:
        if rt is not None:
            rt.stop(grace_s=1)
        sims.stop()
        os.environ.clear()
        os.environ.update(saved)
        console_plugin.BROKEN.clear()
        core_plugin.reset()


@pytest.fixture
def page(browser: Any, bridge: Bridge) -> Iterator[Any]:
    """A page of the console with the token already entered (kept in sessionStorage)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(f"sessionStorage.setItem('junction-console-token', {TOKEN!r})")
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda err: errors.append(str(err)))
    tab.goto(bridge.url)
    tab.wait_for_selector("#live.on")
    yield tab
    context.close()
    assert not errors, errors  # no script error on the page, whatever the data


def texts(page: Any, selector: str, attribute: str) -> set[str]:
    return set(page.eval_on_selector_all(selector, f"els => els.map(e => e.dataset.{attribute})"))


def delivered_total(page: Any) -> int:
    cells = page.eval_on_selector_all(
        "#ledger td[data-word=delivered]", "els => els.map(e => Number(e.textContent))"
    )
    return int(sum(cells))


# --------------------------------------------------------------------------- the tests


def test_the_page_asks_for_the_token_and_the_api_refuses_actions_without_it(
    browser: Any, bridge: Bridge
) -> None:
    context = browser.new_context()
    tab = context.new_page()
    try:
        tab.goto(bridge.url)
        tab.wait_for_selector("#token-form:not([hidden])")
        assert "needs its token" in tab.inner_text("#token-note")
        refused = tab.evaluate(
            """async () => (await fetch('api/dead-letters/replay', {method: 'POST',
                 headers: {'Content-Type': 'application/json'},
                 body: JSON.stringify({seqs: [1]})})).status"""
        )
        assert refused == 401
        tab.fill("#token", TOKEN)
        tab.click("#token-form button")
        tab.wait_for_selector("#adapters tbody tr[data-adapter]")
        tab.wait_for_selector("#live.on")
        assert tab.is_hidden("#token-form")
        accepted = tab.evaluate(
            """async (token) => (await fetch('api/dead-letters/replay', {method: 'POST',
                 headers: {'Content-Type': 'application/json', Authorization: 'Bearer ' + token},
                 body: JSON.stringify({seqs: [999999]})})).status""",
            TOKEN,
        )
        assert accepted == 400  # past the token: an unknown seq
    finally:
        context.close()


def test_every_adapter_and_route_is_shown_and_the_counts_move(page: Any, bridge: Bridge) -> None:
    adapters = set(bridge.loaded.config.adapters)
    routes = {r.name for r in bridge.loaded.table.routes}
    assert {"placeos", "allxon", "alphax", "lobby_sensor"} <= adapters and TEST_ROUTE in routes
    page.wait_for_function(
        "n => document.querySelectorAll('#adapters tbody tr').length === n", arg=len(adapters)
    )
    assert texts(page, "#adapters tbody tr", "adapter") == adapters
    assert texts(page, "#ledger tbody tr", "route") == routes
    assert texts(page, "#graph g.node.route", "name") == routes
    assert "connected" in page.inner_text("#adapters tr[data-adapter=placeos]")
    header = page.inner_text("#ledger thead")
    for word in ("received", "delivered", "pending", "dead_lettered", "dropped", "filtered"):
        assert word in header
    meaning = page.get_attribute("#ledger th:has-text('pending')", "title")
    assert meaning and meaning.startswith("items not settled yet")
    before = delivered_total(page)
    page.wait_for_function(
        """n => [...document.querySelectorAll('#ledger td[data-word=delivered]')]
               .reduce((s, e) => s + Number(e.textContent), 0) > n""",
        arg=before,
        timeout=15000,
    )
    assert delivered_total(page) > before
    page.wait_for_selector("#graph text.rate:text-matches('/s$')")  # live rates on the edges
    page.wait_for_selector("#latest-section:not([hidden]) #latest tbody tr")  # the demo's values


def test_a_dead_letter_is_replayed_from_the_page_and_arrives(page: Any, bridge: Bridge) -> None:
    console_plugin.BROKEN.set()
    try:
        row = page.wait_for_selector(
            f"#dead tbody tr[data-seq]:has(td:text-is('{TEST_ROUTE}'))", timeout=15000
        )
    finally:
        console_plugin.BROKEN.clear()
    seq = int(row.get_attribute("data-seq"))
    (letter,) = [d for d in bridge.api("api/dead-letters")["dead_letters"] if d["seq"] == seq]
    # the hostile subject and reason are on the page as text; none of it ran
    assert HOSTILE in row.inner_text()
    assert page.locator("#dead script, #dead img").count() == 0
    assert page.evaluate("window.__xss") is None
    replayed_before = bridge.api("api/snapshot")["routes"][TEST_ROUTE]["ledger"]["replayed"]

    page.check(f"#dead input[data-seq='{seq}']")
    page.click("#replay")
    page.wait_for_selector("#dead-note:has-text('1 queued for replay')")
    wait_until(
        lambda: any(e.id == letter["env_id"] for e in core_plugin.received("lobby_log")),
        timeout=15,
        what="the replayed envelope at its target",
    )
    page.wait_for_function(
        """([route, n]) => Number(document.querySelector(
             `#ledger tr[data-route="${route}"] td[data-word=replayed]`).textContent) > n""",
        arg=[TEST_ROUTE, replayed_before],
        timeout=10000,
    )
    page.wait_for_selector(f"#dead tbody tr[data-seq='{seq}']", state="detached")
    assert page.evaluate("window.__xss") is None


def test_a_dead_letter_is_purged_from_the_page_once_confirmed(page: Any, bridge: Bridge) -> None:
    console_plugin.BROKEN.set()
    try:
        row = page.wait_for_selector(
            f"#dead tbody tr[data-seq]:has(td:text-is('{TEST_ROUTE}'))", timeout=15000
        )
    finally:
        console_plugin.BROKEN.clear()
    seq = row.get_attribute("data-seq")
    page.check(f"#dead input[data-seq='{seq}']")
    questions: list[str] = []

    def answer(dialog: Any) -> None:
        questions.append(dialog.message)
        if len(questions) == 1:
            dialog.dismiss()  # the first time: no, nothing is purged
        else:
            dialog.accept()

    page.on("dialog", answer)
    page.click("#purge")
    assert questions and "cannot be undone" in questions[0]
    assert page.locator(f"#dead tbody tr[data-seq='{seq}']").count() == 1
    page.click("#purge")
    page.wait_for_selector("#dead-note:has-text('1 purged')")
    page.wait_for_selector(f"#dead tbody tr[data-seq='{seq}']", state="detached")
    seqs = [d["seq"] for d in bridge.api("api/dead-letters")["dead_letters"]]
    assert int(seq) not in seqs


def test_explain_answers_for_a_pasted_envelope(page: Any) -> None:
    page.wait_for_selector("#ledger tbody tr")
    envelope = {
        "source": "placeos",
        "subject": "sys-huddle2/Environment_1/temperature",
        "body": {
            "kind": "status_change",
            "system": "sys-huddle2",
            "module": "Environment",
            "name": "temperature",
            "value": 22.5,
        },
    }
    page.fill("#envelope", json.dumps(envelope))
    page.click("#explain-form button")
    routes = len(page.locator("#ledger tbody tr").all())
    page.wait_for_selector(f"#explain-note:text-matches('^\\\\d+ of {routes} routes match$')")
    verdict = page.inner_text("#explain-result .verdict.match[data-route=temp-to-allxon]")
    assert "temp-to-allxon: MATCH" in verdict and "295.65" in verdict  # Kelvin, by its map
    page.fill("#envelope", '{"source": "placeos"}')
    page.click("#explain-form button")
    page.wait_for_selector("#explain-note.error:has-text('not an envelope')")


def test_the_configuration_is_shown_with_the_token_redacted(page: Any) -> None:
    page.click("#config-details summary")
    text = page.inner_text("#config")
    assert "[adapters.placeos]" in text and 'token = "***"' in text and TOKEN not in text


def test_on_a_phone_the_page_does_not_scroll_sideways(browser: Any, bridge: Bridge) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=3, is_mobile=True
    )
    context.add_init_script(f"sessionStorage.setItem('junction-console-token', {TOKEN!r})")
    tab = context.new_page()
    try:
        tab.goto(bridge.url)
        tab.wait_for_selector("#ledger tbody tr")
        tab.wait_for_selector("#latest tbody tr")
        time.sleep(1.5)  # a few live updates, dead letters listed if any
        width = tab.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], width
        assert (
            tab.evaluate("document.querySelector('#ledger').closest('.scroll').scrollWidth") > 390
        )
    finally:
        context.close()
