"""What people do between two runs of the loop, simulated for the demo (演示模拟).

The demo replays days of a synthetic county; this module plays the humans: cadres visit
the families planned for the day and their sheets arrive in the inbox (as a village would
send them, a broken row now and then), the meter feed drops the day's readings, grid
workers acknowledge the alerts they received with an outcome, and mediators close cases.
Everything goes through the same doors as real data (files in the inbox, the ack command),
and every draw comes from a generator seeded by (seed, day), so the demo is deterministic.
"""

from __future__ import annotations

import zlib
from datetime import date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import select

from schemas.models import Alert, MediationCase, VisitPlan
from sibifang.db import get_engine, session_scope

FAMILY_NOTES = ["家庭和睦，生活正常", "老人身体尚可，子女每周电话", "孩子学习情况良好", "收入稳定，无明显困难",
                "近期身体不适，已就医", "邻里关系融洽"]
CUE_NOTES = ["夫妻近期经常吵架，女方提出离婚", "反映丈夫赌博欠债，家庭矛盾突出", "婆媳矛盾激化，已多次争吵"]
DEMANDS = ["elderly_care", "family_education", "skills", "domestic_services", "employment_rights",
           "entrepreneurship", "marriage_family_rights", "democratic_participation"]
OUTCOMES = ["visited_all_well", "visited_all_well", "visited_all_well", "needs_help"]


def _rng(seed: int, day: date, salt: str) -> np.random.Generator:
    return np.random.default_rng([seed, day.toordinal(), zlib.crc32(salt.encode())])


def drop_readings(readings_file: Path, inbox: Path, start: datetime, end: datetime, name: str) -> int:
    """Put the readings of (start, end] in the inbox as the meter platform's daily export."""
    import pyarrow.dataset as ds

    table = ds.dataset(readings_file).to_table(
        filter=(ds.field("ts") > pd.Timestamp(start)) & (ds.field("ts") <= pd.Timestamp(end)))
    folder = inbox / "readings"
    folder.mkdir(parents=True, exist_ok=True)
    import pyarrow.parquet as pq

    pq.write_table(table, folder / f"{name}.parquet")
    return table.num_rows


def visit_sheet(day: date, seed: int, database_url: str | None = None, *, completion: float = 0.88,
                broken_rows: int = 0) -> pd.DataFrame:
    """Visit records of the plans due on ``day`` (most are done, some slip), in the import format."""
    with get_engine(database_url).connect() as conn:
        plans = pd.read_sql(select(VisitPlan.id, VisitPlan.household_id, VisitPlan.cadre_id, VisitPlan.urgent)
                            .where(VisitPlan.status == "planned", VisitPlan.due_date == day)
                            .order_by(VisitPlan.id), conn)
    rng = _rng(seed, day, "visits")
    plans = plans[plans.cadre_id.notna()]
    done = plans[(rng.random(len(plans)) < completion) | plans.urgent.astype(bool)]
    n = len(done)
    cue = rng.random(n) < 0.03
    demand = rng.random(n) < 0.25
    hours = rng.integers(9, 17, n)
    rows = pd.DataFrame({
        "visit_id": [f"SV-{day:%Y%m%d}-{i:05d}" for i in range(n)],
        "plan_id": done.id.to_numpy(), "household_id": done.household_id.to_numpy(),
        "cadre_id": done.cadre_id.to_numpy(),
        "visited_at": [f"{day} {h:02d}:{m:02d}" for h, m in zip(hours, rng.integers(0, 60, n))],
        "mode": np.where(rng.random(n) < 0.8, "visit", "phone"),
        "steps": "identify;commit;listen;guide;serve",
        "family_situation": [CUE_NOTES[i % 3] if c else FAMILY_NOTES[i % len(FAMILY_NOTES)]
                             for i, c in zip(rng.integers(0, 99, n), cue)],
        "business_situation": "", "women_situation": "",
        "difficulties": np.where(demand, "有实际需求，已登记", ""),
        "measures": np.where(demand, "已转介服务资源池", ""),
        "demand_category": [DEMANDS[i] if d else "" for i, d in zip(rng.integers(0, len(DEMANDS), n), demand)],
        "follow_up_needed": np.where(cue | demand, "1", "0"),
        "notes": np.where(cue, "需关注，建议调解介入", ""),
    })
    if broken_rows and n:
        bad = rows.head(broken_rows).copy()
        bad["visit_id"] = [f"SV-{day:%Y%m%d}-BAD{i}" for i in range(len(bad))]
        bad["cadre_id"] = "C-UNKNOWN"  # a cadre the registry does not know: quarantined
        bad["visited_at"] = "2099-01-01 10:00"  # and a visit in the future
        rows = pd.concat([rows, bad], ignore_index=True)
    return rows


def write_visit_sheet(rows: pd.DataFrame, inbox: Path, day: date) -> Path | None:
    if rows.empty:
        return None
    folder = inbox / "visits"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"visits-{day}.csv"
    rows.to_csv(path, index=False)
    return path


def acknowledge_alerts(day: date, seed: int, database_url: str | None = None, *, ack_share: float = 0.85) -> dict:
    """Grid workers acknowledge most alerts sent on ``day`` within minutes and record an outcome;
    the rest stay unanswered (and critical ones escalate at the next run)."""
    from sibifang.acknowledge import AckRefused, acknowledge

    start = datetime.combine(day, time.min)
    with session_scope(database_url) as s:
        sent = s.execute(select(Alert.id, Alert.sent_at).where(
            Alert.status == "sent", Alert.acked_at.is_(None), Alert.sent_at >= start - timedelta(days=1),
            Alert.sent_at < start + timedelta(days=1)).order_by(Alert.id)).all()
    rng = _rng(seed, day, "ack")
    acked = 0
    with session_scope(database_url) as s:
        for (aid, sent_at), r, minutes, o in zip(sent, rng.random(len(sent)), rng.integers(3, 28, len(sent)),
                                                 rng.integers(0, len(OUTCOMES), len(sent))):
            if r < ack_share:
                try:
                    acknowledge(aid, actor="simulated-grid-worker", outcome=OUTCOMES[o],
                                at=sent_at + timedelta(minutes=int(minutes)), session=s)
                except AckRefused:      # another alert of its flag closed it first: her page says so
                    continue
                s.flush()
                acked += 1
    return {"alerts_acked": acked, "alerts_unanswered": len(sent) - acked}


def close_cases(day: date, seed: int, database_url: str | None = None, *, min_days: int = 3) -> int:
    """Mediators close some cases after a few days (调解结案), which asks for follow-up visits."""
    from tasks.escalate_disputes import record_case_outcome

    rng = _rng(seed, day, "cases")
    closed = 0
    at = datetime.combine(day, time(16, 0))
    with session_scope(database_url) as s:
        cases = s.scalars(select(MediationCase).where(MediationCase.status == "open",
                                                      MediationCase.opened_at <= at - timedelta(days=min_days))
                          .order_by(MediationCase.id)).all()
        for case, r in zip(cases, rng.random(len(cases))):
            if r < 0.5:
                closed += record_case_outcome(s, case, "调解成功", actor="simulated-mediator", at=at)
    return closed
