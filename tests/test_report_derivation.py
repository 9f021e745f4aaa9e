"""No masked count of the summary report can be derived by combining its figures: here the
response tables (预警条数 and 已确认 per channel / village), whose two columns are each a
breakdown of a printed total and are tied row by row (a unit cannot have more alerts
confirmed than alerts)."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sibifang.summary_report import MASKED, SMALL_COUNT, SUPPRESSED, _publish_response


def _rows(pairs: list[tuple[int, int]]) -> list[dict]:
    return [{"unit": f"村{i}", "alerts": a, "acked": k, "median_minutes_to_ack": None,
             "median_hours_to_outcome": None, "n_ack": k, "n_outcome": 0} for i, (a, k) in enumerate(pairs)]


def _candidates(shown, total: int) -> list[int]:
    if shown == MASKED:
        return list(range(1, SMALL_COUNT))
    if shown == SUPPRESSED:
        return list(range(SMALL_COUNT, total + 1))
    return [int(shown)]


def _worlds(table: list[dict], n_alerts: int, n_acked: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every (alerts, acked) per row a reader finds consistent with the published table, the
    printed totals (themselves "<3" when small) and acked <= alerts in each row."""
    def totals(n: int) -> set[int]:
        return set(range(1, SMALL_COUNT)) if 0 < n < SMALL_COUNT else {n}

    top = max(n_alerts, SMALL_COUNT)
    alerts = [c for c in itertools.product(*(_candidates(r["alerts"], top) for r in table))
              if sum(c) in totals(n_alerts)]
    acked = [c for c in itertools.product(*(_candidates(r["acked"], top) for r in table))
             if sum(c) in totals(n_acked)]
    return [(a, k) for a in alerts for k in acked if all(x >= y for x, y in zip(a, k))]


def _pinned(table: list[dict], n_alerts: int, n_acked: int) -> list[tuple[int, str, int]]:
    """The hidden cells ("<3" and "*") that take one value only in every consistent world."""
    worlds = _worlds(table, n_alerts, n_acked)
    out = []
    for i, r in enumerate(table):
        for col, idx in (("alerts", 0), ("acked", 1)):
            if r[col] in (MASKED, SUPPRESSED):
                values = {w[idx][i] for w in worlds}
                if len(values) == 1:
                    out.append((i, col, values.pop()))
    return out


def test_a_masked_confirmation_count_is_not_derivable_from_the_alerts_of_its_row():
    """Village A: 5 alerts, 2 confirmed; B: 4 and 4. The confirmed column was 2 → "<3" and 4 →
    "*" against the total 6; but B cannot have more than its 4 alerts confirmed, so "*" is 4 and
    A's "<3" is 6 - 4 = 2."""
    table = _publish_response(_rows([(5, 2), (4, 4)]), 9, 6)
    assert table is None or _pinned(table, 9, 6) == []   # no other "*" to take: withheld
    # with a third village that has room, its cell is the "*" instead
    table = _publish_response(_rows([(5, 2), (4, 4), (9, 4)]), 18, 10)
    assert [(r["alerts"], r["acked"]) for r in table] == [(5, MASKED), (4, 4), (9, SUPPRESSED)]
    assert _pinned(table, 18, 10) == []


def test_a_masked_alert_count_is_not_derivable_from_the_confirmations_of_another_row():
    """A: 1 alert; B: 5 alerts, all 5 confirmed. Alerts "<3" | "*" against 6, but B's "*" is at
    least its 5 confirmations: A = 1."""
    table = _publish_response(_rows([(1, 0), (5, 5)]), 6, 5)
    assert table is None or _pinned(table, 6, 5) == []
    table = _publish_response(_rows([(1, 0), (5, 5), (8, 4)]), 14, 9)
    assert [(r["alerts"], r["acked"]) for r in table] == [(MASKED, 0), (5, 5), (SUPPRESSED, 4)]
    assert _pinned(table, 14, 9) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)).map(lambda p: (max(p), min(p))),
                min_size=1, max_size=3))
def test_property_no_masked_cell_of_a_response_table_is_derivable(pairs):
    pairs = [p for p in pairs if p[0] > 0] or [(1, 0)]
    n_alerts, n_acked = sum(a for a, _ in pairs), sum(k for _, k in pairs)
    table = _publish_response(_rows(pairs), n_alerts, n_acked)
    if table is None:
        return
    assert _worlds(table, n_alerts, n_acked), "the true figures must be one consistent world"
    assert _pinned(table, n_alerts, n_acked) == [], (pairs, table)
