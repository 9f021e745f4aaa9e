"""Report periods and the parameters a supervisor gives a run by hand (summary_report, schedule_visits)."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from sibifang.schedule_visits import ScheduleParameterError, check_schedule_parameters
from sibifang.summary_report import ReportPeriodError, report_period

ROOT = Path(__file__).resolve().parents[1]


# -- the period of a report (pure) ----------------------------------------------------------------
def test_weekly_run_reports_the_monday_to_sunday_week_before_it():
    # Monday 2026-11-30, whatever the hour: the week Mon 11-23 .. Sun 11-29
    assert report_period(date(2026, 11, 30), period="week") == (date(2026, 11, 23), date(2026, 11, 29))
    # asked on another day by hand: the last full week before that day
    assert report_period(date(2026, 12, 3), period="week") == (date(2026, 11, 23), date(2026, 11, 29))
    assert report_period(date(2026, 12, 7), period="周") == (date(2026, 11, 30), date(2026, 12, 6))


def test_monthly_run_reports_the_calendar_month_before_it():
    assert report_period(date(2026, 11, 1), period="month") == (date(2026, 10, 1), date(2026, 10, 31))
    assert report_period(date(2026, 3, 1), period="month") == (date(2026, 2, 1), date(2026, 2, 28))
    assert report_period(date(2027, 1, 1), period="月") == (date(2026, 12, 1), date(2026, 12, 31))


@pytest.mark.parametrize("period, weekday, day_of_month", [("week", 0, None), ("month", None, 1)])
def test_scheduled_runs_cover_every_day_exactly_once(period, weekday, day_of_month):
    # The days between two scheduled runs are the days of the second run's report: no day is in
    # no report (Monday after 08:00, or 10-02 between two 30-day reports) nor in two.
    runs = [date(2026, 1, 1) + timedelta(days=i) for i in range(800)]
    runs = [d for d in runs if d.weekday() == weekday or d.day == day_of_month]
    periods = [report_period(d, period=period) for d in runs]
    for (_, e0), (s1, e1), run in zip(periods, periods[1:], runs[1:]):
        assert s1 == e0 + timedelta(days=1) and e1 == run - timedelta(days=1)


def test_period_days_and_explicit_periods():
    # period_days: the n days ending on as_of, as_of included (7 when nothing is given)
    assert report_period(date(2026, 11, 29), period_days=3) == (date(2026, 11, 27), date(2026, 11, 29))
    assert report_period(date(2026, 11, 29)) == (date(2026, 11, 23), date(2026, 11, 29))
    assert report_period(date(2026, 11, 29), period_start=date(2026, 10, 1), period_end=date(2026, 10, 15)) == (
        date(2026, 10, 1), date(2026, 10, 15))


@pytest.mark.parametrize("kwargs, words", [
    (dict(period_days=0), "period_days"),
    (dict(period_days=-3), "period_days"),
    (dict(period="quarter"), "week"),
    (dict(period_start=date(2026, 11, 10)), "period_end"),
    (dict(period_start=date(2026, 11, 10), period_end=date(2026, 11, 1)), "晚于"),
    (dict(period="week", period_days=7), "一种方式"),
])
def test_bad_report_parameters_are_refused_in_chinese(kwargs, words):
    with pytest.raises(ReportPeriodError, match=words):
        report_period(date(2026, 11, 29), **kwargs)


def test_bad_schedule_parameters_are_refused_in_chinese():
    for h in (0, -1, 367, 2.5, True):
        with pytest.raises(ScheduleParameterError, match="horizon_days"):
            check_schedule_parameters(horizon_days=h)
    with pytest.raises(ScheduleParameterError, match="没有编号为 NOPE 的网格"):
        check_schedule_parameters(horizon_days=30, grid="NOPE", known_grids=["G0001"])
    check_schedule_parameters(horizon_days=30, grid="G0001", known_grids=["G0001"])
    check_schedule_parameters(horizon_days=1)
    assert issubclass(ScheduleParameterError, ValueError) and issubclass(ReportPeriodError, ValueError)


def test_scheduled_reports_are_calendar_weeks_and_months_served_and_deployed():
    from sibifang.deployments import SCHEDULES

    served = sorted((s["cron"], s["parameters"]["period"]) for s in SCHEDULES["summary_report"])
    assert served == [("0 8 * * 1", "week"), ("0 8 1 * *", "month")]
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    (dep,) = [d for d in spec["deployments"] if d["name"] == "summary_report"]
    assert sorted((s["cron"], s["parameters"]["period"]) for s in dep["schedules"]) == served


# -- the flows, by hand ---------------------------------------------------------------------------
def _seed(url: str) -> None:
    from schemas.models import Area, Cadre, Household
    from sibifang.db import migrate, session_scope

    migrate(url)
    with session_scope(url) as s:
        s.add(Area(id="V1", level="village", name="村"))
        s.add(Area(id="G1", level="grid", name="网格", parent_id="V1"))
        s.flush()
        s.add(Cadre(id="a", name="a", role="cadre", grid_ids=["G1"], capacity=10))
        s.add(Household(id="h1", head_name="户主", grid_id="G1", categories=["hardship"]))


def test_report_flow_periods_and_bad_parameters(prefect_harness, database_url, app_env, monkeypatch):
    from flows.summary_report import summary_report
    from schemas.models import Report
    from sibifang.db import session_scope
    from tests.test_inbox_rejects import use_database

    use_database(monkeypatch, database_url)
    _seed(database_url)
    with pytest.raises(ReportPeriodError):
        summary_report(as_of=date(2026, 11, 30), period_days=0)
    summary_report(as_of=date(2026, 11, 30), period="week")
    summary_report(as_of=date(2026, 12, 2), period="week")  # the same week asked again later
    summary_report(period_start=date(2026, 11, 23), period_end=date(2026, 11, 29))  # and by its dates
    with session_scope(database_url) as s:
        rows = s.execute(select(Report.id, Report.period_start, Report.period_end)).all()
    assert [(r.period_start, r.period_end) for r in rows] == [(date(2026, 11, 23), date(2026, 11, 29))]


def test_schedule_flow_refuses_an_unknown_grid_and_a_bad_horizon(prefect_harness, database_url, app_env,
                                                                 monkeypatch):
    from flows.schedule_visits import schedule_visits
    from schemas.models import VisitPlan
    from sibifang.db import session_scope
    from tests.test_inbox_rejects import use_database

    use_database(monkeypatch, database_url)
    _seed(database_url)
    with pytest.raises(ScheduleParameterError, match="没有编号为 NOPE 的网格"):
        schedule_visits(as_of=date(2026, 11, 23), grid="NOPE")
    for h in (0, -5):
        with pytest.raises(ScheduleParameterError, match="horizon_days"):
            schedule_visits(as_of=date(2026, 11, 23), grid="G1", horizon_days=h)
    with session_scope(database_url) as s:
        assert s.scalars(select(VisitPlan.id)).all() == []
    assert schedule_visits(as_of=date(2026, 11, 23), grid="G1")["new_plans"] > 0
