"""Escalation (矛盾纠纷化解 / 关爱帮扶): disputes to mediation rooms, needs to the resource pool.

Pure functions over frames: which flags open a mediation case in which room, and which
resource of the pool (服务资源池) a need raised in a visit is matched with.
"""

from __future__ import annotations

import pandas as pd

from sibifang.flag_risks import DEREGISTERED, RECORD_CORRECTED
from sibifang.records import stable_id

DISPUTE_KINDS = ("dispute", "domestic_violence")
CASE_COLUMNS = ["case_id", "household_id", "room_id", "mediator_id", "source_flag_id", "source_visit_id",
                "cues", "flag_ids", "opened_at"]
JOIN_COLUMNS = ["case_id", "flag_id", "kind"]
# A case with no outcome this many days after it was opened is overdue and is followed up.
CASE_DUE_DAYS = 30
# What a mediation room records when it closes a case (调解结果), as the report counts it.
MEDIATION_OUTCOMES = ("调解成功", "调解未成功", "转诉讼", "当事人撤回")
# How mediators write them: the outcome recorded is always one of MEDIATION_OUTCOMES.
_OUTCOME_WORDS = {
    "调解成功": ("调解成功", "成功", "已调解", "达成协议", "和好", "化解"),
    "调解未成功": ("调解未成功", "调解不成功", "未成功", "不成功", "调解失败", "失败", "未达成协议"),
    "转诉讼": ("转诉讼", "诉讼", "起诉", "转司法", "转法院"),
    "当事人撤回": ("当事人撤回", "撤回", "撤销申请", "不需要调解"),
}
# Closings by the system, not by a mediator (the family left the register; the record named the
# wrong family): closed, but not "mediated" in the report.
ADMINISTRATIVE_OUTCOMES = (RECORD_CORRECTED, DEREGISTERED)


class CaseOutcomeError(ValueError):
    """A case outcome that cannot be recorded; the message is the Chinese text for the mediator."""


def mediation_outcome(text: str | None) -> str:
    """The outcome a mediator typed, as one of ``MEDIATION_OUTCOMES``; a clear error otherwise."""
    word = "".join(str(text or "").split())
    for outcome, words in _OUTCOME_WORDS.items():
        if word in words:
            return outcome
    raise CaseOutcomeError(f"调解结果“{text or ''}”无法识别，请填写：{'、'.join(MEDIATION_OUTCOMES)}")


def case_closing(status: str, outcome: str | None, new_outcome: str, case_id: str) -> bool:
    """Whether a case of ``status``/``outcome`` is to be closed with ``new_outcome``: True for an
    open case, False for one closed with that outcome already (a repeat changes nothing), an
    error for one closed otherwise (a recorded outcome stands; a wrong one is corrected by hand
    in the database, with the audit log saying who)."""
    if status != "closed":
        return True
    if outcome == new_outcome:
        return False
    raise CaseOutcomeError(f"调解案件 {case_id} 已结案（{outcome or '未记录结果'}），结果不再更改")


def cases_closed_by_kind(cases: pd.DataFrame) -> tuple[int, int]:
    """(closed by a mediator, closed by the system) among ``cases`` (``status, outcome``)."""
    if cases.empty:
        return 0, 0
    closed = cases.status.eq("closed")
    admin = closed & cases.get("outcome", pd.Series(None, index=cases.index)).isin(ADMINISTRATIVE_OUTCOMES)
    return int((closed & ~admin).sum()), int(admin.sum())


def open_mediation_cases(flags: pd.DataFrame, households: pd.DataFrame, rooms: pd.DataFrame,
                         cases: pd.DataFrame) -> pd.DataFrame:
    """One case per household in dispute, in the mediation room of its township (木兰调解室).

    flags: ``flag_id, household_id, kind, detected_at, details``; households: ``household_id,
    township_id``; rooms: ``room_id, township_id, mediator_ids``; cases: the cases on record,
    ``household_id`` and ``closed_at`` (empty, or no such column: still open).
    A household with a case already open gets no second one: the new finding joins that case
    (``findings_joining_cases``).
    A finding made while a case of its household was open (or before) belongs to that case, and
    opens none after it was closed; one made after it was closed opens a new case.
    """
    f = flags[flags.kind.isin(DISPUTE_KINDS)]
    if f.empty:
        return pd.DataFrame(columns=CASE_COLUMNS)
    # Left out before each household's first flag is chosen: a flag of a case mediated and
    # closed stays open (and first) by design, and would stand for a later finding.
    f = f[~f.flag_id.isin(_covered(f, cases))]
    f = f.sort_values(["household_id", "detected_at", "flag_id"])
    # The first flag of each household, whole (groupby().first() would mix columns of several rows).
    first = f.drop_duplicates("household_id", keep="first")
    cues = f.groupby("household_id")["kind"].apply(lambda s: sorted(set(s))).rename("cues")
    held = f.groupby("household_id")["flag_id"].apply(sorted).rename("flag_ids")
    first = (first.merge(cues, on="household_id").merge(held, on="household_id")
             .merge(households[["household_id", "township_id"]], on="household_id", how="left"))
    room_by_township = {r.township_id: r for r in rooms.itertuples(index=False)}
    rows = []
    for r in first.itertuples(index=False):
        room = room_by_township.get(r.township_id)
        mediators = list(room.mediator_ids) if room is not None and room.mediator_ids else []
        # Spread cases over the room's mediators, stably (the same household, the same mediator).
        mediator = mediators[int(stable_id("", r.household_id)[1:9], 16) % len(mediators)] if mediators else None
        details = r.details if isinstance(r.details, dict) else {}
        rows.append({"case_id": stable_id("C", r.household_id, r.flag_id), "household_id": r.household_id,
                     "room_id": room.room_id if room is not None else None, "mediator_id": mediator,
                     "source_flag_id": r.flag_id, "source_visit_id": details.get("visit_id"),
                     "cues": list(r.cues), "flag_ids": list(r.flag_ids), "opened_at": r.detected_at})
    return pd.DataFrame(rows, columns=CASE_COLUMNS)


def overdue_cases(cases: pd.DataFrame, until, due_days: int = CASE_DUE_DAYS) -> list[str]:
    """The open cases (``case_id, opened_at, status``) with no outcome ``due_days`` after they were
    opened, as of ``until``: sorted case ids."""
    if cases.empty:
        return []
    due = pd.to_datetime(cases.opened_at) + pd.Timedelta(days=due_days)
    late = cases[cases.status.eq("open") & (due <= pd.Timestamp(until))]
    return sorted(late.case_id)


def held_flags(flag_ids, source_flag_id: str | None) -> list[str]:
    """The findings a case holds: its ``flag_ids``, or, for a case recorded before they were
    kept (migration 0009), the one it was opened with."""
    return list(flag_ids) if isinstance(flag_ids, list) else [source_flag_id]


def findings_joining_cases(flags: pd.DataFrame, cases: pd.DataFrame) -> pd.DataFrame:
    """The dispute findings that join a case already open for their household.

    flags: ``flag_id, household_id, kind, detected_at``; cases: the cases on record, ``case_id,
    household_id, source_flag_id, flag_ids, closed_at`` (NaT: open). ``flag_ids`` are the
    findings a case holds (empty for a case recorded before they were kept: it holds its source
    flag). Returns ``case_id, flag_id, kind``, one row per finding not yet held and not left
    with a case closed since: the caller adds it to the open case and its kind to the case's
    cues, so a mediator handling a quarrel learns of the violence found since.
    """
    f = flags[flags.kind.isin(DISPUTE_KINDS)]
    open_cases = cases[pd.to_datetime(cases.closed_at).isna()] if not cases.empty else cases
    if f.empty or open_cases.empty:
        return pd.DataFrame(columns=JOIN_COLUMNS)
    f = f[~f.flag_id.isin(_covered(f, cases[pd.to_datetime(cases.closed_at).notna()]))]
    held = {(c.case_id, fid) for c in open_cases.itertuples(index=False)
            for fid in held_flags(c.flag_ids, c.source_flag_id)}
    j = f.merge(open_cases[["case_id", "household_id"]], on="household_id")
    j = j[[(c, fid) not in held for c, fid in zip(j.case_id, j.flag_id)]]
    return j.sort_values(["case_id", "flag_id"])[JOIN_COLUMNS].reset_index(drop=True)


def cases_on_corrected_records(cases: pd.DataFrame, flags: pd.DataFrame) -> pd.DataFrame:
    """Open cases that rest on no finding any more: every flag they hold was closed because its
    visit record was corrected to another family (``record_corrected``, ``flag_risks``). Such a
    case was opened for the wrong family and is closed with that outcome, when its last flag
    was; the right family's finding opens a case of its own.

    cases: ``case_id, source_flag_id, flag_ids, closed_at`` (NaT: open); flags: ``flag_id,
    status, outcome, closed_at``. Returns ``case_id, closed_at``."""
    cols = ["case_id", "closed_at"]
    if cases.empty or flags.empty:
        return pd.DataFrame(columns=cols)
    corrected = flags[(flags.status == "closed") & (flags.outcome == RECORD_CORRECTED)]
    when = dict(zip(corrected.flag_id, pd.to_datetime(corrected.closed_at)))
    out = []
    for c in cases[pd.to_datetime(cases.closed_at).isna()].itertuples(index=False):
        held = held_flags(c.flag_ids, c.source_flag_id)
        if held and all(f in when for f in held):
            out.append({"case_id": c.case_id, "closed_at": max(when[f] for f in held)})
    return pd.DataFrame(out, columns=cols)


def _covered(flags: pd.DataFrame, cases: pd.DataFrame) -> set:
    """The flags that belong to a case on record: every flag of a household with an open case,
    and those found before its closed case was closed (``outcome``, when given: not one closed
    as ``record_corrected``)."""
    if "outcome" in cases:
        # a case closed as the wrong family's (cases_on_corrected_records) was never mediated: it
        # holds no finding of a record corrected back to that family
        cases = cases[cases.outcome.ne(RECORD_CORRECTED)]
    if cases.empty:
        return set()
    until = (pd.to_datetime(cases["closed_at"]) if "closed_at" in cases
             else pd.Series(pd.NaT, index=cases.index, dtype="datetime64[ns]"))
    covered = flags[["flag_id", "household_id", "detected_at"]].merge(
        pd.DataFrame({"household_id": cases.household_id, "until": until}), on="household_id")
    covered = covered[covered.until.isna() | (pd.to_datetime(covered.detected_at) <= covered.until)]
    return set(covered.flag_id)


def match_needs(needs: pd.DataFrame, resources: pd.DataFrame, areas: pd.DataFrame) -> pd.DataFrame:
    """Match each open need with a resource offering its category: same village first, then the
    same township, then anywhere in the district (跨站点匹配). Returns ``need_id, resource_id``.

    needs: ``need_id, village_id, category``; resources: ``resource_id, village_id, offers``;
    areas: ``village_id, township_id, district_id``. Load is spread: the least-used resource wins.
    """
    if needs.empty or resources.empty:
        return pd.DataFrame(columns=["need_id", "resource_id"])
    res = resources.merge(areas, on="village_id", how="left").explode("offers").rename(columns={"offers": "category"})
    nd = needs.merge(areas, on="village_id", how="left")
    load: dict[str, int] = {}
    out = []
    for n in nd.sort_values("need_id").itertuples(index=False):
        cands = res[res.category == n.category]
        for level in ("village_id", "township_id", "district_id"):
            pool = cands[cands[level] == getattr(n, level)]
            if not pool.empty:
                ids = sorted(pool.resource_id.unique(), key=lambda rid: (load.get(rid, 0), rid))
                load[ids[0]] = load.get(ids[0], 0) + 1
                out.append({"need_id": n.need_id, "resource_id": ids[0]})
                break
    return pd.DataFrame(out, columns=["need_id", "resource_id"])


def needs_from_visits(visits: pd.DataFrame, households: pd.DataFrame) -> pd.DataFrame:
    """Demands raised in visits (诉求) become needs of the service pool, one per visit and category."""
    v = visits[visits.demand_category.notna() & (visits.demand_category != "")]
    if v.empty:
        return pd.DataFrame(columns=["need_id", "household_id", "village_id", "category", "source_visit_id",
                                     "created_at"])
    v = v.merge(households[["household_id", "village_id"]], on="household_id", how="left")
    return pd.DataFrame({
        "need_id": [stable_id("N", vid, c) for vid, c in zip(v.visit_id, v.demand_category)],
        "household_id": v.household_id, "village_id": v.village_id, "category": v.demand_category,
        "source_visit_id": v.visit_id, "created_at": pd.to_datetime(v.visited_at),
    })
