"""Unit tests of sibifang.summary_report: aggregates, suppression, the risk-map SVG and the rendered HTML.

The report goes to the party committee and government: aggregates only, no name, ID number,
phone or address, even when the frames handed in carry such columns, and no count a family
could be singled out by: counts 1..SMALL_COUNT-1 read "<3", and no masked cell can be worked
out from a total, a map colour or a tooltip. The last tests gather the figures from a database
(both engines), as the flow does.
"""

from __future__ import annotations

import html as html_lib
import itertools
import random
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog
from sqlalchemy import func, select

from sibifang.checks import ALERT_CHANNEL_LABELS
from sibifang.summary_report import (CATEGORY_LABELS, LEVEL_COLORS, MASKED, NO_DATA_FILL, SMALL_COUNT, SUPPRESSED,
                                     aggregates_frame, bounds, derived_total, mask, protect, protect_table,
                                     publish_risk_map,
                                     render_report, risk_map_svg, summarise)

T = pd.Timestamp
START, END = date(2026, 7, 1), date(2026, 7, 31)
SVG = "{http://www.w3.org/2000/svg}"

# Personal data that must never reach the report.
PII = ["李桂兰", "王秀英", "张伟", "330203195001011238", "330203198203154421", "13912345678", "0574-87654321",
       "海曙区望春街道丽园北路88号", "江北区庄桥街道3幢"]


def _households() -> pd.DataFrame:
    return pd.DataFrame({
        "household_id": ["H1", "H2", "H3", "H4", "H5"],
        "categories": [["dispute"], ["hardship", "empty_nest"], [], ["empty_nest"], []],
        "head_name": ["李桂兰", "王秀英", "张伟", "李桂兰", "王秀英"],
        "id_number": ["330203195001011238", "330203198203154421", "", "", ""],
        "phone": ["13912345678", "0574-87654321", "", "", ""],
        "address": ["海曙区望春街道丽园北路88号", "江北区庄桥街道3幢", "", "", ""],
        "grid_id": ["G1", "G1", "G2", "G3", "G3"],
    })


def _areas() -> pd.DataFrame:
    return pd.DataFrame({"grid_id": ["G1", "G2", "G3"], "village_id": ["V1", "V1", "V2"],
                         "village_name": ["万地村", "万地村", "丽园社区"], "township_id": ["T1"] * 3})


def _risk_map() -> pd.DataFrame:
    old = pd.DataFrame({"as_of": [date(2026, 7, 30)], "grid_id": ["G1"], "level": ["红"], "households": [9],
                        "change": [0]})
    latest = pd.DataFrame({
        "as_of": [END] * 6,
        "grid_id": ["G1", "G1", "G2", "G3", "G3", "G3"],
        "level": ["红", "绿", "绿", "橙", "黄", "绿"],
        "households": [1, 4, 5, 2, 3, 6],
        "change": [0] * 6,
    })
    return pd.concat([old, latest], ignore_index=True)


def _frames() -> dict:
    plans = pd.DataFrame({
        "id": ["P1", "P2", "P3", "P4", "P5"],
        "due_date": [date(2026, 7, 3), date(2026, 7, 10), date(2026, 7, 31), date(2026, 6, 30), date(2026, 8, 1)],
        "status": ["done", "done", "planned", "done", "planned"],
        "urgent": [False, True, False, False, False],
        "household_id": ["H1", "H2", "H3", "H4", "H5"],
    })
    visits = pd.DataFrame({
        "id": ["V1", "V2", "V3", "V4"],
        "visited_at": [T("2026-07-02 10:00"), T("2026-07-09 15:00"), T("2026-07-31 23:30"), T("2026-08-01 00:00")],
        "notes": ["李桂兰说丈夫打骂", "王秀英电话13912345678", "", ""],
        "cadre_name": ["张伟"] * 4,
    })
    flags = pd.DataFrame({
        "id": ["F1", "F2", "F3", "F4"],
        "kind": ["dispute", "inactivity", "inactivity", "overdue_visit"],
        "detected_at": [T("2026-07-02 10:00"), T("2026-07-12 08:00"), T("2026-07-20 08:00"), T("2026-06-20")],
        "evidence": ["走访记录中出现“打骂”", "李桂兰家长时间无用电", "", ""],
    })
    alerts = pd.DataFrame({
        "id": ["A1", "A2", "A3", "A4"],
        "status": ["sent", "sent", "dead", "sent"],
        "created_at": [T("2026-07-02 10:05"), T("2026-07-12 08:05"), T("2026-07-20 08:05"), T("2026-06-20 08:00")],
        "first_sent_at": [T("2026-07-02 10:06"), T("2026-07-12 08:06"), pd.NaT, T("2026-06-20 08:01")],
        "acked_at": [T("2026-07-02 10:16"), T("2026-07-12 08:36"), pd.NaT, T("2026-06-20 09:00")],
        "alert_address": ["13912345678"] * 4,
    })
    cases = pd.DataFrame({"id": ["C1", "C2"], "opened_at": [T("2026-07-03"), T("2026-06-01")],
                          "status": ["open", "closed"], "household_id": ["H1", "H2"]})
    needs = pd.DataFrame({
        "id": ["N1", "N2", "N3", "N4"],
        "category": ["family_education", "family_education", "elderly_care", "skills"],
        "status": ["matched", "open", "matched", "matched"],
        "created_at": [T("2026-07-02"), T("2026-07-09"), T("2026-07-15"), T("2026-05-01")],
        "household_id": ["H1", "H2", "H3", "H4"],
    })
    return dict(plans=plans, visits=visits, flags=flags, alerts=alerts, cases=cases, needs=needs)


def _scaled(frames: dict, k: int = 3) -> dict:
    """Every row k times (ids made unique): the same shape with counts large enough to be shown."""
    out = {}
    for name, df in frames.items():
        parts = [df.assign(id=df["id"] + f"-{i}") for i in range(k)]
        out[name] = pd.concat(parts, ignore_index=True)
    return out


def _summarise(frames: dict | None = None, *, households: pd.DataFrame | None = None,
               risk_map: pd.DataFrame | None = None, areas: pd.DataFrame | None = None) -> dict:
    return summarise(period_start=START, period_end=END,
                     households=_households() if households is None else households,
                     risk_map=_risk_map() if risk_map is None else risk_map,
                     areas=_areas() if areas is None else areas, **(_frames() if frames is None else frames))


def _report(agg: dict, risk_map: pd.DataFrame | None = None, areas: pd.DataFrame | None = None) -> str:
    rm, ar = _risk_map() if risk_map is None else risk_map, _areas() if areas is None else areas
    return render_report(agg, risk_map_svg_text=risk_map_svg(rm, ar))


def _with_counts(rm: pd.DataFrame, changes: dict[tuple[str, str], int]) -> pd.DataFrame:
    """The latest snapshot with some (grid, level) counts replaced."""
    rm = rm.copy()
    for (grid, level), n in changes.items():
        rm.loc[(rm.as_of == rm.as_of.max()) & (rm.grid_id == grid) & (rm.level == level), "households"] = n
    return rm


def _reader_ranges(published: list, total) -> dict[int, set[int]]:
    """What a reader can work out of each hidden cell from the published cells and the total
    (an int, or MASKED): every value each hidden cell can take, by brute force."""
    known = sum(v for v in published if isinstance(v, int))
    hidden = [i for i, v in enumerate(published) if not isinstance(v, int)]
    sums = set(range(1, SMALL_COUNT)) if total == MASKED else {int(total)}
    top = max(sums)
    domains = [range(1, SMALL_COUNT) if published[i] == MASKED else range(SMALL_COUNT, top + 1) for i in hidden]
    feasible: dict[int, set[int]] = {i: set() for i in hidden}
    for combo in itertools.product(*domains):
        if known + sum(combo) in sums:
            for i, x in zip(hidden, combo):
                feasible[i].add(x)
    return feasible


def _assert_nothing_pinned(published: list, total, raw: list[int]) -> None:
    for i, values in _reader_ranges(published, total).items():
        assert raw[i] in values, (published, total, raw)
        assert len(values) >= 2, f"cell {i} of {published} (total {total}) can only be {values}"


def _visible_integers(report: str) -> list[int]:
    """Every whole number a reader sees (text, table cells, map tooltips); dates, decimals,
    percentages, identifiers like G1 and the explanatory notes left out."""
    body = report.split("<body>", 1)[1]
    body = re.sub(r'<p class="note">.*?</p>', " ", body, flags=re.S)
    text = html_lib.unescape(re.sub(r"<[^>]+>", " ", body))
    text = re.sub(r"\d{4}-\d{2}-\d{2}", " ", text)
    return [int(n) for n in re.findall(r"(?<![\w.\-])\d+(?![\w.%])", text)]


@pytest.fixture(scope="module")
def agg() -> dict:
    return summarise(period_start=START, period_end=END, households=_households(), risk_map=_risk_map(),
                     areas=_areas(), **_frames())


@pytest.fixture(scope="module")
def svg() -> str:
    return risk_map_svg(_risk_map(), _areas())


@pytest.fixture(scope="module")
def report(agg, svg) -> str:
    return render_report(agg, risk_map_svg_text=svg)


# --- the suppression rule ------------------------------------------------------------------------

def test_mask_and_derived_totals():
    assert [mask(n) for n in (0, 1, 2, 3, 40)] == [0, MASKED, MASKED, 3, 40]
    assert derived_total([3, 4]) == 7
    assert derived_total([MASKED, 0]) == MASKED
    assert derived_total([MASKED, MASKED]) == "<5"          # 2..4
    assert derived_total([3, MASKED]) == "4～5"
    assert derived_total([SUPPRESSED, 5]) == "≥8"
    for shown in ("<5", "4～5", "≥8", SUPPRESSED, MASKED, 7):
        lo, hi = bounds(shown)
        assert lo <= hi


def test_protect_primary_only_when_the_masked_cells_cannot_be_pinned():
    # total 3 printed: two "<3" cells are 1+2 or 2+1, neither pinned
    assert protect([2, 1], 3) == [MASKED, MASKED]
    # one "<3" cell next to a printed total: the smallest cell above SMALL_COUNT is hidden too
    assert protect([6, 1, 9], 16) == [SUPPRESSED, MASKED, 9]
    # 红1 橙1 next to their total: both would be 1; a third cell is hidden
    assert protect([1, 1, 5, 7], 14) == [MASKED, MASKED, SUPPRESSED, 7]
    # a cell of exactly SMALL_COUNT does not protect (it would read "at least 3" and be 3)
    assert protect([1, 3], 4) is None
    # total itself "<3": a single masked cell is safe, two are not (they would both be 1)
    assert protect([0, 2], 2) == [0, MASKED]
    assert protect([1, 1], 2) is None
    with pytest.raises(ValueError):
        protect([1, 4], 9)  # a part left out: the rest needs its own cell


def test_protect_is_sound_by_brute_force():
    rng = random.Random(7)
    published = 0
    for _ in range(3000):
        raw = [rng.choice([0, 1, 1, 2, 2, 3, 4, 5, 6, 9]) for _ in range(rng.randint(1, 5))]
        for printed in (True, False):
            pub = protect(raw, sum(raw) if printed else None)
            if pub is None:
                continue
            published += 1
            for r, p in zip(raw, pub):
                assert p == r if (r == 0 or r >= SMALL_COUNT) and p != SUPPRESSED else p in (MASKED, SUPPRESSED)
                assert p != SUPPRESSED or r > SMALL_COUNT
                assert p != MASKED or 0 < r < SMALL_COUNT
            # The reader knows the total (printed, or assumed known when it is not).
            _assert_nothing_pinned(pub, mask(sum(raw)) if printed else sum(raw), raw)
            if not printed:  # the pattern never depends on the masked values
                other = [rng.choice([1, 2]) if 0 < r < SMALL_COUNT else r for r in raw]
                assert protect(other, None) == pub
    assert published > 2000


# --- the risk map as a table: grid rows and level columns -------------------------------------
# A grid's households are its register (as knowable as the county's), so each grid row is a
# breakdown of a known total, just as each level's column is when the county totals are printed.

def _table_intervals(published: list[list], row_totals: list[int],
                     col_totals: Mapping[int, int]) -> dict[tuple[int, int], tuple[int, int]]:
    """What a reader can work out of each hidden cell of a published table from the published
    cells, every row total and the known column totals: its lowest and highest possible value.
    A linear programme over the hidden cells ("<3": 1..SMALL_COUNT-1, "*": at least SMALL_COUNT);
    the constraints are a bipartite incidence matrix, so its optima are whole numbers and every
    whole number between them is possible too: the interval is exact."""
    hidden = [(i, j) for i, r in enumerate(published) for j, v in enumerate(r) if not isinstance(v, int)]
    if not hidden:
        return {}
    a_eq, b_eq = [], []
    for i, r in enumerate(published):
        a_eq.append([1.0 if h[0] == i else 0.0 for h in hidden])
        b_eq.append(row_totals[i] - sum(v for v in r if isinstance(v, int)))
    for j, total in col_totals.items():
        a_eq.append([1.0 if h[1] == j else 0.0 for h in hidden])
        b_eq.append(total - sum(r[j] for r in published if isinstance(r[j], int)))
    box = [(1, SMALL_COUNT - 1) if published[i][j] == MASKED else (SMALL_COUNT, None) for i, j in hidden]
    out = {}
    for k, cell in enumerate(hidden):
        ends = []
        for sign in (1.0, -1.0):
            c = [0.0] * len(hidden)
            c[k] = sign
            res = linprog(c, A_eq=a_eq, b_eq=b_eq, bounds=box, method="highs")
            assert res.status == 0, ("the true table is feasible, so the programme must be", published)
            ends.append(round(sign * res.fun))
        out[cell] = (ends[0], ends[1])
    return out


def _assert_table_pins_nothing(published: list[list], raw: list[list[int]], known_columns: Iterable[int]) -> None:
    """No hidden cell is pinned by the row totals and the known column totals; and (the pattern
    that must hold for it) every row and every known column has no hidden cell or at least two."""
    row_totals = [sum(r) for r in raw]
    col_totals = {j: sum(r[j] for r in raw) for j in known_columns}
    for (i, j), (lo, hi) in _table_intervals(published, row_totals, col_totals).items():
        assert lo <= raw[i][j] <= hi
        assert lo < hi, f"cell {i},{j} of {published} can only be {lo} (rows {row_totals}, columns {col_totals})"
    hidden_in = lambda cells: sum(not isinstance(v, int) for v in cells)  # noqa: E731
    assert all(hidden_in(r) != 1 for r in published), published
    assert all(hidden_in([r[j] for r in published]) != 1 for j in col_totals), published


def _assert_published_forms(published: list[list], raw: list[list[int]]) -> None:
    for pr, rr in zip(published, raw):
        for p, r in zip(pr, rr):
            assert p == r if isinstance(p, int) else (p == MASKED and 0 < r < SMALL_COUNT
                                                         or p == SUPPRESSED and r > SMALL_COUNT)
            assert isinstance(p, int) or p in (MASKED, SUPPRESSED)
            assert not isinstance(p, int) or not 0 < p < SMALL_COUNT


def _map_of(raw: list[list[int]], villages: list[int] | None = None, as_of: date = END) -> tuple:
    """A risk map (one snapshot) and its areas for a grid × level table of counts."""
    grids = [f"G{i + 1:02d}" for i in range(len(raw))]
    villages = villages or [0] * len(raw)
    rm = pd.DataFrame([{"as_of": as_of, "grid_id": g, "level": lvl, "households": n, "change": 0}
                       for g, r in zip(grids, raw) for lvl, n in zip(LEVEL_COLORS, r)])
    areas = pd.DataFrame({"grid_id": grids, "village_id": [f"V{v}" for v in villages],
                          "village_name": [f"村{v}" for v in villages], "township_id": ["T1"] * len(raw)})
    return rm, areas


def _grid_cells(pub: dict) -> list[list]:
    """The published grid cells in the order of ``_map_of``'s rows (the map lists grids by village)."""
    return [[g[lvl] for lvl in LEVEL_COLORS] for g in sorted(pub["grids"], key=lambda g: g["grid"])]


def test_a_grid_row_with_one_small_cell_is_not_pinned_by_the_grids_household_count():
    # The reviewer's demo village: G0003 = 0, 0, 1, 90 of 91 households was published 0 / 0 / "<3"
    # / 90, so 黄 = 91 - 90 = 1; G0001 = 0 / "<3" / 9 / 112 of 122 gave 橙 = 1 away.
    raw = [[0, 1, 9, 112], [0, 1, 4, 82], [0, 0, 1, 90]]
    rm, areas = _map_of(raw)
    pub = publish_risk_map(rm, areas)
    cells = _grid_cells(pub)
    _assert_published_forms(cells, raw)
    _assert_table_pins_nothing(cells, raw, [j for j, lvl in enumerate(LEVEL_COLORS)
                                            if isinstance(pub["levels"][lvl], int)])
    assert cells[2] == [0, 0, MASKED, SUPPRESSED]      # 黄 is 1 or 2, 绿 89 or 90
    # the tooltips say no more than the cells
    tips = {t.text.split(":")[0]: t.text for t in ET.fromstring(risk_map_svg(rm, areas)).iter(f"{SVG}title")}
    assert tips["G03"] == f"G03: 红0户 橙0户 黄{MASKED}户 绿{SUPPRESSED}户"


def test_two_hidden_cells_in_every_row_and_column_can_still_pin_one():
    # 红 2 and 橙 1 hidden with one "*" each in their columns and rows (the old pattern): with
    # the rows' and columns' totals known the four hidden cells move together, 红 up when 橙 goes
    # up, and 2 + 1 cannot: both were pinned. Each "<3" now goes round with "*" cells only.
    raw = [[2, 5, 4, 20], [6, 1, 0, 30], [0, 0, 7, 25]]
    rm, areas = _map_of(raw, villages=[0, 0, 1])
    pub = publish_risk_map(rm, areas)
    assert pub["levels"] == {"红": 8, "橙": 6, "黄": 11, "绿": 75}   # the county totals stay exact
    cells = _grid_cells(pub)
    _assert_published_forms(cells, raw)
    _assert_table_pins_nothing(cells, raw, range(len(LEVEL_COLORS)))
    assert cells == [[MASKED, SUPPRESSED, 4, SUPPRESSED], [SUPPRESSED, MASKED, 0, SUPPRESSED], [0, 0, 7, 25]]


def test_protect_table_goes_round_small_cells_with_larger_ones():
    # one "<3" in a table with known rows and columns: the cheapest rectangle of counts above 3
    assert protect_table([[1, 9, 40], [5, 8, 30]]) == [[MASKED, SUPPRESSED, 40], [SUPPRESSED, SUPPRESSED, 30]]
    # the column's only other count is 3 ("*" would say "at least 3" and be 3): cannot be protected
    assert protect_table([[1, 9], [3, 8]]) is None
    # column totals unknown: a row's own smallest count above 3 is enough
    assert protect_table([[1, 9, 40], [5, 8, 30]], known_columns=False) == [[MASKED, SUPPRESSED, 40], [5, 8, 30]]
    # the one-row case is the breakdown rule with its total known but not printed
    assert protect_table([[6, 1, 9]], known_columns=False) == [protect([6, 1, 9])]



def test_protect_table_handles_a_city_sized_table():
    # 5,000 grids (a city has about 2,300), a fifth of the cells small: every row still has zero
    # or at least two hidden cells (its time is printed by benchmarks/bench_report_suppression.py)
    rng = random.Random(5)
    raw = [[rng.choice([0] * 8 + [1, 2, 3, 5]), rng.choice([0] * 5 + [1, 2, 4, 6]),
            rng.choice([0, 1, 2, 3, 5, 8, 12]), rng.randint(40, 150)] for _ in range(5000)]
    pub = protect_table(raw)
    assert pub is not None and sum(r.count(SUPPRESSED) for r in pub) > 1000
    hidden = [sum(not isinstance(v, int) for v in row) for row in pub]
    assert all(h == 0 or h >= 2 for h in hidden)


_counts = st.one_of(st.integers(0, SMALL_COUNT), st.integers(0, 30))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.integers(1, 6).flatmap(lambda n: st.lists(st.lists(_counts, min_size=4, max_size=4),
                                                         min_size=n, max_size=n)),
       villages=st.lists(st.integers(0, 2), min_size=6, max_size=6),
       flips=st.lists(st.booleans(), min_size=24, max_size=24))
def test_risk_map_pins_no_hidden_cell_from_row_and_column_totals(raw, villages, flips):
    """For any grid × level table: every grid's households and every county total printed
    exactly are known to the reader, and still no hidden cell has one possible value; the
    village rows are derived from the grid cells (so add nothing); when grids are withheld the
    village table is protected against the villages' households the same way; and the
    published pattern does not depend on the values inside "<3" cells."""
    rm, areas = _map_of(raw, villages[:len(raw)])
    pub = publish_risk_map(rm, areas)
    cells = _grid_cells(pub)
    exact_levels = [j for j, lvl in enumerate(LEVEL_COLORS) if isinstance(pub["levels"].get(lvl), int)]
    if cells[0][0] is not None:
        _assert_published_forms(cells, raw)
        _assert_table_pins_nothing(cells, raw, exact_levels)
        for v in pub["villages"]:
            for lvl in LEVEL_COLORS:
                assert v[lvl] == derived_total(g[lvl] for g in pub["grids"] if g["village"] == v["village"])
    elif pub["villages"]:
        vraw = {}
        for r, v in zip(raw, villages):
            vraw[f"村{v}"] = [a + b for a, b in zip(vraw.get(f"村{v}", [0] * 4), r)]
        vcells = [[v[lvl] for lvl in LEVEL_COLORS] for v in pub["villages"]]
        vtable = [vraw[v["village"]] for v in pub["villages"]]
        _assert_published_forms(vcells, vtable)
        _assert_table_pins_nothing(vcells, vtable, exact_levels)
    if cells[0][0] is not None:  # 1 ↔ 2 inside "<3" grid cells: the same grid (and village) cells
        other = [[(3 - n if flip else n) if 0 < n < SMALL_COUNT else n for n, flip in zip(r, flips[4 * i:])]
                 for i, r in enumerate(raw)]
        again = publish_risk_map(_map_of(other, villages[:len(raw)])[0], areas)
        assert again["grids"] == pub["grids"] and again["villages"] == pub["villages"]


@settings(max_examples=200, deadline=None)
@given(raw=st.lists(st.lists(_counts, min_size=1, max_size=5), min_size=1, max_size=5).filter(
           lambda t: len({len(r) for r in t}) == 1),
       known=st.booleans())
def test_protect_table_pins_nothing(raw, known):
    pub = protect_table(raw, known_columns=known)
    if pub is None:  # only when some "<3" has no count above SMALL_COUNT to go round with
        assert any(0 < n < SMALL_COUNT for r in raw for n in r)
        return
    _assert_published_forms(pub, raw)
    _assert_table_pins_nothing(pub, raw, range(len(raw[0])) if known else [])


def test_change_since_last_run_and_period_start_levels_give_no_grid_cell_away():
    """The change since the previous run is not published per grid (nor at all); the levels as
    the period began are the county totals of another snapshot, published by the same rule, and
    say nothing of the current grid cells: the current map reads the same whatever they are."""
    raw = [[0, 1, 9, 112], [0, 1, 4, 82], [0, 0, 1, 90]]
    rm, areas = _map_of(raw)
    base = summarise(period_start=START, period_end=END, households=_households(), risk_map=rm, areas=areas,
                     **_frames())
    assert not any("change" in k for k in base) and "change" not in str(aggregates_frame(base).item.tolist())
    for before_raw in ([[0, 1, 9, 112], [0, 1, 4, 82], [0, 0, 2, 89]], [[5, 4, 9, 104], [0, 6, 4, 77], [0, 0, 9, 82]]):
        before = _map_of(before_raw, as_of=START - timedelta(days=1))[0]
        now = rm.assign(change=[n - b for n, b in zip(rm.households, before.households)])
        agg = summarise(period_start=START, period_end=END, households=_households(),
                        risk_map=pd.concat([before, now], ignore_index=True), areas=areas, **_frames())
        for key in ("risk_by_grid", "risk_by_village", "risk_levels"):
            assert agg[key] == base[key]
        assert agg["risk_levels_before"] == publish_risk_map(before, areas)["levels"]
        exact = [j for j, lvl in enumerate(LEVEL_COLORS) if isinstance(agg["risk_levels"][lvl], int)]
        _assert_table_pins_nothing(_grid_cells(publish_risk_map(rm, areas)), raw, exact)


# --- summarise -------------------------------------------------------------------------------

def test_summarise_publishes_only_masked_figures(agg):
    assert agg["period_start"] == "2026-07-01" and agg["period_end"] == "2026-07-31"
    assert agg["households"] == 5
    assert agg["must_visit_households"] == 3
    # 1, 1 and 2 households: all "<3" and no cell to hide with them: the breakdown is withheld
    assert agg["by_category"] is None
    assert agg["visits_planned"] == 3          # P1, P2, P3 due in July
    assert agg["visits_done"] == MASKED        # 2
    assert agg["completion_rate"] is None      # 2/3 would give the masked 2 away
    assert agg["visits_recorded"] == 3         # 07-31 23:30 counts, 08-01 00:00 does not
    assert agg["flags"] == 3
    # 2 + 1 = 3: each "<3" can still be 1 or 2; listed in label order, not by count
    assert agg["flags_by_kind"] == [{"label": "长时间无用电活动", "count": MASKED},
                                    {"label": "婚姻家庭矛盾", "count": MASKED}]
    assert agg["alerts"] == 3
    assert (agg["alerts_sent"], agg["alerts_dead"], agg["alerts_cancelled"], agg["alerts_pending"]) == (
        MASKED, MASKED, 0, 0)
    assert agg["alerts_acked"] == MASKED and agg["median_minutes_to_ack"] is None  # 2 acknowledgements
    assert agg["cases_opened"] == MASKED and agg["cases_closed"] == MASKED
    assert agg["needs"] == 3 and agg["needs_matched"] == MASKED
    assert agg["common_demands"] == [{"label": "空巢老人照料", "count": MASKED},
                                     {"label": "家庭教育", "count": MASKED}]


def test_summarise_counts_large_enough_are_exact():
    agg = _summarise(_scaled(_frames()), households=pd.concat([_households()] * 3, ignore_index=True))
    assert agg["households"] == 15 and agg["must_visit_households"] == 9
    assert {c["label"]: c["count"] for c in agg["by_category"]} == {
        CATEGORY_LABELS["dispute"]: 3, CATEGORY_LABELS["hardship"]: 3, CATEGORY_LABELS["empty_nest"]: 6}
    assert agg["visits_planned"] == 9 and agg["visits_done"] == 6 and agg["completion_rate"] == round(2 / 3, 3)
    assert agg["flags"] == 9
    assert agg["flags_by_kind"] == [{"label": "长时间无用电活动", "count": 6}, {"label": "婚姻家庭矛盾", "count": 3}]
    assert (agg["alerts"], agg["alerts_sent"], agg["alerts_dead"], agg["alerts_acked"]) == (9, 6, 3, 6)
    assert agg["median_minutes_to_ack"] == 20.0  # 10 and 30 minutes
    assert agg["cases_opened"] == 3 and agg["cases_closed"] == 3
    assert agg["needs"] == 9 and agg["needs_matched"] == 6
    assert agg["common_demands"][0] == {"label": "家庭教育", "count": 6}


def test_cancelled_alerts_are_their_own_part_as_of_the_period_end():
    # Cancelled: its flag was answered before it went out. Answered after the period (here the
    # flag closed in August), the alert was still waiting at the period's end.
    frames = _scaled(_frames())
    a = frames["alerts"]
    a["flag_closed_at"] = pd.NaT
    a.loc[a.id.str.startswith("A3"), "status"] = "cancelled"
    a.loc[a.id == "A3-0", "flag_closed_at"] = T("2026-07-25 09:00")
    a.loc[a.id == "A3-1", "flag_closed_at"] = T("2026-07-26 09:00")
    a.loc[a.id == "A3-2", "flag_closed_at"] = T("2026-07-28 09:00")
    agg = _summarise(frames, households=pd.concat([_households()] * 3, ignore_index=True))
    parts = (agg["alerts_sent"], agg["alerts_dead"], agg["alerts_cancelled"], agg["alerts_pending"])
    assert agg["alerts"] == 9 and parts == (6, 0, 3, 0)
    a.loc[a.id == "A3-2", "flag_closed_at"] = T("2026-08-02 09:00")
    agg = _summarise(frames, households=pd.concat([_households()] * 3, ignore_index=True))
    assert (agg["alerts_cancelled"], agg["alerts_pending"]) == (MASKED, MASKED)
    assert "撤销" in _report(agg)


def test_summarise_risk_levels_are_derived_from_the_published_grid_cells(agg):
    # latest snapshot only (the old 红9 is ignored); 红1 → "<3", 橙2 → "<3", 黄3; green's G1
    # cell (4) is hidden to protect G1's red one and G3's (6) to protect G3's orange one (a
    # grid's households are known: G3's 11 less 0 + 3 + 6 would give 橙 = 2 away), so the
    # county green total is a range
    assert agg["risk_levels"] == {"红": MASKED, "橙": MASKED, "黄": 3, "绿": "≥11"}
    assert "红色 1 户" not in _report(agg)


def test_summarise_masks_small_counts_by_village(agg):
    by = {r["village"]: r for r in agg["risk_by_village"]}
    assert set(by) == {"万地村", "丽园社区"}
    assert by["万地村"]["红"] == MASKED        # 1 household
    assert by["万地村"]["橙"] == 0             # zero is not a small count
    assert by["万地村"]["绿"] == "≥8"          # G1's 4 is hidden ("*"), G2's 5 shown
    assert by["丽园社区"]["橙"] == MASKED      # 2 households
    assert by["丽园社区"]["黄"] == 3           # exactly SMALL_COUNT is shown
    assert by["丽园社区"]["绿"] == "≥3"        # G3's 6 is hidden ("*") with its row's "<3"
    grids = {g["grid"]: g for g in agg["risk_by_grid"]}
    assert grids["G1"] == {"grid": "G1", "village": "万地村", "红": MASKED, "橙": 0, "黄": 0, "绿": SUPPRESSED}
    assert grids["G3"] == {"grid": "G3", "village": "丽园社区", "红": 0, "橙": MASKED, "黄": 3, "绿": SUPPRESSED}


def test_totals_do_not_reveal_masked_cells(agg):
    # Every village and county figure contains the true count, and is not exact where a
    # masked grid cell went into it.
    rm = _risk_map()
    latest = rm[rm.as_of == rm.as_of.max()].merge(_areas()[["grid_id", "village_name"]], on="grid_id")
    for r in agg["risk_by_village"]:
        for lvl in LEVEL_COLORS:
            true = int(latest[(latest.village_name == r["village"]) & (latest.level == lvl)].households.sum())
            lo, hi = bounds(r[lvl])
            assert lo <= true <= hi
            grid_cells = [g[lvl] for g in agg["risk_by_grid"] if g["village"] == r["village"]]
            assert r[lvl] == derived_total(grid_cells)
    for lvl, shown in agg["risk_levels"].items():
        assert shown == derived_total(g[lvl] for g in agg["risk_by_grid"])
    # The grid cells, with the county's total and every grid's known exactly (they are the
    # register), and the county level totals that are printed exactly, pin nothing.
    cells = [[g[lvl] for lvl in LEVEL_COLORS] for g in agg["risk_by_grid"]]
    raw = [[int(latest[(latest.grid_id == g["grid"]) & (latest.level == lvl)].households.sum())
            for lvl in LEVEL_COLORS] for g in agg["risk_by_grid"]]
    _assert_nothing_pinned([c for r in cells for c in r], sum(map(sum, raw)), [n for r in raw for n in r])
    _assert_table_pins_nothing(cells, raw, [j for j, lvl in enumerate(LEVEL_COLORS)
                                            if isinstance(agg["risk_levels"][lvl], int)])
    # Breakdowns printed next to their totals pin nothing either.
    _assert_nothing_pinned([f["count"] for f in agg["flags_by_kind"]], agg["flags"], [2, 1])
    _assert_nothing_pinned([agg["alerts_sent"], agg["alerts_dead"], agg["alerts_cancelled"], agg["alerts_pending"]],
                           agg["alerts"], [2, 1, 0, 0])


def test_a_single_small_kind_gets_a_complementary_cell():
    frames = _frames()
    frames["flags"] = pd.DataFrame({
        "id": [f"F{i}" for i in range(8)],
        "kind": ["inactivity"] * 6 + ["domestic_violence", "self_harm"],
        "detected_at": [T("2026-07-10")] * 8,
    })
    agg = _summarise(frames)
    assert agg["flags"] == 8
    assert agg["flags_by_kind"] == [{"label": "长时间无用电活动", "count": SUPPRESSED},
                                    {"label": "家庭暴力线索", "count": MASKED},
                                    {"label": "轻生线索", "count": MASKED}]
    _assert_nothing_pinned([f["count"] for f in agg["flags_by_kind"]], 8, [6, 1, 1])
    report = _report(agg)
    assert all(n == 0 or n >= SMALL_COUNT for n in _visible_integers(report))


def test_summarise_output_carries_no_personal_data(agg):
    text = repr(agg)
    for s in PII:
        assert s not in text
    frame = aggregates_frame(agg)
    assert list(frame.columns) == ["item", "unit", "shown", "count"]
    assert frame.loc[frame.item == "households", "count"].tolist() == [5.0]
    for s in PII:
        assert not frame.astype(str).apply(lambda col, s=s: col.str.contains(s, regex=False)).any().any()


def test_summarise_empty_period():
    empty = {k: v.iloc[0:0] for k, v in _frames().items()}
    agg = _summarise(empty, risk_map=_risk_map().iloc[0:0])
    assert agg["visits_planned"] == 0 and agg["completion_rate"] is None
    assert agg["flags"] == 0 and agg["alerts"] == 0 and agg["median_minutes_to_ack"] is None
    assert agg["flags_by_kind"] == [] and agg["response_by_village"] == []
    assert agg["risk_levels"] == {lvl: 0 for lvl in LEVEL_COLORS}
    assert agg["risk_by_village"] == [] and agg["common_demands"] == []
    html = render_report(agg, risk_map_svg_text=risk_map_svg(_risk_map().iloc[0:0], _areas()))
    assert "本期未收集到普遍性诉求" in html and "暂无数据" in html


# --- aggregates_frame and the report_aggregates suite -------------------------------------------

def test_aggregates_frame_holds_every_published_cell(agg):
    frame = aggregates_frame(agg)
    village = frame[frame.item == "risk_by_village.红"]
    assert dict(zip(village.unit, village.shown)) == {"万地村": MASKED, "丽园社区": "0"}
    assert set(frame[frame.item.str.startswith("risk_by_grid.")].unit) == {"G1", "G2", "G3"}
    assert set(frame[frame.item == "flags_by_kind.count"].shown) == {MASKED}
    # exact counts carry their number; masks and ranges do not
    assert frame.loc[frame.shown == MASKED, "count"].isna().all()
    assert not frame["count"].dropna().between(1, SMALL_COUNT - 1).any()


def test_report_aggregates_suite_passes_the_report_and_fails_a_small_count(agg):
    from schemas.validation import DataContractError, raise_for_critical, validate_frame

    frames = [aggregates_frame(agg), aggregates_frame(_summarise(_scaled(_frames())))]
    for frame in frames:
        good = validate_frame(frame, "report_aggregates", source="summary report")
        assert good.success, good.summary()
    # A per-village count of 1 that escaped masking (the check used to see column names only).
    bad = aggregates_frame(agg)
    bad.loc[bad.item == "risk_by_village.红", ["shown", "count"]] = ["1", 1.0]
    report = validate_frame(bad, "report_aggregates", source="summary report")
    assert not report.success
    assert [(r.expectation, r.column, r.unexpected_count) for r in report.critical_failures] == [
        ("expect_column_values_to_match_regex", "shown", 2)]
    with pytest.raises(DataContractError, match="shown"):
        raise_for_critical(report)
    # A total of 2, a range starting below 3, or a form the suite does not know fail too;
    # a median of 2.0 minutes is not a count and passes.
    for item, shown in (("households", "2"), ("risk_levels.绿", "2～4"), ("risk_levels.绿", "≥2"),
                        ("households", "约2")):
        frame = aggregates_frame(agg)
        frame.loc[frame.item == item, "shown"] = shown
        assert not validate_frame(frame, "report_aggregates", source="summary report").success, shown
    median = aggregates_frame(agg)
    median.loc[median.item == "median_minutes_to_ack", "shown"] = "2.0"
    assert validate_frame(median, "report_aggregates", source="summary report").success


# --- risk_map_svg ----------------------------------------------------------------------------

def test_risk_map_svg_is_valid_with_one_rect_per_grid(svg):
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    rects = root.findall(f".//{SVG}rect")
    assert len(rects) == 3
    titles = [r.find(f"{SVG}title").text for r in rects]
    assert sorted(t.split(":")[0] for t in titles) == ["G1", "G2", "G3"]
    for r in rects:
        assert re.fullmatch(r"#[0-9a-f]{6}", r.get("fill"))
    texts = "".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "万地村" in texts and "丽园社区" in texts and "家庭风险动态预警图" in texts


def test_risk_map_svg_colours_hot_grids_redder(svg):
    root = ET.fromstring(svg)
    fill = {r.find(f"{SVG}title").text.split(":")[0]: r.get("fill") for r in root.findall(f".//{SVG}rect")}
    assert fill["G2"] == "#b3de69"          # all green
    red = lambda c: int(c[1:3], 16) - int(c[3:5], 16)  # noqa: E731
    assert red(fill["G1"]) > red(fill["G2"]) and red(fill["G3"]) > red(fill["G2"])


def test_risk_map_svg_escapes_names():
    areas = _areas().assign(village_name=["A&B<村>", "A&B<村>", "丽园社区"])
    root = ET.fromstring(risk_map_svg(_risk_map(), areas))  # parses: & and < are escaped
    assert any((t.text or "") == "A&B<村>" for t in root.iter(f"{SVG}text"))


def test_risk_map_svg_empty_is_valid():
    root = ET.fromstring(risk_map_svg(_risk_map().iloc[0:0], _areas()))
    assert root.findall(f".//{SVG}rect") == []


def test_risk_map_svg_grid_without_area_still_drawn():
    rm = _risk_map()
    rm = pd.concat([rm, pd.DataFrame({"as_of": [END], "grid_id": ["G-new"], "level": ["绿"], "households": [4],
                                      "change": [0]})], ignore_index=True)
    root = ET.fromstring(risk_map_svg(rm, _areas()))
    assert len(root.findall(f".//{SVG}rect")) == 4


def test_risk_map_svg_does_not_leak_small_counts(svg):
    root = ET.fromstring(svg)
    for title in root.iter(f"{SVG}title"):
        counts = [int(n) for n in re.findall(r"[红橙黄绿](\d+)", title.text)]
        assert not any(0 < n < SMALL_COUNT for n in counts), title.text


@pytest.mark.parametrize("changes", [{("G1", "红"): 2}, {("G3", "橙"): 1}, {("G1", "红"): 2, ("G3", "橙"): 1}])
def test_map_and_report_do_not_depend_on_masked_values(svg, report, changes):
    # 红1 → 红2 (or 橙2 → 橙1): the same published cells, so the same colours, tooltips, tables
    # and totals: nothing in the report tells the two apart.
    rm = _with_counts(_risk_map(), changes)
    assert risk_map_svg(rm, _areas()) == svg
    assert _report(_summarise(risk_map=rm), rm) == report


def test_risk_map_colours_follow_published_figures_not_raw_counts():
    # 红1 橙1 绿9 and 红2 橙2 绿9 read the same, and get the same colour.
    base = pd.DataFrame({"as_of": [END] * 6, "grid_id": ["G1"] * 3 + ["G3"] * 3, "level": ["红", "橙", "绿"] * 2,
                         "households": [1, 1, 9, 0, 0, 12], "change": [0] * 6})
    other = _with_counts(base, {("G1", "红"): 2, ("G1", "橙"): 2})
    assert risk_map_svg(base, _areas()) == risk_map_svg(other, _areas())


def test_county_totals_are_exact_when_every_level_can_be_protected_on_its_own():
    rm = pd.DataFrame({"as_of": [END] * 12, "grid_id": ["G1"] * 4 + ["G2"] * 4 + ["G3"] * 4,
                       "level": list(LEVEL_COLORS) * 3,
                       "households": [1, 5, 4, 20, 6, 1, 0, 30, 0, 0, 7, 25], "change": [0] * 12})
    pub = publish_risk_map(rm, _areas())
    assert pub["levels"] == {"红": 7, "橙": 6, "黄": 11, "绿": 75}
    grids = {g["grid"]: g for g in pub["grids"]}
    assert [grids[g]["红"] for g in ("G1", "G2", "G3")] == [MASKED, SUPPRESSED, 0]
    assert [grids[g]["橙"] for g in ("G1", "G2", "G3")] == [SUPPRESSED, MASKED, 0]
    assert [grids[g]["黄"] for g in ("G1", "G2", "G3")] == [4, 0, 7]
    for lvl, raw in {"红": [1, 6, 0], "橙": [5, 1, 0]}.items():  # the county total pins nothing
        _assert_nothing_pinned([grids[g][lvl] for g in ("G1", "G2", "G3")], pub["levels"][lvl], raw)
    village = {v["village"]: v for v in pub["villages"]}
    assert village["万地村"]["红"] == "≥4" and village["丽园社区"]["黄"] == 7
    # and the map still cannot tell 红1 from 红2
    assert risk_map_svg(rm, _areas()) == risk_map_svg(_with_counts(rm, {("G1", "红"): 2}), _areas())


def test_risk_map_falls_back_to_villages_when_grids_cannot_be_protected():
    # Grid cells 1, 3, 3: no cell above SMALL_COUNT to hide with the 1, so no grid figures at all.
    rm = pd.DataFrame({"as_of": [END] * 3, "grid_id": ["G1", "G1", "G2"], "level": ["红", "绿", "绿"],
                       "households": [1, 3, 3], "change": [0] * 3})
    pub = publish_risk_map(rm, _areas())
    assert all(g[lvl] is None for g in pub["grids"] for lvl in LEVEL_COLORS)
    assert pub["villages"] == [{"village": "万地村", "红": MASKED, "橙": 0, "黄": 0, "绿": SUPPRESSED}]
    assert pub["levels"] == {"红": MASKED, "橙": 0, "黄": 0, "绿": "≥3"}
    root = ET.fromstring(risk_map_svg(rm, _areas()))
    rects = root.findall(f".//{SVG}rect")
    assert {r.get("fill") for r in rects} == {NO_DATA_FILL}
    assert all(not re.search(r"\d+$", r.find(f"{SVG}title").text) for r in rects)


# --- render_report ---------------------------------------------------------------------------

def test_report_is_chinese_html_with_the_counts(report):
    assert report.lstrip().startswith("<!DOCTYPE html>")
    assert 'lang="zh-CN"' in report
    assert "四必访工作情况报告" in report
    assert "2026-07-01 至 2026-07-31" in report
    assert "在册家庭 5 户" in report and "重点家庭 3 户" in report
    assert "本期产生风险预警 3 条" in report
    assert "推送预警消息 3 条" in report and "已送达 &lt;3 条" in report and "投递失败转人工 &lt;3 条" in report
    assert "转介调解室 &lt;3 件" in report and "已与服务资源池对接 &lt;3 项" in report
    assert "各类别户数较少，不分类列示" in report
    assert "红色 &lt;3 户" in report and "绿色 ≥11 户" in report
    assert "家庭教育" in report and "长时间无用电活动" in report
    assert "<svg" in report
    assert f"不足{SMALL_COUNT}" in report and "{{" not in report
    # mostly Chinese text, not an English template
    body = re.sub(r"<[^>]+>", "", report.split("<body>", 1)[1])
    han = sum("\u4e00" <= ch <= "\u9fff" for ch in body)
    latin_words = re.findall(r"[A-Za-z]{4,}", body)
    assert han > 200 and han > 5 * len(latin_words)


def test_report_says_the_register_counts_are_of_the_period_end_with_todays_categories(report):
    """Families are counted on the register at the period's end (registration and removal
    dates), but the register keeps no record of when a family became a 重点家庭: the categories
    are the register's when the report is made, and the report says so."""
    text = html_lib.unescape(re.sub(r"<[^>]+>", "", report))
    assert (f"在册家庭 5 户，其中“四必访”重点家庭 3 户（统计期末 {END.isoformat()} 在册的家庭，到期末已注销"
            "（迁出、去世等）的不计；各户的必访类别按生成本报告时的名册统计，名册不保存类别的变更记录）") in text


def test_report_with_larger_counts_shows_them():
    agg = _summarise(_scaled(_frames()), households=pd.concat([_households()] * 3, ignore_index=True))
    report = _report(agg)
    assert "确认用时中位数 20.0 分钟" in report and "66.7%" in report
    assert "已送达 6 条" in report and "投递失败转人工 3 条" in report
    assert "针对反映较集中的“家庭教育”" in report


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_report_shows_no_unmasked_small_count_anywhere(scale):
    frames = _scaled(_frames(), scale)
    frames["alerts"] = frames["alerts"].assign(
        channel=(["webhook", "sms", "wecom"] * 12)[:len(frames["alerts"])],
        grid_id=(["G1", "G3", "G1", "G2"] * 12)[:len(frames["alerts"])])
    agg = _summarise(frames, households=pd.concat([_households()] * scale, ignore_index=True))
    report = _report(agg)
    numbers = _visible_integers(report)
    assert numbers, "the parser found no figures"
    small = [n for n in numbers if 0 < n < SMALL_COUNT]
    assert not small, f"unmasked small counts in the report: {small}"
    # … nor in the figures handed to validation
    assert not aggregates_frame(agg)["count"].dropna().between(1, SMALL_COUNT - 1).any()


def test_report_labels_channels_in_chinese():
    frames = _scaled(_frames(), 3)
    frames["alerts"] = frames["alerts"].assign(channel=["sms", "wecom"] * 6)
    report = _report(_summarise(frames))
    cells = re.findall(r"<tr><td>(.*?)</td>", report)
    assert ALERT_CHANNEL_LABELS["sms"] in cells and ALERT_CHANNEL_LABELS["wecom"] in cells
    assert "sms" not in cells and "wecom" not in cells
    # 2 + 2 acknowledgements by channel next to a total of 4 would give both 2s away: withheld
    frames = _scaled(_frames(), 2)
    frames["alerts"] = frames["alerts"].assign(channel=["sms", "wecom"] * 4)
    agg = _summarise(frames)
    assert agg["response_by_channel"] is None and "不分渠道列示" in _report(agg)


def test_report_masks_small_village_counts(report):
    assert "&lt;3" in report
    rows = re.findall(r"<tr><td>(万地村|丽园社区)</td>(.*?)</tr>", report)
    assert len(rows) == 2
    cells = {v: re.findall(r"<td>(.*?)</td>", rest) for v, rest in rows}
    assert cells["万地村"] == ["&lt;3", "0", "0", "≥8"]
    assert cells["丽园社区"] == ["0", "&lt;3", "3", "≥3"]


def test_report_contains_no_personal_data(report, svg):
    for s in PII:
        assert s not in report
        assert s not in svg
    # nothing that looks like a resident ID or a mainland mobile number
    assert not re.search(r"\d{17}[\dXx]", report)
    assert not re.search(r"(?<!\d)1[3-9]\d{9}(?!\d)", report)


def test_report_escapes_labels():
    agg = _summarise(areas=_areas().assign(village_name=["<script>x</script>"] * 2 + ["丽园社区"]))
    html = render_report(agg, risk_map_svg_text="<svg xmlns='http://www.w3.org/2000/svg'/>")
    assert "<script>x</script>" not in html
    assert "&lt;script&gt;" in html


def test_a_report_remade_later_shows_the_period_as_it_ended():
    """Things done after the period (a plan's visit, an acknowledgement, a case closed) are not
    its figures: the same period's report, made again next month, is the same."""
    from sibifang.summary_report import as_of_period_end

    frames = _scaled(_frames())
    made_then = _summarise(frames)
    later = {k: v.copy() for k, v in frames.items()}
    after = T("2026-08-10 09:00")
    p = later["plans"]
    p["done_at"] = pd.NaT
    p.loc[p.status.eq("done"), "done_at"] = T("2026-07-15")  # done within the period
    p.loc[p.status.eq("planned"), ["status", "done_at"]] = ["done", after]  # done only next month
    a = later["alerts"]
    a.loc[a.acked_at.isna(), "acked_at"] = after
    c = later["cases"]
    c["closed_at"] = pd.NaT
    c.loc[c.status.eq("closed"), "closed_at"] = T("2026-06-15")
    c.loc[c.status.eq("open"), ["status", "closed_at"]] = ["closed", after]
    assert _summarise(later) == made_then
    # and the censoring itself: nothing after the period's end is left
    plans, alerts, cases, _ = as_of_period_end(later["plans"], later["alerts"], later["cases"], later["needs"], END)
    assert (plans.status.eq("done") == (plans.done_at < after)).all()
    assert alerts.acked_at.max() < after and cases.status.eq("closed").sum() == 3



def test_confirmed_alerts_are_delivered_ones_answered_after_delivery():
    """Given only ``acked_at`` (no answer recorded per alert), an alert counts as confirmed
    once it was delivered and answered after that: never sent, or sent only after its flag was
    answered (claimed just before the answer), it was confirmed by no one."""
    frames = _scaled(_frames())
    a = frames["alerts"]
    a.loc[a.id.str.startswith("A3"), "acked_at"] = T("2026-07-20 08:10")          # dead: never delivered
    a.loc[a.id.str.startswith("A2"), "first_sent_at"] = T("2026-07-12 08:40")     # sent after the answer
    agg = _summarise(frames, households=pd.concat([_households()] * 3, ignore_index=True))
    assert (agg["alerts_sent"], agg["alerts_acked"], agg["median_minutes_to_ack"]) == (6, 3, 10.0)

def test_the_report_shows_the_levels_as_the_period_began_beside_the_current_ones():
    before = pd.DataFrame({"as_of": [START - timedelta(days=1)] * 4, "grid_id": ["G1", "G2", "G3", "G3"],
                           "level": ["红", "绿", "橙", "绿"], "households": [4, 5, 3, 9], "change": [0] * 4})
    older = before.assign(as_of=START - timedelta(days=9), households=[7, 2, 8, 4])
    rm = pd.concat([older, before, _risk_map()], ignore_index=True)
    agg = _summarise(risk_map=rm)
    assert agg["risk_before_date"] == (START - timedelta(days=1)).isoformat()
    assert agg["risk_levels_before"] == {"红": 4, "橙": 3, "黄": 0, "绿": 14}
    assert agg["risk_levels"] == _summarise()["risk_levels"]          # the current map is the latest's
    assert f"本期开始前（{START - timedelta(days=1)}）：红色 4 户，橙色 3 户，黄色 0 户，绿色 14 户" in _report(agg, rm)
    assert "本期开始前" not in _report(_summarise())                   # no run before the period: nothing to compare


def test_the_levels_are_those_at_the_periods_end_and_say_so():
    """A report on a past period showed its levels as "当前风险等级分布" (current), and a map run
    after the period (handed to ``summarise``) replaced the period's own: they are the latest run
    on or before the period's last day, and the report says which day that was."""
    after = pd.DataFrame({"as_of": [END + timedelta(days=3)] * 2, "grid_id": ["G1", "G3"], "level": ["红", "绿"],
                          "households": [7, 8], "change": [0, 0]})
    rm = pd.concat([_risk_map(), after], ignore_index=True)
    agg = _summarise(risk_map=rm)
    assert agg["risk_levels"] == _summarise()["risk_levels"] and agg["risk_date"] == END.isoformat()
    text = html_lib.unescape(re.sub(r"<[^>]+>", "", _report(agg)))
    assert "当前" not in text and f"统计期末（{END}）风险等级分布：红色 <3 户" in text


def test_flags_whose_escalation_found_no_one_are_counted_once_and_masked():
    """Counted per flag (a flag recorded at two steps is one), in the period only, masked when small."""
    exhausted = pd.DataFrame({"flag_id": ["F2", "F2", "F3", "F9"],
                              "at": [T("2026-07-12 09:00"), T("2026-07-12 10:00"), T("2026-07-20 09:00"),
                                     T("2026-08-02 09:00")]})
    agg = summarise(period_start=START, period_end=END, households=_households(), risk_map=_risk_map(),
                    areas=_areas(), escalations_exhausted=exhausted, **_frames())
    assert agg["flags_escalation_exhausted"] == MASKED  # two flags in July
    assert "本期有 &lt;3 条风险预警无人响应" in _report(agg)
    many = pd.DataFrame({"flag_id": [f"F{i}" for i in range(4)], "at": [T("2026-07-15 09:00")] * 4})
    agg = summarise(period_start=START, period_end=END, households=_households(), risk_map=_risk_map(),
                    areas=_areas(), escalations_exhausted=many, **_frames())
    assert agg["flags_escalation_exhausted"] == 4 and "本期有 4 条风险预警无人响应" in _report(agg)
    assert "无人响应" not in _report(_summarise())  # none: no sentence


# --- gathered from the database (both engines) ---------------------------------------------------
@pytest.fixture
def county(database_url):
    """One village, one grid, one grid worker, six households; nothing planned or visited yet."""
    from schemas.models import Area, Cadre, Household
    from sibifang.db import migrate, session_scope, upsert

    migrate(database_url)
    with session_scope(database_url) as s:
        upsert(s, Area, [
            {"id": "C1", "level": "city", "name": "甬江市", "parent_id": None, "village_kind": None},
            {"id": "D1", "level": "district", "name": "鄞东区", "parent_id": "C1", "village_kind": None},
            {"id": "T1", "level": "township", "name": "东湖街道", "parent_id": "D1", "village_kind": None},
            {"id": "V1", "level": "village", "name": "万堤村", "parent_id": "T1", "village_kind": "村"},
            {"id": "G1", "level": "grid", "name": "万堤村第1网格", "parent_id": "V1", "village_kind": None},
        ], key=["id"])
        s.add(Cadre(id="GW1", name="陈丽", role="grid_worker", grid_ids=["G1"], alert_channel="webhook",
                    alert_address="http://127.0.0.1:9/unused"))
        s.add(Cadre(id="VC1", name="王秀英", role="village_chair", grid_ids=["G1"], alert_channel="webhook",
                    alert_address="http://127.0.0.1:9/unused"))
        for i in range(6):
            s.add(Household(id=f"H{i}", head_name=f"李{i}英", grid_id="G1", address=f"万堤村{i}号",
                            categories=["empty_nest"], birth_year=1940, sex="F"))
    return database_url


# Who the report says confirmed: whoever an alert reached and answered through it (grid worker,
# village chair, or on escalation a township vice chair or supervisor).
CONFIRMED_BY = "由收到预警的网格员、村妇联主席或上级妇联干部本人确认"


def _inactivity_flags(url: str, n: int, at) -> None:
    from schemas.models import RiskFlag
    from sibifang.db import session_scope

    with session_scope(url) as s:
        for i in range(n):
            s.add(RiskFlag(id=f"F{i}", dedup_key=f"meter|M{i}|inactivity|x", household_id=f"H{i}", meter_id=f"M{i}",
                           kind="inactivity", severity="high", score=5.0, start=at - timedelta(hours=9),
                           detected_at=at, evidence="用电接近停止", details={}, status="open"))


def _alert(alert_id: str, flag_id: str, recipient: str, *, at, status: str = "sent", level: int = 0):
    from schemas.models import Alert

    sent = status == "sent"
    return Alert(id=alert_id, dedup_key=f"dedup-{alert_id}", flag_id=flag_id, recipient_id=recipient,
                 recipient_role="grid_worker" if recipient == "GW1" else "village_chair", channel="webhook",
                 address="http://127.0.0.1:9/x", severity="high", title="t", body="b", status=status,
                 attempts=int(sent), escalation_level=level, created_at=at, next_attempt_at=at,
                 first_sent_at=at if sent else None, sent_at=at if sent else None)


def test_plans_closed_by_a_visit_that_names_no_plan_count_as_done(county):
    """A village's visit sheet names no plan (``plan_id`` empty, as generate.py writes it);
    ``close_plans`` matches each visit to its plan by window, marks the plan done and records
    the visit in ``closed_by_visit_id``. The report counts those plans as done: before, it took
    a plan's done time only from visits naming it, and ``as_of_period_end`` turned every done
    plan without one back into planned."""
    from schemas.models import Visit, VisitPlan
    from sibifang.db import session_scope
    from tasks.record_visits import close_plans
    from tasks.summary_report import gather_aggregates

    with session_scope(county) as s:
        for i in range(5):
            s.add(VisitPlan(id=f"P{i}", household_id=f"H{i}", cadre_id="GW1", grid_id="G1",
                            due_date=date(2026, 11, 10), window_start=date(2026, 11, 5),
                            window_end=date(2026, 11, 15), reason="routine", planned_on=date(2026, 11, 1)))
            # the fifth plan's visit names it: counted as before
            s.add(Visit(id=f"VS{i}", plan_id="P4" if i == 4 else None, household_id=f"H{i}", cadre_id="GW1",
                        visited_at=datetime(2026, 11, 8, 10), mode="visit"))
    assert close_plans.fn(date(2026, 11, 8), county)["plans_closed"] == 5
    agg = gather_aggregates.fn(date(2026, 11, 1), date(2026, 11, 30), county)["aggregates"]
    assert (agg["visits_planned"], agg["visits_done"], agg["completion_rate"]) == (5, 5, 1.0)
    # done on 11-08: a report for the week before it still shows them planned, not done
    agg = gather_aggregates.fn(date(2026, 11, 1), date(2026, 11, 7), county)["aggregates"]
    assert agg["visits_done"] == 0


def test_the_report_counts_only_alerts_delivered_and_then_confirmed(county):
    """Four high flags, each with the grid worker's alert (sent, she taps 收到) and a second alert
    still queued (the chair's, a re-send): her answer marks every alert of the flag answered
    (``acked_at``) and the queued ones are cancelled, never sent. The report said "已送达 4 条 …
    撤销 4 条，网格员已确认 8 条"; confirmed are only alerts delivered and then answered."""
    from schemas.models import Alert
    from sibifang.acknowledge import acknowledge
    from sibifang.db import session_scope
    from sibifang.outbox import claim_due
    from tasks.summary_report import gather_aggregates

    sent = datetime(2026, 11, 10, 9)
    _inactivity_flags(county, 4, sent)
    with session_scope(county) as s:
        for i in range(4):
            s.add(_alert(f"A{i}", f"F{i}", "GW1", at=sent))
            s.add(_alert(f"B{i}", f"F{i}", "VC1", at=sent, status="pending"))
    for i in range(4):
        acknowledge(f"A{i}", actor="GW1", at=sent + timedelta(minutes=20), database_url=county)
    with session_scope(county) as s:
        claim_due(s, now=sent + timedelta(hours=3), token="t")
        assert set(s.scalars(select(Alert.status).where(Alert.id.like("B%")))) == {"cancelled"}
        assert s.scalar(select(func.count()).where(Alert.acked_at.is_not(None))) == 8   # the data as it is
    agg = gather_aggregates.fn(date(2026, 11, 1), date(2026, 11, 30), county)["aggregates"]
    assert (agg["alerts"], agg["alerts_sent"], agg["alerts_cancelled"], agg["alerts_acked"]) == (8, 4, 4, 4)
    assert agg["median_minutes_to_ack"] == 20.0
    for table in ("response_by_channel", "response_by_village"):
        assert [(r["alerts"], r["acked"]) for r in agg[table]] == [(8, 4)], table
    assert "已送达 4 条" in render_report(agg, risk_map_svg_text="") and CONFIRMED_BY + " 4 条" in render_report(
        agg, risk_map_svg_text="")


def test_an_alert_a_colleague_answered_is_delivered_not_confirmed(county):
    """Four critical flags: the grid worker's alert at 09:00 goes unanswered, the chair is told at
    09:30, and the grid worker answers at 09:50 through her own alert. Both alerts were
    delivered; hers was confirmed after 50 minutes, the chair's by no one (her colleague's answer
    stamps it answered too). Counting the chair's would read 8 confirmed and a median of 35
    minutes for a response that took 50."""
    from sibifang.acknowledge import acknowledge
    from sibifang.db import session_scope
    from tasks.summary_report import gather_aggregates

    t0 = datetime(2026, 11, 10, 9)
    _inactivity_flags(county, 4, t0)
    with session_scope(county) as s:
        for i in range(4):
            s.add(_alert(f"A{i}", f"F{i}", "GW1", at=t0))
            s.add(_alert(f"B{i}", f"F{i}", "VC1", at=t0 + timedelta(minutes=30), level=1))
    for i in range(4):
        acknowledge(f"A{i}", actor="GW1", at=t0 + timedelta(minutes=50), database_url=county)
    agg = gather_aggregates.fn(date(2026, 11, 1), date(2026, 11, 30), county)["aggregates"]
    assert (agg["alerts_sent"], agg["alerts_acked"], agg["median_minutes_to_ack"]) == (8, 4, 50.0)
    assert [(r["alerts"], r["acked"], r["median_minutes_to_ack"]) for r in agg["response_by_channel"]] == [
        (8, 4, 50.0)]
    # the chair, told, opens her own link later: then hers is confirmed too, at her answer
    for i in range(4):
        acknowledge(f"B{i}", actor="VC1", at=t0 + timedelta(minutes=70), database_url=county)
    agg = gather_aggregates.fn(date(2026, 11, 1), date(2026, 11, 30), county)["aggregates"]
    assert (agg["alerts_acked"], agg["median_minutes_to_ack"]) == (8, 45.0)   # 50 and 40 minutes


def test_the_report_does_not_credit_the_grid_worker_with_the_chairs_confirmations(county):
    """Four high flags: the grid worker's alerts go unanswered, each is escalated to the village
    chair, and the chair answers through her own alert. The report counted the four confirmed and
    said "网格员已确认 4 条", though no grid worker confirmed anything."""
    from sibifang.acknowledge import acknowledge
    from sibifang.db import session_scope
    from tasks.summary_report import gather_aggregates

    t0 = datetime(2026, 11, 10, 9)
    _inactivity_flags(county, 4, t0)
    with session_scope(county) as s:
        for i in range(4):
            s.add(_alert(f"A{i}", f"F{i}", "GW1", at=t0))
            s.add(_alert(f"B{i}", f"F{i}", "VC1", at=t0 + timedelta(minutes=30), level=1))
    for i in range(4):
        acknowledge(f"B{i}", actor="VC1", at=t0 + timedelta(minutes=40), database_url=county)
    agg = gather_aggregates.fn(date(2026, 11, 1), date(2026, 11, 30), county)["aggregates"]
    assert (agg["alerts_sent"], agg["alerts_acked"]) == (8, 4)
    text = html_lib.unescape(re.sub(r"<[^>]+>", "", render_report(agg, risk_map_svg_text="")))
    assert "网格员已确认" not in text
    assert f"{CONFIRMED_BY} 4 条，确认用时中位数 10.0 分钟" in text


def test_the_map_lists_grids_and_villages_in_counting_order():
    # Grid and village labels carry numbers a clerk counts by: G2 before G10, 2村 before 10村;
    # sorting them as text put G10 between G1 and G2.
    raw = [[0, 0, 3, 40]] * 3
    rm, areas = _map_of(raw, villages=[10, 2, 2])
    rename = {"G01": "G10", "G02": "G2", "G03": "G1"}
    rm["grid_id"] = rm.grid_id.map(rename)
    areas["grid_id"] = areas.grid_id.map(rename)
    pub = publish_risk_map(rm, areas)
    assert [g["grid"] for g in pub["grids"]] == ["G1", "G2", "G10"]
    assert [v["village"] for v in pub["villages"]] == ["村2", "村10"]
    svg = ET.fromstring(risk_map_svg(rm, areas))
    assert [t.text.split(":")[0] for t in svg.iter(f"{SVG}title")] == ["G1", "G2", "G10"]
    assert [t.text for t in svg.iter(f"{SVG}text")][1:] == ["村2", "村10"]


def test_cases_the_system_closed_are_not_counted_as_mediated():
    # A family that left the register, or a case opened on the wrong family's record, is closed
    # by the system: not a mediation the room concluded (its own line, not in 调解结案).
    frames = _scaled(_frames(), k=6)
    c = frames["cases"]
    closed = c.index[c.status.eq("closed")]
    frames["cases"] = c.assign(outcome="调解成功").assign(
        outcome=lambda d: d.outcome.where(~d.index.isin(closed[:3]), "deregistered"))
    agg = _summarise(frames, households=pd.concat([_households()] * 6, ignore_index=True))
    n_closed = len(closed)
    assert (agg["cases_closed"], agg["cases_withdrawn"]) == (n_closed - 3, 3)
    html = render_report(agg, risk_map_svg_text="<svg></svg>")
    assert f"累计调解结案 {n_closed - 3} 件（另有 3 件因家庭销户或转介记录更正而撤销" in html
