"""Official working-day calendar (工作日历) for visit scheduling.

Backed by the ``chinese_calendar`` package, which knows the State Council's statutory holidays
(法定节假日) and the adjusted working days (调休上班日, usually a Saturday or Sunday) for the
years it ships data for (2004–2026 in chinesecalendar 1.11.0). For any other year the calendar
falls back to "Monday–Friday are working days" plus the holidays and working days listed in
configuration (the ``[calendar]`` table of ``cadence.toml``) and logs a warning once per year,
so a supervisor knows the schedule for that year is only as good as the configured list.

Vectorised use: ``workday_mask(dates)`` maps any number of dates through a per-year table that
is built once (366 booleans per year), so scheduling 260,000 families costs a few array lookups.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import date, timedelta

import numpy as np

logger = logging.getLogger(__name__)

_EPOCH = np.datetime64("1970-01-01", "D")


def _known_years() -> tuple[int, int]:
    import chinese_calendar

    years = [d.year for d in chinese_calendar.holidays]
    return min(years), max(years)


class WorkCalendar:
    """Working days of mainland China's official calendar, plus local corrections.

    ``extra_holidays`` are days off on top of the official calendar (a local holiday, or the
    holidays of a year the package does not know yet); ``extra_workdays`` are working days on
    top of it (调休 days of such a year). An extra working day wins over an extra holiday.
    """

    def __init__(self, extra_holidays: Iterable[date] = frozenset(), extra_workdays: Iterable[date] = frozenset()):
        self.extra_holidays: frozenset[date] = frozenset(extra_holidays)
        self.extra_workdays: frozenset[date] = frozenset(extra_workdays)
        self._tables: dict[int, np.ndarray] = {}
        self._known = _known_years()

    # -- per-year table -------------------------------------------------------------------
    def knows_year(self, year: int) -> bool:
        """True when the official calendar (incl. 调休) of ``year`` ships with chinese_calendar."""
        return self._known[0] <= year <= self._known[1]

    def year_table(self, year: int) -> np.ndarray:
        """Boolean array, index = day of year - 1 (365 or 366 entries): True on working days."""
        table = self._tables.get(year)
        if table is not None:
            return table
        start = date(year, 1, 1)
        n_days = (date(year + 1, 1, 1) - start).days
        days = [start + timedelta(days=i) for i in range(n_days)]
        if self.knows_year(year):
            import chinese_calendar

            table = np.fromiter((chinese_calendar.is_workday(d) for d in days), dtype=bool, count=n_days)
        else:
            # Why a warning and not an error: scheduling must go on at the turn of the year even
            # before the package is updated; the supervisor is told which year is approximate.
            logger.warning(
                "chinese_calendar 不含 %d 年的官方节假日数据，按周一至周五上班并叠加 cadence.toml [calendar] "
                "中配置的节假日/调休日排期 (no official calendar for %d: using weekends plus configured "
                "holidays/working days)",
                year,
                year,
            )
            table = np.fromiter((d.weekday() < 5 for d in days), dtype=bool, count=n_days)
        for d in self.extra_holidays:
            if d.year == year:
                table[d.timetuple().tm_yday - 1] = False
        for d in self.extra_workdays:
            if d.year == year:
                table[d.timetuple().tm_yday - 1] = True
        table.setflags(write=False)
        self._tables[year] = table
        return table

    # -- scalar API -----------------------------------------------------------------------
    def is_workday(self, d: date) -> bool:
        """True when ``d`` is a working day (weekday that is not a holiday, or an adjusted working day)."""
        return bool(self.year_table(d.year)[d.timetuple().tm_yday - 1])

    def next_workday(self, d: date) -> date:
        """First working day on or after ``d`` (``d`` itself when it is a working day)."""
        current = d
        for _ in range(400):  # no real calendar has a year without working days
            if self.is_workday(current):
                return current
            current += timedelta(days=1)
        raise ValueError(f"no working day within 400 days after {d}")

    def previous_workday(self, d: date) -> date:
        """Last working day on or before ``d``."""
        current = d
        for _ in range(400):
            if self.is_workday(current):
                return current
            current -= timedelta(days=1)
        raise ValueError(f"no working day within 400 days before {d}")

    def workdays_between(self, a: date, b: date) -> int:
        """Number of working days in the half-open range [a, b) (0 when b <= a), like numpy.busday_count."""
        if b <= a:
            return 0
        return int(self.workday_mask(np.arange(np.datetime64(a, "D"), np.datetime64(b, "D"))).sum())

    # -- vectorised API -------------------------------------------------------------------
    def workday_mask(self, dates) -> np.ndarray:
        """Vectorised ``is_workday`` for an array-like of dates (datetime64, Timestamps, ``date``).

        NaT maps to False. The result has the shape of the input.
        """
        arr = np.asarray(dates)
        if arr.dtype.kind != "M":
            arr = np.asarray(arr, dtype="datetime64[D]")
        arr = arr.astype("datetime64[D]")
        out = np.zeros(arr.shape, dtype=bool)
        valid = ~np.isnat(arr)
        if not valid.any():
            return out
        flat = arr[valid]
        years = flat.astype("datetime64[Y]").astype(np.int64) + 1970
        day_of_year = (flat - flat.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64)
        result = np.empty(flat.shape, dtype=bool)
        for year in np.unique(years):
            sel = years == year
            result[sel] = self.year_table(int(year))[day_of_year[sel]]
        out[valid] = result
        return out

    def workdays_in(self, start: date, n_days: int) -> np.ndarray:
        """Working-day mask of the ``n_days`` consecutive days from ``start`` (index 0 = start)."""
        return self.workday_mask(np.arange(n_days) + np.datetime64(start, "D"))
