"""Working calendar (工作日历): statutory holidays, 调休 working days, unknown-year fallback."""

from __future__ import annotations

import logging
from datetime import date, timedelta

import numpy as np
import pandas as pd

from sibifang.schedule_visits import load_cadence_rules
from sibifang.workcalendar import WorkCalendar


def test_spring_festival_2026():
    cal = WorkCalendar()
    # 2026-02-15 (腊月廿八) to 2026-02-23 are days off; Saturday 2026-02-14 and 2026-02-28 are 调休 working days.
    for offset in range(9):
        assert not cal.is_workday(date(2026, 2, 15) + timedelta(days=offset))
    assert cal.is_workday(date(2026, 2, 14))  # Saturday, adjusted working day
    assert cal.is_workday(date(2026, 2, 28))  # Saturday, adjusted working day
    assert cal.is_workday(date(2026, 2, 24))
    assert cal.next_workday(date(2026, 2, 15)) == date(2026, 2, 24)
    assert cal.previous_workday(date(2026, 2, 22)) == date(2026, 2, 14)


def test_national_day_golden_week_2026():
    cal = WorkCalendar()
    # chinese_calendar 1.11.0: 2026-10-01..07 off (8 Oct is a working Thursday), Sat 10 Oct is 调休.
    for offset in range(7):
        assert not cal.is_workday(date(2026, 10, 1) + timedelta(days=offset))
    assert cal.is_workday(date(2026, 10, 8))
    assert cal.is_workday(date(2026, 10, 10))  # Saturday, adjusted working day
    assert cal.is_workday(date(2026, 9, 20))  # Sunday, adjusted working day
    assert not cal.is_workday(date(2026, 9, 26))  # Mid-Autumn weekend
    assert cal.next_workday(date(2026, 10, 1)) == date(2026, 10, 8)
    # 2026-09-28..30 and 10-08, 10-09 are the only working days from 28 Sep to 9 Oct
    assert cal.workdays_between(date(2026, 9, 28), date(2026, 10, 10)) == 5


def test_ordinary_weeks_and_half_open_count():
    cal = WorkCalendar()
    assert cal.is_workday(date(2026, 11, 23))  # Monday
    assert not cal.is_workday(date(2026, 11, 22))  # Sunday
    assert cal.next_workday(date(2026, 11, 23)) == date(2026, 11, 23)
    assert cal.workdays_between(date(2026, 11, 23), date(2026, 11, 30)) == 5
    assert cal.workdays_between(date(2026, 11, 30), date(2026, 11, 23)) == 0


def test_vectorised_mask_matches_scalar():
    cal = WorkCalendar(extra_holidays={date(2026, 3, 9)}, extra_workdays={date(2026, 3, 14)})
    days = np.arange(np.datetime64("2025-12-20"), np.datetime64("2026-12-31"))
    mask = cal.workday_mask(days)
    expected = [cal.is_workday(pd.Timestamp(d).date()) for d in days]
    assert mask.tolist() == expected
    assert not cal.is_workday(date(2026, 3, 9)) and cal.is_workday(date(2026, 3, 14))
    with_nat = cal.workday_mask(pd.Series([pd.Timestamp("2026-11-23"), pd.NaT]))
    assert with_nat.tolist() == [True, False]


def test_2027_falls_back_to_weekends_and_configured_days(caplog):
    rules = load_cadence_rules(None)
    cal = rules.work_calendar()
    with caplog.at_level(logging.WARNING, logger="sibifang.workcalendar"):
        assert not cal.is_workday(date(2027, 1, 1))  # configured New Year holiday (a Friday)
        assert cal.is_workday(date(2027, 1, 4))  # Monday
        assert not cal.is_workday(date(2027, 1, 9))  # Saturday
        assert not cal.is_workday(date(2027, 10, 1))
        cal.workday_mask(np.arange(np.datetime64("2027-01-01"), np.datetime64("2027-03-01")))
    warnings = [r for r in caplog.records if "2027" in r.getMessage()]
    assert len(warnings) == 1  # once per year, however many lookups
    assert not cal.knows_year(2027) and cal.knows_year(2026)


def test_fallback_extra_workday_wins():
    cal = WorkCalendar(extra_holidays={date(2027, 2, 8)}, extra_workdays={date(2027, 2, 20)})
    assert cal.is_workday(date(2027, 2, 20))  # a configured 调休 Saturday
    assert not cal.is_workday(date(2027, 2, 8))


def test_2027_lunar_and_solar_term_statutory_days_are_configured():
    # 清明 is the solar term's day; 端午 (5th of the 5th lunar month) and 中秋 (15th of the 8th):
    # 2027 has no leap month, its lunar months begin on the new moons of 06-05 and 09-01 (CST).
    cal = load_cadence_rules(None).work_calendar()
    for d in (date(2027, 4, 5), date(2027, 6, 9), date(2027, 9, 15)):  # a Monday and two Wednesdays
        assert d.weekday() < 5 and not cal.is_workday(d), d
    assert cal.is_workday(date(2027, 6, 8)) and cal.is_workday(date(2027, 9, 16))
