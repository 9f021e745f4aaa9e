"""The GX wrapper and the suites: row positions out, failing values never, broken suites surfaced."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from schemas import suites as S
from schemas.suites import ExpectationSpec, SuiteSpec
from schemas.validation import DataContractError, ValidationReport, raise_for_critical, validate_frame

PHONE = "13805740001"
ID_NUMBER = "11010519491231002X"


def visit_plans(n: int = 4) -> pd.DataFrame:
    return pd.DataFrame({
        "visit_id": pd.Series([f"P{i}" for i in range(n)], dtype="str"),
        "household_id": pd.Series([f"H{i}" for i in range(n)], dtype="str"),
        "cadre_id": pd.Series(["K1"] * n, dtype="str"),
        "due_date": pd.to_datetime(["2026-01-10"] * n),
        "urgent": [False] * n,
        "status": pd.Series(["planned"] * n, dtype="str"),
    })


def outcome(report: ValidationReport, expectation: str, column: str | None):
    matches = [r for r in report.results if r.expectation == expectation and r.column == column]
    assert matches, f"{expectation} on {column} not in report"
    return matches[0]


def test_clean_hand_over_passes_and_revalidation_reuses_the_context():
    df = visit_plans()
    first = validate_frame(df, "visit_plans", source="schedule_visits output")
    # Same frame, same suite again: no "datasource already exists".
    second = validate_frame(df, "visit_plans", source="schedule_visits output")
    assert first.success and second.success and first.all_passed
    assert all(r.severity in ("critical", "warning") for r in first.results)
    raise_for_critical(first)  # does not raise


def test_failures_come_back_as_row_positions():
    df = visit_plans(6)
    df.loc[2, "visit_id"] = "P1"  # duplicate
    df.loc[3, "due_date"] = pd.NaT
    df.loc[5, "status"] = "lost"
    report = validate_frame(df, "visit_plans", source="schedule_visits output")
    assert not report.success
    assert outcome(report, "expect_column_values_to_be_unique", "visit_id").unexpected_rows == [1, 2]
    assert outcome(report, "expect_column_values_to_not_be_null", "due_date").unexpected_rows == [3]
    status = [r for r in report.failures if r.column == "status"]
    assert [r.unexpected_rows for r in status] == [[5]]
    with pytest.raises(DataContractError) as err:
        raise_for_critical(report)
    message = str(err.value)
    assert "schedule_visits output" in message
    assert "visit_id" in message and "due_date" in message and "status" in message
    assert "3" in message and "5" in message
    assert set(err.value.columns) >= {"visit_id", "due_date", "status"}


def test_positions_not_index_labels():
    df = visit_plans(3)
    df.index = [100, 7, 42]
    df.loc[42, "status"] = "lost"
    report = validate_frame(df, "visit_plans", source="t")
    assert [r.unexpected_rows for r in report.failures] == [[2]]


def test_urgent_must_be_boolean():
    df = visit_plans(3)
    df["urgent"] = pd.Series(["yes", False, True], dtype="object")
    report = validate_frame(df, "visit_plans", source="t")
    assert outcome(report, "expect_column_values_to_be_in_set", "urgent").unexpected_rows == [0]


def test_missing_required_column_is_reported_with_the_cause():
    df = visit_plans().drop(columns=["due_date"])
    report = validate_frame(df, "visit_plans", source="schedule_visits output")
    cols = outcome(report, "expect_table_columns_to_match_set", None)
    assert not cols.success and cols.observed == {"missing": ["due_date"]}
    raised = outcome(report, "expect_column_values_to_not_be_null", "due_date")
    assert not raised.success and "due_date" in raised.exception
    with pytest.raises(DataContractError, match="due_date"):
        raise_for_critical(report)


def test_broken_suite_surfaces_the_exception_not_bad_data():
    spec = SuiteSpec("broken_for_test", (
        ExpectationSpec("ExpectColumnValuesToNotBeNull", {"column": "visit_idd"}, "critical", "typo"),
        ExpectationSpec("ExpectColumnValuesToNotBeNull", {"column": "visit_id"}, "critical"),
    ))
    report = validate_frame(visit_plans(), spec, source="schedule_visits output")
    broken = outcome(report, "expect_column_values_to_not_be_null", "visit_idd")
    assert not broken.success
    assert broken.unexpected_count == 0 and broken.unexpected_rows == []
    assert "visit_idd" in broken.exception and "does not exist" in broken.exception
    assert report.exceptions == [broken]
    with pytest.raises(DataContractError, match="raised: .*visit_idd"):
        raise_for_critical(report)


def test_warnings_do_not_raise():
    spec = SuiteSpec("warning_only_for_test", (S.between("n", 0, 1, "warning", code="unusual"),))
    report = validate_frame(pd.DataFrame({"n": [0, 5]}), spec, source="t")
    assert report.success and not report.all_passed and report.warnings and not report.critical_failures
    raise_for_critical(report)


def test_optional_columns_are_skipped_only_when_absent():
    flags = risk_flags()
    report = validate_frame(flags, "risk_flags", source="detect output")
    end_order = [r for r in report.results if r.column == "end,start"]
    assert end_order and end_order[0].skipped and end_order[0].success
    flags["end"] = flags["start"] - pd.Timedelta(hours=1)
    report = validate_frame(flags, "risk_flags", source="detect output")
    end_order = [r for r in report.results if r.column == "end,start"][0]
    assert not end_order.skipped and end_order.unexpected_rows == [0, 1]


def risk_flags() -> pd.DataFrame:
    start = pd.to_datetime(["2026-01-01 08:00", "2026-01-02 08:00"])
    return pd.DataFrame({
        "dedup_key": pd.Series(["m1:inactivity:1", "m2:high_use:1"], dtype="str"),
        "household_id": pd.Series(["H1", "H2"], dtype="str"),
        "kind": pd.Series(["inactivity", "high_use"], dtype="str"),
        "severity": pd.Series(["high", "low"], dtype="str"),
        "score": [0.9, 0.4],
        "start": start,
        "detected_at": start + pd.Timedelta(hours=2),
    })


def test_risk_flag_detected_before_start_is_caught():
    flags = risk_flags()
    flags.loc[1, "detected_at"] = flags.loc[1, "start"] - pd.Timedelta(minutes=5)
    flags.loc[0, "kind"] = "bad_vibes"
    report = validate_frame(flags, "risk_flags", source="detect output")
    assert outcome(report, "expect_column_pair_values_a_to_be_greater_than_b",
                   "detected_at,start").unexpected_rows == [1]
    assert [r.unexpected_rows for r in report.failures if r.column == "kind"] == [[0]]


def test_alerts_dedup_and_channel():
    alerts = pd.DataFrame({
        "dedup_key": pd.Series(["a", "a", "b"], dtype="str"),
        "channel": pd.Series(["sms", "wecom", "pigeon"], dtype="str"),
        "severity": pd.Series(["high"] * 3, dtype="str"),
        "title": pd.Series(["t"] * 3, dtype="str"),
        "body": pd.Series(["b"] * 3, dtype="str"),
    })
    report = validate_frame(alerts, "alerts", source="alert outbox")
    assert outcome(report, "expect_column_values_to_be_unique", "dedup_key").unexpected_rows == [0, 1]
    assert [r.unexpected_rows for r in report.failures if r.column == "channel"] == [[2]]


def test_report_aggregates_refuse_personal_columns():
    ok = pd.DataFrame({"grid_id": ["G1"], "grid_name": ["一网格"], "households_visited": [12]})
    assert validate_frame(ok, "report_aggregates", source="monthly report").success
    bad = ok.assign(head_name=["x"], phone=["y"])
    report = validate_frame(bad, "report_aggregates", source="monthly report")
    personal = outcome(report, "expect_table_columns_to_not_match_regex", None)
    assert not personal.success and personal.observed == ["head_name", "phone"]
    with pytest.raises(DataContractError, match="monthly report.*head_name"):
        raise_for_critical(report)
    empty = validate_frame(ok.iloc[0:0], "report_aggregates", source="monthly report")
    assert not empty.success


def test_readings_suite():
    n = 1000
    readings = pd.DataFrame({
        "meter_id": pd.Series([f"M{i % 10}" for i in range(n)], dtype="str"),
        "ts": pd.Timestamp("2026-01-01") + pd.to_timedelta(np.arange(n) // 10 * 15, unit="min"),
        "kwh": np.full(n, 0.1),
    })
    assert validate_frame(readings, "readings", source="readings.parquet").success
    readings.loc[3, "kwh"] = -0.5
    readings.loc[4, "kwh"] = 1234.0  # a register value, not an interval
    readings.loc[5, "meter_id"] = None
    readings.loc[6, "ts"] = readings.loc[7, "ts"]
    readings.loc[6, "meter_id"] = readings.loc[7, "meter_id"]
    report = validate_frame(readings, "readings", source="readings.parquet")
    assert outcome(report, "expect_column_values_to_be_between", "kwh").unexpected_rows == [3, 4]
    assert outcome(report, "expect_column_values_to_not_be_null", "meter_id").unexpected_rows == [5]
    dup = outcome(report, "expect_compound_columns_to_be_unique", "meter_id,ts")
    assert dup.severity == "warning" and dup.unexpected_rows == [6, 7]


def test_reports_hold_no_failing_values():
    households = pd.DataFrame({
        "household_id": pd.Series(["H1", "H2"], dtype="str"),
        "head_name": pd.Series(["王秀英", None], dtype="str"),
        "id_number": pd.Series([ID_NUMBER, "1234567"], dtype="str"),
        "phone": pd.Series([PHONE, "99-12"], dtype="str"),
        "address": pd.Series(["示例路1号", None], dtype="str"),
        "grid_id": pd.Series(["G1", "G 1"], dtype="str"),
        "categories": [[], []],
        "members": pd.array([1, 99], dtype="Int64"),
        "elderly_living_alone": [True, False],
        "consent": [True, True],
    })
    report = validate_frame(households, "households", source="households.csv")
    assert not report.success
    dumped = repr(report) + json.dumps(report.summary(), ensure_ascii=False, default=str)
    with pytest.raises(DataContractError) as ei:
        raise_for_critical(report)
    dumped += str(ei.value)
    for value in ("1234567", "99-12", "G 1", ID_NUMBER, PHONE, "王秀英"):
        assert value not in dumped


@pytest.mark.parametrize("name", sorted(S.SUITES))
def test_every_suite_builds_into_gx(name):
    from schemas.validation import _gx_suite

    spec = S.build_suite_spec(name)
    suite = _gx_suite(spec, list(range(len(spec.expectations))))
    assert len(suite.expectations) == len(spec.expectations)
    # Every expectation has a severity and can fail (no vacuous checks).
    for exp in spec.expectations:
        assert exp.severity in ("critical", "warning")
        problem = vacuity(exp)
        assert problem is None, f"{name}: {exp.expectation} {exp.kwargs}: {problem}"


# Strings a value-pattern expectation must reject at least one of, and column names a
# forbidden-column pattern must catch at least one of.
REGEX_PROBES = ("", " ", "a b", "~" * 200)
FORBIDDEN_COLUMN_PROBES = ("name", "phone", "id_number", "address", "户主姓名")


def vacuity(exp: ExpectationSpec) -> str | None:
    """Why ``exp`` could never fail (None if it can). Unknown expectation types are an error."""
    kw, kind = exp.kwargs, exp.expectation
    if kind in ("ExpectColumnValuesToNotBeNull", "ExpectColumnValuesToBeUnique"):
        return None if isinstance(kw.get("column"), str) and kw["column"] else "no column"
    if kind == "ExpectCompoundColumnsToBeUnique":
        return None if kw.get("column_list") else "empty column_list"
    if kind == "ExpectTableColumnsToMatchSet":
        return None if kw.get("column_set") else "empty column_set"
    if kind == "ExpectColumnValuesToBeInSet":
        return None if kw.get("value_set") else "empty value_set"
    if kind == "ExpectColumnPairValuesAToBeGreaterThanB":
        return None if kw.get("column_A") and kw["column_A"] != kw.get("column_B") else "compares a column with itself"
    if kind in ("ExpectColumnValuesToBeBetween", "ExpectTableRowCountToBeBetween"):
        lo, hi = kw.get("min_value"), kw.get("max_value")
        if lo is None and hi is None:
            return "both bounds are None"
        if kind == "ExpectTableRowCountToBeBetween" and hi is None and lo <= 0:
            return "a row count is always >= 0"
        if lo is not None and hi is not None and lo > hi:
            return "min_value > max_value: can never pass"
        return None
    if kind == "ExpectColumnValuesToMatchRegex":
        regex = re.compile(kw.get("regex") or "")
        return None if any(regex.search(p) is None for p in REGEX_PROBES) else "the regex matches anything"
    if kind == "ExpectTableColumnsToNotMatchRegex":
        regex = re.compile(kw.get("regex") or "(?!)")
        return None if kw.get("regex") and any(regex.search(p) for p in FORBIDDEN_COLUMN_PROBES) \
            else "the regex forbids no column name"
    return f"no vacuity rule for {kind}: add one to this test"


@pytest.mark.parametrize("exp, vacuous", [
    (ExpectationSpec("ExpectColumnValuesToBeBetween", {"column": "x", "min_value": None, "max_value": None}), True),
    (ExpectationSpec("ExpectColumnValuesToBeBetween", {"column": "x", "min_value": None, "max_value": 3}), False),
    (ExpectationSpec("ExpectTableRowCountToBeBetween", {"min_value": 0}), True),
    (ExpectationSpec("ExpectColumnValuesToBeInSet", {"column": "x", "value_set": []}), True),
    (ExpectationSpec("ExpectColumnValuesToMatchRegex", {"column": "x", "regex": ".*"}), True),
    (ExpectationSpec("ExpectColumnValuesToMatchRegex", {"column": "x", "regex": "^a$"}), False),
    (ExpectationSpec("ExpectSomethingNew", {"column": "x"}), True),
])
def test_vacuity_rule_itself(exp, vacuous):
    assert (vacuity(exp) is not None) == vacuous


def test_unknown_suite_name():
    with pytest.raises(KeyError, match="no suite named"):
        validate_frame(pd.DataFrame({"a": [1]}), "nope", source="t")


def test_personal_column_pattern():
    pattern = re.compile(S.PERSONAL_COLUMN_REGEX, re.IGNORECASE)
    flagged = ["name", "head_name", "contact_name", "phone", "contact_phone", "id_number", "address", "户主姓名"]
    allowed = ["grid_name", "village_name", "township_name", "households", "visits_done", "telemetry", "grid_id"]
    assert all(pattern.search(c) for c in flagged)
    assert not any(pattern.search(c) for c in allowed)


def test_risk_flag_kinds_cover_what_the_stages_raise():
    """The suite's value set must know every kind the detector and the lexicon can produce."""
    import tomllib

    from sibifang import detectors, flag_risks

    assert set(detectors.KINDS) <= set(S.RISK_FLAG_KINDS)
    lexicon = flag_risks.LEXICON_FILE
    assert lexicon.exists(), lexicon
    cues = tomllib.loads(lexicon.read_text(encoding="utf-8")).get("cues", {})
    assert cues, "the lexicon defines no cues"
    assert set(cues) <= set(S.RISK_FLAG_KINDS)


def test_frame_digest_is_the_data_not_the_row_order():
    """What a validation run is keyed by: the same rows in any order, lists and dicts included."""
    from sibifang.import_registry import frame_digest

    df = visit_plans().assign(details=[{"kwh": 0.1}, {}, None, {"kwh": 0.2}], grids=[["G1"], [], ["G2"], None])
    assert frame_digest(df) == frame_digest(df.iloc[::-1]) == frame_digest(df.copy())
    assert frame_digest(df) != frame_digest(df.assign(urgent=[True, False, False, False]))
    assert frame_digest(df) != frame_digest(df.assign(details=[{"kwh": 0.3}, {}, None, {"kwh": 0.2}]))
    assert frame_digest(df) != frame_digest(df.rename(columns={"urgent": "critical"}))
    assert frame_digest(df) != frame_digest(df.iloc[:3])
    assert frame_digest(pd.DataFrame()) == frame_digest(pd.DataFrame())
