"""Which dead letters a filter selects: the SQL the store runs, and the same test in Python.

A filter is a route (equal), a reason (``LIKE '%text%'``: ASCII case ignored, ``%`` and
``_`` wildcards) and seqs, combined with AND.  :func:`reason_matches` says in Python what
the store's ``LIKE`` says, so counts made from the summary agree with the rows the store
returns for the same filter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def where(
    route: str | None, reason: str | None, ids: Sequence[int]
) -> tuple[str, tuple[object, ...]]:
    """The ``WHERE`` clause (or "") and its arguments for a query on the ``dead`` table."""
    clauses: list[str] = []
    args: list[object] = []
    if route is not None:
        clauses.append("route = ?")
        args.append(route)
    if reason is not None:
        clauses.append("reason LIKE ?")
        args.append(f"%{reason}%")
    if ids:
        clauses.append(f"seq IN ({','.join('?' * len(ids))})")
        args += list(ids)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)


def reason_matches(pattern: str, reason: str) -> bool:
    """What SQLite's ``reason LIKE '%pattern%'`` (the store's filter) says, in Python.

    ASCII letters match either case, other characters exactly; ``%`` is any run of
    characters and ``_`` any one, as in SQL. Used to filter the summary so its counts
    agree with the rows the store returns for the same ``--reason``.
    """
    parts = [".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern]
    return re.search("".join(parts), reason, re.ASCII | re.IGNORECASE | re.DOTALL) is not None
