"""Tasks of the risk-flagging stage: detect over a partition of meters, read visits, store flags."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import case, delete, func, or_, select, update

from sibifang.db import read_frame
from sibifang.records import chunks

from tasks.common import run_logger



@task(name="detect_meter_episodes", cache_policy=NO_CACHE)
def detect_meter_episodes(as_of: datetime, database_url: str | None = None, baseline_days: int = 35) -> pd.DataFrame:
    """Run the meter detectors over every metered household's readings up to ``as_of``: the
    day's replay up to midnight once, then the hours since from its checkpoint
    (``sibifang.profile_cache.judge_meters``)."""
    from schemas.models import Household, Meter
    from sibifang.profile_cache import ProfileCache, judge_meters
    from sibifang.readings_store import ReadingStore
    from sibifang.settings import get_settings

    data_dir = Path(get_settings().data_dir)
    away = read_frame(select(Meter.id.label("meter_id"), Household.away_from.label("start"),
                             Household.away_until.label("end"))
                      .join(Household, Household.id == Meter.household_id)
                      .where(Household.away_from.is_not(None)), database_url)
    episodes, info = judge_meters(ReadingStore(data_dir / "readings"), ProfileCache(data_dir / "profiles"),
                                  pd.Timestamp(as_of), away, get_settings().detector_config(), baseline_days)
    if info["fitted"]:
        run_logger().info("replayed %d meter-hours of %d meters up to %s: routine profiles and checkpoint kept",
                          info["replayed_meter_hours"], info["fitted_meters"], info["midnight"])
    run_logger().info("judged %d meters up to %s: %d episodes", info["meters"], info["end"], len(episodes))
    return episodes


@task(name="derive_flags", cache_policy=NO_CACHE)
def derive_flags(episodes: pd.DataFrame, as_of: date, database_url: str | None = None,
                 lookback_days: int = 30) -> pd.DataFrame:
    """Meter episodes, visit cues, unresolved difficulties and overdue visits → candidate flags."""
    from schemas.models import Household, Meter, Visit, VisitPlan
    from sibifang import flag_risks as logic

    meters = read_frame(select(Meter.id.label("meter_id"), Meter.household_id), database_url)
    midnight = datetime.combine(as_of, datetime.min.time())
    since, day_end = midnight - timedelta(days=lookback_days * 3), midnight + timedelta(days=1)
    window = midnight - timedelta(days=lookback_days)
    # A sheet typed in weeks after the visit (county offices batch paper sheets) is read when it
    # is recorded, not only by its visit date; a replay of a past day reads what was recorded by then
    # (a sheet typed in after it is not read at all, not read as a hand-over's history, which alone
    # has no recorded_at).
    late = (Visit.recorded_at >= window) & (Visit.recorded_at < day_end)
    visits = read_frame(select(Visit.id.label("visit_id"), Visit.household_id, Visit.visited_at, Visit.notes,
                               Visit.family_situation, Visit.business_situation, Visit.women_situation,
                               Visit.difficulties, Visit.measures, Visit.recorded_at)
                        .where(or_(Visit.visited_at >= since, late), Visit.visited_at < day_end,
                               or_(Visit.recorded_at.is_(None), Visit.recorded_at < day_end)), database_url)
    plans = read_frame(select(VisitPlan).where(VisitPlan.status == "planned", VisitPlan.due_date < as_of), database_url)
    if not visits.empty:
        in_window = (pd.to_datetime(visits.visited_at) >= pd.Timestamp(window)) | (
            pd.to_datetime(visits.recorded_at) >= pd.Timestamp(window))
        recent = visits[in_window]
    else:
        recent = visits
    parts = [
        logic.episodes_to_flags(episodes, meters) if not episodes.empty else None,
        logic.visit_cue_flags(recent, logic.Lexicon.load()) if not recent.empty else None,
        logic.unresolved_difficulty_flags(visits, as_of) if not visits.empty else None,
        logic.overdue_visit_flags(plans, as_of) if not plans.empty else None,
    ]
    parts = [p for p in parts if p is not None and not p.empty]
    if not parts:
        return pd.DataFrame(columns=logic.FLAG_COLUMNS)
    # One flag per episode: a detector that reports the same episode twice (same meter, kind and
    # start hour) yields one candidate, the first detected.
    flags = (pd.concat(parts, ignore_index=True).sort_values(["dedup_key", "detected_at"])
             .drop_duplicates("dedup_key", keep="first").reset_index(drop=True))
    # Nothing is raised for a family once it is off the register (迁出, 去世): by the dates, so a
    # replay of a day before its removal raises what that day raised. Off from the removal's day,
    # as the planner (on_register) and the closing of its open flags (by the day's end) read it:
    # a removal at 15:00 leaves no flag of that morning's episode open until the next day's run.
    off = read_frame(select(Household.id, Household.deregistered_at).where(Household.deregistered_at.is_not(None)),
                     database_url)
    off_since = flags.household_id.map(dict(zip(off.id, pd.to_datetime(off.deregistered_at).dt.normalize())))
    return flags[~(pd.to_datetime(off_since) <= pd.to_datetime(flags.detected_at))].reset_index(drop=True)


@task(name="store_flags", cache_policy=NO_CACHE)
def store_flags(candidates: pd.DataFrame, as_of: date, database_url: str | None = None) -> dict:
    """Raise each episode once, extend continuing ones, and refresh levels and the risk map."""
    from schemas.models import Alert, Household, RiskFlag, RiskMapSnapshot, Visit
    from sibifang import flag_risks as logic
    from sibifang.db import audit, session_scope, upsert
    from sibifang.records import frame_records

    acked_at = (select(func.min(Alert.acked_at)).where(Alert.flag_id == RiskFlag.id)
                .correlate(RiskFlag).scalar_subquery())
    # (when an acknowledged flag was answered: a finding after it is a new flag, merge_with_open_flags)
    answered_at = case((RiskFlag.status == "acknowledged", acked_at), else_=None)
    open_flags = read_frame(select(RiskFlag.id.label("flag_id"), RiskFlag.dedup_key, RiskFlag.household_id,
                                   RiskFlag.meter_id, RiskFlag.kind, RiskFlag.severity, RiskFlag.evidence,
                                   RiskFlag.start, RiskFlag.end, answered_at.label("acked_at"))
                            .where(RiskFlag.status != "closed"), database_url)
    later_day = read_frame(select(RiskMapSnapshot.as_of).where(RiskMapSnapshot.as_of > as_of).limit(1), database_url)
    corrected = pd.DataFrame(columns=["flag_id", "outcome"])
    # Episodes already on record (open or closed) are not raised again.
    if len(candidates):
        record = select(RiskFlag.id.label("flag_id"), RiskFlag.dedup_key, RiskFlag.household_id, RiskFlag.status,
                        RiskFlag.outcome)
        on_record = pd.concat([read_frame(record.where(RiskFlag.dedup_key.in_(keys)), database_url)
                               for keys in chunks(list(candidates.dedup_key), 500)], ignore_index=True)
        # A flag closed because its family left the register, the family back on it (在册 again):
        # withdrawn as a corrected record's is, its episode still going on is flagged again.
        back = on_record.outcome.eq(logic.DEREGISTERED)
        if back.any():
            off = set(read_frame(select(Household.id).where(
                Household.deregistered_at.is_not(None), Household.id.in_(sorted(set(on_record.household_id[back])))),
                database_url).id)
            on_record.loc[back & ~on_record.household_id.isin(off), "outcome"] = logic.RECORD_CORRECTED
        # the flags the corrections of a corrected record were stored under (few: one per correction)
        moved = [read_frame(record.where(or_(*[RiskFlag.dedup_key.startswith(k + "|", autoescape=True)
                                               for k in keys])), database_url)
                 for keys in chunks(logic.corrections_to_read(candidates, on_record), 50)]
        on_record = pd.concat([on_record, *moved], ignore_index=True)
        candidates, corrected = logic.rekey_corrected_records(candidates, on_record)
        seen = set()
        for keys in chunks(list(candidates.dedup_key), 500):
            seen |= set(read_frame(select(RiskFlag.dedup_key).where(RiskFlag.dedup_key.in_(keys)),
                                   database_url).dedup_key)
        fresh = candidates[~candidates.dedup_key.isin(seen) | candidates.dedup_key.isin(set(open_flags.dedup_key))]
        settled = read_frame(select(RiskFlag.dedup_key, RiskFlag.household_id, RiskFlag.kind, RiskFlag.start,
                                    RiskFlag.end, RiskFlag.closed_at, acked_at.label("acked_at"))
                             .where(RiskFlag.status != "open", RiskFlag.kind.not_in(logic.RECORD_KINDS),
                                    # a flag withdrawn with its record, or with its family's removal, settled nothing
                                    or_(RiskFlag.outcome.is_(None), RiskFlag.outcome.not_in(logic.WITHDRAWN)),
                                    RiskFlag.detected_at >= as_of - timedelta(days=40)), database_url)
        fresh = logic.drop_settled_episodes(fresh, settled)
        difficult = fresh[fresh.kind == "unresolved_difficulty"]
        if len(difficult):
            # (with their outcomes: one withdrawn, not answered, answered nothing)
            closed = pd.concat([read_frame(select(RiskFlag.household_id, RiskFlag.closed_at, RiskFlag.outcome).where(
                RiskFlag.kind == "unresolved_difficulty", RiskFlag.status == "closed",
                RiskFlag.household_id.in_(part), RiskFlag.closed_at >= min(difficult.detected_at)), database_url)
                for part in chunks(sorted(set(difficult.household_id)), 500)], ignore_index=True)
            removed = sorted(set(closed.household_id[closed.outcome.eq(logic.DEREGISTERED)]))
            still_off = set(read_frame(select(Household.id).where(Household.deregistered_at.is_not(None),
                                                                  Household.id.in_(removed)), database_url).id) \
                if removed else set()
            fresh = logic.drop_answered_difficulties(fresh, closed, still_off)
    else:
        fresh = candidates
    inserts, extends = logic.merge_with_open_flags(fresh, open_flags)
    now = datetime.combine(as_of, datetime.max.time()).replace(microsecond=0)
    # Flags the records settle close by the latest day only: a replayed earlier day saw them open.
    settled_now = pd.DataFrame(columns=["flag_id", "outcome"])
    if later_day.empty and len(open_flags):
        away = read_frame(select(Household.id.label("household_id"), Household.away_from.label("start"),
                                 Household.away_until.label("end")).where(Household.away_from.is_not(None)),
                          database_url)
        # the latest visit of the families with an overdue-visit flag open (not of every family)
        waiting = sorted(set(open_flags.household_id[open_flags.kind == "overdue_visit"]))
        visited = [read_frame(select(Visit.household_id, func.max(Visit.visited_at).label("last"))
                              .where(Visit.household_id.in_(part)).group_by(Visit.household_id), database_url)
                   for part in chunks(waiting, 500)]
        visited = pd.concat(visited, ignore_index=True) if visited else pd.DataFrame(columns=["household_id", "last"])
        last_visit = pd.Series(pd.to_datetime(visited["last"]).to_numpy(), index=visited["household_id"])
        settled_now = logic.flags_settled_by_records(open_flags, candidates, away, last_visit)
        # A family taken off the register by the day's end: nobody is to answer its open flags.
        # Closed, their alerts still queued are cancelled by the outbox like any closed flag's.
        off = read_frame(select(Household.id).where(Household.deregistered_at <= now), database_url)
        gone = open_flags.flag_id[open_flags.household_id.isin(set(off.id))
                                  & ~open_flags.flag_id.isin(set(settled_now.flag_id))]
        if len(gone):
            settled_now = pd.concat([settled_now, pd.DataFrame({"flag_id": gone, "outcome": logic.DEREGISTERED})],
                                    ignore_index=True)
    if later_day.empty and len(corrected):  # (a replayed earlier day saw them as they were)
        settled_now = pd.concat([settled_now, corrected], ignore_index=True)
    # the counts in the reasons of the flags raised from the records (times, days overdue) as of
    # today, by the latest day only
    reworded = logic.refresh_record_flags(candidates, open_flags) if later_day.empty else None
    with session_scope(database_url) as s:
        rows = []
        # An episode that was over more than a day before this run (a first run over weeks of
        # history, a feed that arrives late) is recorded, closed, and alerts nobody: the door
        # knock it would ask for is no longer useful. Ongoing ones are raised whatever their age.
        stale_before = datetime.combine(as_of, datetime.min.time()) - timedelta(days=1)
        for r in frame_records(inserts):
            ended_long_ago = r["meter_id"] is not None and r["end"] is not None and r["end"] < stale_before
            rows.append({"id": r["flag_id"], "dedup_key": r["dedup_key"], "household_id": r["household_id"],
                         "meter_id": r["meter_id"], "kind": r["kind"], "severity": r["severity"],
                         "score": float(r["score"]), "start": r["start"], "detected_at": r["detected_at"],
                         "end": r["end"], "evidence": r["evidence"], "details": r["details"],
                         "status": "closed" if ended_long_ago else "open",
                         "outcome": "ended_before_run" if ended_long_ago else None,
                         "closed_at": now if ended_long_ago else None})
        # Only episodes not on record are raised: ``seen`` was read before this transaction, and a
        # run alongside (or a retry) may have stored some since. Those are neither raised nor counted.
        stored = set()
        for keys in chunks([r["dedup_key"] for r in rows], 500):
            stored |= set(s.scalars(select(RiskFlag.dedup_key).where(RiskFlag.dedup_key.in_(keys))))
        rows = [r for r in rows if r["dedup_key"] not in stored]
        upsert(s, RiskFlag, rows, key=["dedup_key"], update=())
        for e in frame_records(extends):
            s.execute(update(RiskFlag).where(RiskFlag.id == e["flag_id"]).values(end=e["end"]))
        for r in frame_records(reworded) if reworded is not None else ():
            s.execute(update(RiskFlag).where(RiskFlag.id == r["flag_id"], RiskFlag.status != "closed")
                      .values(evidence=r["evidence"], score=r["score"], details=r["details"]))
        if rows:  # a re-run raises nothing and records nothing
            audit(s, "flag_risks", "raise_flags", "risk_flag", None, {"count": len(rows)}, at=now)
        # (a re-run finds them closed: nothing more)
        for outcome, ids in settled_now.groupby("outcome")["flag_id"]:
            s.execute(update(RiskFlag).where(RiskFlag.id.in_(list(ids)), RiskFlag.status != "closed")
                      .values(status="closed", outcome=outcome, closed_at=now))
        if len(settled_now):
            audit(s, "flag_risks", "close_settled_flags", "risk_flag", None,
                  settled_now.groupby("outcome").size().to_dict(), at=now)
    # The map covers the families on the register at the day's end (not those gone by then, nor
    # those registered since: a replayed day maps what that day saw, as its report counts it).
    hh = read_frame(select(Household.id.label("household_id"), Household.grid_id, Household.categories,
                           Household.risk_level.label("old_level"), Household.risk_score.label("old_score"),
                           Household.risk_reasons.label("old_reasons"))
                    .where(or_(Household.deregistered_at.is_(None), Household.deregistered_at > now),
                           or_(Household.registered_at.is_(None), Household.registered_at <= now)),
                    database_url)
    # Scored as of the day's end: a replayed day gets the flags open then, not the ones raised or
    # closed since, so its risk map (and the report built on it) is what that day saw.
    still_open = read_frame(select(RiskFlag.household_id, RiskFlag.severity, RiskFlag.evidence)
                            .where(RiskFlag.detected_at <= now,
                                   or_(RiskFlag.status != "closed", RiskFlag.closed_at > now)), database_url)
    scored = logic.score_households(hh, still_open)
    prev_day = read_frame(select(RiskMapSnapshot.as_of).where(RiskMapSnapshot.as_of < as_of)
                          .order_by(RiskMapSnapshot.as_of.desc()).limit(1), database_url)
    previous = None
    if not prev_day.empty:
        previous = read_frame(select(RiskMapSnapshot).where(RiskMapSnapshot.as_of == prev_day.as_of.iloc[0]),
                              database_url)
    rmap = logic.risk_map(scored, as_of, previous)
    with session_scope(database_url) as s:
        # Only households whose level or score moved are written, and only by the latest day: the
        # household's level is its current one, which a replay of an earlier day must not set back.
        prev = hh.set_index("household_id")
        old = prev.loc[scored.household_id]
        moved = (scored.risk_level.to_numpy() != old["old_level"].to_numpy()) | (
            scored.risk_score.to_numpy() != old["old_score"].fillna(-1).to_numpy()) | (
            # the same score for other reasons (one flag closed, another opened) is news too
            np.array([list(a) != list(b) if isinstance(b, list) else True
                      for a, b in zip(scored.risk_reasons, old["old_reasons"])], dtype=bool))
        changed = scored[moved] if later_day.empty else scored.iloc[:0]
        for chunk_start in range(0, len(changed), 2000):
            chunk = changed.iloc[chunk_start:chunk_start + 2000]
            s.execute(update(Household), [
                {"id": h, "risk_level": lvl, "risk_score": float(sc), "risk_reasons": rs}
                for h, lvl, sc, rs in zip(chunk.household_id, chunk.risk_level, chunk.risk_score, chunk.risk_reasons)])
        # The day's map whole: a level that emptied since an earlier run of the same day must not
        # keep that run's count
        s.execute(delete(RiskMapSnapshot).where(RiskMapSnapshot.as_of == as_of))
        upsert(s, RiskMapSnapshot, frame_records(rmap[["as_of", "grid_id", "level", "households"]]),
               key=["as_of", "grid_id", "level"])
    levels = scored.risk_level.value_counts().to_dict()
    # the map's change since its last run, county-wide (per grid it reads from the two days' rows)
    change = {lvl: int(n) for lvl, n in rmap.groupby("level")["change"].sum().items() if n}
    if change:
        run_logger().info("risk map since its last run: %s",
                          "，".join(f"{lvl}{change[lvl]:+d}户" for lvl, _ in logic.LEVELS if lvl in change))
    return {"new_flags": sum(r["status"] == "open" for r in rows),
            "recorded_past_episodes": sum(r["status"] == "closed" for r in rows),
            "extended": len(extends), "levels": levels, "map_change": change}
