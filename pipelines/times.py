"""How results write times: always the date with the time (UTC), and a tracklet's span from first to last sight."""
from __future__ import annotations

from datetime import datetime, timezone


def utc_text(timestamp: float) -> str:
    """An epoch timestamp as its UTC date and time, "2026-01-01 08:00:03"."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def span_text(t_start: float, t_end: float) -> str:
    """A UTC time span with its date, the end's date left out when it is the start's: "2026-01-01 08:00:03..08:00:10"."""
    start, end = utc_text(t_start), utc_text(t_end)
    return f"{start}..{end[11:] if end[:10] == start[:10] else end}"
