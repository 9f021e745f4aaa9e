"""Episodes after a flag was answered: a visit finding made after a closing is a new flag, while
meter episodes keep their re-arm gap (``MERGE_GAP``)."""

from __future__ import annotations

from datetime import date, datetime

import pandas as pd
from sqlalchemy import delete, select

from schemas.models import RiskFlag
from sibifang.db import session_scope
from sibifang.flag_risks import FLAG_COLUMNS, Lexicon, drop_settled_episodes, visit_cue_flags
from tests.test_outbox import outbox_db  # noqa: F401  (fixture)

T = pd.Timestamp


def _visit(vid: str, hid: str, when: str, notes: str) -> pd.DataFrame:
    return visit_cue_flags(pd.DataFrame([{"visit_id": vid, "household_id": hid, "visited_at": when, "notes": notes}]),
                           Lexicon.load())


def _settled(kind: str, start: str, end: str | None, closed_at: str, key: str = "k-old") -> pd.DataFrame:
    return pd.DataFrame([{"dedup_key": key, "household_id": "H1", "kind": kind, "start": T(start),
                          "end": T(end) if end else pd.NaT, "closed_at": T(closed_at), "acked_at": pd.NaT}])


def _meter(start: str, end: str) -> pd.DataFrame:
    key = f"meter|M1|inactivity|{start}"
    return pd.DataFrame([{"flag_id": "FX", "dedup_key": key, "household_id": "H1", "meter_id": "M1",
                          "kind": "inactivity", "severity": "high", "score": 1.0, "start": T(start),
                          "detected_at": T(end), "end": T(end), "evidence": "e", "details": {}}], columns=FLAG_COLUMNS)


def test_a_visit_finding_made_after_the_closing_is_kept():
    settled = _settled("domestic_violence", "2026-11-18 10:00", None, "2026-11-20 09:00")
    after = _visit("V3", "H1", "2026-11-20 15:00", "丈夫又动手打人")
    assert list(drop_settled_episodes(after, settled).dedup_key) == list(after.dedup_key)


def test_a_visit_finding_made_before_the_closing_belongs_to_the_answered_flag():
    # the grid worker went to the door after this visit and found all well: it is not asked again
    settled = _settled("domestic_violence", "2026-11-18 10:00", None, "2026-11-20 09:00")
    before = _visit("V2", "H1", "2026-11-19 16:00", "又被家暴")
    assert drop_settled_episodes(before, settled).empty


def test_a_meter_episode_right_after_a_closed_flag_still_joins_it():
    # a detector that split one silence in two must not knock on the door twice
    settled = _settled("inactivity", "2026-11-19 20:00", "2026-11-20 08:00", "2026-11-20 09:00")
    assert drop_settled_episodes(_meter("2026-11-20 18:00", "2026-11-20 22:00"), settled).empty
    assert len(drop_settled_episodes(_meter("2026-11-21 09:00", "2026-11-21 12:00"), settled)) == 1


def _flags(url: str, hid: str) -> list[tuple]:
    with session_scope(url) as s:
        return [(f.dedup_key, f.status, f.outcome) for f in
                s.scalars(select(RiskFlag).where(RiskFlag.household_id == hid).order_by(RiskFlag.start))]


def test_a_danger_found_hours_after_an_all_well_answer_is_a_new_flag(outbox_db):  # noqa: F811
    from tasks.flag_risks import store_flags

    with session_scope(outbox_db) as s:
        s.execute(delete(RiskFlag))
    first = _visit("V1", "H001", "2026-11-18 10:00", "丈夫家暴")
    store_flags.fn(first, date(2026, 11, 18), outbox_db)
    with session_scope(outbox_db) as s:  # answered 已上门，一切正常 at 9:00 on the 20th
        s.execute(RiskFlag.__table__.update().values(status="closed", outcome="visited_all_well",
                                                     closed_at=datetime(2026, 11, 20, 9)))
    later = _visit("V3", "H001", "2026-11-20 15:00", "丈夫又动手打人，脸上有伤")
    store_flags.fn(pd.concat([first, later], ignore_index=True), date(2026, 11, 20), outbox_db)
    assert _flags(outbox_db, "H001") == [("visit|V1|domestic_violence", "closed", "visited_all_well"),
                                         ("visit|V3|domestic_violence", "open", None)]
    # and the day's re-run raises nothing more
    store_flags.fn(pd.concat([first, later], ignore_index=True), date(2026, 11, 20), outbox_db)
    assert len(_flags(outbox_db, "H001")) == 2
