"""The ``[junction.http] listen`` value: parsing it, and the rule for a public one.

Shared by the server (:mod:`broker._ops_http`, what it binds), the client
(:mod:`broker._ops_client`, what ``junction status`` asks) and the config loader
(:mod:`broker._config`, which refuses a bad value or a public one at ``junction check``,
before ``run`` would die on it).

A public endpoint -- one that listens on an address other machines can reach -- hands
``/status`` (every adapter's state, URLs and last errors) to anyone who can reach it, so
it needs ``[junction.http] token``, or ``allow_public_without_token = true`` for a network
that is the site's alone.
"""

from __future__ import annotations

from broker._config_secrets import is_loopback
from broker._errors import ConfigError, ConfigProblem

LISTEN_KEY = "[junction.http] listen"


def parse_listen(listen: str, origin: str = "") -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) -> (host, port); raises ConfigError naming the key."""
    problem = listen_problem(listen, origin)
    if problem is not None:
        raise ConfigError([problem])
    host, _, port = listen.strip().rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def listen_problem(listen: str, origin: str = "", path: str = "") -> ConfigProblem | None:
    """What is wrong with a ``listen`` value as written, or None (see :func:`parse_listen`)."""
    text = listen.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        return _problem(
            listen, "not host:port", origin, 'e.g. "127.0.0.1:9464" (port 0: any free port)', path
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return _problem(listen, "an IPv6 host needs brackets", origin, 'e.g. "[::1]:9464"', path)
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        return _problem(listen, "the port must be a number 0..65535", origin, "", path)
    return None


def public_problem(
    listen: str, token: str, allowed: bool, origin: str, path: str = "junction.http.listen"
) -> ConfigProblem | None:
    """A problem when ``listen`` is reachable from other machines with no token and no
    explicit ``allow_public_without_token``; None otherwise (or when ``listen`` is bad:
    :func:`listen_problem` says that)."""
    if not listen or token or allowed or listen_problem(listen) is not None:
        return None
    host = listen.strip().rpartition(":")[0].removeprefix("[").removesuffix("]")
    if is_loopback(host):
        return None
    return ConfigProblem(
        origin,
        path,
        "other machines can reach this address, and with no token anyone there may read "
        "/status and /metrics",
        listen,
        True,
        'set [junction.http] token = "${JUNCTION_HTTP_TOKEN}", listen on "127.0.0.1:PORT", '
        "or set allow_public_without_token = true if the network is the site's alone",
    )


def listen_error(listen: str, message: str, origin: str = "", hint: str = "") -> ConfigError:
    """A ConfigError about ``[junction.http] listen`` (in ``origin`` when known)."""
    return ConfigError([_problem(listen, message, origin, hint)])


def _problem(
    listen: str, message: str, origin: str = "", hint: str = "", path: str = ""
) -> ConfigProblem:
    if path:
        return ConfigProblem(origin, path, message, listen, True, hint)
    file, key = (origin, LISTEN_KEY) if origin else (LISTEN_KEY, "")
    return ConfigProblem(file, key, message, listen, True, hint)
