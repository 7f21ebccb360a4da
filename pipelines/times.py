"""How results write times: always the date with the time (UTC), and a tracklet's span from first to last sight;
and how the time filters users type are read (epoch seconds or ISO 8601), without loading a model."""
from __future__ import annotations

import math
from datetime import datetime, timezone, tzinfo

from pipelines.errors import UserError


def clock_text(timestamp: float, zone: tzinfo) -> str:
    """An epoch timestamp as the date and time on a clock in ``zone``, "2026-01-01 09:00:03"."""
    return datetime.fromtimestamp(timestamp, tz=zone).strftime("%Y-%m-%d %H:%M:%S")


def utc_text(timestamp: float) -> str:
    """An epoch timestamp as its UTC date and time, "2026-01-01 08:00:03"."""
    return clock_text(timestamp, timezone.utc)


def zone_name(timestamp: float, zone: tzinfo) -> str:
    """What ``zone`` is called at that time: "CET", "CEST", "UTC"."""
    return datetime.fromtimestamp(timestamp, tz=zone).tzname() or str(zone)


def span_text(t_start: float, t_end: float, zone: tzinfo = timezone.utc) -> str:
    """A time span with its date (UTC, or in ``zone``), the end's date left out when it is the start's:
    "2026-01-01 08:00:03..08:00:10"."""
    start, end = clock_text(t_start, zone), clock_text(t_end, zone)
    return f"{start}..{end[11:] if end[:10] == start[:10] else end}"


def iso_utc(timestamp: float) -> str:
    """An epoch timestamp as ISO 8601 UTC, "2026-01-01T08:00:03Z" (for machine-readable output)."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> float | None:
    """Epoch seconds, or an ISO-8601 date/time (UTC unless it says otherwise)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise UserError(f"not a time: {text!r} (use ISO 8601 such as 2026-01-01T08:00:00, or epoch seconds)") from None
        value = (moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment).timestamp()
    if not math.isfinite(value):
        raise UserError(f"not a time: {text!r}")
    return value
