"""Trading calendars: when a market is open, which missing bars are real gaps, and how
many bars a year a series has (Sharpe annualisation).

Owns the calendar names and their rules (pure: no database):

- `24/7` (the default, crypto): always open; bars per year stay what the bar spacing
  implies (365 days), so `bars_per_year` answers None.
- `fx` (24/5): closed from Friday 22:00 UTC to Sunday 22:00 UTC, every week, all year
  (the usual New York 17:00 close / Sydney open, fixed in UTC; no holidays). A year is
  260 trading days of 24 hours.
- an exchange code of the `exchange_calendars` package (e.g. `XNYS`, or an alias such as
  `NYSE`, stored under its canonical code): its sessions, early closes, breaks and
  holidays.

A bar is *expected* when it starts while the market is open (a daily bar: its UTC date is
a session; FX daily bars: Monday-Friday, or Sunday-Thursday when stamped 22:00). Bars that
are present are never a problem; a bar missing in a closed session is not a gap.
`exchange_calendars` is imported lazily (it takes about a second) and each calendar is
built once per process.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_CALENDAR = "24/7"
FX_CALENDAR = "fx"
# The window over which an exchange's sessions per year are averaged (whole years, fixed
# so that a version's annualisation does not drift with the date it was trained on).
REFERENCE_YEARS = (2015, 2024)
FX_DAYS_PER_YEAR = 260.0
_NS_PER_S = 1_000_000_000
_DAY_NS = 86_400 * _NS_PER_S
_WEEK_NS = 7 * _DAY_NS
# Unix epoch is a Thursday: Friday 22:00 is 1 day 22 h into an epoch-aligned week.
_FX_CLOSE_NS = (24 + 22) * 3600 * _NS_PER_S
_FX_OPEN_NS = _FX_CLOSE_NS + 2 * _DAY_NS  # Sunday 22:00
_MAX_CANDIDATES = 2_000_000  # missing grid points checked per batch


class UnknownCalendar(ValueError):
    """A calendar name that is neither `24/7`, `fx` nor an exchange_calendars code."""


def _xcals() -> Any:
    import exchange_calendars  # lazy: start-up (about a second to import)

    return exchange_calendars


@functools.lru_cache(maxsize=1)
def exchange_codes() -> frozenset[str]:
    """Every code and alias exchange_calendars knows (upper case), without its own
    `24/7` / `24/5` pseudo-calendars (ours are `24/7` and `fx`)."""
    names = _xcals().get_calendar_names(include_aliases=True)
    return frozenset(n.upper() for n in names if n not in ("24/7", "24/5"))


def normalize_calendar(name: object) -> str:
    """The canonical calendar name (`24/7`, `fx` or an exchange code); UnknownCalendar."""
    if not isinstance(name, str) or not name.strip():
        raise UnknownCalendar("must be '24/7', 'fx' or an exchange code such as 'XNYS'")
    text = name.strip()
    if text in ("24/7", "24x7"):
        return DEFAULT_CALENDAR
    if text.lower() in ("fx", "24/5"):
        return FX_CALENDAR
    if text.upper() not in exchange_codes():
        raise UnknownCalendar(
            f"unknown calendar {text!r}: use '24/7', 'fx' or an exchange_calendars code "
            "such as 'XNYS', 'XLON', 'XTKS'")
    xc = _xcals()
    names = {n.upper(): n for n in xc.get_calendar_names(include_aliases=True)}
    return str(xc.resolve_alias(names[text.upper()]))


@functools.lru_cache(maxsize=16)
def _exchange(code: str, start_year: int, end_year: int) -> Any:
    cal = _xcals().get_calendar(code)
    first = max(pd.Timestamp(f"{start_year}-01-01"), cal.first_session)
    last = min(pd.Timestamp(f"{end_year}-12-31"), cal.last_session)
    return _xcals().get_calendar(code, start=first, end=last)


def _exchange_covering(code: str, first_ns: int, last_ns: int) -> Any:
    """The calendar built for the whole years around [first, last] (cached per range)."""
    y0 = pd.Timestamp(first_ns, unit="ns").year - 1
    y1 = pd.Timestamp(last_ns, unit="ns").year + 1
    return _exchange(code, y0, y1)


def _fx_open(ns: np.ndarray) -> np.ndarray:
    in_week = np.mod(ns, _WEEK_NS)
    return ~((in_week >= _FX_CLOSE_NS) & (in_week < _FX_OPEN_NS))


@functools.lru_cache(maxsize=16)
def _schedule_ns(cal: Any) -> dict[str, np.ndarray]:
    """The calendar's schedule as int64 ns columns (-1 where a session has no break)."""
    sched = cal.schedule
    out = {}
    for col in ("open", "close", "break_start", "break_end"):
        column = pd.to_datetime(sched[col], utc=True)
        values = pd.DatetimeIndex(column.array).as_unit("ns").asi8
        out[col] = np.where(values == np.iinfo(np.int64).min, -1, values).astype(np.int64)
    sessions = pd.DatetimeIndex(cal.sessions)
    naive = sessions.tz_localize(None) if sessions.tz is not None else sessions
    out["session"] = naive.as_unit("ns").asi8
    return out


def is_open(calendar: str, timestamps: Any, timeframe_s: int) -> np.ndarray:
    """For each bar start (ns since the epoch, UTC, or a DatetimeIndex): is a bar expected
    there? Daily bars (timeframe ≥ 1 day) of an exchange: the UTC date is a session."""
    ns = (np.asarray(timestamps, dtype=np.int64) if isinstance(timestamps, np.ndarray)
          else pd.DatetimeIndex(timestamps).as_unit("ns").asi8)
    if calendar == DEFAULT_CALENDAR or ns.size == 0:
        return np.ones(ns.shape, dtype=bool)
    if calendar == FX_CALENDAR:
        return _fx_open(ns)
    cal = _exchange_covering(calendar, int(ns.min()), int(ns.max()))
    s = _schedule_ns(cal)
    if timeframe_s >= 86_400:
        days = ns - np.mod(ns, _DAY_NS)
        return np.isin(days, s["session"])
    i = np.searchsorted(s["open"], ns, side="right") - 1
    ok = i >= 0
    j = np.where(ok, i, 0)
    inside = ok & (ns < s["close"][j])
    brk = (s["break_start"][j] >= 0) & (ns >= s["break_start"][j]) & (ns < s["break_end"][j])
    return inside & ~brk


def missing_open_bars(ns: np.ndarray, step_ns: int, calendar: str,
                      limit: int = 1000) -> tuple[list[tuple[int, int, int]], int]:
    """Gaps of a sorted series of bar starts (ns): `(after, before, missing)` for up to
    `limit` gaps and the total of missing bars, counting only bars expected by
    `calendar` (a stretch of closed sessions is no gap)."""
    ns = np.asarray(ns, dtype=np.int64)
    if ns.size < 2:
        return [], 0
    spacing = np.diff(ns)
    where = np.flatnonzero(spacing > step_ns)
    counts = (spacing[where] // step_ns - 1).astype(np.int64)
    if calendar == DEFAULT_CALENDAR:
        missing_each = counts
    else:
        missing_each = np.zeros(where.size, dtype=np.int64)
        start = 0
        tf_s = step_ns // _NS_PER_S
        while start < where.size:  # batches of at most _MAX_CANDIDATES grid points
            stop = start + 1
            total = int(counts[start])
            while stop < where.size and total + int(counts[stop]) <= _MAX_CANDIDATES:
                total += int(counts[stop])
                stop += 1
            c = counts[start:stop]
            owner = np.repeat(np.arange(c.size), c)
            offset = np.arange(owner.size) - np.repeat(np.cumsum(c) - c, c) + 1
            points = ns[where[start:stop]][owner] + offset * step_ns
            open_ = is_open(calendar, points, int(tf_s))
            missing_each[start:stop] = np.bincount(owner, weights=open_,
                                                   minlength=c.size).astype(np.int64)
            start = stop
    keep = np.flatnonzero(missing_each > 0)
    gaps = [(int(ns[where[k]]), int(ns[where[k] + 1]), int(missing_each[k]))
            for k in keep[:limit]]
    return gaps, int(missing_each.sum())


@functools.lru_cache(maxsize=64)
def bars_per_year(calendar: str, timeframe_s: int) -> float | None:
    """Bars a year for Sharpe annualisation; None for `24/7` (the bar spacing decides).

    `fx`: 260 days × bars a day. An exchange: sessions a year (averaged over
    REFERENCE_YEARS) for daily bars; intraday, the bars that start in each session
    (ceil of its open minutes, breaks left out, over the bar length) summed per year.
    """
    if calendar == DEFAULT_CALENDAR:
        return None
    per_day = 86_400 / timeframe_s
    if calendar == FX_CALENDAR:
        return FX_DAYS_PER_YEAR * per_day
    cal = _exchange(calendar, *REFERENCE_YEARS)
    s = _schedule_ns(cal)
    first, last = pd.Timestamp(cal.first_session), pd.Timestamp(cal.last_session)
    years = ((last - first).days + 1) / 365.25
    if years <= 0:
        raise UnknownCalendar(f"calendar {calendar} has no sessions in {REFERENCE_YEARS}")
    if timeframe_s >= 86_400:
        return len(s["session"]) / years * (86_400 / timeframe_s)
    open_ns = s["close"] - s["open"]
    has_break = s["break_start"] >= 0
    open_ns = open_ns - np.where(has_break, s["break_end"] - s["break_start"], 0)
    step = timeframe_s * _NS_PER_S
    bars = np.ceil(open_ns / step).sum()
    return float(bars) / years


def describe(calendar: str, timeframe_s: int) -> dict[str, Any]:
    """{"calendar", "bars_per_year"} for lineage and CLI output (None: from spacing)."""
    ppy = bars_per_year(calendar, timeframe_s)
    return {"calendar": calendar,
            "bars_per_year": None if ppy is None or not math.isfinite(ppy) else ppy}
