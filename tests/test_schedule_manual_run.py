"""A supervisor runs schedule_visits by hand: wrong parameters, and the replay of a past day."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from sibifang.settings import reset_settings

MON = date(2026, 11, 23)


@pytest.fixture
def env(database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("SIBIFANG_DATABASE_URL", database_url)
    monkeypatch.setenv("SIBIFANG_OUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("SIBIFANG_DATA_DIR", str(tmp_path / "data"))
    reset_settings()
    yield database_url
    reset_settings()


@pytest.mark.parametrize("param, name", [("as_of=2026-13-01", "as_of"), ("as_of=明天", "as_of"),
                                         ("notify_for=11月20日", "notify_for"),
                                         ("horizon_days=abc", "horizon_days")])
def test_a_mistyped_parameter_stops_the_run_with_a_chinese_message_naming_it(prefect_harness, env, param, name):
    from typer.testing import CliRunner

    from sibifang.cli import app

    res = CliRunner().invoke(app, ["run", "schedule_visits", "--param", param])
    assert res.exit_code == 2, res.output
    # (Prefect's own log of the failed run may precede it: the message is the command's last line)
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("参数有误") and name in last, res.output
    assert "Input should be" not in res.output


def test_a_date_parameter_as_text_is_still_read(prefect_harness, env):
    # What the CLI, the Prefect UI and `prefect deployment run -p` pass: a date as text.
    from flows.schedule_visits import schedule_visits
    from sibifang.db import migrate

    migrate(env)
    out = schedule_visits(as_of="2026-11-23", horizon_days="7", notify_for="2026-11-23")
    assert out["planned"] == 0


def _registry(url):
    from schemas.models import Area, Assignment, Cadre, Household, Visit
    from sibifang.db import migrate, session_scope

    from datetime import datetime

    migrate(url)
    with session_scope(url) as s:
        s.add(Area(id="V1", level="village", name="村"))
        s.add(Area(id="G1", level="grid", name="网格", parent_id="V1"))
        s.flush()
        s.add(Cadre(id="a", name="甲", role="cadre", grid_ids=["G1"], capacity=10, alert_channel="webhook",
                    alert_address="http://127.0.0.1:9/a"))
        s.add_all([Household(id=f"h{i}", head_name=f"户主{i}", grid_id="G1", categories=["hardship"])
                   for i in range(1, 4)])
        s.flush()
        s.add_all([Assignment(household_id=f"h{i}", cadre_id="a", since=MON - timedelta(days=60))
                   for i in range(1, 4)])
        s.add_all([Visit(id=f"OLD{i}", household_id=f"h{i}", cadre_id="a", mode="visit",
                         visited_at=datetime.combine(MON - timedelta(days=14), datetime.min.time()).replace(hour=10))
                   for i in range(1, 4)])


def test_replaying_a_past_day_sends_no_notice_for_it(prefect_harness, env):
    """The runs of Wed 25 Nov were made; a supervisor then replays Mon 23 (a day never run): its
    plans are derived, but no digest or reminder for Monday is queued or sent two days late."""
    from sqlalchemy import select

    from flows.schedule_visits import schedule_visits
    from schemas.models import Notice

    from sibifang.db import session_scope

    _registry(env)
    wed = MON + timedelta(days=2)
    schedule_visits(as_of=wed)
    with session_scope(env) as s:
        before = {(n.id, n.status, n.attempts) for n in s.scalars(select(Notice))}
    assert before  # Wednesday's digest (h1..h3 are overdue)
    out = schedule_visits(as_of=MON)
    with session_scope(env) as s:
        after = {(n.id, n.status, n.attempts) for n in s.scalars(select(Notice))}
        days = {n.day for n in s.scalars(select(Notice))}
    assert after == before, after - before
    assert days == {wed}
    assert out.get("notices_queued", 0) == 0 and out.get("notices_sent", 0) == 0
    assert out["notices_skipped"] == "replay"


def test_a_hand_run_for_a_future_day_does_not_silence_the_real_days_runs(prefect_harness, env, monkeypatch):
    """A preview (or a mistyped date) a month ahead left plans planned on that day: every real run
    until then was taken for a replay and queued no digest (review rv2)."""
    from flows.schedule_visits import schedule_visits

    _registry(env)
    wed = MON + timedelta(days=2)
    monkeypatch.setattr("sibifang.settings.local_today", lambda: wed)
    schedule_visits(as_of=MON + timedelta(days=30))
    out = schedule_visits(as_of=wed)
    assert "notices_skipped" not in out
    assert out["notices_queued"] > 0


@pytest.mark.parametrize("value, day", [("2026-11-22T16:30:00Z", date(2026, 11, 23)),
                                        ("2026-11-22T23:30:00+08:00", date(2026, 11, 22)),
                                        ("2026-11-22 16:30", date(2026, 11, 22))])
def test_a_time_with_a_zone_is_read_as_its_day_in_china(value, day):
    # As every other flow reads as_of (tasks.common.as_of_date): a scheduler's 16:30Z is 00:30
    # the next day in Shanghai, and planning for the UTC day would run a day behind.
    from sibifang.schedule_visits import parse_schedule_day

    assert parse_schedule_day(value, "as_of") == day
