"""The client half of the operations endpoint: what ``junction status`` asks, and how.

:func:`base_url` turns the config's ``[junction.http] listen`` into a URL to ask (an
any-address listen is asked on loopback); :func:`fetch_status` GETs ``/status`` with the
config's ``[junction.http] token`` as a bearer token when there is one. Plain
:mod:`urllib`: one request, no event loop needed.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from broker._errors import JunctionError
from broker._ops_listen import listen_error, parse_listen


class EndpointError(JunctionError):
    """``junction status`` could not get a snapshot from a running bridge."""


def base_url(listen: str, origin: str = "") -> str:
    """The URL ``junction status`` asks for a ``listen`` value (any-address -> loopback)."""
    host, port = parse_listen(listen, origin)
    if port == 0:
        raise listen_error(
            listen,
            "port 0 means any free port, so the bound port cannot be known from the config",
            origin,
            "pass --url http://HOST:PORT (the bridge logs it at start)",
        )
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def fetch_status(url: str, timeout: float = 5.0, token: str = "") -> dict[str, Any]:
    """GET ``url``/status (with ``token`` as a bearer token when given) and decode it;
    raises EndpointError saying what went wrong."""
    base = url.rstrip("/")
    target = base if base.endswith("/status") else f"{base}/status"
    request = urllib.request.Request(target)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as err:
        text = err.read().decode("utf-8", "replace").strip()
        if err.code == 401:
            text += (
                "; the config's [junction.http] token differs from the bridge's"
                if token
                else "; set [junction.http] token in the config to the bridge's token"
            )
        raise EndpointError(f"the bridge at {url} answered {err.code}: {text}") from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise EndpointError(f"no bridge answering at {url}: {reason}") from err
    try:
        snap = json.loads(raw)
    except ValueError as err:
        raise EndpointError(f"{target} did not answer with JSON: {err}") from err
    if not isinstance(snap, dict):
        raise EndpointError(f"{target} answered {type(snap).__name__}, not a snapshot object")
    return snap
