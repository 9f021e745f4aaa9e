"""The data contracts: one Great Expectations suite per file kind and per stage hand-over.

Suites are built by code, as plain ``ExpectationSpec`` lists, so this module imports without
Great Expectations (it costs ~2.5 s); ``schemas.validation`` turns a spec list into a GX
suite the first time it is validated. Every expectation carries a severity:

- ``critical``: a failing row is quarantined on import; a failing hand-over stops the stage.
- ``warning``: reported, nothing is held back (plausibility, not correctness).

The suites check *normalised* frames (codes not labels, typed columns) — what
``sibifang.importing`` produces and what a stage hands to the next. Pandas 3 notes: string
columns are dtype ``str``; never ExpectColumnValuesToBeInTypeList nor string date bounds on
datetime columns (both raise); types are enforced by our loader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from sibifang.checks import (
    ALERT_CHANNELS,
    DEMAND_CATEGORY_LABELS,
    MODE_LABELS,
    PROVIDER_TYPE_LABELS,
    REGISTER_STATUS_LABELS,
    ROLE_LABELS,
    VILLAGE_KIND_LABELS,
)

Severity = Literal["critical", "warning"]

# An id a file uses as key or reference: no whitespace, no list separators, at most 64
# characters (the database's id width).
ID_REGEX = r"^[^\s;；,，、]{1,64}$"
RESIDENT_ID_REGEX = r"^\d{17}[\dX]$"
PHONE_REGEX = r"^(?:1[3-9]\d{9}|0\d{2,3}-\d{7,8})$"

# The most a household can draw: 220 V × a ~100 A main fuse ≈ 22 kW, with a margin for
# measurement error. sibifang.ingest_readings judges every reading by it over the meter's own
# interval; the readings suite below checks the same bound, so a reading the cleaner accepts
# never rejects its file.
MAX_HOUSEHOLD_KW = 25.0
# A cumulative register's reading closes an interval of up to this many of the meter's
# intervals (a longer wait is a gap): its energy may be that much larger.
REGISTER_SPAN_FACTOR = 1.5
# The longest interval a meter may be registered with (meters suite: one reading a day).
LONGEST_INTERVAL_MINUTES = 1440
# Ceiling for any reading whatever its meter (a day's register interval at full power): the
# per-row bound, ``kwh_max`` (see max_kwh_per_reading), is the real check.
MAX_KWH_PER_READING = MAX_HOUSEHOLD_KW * REGISTER_SPAN_FACTOR * LONGEST_INTERVAL_MINUTES / 60


def max_kwh_per_reading(interval_minutes, *, cumulative: bool = False, max_kw: float = MAX_HOUSEHOLD_KW):
    """The most energy one reading of a meter read every ``interval_minutes`` can hold (a
    scalar or a numpy array): ``max_kw`` over the interval, over 1.5 intervals for a register."""
    return max_kw * interval_minutes / 60.0 * (REGISTER_SPAN_FACTOR if cumulative else 1.0)

VISIT_PLAN_STATUSES = ("planned", "done", "missed", "cancelled")
RISK_FLAG_KINDS = (
    # meter detector (sibifang.detectors.KINDS)
    "inactivity", "sustained_drop", "missing_morning_routine", "night_activity", "high_use", "meter_offline",
    # cues in visit records (sibifang/risk_lexicon.toml)
    "domestic_violence", "self_harm", "dispute", "gambling",
    # from visits and the schedule (sibifang.flag_risks)
    "unresolved_difficulty", "overdue_visit",
)
RISK_FLAG_SEVERITIES = ("low", "medium", "high", "critical")
RISK_FLAG_STATUSES = ("open", "acknowledged", "closed")
ALERT_STATUSES = ("pending", "sending", "sent", "dead", "cancelled")

# Columns that would put a person into an aggregate report (name, ID number, phone, address).
# Names of places and things (grid_name, village_name, room_name, ...) are fine in a report.
PERSONAL_COLUMN_REGEX = (
    r"^(?!(grid|village|township|district|city|area|room|resource|station|provider|category|kind|step)_name$)"
    r".*((^|_)(name|names|id_number|id_no|idcard|phone|mobile|tel|address|addr)($|_)|姓名|身份证|电话|手机|住址|地址)"
)


@dataclass(frozen=True)
class ExpectationSpec:
    """One expectation: the GX class name, its arguments, a severity and why it exists."""

    expectation: str
    kwargs: dict[str, Any]
    severity: Severity = "critical"
    why: str = ""
    # Quarantine code when a row fails it on import (see sibifang.importing.REASONS_ZH).
    code: str = "invalid"
    # For optional columns only: skipped (and reported as skipped) when the frame lacks the
    # column. Everything else on a missing column raises inside GX and is surfaced as a
    # broken suite, so a misnamed column can never pass quietly.
    if_present: bool = False

    @property
    def columns(self) -> tuple[str, ...]:
        kw = self.kwargs
        if "column" in kw:
            return (kw["column"],)
        if "column_A" in kw:
            return (kw["column_A"], kw["column_B"])
        if "column_list" in kw:
            return tuple(kw["column_list"])
        return ()


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    expectations: tuple[ExpectationSpec, ...]
    description: str = ""
    required_columns: tuple[str, ...] = field(default=())


# ------------------------------------------------------------------ small spec builders
def not_null(column: str, severity: Severity = "critical", why: str = "required") -> ExpectationSpec:
    return ExpectationSpec("ExpectColumnValuesToNotBeNull", {"column": column}, severity, why, "required")


def unique(column: str, severity: Severity = "critical", why: str = "key") -> ExpectationSpec:
    return ExpectationSpec("ExpectColumnValuesToBeUnique", {"column": column}, severity, why, "duplicate_key")


def in_set(column: str, values: tuple[Any, ...] | list[Any], severity: Severity = "critical",
           why: str = "", code: str = "not_in_set") -> ExpectationSpec:
    return ExpectationSpec("ExpectColumnValuesToBeInSet", {"column": column, "value_set": list(values)},
                           severity, why, code)


def is_bool(column: str) -> ExpectationSpec:
    # Type lists fail under pandas 3; a value set of the two booleans checks the same thing.
    return in_set(column, [True, False], "critical", "boolean flag", "bad_bool")


def matches(column: str, regex: str, severity: Severity = "critical", why: str = "",
            code: str = "bad_format") -> ExpectationSpec:
    return ExpectationSpec("ExpectColumnValuesToMatchRegex", {"column": column, "regex": regex},
                           severity, why, code)


def between(column: str, lo: float | None, hi: float | None, severity: Severity = "critical",
            why: str = "", code: str = "out_of_range") -> ExpectationSpec:
    return ExpectationSpec("ExpectColumnValuesToBeBetween",
                           {"column": column, "min_value": lo, "max_value": hi}, severity, why, code)


def not_before(later: str, earlier: str, severity: Severity = "critical", why: str = "") -> ExpectationSpec:
    """``later >= earlier`` where both are present (an open end is allowed)."""
    return ExpectationSpec("ExpectColumnPairValuesAToBeGreaterThanB",
                           {"column_A": later, "column_B": earlier, "or_equal": True,
                            "ignore_row_if": "either_value_is_missing"},
                           severity, why or f"{earlier} <= {later}", "date_order")


def has_columns(columns: tuple[str, ...]) -> ExpectationSpec:
    # exact_match=False: these columns must be there, extra columns are fine.
    return ExpectationSpec("ExpectTableColumnsToMatchSet", {"column_set": list(columns), "exact_match": False},
                           "critical", "columns the next stage reads", "missing_column")


def has_rows() -> ExpectationSpec:
    return ExpectationSpec("ExpectTableRowCountToBeBetween", {"min_value": 1}, "critical",
                           "an empty hand-over is a failed stage, not a quiet day", "empty")


def no_personal_columns() -> ExpectationSpec:
    return ExpectationSpec("ExpectTableColumnsToNotMatchRegex", {"regex": PERSONAL_COLUMN_REGEX},
                           "critical", "reports to party and government are aggregates only", "personal_column")


def optional(spec: ExpectationSpec) -> ExpectationSpec:
    """The same expectation, applied only when the frame has its column(s)."""
    return replace(spec, if_present=True)


def _suite(name: str, required: tuple[str, ...], *expectations: ExpectationSpec, description: str = "") -> SuiteSpec:
    return SuiteSpec(name, (has_columns(required), has_rows(), *expectations), description, required)


def _id(column: str) -> list[ExpectationSpec]:
    return [not_null(column), unique(column), matches(column, ID_REGEX, code="bad_id")]


def _ref(column: str, severity: Severity = "critical") -> ExpectationSpec:
    return matches(column, ID_REGEX, severity, "reference id", "bad_id")


# ------------------------------------------------------------------ registry files
def areas_suite() -> SuiteSpec:
    required = ("grid_id", "grid_name", "village_id", "village_name", "village_kind", "township_id",
                "township_name", "district_id", "district_name", "city_id", "city_name")
    return _suite(
        "areas", required,
        *_id("grid_id"),
        *(not_null(c) for c in ("grid_name", "village_id", "village_name", "township_id",
                                "district_id", "city_id")),
        *(_ref(c) for c in ("village_id", "township_id", "district_id", "city_id")),
        in_set("village_kind", tuple(VILLAGE_KIND_LABELS.values()), code="unknown_code"),
        description="administrative hierarchy down to grids",
    )


def households_suite() -> SuiteSpec:
    required = ("household_id", "head_name", "id_number", "phone", "address", "grid_id", "categories",
                "members", "elderly_living_alone", "consent")
    return _suite(
        "households", required,
        *_id("household_id"),
        not_null("head_name"),
        not_null("grid_id"), _ref("grid_id"),
        matches("id_number", RESIDENT_ID_REGEX, code="id_number_format"),
        matches("phone", PHONE_REGEX, code="bad_phone"),
        between("members", 1, 30, why="people in one household"),
        between("members", 1, 12, "warning", "unusually large household", "unusual"),
        is_bool("elderly_living_alone"), is_bool("consent"),
        optional(not_before("away_until", "away_from")),
        optional(in_set("register_status", tuple(REGISTER_STATUS_LABELS), code="unknown_code")),
        description="family archives (家庭档案)",
    )


def cadres_suite() -> SuiteSpec:
    required = ("cadre_id", "name", "phone", "role", "grid_ids", "capacity", "alert_channel", "alert_address")
    return _suite(
        "cadres", required,
        *_id("cadre_id"),
        not_null("name"),
        not_null("role"), in_set("role", tuple(ROLE_LABELS), code="unknown_code"),
        matches("phone", PHONE_REGEX, code="bad_phone"),
        # 0 is right for roles that keep no families (grid workers, mediators, supervisors).
        between("capacity", 0, 100, why="families one person can keep"),
        between("capacity", None, 30, "warning", "far above the 10 families per cadre (每名干部联系约10户)", "unusual"),
        in_set("alert_channel", ALERT_CHANNELS, code="unknown_code"),
        optional(is_bool("four_plus_one")),
        optional(between("grassroots_weekday", 0, 4, why="0 = Monday … 4 = Friday")),
        optional(not_before("on_leave_until", "on_leave_from")),
        description="cadres, executive members, grid workers, chairs, mediators",
    )


def meters_suite() -> SuiteSpec:
    return _suite(
        "meters", ("meter_id", "household_id", "interval_minutes"),
        *_id("meter_id"),
        not_null("household_id"), _ref("household_id"),
        not_null("interval_minutes"),
        between("interval_minutes", 1, 1440, why="one reading a minute to one a day"),
        in_set("interval_minutes", (1, 5, 10, 15, 30, 60), "warning", "usual smart-meter intervals", "unusual"),
        description="smart meters of elderly people living alone",
    )


def readings_suite() -> SuiteSpec:
    # Kept to vectorised column checks: it runs on millions of rows (≈0.2 s per million).
    return _suite(
        "readings", ("meter_id", "ts", "kwh"),
        not_null("meter_id"), not_null("ts"), not_null("kwh"),
        between("kwh", 0, MAX_KWH_PER_READING, why="energy of one interval; a gap is absent, never 0"),
        # The ingest adds each row's bound for its meter's interval (max_kwh_per_reading): an
        # hourly meter's 24.5 kWh or a daily meter's 31 kWh is a reading, a 15-minute meter's
        # 24 kWh is not.
        optional(ExpectationSpec("ExpectColumnPairValuesAToBeGreaterThanB",
                                 {"column_A": "kwh_max", "column_B": "kwh", "or_equal": True},
                                 "critical", "at most 25 kW over the meter's interval", "implausible_kwh")),
        ExpectationSpec("ExpectCompoundColumnsToBeUnique", {"column_list": ["meter_id", "ts"]}, "warning",
                        "one reading per meter and time; the ingest keeps the last", "duplicate_key"),
        description="meter readings (the detector's input contract)",
    )


def visits_suite() -> SuiteSpec:
    required = ("visit_id", "household_id", "cadre_id", "visited_at", "mode", "steps")
    return _suite(
        "visits", required,
        *_id("visit_id"),
        not_null("household_id"), _ref("household_id"),
        not_null("cadre_id"), _ref("cadre_id"),
        not_null("visited_at"),
        not_null("mode"), in_set("mode", tuple(MODE_LABELS), code="unknown_code"),
        optional(in_set("demand_category", tuple(DEMAND_CATEGORY_LABELS), code="unknown_code")),
        optional(is_bool("follow_up_needed")),
        description="visit records (走访记录)",
    )


def resources_suite() -> SuiteSpec:
    return _suite(
        "resources", ("resource_id", "name", "provider_type", "offers"),
        *_id("resource_id"),
        not_null("name"),
        not_null("provider_type"), in_set("provider_type", tuple(PROVIDER_TYPE_LABELS), code="unknown_code"),
        optional(matches("phone", PHONE_REGEX, code="bad_phone")),
        description="service-resource pool (服务资源池)",
    )


def mediation_rooms_suite() -> SuiteSpec:
    return _suite(
        "mediation_rooms", ("room_id", "name", "township_id"),
        *_id("room_id"),
        not_null("name"),
        not_null("township_id"), _ref("township_id"),
        description="mediation rooms (木兰调解室)",
    )


# ------------------------------------------------------------------ stage hand-overs
def visit_plans_suite() -> SuiteSpec:
    required = ("visit_id", "household_id", "due_date", "urgent", "status")
    return _suite(
        "visit_plans", required,
        *_id("visit_id"),
        not_null("household_id"),
        not_null("due_date"),
        is_bool("urgent"),
        not_null("status"), in_set("status", VISIT_PLAN_STATUSES),
        description="schedule_visits output",
    )


def risk_flags_suite() -> SuiteSpec:
    required = ("dedup_key", "household_id", "kind", "severity", "score", "start", "detected_at")
    return _suite(
        "risk_flags", required,
        not_null("dedup_key"), unique("dedup_key"),
        not_null("household_id"),
        not_null("kind"), in_set("kind", RISK_FLAG_KINDS),
        not_null("severity"), in_set("severity", RISK_FLAG_SEVERITIES),
        not_null("score"),
        not_null("start"), not_null("detected_at"),
        not_before("detected_at", "start", why="a flag cannot be detected before its episode starts"),
        optional(not_before("end", "start")),
        description="risk flags (风险预警)",
    )


def alerts_suite() -> SuiteSpec:
    required = ("dedup_key", "channel", "severity", "title", "body")
    return _suite(
        "alerts", required,
        not_null("dedup_key"), unique("dedup_key"),
        not_null("channel"), in_set("channel", ALERT_CHANNELS),
        in_set("severity", RISK_FLAG_SEVERITIES),
        not_null("title"), not_null("body"),
        optional(in_set("status", ALERT_STATUSES)),
        description="alert outbox (预警消息)",
    )


def published_figures_only(small_count: int) -> ExpectationSpec:
    """Every printed figure of the report is one of the published forms, so no count between 1
    and ``small_count - 1`` can be printed as such (they must read "<3").

    Checks the ``shown`` column of ``sibifang.summary_report.aggregates_frame`` (one row per
    printed figure): a count of 0 or at least ``small_count``; "<n"; "*"; a range "a～b" or
    "≥a" with ``a >= small_count``; a rate or median (a decimal point); a date; empty (not
    printed). A whitelist, so a new way of printing a count fails until it is added here.
    Optional, so that other aggregate frames (no such column) keep their column-name check.
    """
    if not 2 <= small_count <= 9:
        raise ValueError("small_count must be between 2 and 9")
    big = rf"(?:[{small_count}-9]|[1-9]\d+)"
    forms = ("", "0", big, r"<\d+", r"\*", rf"{big}～\d+", rf"≥{big}", r"-?\d+\.\d+", r"\d{4}-\d{2}-\d{2}")
    return optional(matches("shown", "^(?:%s)$" % "|".join(forms), "critical",
                            "a count of 1..%d could single out a family: it must be published masked"
                            % (small_count - 1), "small_count"))


def report_aggregates_suite() -> SuiteSpec:
    # Aggregates may legitimately be empty columns-wise but never carry a person, nor a small count.
    from sibifang.summary_report import SMALL_COUNT  # lazy: that module loads jinja and the templates

    return SuiteSpec(
        "report_aggregates",
        (has_rows(), no_personal_columns(), published_figures_only(SMALL_COUNT)),
        "aggregates for party and government: no names, ID numbers, phones or addresses; no count below "
        f"{SMALL_COUNT} unmasked",
    )


SUITES: dict[str, Callable[[], SuiteSpec]] = {
    "areas": areas_suite,
    "households": households_suite,
    "cadres": cadres_suite,
    "meters": meters_suite,
    "readings": readings_suite,
    "visits": visits_suite,
    "resources": resources_suite,
    "mediation_rooms": mediation_rooms_suite,
    "visit_plans": visit_plans_suite,
    "risk_flags": risk_flags_suite,
    "alerts": alerts_suite,
    "report_aggregates": report_aggregates_suite,
}


def build_suite_spec(name: str) -> SuiteSpec:
    try:
        return SUITES[name]()
    except KeyError:
        raise KeyError(f"no suite named {name!r}; known: {', '.join(SUITES)}") from None
