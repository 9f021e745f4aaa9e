"""Report periods and the parameters a supervisor gives a run by hand (summary_report, schedule_visits),
and a period's report re-made later showing the period as it ended."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select, update

from sibifang.schedule_visits import ScheduleParameterError, check_schedule_parameters
from sibifang.summary_report import ReportPeriodError, report_period
from tests.test_summary_report import county  # noqa: F401  (fixture)

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
    (dict(period="fortnight"), "quarter"),
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


# -- a report re-made later shows the period as it ended (both engines) ---------------------------
def test_a_report_remade_later_does_not_count_needs_matched_after_the_period(county):  # noqa: F811
    """Needs raised in November and matched with a resource only in December were open at
    November's end: a November report re-made in December shows them open (已与服务资源池对接 0),
    as the report made at the time did."""
    from schemas.models import ServiceNeed, ServiceResource
    from sibifang.db import session_scope
    from tasks.escalate_disputes import match_needs_task
    from tasks.summary_report import gather_aggregates

    start, end = date(2026, 11, 1), date(2026, 11, 30)
    with session_scope(county) as s:
        for i in range(4):
            s.add(ServiceNeed(id=f"N{i}", household_id=f"H{i}", village_id="V1", category="elderly_care",
                              created_at=datetime(2026, 11, 20, 9), status="open"))
    made_then = gather_aggregates.fn(start, end, county)["aggregates"]
    assert (made_then["needs"], made_then["needs_matched"]) == (4, 0)
    with session_scope(county) as s:           # a resource joins the pool in December
        s.add(ServiceResource(id="R1", name="颐乐园", provider_type="social_org", offers=["elderly_care"],
                              village_id="V1"))
    assert match_needs_task.fn(date(2026, 12, 5), county)["matched"] == 4
    made_later = gather_aggregates.fn(start, end, county)["aggregates"]
    assert made_later["needs_matched"] == made_then["needs_matched"] == 0
    with session_scope(county) as s:
        matched_at = {n.matched_at for n in s.scalars(select(ServiceNeed))}
    assert matched_at == {datetime.combine(date(2026, 12, 5), datetime.max.time())}   # the run's day, its end
    assert gather_aggregates.fn(start, date(2026, 12, 5), county)["aggregates"]["needs_matched"] == 4


def test_needs_matched_before_matched_at_was_kept_count_as_matched(county):  # noqa: F811
    """A need matched by a version that kept no match time (``matched_at`` empty) counts as
    matched, as it did in the reports of that version: when it was matched is unknown."""
    from schemas.models import ServiceNeed
    from sibifang.db import session_scope
    from tasks.summary_report import gather_aggregates

    with session_scope(county) as s:
        for i in range(4):
            s.add(ServiceNeed(id=f"N{i}", household_id=f"H{i}", village_id="V1", category="elderly_care",
                              created_at=datetime(2026, 11, 20, 9), status="matched", matched_resource_id="R1"))
    assert gather_aggregates.fn(date(2026, 11, 1), date(2026, 11, 30), county)["aggregates"]["needs_matched"] == 4


def test_a_report_remade_later_does_not_count_alerts_dead_lettered_after_the_period(county):  # noqa: F811
    """Alerts queued on the period's last evening and dead-lettered the next morning were still
    waiting at the period's end (待发送): a re-made report does not move them to 投递失败转人工."""
    from schemas.models import Alert, DeliveryAttempt, RiskFlag
    from sibifang.db import session_scope
    from tasks.summary_report import gather_aggregates

    start, end = date(2026, 11, 1), date(2026, 11, 30)
    queued = datetime(2026, 11, 30, 23, 40)
    with session_scope(county) as s:
        for i in range(4):
            s.add(RiskFlag(id=f"F{i}", dedup_key=f"meter|M{i}|inactivity|x", household_id=f"H{i}", meter_id=f"M{i}",
                           kind="inactivity", severity="high", score=5.0, start=queued - timedelta(hours=9),
                           detected_at=queued, evidence="用电接近停止", details={}, status="open"))
        s.flush()
        for i in range(4):
            s.add(Alert(id=f"A{i}", dedup_key=f"d{i}", flag_id=f"F{i}", recipient_id="GW1",
                        recipient_role="grid_worker", channel="webhook", address="http://127.0.0.1:9/x",
                        severity="high", title="t", body="b", status="pending", attempts=0, created_at=queued,
                        next_attempt_at=queued))
    made_then = gather_aggregates.fn(start, end, county)["aggregates"]
    assert (made_then["alerts_pending"], made_then["alerts_dead"]) == (4, 0)
    with session_scope(county) as s:        # what record_attempt does on a permanent failure
        for i in range(4):
            s.add(DeliveryAttempt(alert_id=f"A{i}", attempt_no=1, at=queued + timedelta(minutes=10), ok=False,
                                  status_code=503, provider_code=None, error="unavailable", latency_ms=5))
            s.add(DeliveryAttempt(alert_id=f"A{i}", attempt_no=2, at=datetime(2026, 12, 1, 8), ok=False,
                                  status_code=400, provider_code=None, error="bad payload", latency_ms=5))
        s.execute(update(Alert).values(status="dead", attempts=2))
    made_later = gather_aggregates.fn(start, end, county)["aggregates"]
    assert (made_later["alerts_pending"], made_later["alerts_dead"]) == (4, 0)
    made_in_december = gather_aggregates.fn(start, date(2026, 12, 1), county)["aggregates"]
    assert (made_in_december["alerts_pending"], made_in_december["alerts_dead"]) == (0, 4)
