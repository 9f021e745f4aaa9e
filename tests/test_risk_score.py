"""Part 3 of the risk score: difficulties recorded again and again without a measure and overdue
must-visits feed each household's score, level (红/橙/黄/绿) and reasons, gravest first."""

from __future__ import annotations

from datetime import date, datetime

import pandas as pd
from sqlalchemy import delete, select

from schemas.models import Household, RiskFlag, Visit, VisitPlan
from sibifang.db import session_scope
from sibifang.flag_risks import score_households
from tests.test_outbox import outbox_db  # noqa: F401  (fixture)


def test_a_reason_weighs_what_its_own_households_flag_weighs():
    """Two families due the same day are overdue by the same days: the same sentence. An urgent
    plan of one family must not make the other's plain overdue visit outrank its difficulty."""
    hh = pd.DataFrame({"household_id": ["A", "B"], "grid_id": ["G", "G"], "categories": [[], []]})
    overdue, difficulty = "应于11月01日走访，已逾期11天", "近90天内2次走访反映困难，尚无解决措施"
    flags = pd.DataFrame([{"household_id": "A", "severity": "high", "evidence": overdue},
                          {"household_id": "B", "severity": "low", "evidence": overdue},
                          {"household_id": "B", "severity": "medium", "evidence": difficulty}])
    s = score_households(hh, flags).set_index("household_id")
    assert s.loc["B", "risk_reasons"] == [difficulty, overdue]
    assert s.loc["A", "risk_reasons"] == [overdue]


def test_reasons_of_equal_weight_come_in_the_same_order_whatever_order_the_flags_are_read_in():
    hh = pd.DataFrame({"household_id": ["A"], "grid_id": ["G"], "categories": [[]]})
    flags = pd.DataFrame([{"household_id": "A", "severity": "high", "evidence": e}
                          for e in ("走访记录中出现“赌博”等情况", "应于11月01日走访，已逾期11天",
                                    "走访记录中出现“离婚”等情况")])
    first = score_households(hh, flags).risk_reasons.iloc[0]
    assert score_households(hh, flags.iloc[::-1]).risk_reasons.iloc[0] == first


def _level(url: str, hid: str) -> tuple:
    with session_scope(url) as s:
        h = s.get(Household, hid)
        return h.risk_level, h.risk_score, h.risk_reasons


def _run(url: str, day: date) -> None:
    from tasks.flag_risks import derive_flags, store_flags

    store_flags.fn(derive_flags.fn(pd.DataFrame(), day, url), day, url)


def test_difficulties_and_overdue_visits_feed_the_level_and_a_measure_stops_the_count(outbox_db):  # noqa: F811
    url = outbox_db
    with session_scope(url) as s:
        s.execute(delete(RiskFlag))
        s.add_all([
            Visit(id="V1", household_id="H001", cadre_id="GW1", visited_at=datetime(2026, 11, 1, 10), mode="visit",
                  difficulties="生活困难", measures="无"),
            Visit(id="V2", household_id="H001", cadre_id="GW1", visited_at=datetime(2026, 11, 10, 10), mode="visit",
                  difficulties="生活困难，看病难", measures="暂无。"),
            VisitPlan(id="P1", household_id="H003", cadre_id="GW1", grid_id="G1", due_date=date(2026, 11, 1),
                      window_end=date(2026, 11, 5), reason="empty_nest", urgent=True, status="planned",
                      planned_on=date(2026, 10, 1)),
        ])
    _run(url, date(2026, 11, 12))
    assert _level(url, "H001") == ("黄", 20.0, ["近90天内2次走访反映困难，尚无解决措施"])
    assert _level(url, "H003") == ("橙", 35.0, ["应于11月01日走访，已逾期11天"])
    # a third visit still without a measure, and days pass with the plan still not done: the
    # reasons a grid worker reads say so, not what they said when the flags were first raised
    with session_scope(url) as s:
        s.add(Visit(id="V3", household_id="H001", cadre_id="GW1", visited_at=datetime(2026, 11, 20, 10),
                    mode="visit", difficulties="生活困难"))
    _run(url, date(2026, 11, 21))
    assert _level(url, "H001") == ("黄", 20.0, ["近90天内3次走访反映困难，尚无解决措施"])
    assert _level(url, "H003") == ("橙", 35.0, ["应于11月01日走访，已逾期20天"])
    # a measure recorded: the difficulty no longer counts
    with session_scope(url) as s:
        s.add(Visit(id="V4", household_id="H001", cadre_id="GW1", visited_at=datetime(2026, 11, 22, 10),
                    mode="visit", difficulties="生活困难", measures="已申请临时救助"))
    _run(url, date(2026, 11, 23))
    assert _level(url, "H001") == ("绿", 0.0, [])
    with session_scope(url) as s:
        assert [(f.kind, f.status, f.outcome) for f in s.scalars(select(RiskFlag).where(
            RiskFlag.household_id == "H001"))] == [("unresolved_difficulty", "closed", "measure_recorded")]
