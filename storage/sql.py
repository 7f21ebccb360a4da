"""Safe building of LanceDB `where` clauses: values are always quoted, never pasted in raw."""
from __future__ import annotations

import math
from collections.abc import Iterable


def storable(value: str) -> bool:
    """Whether ``value`` can be a stored id: quote refuses NUL characters, so no stored id holds one."""
    return "\x00" not in value


def quote(value: str) -> str:
    """A SQL string literal for ``value`` (single quotes doubled), safe for any id text."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string id, got {type(value).__name__}")
    if not storable(value):
        raise ValueError("ids may not contain NUL characters")
    return "'" + value.replace("'", "''") + "'"


def number(value: float) -> str:
    """A SQL literal for a finite float (refuses NaN/inf so a filter never silently matches nothing)."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value}")
    return repr(value)


def equals(column: str, value: str) -> str:
    """``column = 'value'`` with the value quoted."""
    return f"{column} = {quote(value)}"


def is_in(column: str, values: Iterable[str], negate: bool = False) -> str:
    """``column IN (...)`` (or NOT IN) over quoted values; an empty list matches nothing (or all)."""
    literals = [quote(v) for v in values]
    if not literals:
        return "TRUE" if negate else "FALSE"
    return f"{column} {'NOT IN' if negate else 'IN'} ({', '.join(literals)})"


def all_of(clauses: Iterable[str | None]) -> str | None:
    """The AND of the given clauses (None entries skipped); None when there is none."""
    kept = [f"({c})" for c in clauses if c]
    return " AND ".join(kept) if kept else None


def any_of(clauses: Iterable[str | None]) -> str | None:
    """The OR of the given clauses (None entries skipped); None when there is none."""
    kept = [f"({c})" for c in clauses if c]
    return " OR ".join(kept) if kept else None
