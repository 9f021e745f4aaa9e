"""Visit scheduling (走访排期) for the four must-visits, and visit coverage (走访覆盖率).

Pure logic on DataFrames: the caller loads the registry, last visits and open plans from the
database and writes ``SchedulePlan.plans`` back with an upsert keyed on ``visit_id``.

How a plan is made (all dates are local calendar dates; day 0 = ``as_of``):

1. Every family gets a cadence (间隔天数) from ``cadence.toml``: the shortest interval among the
   rules it matches (open dispute / red risk 7 d, hardship and left-behind 14 d, empty-nest 14 d
   or 7 d when flagged, entrepreneur 30 d, any must-visit category at most 90 d). Ordinary
   families (no category, no open dispute, not red) get no routine visits.
2. Families are assigned to cadres (联系干部): the current cadre is kept when she still covers the
   family's grid and has room (continuity before balance); the rest go, most urgent first, to
   the least-loaded cadre of the grid with spare capacity. What cannot be placed is reported in
   ``shortfall``, never dropped.
3. Routine visits are chained from the last visit: each one is due no later than the previous
   one plus the interval, on the latest day the assigned cadre can visit (a working day of the
   official calendar incl. 调休, not on leave, and for "4+1" cadres only their grassroots
   weekday) and that still has room under the daily cap (``[capacity]
   max_visits_per_cadre_per_day``, 4 by default: volunteers cannot do 20 visits in a day).
   Overdue and never-visited families are visited within ``overdue_within_days``, on the
   earliest day with room, the most overdue first. When several visits want the last places of
   a day, the one whose window closes first wins (a family due today before an overdue one
   that can still go tomorrow), then the most overdue, then the shortest cadence. When the
   cadre has no day with room in the window a colleague of the same grid with room takes that
   visit (``moved``, reason: leave, 4+1 weekday, or her days full); when nobody can, the visit
   slips to the cadre's first day with room after the window and the family is listed in
   ``shortfall`` (the daily-cap reason when the cap caused it), never dropped. A window without
   any official working day (the Spring Festival week) lets the visit slip to the first working
   day after it.
4. Urgent requests (new risk flag or alert) are due within 24 h (critical) or 72 h, ignoring
   the calendar and the daily cap (safety first), preferably by the assigned cadre, else by a
   grid worker or village chair of the grid. They are planned before the other visits and count
   toward their cadre-day, so routine visits make room around them. Follow-ups (e.g. 7 and 30
   days after a mediation case closed) go to the first day with room within
   ``follow_up_within_days`` of their due date, before the routine visits (fixed dates first).
5. Open plans (already planned, not done) due within the horizon, or up to a month past it, are
   kept with their id, date and, where still possible, their cadre; routine visits continue
   after the latest of them. A plan is open until its window closes (or its due day, if later):
   one past its due day whose window is still open stands as it is, with whoever holds it, and
   the family is not planned again. A routine plan is the visit of the cadence step whose window
   it was given: one of the step's reason whose window opened by the step's deadline is that
   step's visit even when it slipped past its window (an overdue window moves on with each
   day: on the next day a colleague with room in it must not get a second visit; the family
   stays in ``shortfall`` while the visit is late). Kept plans count toward the load of their day
   (never moved for the cap: they are already announced), one past its due day toward its
   holder's first day with room left in its window; a plan goes back to the family's cadre only
   if her day has room. Overdue routine open plans are not re-emitted: they stay in the database
   as late or missed and a fresh visit is planned. Overdue urgent plans are kept (the family still
   needs them).

``visit_id`` is a stable hash of household, due date and reason, so re-running on the same
inputs gives the same ids and the upsert changes nothing. The daily cap keeps this: visits are
served in a fixed order (ties broken by household id, not input order), a re-run fed its own
plans finds every day as full as it left it, and a visit that would slip into the window of an
open plan of the family or later is that open plan (nothing new is planned). So is a replay of an
earlier day fed what the database holds since (plans made later, plans closed by visits made
after that day): at most one open plan per family, reason and cadence step. The plans a visit made
on the day closed (``held_plans``) keep their place in the day loads, and an open plan due on or
before a family's last visit is no step after it: the evening run after the day's visits gives no
other family a place the morning run saw taken, and a replay of a day whose next days have run plans
nothing new.
"""

from __future__ import annotations

import hashlib
import logging
import tomllib
from dataclasses import dataclass, field
from datetime import date, datetime
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from templates import wording
from sibifang.checks import CATEGORY_ALIASES, CATEGORY_LABELS
from sibifang.errors import FlowParameterError
from sibifang.settings import LOCAL_TZ
from sibifang.workcalendar import WorkCalendar

logger = logging.getLogger(__name__)

# Must-visit category codes and the Chinese labels a federation may type instead: one place,
# sibifang.checks (the importer's maps); the planner also accepts the labels directly.
_CATEGORY_CODE = {**{c: c for c in CATEGORY_LABELS}, **{v: k for k, v in CATEGORY_LABELS.items()},
                  **CATEGORY_ALIASES}
_CATEGORY_CODE.update({"留守妇女": "left_behind", "留守儿童": "left_behind", "空巢": "empty_nest"})

# Reason codes of routine visits, in tie-break order (the most specific reason wins a tie).
CADENCE_REASONS: tuple[str, ...] = (
    "open_dispute",
    "risk_red",
    "empty_nest_flagged",
    "hardship",
    "left_behind",
    "empty_nest",
    "entrepreneur",
    "dispute",
    "must_visit_max",
)
REASON_LABELS: dict[str, str] = {
    "open_dispute": "婚姻家庭矛盾未化解（每周走访）",
    "risk_red": "红色风险家庭（每周走访）",
    "empty_nest_flagged": "空巢老人（已标记，每周走访）",
    "hardship": "困难家庭定期走访",
    "left_behind": "留守妇女儿童家庭定期走访",
    "empty_nest": "空巢老人定期走访",
    "entrepreneur": "创业困难家庭定期走访",
    "dispute": "婚姻家庭矛盾家庭定期走访",
    "must_visit_max": "四必访家庭定期走访",
    "follow_up": "回访",
    "urgent": "紧急上门",
}

SHORTFALL_CAPACITY = "网格内干部容量不足"
SHORTFALL_NO_CADRE = "网格内无承担走访的干部"
SHORTFALL_SLIPPED = "期限内联系干部无法走访（请假或4+1下沉日）且网格内无人可代，走访顺延"
SHORTFALL_UNPLANNABLE = "排期范围内无可走访日期（干部请假或下沉日限制）"
SHORTFALL_URGENT = "紧急上门无可用干部（均在请假）"
SHORTFALL_DAY_FULL = "期限内联系干部及网格内同事每日走访已满（每日走访容量不足），走访顺延"

MOVE_LEAVE = "联系干部请假"
MOVE_FOUR_PLUS_ONE = "4+1干部下沉日不在走访窗口内"
MOVE_REASSIGNED = "联系干部调整"
MOVE_URGENT = "紧急上门由网格内在岗干部代办"
MOVE_DAY_FULL = "联系干部期限内每日走访已满"

PLAN_COLUMNS = ["visit_id", "household_id", "cadre_id", "grid_id", "due_date", "window_start", "window_end",
                "reason", "urgent", "status"]
ASSIGNMENT_COLUMNS = ["household_id", "cadre_id", "grid_id", "assigned", "interval_days"]
SHORTFALL_COLUMNS = ["household_id", "grid_id", "reason"]
MOVED_COLUMNS = ["visit_id", "household_id", "from_cadre_id", "to_cadre_id", "due_date", "reason"]
AWAY_COLUMNS = ["household_id", "grid_id", "away_from", "away_until"]
NOTICE_COLUMNS = ["cadre_id", "text"]
COVERAGE_COLUMNS = ["level", "unit_id", "due", "visited_on_time", "late", "missed", "pending", "away"]

_BIG = 1 << 30


# ---------------------------------------------------------------------------------------------
# Parameters a supervisor gives a run by hand
# ---------------------------------------------------------------------------------------------
class ScheduleParameterError(FlowParameterError):
    """A scheduling run asked for with parameters that cannot be planned; the message is in Chinese
    (a supervisor reads it)."""


MAX_HORIZON_DAYS = 366  # a year ahead; the planner holds every cadre's days in memory


_DATE_PARAMETERS = {"as_of": "排期日期", "notify_for": "通知日期"}


def _local_day(moment: datetime) -> date:
    """A time's day in China: one with a zone (a scheduler's UTC time, "...Z") is converted, as
    every flow reads ``as_of`` (``tasks.common.as_of_date``): 16:30Z is the next day's 00:30."""
    from sibifang.settings import LOCAL_TZ

    return (moment.astimezone(LOCAL_TZ) if moment.tzinfo is not None else moment).date()


def parse_schedule_day(value, name: str) -> date | None:
    """A date parameter as a supervisor types it (``2026-11-20``, or a date/datetime from code);
    anything else raises ``ScheduleParameterError`` naming the parameter. The flow reads its
    parameters itself: Prefect's own check answers in English with a traceback."""
    if value is None or (isinstance(value, date) and not isinstance(value, datetime)):
        return value
    if isinstance(value, datetime):
        return _local_day(value)
    text = str(value).strip()
    try:
        return date.fromisoformat(text)
    except ValueError:
        pass
    try:
        return _local_day(datetime.fromisoformat(text))
    except ValueError:
        raise ScheduleParameterError(f"{_DATE_PARAMETERS.get(name, '日期')} {name} 必须是 年-月-日 格式的日期"
                                     f"（如 2026-11-20），收到 {value!r}。") from None


def check_schedule_parameters(*, horizon_days, grid: str | None = None, known_grids=None) -> int:
    """Raise ``ScheduleParameterError`` for a horizon that is not 1..366 days or a grid not in the
    registry (``known_grids``: the registered grid ids; None skips that check)."""
    if isinstance(horizon_days, str) and horizon_days.strip().isdigit():  # a form or -p passes text
        horizon_days = int(horizon_days)
    if isinstance(horizon_days, bool) or not isinstance(horizon_days, int) or not (
            1 <= horizon_days <= MAX_HORIZON_DAYS):
        raise ScheduleParameterError(f"排期天数 horizon_days 必须是 1 到 {MAX_HORIZON_DAYS} 之间的整数，"
                                     f"收到 {horizon_days!r}。")
    if grid is not None and known_grids is not None and str(grid) not in {str(g) for g in known_grids}:
        raise ScheduleParameterError(f"没有编号为 {grid} 的网格，请检查 grid 参数（网格编号见档案导入的区域表）。")
    return horizon_days


# ---------------------------------------------------------------------------------------------
# Cadence rules
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CadenceRules:
    """Visit cadence rules (走访频次规则) read from ``cadence.toml``."""

    interval_days: dict[str, int]
    risk_level_interval_days: dict[str, int]
    urgent_critical_hours: int = 24
    urgent_other_hours: int = 72
    follow_up_after_mediation_days: tuple[int, ...] = (7, 30)
    window_fraction: float = 0.3
    overdue_within_days: int = 3
    follow_up_within_days: int = 3
    # Non-urgent visits one cadre can make in a day (volunteers, most with a job); 0 = no cap.
    max_visits_per_cadre_per_day: int = 4
    visiting_roles: frozenset[str] = frozenset({"cadre", "executive_member", "vice_chair", "grid_worker",
                                                 "village_chair"})
    first_responder_roles: tuple[str, ...] = ("grid_worker", "village_chair")
    calendar_holidays: frozenset[date] = field(default_factory=frozenset)
    calendar_workdays: frozenset[date] = field(default_factory=frozenset)
    source: str = ""

    def work_calendar(self) -> WorkCalendar:
        """The official working calendar plus the ``[calendar]`` dates of the rules file."""
        return WorkCalendar(extra_holidays=self.calendar_holidays, extra_workdays=self.calendar_workdays)


def load_cadence_rules(path: Path | None = None) -> CadenceRules:
    """Read cadence rules from ``path``; ``None`` means ``settings.cadence_file`` or the packaged default."""
    if path is None:
        from sibifang.settings import get_settings

        path = get_settings().cadence_file
    if path is None:
        text = resources.files("sibifang").joinpath("cadence.toml").read_text(encoding="utf-8")
        source = "sibifang/cadence.toml"
    else:
        text = Path(path).read_text(encoding="utf-8")
        source = str(path)
    raw = tomllib.loads(text)
    intervals = {str(k): int(v) for k, v in raw.get("interval_days", {}).items()}
    missing = {"must_visit_max", "open_dispute"} - intervals.keys()
    if missing:
        raise ValueError(f"{source}: [interval_days] lacks {sorted(missing)}")
    bad = {k: v for k, v in intervals.items() if v <= 0}
    if bad:
        raise ValueError(f"{source}: intervals must be positive days, got {bad}")
    urgent = raw.get("urgent", {})
    follow = raw.get("follow_up", {})
    window = raw.get("window", {})
    roles = raw.get("roles", {})
    cal = raw.get("calendar", {})
    defaults = CadenceRules(interval_days={}, risk_level_interval_days={})
    daily_cap = int(raw.get("capacity", {}).get("max_visits_per_cadre_per_day",
                                                defaults.max_visits_per_cadre_per_day))
    if daily_cap < 0:
        raise ValueError(f"{source}: [capacity] max_visits_per_cadre_per_day must be 0 (no cap) or more, "
                         f"got {daily_cap}")
    return CadenceRules(
        interval_days=intervals,
        risk_level_interval_days={str(k): int(v) for k, v in raw.get("risk_level_interval_days", {}).items()},
        urgent_critical_hours=int(urgent.get("critical_hours", 24)),
        urgent_other_hours=int(urgent.get("other_hours", 72)),
        follow_up_after_mediation_days=tuple(int(x) for x in follow.get("after_mediation_closed_days", (7, 30))),
        window_fraction=float(window.get("fraction_of_interval", 0.3)),
        overdue_within_days=int(window.get("overdue_within_days", 3)),
        follow_up_within_days=int(window.get("follow_up_within_days", 3)),
        max_visits_per_cadre_per_day=daily_cap,
        visiting_roles=frozenset(roles.get("visiting", defaults.visiting_roles)),
        first_responder_roles=tuple(roles.get("first_responders", defaults.first_responder_roles)),
        calendar_holidays=frozenset(date.fromisoformat(str(d)) for d in cal.get("holidays", [])),
        calendar_workdays=frozenset(date.fromisoformat(str(d)) for d in cal.get("workdays", [])),
        source=source,
    )


def follow_ups_after_mediation(closed_cases: pd.DataFrame, rules: CadenceRules) -> pd.DataFrame:
    """Follow-up visits for closed mediation cases.

    In: ``household_id, closed_at`` (date or datetime). Out: ``household_id, due_date, reason``
    with one row per case and configured offset (7 and 30 days by default); reason
    ``follow_up_mediation_7d`` etc.
    """
    if closed_cases.empty:
        return pd.DataFrame({"household_id": pd.Series(dtype=object), "due_date": pd.Series(dtype="datetime64[s]"),
                             "reason": pd.Series(dtype=object)})
    closed = pd.to_datetime(closed_cases["closed_at"]).dt.normalize()
    parts = [pd.DataFrame({"household_id": closed_cases["household_id"].astype(str).to_numpy(),
                           "due_date": closed + pd.Timedelta(days=n),
                           "reason": f"follow_up_mediation_{n}d"})
             for n in rules.follow_up_after_mediation_days]
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------------------------
@dataclass
class SchedulePlan:
    """Result of one scheduling run.

    - ``plans``: ``visit_id, household_id, cadre_id, grid_id, due_date, window_start, window_end,
      reason, urgent, status`` (dates as datetime64 at midnight; status ``planned``).
    - ``assignments``: ``household_id, cadre_id, grid_id, assigned ('kept'|'new'), interval_days``
      (interval_days is <NA> for families without routine visits).
    - ``shortfall``: ``household_id, grid_id, reason`` (reason in Chinese).
    - ``moved``: ``visit_id, household_id, from_cadre_id, to_cadre_id, due_date, reason``: every
      visit of the plan done by someone other than the family's cadre (leave, 4+1 weekday,
      urgent cover), and open plans this run hands from one cadre to another; reason in Chinese.
    - ``away``: ``household_id, grid_id, away_from, away_until``: families with routine visits or
      follow-ups not planned, or put off until their return, because they are recorded away.
    - ``notices``: ``cadre_id, text`` (one digest per cadre concerned, in Chinese).
    """

    plans: pd.DataFrame
    assignments: pd.DataFrame
    shortfall: pd.DataFrame
    moved: pd.DataFrame
    away: pd.DataFrame
    notices: pd.DataFrame


# ---------------------------------------------------------------------------------------------
# Input normalisation helpers
# ---------------------------------------------------------------------------------------------
def _as_days(values, as_of64: np.datetime64) -> tuple[np.ndarray, np.ndarray]:
    """Day offsets from as_of (int64) and a validity mask, for any date/datetime-like column."""
    ts = pd.to_datetime(pd.Series(values), errors="coerce")
    if getattr(ts.dt, "tz", None) is not None:
        ts = ts.dt.tz_convert(LOCAL_TZ).dt.tz_localize(None)
    arr = ts.to_numpy(dtype="datetime64[ns]").astype("datetime64[D]")
    valid = ~np.isnat(arr)
    days = np.zeros(len(arr), dtype=np.int64)
    days[valid] = (arr[valid] - as_of64).astype(np.int64)
    return days, valid


def _bool_col(df: pd.DataFrame, name: str) -> np.ndarray:
    if name not in df.columns:
        return np.zeros(len(df), dtype=bool)
    s = df[name]
    if s.dtype == bool:
        return s.to_numpy()
    text = s.astype(object).where(s.notna(), "0").astype(str).str.strip().str.lower()
    return text.isin(["1", "true", "是", "yes", "y", "1.0"]).to_numpy()


def _explode_list_col(s: pd.Series) -> pd.Series:
    """A ';'-string or list column exploded to one stripped token per row; index = row position."""
    s = s.reset_index(drop=True)
    is_text = s.map(lambda v: isinstance(v, str) or v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))
                    ) if s.dtype == object else pd.Series(True, index=s.index)
    if bool(is_text.all()):
        tokens = s.astype(object).where(s.notna(), "").astype(str).str.replace("；", ";", regex=False).str.split(";")
    else:
        tokens = s.map(lambda v: list(v) if isinstance(v, (list, tuple, set, np.ndarray))
                       else ([] if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))
                             else str(v).replace("；", ";").split(";")))
    out = tokens.explode().dropna().astype(str).str.strip()
    return out[out != ""]


def _nullable_int(values: np.ndarray, valid: np.ndarray) -> pd.arrays.IntegerArray:
    return pd.arrays.IntegerArray(np.asarray(values, dtype=np.int64), ~np.asarray(valid, dtype=bool))


def _stable_ids(household_ids: np.ndarray, due: np.ndarray, reasons: np.ndarray) -> np.ndarray:
    due_text = np.datetime_as_string(due.astype("datetime64[D]"), unit="D")
    return np.array([
        "V" + hashlib.blake2b(f"{h}|{d}|{r}".encode(), digest_size=8).hexdigest()
        for h, d, r in zip(household_ids, due_text, reasons)
    ], dtype=object)


def household_intervals(households: pd.DataFrame, rules: CadenceRules) -> pd.DataFrame:
    """Routine cadence of each family: ``household_id, interval_days (<NA> if none), reason``."""
    n = len(households)
    exploded = (_explode_list_col(households["categories"]) if "categories" in households.columns
                else pd.Series([], dtype=object))
    codes = exploded.map(lambda t: _CATEGORY_CODE.get(t, t.lower()))
    has = {}
    for code in CATEGORY_LABELS:
        mask = np.zeros(n, dtype=bool)
        mask[exploded.index[(codes == code).to_numpy()]] = True
        has[code] = mask
    unknown = codes.dropna()[~codes.dropna().isin(list(CATEGORY_LABELS))]
    if len(unknown):
        logger.warning("忽略未知的家庭类别 (unknown categories ignored): %s", sorted(set(unknown))[:10])
    any_cat = np.logical_or.reduce([has[c] for c in CATEGORY_LABELS])
    open_dispute = _bool_col(households, "open_dispute")
    flagged = _bool_col(households, "flagged")
    risk = (households["risk_level"].astype(object).where(households["risk_level"].notna(), "").astype(str)
            .to_numpy() if "risk_level" in households.columns else np.full(n, "", dtype=object))
    red_days = np.full(n, np.inf)
    for level, days in rules.risk_level_interval_days.items():
        red_days[risk == level] = np.minimum(red_days[risk == level], days)
    iv = rules.interval_days
    inf = np.inf
    candidates = np.vstack([
        np.where(open_dispute, iv["open_dispute"], inf),
        red_days,
        np.where(has["empty_nest"] & flagged, iv.get("empty_nest_flagged", iv.get("empty_nest", inf)), inf),
        np.where(has["hardship"], iv.get("hardship", inf), inf),
        np.where(has["left_behind"], iv.get("left_behind", inf), inf),
        np.where(has["empty_nest"], iv.get("empty_nest", inf), inf),
        np.where(has["entrepreneur"], iv.get("entrepreneur", inf), inf),
        np.where(has["dispute"], iv.get("dispute", inf), inf),
        np.where(any_cat | open_dispute | np.isfinite(red_days), iv["must_visit_max"], inf),
    ])
    best = candidates.argmin(axis=0)
    interval = candidates.min(axis=0)
    eligible = np.isfinite(interval)
    return pd.DataFrame({
        "household_id": households["household_id"].astype(str).to_numpy(),
        "interval_days": _nullable_int(np.where(eligible, interval, 0), eligible),
        "reason": np.where(eligible, np.array(CADENCE_REASONS, dtype=object)[best], None),
    })


# ---------------------------------------------------------------------------------------------
# The scheduler
# ---------------------------------------------------------------------------------------------
class _Resolver:
    """Picks a visiting day and cadre for non-urgent visits, under the daily cap, with colleague substitution.

    ``day_load[c, t]`` counts every visit cadre ``c`` has on day ``t`` (urgent ones and kept open
    plans included); a non-urgent visit only goes to a day whose load is below ``daily_cap``.
    """

    def __init__(self, eligible: np.ndarray, cadre_grids: dict[str, np.ndarray], load: np.ndarray,
                 four_plus_one: np.ndarray, daily_cap: int, day_load: np.ndarray):
        self.eligible = eligible
        n_cadres, n_days = eligible.shape
        self.n_days = n_days
        ar = np.arange(n_days, dtype=np.int32)
        # last eligible day <= t, and first eligible day >= t, per cadre (the calendar, leave and
        # 4+1 only: whether a cadre *can* visit at all, whatever her load)
        self.last_on_or_before = np.maximum.accumulate(np.where(eligible, ar, -1), axis=1)
        self.first_on_or_after = np.minimum.accumulate(np.where(eligible, ar, n_days)[:, ::-1], axis=1)[:, ::-1]
        self.cadre_grids = cadre_grids
        self.load = load
        self.four_plus_one = four_plus_one
        self.sub_load = np.zeros(n_cadres, dtype=np.int64)
        self.cap = int(daily_cap) if daily_cap and daily_cap > 0 else _BIG
        self.day_load = day_load

    def count(self, cadre, day, by: int = 1) -> None:
        """Add visits to the load of their cadre-day (days outside the planning range are not tracked)."""
        cadre = np.atleast_1d(np.asarray(cadre, dtype=np.int64))
        day = np.atleast_1d(np.asarray(day, dtype=np.int64))
        sel = (cadre >= 0) & (day >= 0) & (day < self.n_days)
        np.add.at(self.day_load, (cadre[sel], day[sel]), by)

    def has_room(self, cadre, day) -> np.ndarray:
        return self.eligible[cadre, day] & (self.day_load[cadre, day] < self.cap)

    def pick(self, cadre: np.ndarray, ws: np.ndarray, we: np.ndarray, latest: np.ndarray, grid: np.ndarray,
             rank: np.ndarray, slip_until: np.ndarray | None = None, allow_slip: bool = True,
             stop_at: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return (day, cadre, substituted, slipped, own_full, cap_hit); counts what it places.

        Visits are served in ``rank`` order (lower first) wherever they compete for the last
        places of a day. ``latest`` visits take the latest day with room in ``[ws, we]``, the
        others the earliest. day = -1 when no day at all can be found, -2 when the only
        possible day is after ``slip_until`` (the family leaves home before it), -3 when the
        visit would slip to ``stop_at`` or later (the day of an open plan of the family: that
        plan is the visit, nothing new is planned; slipped is set). ``own_full``: the family's
        cadre could visit in the window but her days there are full (why a substitute came);
        ``cap_hit``: without the cap the visit would have been placed in the window (why it
        slipped).
        """
        T = self.n_days
        n = len(cadre)
        cadre = np.asarray(cadre, dtype=np.int64)
        lo = np.maximum(ws, 0)
        hi = np.minimum(we, T - 1)
        valid = (ws <= we) & (ws < T) & (lo <= hi)
        lo_c, hi_c = np.clip(lo, 0, T - 1), np.clip(hi, 0, T - 1)
        pref = np.where(latest, self.last_on_or_before[cadre, hi_c], self.first_on_or_after[cadre, lo_c])
        can = valid & (pref >= lo) & (pref <= hi)  # her calendar allows a day in the window
        day = np.full(n, -1, dtype=np.int64)
        out_cadre = cadre.copy()
        placed = np.zeros(n, dtype=bool)

        # 1. The family's own cadre. Where her preferred days all keep room for every visit that
        # wants them, each visit simply takes its preferred day (no competition: the common case,
        # vectorised). Otherwise her visits are served one at a time in rank order, all cadres in
        # parallel: round k gives every such cadre her k-th visit, which takes the best day of its
        # window that still has room.
        rows = np.flatnonzero(can)
        if len(rows):
            key = cadre[rows] * T + pref[rows]
            uniq, counts = np.unique(key, return_counts=True)
            over = self.day_load.ravel()[uniq] + counts > self.cap
            slow = np.isin(cadre[rows], uniq[over] // T)
            easy = rows[~slow]
            day[easy], placed[easy] = pref[easy], True
            self.count(cadre[easy], pref[easy])
            hard = rows[slow]
            if len(hard):
                hard = hard[np.lexsort((rank[hard], cadre[hard]))]
                starts = np.flatnonzero(np.r_[True, cadre[hard][1:] != cadre[hard][:-1]])
                turn = np.arange(len(hard)) - np.repeat(starts, np.diff(np.r_[starts, len(hard)]))
                for k in range(int(turn.max()) + 1):
                    s = hard[turn == k]
                    d = self._best_day(cadre[s], lo[s], hi[s], latest[s])
                    ok = d >= 0
                    s, d = s[ok], d[ok]
                    day[s], placed[s] = d, True
                    self.count(cadre[s], d)

        own_full = can & ~placed
        cap_hit = own_full.copy()
        substituted = np.zeros(n, dtype=bool)
        slipped = np.zeros(n, dtype=bool)
        # 2. A colleague of the grid with room, then 3. the first day after the window with room.
        # Why a Python loop: only visits whose cadre is on leave, a "4+1" cadre off her weekday or
        # full for the whole window land here, a small fraction of the plan.
        rest = np.flatnonzero(~placed)
        for i in rest[np.argsort(rank[rest], kind="stable")]:
            c0 = cadre[i]
            lo_i, hi_i = int(lo[i]), int(hi[i])
            if valid[i]:
                colleagues = self.cadre_grids.get(grid[i])
                cand = colleagues[colleagues != c0] if colleagues is not None else np.zeros(0, np.int64)
                if len(cand):
                    elig = self.eligible[cand, lo_i:hi_i + 1]
                    room = elig & (self.day_load[cand, lo_i:hi_i + 1] < self.cap)
                    free = room.any(axis=1)
                    cap_hit[i] |= bool(elig.any())  # read only when nobody has room
                    if free.any():
                        cand, room = cand[free], room[free]
                        order = np.lexsort((cand, self.four_plus_one[cand], self.load[cand], self.sub_load[cand]))
                        j = order[0]
                        best = int(cand[j])
                        r = room[j]
                        d = lo_i + (len(r) - 1 - int(np.argmax(r[::-1])) if latest[i] else int(np.argmax(r)))
                        day[i], out_cadre[i], substituted[i] = d, best, True
                        self.sub_load[best] += 1
                        self.count(best, d)
                        continue
            if not allow_slip:
                continue
            start = max(int(we[i]) + 1, 0)
            room = self.eligible[c0, start:] & (self.day_load[c0, start:] < self.cap)
            if room.any():
                d = start + int(np.argmax(room))
            else:
                d = _BIG
                cap_hit[i] |= bool(self.eligible[c0, start:].any())
            if stop_at is not None and stop_at[i] < _BIG and stop_at[i] <= d:
                day[i], slipped[i] = -3, True
            elif d == _BIG:
                continue
            elif slip_until is not None and d > slip_until[i]:
                day[i] = -2
            else:
                day[i], slipped[i] = d, True
                self.count(c0, d)
        return day, out_cadre, substituted, slipped, own_full, cap_hit

    def _best_day(self, cadre, lo, hi, latest) -> np.ndarray:
        """Best day with room of each visit's window for its cadre (latest or earliest); -1 if none."""
        width = int((hi - lo).max()) + 1
        days = lo[:, None] + np.arange(width)[None, :]
        inside = days <= hi[:, None]
        days_c = np.minimum(days, self.n_days - 1)
        c = cadre[:, None]
        room = inside & self.eligible[c, days_c] & (self.day_load[c, days_c] < self.cap)
        found = room.any(axis=1)
        first = np.argmax(room, axis=1)
        last = width - 1 - np.argmax(room[:, ::-1], axis=1)
        return np.where(found, lo + np.where(latest, last, first), -1)


def schedule_visits(
    households: pd.DataFrame,
    cadres: pd.DataFrame,
    *,
    as_of: date,
    horizon_days: int = 30,
    last_visits: pd.DataFrame,
    open_plans: pd.DataFrame,
    current_assignments: pd.DataFrame,
    urgent_requests: pd.DataFrame,
    follow_ups: pd.DataFrame,
    rules: CadenceRules,
    calendar: WorkCalendar,
    grid: str | None = None,
    held_plans: pd.DataFrame | None = None,
) -> SchedulePlan:
    """Plan the visits of the next ``horizon_days`` days from ``as_of`` (day 0 included).

    Inputs (extra columns are ignored; list cells may be Python lists or ';'-strings):

    - households: ``household_id, grid_id, categories, risk_level (红/橙/黄/绿 or empty),
      open_dispute, flagged, away_from, away_until``; ``village_id`` optional.
    - cadres: ``cadre_id, role, grid_ids, capacity, four_plus_one, grassroots_weekday (0=Mon),
      on_leave_from, on_leave_until``. Only visiting roles carry families.
    - last_visits: ``household_id, last_visited_at``.
    - open_plans: ``visit_id, household_id, cadre_id, due_date, reason, urgent``.
    - current_assignments: ``household_id, cadre_id``.
    - urgent_requests: ``household_id, requested_at, reason, critical``.
    - follow_ups: ``household_id, due_date, reason``.
    - held_plans (optional): ``cadre_id, due_date`` of the plans a visit made on ``as_of`` closed.
      They were open that morning and held their cadre's day: they keep that place in the day
      loads (the family's chain goes on from the visit), so the evening run, or a replay of the
      day, does not plan other visits into places the day's first run saw taken.

    ``grid`` restricts planning to one grid; cadres' families in other grids still count
    against their capacity.
    """
    run = _Planning(as_of=as_of, horizon_days=horizon_days, rules=rules, calendar=calendar, grid=grid)
    # The order of the phases is part of the result: each one counts its visits into the day
    # loads the next ones plan around (fixed dates first, routine visits last).
    run.read_households(households, last_visits, urgent_requests, follow_ups, open_plans)
    run.read_cadres(cadres)
    run.assign_families(current_assignments)
    run.start_day_loads(open_plans, held_plans)
    run.carry_open_plans()
    run.plan_urgent_visits()
    run.plan_follow_ups()
    run.plan_routine_visits()
    return run.assemble()


class _Planning:
    """One run of ``schedule_visits``: the arrays its phases share and the helpers that record visits.

    Families are rows ``0..n_hh-1`` (``hid``, ``hgrid``), cadres rows ``0..n_cd-1`` (``cid``, in id
    order); days are offsets from ``as_of`` (day 0), ``T`` of them tracked (the horizon ``H`` plus
    room for visits that slip past it). The phases run in the order of ``schedule_visits`` and
    fill ``plan_parts`` (visits), ``moved_parts`` (visits done by someone other than the family's
    cadre) and ``shortfall_rows`` (family row, reason), which ``assemble`` turns into the result.
    """

    def __init__(self, *, as_of: date, horizon_days: int, rules: CadenceRules, calendar: WorkCalendar,
                 grid: str | None):
        as_of = as_of.date() if isinstance(as_of, datetime) else as_of
        self.as_of = as_of
        self.as_of64 = np.datetime64(as_of, "D")
        self.H = int(horizon_days)
        self.T = self.H + 32  # room for visits that slip past the horizon's last day
        self.overdue_within = max(int(rules.overdue_within_days), 0)
        self.rules = rules
        self.calendar = calendar
        self.grid = grid
        self.shortfall_rows: list[tuple[int, str]] = []
        self.plan_parts: list[dict[str, np.ndarray]] = []
        self.moved_parts: list[dict[str, np.ndarray]] = []

    # ---- households in scope --------------------------------------------------------------
    def read_households(self, households: pd.DataFrame, last_visits: pd.DataFrame, urgent_requests: pd.DataFrame,
                        follow_ups: pd.DataFrame, open_plans: pd.DataFrame) -> None:
        """The families to plan (one grid or all), their cadence and absences, and what they still need.

        Sets the family arrays, the last visit of each family, and the urgent requests (``ur``),
        follow-ups (``fu``) and open plans (``op``) still to serve, indexed by family row ``_i``.
        """
        as_of64, H, rules, grid = self.as_of64, self.H, self.rules, self.grid
        hh = households.copy()
        hh["household_id"] = hh["household_id"].astype(str)
        hh["grid_id"] = hh["grid_id"].astype(str)
        hh = hh.drop_duplicates("household_id", keep="first").reset_index(drop=True)
        all_hh_grid = pd.Series(hh["grid_id"].to_numpy(dtype=object), index=hh["household_id"].to_numpy(dtype=object))
        if grid is not None:
            hh = hh[hh["grid_id"] == str(grid)].reset_index(drop=True)
        n_hh = len(hh)
        hid = hh["household_id"].to_numpy(dtype=object)
        self.all_hh_grid, self.n_hh, self.hid = all_hh_grid, n_hh, hid
        self.hgrid = hh["grid_id"].to_numpy(dtype=object)
        self.pos = pd.Index(hid)
        cad = household_intervals(hh, rules)
        self.interval = cad["interval_days"].fillna(0).to_numpy(dtype=np.int64)
        self.routine = cad["interval_days"].notna().to_numpy()
        self.cad_reason = cad["reason"].to_numpy(dtype=object)

        away_from_d, away_from_ok = (_as_days(hh["away_from"], as_of64) if "away_from" in hh.columns
                                     else (np.zeros(n_hh, np.int64), np.zeros(n_hh, bool)))
        away_until_d, away_until_ok = (_as_days(hh["away_until"], as_of64) if "away_until" in hh.columns
                                       else (np.zeros(n_hh, np.int64), np.zeros(n_hh, bool)))
        away_now = away_from_ok & (away_from_d <= 0) & (~away_until_ok | (away_until_d >= 0))
        # Back within the horizon: visits resume the day after the return.
        back_day = np.where(away_now, np.where(away_until_ok, away_until_d + 1, _BIG), 0)
        self.away_from_d, self.away_from_ok, self.away_until_d, self.away_until_ok = (
            away_from_d, away_from_ok, away_until_d, away_until_ok)
        self.away_now, self.back_day = away_now, back_day
        self.away_all_horizon = away_now & (back_day > H - 1)
        # Families whose routine visit or follow-up waits for their return (set while planning).
        self.deferred_by_away = np.zeros(n_hh, dtype=bool)
        # Stable order of families by id, for ties between equally urgent visits (input order may vary).
        hrank = np.empty(n_hh, dtype=np.int64)
        hrank[np.argsort(hid.astype(str), kind="stable")] = np.arange(n_hh)
        self.hrank = hrank

        self._read_last_visits(last_visits)
        self._read_urgent_requests(urgent_requests)
        self._read_follow_ups(follow_ups)
        self._read_open_plans(open_plans)
        self.needs_cadre = self.routine | self.has_urgent | self.has_follow | self.has_open
        self.priority = np.where(self.has_urgent, 0, np.where(self.routine, self.interval, 10_000))

    def household_index(self, ids: pd.Series) -> np.ndarray:
        """Family row of each household id (-1 when not in scope)."""
        return self.pos.get_indexer(ids.astype(str))

    def _read_last_visits(self, last_visits: pd.DataFrame) -> None:
        """``last_day`` / ``has_last``: the last visit day on or before today; ``last_ts`` its timestamp."""
        n_hh, as_of64 = self.n_hh, self.as_of64
        last_day = np.full(n_hh, -_BIG, dtype=np.int64)
        has_last = np.zeros(n_hh, dtype=bool)
        if len(last_visits):
            lv_idx = self.household_index(last_visits["household_id"])
            d, ok = _as_days(last_visits["last_visited_at"], as_of64)
            sel = (lv_idx >= 0) & ok & (d <= 0)
            np.maximum.at(last_day, lv_idx[sel], d[sel])
            has_last[lv_idx[sel]] = True
        last_ts = pd.Series(pd.NaT, index=range(n_hh), dtype="datetime64[ns]")
        if len(last_visits):
            lv = last_visits.assign(_i=self.household_index(last_visits["household_id"]),
                                    _t=pd.to_datetime(last_visits["last_visited_at"], errors="coerce"))
            lv = lv[lv["_i"] >= 0].groupby("_i")["_t"].max()
            last_ts.loc[lv.index] = lv.to_numpy(dtype="datetime64[ns]")
        self.last_day, self.has_last, self.last_ts = last_day, has_last, last_ts

    def _read_urgent_requests(self, urgent_requests: pd.DataFrame) -> None:
        """``ur``: urgent requests not yet answered by a visit, one per family, with their deadline."""
        rules = self.rules
        ur = urgent_requests.copy() if len(urgent_requests) else pd.DataFrame(
            columns=["household_id", "requested_at", "reason", "critical"])
        ur["_i"] = self.household_index(ur["household_id"]) if len(ur) else np.zeros(0, dtype=np.int64)
        ur = ur[ur["_i"] >= 0].copy()
        if len(ur):
            req = pd.to_datetime(ur["requested_at"], errors="coerce")
            if getattr(req.dt, "tz", None) is not None:
                req = req.dt.tz_convert(LOCAL_TZ).dt.tz_localize(None)
            ur["_req"] = req
            ur["_crit"] = _bool_col(ur, "critical")
            ur = ur[ur["_req"].notna()]
            answered = self.last_ts.to_numpy()[ur["_i"].to_numpy()] >= ur["_req"].to_numpy()
            ur = ur[~answered].copy()
            hours = np.where(ur["_crit"], rules.urgent_critical_hours, rules.urgent_other_hours)
            ur["_deadline"] = ur["_req"] + pd.to_timedelta(hours, unit="h")
            # One urgent visit per family: the tightest deadline wins.
            ur = ur.sort_values(["_i", "_deadline", "_req"], kind="mergesort").drop_duplicates("_i")
            ur["reason"] = ur["reason"].astype(object).where(ur["reason"].notna(), "urgent").astype(str)
        has_urgent = np.zeros(self.n_hh, dtype=bool)
        has_urgent[ur["_i"].to_numpy(dtype=np.int64)] = True
        self.ur, self.has_urgent = ur, has_urgent

    def _read_follow_ups(self, follow_ups: pd.DataFrame) -> None:
        """``fu``: follow-ups due within the horizon and not yet answered by a visit (day offset ``_d``)."""
        has_last, last_day = self.has_last, self.last_day
        fu = follow_ups.copy() if len(follow_ups) else pd.DataFrame(columns=["household_id", "due_date", "reason"])
        fu["_i"] = self.household_index(fu["household_id"]) if len(fu) else np.zeros(0, dtype=np.int64)
        fu = fu[fu["_i"] >= 0].copy()
        if len(fu):
            fu["_d"], ok = _as_days(fu["due_date"], self.as_of64)
            fu = fu[ok]
            fu["reason"] = fu["reason"].astype(object).where(fu["reason"].notna(), "follow_up").astype(str)
            # already answered by a visit on or after the follow-up date
            fu = fu[~(has_last[fu["_i"].to_numpy()] & (last_day[fu["_i"].to_numpy()] >= fu["_d"].to_numpy()))]
            fu = fu[fu["_d"] <= self.H - 1].copy()
            fu = fu.drop_duplicates(["_i", "reason", "_d"])
        has_follow = np.zeros(self.n_hh, dtype=bool)
        has_follow[fu["_i"].to_numpy(dtype=np.int64)] = True
        self.fu, self.has_follow = fu, has_follow

    def _read_open_plans(self, open_plans: pd.DataFrame) -> None:
        """``op``: open plans of the families in scope whose window is still open (overdue urgent ones too)."""
        # A plan counts until its window closes, not its due day: an overdue or first visit is due
        # on the first day of its window, and dropped the next day the family was planned twice.
        # Plans whose window is over are left to coverage as late/missed.
        op = open_plans.copy() if len(open_plans) else pd.DataFrame(
            columns=["visit_id", "household_id", "cadre_id", "due_date", "reason", "urgent"])
        op["_i"] = self.household_index(op["household_id"]) if len(op) else np.zeros(0, dtype=np.int64)
        op = op[op["_i"] >= 0].copy()
        if len(op):
            op["_d"], ok = _as_days(op["due_date"], self.as_of64)
            # The later of window end and due day: a visit that slipped past its window is due after it.
            end = op["_d"].to_numpy(dtype=np.int64).copy()
            if "window_end" in op.columns:  # old rows without a window: the due day ends it
                we, we_ok = _as_days(op["window_end"], self.as_of64)
                end[we_ok] = np.maximum(end[we_ok], we[we_ok])
            op["_urgent"] = _bool_col(op, "urgent")
            # Overdue urgent plans stay: the family still needs that visit, by the same person.
            op = op[ok & ((end >= 0) | op["_urgent"])].copy()
            op["reason"] = op["reason"].astype(str)
            op["cadre_id"] = op["cadre_id"].astype(object).where(op["cadre_id"].notna(), None)
            op = op.sort_values(["_d", "visit_id"], kind="mergesort").drop_duplicates("visit_id")
        has_open = np.zeros(self.n_hh, dtype=bool)
        has_open[op["_i"].to_numpy(dtype=np.int64)] = True
        self.op, self.has_open = op, has_open

    # ---- cadres -----------------------------------------------------------------------------
    def read_cadres(self, cadres: pd.DataFrame) -> None:
        """The visiting cadres, the days each can visit (``eligible``) and the grids each covers."""
        as_of, as_of64, T, rules = self.as_of, self.as_of64, self.T, self.rules
        cd = cadres.copy()
        cd["cadre_id"] = cd["cadre_id"].astype(str)
        # Cadres are indexed in id order, not input order: the index is the last tie-break wherever
        # cadres compete (least-loaded assignment, colleague cover, urgent responder), and the rows
        # come from a SELECT without ORDER BY (PostgreSQL returns updated rows elsewhere in the heap).
        cd = cd.drop_duplicates("cadre_id").sort_values("cadre_id", kind="mergesort").reset_index(drop=True)
        cd = cd[cd["role"].astype(str).isin(rules.visiting_roles)].reset_index(drop=True)
        n_cd = len(cd)
        cid = cd["cadre_id"].to_numpy(dtype=object)
        self.cd, self.n_cd, self.cid = cd, n_cd, cid
        self.cpos = pd.Index(cid)
        from sibifang.settings import get_settings

        default_cap = int(get_settings().default_capacity)
        self.capacity = pd.to_numeric(cd.get("capacity", pd.Series([None] * n_cd)), errors="coerce").fillna(
            default_cap).to_numpy(dtype=np.int64)
        fpo = _bool_col(cd, "four_plus_one")
        weekday = pd.to_numeric(cd.get("grassroots_weekday", pd.Series([None] * n_cd)), errors="coerce").to_numpy()
        if (fpo & np.isnan(weekday)).any():
            logger.warning("4+1 干部未填写下沉日，将不安排其常规走访: %s", list(cid[fpo & np.isnan(weekday)])[:10])
        lf, lf_ok = _as_days(cd["on_leave_from"], as_of64) if "on_leave_from" in cd.columns else (
            np.zeros(n_cd, np.int64), np.zeros(n_cd, bool))
        lu, lu_ok = _as_days(cd["on_leave_until"], as_of64) if "on_leave_until" in cd.columns else (
            np.zeros(n_cd, np.int64), np.zeros(n_cd, bool))
        days = np.arange(T)
        on_leave = lf_ok[:, None] & (days[None, :] >= lf[:, None]) & (~lu_ok[:, None] | (days[None, :] <= lu[:, None]))
        workday = self.calendar.workdays_in(as_of, T)
        dow = (np.arange(T) + as_of.weekday()) % 7
        wd_ok = np.where(fpo[:, None], dow[None, :] == np.nan_to_num(weekday, nan=-1)[:, None], True)
        self.fpo, self.on_leave, self.workday = fpo, on_leave, workday
        self.eligible = workday[None, :] & ~on_leave & wd_ok

        grid_tokens = _explode_list_col(cd["grid_ids"])
        pairs = pd.DataFrame({"_c": grid_tokens.index.to_numpy(dtype=np.int64),
                              "grid_id": grid_tokens.to_numpy(dtype=object)})
        pairs = pairs.drop_duplicates()
        self.cadre_grids = {g: np.sort(grp["_c"].to_numpy(dtype=np.int64))
                            for g, grp in pairs.groupby("grid_id", sort=True)}
        grid_codes = pd.Index(np.unique(np.concatenate([pairs["grid_id"].to_numpy(dtype=object).astype(str),
                                                        self.hgrid.astype(str)])))
        n_grid_codes = max(len(grid_codes), 1)
        self.grid_codes, self.n_grid_codes = grid_codes, n_grid_codes
        self.pair_codes = np.unique(pairs["_c"].to_numpy(dtype=np.int64) * n_grid_codes
                                    + grid_codes.get_indexer(pairs["grid_id"].astype(str)))

    def covers(self, c: np.ndarray, household_idx: np.ndarray) -> np.ndarray:
        """Whether cadre c covers the grid of household household_idx (vectorised)."""
        codes = (np.asarray(c, dtype=np.int64) * self.n_grid_codes
                 + self.grid_codes.get_indexer(self.hgrid[household_idx].astype(str)))
        return (np.asarray(c) >= 0) & np.isin(codes, self.pair_codes)

    # ---- assignment -------------------------------------------------------------------------
    def assign_families(self, current_assignments: pd.DataFrame) -> None:
        """Each family that needs a cadre gets one: ``assigned`` (cadre row, -1 if none), ``kept``, ``load``.

        The current cadre is kept while she covers the grid and has room; the others go, most
        urgent first, to the least-loaded cadre of the grid; the rest is a capacity shortfall.
        """
        grid, H, n_cd, n_hh = self.grid, self.H, self.n_cd, self.n_hh
        hid, hgrid, capacity, fpo = self.hid, self.hgrid, self.capacity, self.fpo
        needs_cadre, priority, cadre_grids = self.needs_cadre, self.priority, self.cadre_grids
        shortfall_rows = self.shortfall_rows
        load = np.zeros(n_cd, dtype=np.int64)
        assigned = np.full(n_hh, -1, dtype=np.int64)
        kept = np.zeros(n_hh, dtype=bool)
        self.load, self.assigned, self.kept = load, assigned, kept
        ca = current_assignments.copy() if len(current_assignments) else pd.DataFrame(
            columns=["household_id", "cadre_id"])
        ca["household_id"] = ca["household_id"].astype(str)
        ca["_c"] = self.cpos.get_indexer(ca["cadre_id"].astype(str)) if len(ca) else np.zeros(0, dtype=np.int64)
        ca = ca.drop_duplicates("household_id")
        if grid is not None and len(ca):
            # Families of other grids keep their cadre and use her capacity.
            outside = ca[(ca["_c"] >= 0) & ca["household_id"].map(self.all_hh_grid).fillna("").ne(str(grid))]
            np.add.at(load, outside["_c"].to_numpy(dtype=np.int64), 1)
        if len(ca):
            ca["_i"] = self.household_index(ca["household_id"])
            ca = ca[(ca["_i"] >= 0) & (ca["_c"] >= 0)]
            ca = ca[needs_cadre[ca["_i"].to_numpy(dtype=np.int64)]]
            valid = self.covers(ca["_c"].to_numpy(dtype=np.int64), ca["_i"].to_numpy(dtype=np.int64))
            ca = ca[valid].copy()
            ca["_p"] = priority[ca["_i"].to_numpy(dtype=np.int64)]
            ca = ca.sort_values(["_c", "_p", "household_id"], kind="mergesort")
            ca["_rank"] = ca.groupby("_c").cumcount().to_numpy() + load[ca["_c"].to_numpy(dtype=np.int64)]
            ca = ca[ca["_rank"] < capacity[ca["_c"].to_numpy(dtype=np.int64)]]
            ci = ca["_i"].to_numpy(dtype=np.int64)
            cc = ca["_c"].to_numpy(dtype=np.int64)
            assigned[ci] = cc
            kept[ci] = True
            np.add.at(load, cc, 1)

        can_take_new = self.eligible[:, :H].any(axis=1) if H > 0 else np.zeros(n_cd, dtype=bool)
        todo = np.flatnonzero(needs_cadre & (assigned < 0) & ~self.away_all_horizon)
        if len(todo):
            order = np.lexsort((hid[todo].astype(str), priority[todo], hgrid[todo].astype(str)))
            todo = todo[order]
            grids_sorted = hgrid[todo]
            bounds = np.flatnonzero(np.r_[True, grids_sorted[1:] != grids_sorted[:-1], True])
            for b0, b1 in zip(bounds[:-1], bounds[1:]):
                g = grids_sorted[b0]
                members = todo[b0:b1]
                pool = cadre_grids.get(g)
                if pool is None or not can_take_new[pool].any():
                    shortfall_rows.extend((int(i), SHORTFALL_NO_CADRE) for i in members)
                    continue
                pool = pool[can_take_new[pool]]
                spare = np.maximum(capacity[pool] - load[pool], 0)
                if spare.sum() == 0:
                    shortfall_rows.extend((int(i), SHORTFALL_CAPACITY) for i in members)
                    continue
                # One slot per free place, keyed by the load the cadre would have before taking it:
                # taking slots in key order is exactly "least-loaded first" (ties: non-4+1, then id).
                slot_cadre = np.repeat(np.arange(len(pool)), spare)
                rank_in_cadre = np.arange(len(slot_cadre)) - np.repeat(np.cumsum(spare) - spare, spare)
                slot_level = load[pool][slot_cadre] + rank_in_cadre
                slot_order = np.lexsort((slot_cadre, fpo[pool][slot_cadre], slot_level))
                take = min(len(members), len(slot_order))
                chosen = pool[slot_cadre[slot_order[:take]]]
                assigned[members[:take]] = chosen
                np.add.at(load, chosen, 1)
                shortfall_rows.extend((int(i), SHORTFALL_CAPACITY) for i in members[take:])

    def start_day_loads(self, open_plans: pd.DataFrame, held_plans: pd.DataFrame | None = None) -> None:
        """The ``resolver`` with the cadre-day loads the carried plans do not fill: the places of plans
        closed by a visit made today, and on a one-grid re-plan the other grids' open plans."""
        grid, n_cd = self.grid, self.n_cd
        # Visits per cadre and day (the daily cap). A one-grid re-plan also counts the open plans of
        # the cadres' families in other grids: her day is just as full whichever grid the families are in.
        day_load = np.zeros((n_cd, self.T), dtype=np.int64)
        resolver = _Resolver(self.eligible, self.cadre_grids, self.load, self.fpo,
                             self.rules.max_visits_per_cadre_per_day, day_load)
        self.resolver = resolver
        if grid is not None and len(open_plans) and n_cd:
            other = open_plans[open_plans["household_id"].astype(str).map(self.all_hh_grid).fillna(str(grid))
                               .ne(str(grid))]
            if len(other):
                oc = self.cpos.get_indexer(other["cadre_id"].astype(str))
                od_other, ok = _as_days(other["due_date"], self.as_of64)
                late_urgent = _bool_col(other, "urgent") & (od_other < 0)
                od_other = np.where(late_urgent, 0, od_other)
                resolver.count(oc[ok & (oc >= 0)], od_other[ok & (oc >= 0)])
        # A plan closed by a visit made today held its cadre's day when the day began (the morning
        # run counted it): freed, that place went to another family in the evening run or in a
        # replay of the day, a visit the day's first run did not plan and the days after did not need.
        if held_plans is not None and len(held_plans) and n_cd:
            hc = self.cpos.get_indexer(held_plans["cadre_id"].astype(str))
            hd, ok = _as_days(held_plans["due_date"], self.as_of64)
            hd = np.maximum(hd, 0)  # a late one was made today (and counted today that morning, or near it)
            resolver.count(hc[ok & (hc >= 0)], hd[ok & (hc >= 0)])

    # ---- recording visits ---------------------------------------------------------------------
    def emit(self, idx, cadre_idx, due, ws, we, reason, urgent_flag) -> None:
        """Record planned visits (family rows, cadre rows, due day, window, reason, urgent)."""
        self.plan_parts.append({"_i": np.asarray(idx, dtype=np.int64), "_c": np.asarray(cadre_idx, dtype=np.int64),
                                "_due": np.asarray(due, dtype=np.int64), "_ws": np.asarray(ws, dtype=np.int64),
                                "_we": np.asarray(we, dtype=np.int64), "reason": np.asarray(reason, dtype=object),
                                "urgent": np.asarray(urgent_flag, dtype=bool)})

    def emit_moves(self, idx, from_c, to_c, due, reason, move_reason) -> None:
        """Record visits done by another cadre than ``from_c`` (``reason``: the visit's, ``move_reason``: why)."""
        if len(idx):
            self.moved_parts.append({"_i": np.asarray(idx, dtype=np.int64),
                                     "_from": np.asarray(from_c, dtype=np.int64),
                                     "_to": np.asarray(to_c, dtype=np.int64), "_due": np.asarray(due, dtype=np.int64),
                                     "_reason": np.asarray(reason, dtype=object),
                                     "reason": np.asarray(move_reason, dtype=object)})

    def move_reason_for(self, c_from: np.ndarray, day: np.ndarray) -> np.ndarray:
        """Why cadre ``c_from`` cannot make her visit on ``day``: leave or her 4+1 weekday."""
        on_leave, fpo = self.on_leave, self.fpo
        leave_day = on_leave[c_from, np.clip(day, 0, self.T - 1)]
        return np.where(leave_day | on_leave[c_from, :self.H].any(axis=1) & ~fpo[c_from], MOVE_LEAVE,
                        MOVE_FOUR_PLUS_ONE)

    def resolve_and_emit(self, idx, ws, we, latest, reasons, priority, shown_ws=None, slip_until=None, stop_at=None):
        """Non-urgent visits: choose day and cadre, record substitutions and slips; return days.

        ``priority``: sort keys (``np.lexsort`` order, the last one first) deciding who gets the
        last places of a full day. ``shown_ws`` is the window start written to the plan (the
        recommended period); the day may still be earlier when holidays leave no possible day
        inside it, or when the later days of the window are full.
        """
        T, shortfall_rows = self.T, self.shortfall_rows
        shown_ws = ws if shown_ws is None else shown_ws
        c0 = self.assigned[idx]
        rank = np.empty(len(idx), dtype=np.int64)
        rank[np.lexsort((self.hrank[idx], *priority))] = np.arange(len(idx))
        day, c1, sub, slipped, own_full, cap_hit = self.resolver.pick(c0, ws, we, latest, self.hgrid[idx], rank,
                                                                      slip_until, stop_at=stop_at)
        planned = day >= 0
        for i, full in zip(idx[day == -1], cap_hit[day == -1]):
            shortfall_rows.append((int(i), SHORTFALL_DAY_FULL if full else SHORTFALL_UNPLANNABLE))
        # A slip is a shortfall when the daily cap caused it, or when the official calendar had a
        # working day in the window (else the holidays did: nobody could have visited).
        if slipped.any():
            wd_cum = np.r_[0, np.cumsum(self.workday)]
            lo = np.clip(ws[slipped], 0, T)
            hi = np.clip(we[slipped] + 1, 0, T)
            had_workday = wd_cum[hi] - wd_cum[lo] > 0
            for i, full, wd in zip(idx[slipped], cap_hit[slipped], had_workday):
                if full:
                    shortfall_rows.append((int(i), SHORTFALL_DAY_FULL))
                elif wd:
                    shortfall_rows.append((int(i), SHORTFALL_SLIPPED))
        p = planned
        self.emit(idx[p], c1[p], day[p], np.minimum(shown_ws[p], day[p]), we[p], reasons[p], np.zeros(p.sum(), bool))
        s = sub & p
        self.emit_moves(idx[s], c0[s], c1[s], day[s], reasons[s],
                        np.where(own_full[s], MOVE_DAY_FULL, self.move_reason_for(c0[s], day[s])))
        return day

    # ---- carried open plans -----------------------------------------------------------------
    def carry_open_plans(self) -> None:
        """Keep the open plans (id, date, and their cadre where possible) and count them into the day loads.

        Sets the standing routine open plans the cadence chain fills around (``fixed_*``), the
        ``(family, reason)`` keys of all open plans and the keys of the kept urgent ones.
        """
        T, n_hh, op = self.T, self.n_hh, self.op
        assigned, routine, hgrid, load = self.assigned, self.routine, self.hgrid, self.load
        on_leave, fpo, eligible, cadre_grids = self.on_leave, self.fpo, self.eligible, self.cadre_grids
        resolver = self.resolver
        move_reason_for, emit_moves = self.move_reason_for, self.emit_moves
        self.routine_prev = np.where(self.has_last, self.last_day, -_BIG)
        # Routine open plans that stand (kept in this plan, or beyond the horizon): the cadence chain
        # counts them as visits and only fills the gaps around them.
        fixed_i = np.zeros(0, dtype=np.int64)
        fixed_d = np.zeros(0, dtype=np.int64)
        fixed_ws = np.zeros(0, dtype=np.int64)  # their window start (the due day for old rows without one)
        fixed_reason = np.zeros(0, dtype=object)
        open_reason_keys: set[tuple[int, str]] = set()
        kept_urgent_keys: set[tuple[int, int, str]] = set()
        if len(op):
            oi = op["_i"].to_numpy(dtype=np.int64)
            od = op["_d"].to_numpy(dtype=np.int64)
            o_urg = op["_urgent"].to_numpy()
            o_reason = op["reason"].to_numpy(dtype=object)
            is_routine_reason = np.isin(o_reason.astype(str), list(CADENCE_REASONS))
            r = is_routine_reason & ~o_urg & routine[oi]
            # The window each open plan was given (old rows without one: the due day).
            o_ws_all = od.copy()
            if "window_start" in op.columns:
                d, ok = _as_days(op["window_start"], self.as_of64)
                o_ws_all[ok] = d[ok]
            # Open plans a little past the horizon (a visit that slipped, or whose window reached past
            # it) are kept like the others: they are in the day loads, and a re-run plans them again
            # identically instead of dropping them or planning a twin on another day.
            beyond = r & (od > T - 1)
            fixed_i, fixed_d, fixed_ws, fixed_reason = oi[beyond], od[beyond], o_ws_all[beyond], o_reason[beyond]
            open_reason_keys = set(zip(oi.tolist(), o_reason.tolist()))
            inside = (od <= T - 1) & ((assigned[oi] >= 0) | o_urg)
            oi, od, o_urg, o_reason = oi[inside], od[inside], o_urg[inside], o_reason[inside]
            o_ids = op["visit_id"].astype(str).to_numpy(dtype=object)[inside]
            o_cadre = self.cpos.get_indexer(op["cadre_id"].astype(str).to_numpy()[inside])
            # The window of an open plan is kept when the caller passes it back.
            o_ws, o_we = od.copy(), od.copy()
            for col, target_arr in (("window_start", o_ws), ("window_end", o_we)):
                if col in op.columns:
                    d, ok = _as_days(op[col].to_numpy()[inside], self.as_of64)
                    target_arr[ok] = d[ok]
            target = assigned[oi]
            od_all = od

            # Routine plans past their due day, window still open: announced and possibly under way,
            # so they stand as they are, with whoever holds them (their day is gone: no calendar or
            # room to judge). Their visit is still to be made: it is counted below, after the plans
            # that have a day.
            past = (od < 0) & ~o_urg

            def can_take(c: np.ndarray, family_cadre: bool) -> np.ndarray:
                c_safe = np.where(c >= 0, c, 0)
                od = np.clip(od_all, 0, T - 1)  # overdue urgent plans: availability from today
                # Same rule as fresh urgent visits: the family's cadre answers unless she is a "4+1"
                # cadre (in the office most days) or on leave.
                urgent_ok = ~on_leave[c_safe, od] & (~fpo[c_safe] if family_cadre else True)
                fits = np.where(o_urg, urgent_ok, eligible[c_safe, od] | past)
                in_grid = self.covers(c_safe, oi)
                return (c >= 0) & fits & in_grid

            # Who does an open plan: the family's cadre if she can that day, else whoever already holds
            # the plan (a substitute chosen by an earlier run: re-runs must not reshuffle), else a colleague.
            # Kept plans count toward the load of their day before anything new is planned; handing a
            # plan back to the family's cadre needs room on her day (else it stays where it is), so a
            # plan a colleague took because that day was full stays with the colleague on a re-run.
            target_ok = can_take(target, True)
            own_ok = can_take(o_cadre, False)
            hand = target_ok & ~o_urg & (o_cadre != target) & ~past
            final_c = np.where(target_ok & ~hand, target, np.where(own_ok, o_cadre, target))
            final_c = np.where(past & own_ok, o_cadre, final_c)
            ok_day = (target_ok & ~hand) | own_ok
            load_day = np.where(o_urg, np.maximum(od, 0), od)  # an overdue urgent visit is due today
            resolver.count(final_c[ok_day], load_day[ok_day])
            hand_rows = np.flatnonzero(hand)
            for k in hand_rows[np.lexsort((o_ids[hand_rows].astype(str), od[hand_rows]))]:
                if resolver.has_room(target[k], od[k]):
                    if own_ok[k]:
                        resolver.count(final_c[k], od[k], by=-1)  # the holder gives it up
                    final_c[k], ok_day[k] = target[k], True
                    resolver.count(target[k], od[k])
            need = ~ok_day & ~o_urg & ~past
            if need.any():
                rows = np.flatnonzero(need)
                rank = np.empty(len(rows), dtype=np.int64)
                rank[np.lexsort((o_ids[rows].astype(str), od[rows]))] = np.arange(len(rows))
                d, c1, *_ = resolver.pick(target[rows], od[rows], od[rows], np.ones(len(rows), bool),
                                          hgrid[oi[rows]], rank, allow_slip=False)
                good = d == od[rows]
                final_c[rows[good]] = c1[good]
                ok_day[rows[good]] = True
            for k in np.flatnonzero(~ok_day & o_urg):
                pool = cadre_grids.get(hgrid[oi[k]], np.zeros(0, np.int64))
                pool = pool[~on_leave[pool, min(max(od[k], 0), T - 1)]]
                if len(pool):
                    final_c[k] = pool[np.lexsort((pool, load[pool], resolver.sub_load[pool]))[0]]
                    resolver.sub_load[final_c[k]] += 1
                    ok_day[k] = True
                    resolver.count(final_c[k], load_day[k])
            # A plan past its due day takes its holder's first day with room from today to its
            # window's end (where she fits the late visit in), the earliest-closing first. Counted
            # nowhere, its visit shared a day with a new one: a cadre whose late visit had to be
            # made today was given another visit today, over the daily cap, when the new one could
            # go the next day.
            late = np.flatnonzero(ok_day & past)
            if len(late):
                late = late[np.lexsort((o_ids[late].astype(str), o_we[late], final_c[late]))]
                c_late = final_c[late]
                starts = np.flatnonzero(np.r_[True, c_late[1:] != c_late[:-1]])
                turn = np.arange(len(late)) - np.repeat(starts, np.diff(np.r_[starts, len(late)]))
                for k in range(int(turn.max()) + 1):  # one late plan per cadre at a time
                    rows = late[turn == k]
                    d = resolver._best_day(final_c[rows], np.zeros(len(rows), dtype=np.int64),
                                           np.clip(o_we[rows], 0, T - 1), np.zeros(len(rows), dtype=bool))
                    resolver.count(final_c[rows[d >= 0]], d[d >= 0])
            keep = ok_day
            self.plan_parts.append({"_i": oi[keep], "_c": final_c[keep], "_due": od[keep], "_ws": o_ws[keep],
                                    "_we": o_we[keep], "reason": o_reason[keep], "urgent": o_urg[keep],
                                    "_vid": o_ids[keep]})
            kept_urgent_keys = set(zip(oi[keep & o_urg].tolist(), od[keep & o_urg].tolist(),
                                       o_reason[keep & o_urg].tolist()))
            # ``moved`` lists every visit done by someone other than the family's cadre (both are told
            # in the digest), and open plans this run hands from one cadre to another.
            by_other = keep & (target >= 0) & (final_c != target)
            if by_other.any():
                # Full rather than away when she could have visited on some day of the plan's window.
                could = resolver.first_on_or_after[np.maximum(target, 0), np.clip(o_ws, 0, T - 1)] <= o_we
                why = np.where(o_urg[by_other], MOVE_URGENT,
                               np.where(could[by_other], MOVE_DAY_FULL,
                                        move_reason_for(target[by_other], od[by_other])))
                emit_moves(oi[by_other], target[by_other], final_c[by_other], od[by_other], o_reason[by_other], why)
            handed = keep & (target >= 0) & (final_c == target) & (o_cadre >= 0) & (o_cadre != target)
            if handed.any():
                emit_moves(oi[handed], o_cadre[handed], final_c[handed], od[handed], o_reason[handed],
                           np.full(handed.sum(), MOVE_REASSIGNED, dtype=object))
            standing = keep & np.isin(o_reason.astype(str), list(CADENCE_REASONS)) & ~o_urg & routine[oi]
            fixed_i = np.concatenate([fixed_i, oi[standing]])
            fixed_d = np.concatenate([fixed_d, od[standing]])
            fixed_ws = np.concatenate([fixed_ws, o_ws[standing]])
            fixed_reason = np.concatenate([fixed_reason, o_reason[standing]])
        fixed_order = np.lexsort((fixed_d, fixed_i))
        fixed_i, fixed_d = fixed_i[fixed_order], fixed_d[fixed_order]
        self.fixed_d, self.fixed_ws, self.fixed_reason = fixed_d, fixed_ws[fixed_order], fixed_reason[fixed_order]
        self.fixed_start = np.searchsorted(fixed_i, np.arange(n_hh), side="left")
        self.fixed_end = np.searchsorted(fixed_i, np.arange(n_hh), side="right")
        self.open_reason_keys, self.kept_urgent_keys = open_reason_keys, kept_urgent_keys

    # ---- urgent visits (ignore the calendar and the daily cap) ------------------------------
    def plan_urgent_visits(self) -> None:
        """Urgent requests within their deadline, by the family's cadre or a first responder of the grid."""
        # Planned before the routine ones: safety first, and the time an urgent visit takes that day
        # is counted, so the routine visits of that cadre-day make room around it.
        ur, T = self.ur, self.T
        if not len(ur):
            return
        assigned, fpo, on_leave, load, hgrid = self.assigned, self.fpo, self.on_leave, self.load, self.hgrid
        cadre_grids, resolver, kept_urgent_keys = self.cadre_grids, self.resolver, self.kept_urgent_keys
        ui = ur["_i"].to_numpy(dtype=np.int64)
        req_day, _ = _as_days(ur["_req"], self.as_of64)
        dl_day, _ = _as_days(ur["_deadline"], self.as_of64)
        u_reason = ur["reason"].to_numpy(dtype=object)
        first_resp = np.isin(self.cd["role"].astype(str).to_numpy(), list(self.rules.first_responder_roles))
        for k in range(len(ui)):
            i = ui[k]
            if (int(i), int(dl_day[k]), u_reason[k]) in kept_urgent_keys:
                continue  # the same visit, already planned and kept above
            lo = int(min(max(req_day[k], 0), T - 1))
            hi = int(min(max(dl_day[k], lo), T - 1))
            c0 = assigned[i]
            if c0 >= 0 and not fpo[c0] and not on_leave[c0, lo:hi + 1].any():
                chosen = c0
            else:
                pool = cadre_grids.get(hgrid[i], np.zeros(0, np.int64))
                pool = pool[~on_leave[pool, lo:hi + 1].any(axis=1)] if len(pool) else pool
                if not len(pool):
                    self.shortfall_rows.append((int(i), SHORTFALL_URGENT))
                    continue
                order = np.lexsort((pool, load[pool], resolver.sub_load[pool], fpo[pool], ~first_resp[pool]))
                chosen = int(pool[order[0]])
                resolver.sub_load[chosen] += 1
            self.emit([i], [chosen], [dl_day[k]], [req_day[k]], [dl_day[k]], [u_reason[k]], [True])
            resolver.count(chosen, max(int(dl_day[k]), 0))
            if c0 >= 0 and chosen != c0:
                self.emit_moves([i], [c0], [chosen], [dl_day[k]], [u_reason[k]], [MOVE_URGENT])

    # ---- follow-ups -------------------------------------------------------------------------
    def plan_follow_ups(self) -> None:
        """Follow-ups on the first day with room within ``follow_up_within_days`` of their date."""
        # Before the routine visits: a follow-up has a fixed date and a short window, a routine visit
        # can still move to an earlier day of its window when the day is full.
        fu, H, overdue_within = self.fu, self.H, self.overdue_within
        if not len(fu):
            return
        away_from_d, away_from_ok = self.away_from_d, self.away_from_ok
        away_until_d, away_until_ok = self.away_until_d, self.away_until_ok
        deferred_by_away = self.deferred_by_away
        fi = fu["_i"].to_numpy(dtype=np.int64)
        fd = fu["_d"].to_numpy(dtype=np.int64)
        fr = fu["reason"].to_numpy(dtype=object)
        known = np.array([(int(i), r) in self.open_reason_keys for i, r in zip(fi, fr)], dtype=bool)
        usable = ~known & (self.assigned[fi] >= 0)
        fi, fd, fr = fi[usable], fd[usable], fr[usable]
        ws = np.maximum(fd, 0)
        we = np.where(fd >= 0, fd + self.rules.follow_up_within_days, ws + overdue_within)
        # Away when the follow-up opens: right after the return (if recorded), else not planned.
        af, au, au_ok = away_from_d[fi], away_until_d[fi], away_until_ok[fi]
        away_then = away_from_ok[fi] & (af <= ws) & (~au_ok | (au >= ws))
        deferred_by_away[fi[away_then]] = True
        ws = np.where(away_then, np.where(au_ok, au + 1, _BIG), ws)
        we = np.where(away_then, np.where(au_ok, au + 1 + overdue_within, _BIG), we)
        # Leaving during the window: visit before departure, never slip into the absence.
        leaves = away_from_ok[fi] & (af > ws) & (af <= we)
        we = np.where(leaves, af - 1, we)
        slip_until = np.where(away_from_ok[fi] & (af > ws), af - 1, _BIG)
        ok = ws <= H - 1
        day = self.resolve_and_emit(fi[ok], ws[ok], we[ok], np.zeros(ok.sum(), dtype=bool), fr[ok],
                                    (fd[ok], fr[ok].astype(str), ws[ok]), slip_until=slip_until[ok])
        deferred_by_away[fi[ok][day == -2]] = True

    def report_late_standing(self, idx, ws, we) -> None:
        """Shortfall of families whose step's visit is an open plan due after the step's window.

        The same reason ``resolve_and_emit`` gives a visit that slips (the plan slipped when it was
        made; a re-run finds the same days full): the daily cap when the family's cadre or a
        colleague could visit in the window by the calendar, else the cadre's leave or 4+1 weekday
        when the official calendar had a working day in it; none when only holidays did.
        """
        T = self.T
        lo, hi = np.clip(np.maximum(ws, 0), 0, T - 1), np.clip(we, 0, T - 1)
        wd_cum = np.r_[0, np.cumsum(self.workday)]
        for i, a, b in zip(idx, lo, hi):
            c0 = self.assigned[i]
            pool = self.cadre_grids.get(self.hgrid[i], np.zeros(0, np.int64))
            if bool(self.eligible[np.append(pool, c0), a:b + 1].any()):
                self.shortfall_rows.append((int(i), SHORTFALL_DAY_FULL))
            elif wd_cum[b + 1] - wd_cum[a] > 0:
                self.shortfall_rows.append((int(i), SHORTFALL_SLIPPED))

    # ---- routine visits, one chain step at a time --------------------------------------------
    def plan_routine_visits(self) -> None:
        """Chain each family's routine visits from its last one, around the standing open plans."""
        H, T, overdue_within, rules = self.H, self.T, self.overdue_within, self.rules
        interval, back_day, assigned, cad_reason = self.interval, self.back_day, self.assigned, self.cad_reason
        away_from_d, away_from_ok = self.away_from_d, self.away_from_ok
        away_until_d, away_until_ok = self.away_until_d, self.away_until_ok
        fixed_d, fixed_end = self.fixed_d, self.fixed_end
        # one sentinel so families without open plans index safely
        padded_d, padded_ws = np.append(fixed_d, _BIG), np.append(self.fixed_ws, _BIG)
        padded_reason = np.append(self.fixed_reason, None)
        deferred_by_away, resolver = self.deferred_by_away, self.resolver
        active = np.flatnonzero(self.routine & (assigned >= 0) & ~self.away_all_horizon)
        prev = self.routine_prev[active]
        after_return = np.zeros(len(active), dtype=bool)  # next visit must wait for the return home
        # Pointer into the standing open plans of each family. A plan due on or before the last visit
        # is no step after it (the visit closed another plan of the family, e.g. the next step's, and
        # this one stays open until its window ends): counted as the first step, it took the chain
        # back before the visit and a visit already made was planned again.
        fixed_family = np.repeat(np.arange(self.n_hh), self.fixed_end - self.fixed_start)
        before_last = np.zeros(self.n_hh + 1, dtype=np.int64)
        np.add.at(before_last, fixed_family, fixed_d <= self.routine_prev[fixed_family])
        next_fixed = self.fixed_start[active] + before_last[active]
        first = True
        while len(active):
            iv = interval[active]
            deadline = prev + iv
            back = back_day[active]
            if first:
                overdue = (deadline < np.maximum(back, 0)) | (prev <= -_BIG // 2)
                start = np.maximum(np.maximum(prev + 1, 0), back)
                ws = np.where(overdue, start, np.maximum(prev + 1, np.maximum(back, 0)))
                we = np.where(overdue, start + overdue_within, deadline)
                latest = ~overdue
            else:
                ws = prev + 1
                we = deadline
                latest = np.ones(len(active), dtype=bool)
            # An absence that starts later (住院, 外出): visit before she leaves when her cadre can,
            # else right after the return; never while away, and not at all when no return is recorded.
            af, au, au_ok = away_from_d[active], away_until_d[active], away_until_ok[active]
            future_away = away_from_ok[active] & (af > 0)
            hits = future_away & (af <= we) & (~au_ok | (au >= ws))
            cad_now = assigned[active]
            first_possible = resolver.first_on_or_after[cad_now, np.clip(ws, 0, T - 1)]
            before = hits & (af - 1 >= ws) & (first_possible <= af - 1) & (ws < T)
            after = (hits & ~before) | after_return
            we = np.where(before, af - 1, we)
            ws = np.where(after, np.where(au_ok, au + 1, _BIG), ws)
            we = np.where(after, np.where(au_ok, au + 1 + overdue_within, _BIG), we)
            latest = latest & ~after
            deferred_by_away[active[after]] = True
            # Who gets the last places of a full day: the visit whose window closes first (a family due
            # today before an overdue one that may still go tomorrow), then the most overdue (never
            # visited first), then the shortest cadence.
            due_key = np.where(latest, we, deadline)
            # A visit may slip past holidays, but not into an absence that starts after its window.
            slip_until = np.where(future_away & (af > we), af - 1, _BIG)
            # Only visits whose deadline lies inside the horizon are planned now (the next run does the rest);
            # overdue ones are planned when their window opens inside it.
            inside = np.where(latest, we <= H - 1, ws <= H - 1)
            active, ws, we, latest = active[inside], ws[inside], we[inside], latest[inside]
            slip_until = slip_until[inside]
            next_fixed, due_key = next_fixed[inside], due_key[inside]
            if not len(active):
                break
            # A standing open plan due by the deadline is this step's visit: nothing new to plan. So is
            # one of the step's own reason whose window opened by the deadline although it is due
            # after it (it slipped past its window when it was planned, e.g. days full): it is the
            # visit planned for this step, already announced, and a colleague with room now must not
            # get a second one. The step's window moves with today while a visit is overdue, so the
            # plan's due day alone does not say which step it is.
            has_fixed = next_fixed < fixed_end[active]
            at = np.minimum(next_fixed, len(fixed_d))
            fixed_day = np.where(has_fixed, padded_d[at], _BIG)
            on_time = has_fixed & (fixed_day <= we)
            slipped_here = (has_fixed & ~on_time & (padded_ws[at] <= we)
                            & (padded_reason[at] == cad_reason[active]))
            satisfied = on_time | slipped_here
            if slipped_here.any():
                self.report_late_standing(active[slipped_here], ws[slipped_here], we[slipped_here])
            day = np.where(satisfied, fixed_day, -1)
            todo_rows = np.flatnonzero(~satisfied)
            if len(todo_rows):
                t_idx = active[todo_rows]
                slack = np.maximum(1, np.round(interval[t_idx] * rules.window_fraction)).astype(np.int64)
                shown = np.where(latest[todo_rows], np.maximum(ws[todo_rows], we[todo_rows] - slack), ws[todo_rows])
                # A visit that would slip into the window of the family's next open plan or later is that
                # open plan (e.g. one that slipped the same way in an earlier run, or the next step's
                # visit when a missed one is planned again): nothing new is planned.
                stop_at = np.minimum(fixed_day, np.where(has_fixed, padded_ws[at], _BIG))
                day[todo_rows] = self.resolve_and_emit(
                    t_idx, ws[todo_rows], we[todo_rows], latest[todo_rows], cad_reason[t_idx],
                    (interval[t_idx], due_key[todo_rows], we[todo_rows]), shown, slip_until[todo_rows],
                    stop_at=stop_at[todo_rows])
            served = day == -3
            day = np.where(served, fixed_day, day)
            blocked = day == -2
            # A standing plan past its due day (window still open) is a visit too: the chain goes on from it.
            going = (day >= 0) | blocked | satisfied
            # Blocked by the absence: the same visit is tried again after the return.
            prev = np.where(blocked, ws - 1, day)[going]
            after_return = blocked[going]
            next_fixed = (next_fixed + (satisfied | served))[going]
            active = active[going]
            first = False

    # ---- assemble ---------------------------------------------------------------------------
    def day_to_ts(self, d: np.ndarray) -> pd.DatetimeIndex:
        """Day offsets as midnight timestamps (datetime64[s])."""
        return pd.DatetimeIndex((self.as_of64 + np.asarray(d, dtype=np.int64).astype("timedelta64[D]")).astype(
            "datetime64[s]"))

    def assemble(self) -> SchedulePlan:
        """The recorded visits, moves and shortfalls as the frames of a ``SchedulePlan``, plus the notices."""
        as_of64, hid, hgrid, cid, n_cd = self.as_of64, self.hid, self.hgrid, self.cid, self.n_cd
        assigned, interval, routine = self.assigned, self.interval, self.routine
        plan_parts, moved_parts, shortfall_rows = self.plan_parts, self.moved_parts, self.shortfall_rows
        day_to_ts = self.day_to_ts
        if plan_parts:
            parts = [pd.DataFrame(p) for p in plan_parts]
            pl = pd.concat(parts, ignore_index=True)
        else:
            pl = pd.DataFrame({k: np.zeros(0, dtype=t) for k, t in
                               [("_i", np.int64), ("_c", np.int64), ("_due", np.int64), ("_ws", np.int64),
                                ("_we", np.int64), ("reason", object), ("urgent", bool)]})
        if "_vid" not in pl.columns:
            pl["_vid"] = None
        due_dates = as_of64 + pl["_due"].to_numpy(dtype=np.int64).astype("timedelta64[D]")
        vid = pl["_vid"].to_numpy(dtype=object).copy()
        fresh = pd.isna(vid)
        vid[fresh] = _stable_ids(hid[pl["_i"].to_numpy(dtype=np.int64)[fresh]], due_dates[fresh],
                                 pl["reason"].to_numpy(dtype=object)[fresh])
        plans = pd.DataFrame({
            "visit_id": vid,
            "household_id": hid[pl["_i"].to_numpy(dtype=np.int64)],
            "cadre_id": cid[pl["_c"].to_numpy(dtype=np.int64)] if n_cd else np.zeros(len(pl), dtype=object),
            "grid_id": hgrid[pl["_i"].to_numpy(dtype=np.int64)],
            "due_date": day_to_ts(pl["_due"].to_numpy()),
            "window_start": day_to_ts(pl["_ws"].to_numpy()),
            "window_end": day_to_ts(pl["_we"].to_numpy()),
            "reason": pl["reason"].to_numpy(dtype=object),
            "urgent": pl["urgent"].to_numpy(dtype=bool),
            "status": "planned",
        })
        # Carried plans come first, so a regenerated twin of an open plan is dropped.
        plans = plans.drop_duplicates("visit_id", keep="first")
        plans = plans.sort_values(["due_date", "grid_id", "household_id", "reason", "visit_id"], kind="mergesort")
        plans = plans.reset_index(drop=True)[PLAN_COLUMNS]
        plans["urgent"] = plans["urgent"].astype(bool)

        has_a = assigned >= 0
        assignments = pd.DataFrame({
            "household_id": hid[has_a],
            "cadre_id": cid[assigned[has_a]] if n_cd else np.zeros(0, dtype=object),
            "grid_id": hgrid[has_a],
            "assigned": np.where(self.kept[has_a], "kept", "new"),
            "interval_days": _nullable_int(interval[has_a], routine[has_a]),
        }).sort_values("household_id", kind="mergesort").reset_index(drop=True)

        if shortfall_rows:
            sf_idx = np.array([r[0] for r in shortfall_rows], dtype=np.int64)
            shortfall = pd.DataFrame({"household_id": hid[sf_idx], "grid_id": hgrid[sf_idx],
                                      "reason": [r[1] for r in shortfall_rows]})
            shortfall = shortfall.drop_duplicates().sort_values(["grid_id", "household_id", "reason"],
                                                                kind="mergesort").reset_index(drop=True)
        else:
            shortfall = pd.DataFrame({c: pd.Series(dtype=object) for c in SHORTFALL_COLUMNS})

        if moved_parts:
            mv = pd.concat([pd.DataFrame(m) for m in moved_parts], ignore_index=True)
            mv_due = as_of64 + mv["_due"].to_numpy(dtype=np.int64).astype("timedelta64[D]")
            mv_ids = _stable_ids(hid[mv["_i"].to_numpy(dtype=np.int64)], mv_due,
                                 mv["_reason"].to_numpy(dtype=object))
            # Carried plans keep their own id: look the moved visits up in the plan.
            concerned = plans[plans["household_id"].isin(hid[mv["_i"].to_numpy(dtype=np.int64)])]
            id_lookup = dict(zip(zip(concerned["household_id"].to_numpy(dtype=object),
                                     concerned["due_date"].to_numpy().astype("datetime64[D]"),
                                     concerned["reason"].to_numpy(dtype=object)),
                                 concerned["visit_id"].to_numpy(dtype=object)))
            mv_keys = zip(hid[mv["_i"].to_numpy(dtype=np.int64)], mv_due, mv["_reason"].to_numpy(dtype=object))
            moved = pd.DataFrame({
                "visit_id": [id_lookup.get(k, fallback) for k, fallback in zip(mv_keys, mv_ids)],
                "household_id": hid[mv["_i"].to_numpy(dtype=np.int64)],
                "from_cadre_id": cid[mv["_from"].to_numpy(dtype=np.int64)],
                "to_cadre_id": cid[mv["_to"].to_numpy(dtype=np.int64)],
                "due_date": day_to_ts(mv["_due"].to_numpy()),
                "reason": mv["reason"].to_numpy(dtype=object),
            }).drop_duplicates("visit_id").sort_values(["due_date", "visit_id"], kind="mergesort").reset_index(
                drop=True)
        else:
            moved = pd.DataFrame({c: pd.Series(dtype=object) for c in MOVED_COLUMNS})

        away_from_d, away_until_d, away_until_ok = self.away_from_d, self.away_until_d, self.away_until_ok
        away_sel = (self.away_now & (routine | self.has_follow)) | self.deferred_by_away
        away = pd.DataFrame({
            "household_id": hid[away_sel],
            "grid_id": hgrid[away_sel],
            "away_from": day_to_ts(away_from_d[away_sel]),
            "away_until": pd.DatetimeIndex(np.where(away_until_ok[away_sel],
                                                    as_of64 + away_until_d[away_sel].astype("timedelta64[D]"),
                                                    np.datetime64("NaT"))).astype("datetime64[s]"),
        }).sort_values("household_id", kind="mergesort").reset_index(drop=True)

        notices = _notices(plans, assignments, moved, self.as_of, self.H)
        return SchedulePlan(plans=plans, assignments=assignments, shortfall=shortfall, moved=moved, away=away,
                            notices=notices)


def _notices(plans: pd.DataFrame, assignments: pd.DataFrame, moved: pd.DataFrame, as_of: date,
             horizon_days: int) -> pd.DataFrame:
    """One Chinese digest per cadre concerned by this run (no family details beyond counts and dates)."""
    per = plans.groupby("cadre_id").agg(n=("visit_id", "size"), n_urgent=("urgent", "sum"), first=("due_date", "min"))
    new = assignments[assignments["assigned"] == "new"].groupby("cadre_id").size().rename("n_new")
    out_moves = moved.groupby("from_cadre_id").size().rename("n_out")
    in_moves = moved.groupby("to_cadre_id").size().rename("n_in")
    digest = per.join(new, how="outer").join(out_moves, how="outer").join(in_moves, how="outer")
    digest = digest.fillna({"n": 0, "n_urgent": 0, "n_new": 0, "n_out": 0, "n_in": 0})
    digest = digest.sort_index()
    w = wording("schedule_visits/plan_digest.toml")
    head = w["planned"]
    first_text = pd.to_datetime(digest["first"]).dt.strftime("%Y-%m-%d").to_numpy(dtype=object)
    texts = []
    for n, n_urgent, first, n_new, n_out, n_in in zip(
            digest["n"].to_numpy(dtype=np.int64), digest["n_urgent"].to_numpy(dtype=np.int64), first_text,
            digest["n_new"].to_numpy(dtype=np.int64), digest["n_out"].to_numpy(dtype=np.int64),
            digest["n_in"].to_numpy(dtype=np.int64)):
        parts = [head.format(as_of=f"{as_of:%Y-%m-%d}", horizon_days=horizon_days, n=n)]
        if n_urgent:
            parts.append(w["urgent"].format(n_urgent=n_urgent))
        if n and isinstance(first, str):
            parts.append(w["first"].format(first=first))
        if n_new:
            parts.append(w["new"].format(n_new=n_new))
        if n_out:
            parts.append(w["moved_out"].format(n_out=n_out))
        if n_in:
            parts.append(w["moved_in"].format(n_in=n_in))
        texts.append("；".join(parts) + "。")
    rows = list(zip(digest.index.astype(str), texts))
    return pd.DataFrame(rows, columns=NOTICE_COLUMNS)


# ---------------------------------------------------------------------------------------------
# Coverage
# ---------------------------------------------------------------------------------------------
def _empty_coverage() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object if c in ("level", "unit_id") else np.int64)
                         for c in COVERAGE_COLUMNS})


def compute_coverage(plans: pd.DataFrame, visits: pd.DataFrame, households: pd.DataFrame,
                     as_of: date) -> pd.DataFrame:
    """Visit coverage (走访覆盖率) per grid, village and cadre.

    In: ``plans`` (``visit_id, household_id, cadre_id, grid_id, due_date, window_start,
    window_end``), ``visits`` (``visit_id, plan_id, household_id, visited_at``; plan_id may be
    empty), ``households`` (``household_id, grid_id``, optional ``village_id, away_from,
    away_until, deregistered_at``: no visit from the moment a family left the register counts).

    Out: ``level ('grid'|'village'|'cadre'), unit_id, due, visited_on_time, late, missed,
    pending, away``. ``due`` counts plans due on or before ``as_of``; each is visited on time
    (a visit closing it, or any visit of the family inside its window), late (visited after
    the window), missed (window over, no visit, family at home), pending (window still open)
    or away (family recorded away on the due date: not counted as missed).
    """
    as_of = as_of.date() if isinstance(as_of, datetime) else as_of
    as_of_ts = pd.Timestamp(as_of)
    p = plans[["visit_id", "household_id", "cadre_id", "grid_id", "due_date", "window_start", "window_end"]].copy()
    p["household_id"] = p["household_id"].astype(str)
    for c in ("due_date", "window_start", "window_end"):
        p[c] = pd.to_datetime(p[c]).dt.normalize()
    p = p[p["due_date"] <= as_of_ts].reset_index(drop=True)
    if p.empty:  # nothing due yet (a registry just imported): no unit has anything to count
        return _empty_coverage()

    v = visits.copy()
    v["household_id"] = v["household_id"].astype(str)
    v["_day"] = pd.to_datetime(v["visited_at"], errors="coerce").dt.tz_localize(None).dt.normalize() \
        if len(v) else pd.Series(dtype="datetime64[ns]")
    v = v[v["_day"].notna() & (v["_day"] <= as_of_ts + pd.Timedelta(days=1))]
    if "deregistered_at" in households.columns and len(v):
        # A visit from the moment its family left the register answers no plan (record_visits'
        # closes_before): a plan missed before the removal is not made late by it.
        off = households.dropna(subset=["deregistered_at"]).drop_duplicates("household_id")
        off = pd.to_datetime(off.set_index(off["household_id"].astype(str))["deregistered_at"])
        gone = pd.to_datetime(v["household_id"].map(off))
        at = pd.to_datetime(v["visited_at"], errors="coerce").dt.tz_localize(None)
        v = v[~(gone.notna() & (at >= gone)).to_numpy(dtype=bool)]

    # visit closing the plan explicitly
    explicit = pd.Series(pd.NaT, index=p.index, dtype="datetime64[ns]")
    if "plan_id" in v.columns and len(v):
        pid = v[v["plan_id"].notna() & v["plan_id"].astype(str).ne("")]
        by_plan = pid.groupby(pid["plan_id"].astype(str))["_day"].min().rename("_e")
        if len(by_plan):
            explicit = p[["visit_id"]].astype(str).merge(by_plan, left_on="visit_id", right_index=True,
                                                         how="left")["_e"]

    # any visit of the family inside the window, else the first one after the window start
    m = p[["visit_id", "household_id", "window_start", "window_end"]].reset_index().merge(
        v[["household_id", "_day"]], on="household_id", how="inner")
    m = m[m["_day"] >= m["window_start"]]
    in_window = m[m["_day"] <= m["window_end"]].groupby("index")["_day"].min()
    after = m.groupby("index")["_day"].min()
    # reindex, not index.map: mapping by an empty Series (no visit in any window yet) fails in pandas
    p["_in"] = in_window.reindex(p.index)
    p["_after"] = after.reindex(p.index)
    p["_explicit"] = explicit

    on_time = (p["_explicit"].notna() & (p["_explicit"] <= p["window_end"])) | p["_in"].notna()
    visited_any = p["_explicit"].notna() | p["_after"].notna()
    late = ~on_time & visited_any
    open_window = ~on_time & ~late & (p["window_end"] >= as_of_ts)

    h = households.copy()
    h["household_id"] = h["household_id"].astype(str)
    h = h.drop_duplicates("household_id").set_index("household_id")
    away_mask = pd.Series(False, index=p.index)
    if "away_from" in h.columns:
        af = pd.to_datetime(p["household_id"].map(h["away_from"]), errors="coerce")
        au = pd.to_datetime(p["household_id"].map(h["away_until"]) if "away_until" in h.columns
                            else pd.Series(pd.NaT, index=p.index), errors="coerce")
        away_mask = af.notna() & (af <= p["due_date"]) & (au.isna() | (au >= p["due_date"]))
    away = ~on_time & ~late & away_mask
    missed = ~on_time & ~late & ~open_window & ~away
    pending = open_window & ~away

    p["due"] = 1
    p["visited_on_time"] = on_time.astype(int)
    p["late"] = late.astype(int)
    p["missed"] = missed.astype(int)
    p["pending"] = pending.astype(int)
    p["away"] = away.astype(int)
    if "village_id" in h.columns:
        p["village_id"] = p["household_id"].map(h["village_id"])
    metrics = ["due", "visited_on_time", "late", "missed", "pending", "away"]
    frames = []
    for level, key in (("grid", "grid_id"), ("village", "village_id"), ("cadre", "cadre_id")):
        if key not in p.columns:
            continue
        g = p.dropna(subset=[key]).groupby(p[key].dropna().astype(str))[metrics].sum().reset_index()
        g = g.rename(columns={key: "unit_id"})
        g.insert(0, "level", level)
        frames.append(g)
    if not frames or all(f.empty for f in frames):
        return _empty_coverage()
    out = pd.concat(frames, ignore_index=True)[COVERAGE_COLUMNS]
    return out.sort_values(["level", "unit_id"], kind="mergesort").reset_index(drop=True)


def on_register(deregistered_at, as_of: date) -> np.ndarray:
    """Which families are still on the register on ``as_of``: not taken off it (迁出, 去世, 注销;
    ``deregistered_at`` empty) or taken off only after that day. A replay of an earlier day
    plans for a family that was on the register then."""
    day = pd.to_datetime(pd.Series(deregistered_at), errors="coerce").dt.normalize()
    return (day.isna() | (day > pd.Timestamp(as_of))).to_numpy(dtype=bool)


def plans_ended_by_deregistration(plans: pd.DataFrame, deregistered: pd.DataFrame, as_of: date) -> np.ndarray:
    """Which of ``plans`` (``household_id, due_date``) a family's removal from the register
    ended (``deregistered``: ``household_id, deregistered_at``): those due on or after the day
    it was taken off, and, once that day has come, every one still open (nobody is to be
    visited). A removal after ``as_of`` (a replay of an earlier day) ends only the plans due
    after it: that day, the family was on the register.

    Ended is not always cancelled: ``plans_missed_before_deregistration`` tells the ended plans
    the cadre had already let pass (missed), the others are cancelled."""
    if plans.empty or deregistered.empty:
        return np.zeros(len(plans), dtype=bool)
    off = _removal_day(plans, deregistered)
    due = pd.to_datetime(plans["due_date"]).to_numpy()
    known = ~pd.isna(off)
    return known & ((due >= off) | (off <= np.datetime64(as_of)))


def plans_missed_before_deregistration(plans: pd.DataFrame, deregistered: pd.DataFrame, as_of: date) -> np.ndarray:
    """Which of the open ``plans`` (``household_id, due_date``, optional ``window_end``) of a family
    taken off the register were missed, not cancelled, by ``as_of``: those whose window (its last
    day, or the due day when that is later or the window unknown) had ended before the removal day,
    once that day has come.

    The rule follows the grace semantics of ``store_plan``: a plan is overdue the day after its
    window and marked ``missed`` once 4 grace days have passed with no visit; during the grace a
    late visit still closes it as ``done``. A removal on or before the window's last day took the
    visit away from the cadre (cancelled: nobody failed to visit). A window over before the removal
    was the cadre's to use while the family was on the register: the plan is what it was, overdue,
    and since the removal also ends the grace days (no visit can follow), it is ``missed`` from the
    removal day and stays in the overdue and coverage figures. A replay of a day before the removal
    (``as_of`` earlier) marks nothing here: that day the family was on the register and the usual
    4-day rule applies. The same rule holds for a removal entered late with its date: a plan the
    4-day rule marked missed meanwhile whose window the removal cut is cancelled (``store_plan``).
    A removal withdrawn (在册 again) gives a plan it marked missed back the rest of its grace days,
    and the plans it cancelled whose window has ended back to the 4-day rule
    (``plans_back_after_withdrawal``).
    A visit made before the removal and recorded later closes a missed plan as ``done`` when its
    window held the visit, else as a late visit (kept ``missed``), and a cancelled one as ``done``
    (``tasks.record_visits``)."""
    if plans.empty or deregistered.empty:
        return np.zeros(len(plans), dtype=bool)
    off = _removal_day(plans, deregistered)
    due = pd.to_datetime(plans["due_date"]).to_numpy(dtype="datetime64[ns]")
    end = (pd.to_datetime(plans["window_end"]).to_numpy(dtype="datetime64[ns]") if "window_end" in plans
           else np.full(len(plans), np.datetime64("NaT"), dtype="datetime64[ns]"))
    last = np.where(pd.isna(end) | (end < due), due, end)
    known = ~pd.isna(off)
    return known & (off <= np.datetime64(as_of)) & (last < off)


def _removal_day(plans: pd.DataFrame, deregistered: pd.DataFrame) -> np.ndarray:
    """The day each plan's family was taken off the register (NaT: on it)."""
    day = pd.to_datetime(deregistered.set_index("household_id")["deregistered_at"], errors="coerce").dt.normalize()
    return pd.to_datetime(plans["household_id"].map(day)).to_numpy(dtype="datetime64[ns]")


GRACE_DAYS = 4
"""Days after a plan's window before an unvisited plan is marked ``missed`` (``store_plan``)."""


def plans_back_after_withdrawal(cancelled: pd.DataFrame, others: pd.DataFrame, as_of: date) -> pd.Series:
    """The status the unvisited ``cancelled`` plans (``household_id, due_date, window_start,
    window_end``) of families back on the register (在册 again: the removal withdrawn) take on
    ``as_of``; None: stays cancelled.

    The register counts such a family as registered throughout (the removal is kept as no
    history), so its cadre's record is that of a family never removed: a plan whose window (its
    last day, or the due day when later) is over is ``missed`` once the grace days are over and
    ``planned`` (overdue) inside them, as the 4-day rule would have left it. A plan whose window
    is still open stays cancelled: the planner plans that visit again. So does one whose visit
    another plan of the family (``others``: ``household_id, due_date``, not cancelled) stands
    for, due inside its window (the removal withdrawn while the window was open, and the visit
    planned again under another id): one visit, not two."""
    out = pd.Series([None] * len(cancelled), index=cancelled.index, dtype=object)
    if cancelled.empty:
        return out
    due = pd.to_datetime(cancelled["due_date"])
    end = pd.to_datetime(cancelled["window_end"])
    last = end.where(end.notna() & (end >= due), due)
    start = pd.to_datetime(cancelled["window_start"]).fillna(due)
    day = pd.Timestamp(as_of)
    over = last < day
    stood_for = pd.Series(False, index=cancelled.index)
    if not others.empty:
        pairs = cancelled[["household_id"]].assign(_start=start, _last=last).reset_index().merge(
            others[["household_id"]].assign(_due=pd.to_datetime(others["due_date"])), on="household_id")
        hit = pairs[(pairs._due >= pairs._start) & (pairs._due <= pairs._last)]["index"].unique()
        stood_for.loc[hit] = True
    back = over & ~stood_for
    out[back & (last < day - pd.Timedelta(days=GRACE_DAYS))] = "missed"
    out[back & (last >= day - pd.Timedelta(days=GRACE_DAYS))] = "planned"
    return out
