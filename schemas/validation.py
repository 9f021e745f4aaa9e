"""A small Great Expectations wrapper: build suite → validate a frame → summary → typed error.

Shaped like the GX team's Airflow provider: GX is imported lazily (≈2.5 s) inside the
functions that need it, one ephemeral context serves the whole process, suites are built by
code from ``schemas.suites`` and registered once, and one typed error summarises what failed.

What leaves this module is counts, column names and row positions — never the failing
values: GX puts those into its results (``unexpected_list``), and they can be ID numbers or
phone numbers. They are dropped here, before anything can log or persist them.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from schemas.suites import ExpectationSpec, SuiteSpec, build_suite_spec

if TYPE_CHECKING:  # pragma: no cover
    from great_expectations.data_context import AbstractDataContext

Severity = Literal["critical", "warning"]

# Table-level results whose observed value is a schema fact (a count, column names), not data.
_SAFE_OBSERVED = {
    "expect_table_row_count_to_be_between",
    "expect_table_columns_to_match_set",
    "expect_table_columns_to_not_match_regex",
}
# How many row numbers an error message quotes.
_ROWS_IN_MESSAGE = 5


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result, without the failing values."""

    expectation: str  # snake_case GX type, e.g. expect_column_values_to_not_be_null
    column: str | None  # "a" or "a,b" for column pairs / compound keys; None for table-level
    severity: Severity
    success: bool
    unexpected_count: int = 0
    unexpected_rows: list[int] = field(default_factory=list)  # 0-based positions in the frame
    exception: str | None = None  # the expectation itself raised: a broken suite, not bad data
    observed: Any = None  # only counts / column names (see _SAFE_OBSERVED)
    code: str = "invalid"  # quarantine code for rows failing it (see schemas.suites)
    skipped: bool = False  # an optional column the frame does not have

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.column.split(",")) if self.column else ()

    def describe(self, *, row_offset: int = 0, row_label: str = "rows") -> str:
        where = f"{self.column}: " if self.column else ""
        if self.exception:
            return f"{where}{self.expectation} raised: {self.exception}"
        text = f"{where}{self.expectation} failed"
        if self.unexpected_count:
            first = [r + row_offset for r in self.unexpected_rows[:_ROWS_IN_MESSAGE]]
            more = ", …" if self.unexpected_count > len(first) else ""
            text += f" ({self.unexpected_count} {row_label}: {', '.join(map(str, first))}{more})"
        elif self.observed is not None:
            text += f" (observed: {self.observed})"
        return text


@dataclass(frozen=True)
class ValidationReport:
    suite: str
    source: str
    row_count: int
    results: list[ExpectationOutcome]

    @property
    def success(self) -> bool:
        """The contract held: no critical expectation failed and none raised (warnings allowed)."""
        return not any((not r.success and r.severity == "critical") or r.exception for r in self.results)

    @property
    def all_passed(self) -> bool:
        """Every expectation passed, warnings included."""
        return all(r.success for r in self.results)

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [r for r in self.results if not r.success]

    @property
    def critical_failures(self) -> list[ExpectationOutcome]:
        return [r for r in self.failures if r.severity == "critical"]

    @property
    def warnings(self) -> list[ExpectationOutcome]:
        return [r for r in self.failures if r.severity == "warning"]

    @property
    def exceptions(self) -> list[ExpectationOutcome]:
        return [r for r in self.results if r.exception]

    def summary(self) -> dict[str, Any]:
        """Counts and column names only: safe to log and to store."""
        return {
            "suite": self.suite,
            "source": self.source,
            "rows": self.row_count,
            "success": self.success,
            "all_passed": self.all_passed,
            "failures": [
                {"expectation": r.expectation, "column": r.column, "severity": r.severity,
                 "unexpected_count": r.unexpected_count, "exception": r.exception}
                for r in self.failures
            ],
        }


class DataContractError(ValueError):
    """A frame broke its data contract: names the source, the columns and the first rows.

    ``failures`` are ExpectationOutcome objects or plain strings (e.g. missing columns).
    ``message_zh`` is the sentence a village clerk reads.
    """

    def __init__(self, source: str, failures: Sequence[ExpectationOutcome | str], *,
                 message_zh: str | None = None, row_offset: int = 0, row_label: str = "rows") -> None:
        self.source = source
        self.failures = list(failures)
        self.message_zh = message_zh
        self.row_offset = row_offset
        self.row_label = row_label
        parts = [f.describe(row_offset=row_offset, row_label=row_label) if isinstance(f, ExpectationOutcome)
                 else str(f) for f in self.failures]
        message = f"{source}: data contract broken: " + "; ".join(parts)
        if message_zh:
            message += f"\n{message_zh}"
        super().__init__(message)

    def __reduce__(self):
        # Picklable with its failures: Prefect persists a failed task's exception and a process
        # or Dask task runner sends it between processes. (A subclass with another signature
        # defines its own, as ImportFileError does.)
        return _data_contract_error, (self.source, self.failures, self.message_zh, self.row_offset,
                                      self.row_label)

    @property
    def columns(self) -> list[str]:
        cols: list[str] = []
        for f in self.failures:
            if isinstance(f, ExpectationOutcome):
                cols.extend(c for c in f.columns if c not in cols)
        return cols


def _data_contract_error(source: str, failures: list, message_zh: str | None, row_offset: int,
                         row_label: str) -> DataContractError:
    return DataContractError(source, failures, message_zh=message_zh, row_offset=row_offset, row_label=row_label)


def raise_for_critical(report: ValidationReport) -> None:
    """Raise DataContractError when a critical expectation failed or any expectation raised."""
    bad = [r for r in report.results if (not r.success and r.severity == "critical") or r.exception]
    if bad:
        raise DataContractError(report.source, bad)


# ------------------------------------------------------------------ GX plumbing
_lock = threading.RLock()  # GX's context is not thread-safe; Prefect may run tasks in threads.
_context: AbstractDataContext | None = None
_batch_definitions: dict[str, Any] = {}
_suites: dict[str, Any] = {}
_custom_registered = False


def get_context() -> AbstractDataContext:
    """The process's one ephemeral GX context, progress bars off."""
    global _context
    with _lock:
        if _context is None:
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            _register_custom_expectations()
            context = gx.get_context(mode="ephemeral")
            # The bars print to stderr on every validation: noise in flow logs.
            context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
            _context = context
        return _context


def _register_custom_expectations() -> None:
    """Define the expectations GX lacks; subclassing registers them under their snake_case name."""
    global _custom_registered
    if _custom_registered:
        return
    from great_expectations.expectations.expectation import BatchExpectation

    class ExpectTableColumnsToNotMatchRegex(BatchExpectation):
        """Expect no column name to match ``regex`` (case-insensitive): aggregates carry no person."""

        regex: str
        metric_dependencies = ("table.columns",)
        success_keys = ("regex",)
        args_keys = ("regex",)
        domain_keys = ("batch_id",)

        def _validate(self, metrics: dict, runtime_configuration: dict | None = None,
                      execution_engine: Any = None) -> dict:
            pattern = re.compile(self._get_success_kwargs()["regex"], re.IGNORECASE)
            offending = sorted(str(c) for c in metrics["table.columns"] if pattern.search(str(c)))
            return {"success": not offending, "result": {"observed_value": offending}}

    globals()["ExpectTableColumnsToNotMatchRegex"] = ExpectTableColumnsToNotMatchRegex
    _custom_registered = True


def _batch_definition(suite_name: str) -> Any:
    """One pandas datasource, one dataframe asset per suite: created once, reused on re-validation."""
    if suite_name not in _batch_definitions:
        context = get_context()
        try:
            datasource = context.data_sources.get("sibifang_frames")
        except Exception:  # noqa: BLE001 - GX raises several types for "not found"
            datasource = context.data_sources.add_pandas("sibifang_frames")
        asset = datasource.add_dataframe_asset(name=f"frame_{suite_name}")
        _batch_definitions[suite_name] = asset.add_batch_definition_whole_dataframe(f"whole_{suite_name}")
    return _batch_definitions[suite_name]


def _gx_expectation(spec: ExpectationSpec, index: int) -> Any:
    import great_expectations.expectations as gxe

    cls = getattr(gxe, spec.expectation, None) or globals().get(spec.expectation)
    if cls is None:
        raise KeyError(f"unknown expectation {spec.expectation}")
    # meta carries our index back from the result: results are not in suite order.
    return cls(**spec.kwargs, meta={"sibifang_index": index, "severity": spec.severity, "why": spec.why})


def _gx_suite(spec: SuiteSpec, applicable: list[int]) -> Any:
    """The GX suite for ``spec`` restricted to the applicable expectations (cached by that set)."""
    import great_expectations as gx

    # Keyed by content, not name: a suite edited in-process (tests, hot reload) gets rebuilt.
    content = repr([spec.expectations[i] for i in applicable]).encode("utf-8")
    key = f"{spec.name}__{hashlib.sha1(content).hexdigest()[:16]}"
    if key not in _suites:
        context = get_context()
        suite = gx.ExpectationSuite(name=key)
        for i in applicable:
            suite.add_expectation(_gx_expectation(spec.expectations[i], i))
        _suites[key] = context.suites.add(suite)
    return _suites[key]


def _exception_text(exception_info: Any) -> str | None:
    """GX nests the cause per metric when an expectation raised; flatten it to one message."""
    if not exception_info:
        return None
    infos = [exception_info] if "raised_exception" in exception_info else list(exception_info.values())
    messages = [str(i.get("exception_message")) for i in infos
                if isinstance(i, dict) and i.get("raised_exception") and i.get("exception_message")]
    return "; ".join(dict.fromkeys(messages)) or None


def _outcome(spec: ExpectationSpec, gx_result: Any) -> ExpectationOutcome:
    result = dict(gx_result.result or {})
    exception = _exception_text(gx_result.exception_info)
    rows = [int(i) for i in result.get("unexpected_index_list") or []] if not exception else []
    count = int(result.get("unexpected_count") or 0) if not exception else 0
    snake = gx_result.expectation_config.type
    observed = result.get("observed_value") if snake in _SAFE_OBSERVED else None
    if snake == "expect_table_columns_to_match_set" and not gx_result.success:
        # Report the missing columns; extra columns are allowed by exact_match=False.
        missing = sorted(set(spec.kwargs["column_set"]) - set(result.get("observed_value") or []))
        observed = {"missing": missing}
    return ExpectationOutcome(
        expectation=snake,
        column=",".join(spec.columns) or None,
        severity=spec.severity,
        success=bool(gx_result.success) and not exception,
        unexpected_count=count,
        unexpected_rows=sorted(rows),
        exception=exception,
        observed=observed,
        code=spec.code,
    )


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def validate_frame(df: pd.DataFrame, suite_name: str | SuiteSpec, *, source: str) -> ValidationReport:
    """Validate ``df`` against a suite; row numbers in the report are 0-based positions in ``df``.

    ``suite_name`` is a name from ``schemas.suites.SUITES`` (or a SuiteSpec, for tests and
    ad-hoc contracts). Never raises for bad data — see ``raise_for_critical``.
    """
    spec = suite_name if isinstance(suite_name, SuiteSpec) else build_suite_spec(suite_name)
    # Positions, not labels: GX reports index labels, so give it a RangeIndex.
    frame = df if isinstance(df.index, pd.RangeIndex) and df.index.start == 0 and df.index.step == 1 \
        else df.reset_index(drop=True)
    present = set(map(str, frame.columns))
    applicable: list[int] = []
    skipped: list[ExpectationOutcome] = []
    for i, exp in enumerate(spec.expectations):
        if exp.if_present and not set(exp.columns) <= present:
            skipped.append(ExpectationOutcome(_snake(exp.expectation), ",".join(exp.columns) or None,
                                              exp.severity, True, code=exp.code, skipped=True))
        else:
            applicable.append(i)
    with _lock:
        batch_definition = _batch_definition(spec.name)
        suite = _gx_suite(spec, applicable)
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
        gx_results = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    outcomes: dict[int, ExpectationOutcome] = {}
    for r in gx_results.results:
        index = int(r.expectation_config.meta["sibifang_index"])
        outcomes[index] = _outcome(spec.expectations[index], r)
    del gx_results  # holds the failing values; do not let it travel further
    ordered = [outcomes[i] for i in sorted(outcomes)]
    return ValidationReport(suite=spec.name, source=source, row_count=len(frame), results=ordered + skipped)
