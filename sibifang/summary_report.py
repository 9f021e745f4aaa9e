"""Periodic summary report to the party committee and government (工作情况报告): aggregates only.

Pure functions: frames in, a dict of *published* figures out, and the HTML rendered from
``templates/summary_report.html.j2``. No name, ID number, phone or address leaves this module,
and no figure in the report can single out a family. ``summarise`` never returns a raw count
that the report would not show: the dict is what is rendered, stored and validated (the
``report_aggregates`` suite checks every cell of ``aggregates_frame``).

Suppression rule (one rule for every count of households, people, flags, alerts and cases shown:
totals, tables, by-kind counts, per-village alerts, the risk map's tooltips and colours):

1. Primary: a count ``n`` with ``1 <= n < SMALL_COUNT`` is published as ``"<3"``; 0 and counts
   from ``SMALL_COUNT`` up are published exactly.
2. Secondary (complementary) suppression, per breakdown (cells that add up to a total; every
   breakdown has a cell for each part, e.g. alerts still pending, alerts without a village, so
   nothing is left to subtract). A "<3" cell must never be pinned to one value from the total:
   - total printed exactly: the masked cells' sum is public; it pins them when only one cell
     is masked or when they must all be 1 (or all 2). Only then the smallest cell *larger than*
     ``SMALL_COUNT`` is hidden too, as ``"*"`` ("not less than 3");
   - total printed as "<3": the breakdown is published only when a single cell is masked;
   - total not printed but inferable (the risk map covers every registered household, so its
     total is the register; category counts overlap, their sum is assumed known): a "*" is
     added whenever any cell is "<3", so the choice never depends on the masked values.
   With one "*" of at least ``SMALL_COUNT + 1`` no "<3" cell (nor the "*") can be pinned,
   whatever the masked values.
   A table is a breakdown both ways: the risk map's grid rows add up to each grid's households
   (the register, as knowable as the county's) and its level columns to the county totals.
   There ``protect_table`` hides cells across rows *and* columns: each "<3" cell lies on a
   cycle of hidden cells (row, column, row, … back to it) whose other cells are all "*", so 1
   and 2 both fit every known total; every row and every known column with a hidden cell has
   at least two. (A "<3" whose cycle ran through a second "<3" could be pinned: 2 and 1 cannot
   move together.) The one-row table is the rule above for a total not printed.
   The choice depends only on published figures, so two inputs differing only inside masked
   cells (and in no printed total) give the same report. When a breakdown has no cell to hide,
   it is not published (a sentence says so); its total still is.
   Two breakdowns tied row by row are protected together: in the response tables a unit
   cannot have more alerts confirmed than alerts, so an exact figure beside a "*" bounds it
   (5 alerts and 2 confirmed in A, 4 and 4 in B: confirmed "<3" | "*" of 6 gives B = 4, A = 2).
   There each column that has a "<3" gets a "*", taken only in a row with at least 2 alerts
   not confirmed, so both columns can move by one without crossing.
   Likewise the alerts by status and the confirmed count: confirmed ones were delivered, so
   a "*" on the delivered count is taken only when it exceeds the confirmed count.
   (Assumption, as in usual statistical disclosure control: the reader does not exploit the
   rule that chose the "*" cell.)
3. Derived figures: the village rows of the risk map are computed from the *published* grid
   cells, never from raw counts: exact when nothing is masked, otherwise the range the
   published cells imply (``"<5"`` = 1 to 4, ``"5～8"``, ``"≥8"``). They add no information.
   The county-wide 红/橙/黄/绿 totals are printed exactly when the grid table can be protected
   with both its row totals (each grid's households) and its column totals known; otherwise it
   is protected against its row totals alone and the county totals are derived too. If the
   grid table cannot be protected, the village table is (each village's households known),
   then the county totals alone. The change since the previous run is not published, and the
   levels as the period began are another snapshot's county totals under the same rule.
4. Statistics (completion rate, medians) whose base count is below ``SMALL_COUNT`` are "—";
   lists are ordered by published value (exact counts first, then "*", then "<3", ties in the
   fixed label order), so the order reveals nothing about masked cells.
5. Map colours are computed from the published grid cells only ("<3" counts as 1.5, "*" as 3).
"""

from __future__ import annotations

import html
import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

import templates as _templates
from sibifang.checks import ALERT_CHANNEL_LABELS, DEMAND_CATEGORY_LABELS, FLAG_KIND_LABELS
from sibifang.errors import FlowParameterError
from sibifang.escalate_disputes import cases_closed_by_kind

SMALL_COUNT = 3
MASKED = f"<{SMALL_COUNT}"   # primary suppression: 1 .. SMALL_COUNT-1
SUPPRESSED = "*"             # secondary suppression: at least SMALL_COUNT, hidden to protect a "<3" cell
NOT_SHOWN = "—"
CATEGORY_LABELS = {"entrepreneur": "创业困难女性家庭", "hardship": "困难家庭", "empty_nest": "空巢老人家庭",
                   "left_behind": "留守妇女儿童家庭", "dispute": "婚姻家庭矛盾家庭"}
DEMAND_LABELS = DEMAND_CATEGORY_LABELS
FLAG_LABELS = FLAG_KIND_LABELS
LEVEL_COLORS = {"红": "#d7301f", "橙": "#fc8d59", "黄": "#fdcc8a", "绿": "#b3de69"}
UNKNOWN_VILLAGE = "未归属村（社区）"
OTHER = "其他"
NO_DATA_FILL = "#d9d9d9"

Published = int | str


def _env() -> Environment:
    return Environment(loader=FileSystemLoader(Path(_templates.__file__).parent),
                       autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)


# ------------------------------------------------------------------ the suppression rule
def mask(n: int) -> Published:
    """Primary suppression of one count: 1 .. SMALL_COUNT-1 → "<3"; 0 and larger counts as they are."""
    n = int(n)
    return MASKED if 0 < n < SMALL_COUNT else n


def protect(values: Sequence[int], total: int | None = None) -> list[Published] | None:
    """Publish one breakdown: primary and secondary suppression (rule 2 of the module docstring).

    ``values`` are the raw cells in a fixed order (label order, grid order: never by count).
    ``total``: the raw total printed next to them (itself masked when small); it must be the sum
    of the cells. ``None``: the total is not printed but assumed known to the reader. Returns the
    published cells, or ``None`` when the breakdown cannot be protected and must not be published.
    """
    vals = [int(v) for v in values]
    pub: list[Published] = [mask(v) for v in vals]
    masked = [i for i, v in enumerate(vals) if 0 < v < SMALL_COUNT]
    if not masked:
        return pub
    if total is not None:
        if int(total) != sum(vals):
            raise ValueError("a breakdown must add up to its printed total: give the rest its own cell")
        if int(total) < SMALL_COUNT:
            # The total reads "<3" as well: each masked cell keeps its 1..SMALL_COUNT-1 range only alone.
            return pub if len(masked) <= SMALL_COUNT - 2 else None
        m, s = len(masked), sum(vals[i] for i in masked)  # s is public: the total minus the exact cells
        if m >= 2 and m + 1 <= s <= (SMALL_COUNT - 1) * m - 1:
            return pub
    # Otherwise the breakdown is a table of one row whose total is known: the table rule adds
    # the smallest cell larger than SMALL_COUNT (one "*" covers every "<3" of the row).
    table = protect_table([vals], known_columns=False)
    return None if table is None else table[0]


def protect_table(rows: Sequence[Sequence[int]], known_columns: bool = True,
                  eligible: Sequence[Sequence[bool]] | None = None) -> list[list[Published]] | None:
    """Publish a table whose row totals are known to the reader (rule 2 across rows and columns).

    ``rows``: the raw cells, rows and columns in a fixed order (never by count). Every row's
    total is taken as known (a grid's or village's households are its register); so are the
    column totals when ``known_columns`` (they are printed), while with ``known_columns=False``
    only the cells themselves tell the reader about a column. Returns the published cells, or
    ``None`` when a "<3" cell cannot be protected.

    Complementary suppression, one "<3" cell at a time (in row-major order): the cell must lie
    on a cycle of hidden cells (row, column, row, column, … back to it; with unknown column
    totals two cells of one row already make a cycle) on which every other cell is a "*", so
    a count larger than ``SMALL_COUNT``. Adding 1 to the "<3" cell and taking 1 from and adding
    1 to the "*" cells in turn round the cycle keeps every known total, and 1 and 2 both fit:
    neither the "<3" cell nor any "*" is pinned, whatever the masked values are. Each row and
    each known column with a hidden cell therefore has at least two. The cells hidden are the
    cheapest cycle's (fewest new "*", then the smallest counts; cells already "*" are free),
    found from the published figures only, so two inputs differing only inside "<3" cells
    give the same table. ``eligible``: the cells that may be hidden as "*" (all by default; a
    cell tied to a figure beside it needs room to move, ``_publish_response``).
    """
    vals = [[int(v) for v in r] for r in rows]
    pub: list[list[Published]] = [[mask(v) for v in r] for r in vals]
    small = [(i, j) for i, r in enumerate(vals) for j, v in enumerate(r) if 0 < v < SMALL_COUNT]
    if not small:
        return pub
    if len({len(r) for r in vals}) != 1:
        raise ValueError("a table's rows must all have the same columns")
    cycles = _Cycles(vals, known_columns, eligible)
    for i, j in small:
        cells = cycles.through(i, j)
        if cells is None:
            return None
        cycles.hide(cells)
    for i, j in cycles.hidden:
        pub[i][j] = SUPPRESSED
    return pub


Cost = tuple[int, int]  # (cells newly hidden, their counts): fewest first, then the smallest


class _Cycles:
    """The cheapest cycle of "*" cells through a "<3" cell, for ``protect_table``.

    With known column totals a cycle runs col j → row r1 → col c1 → row r2 → … → row i: the
    columns are few (four levels), so every order of distinct columns is tried, each step from
    one column to the next through a row that has both cells (the few cheapest rows kept per
    pair of columns, enough for the rows of one cycle to be distinct). Without them a second
    cell of row i closes the cycle."""

    def __init__(self, vals: list[list[int]], known_columns: bool,
                 eligible: Sequence[Sequence[bool]] | None = None) -> None:
        self.vals, self.known, self.eligible = vals, known_columns, eligible
        self.hidden: set[tuple[int, int]] = set()
        self.n_cols = len(vals[0])
        self.keep = self.n_cols  # rows kept per pair: one per other row of a cycle, and row i
        self.links: dict[tuple[int, int], list[tuple[Cost, int]]] = {}
        if known_columns:
            for a in range(self.n_cols):
                for b in range(a + 1, self.n_cols):
                    ranked = sorted((c, r) for r in range(len(vals)) if (c := self._pair(r, a, b)) is not None)
                    self.links[a, b] = ranked[:self.keep]

    def _cost(self, i: int, j: int) -> Cost | None:
        if (i, j) in self.hidden:
            return (0, 0)
        if self.eligible is not None and not self.eligible[i][j]:
            return None
        return (1, self.vals[i][j]) if self.vals[i][j] > SMALL_COUNT else None

    def _pair(self, r: int, a: int, b: int) -> Cost | None:
        ca, cb = self._cost(r, a), self._cost(r, b)
        return None if ca is None or cb is None else (ca[0] + cb[0], ca[1] + cb[1])

    def hide(self, cells: Iterable[tuple[int, int]]) -> None:
        for r, c in cells:
            if (r, c) in self.hidden:
                continue
            self.hidden.add((r, c))
            for a, b in self.links:  # the row got cheaper for every pair with this column
                if c in (a, b) and (cost := self._pair(r, a, b)) is not None:
                    ranked = [x for x in self.links[a, b] if x[1] != r] + [(cost, r)]
                    self.links[a, b] = sorted(ranked)[:self.keep]

    def through(self, i: int, j: int) -> list[tuple[int, int]] | None:
        """The cells (besides (i, j)) of the cheapest cycle through (i, j), or None."""
        ends = [(c, a) for a in range(self.n_cols) if a != j and (c := self._cost(i, a)) is not None]
        if not self.known:
            return [(i, min(ends)[1])] if ends else None
        best: tuple[Cost, list[tuple[int, int]]] | None = None
        others = [a for a in range(self.n_cols) if a != j]
        for end_cost, a in ends:
            for k in range(len(others)):
                for middle in itertools.permutations([b for b in others if b != a], k):
                    cols = [j, *middle, a]
                    found = self._rows(cols, i, (end_cost[0], end_cost[1]), best[0] if best else None)
                    if found is not None:
                        best = (found[0], [*found[1], (i, a)])
        return None if best is None else best[1]

    def _rows(self, cols: list[int], i: int, cost: Cost, bound: Cost | None,
              used: tuple[int, ...] = ()) -> tuple[Cost, list[tuple[int, int]]] | None:
        """The cheapest distinct rows (not i) linking each column of ``cols`` to the next."""
        if bound is not None and cost >= bound:
            return None
        if len(cols) == 1:
            return cost, []
        a, b = cols[0], cols[1]
        best = None
        for c, r in self.links[min(a, b), max(a, b)]:
            if r == i or r in used:
                continue
            found = self._rows(cols[1:], i, (cost[0] + c[0], cost[1] + c[1]), bound, (*used, r))
            if found is not None:
                bound = found[0]
                best = (bound, [(r, a), (r, b), *found[1]])
        return best


def bounds(v: Published) -> tuple[int, float]:
    """What a reader knows of a published figure: (lowest, highest) possible value."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v, v
    s = str(v)
    if s == SUPPRESSED:
        return SMALL_COUNT, math.inf
    if s.startswith("<"):
        return 1, int(s[1:]) - 1
    if s.startswith("≥"):
        return int(s[1:]), math.inf
    lo, hi = s.split("～")
    return int(lo), int(hi)


def derived_total(cells: Iterable[Published]) -> Published:
    """A sum computed from published cells only (rule 3): exact, "<n", "a～b" or "≥a"."""
    lo = hi = 0
    for c in cells:
        a, b = bounds(c)
        lo, hi = lo + a, hi + b
    if lo == hi:
        return mask(lo)
    if hi == math.inf:
        return f"≥{lo}"
    if lo < SMALL_COUNT:
        return f"<{int(hi) + 1}"
    return f"{lo}～{int(hi)}"


def _point(v: Published) -> float:
    """One number standing for a published figure (for colours): the middle of its range, or its floor."""
    lo, hi = bounds(v)
    return float(lo) if hi == math.inf else (lo + hi) / 2


def _rank_key(v: Published, position: int) -> tuple:
    if isinstance(v, int):
        return (0, -v, position)
    return (1 if v == SUPPRESSED else 2, 0, position)


def _breakdown(counts: Mapping[str, int], labels: Mapping[str, str], total: int | None) -> list[dict] | None:
    """A protected, ranked breakdown of nonzero counts: [{"label", "count"}] or None."""
    order = [k for k in labels if counts.get(k, 0)] + sorted(k for k in counts if k not in labels and counts[k])
    pub = protect([counts[k] for k in order], total)
    if pub is None:
        return None
    rows = sorted(range(len(order)), key=lambda i: _rank_key(pub[i], i))
    return [{"label": labels.get(order[i], order[i]), "count": pub[i]} for i in rows]


def _stat(value: float | None, base: int) -> float | None:
    """A rate or median, shown only when it rests on at least SMALL_COUNT records."""
    return value if value is not None and base >= SMALL_COUNT else None


# ------------------------------------------------------------------ the report's period
class ReportPeriodError(FlowParameterError):
    """A report period asked for with parameters that name no period; the message is in Chinese
    (a supervisor reads it)."""


PERIOD_NAMES = {"week": "week", "周": "week", "周报": "week", "month": "month", "月": "month", "月报": "month",
                "quarter": "quarter", "季": "quarter", "季度": "quarter", "季报": "quarter"}


def report_period(as_of: date, *, period: str | None = None, period_days: int | None = None,
                  period_start: date | None = None, period_end: date | None = None) -> tuple[date, date]:
    """First and last day (both included) of the report asked for; one way of asking at a time.

    - ``period_start`` and ``period_end``: exactly those days (a supervisor's chosen period);
    - ``period="week"``: the last full Monday–Sunday week before ``as_of`` (the Monday run reports
      the week that ended yesterday); ``period="month"``: the calendar month before ``as_of``'s
      month (the run on the 1st reports the month that ended yesterday); ``period="quarter"``:
      the calendar quarter (Jan–Mar, Apr–Jun, Jul–Sep, Oct–Dec) before ``as_of``'s quarter.
      Calendar periods, so every day is in exactly one weekly, monthly and quarterly report,
      whenever the run starts; ``as_of`` is a local (Asia/Shanghai) day, as every stored time is;
    - ``period_days=n`` (7 when nothing is given): the ``n`` days ending on ``as_of``, ``as_of``
      included (the evening loop's report of the days it has just run).
    """
    explicit = period_start is not None or period_end is not None
    ways = [name for name, given in (("period_start/period_end", explicit), ("period", period is not None),
                                     ("period_days", period_days is not None)) if given]
    if len(ways) > 1:
        raise ReportPeriodError(f"报告期间只能用一种方式指定，收到了 {'、'.join(ways)}："
                                "或给出起止日期（period_start 和 period_end），"
                                "或给出 period（week 周报 / month 月报），或给出天数 period_days。")
    if explicit:
        if period_start is None or period_end is None:
            raise ReportPeriodError("请同时给出报告的开始日期 period_start 和结束日期 period_end（均含当天）。")
        if period_start > period_end:
            raise ReportPeriodError(f"报告开始日期 {period_start} 晚于结束日期 {period_end}，请检查 period_start 和 "
                                    "period_end。")
        return period_start, period_end
    if period is not None:
        kind = PERIOD_NAMES.get(str(period).strip().lower())
        if kind is None:
            raise ReportPeriodError(f"报告周期 period 只能是 week（上一个完整自然周，周一至周日）、month"
                                    f"（上一个自然月）或 quarter（上一个自然季度），收到 {period!r}。")
        if kind == "week":
            end = as_of - timedelta(days=as_of.weekday() + 1)  # the Sunday before as_of
            return end - timedelta(days=6), end
        if kind == "quarter":
            end = as_of.replace(month=(as_of.month - 1) // 3 * 3 + 1, day=1) - timedelta(days=1)
            return end.replace(month=end.month - 2, day=1), end
        end = as_of.replace(day=1) - timedelta(days=1)
        return end.replace(day=1), end
    days = 7 if period_days is None else period_days
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ReportPeriodError(f"报告天数 period_days 必须是正整数（至少 1 天），收到 {period_days!r}。")
    return as_of - timedelta(days=days - 1), as_of


# ------------------------------------------------------------------ the report's figures
def summarise(*, period_start: date, period_end: date, households: pd.DataFrame, plans: pd.DataFrame,
              visits: pd.DataFrame, flags: pd.DataFrame, alerts: pd.DataFrame, cases: pd.DataFrame,
              needs: pd.DataFrame, risk_map: pd.DataFrame, areas: pd.DataFrame,
              escalations_exhausted: pd.DataFrame | None = None) -> dict:
    """The report's published figures. Inputs carry ids and codes only; the output carries only
    counts that follow the suppression rule (ints, "<3", "*" or ranges) and statistics.

    ``escalations_exhausted``: ``flag_id, at``, one row per time a flag's escalation found no one
    left to tell (the audit's ``escalation_exhausted``); the report counts the flags this
    happened to in the period."""
    in_period = lambda s: (pd.to_datetime(s) >= pd.Timestamp(period_start)) & (  # noqa: E731
        pd.to_datetime(s) < pd.Timestamp(period_end) + pd.Timedelta(days=1))
    plans, alerts, cases, needs = as_of_period_end(plans, alerts, cases, needs, period_end)
    households = on_register_at_period_end(households, period_end)
    cats = households.explode("categories")["categories"].dropna().value_counts()
    p = plans[in_period(plans.due_date)] if not plans.empty else plans
    # A plan cancelled because its family left the register (迁出, 去世) was no visit to make.
    p = p[p.status.ne("cancelled")] if not p.empty else p
    v = visits[in_period(visits.visited_at)] if not visits.empty else visits
    f = flags[in_period(flags.detected_at)] if not flags.empty else flags
    a = alerts[in_period(alerts.created_at)] if not alerts.empty else alerts
    c_open = cases[in_period(cases.opened_at)] if not cases.empty else cases
    n_mediated, n_withdrawn = cases_closed_by_kind(cases)  # closed by a room; by the system
    n = needs[in_period(needs.created_at)] if not needs.empty else needs
    ex = escalations_exhausted if escalations_exhausted is not None else pd.DataFrame(columns=["flag_id", "at"])
    n_exhausted = int(ex[in_period(ex["at"])].flag_id.nunique()) if not ex.empty else 0
    done = p[p.status == "done"] if not p.empty else p
    if not a.empty:
        a = a.assign(confirmed_at=confirmed_at(a))
    acked = a[a.confirmed_at.notna()] if not a.empty else a
    ack_minutes = ((pd.to_datetime(acked.confirmed_at) - pd.to_datetime(acked.first_sent_at)).dt.total_seconds()
                   / 60).dropna() if not acked.empty else pd.Series(dtype=float)
    demands = n.category.fillna(OTHER).value_counts() if not n.empty else pd.Series(dtype=int)
    must_visit = int(households.categories.map(lambda c: bool(c)).sum())
    n_alerts, n_acked = int(len(a)), int(len(acked))
    sent = int((a.status == "sent").sum()) if not a.empty else 0
    dead = int((a.status == "dead").sum()) if not a.empty else 0
    cancelled = int((a.status == "cancelled").sum()) if not a.empty else 0
    # the rest: pending or sending; the four parts add up to the alerts. An alert is confirmed
    # only once delivered, so the exact confirmed count printed beside it is a floor under the
    # delivered one: a "*" there must be able to drop by one and stay above it (9 alerts
    # confirmed of 10 would otherwise pin delivered "*" to 9 and dead-lettered "<3" to 1).
    # (A "<3" delivered count has a "<3" confirmed one beside it, which bounds nothing.)
    parts = [sent, dead, cancelled, n_alerts - sent - dead - cancelled]
    status = protect(parts, n_alerts)
    if status is not None and status[0] == SUPPRESSED and sent - n_acked < 1:
        status = _protect_tied(parts, n_alerts, [False, True, True, True])
    demand_rows = _breakdown({str(k): int(c) for k, c in demands.items()}, DEMAND_LABELS, int(len(n)))
    # the map at the period's end: its latest run on or before the last day (a run after it is
    # not this period's, so a report re-made later shows the same levels)
    if not risk_map.empty:
        risk_map = risk_map[pd.to_datetime(risk_map.as_of) < pd.Timestamp(period_end) + pd.Timedelta(days=1)]
    risk = publish_risk_map(risk_map, areas)
    # the map as the period began (its latest run before the first day): the change since then
    # reads from two published tables, so it shows nothing a count could not
    before = risk_map[pd.to_datetime(risk_map.as_of) < pd.Timestamp(period_start)] if not risk_map.empty else risk_map
    risk_before = publish_risk_map(before, areas) if not before.empty else {"levels": {}}
    with_village = a
    if not a.empty and "grid_id" in a:
        with_village = a.merge(areas[["grid_id", "village_name"]].drop_duplicates("grid_id"), on="grid_id",
                               how="left")
        with_village["village_name"] = with_village["village_name"].fillna(UNKNOWN_VILLAGE)
    if "channel" in a:
        a = a.assign(channel=a["channel"].fillna(OTHER))
    return {
        "period_start": period_start.isoformat(), "period_end": period_end.isoformat(),
        "households": mask(len(households)),
        "must_visit_households": mask(must_visit),
        "by_category": _breakdown({str(k): int(c) for k, c in cats.items()}, CATEGORY_LABELS, None),
        "visits_planned": mask(len(p)), "visits_done": mask(len(done)),
        "visits_recorded": mask(len(v)),
        "completion_rate": (round(len(done) / len(p), 3) if len(p) and mask(len(p)) == len(p)
                            and mask(len(done)) == len(done) else None),
        "flags": mask(len(f)),
        "flags_by_kind": _breakdown({str(k): int(c) for k, c in (f.kind.fillna(OTHER).value_counts().items()
                                                                  if not f.empty else [])}, FLAG_LABELS, int(len(f))),
        "alerts": mask(n_alerts),
        "alerts_sent": status[0] if status else None, "alerts_dead": status[1] if status else None,
        "alerts_cancelled": status[2] if status else None,
        "alerts_pending": status[3] if status else None,
        "alerts_acked": mask(n_acked),
        # critical flags unanswered whose escalation found no one left to tell (kept open)
        "flags_escalation_exhausted": mask(n_exhausted),
        "median_minutes_to_ack": _stat(round(float(ack_minutes.median()), 1) if len(ack_minutes) else None,
                                       len(ack_minutes)),
        "cases_opened": mask(len(c_open)),
        # by period end; closings by the system (family left the register, wrong family) apart
        "cases_closed": mask(n_mediated),
        "cases_withdrawn": mask(n_withdrawn),
        "needs": mask(len(n)), "needs_matched": mask(int((n.status == "matched").sum()) if not n.empty else 0),
        "common_demands": demand_rows,  # every category (at most nine): a top-5 cut would hide part of a total
        "risk_levels": risk["levels"],
        "risk_date": pd.Timestamp(risk_map.as_of.max()).date().isoformat() if not risk_map.empty else "",
        "risk_levels_before": risk_before["levels"],
        "risk_before_date": (pd.Timestamp(before.as_of.max()).date().isoformat() if not before.empty else ""),
        "risk_by_village": risk["villages"],
        "risk_by_grid": risk["grids"],
        "response_by_channel": _publish_response(response_metrics(a, "channel"), n_alerts, n_acked,
                                                 ALERT_CHANNEL_LABELS),
        "response_by_village": _publish_response(response_metrics(with_village, "village_name"), n_alerts, n_acked),
    }


def on_register_at_period_end(households: pd.DataFrame, period_end: date) -> pd.DataFrame:
    """The families on the register at the end of the period's last day: registered by then
    (``registered_at``; empty: since before anything was recorded) and not taken off it by
    then (``deregistered_at``: 迁出, 去世, 注销). A frame without these columns is taken as it
    is. Their categories are today's: the register keeps no history of them."""
    end = pd.Timestamp(period_end) + pd.Timedelta(days=1)
    keep = pd.Series(True, index=households.index)
    if "registered_at" in households:
        keep &= ~(pd.to_datetime(households.registered_at) >= end).fillna(False)
    if "deregistered_at" in households:
        from sibifang.schedule_visits import on_register  # the planner's reading of a removal, by the day

        keep &= on_register(households.deregistered_at, period_end)
    return households[keep.to_numpy(dtype=bool)]


def as_of_period_end(plans: pd.DataFrame, alerts: pd.DataFrame, cases: pd.DataFrame, needs: pd.DataFrame,
                     period_end: date) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The records as they stood at the end of the period: what happened later (a visit done,
    an alert sent, acknowledged or dead-lettered, a case closed, a need matched after it) is
    not this period's, so a report re-made next month for the same period shows the same
    figures.

    Times read: a plan's ``done_at``; an alert's ``first_sent_at``, ``acked_at``,
    ``confirmed_at``, ``flag_closed_at`` and ``last_attempt_at`` (a dead alert's last attempt
    is the one that dead-lettered it); a case's ``closed_at``; a need's ``matched_at``. A
    frame without one of them is taken as it is. A need matched with no ``matched_at`` (by a
    version that kept none) stays matched: when is unknown."""
    end = pd.Timestamp(period_end) + pd.Timedelta(days=1)
    later = lambda col: pd.to_datetime(col) >= end  # noqa: E731
    if not plans.empty and "done_at" in plans:
        done = plans.done_at.notna() & ~later(plans.done_at)
        plans = plans.assign(status=plans.status.where(~(plans.status.eq("done") & ~done), "planned"))
    if not plans.empty and "deregistered_at" in plans:
        # Cancelled when its family left the register after the period: it was open at its end.
        plans = plans.assign(status=plans.status.where(
            ~(plans.status.eq("cancelled") & later(plans.deregistered_at).fillna(False)), "planned"))
    if not alerts.empty:
        alerts = alerts.copy()
        for col in ("acked_at", "confirmed_at", "first_sent_at", "flag_closed_at"):
            if col in alerts:
                alerts.loc[later(alerts[col]).fillna(False), col] = pd.NaT
        if "first_sent_at" in alerts:
            alerts.loc[alerts.status.eq("sent") & alerts.first_sent_at.isna(), "status"] = "pending"
        if "last_attempt_at" in alerts:
            # Dead-lettered after the period (an alert that went out is never tried again): at
            # the period's end it was still waiting.
            alerts.loc[alerts.status.eq("dead") & later(alerts.last_attempt_at).fillna(False), "status"] = "pending"
        # Cancelled means its flag was answered before it went out; answered after the period,
        # it was still waiting at the period's end.
        answered = pd.Series(False, index=alerts.index)
        for col in ("acked_at", "flag_closed_at"):
            if col in alerts:
                answered |= alerts[col].notna()
        alerts.loc[alerts.status.eq("cancelled") & ~answered, "status"] = "pending"
    if not cases.empty and "closed_at" in cases:
        closed = cases.closed_at.notna() & ~later(cases.closed_at)
        cases = cases.assign(status=cases.status.where(~(cases.status.eq("closed") & ~closed), "open"))
    if not needs.empty and "matched_at" in needs:
        needs = needs.assign(status=needs.status.where(~(needs.status.eq("matched") & later(needs.matched_at)),
                                                       "open"))
    return plans, alerts, cases, needs


def confirmed_at(alerts: pd.DataFrame) -> pd.Series:
    """When each alert was confirmed (已确认), or NaT: delivered, and then answered through it.

    ``acked_at`` alone says too much: the first answer to a flag stamps every alert of the
    flag, also those cancelled before they went out and those a colleague received; counting
    them read more alerts confirmed than delivered, and the colleague's answer as their time.
    So an alert is confirmed by an answer given through it (``confirmed_at``: the first
    ``acknowledge`` recorded on it at or after its first delivery; ``tasks.summary_report``
    reads it from the audit trail), and only once it was delivered (``first_sent_at``), which
    keeps confirmed within delivered in every breakdown. An alert whose flag a colleague
    answered counts as delivered, not confirmed. A frame without ``confirmed_at`` (one built
    from the alerts alone) takes ``acked_at`` as each alert's own answer."""
    own = alerts["confirmed_at"] if "confirmed_at" in alerts else alerts["acked_at"]
    own, sent = pd.to_datetime(own), pd.to_datetime(alerts["first_sent_at"])
    return own.where(sent.notna() & (own >= sent))


def response_metrics(alerts: pd.DataFrame, by: str) -> list[dict]:
    """Time to acknowledge and time to outcome (预警响应时效), per channel or per village.

    Raw figures (counts unmasked), ordered by unit: ``summarise`` publishes them."""
    if alerts.empty or by not in alerts:
        return []
    a = alerts.copy()
    a["confirmed_at"] = confirmed_at(a)
    a["ack_min"] = (a.confirmed_at - pd.to_datetime(a.first_sent_at)).dt.total_seconds() / 60
    if "flag_closed_at" in a and "flag_detected_at" in a:
        a["outcome_h"] = (pd.to_datetime(a.flag_closed_at) - pd.to_datetime(a.flag_detected_at)
                          ).dt.total_seconds() / 3600
    else:
        a["outcome_h"] = float("nan")
    out = []
    for key, g in a.groupby(by):
        ack, outc = g.ack_min.dropna(), g.outcome_h.dropna()
        out.append({"unit": str(key), "alerts": int(len(g)), "acked": int(g.confirmed_at.notna().sum()),
                    "median_minutes_to_ack": round(float(ack.median()), 1) if len(ack) else None,
                    "median_hours_to_outcome": round(float(outc.median()), 1) if len(outc) else None,
                    "n_ack": int(len(ack)), "n_outcome": int(len(outc))})
    return out


def _publish_response(rows: list[dict], n_alerts: int, n_acked: int,
                      labels: Mapping[str, str] | None = None) -> list[dict] | None:
    """The response table with both count columns protected against their totals; None if it can't be."""
    if not rows:
        return []
    # The two columns are tied row by row (a unit cannot confirm more alerts than it got), so a
    # "*" is bounded by the exact figure beside it: with 5 alerts and 2 confirmed in A, 4 and 4 in
    # B, the confirmed column "<3" | "*" against 6 gives B = 4 (no more than its alerts), so A = 2.
    # A "*" is therefore taken only in a row with room for both columns to move by one (at least
    # 2 alerts not confirmed), and one "*" per column always covers its "<3" cells (never the
    # two-"<3" range rule, whose cells the row ties could pin).
    slack = [r["alerts"] - r["acked"] >= 2 for r in rows]
    alerts_col = _protect_tied([r["alerts"] for r in rows], n_alerts, slack)
    acked_col = _protect_tied([r["acked"] for r in rows], n_acked, slack)
    if alerts_col is None or acked_col is None:
        return None
    return [{"unit": (labels or {}).get(r["unit"], r["unit"]), "alerts": al, "acked": ac,
             "median_minutes_to_ack": _stat(r["median_minutes_to_ack"], r["n_ack"]),
             "median_hours_to_outcome": _stat(r["median_hours_to_outcome"], r["n_outcome"])}
            for r, al, ac in zip(rows, alerts_col, acked_col)]


def _protect_tied(values: Sequence[int], total: int, room: Sequence[bool]) -> list[Published] | None:
    """A breakdown of a printed ``total`` whose "*" may be taken only where ``room`` says."""
    vals = [int(v) for v in values]
    if not any(0 < v < SMALL_COUNT for v in vals) or int(total) < SMALL_COUNT:
        return protect(vals, total)  # nothing masked, or a total "<3": a single "<3" at most
    table = protect_table([vals], known_columns=False, eligible=[list(room)])
    return None if table is None else table[0]


# ------------------------------------------------------------------ the risk map (动态预警图)
def _grid_table(risk_map: pd.DataFrame, areas: pd.DataFrame) -> pd.DataFrame:
    """Raw households per grid and level of the latest snapshot, with the village; sorted by village, grid."""
    latest = risk_map[risk_map.as_of == risk_map.as_of.max()] if not risk_map.empty else risk_map
    if latest.empty:
        return pd.DataFrame(columns=["grid_id", "village_name", *LEVEL_COLORS])
    t = latest.pivot_table(index="grid_id", columns="level", values="households", aggfunc="sum", fill_value=0)
    for lvl in LEVEL_COLORS:
        if lvl not in t:
            t[lvl] = 0
    t = t.reset_index().merge(areas[["grid_id", "village_name"]].drop_duplicates("grid_id"), on="grid_id",
                              how="left")
    t["village_name"] = t["village_name"].fillna(UNKNOWN_VILLAGE).astype(str)
    t["grid_id"] = t["grid_id"].astype(str)
    t = t[["grid_id", "village_name", *LEVEL_COLORS]]
    return t.iloc[sorted(range(len(t)), key=lambda i: (natural_key(t.village_name.iat[i]),
                                                       natural_key(t.grid_id.iat[i])))].reset_index(drop=True)


def natural_key(label: str) -> tuple:
    """Sort key reading runs of digits as numbers, so grid G2 comes before G10 (as a clerk counts)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", str(label)) if part)


def _rows(frame: pd.DataFrame) -> list[list[int]]:
    """The 红/橙/黄/绿 counts of a grid or village table, one list per row."""
    return [[int(x) for x in r] for r in frame[list(LEVEL_COLORS)].to_numpy()]


def publish_risk_map(risk_map: pd.DataFrame, areas: pd.DataFrame) -> dict:
    """The published risk map: per grid, per village and county-wide 红/橙/黄/绿 households.

    The grid table is protected as a whole (``protect_table``): each grid's households are its
    register, so a row is a breakdown of a known total just as a level's column is. Preferred:
    the column totals known as well, and the county totals printed exactly. If that cannot be
    done (a level's "<3" cells have no count above SMALL_COUNT to go round with, say), the grid
    table is protected against its row totals alone and the county totals are derived.
    Village rows are always derived from the published grid cells (rule 3). Further fallbacks:
    villages protected the same way (a village's households are known too) and grids
    unpublished (``None`` counts), then county totals alone, then nothing (``{}``).
    """
    t = _grid_table(risk_map, areas)
    if t.empty:
        return {"grids": [], "villages": [], "levels": {lvl: 0 for lvl in LEVEL_COLORS}}
    village_raw = t.groupby("village_name", sort=True)[list(LEVEL_COLORS)].sum()
    village_raw = village_raw.loc[sorted(village_raw.index, key=natural_key)]
    villages_order = list(village_raw.index)
    table = _rows(t)
    levels: dict[str, Published] | None = None
    grid_pub = protect_table(table, known_columns=True)
    if grid_pub is not None:
        levels = {lvl: mask(int(t[lvl].sum())) for lvl in LEVEL_COLORS}  # 0 or >= SMALL_COUNT here
    else:
        grid_pub = protect_table(table, known_columns=False)
    if grid_pub is not None:
        grids = [{"grid": g, "village": vn, **dict(zip(LEVEL_COLORS, r))}
                 for g, vn, r in zip(t.grid_id, t.village_name, grid_pub)]
        villages = [{"village": vn, **{lvl: derived_total(g[lvl] for g in grids if g["village"] == vn)
                                       for lvl in LEVEL_COLORS}} for vn in villages_order]
        if levels is None:
            levels = {lvl: derived_total(g[lvl] for g in grids) for lvl in LEVEL_COLORS}
        return {"grids": grids, "villages": villages, "levels": levels}
    grids = [{"grid": g, "village": vn, **{lvl: None for lvl in LEVEL_COLORS}}
             for g, vn in zip(t.grid_id, t.village_name)]
    village_pub = protect_table(_rows(village_raw), known_columns=False)
    if village_pub is not None:
        villages = [{"village": vn, **dict(zip(LEVEL_COLORS, r))} for vn, r in zip(villages_order, village_pub)]
        levels = {lvl: derived_total(r[lvl] for r in villages) for lvl in LEVEL_COLORS}
        return {"grids": grids, "villages": villages, "levels": levels}
    level_pub = protect([int(village_raw[lvl].sum()) for lvl in LEVEL_COLORS])
    return {"grids": grids, "villages": [], "levels": dict(zip(LEVEL_COLORS, level_pub)) if level_pub else {}}


def risk_map_svg(risk_map: pd.DataFrame, areas: pd.DataFrame, *, cell: int = 22) -> str:
    """The dynamic risk map as a heat grid: one row per village, one cell per grid, coloured by
    the share of households at 红/橙 (red/orange) level. Colours and tooltips come from the
    published grid cells (``publish_risk_map``) only, never from the raw counts."""
    grids = publish_risk_map(risk_map, areas)["grids"]
    if not grids:
        return ('<svg xmlns="http://www.w3.org/2000/svg" width="200" height="30">'
                '<text x="5" y="20">暂无数据</text></svg>')
    villages = sorted({g["village"] for g in grids}, key=natural_key)
    width_cells = max(sum(g["village"] == vn for g in grids) for vn in villages)
    label_w = 110
    w, h = label_w + width_cells * cell + 10, 40 + len(villages) * cell + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-size="11" '
             f'font-family="sans-serif">',
             '<text x="5" y="16" font-size="13">家庭风险动态预警图（按网格，红橙户占比）</text>']
    for yi, village in enumerate(villages):
        y = 30 + yi * cell
        parts.append(f'<text x="5" y="{y + cell * 0.7:.0f}">{html.escape(str(village))}</text>')
        rows = sorted((g for g in grids if g["village"] == village), key=lambda g: natural_key(g["grid"]))
        for xi, g in enumerate(rows):
            x = label_w + xi * cell
            if g["红"] is None:
                color, tip = NO_DATA_FILL, "户数较少，不分网格公布"
            else:
                pts = {lvl: _point(g[lvl]) for lvl in LEVEL_COLORS}
                color = _blend((pts["红"] + pts["橙"] * 0.5) / (sum(pts.values()) or 1))
                tip = " ".join(f"{lvl}{g[lvl]}户" for lvl in LEVEL_COLORS)
            parts.append(f'<rect x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" fill="{color}">'
                         f'<title>{html.escape(g["grid"])}: {html.escape(tip)}</title></rect>')
    parts.append("</svg>")
    return "\n".join(parts)


def _blend(x: float) -> str:
    x = max(0.0, min(1.0, x * 4))  # a quarter of a grid at red already reads as hot
    g = (int(0xb3 + (0xd7 - 0xb3) * x), int(0xde + (0x30 - 0xde) * x), int(0x69 + (0x1f - 0x69) * x))
    return "#%02x%02x%02x" % g


# ------------------------------------------------------------------ validation and rendering
_LABEL_KEYS = ("label", "unit", "grid", "village")


def aggregates_frame(agg: dict) -> pd.DataFrame:
    """Every published figure of ``agg`` as one row, for the ``report_aggregates`` suite.

    Columns: ``item`` (where it is, e.g. ``risk_by_village.红``), ``unit`` (the row's label:
    village, grid, channel, category), ``shown`` (the text printed, which the suite checks
    against the published forms) and ``count`` (the number printed when it is an exact count,
    else empty). Every int in ``agg`` is a count; floats are rates and medians; strings are
    masks and ranges.
    """
    rows: list[dict] = []

    def leaf(item: str, unit: str, value: object) -> None:
        is_count = isinstance(value, int) and not isinstance(value, bool)
        rows.append({"item": item, "unit": unit, "shown": "" if value is None else str(value),
                     "count": float(value) if is_count else float("nan")})

    for key, value in agg.items():
        if isinstance(value, dict):
            for sub, x in value.items():
                leaf(f"{key}.{sub}", "", x)
        elif isinstance(value, list):
            for r in value:
                unit = next((str(r[k]) for k in _LABEL_KEYS if k in r), "")
                for sub, x in r.items():
                    if sub not in _LABEL_KEYS:
                        leaf(f"{key}.{sub}", unit, x)
        else:
            leaf(key, "", value)
    frame = pd.DataFrame(rows, columns=["item", "unit", "shown", "count"])
    return frame.astype({"item": "str", "unit": "str", "shown": "str", "count": "float64"})


def render_report(agg: dict, *, risk_map_svg_text: str, title: str = "四必访工作情况报告") -> str:
    return _env().get_template("summary_report.html.j2").render(
        a=agg, svg=risk_map_svg_text, title=title, level_colors=LEVEL_COLORS, small=SMALL_COUNT,
        masked=MASKED, suppressed=SUPPRESSED, not_shown=NOT_SHOWN)
