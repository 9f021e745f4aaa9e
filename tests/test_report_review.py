"""A reader's review of the summary report: figures tied across the report, quarterly periods,
and the report saying where its figures come from."""

from __future__ import annotations

from datetime import date

import pandas as pd

from sibifang.summary_report import MASKED, SMALL_COUNT, bounds, report_period, summarise
from tests.test_summary_report import END, START, T, _areas, _households, _report, _risk_map


def _alerts(sent: int, dead: int, acked: int) -> pd.DataFrame:
    n = sent + dead
    first = [T("2026-07-02 10:06")] * sent + [pd.NaT] * dead
    ack = [T("2026-07-02 10:20")] * acked + [pd.NaT] * (n - acked)
    return pd.DataFrame({"id": [f"A{i}" for i in range(n)], "status": ["sent"] * sent + ["dead"] * dead,
                         "created_at": [T("2026-07-02 10:05")] * n, "first_sent_at": first, "acked_at": ack})


def _agg(alerts: pd.DataFrame) -> dict:
    return summarise(period_start=START, period_end=END, households=_households(), risk_map=_risk_map(),
                     areas=_areas(), alerts=alerts,
                     plans=pd.DataFrame(columns=["id", "due_date", "status"]),
                     visits=pd.DataFrame(columns=["id", "visited_at"]),
                     flags=pd.DataFrame(columns=["id", "kind", "detected_at"]),
                     cases=pd.DataFrame(columns=["id", "opened_at", "status"]),
                     needs=pd.DataFrame(columns=["id", "category", "status", "created_at"]))


def _status_readings(agg: dict) -> set[tuple[int, int]]:
    """Every (delivered, dead-lettered) a reader finds possible from the printed figures: the four
    parts add up to the alerts, and an alert is confirmed only once delivered (acked <= sent)."""
    total = agg["alerts"]
    parts = [agg["alerts_sent"], agg["alerts_dead"], agg["alerts_cancelled"], agg["alerts_pending"]]
    ack_lo, _ = bounds(agg["alerts_acked"])
    found = set()
    rng = [range(bounds(p)[0], int(min(bounds(p)[1], 100)) + 1) for p in parts]
    for s in rng[0]:
        for d in rng[1]:
            for c in rng[2]:
                for p in rng[3]:
                    if s + d + c + p == total and s >= ack_lo:
                        found.add((s, d))
    return found


def test_a_masked_dead_letter_count_is_not_pinned_by_the_confirmed_alerts():
    # 10 alerts: 9 delivered, 1 dead-lettered, all 9 delivered ones confirmed. "1" is masked and
    # the delivered count hidden as "*"; but 9 confirmed means at least 9 delivered, so 1 dead.
    agg = _agg(_alerts(sent=9, dead=1, acked=9))
    assert agg["alerts"] == 10 and agg["alerts_acked"] == 9
    if agg["alerts_sent"] is None:  # not published at all: nothing to pin
        return
    assert agg["alerts_dead"] == MASKED
    deads = {d for _, d in _status_readings(agg)}
    assert deads >= {1, 2}, f"the dead-lettered alerts are pinned to {deads}"


def test_the_status_breakdown_is_still_published_when_it_can_be():
    agg = _agg(_alerts(sent=12, dead=1, acked=5))
    assert agg["alerts_dead"] == MASKED and agg["alerts_sent"] == "*"
    assert {d for _, d in _status_readings(agg)} >= {1, 2}


def test_quarterly_reports_are_calendar_quarters_before_the_run():
    assert report_period(date(2026, 10, 1), period="quarter") == (date(2026, 7, 1), date(2026, 9, 30))
    assert report_period(date(2026, 12, 4), period="季度") == (date(2026, 7, 1), date(2026, 9, 30))
    assert report_period(date(2026, 1, 15), period="quarter") == (date(2025, 10, 1), date(2025, 12, 31))
    assert report_period(date(2026, 4, 1), period="季报") == (date(2026, 1, 1), date(2026, 3, 31))


def test_the_report_says_where_its_figures_come_from_and_as_of_when():
    html = _report(_agg(_alerts(sent=9, dead=1, acked=5)))
    assert "数据截至 2026-07-31 24:00（北京时间）" in html
    assert "数据来源" in html
    assert SMALL_COUNT == 3


def test_an_empty_period_is_reported_in_chinese_and_a_rerun_gives_the_same_bytes(prefect_harness, database_url,
                                                                                   app_env, monkeypatch):
    from sqlalchemy import select

    from flows.summary_report import summary_report
    from schemas.models import Report
    from sibifang.db import migrate, session_scope
    from tests.test_inbox_rejects import use_database

    use_database(monkeypatch, database_url)
    migrate(database_url)
    first = summary_report(period_start=date(2026, 10, 1), period_end=date(2026, 10, 31))
    html = open(first["path"], encoding="utf-8").read()
    assert "本统计期间内系统中没有走访计划、走访记录、风险预警、调解案件和服务需求" in html and "暂无数据" in html
    again = summary_report(period_start=date(2026, 10, 1), period_end=date(2026, 10, 31))
    assert again == first
    with session_scope(database_url) as s:
        assert len(s.scalars(select(Report.id)).all()) == 1


def test_every_table_figure_has_its_unit():
    import re

    html = _report(_agg(_alerts(sent=9, dead=1, acked=5)))
    assert "<th>数量</th>" not in html  # a bare "number" says neither what nor in which unit
    assert "本期计划走访（户次）" in html and "走访记录（含计划外，次）" in html
    heads = re.search(r"<tr><th>村（社区）</th>(.*?)</tr>", html.split("家庭风险动态预警图")[-1]).group(1)
    assert all(f"<th>{lvl}色（户）</th>" in heads for lvl in "红橙黄绿")


def test_a_run_time_given_in_utc_reports_the_shanghai_day():
    from datetime import datetime, timezone

    from tasks.common import as_of_date

    # 1 December 00:30 in Shanghai is still 30 November in UTC: the monthly run is November's.
    utc = datetime(2026, 11, 30, 16, 30, tzinfo=timezone.utc)
    assert as_of_date(utc) == date(2026, 12, 1)
    assert as_of_date("2026-11-30T16:30:00Z") == date(2026, 12, 1)
    assert report_period(as_of_date(utc), period="month") == (date(2026, 11, 1), date(2026, 11, 30))
    assert as_of_date(datetime(2026, 12, 1, 0, 30)) == date(2026, 12, 1)  # naive: already local
    assert as_of_date("2026-12-01") == date(2026, 12, 1)


def test_the_map_tooltips_give_households_with_their_unit():
    import xml.etree.ElementTree as ET

    from sibifang.summary_report import risk_map_svg

    tips = [t.text for t in ET.fromstring(risk_map_svg(_risk_map(), _areas())).iter(
        "{http://www.w3.org/2000/svg}title")]
    assert tips and all(t.count("户") == 4 for t in tips), tips
