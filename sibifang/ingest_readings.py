"""Clean smart-meter readings as real feeds deliver them (issue 3, part 1).

Input: a raw frame (from :func:`sibifang.readings_files.read_readings_file` or
:mod:`sibifang.meter_api`) with ``meter_id, ts`` and either ``kwh`` (energy of the interval
that ends at ``ts``) or ``register_kwh`` (cumulative register). Output: a :class:`CleanResult`
whose ``accepted`` frame follows the readings contract of docs/file-formats.md and whose
``quarantined`` frame tells a village data clerk, line by line, what was set aside and why.

Invariant, asserted on every call: ``rows read == accepted + quarantined``. Nothing is
dropped silently; even an exact duplicate or the first (baseline) reading of a cumulative
register is a quarantine row with its own code, so the clerk can account for every line.

Decisions (documented here because detectors depend on them):

* Time zone. Timestamps with an offset or ``Z``/``z`` are converted to local time
  (Asia/Shanghai by default); naive timestamps are already local and kept as they are.
  ``ts`` is floored to whole seconds (sub-second jitter carries no information). ``24:00``
  is the end of the day (ISO 8601): ``2026-11-20 24:00`` is ``2026-11-21 00:00``.
* Meter ids are text; one that arrived as a floating-point number (a Parquet integer column
  with a missing id is float64) is written as the integer: ``3302810001.0`` is ``3302810001``.
* Clock skew. A reading later than ``now + future_skew`` (default 10 min) is quarantined
  (``future_ts``; ``now`` is the real clock, never a replay's as-of time: a reading after a
  replayed day is the next day's, not a fast meter clock), not shifted: a wrong correction
  would move usage into other slots, where a detector would read it as night activity. The
  reason text tells the clerk to check the meter clock. Readings before ``min_ts`` (default
  2010-01-01, e.g. a meter whose clock fell back to 1970/2000 after a power cut) are
  quarantined as ``ts_too_old``.
* Physical maximum. A household on 220 V with a ~100 A main fuse draws at most ~22 kW; we
  allow ``max_kw = 25`` kW, i.e. 6.25 kWh per 15-minute interval, scaled by the interval
  (for registers: by the time elapsed since the previous reading). More is ``implausible_kwh``.
* Duplicates. Same meter and ts: the first row in file order is kept; a later row with the
  same kWh is ``duplicate`` (informational), with a different kWh ``conflicting_duplicate``.
  That is the feeds' rule and the store's (``ReadingStore.append`` keeps the value that came
  first and hands a changed one back to be quarantined): what arrived first is kept, a changed
  value is set aside. A file given to ``sibifang detect`` has no order that says which of two
  rows came first (an export sorted by value or meter, a merge of two exports), so there
  (``conflicts=CONFLICTS_SET_ASIDE``) a meter and time whose rows disagree keeps none of them:
  every row is ``conflicting_duplicate`` and the slot is a gap (a gap is never a guess).
  Rows that agree are still one reading and ``duplicate``s. Either way nothing is lost: each
  row is accepted or quarantined with its reason, and with CONFLICTS_SET_ASIDE the accepted
  readings do not depend on the order of the rows (save in the repeated autumn hour below,
  where the order of the two passes is the only thing that tells them apart).
* Summer time. Where the zone falls back (Europe/Paris: 2024-10-27, 03:00 back to 02:00), the
  naive times of the repeated hour occur twice in a correct export, once per pass. Their
  second occurrence (in file order, whatever its kWh) is ``ambiguous_dst_hour``
  (informational), not a duplicate; a third is ``duplicate`` or ``conflicting_duplicate``
  against either pass. It is set aside rather than kept because readings are naive local time
  with one reading per meter and time (the store's key, the detectors' naive hourly grid): two
  readings in one slot would double that night hour, moving one into another slot would invent
  a reading. The day is one hour of energy short, which no detector reads as anything. With
  an offset the two passes are still the same local time: the same rule applies. Cumulative
  registers: the reading after the repeated hour carries its energy (the physical maximum still
  applies). The hour skipped in spring is simply an hour without readings (a short gap).
  Zones without summer time (Asia/Shanghai since 1991) have no repeated hour: nothing changes.
* Cumulative registers are differenced per meter in time order, each reading against the
  *reference*: the highest reading since the last baseline (see :func:`register_baselines`):
    - the first reading of a meter is ``register_baseline`` (no interval can be computed).
      ``last_registers`` (the previous batch's state, which the ReadingStore keeps) chains
      batches, so a file or pull boundary loses no interval; only a meter's very first
      reading is a baseline. A reading at or before the state's ts is differenced within
      its own batch (a re-sent or re-ingested reading), and the state never moves back;
    - a reading at most ``REGISTER_JITTER_KWH`` (0.05 kWh) below the reference is read
      noise: 0 kWh, and the reference stays up, so noise never creates energy (100.00,
      100.04, 100.00, 100.04 is 0.04 kWh in all): accepted intervals sum to the register's
      rise (from the baseline to the highest reading);
    - a drop below that to near zero (≤ what the meter can count in the elapsed time) is
      ``register_reset``; any other drop is ``register_drop`` (meter replaced or swapped):
      either way the reading starts a new baseline, never a negative interval;
    - a gap (more than 1.5 intervals since the previous reading) is ``register_gap``: the
      energy of the gap is named in the reason but NOT spread over the missing slots —
      spreading would invent a flat profile exactly where a detector must see "no data"
      (a gap is never a zero, and never an average). The reading is the next baseline;
    - an upward jump above the physical maximum is ``implausible_kwh`` and also becomes the
      next baseline (a spike that falls back then shows as ``register_drop``; two intervals
      are lost, no energy is invented).
* Out-of-order rows are sorted; that is not an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# MAX_HOUSEHOLD_KW (25 kW: 220 V x a ~100 A main fuse, with a margin) is defined with the
# readings suite, which checks the same bound on what this module accepts.
from schemas.suites import MAX_HOUSEHOLD_KW, REGISTER_SPAN_FACTOR
from schemas.validation import DataContractError
from sibifang.readings_files import EXTRA_FIELDS, THOUSANDS_SEPARATED_RE, meter_id_text, repeated_header_rows
from sibifang.settings import LOCAL_TZ_NAME

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_MINUTES = 15
DEFAULT_FUTURE_SKEW = pd.Timedelta(minutes=10)
DEFAULT_MIN_TS = pd.Timestamp("2010-01-01")
REGISTER_JITTER_KWH = 0.05
# A reading this much later than the previous one (in intervals) closes a gap, not an interval.
GAP_FACTOR = REGISTER_SPAN_FACTOR

ACCEPTED_COLUMNS = ["meter_id", "ts", "kwh"]
QUARANTINE_COLUMNS = ["source_file", "line", "meter_id", "ts", "field", "code", "reason", "value"]
REGISTER_STATE_COLUMNS = ["meter_id", "ts", "register_kwh"]

# code -> (field, Chinese reason for the village data clerk)
QUARANTINE_CODES: dict[str, tuple[str, str]] = {
    # A row with more fields than the header (read_readings_file marks it): which of its fields
    # is the reading is a guess, so it is set aside whole, as the registry import does.
    "extra_fields": ("_row", "整行的列数多于表头，本行未导入，请检查该行是否多了逗号"),
    # The header of a second export joined into the file (copy /b a.csv+b.csv): no reading, and
    # nothing to fix; read as one it was a bad time, an unknown meter and a bad kWh at once.
    "repeated_header": ("_row", "重复的表头行（几个文件拼接成一个时常见），不是读数，未导入，无需处理"),
    # A totals row at the foot of a sheet (合计, 总计 in the meter or time column): a sum of the
    # readings above it, not a reading. Named as what it is, not "bad time" or "unknown meter";
    # read as a reading it would be a meter called 合计 in ``sibifang detect``.
    "total_row": ("meter_id", "合计行（上方读数的汇总，不是某块电表的读数），未导入，无需处理"),
    "missing_meter_id": ("meter_id", "缺少电表编号"),
    "missing_ts": ("ts", "缺少读数时间"),
    "bad_ts": ("ts", "读数时间无法识别，应为 YYYY-MM-DD HH:MM[:SS]，可带时区如 +08:00 或 Z"),
    "missing_kwh": ("kwh", "缺少用电量（缺数不能当作0，已单独列出）"),
    "bad_kwh": ("kwh", "用电量不是有效数字"),
    "negative_kwh": ("kwh", "用电量为负数，电表数据有误"),
    "implausible_kwh": ("kwh", "用电量超过家庭用电的物理上限（220V/100A 约 25kW），疑似读数错误"),
    "unknown_meter": ("meter_id", "电表编号不在电表登记表（meters.csv）中"),
    "future_ts": ("ts", "读数时间晚于当前时间，电表时钟可能偏快，请核对电表时钟"),
    "ts_too_old": ("ts", "读数时间过早，电表时钟可能在停电后被重置，请核对电表时钟"),
    "duplicate": ("ts", "重复读数（同一电表同一时间、用电量相同），已保留第一条"),
    "conflicting_duplicate": ("kwh", "同一电表同一时间有不同的用电量，已保留文件中第一条，本条请核实"),
    "ambiguous_dst_hour": ("ts", "夏令时回拨重复的钟点（当天该钟点出现两次，不是重复读数）：读数按当地钟点记录，"
                                 "同一钟点只保留文件中第一条，本条单独列出，无需处理"),
    "register_baseline": ("register_kwh", "累计读数的起点，仅作为计算下一时段用电量的基准"),
    "register_reset": ("register_kwh", "累计读数回零（电表复位），本条作为新的基准"),
    "register_drop": ("register_kwh", "累计读数大幅下降（可能更换了电表），本条作为新的基准，请核实"),
    "register_gap": ("register_kwh", "与上一条读数之间缺数，期间用电量无法分配到各时段，按缺数处理，本条作为新的基准"),
    # Only when the caller sets max_interval_minutes (``sibifang detect``): hourly detectors
    # cannot judge a daily or monthly total, and spreading it over the hours would invent a
    # routine. The whole meter is set aside, each row with this reason.
    "interval_too_long": ("ts", "该电表读数间隔超过1小时（如按日抄表），无法按小时判断用电规律，未参与检测"),
}
# The same code when the readings of one meter and time disagree and none is kept (``sibifang
# detect``, whose file has no order that says which came first; see clean_readings(conflicts=...)).
CONFLICT_SET_ASIDE_REASON = ("同一电表同一时间有多条用电量不同的读数，无法判断哪一条正确：这些读数都未采用"
                             "（该时段按缺数处理），请核实")
# The same code when the row contradicts a reading already stored by an earlier batch
# (ReadingStore keeps the stored value; the row is quarantined, not counted accepted).
STORED_CONFLICT_REASON = ("同一电表同一时间已有入库的读数，且用电量不同：保留已入库的数值，本条请核实"
                          "（更正读数须由管理员处理）")
_CODE_NAMES = ["", *QUARANTINE_CODES]
_CODE_NUMBER = {name: number for number, name in enumerate(_CODE_NAMES)}
# Codes that need no action from the clerk: they explain a line, they do not report an error.
INFORMATIONAL_CODES = frozenset({"repeated_header", "total_row", "duplicate",
                                  "ambiguous_dst_hour", "register_baseline", "register_reset"})

# An offset only counts after a time of day: "2026-11-20" must not read as offset "-20".
_OFFSET_RE = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d*)?)?\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$"
_NUMBER_RE = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
# A lower-case UTC designator after a time of day: "…02:45:00z".
_LOWER_Z_RE = r"(\d{2}:\d{2}(?::\d{2}(?:[.,]\d*)?)?\s*)z$"
# 24:00[:00[.000]] as a time of day (not "2024:00" nor "12:24:00"), before an optional offset.
_END_OF_DAY_RE = r"(?<![\d:])24:00(?::00(?:[.,]0*)?)?(?=\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?$)"


# How clean_readings settles readings of one meter and time with different kWh (see the module
# docstring): the first in file order is kept (a feed, a clerk's file: arrival order), or, when
# the rows have no order that means anything (``sibifang detect``), none of them is.
CONFLICTS_KEEP_FIRST = "keep_first"
CONFLICTS_SET_ASIDE = "set_aside"
# Equal kWh: within this (the files' values have at most a few decimals).
_SAME_KWH_ATOL = 1e-9


@dataclass
class CleanResult:
    accepted: pd.DataFrame  # meter_id (str), ts (datetime64[ns], naive local, end of interval), kwh (float64)
    quarantined: pd.DataFrame  # QUARANTINE_COLUMNS; line is the 1-based file line (header = line 1)
    counts: dict  # read, accepted, quarantined, and one entry per quarantine code
    # Cumulative feeds only: per meter the ts of its last usable reading and the reference
    # reached there, to pass as ``last_registers`` to the next batch so that its first reading
    # yields an interval instead of a baseline (meters not in this batch: as passed in).
    last_registers: pd.DataFrame | None = field(default=None)
    # The file line of each accepted row (same order as ``accepted``).
    accepted_lines: np.ndarray | None = field(default=None)


# --------------------------------------------------------------------------- reading intervals

# The intervals meters report at: the divisors of an hour (a 12-minute meter is not a 10-minute
# one). A meter's spacing is snapped to the nearest (in ratio), so a clock that drifts a few
# seconds still reads as its interval. The detectors use the same inference.
USUAL_INTERVALS_MINUTES = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60)
# Spacings beyond this are not an hourly meter with jitter: daily, monthly readings.
LONGEST_HOURLY_SPACING_MINUTES = 90
# Which quantile of a meter's spacings is its interval. Gaps only lengthen spacings, so a low
# quantile is the interval even when most of a meter's readings are missing; not the minimum,
# which a single stray extra reading would set.
INTERVAL_QUANTILE = 0.10


def infer_interval_minutes(accepted: pd.DataFrame) -> dict[str, int]:
    """Each meter's reading interval in minutes (``meter_id, ts``): the 10th percentile of
    the spacings between its consecutive readings, snapped to USUAL_INTERVALS_MINUTES; longer
    than LONGEST_HOURLY_SPACING_MINUTES, the spacing itself in whole minutes (e.g. 1440). A
    meter with a single reading has no interval and is left out."""
    if accepted.empty:
        return {}
    df = (accepted[["meter_id", "ts"]].drop_duplicates()
          .sort_values(["meter_id", "ts"], kind="stable", ignore_index=True))
    spacing = df["ts"].diff().dt.total_seconds() / 60.0
    spacing[df["meter_id"].ne(df["meter_id"].shift())] = np.nan  # not across meters
    spacing = spacing[spacing > 0]
    per_meter = spacing.groupby(df.loc[spacing.index, "meter_id"]).quantile(INTERVAL_QUANTILE)
    return {str(m): snap_interval(v) for m, v in per_meter.items()}


def snap_interval(minutes: float) -> int:
    if minutes > LONGEST_HOURLY_SPACING_MINUTES:
        return int(round(minutes))
    usual = np.asarray(USUAL_INTERVALS_MINUTES, dtype=float)
    return int(usual[np.argmin(np.abs(np.log(usual / max(minutes, 1e-3))))])


def grid_tolerance_seconds(interval_minutes: np.ndarray) -> np.ndarray:
    """How far off its interval's grid a reading may be and still be moved onto it: a tenth of
    the interval, at most two minutes (jitter of a meter clock, not a meter on another phase)."""
    return np.minimum(interval_minutes * 6.0, 120.0)


def _snap_to_grid(ts: np.ndarray, interval_minutes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``ts`` with ``rows`` within tolerance of their meter's grid (whole multiples of the
    interval from local midnight) moved onto it. A reading stamped 10:00:03 belongs to the
    interval ending 10:00; left there it would fall into the next hour."""
    out = ts.copy()
    rows = rows[np.isin(interval_minutes[rows], USUAL_INTERVALS_MINUTES)]  # grids that divide a day
    if not len(rows):
        return out
    step = (interval_minutes[rows] * 60).astype(np.int64)
    seconds = ts[rows].astype("datetime64[s]").astype(np.int64)
    nearest = np.round(seconds / step).astype(np.int64) * step  # grid lines are at midnight too: step divides a day
    near = np.abs(seconds - nearest) <= grid_tolerance_seconds(interval_minutes[rows])
    snapped = (nearest[near]).astype("datetime64[s]").astype(ts.dtype)
    out[rows[near]] = snapped
    return out


# --------------------------------------------------------------------------- parsing columns

def _as_text(values: pd.Series) -> pa.Array:
    """Column as an Arrow string array, whitespace trimmed, empty/None -> null."""
    arr = pa.array(values.astype("str"), type=pa.string(), from_pandas=True)
    arr = pc.utf8_trim_whitespace(arr)
    empty = pc.fill_null(pc.equal(arr, ""), True)
    return pc.if_else(empty, pa.scalar(None, pa.string()), arr)


# How other tools write "no value" (R, SQL exports, Excel): a missing reading, not a bad one.
_MISSING_TOKENS = pa.array(["na", "n/a", "null", "none", "-", "--"])


def _without_missing_tokens(text: pa.Array) -> pa.Array:
    missing = pc.fill_null(pc.is_in(pc.utf8_lower(text), _MISSING_TOKENS), False)
    return pc.if_else(missing, pa.scalar(None, pa.string()), text)


def _parse_number(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """-> (float64 values with NaN where missing/bad, bool mask 'present but unparseable')."""
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        out = values.to_numpy(dtype=np.float64, na_value=np.nan)
        return out, np.zeros(len(out), dtype=bool)
    text = _without_missing_tokens(_as_text(values))
    present = pc.is_valid(text).to_numpy(zero_copy_only=False)
    try:
        nums = pc.cast(text, pa.float64())
        bad = np.zeros(len(text), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # Slow path only for files with garbage: validate by pattern, cast what is a number.
        # Full-width digits (０.５, typed with a Chinese input method) are digits: folded first,
        # as the registry import folds its coded columns.
        text = pc.utf8_normalize(text, "NFKC")
        # "1,234.50": Excel's number format with thousands separators, exported as shown (a
        # register passes 1,000 kWh within years). Only where the commas cannot be a decimal mark;
        # "1,234" alone is settled for the whole file (readings_files.check_readings_text).
        grouped = pc.fill_null(pc.match_substring_regex(text, THOUSANDS_SEPARATED_RE), False)
        text = pc.if_else(grouped, pc.replace_substring(text, ",", ""), text)
        lowered = pc.utf8_lower(text)
        ok = pc.or_(pc.match_substring_regex(text, _NUMBER_RE),
                    pc.is_in(lowered, pa.array(["nan", "inf", "+inf", "-inf", "infinity", "-infinity"])))
        ok = pc.fill_null(ok, False)
        nums = pc.cast(pc.if_else(ok, text, pa.scalar(None, pa.string())), pa.float64())
        bad = present & ~ok.to_numpy(zero_copy_only=False)
    out = nums.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    out = np.where(present & ~bad, out, np.nan)
    # "nan" written in the file is a missing value; "inf" is a bad one.
    bad = bad | np.isinf(out)
    out[np.isinf(out)] = np.nan
    return out, bad


def _parse_ts(values: pd.Series, tz: str, second_chance: bool = True) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """-> (naive local datetime64[ns] with NaT, mask missing, mask present-but-unparseable)."""
    n = len(values)
    dtype = values.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        ts = values.dt.tz_convert(tz).dt.tz_localize(None)
        missing = ts.isna().to_numpy()
        return _to_ns(ts), missing, np.zeros(n, dtype=bool)
    if pd.api.types.is_datetime64_dtype(dtype):
        missing = values.isna().to_numpy()
        return _to_ns(values), missing, np.zeros(n, dtype=bool)

    if pd.api.types.is_object_dtype(dtype):
        # Mixed Python objects (XLSX cells, JSON): aware datetimes go through their ISO text.
        values = values.map(lambda v: v.isoformat() if isinstance(v, datetime) else v)
    text = _as_text(values)
    missing = ~pc.is_valid(text).to_numpy(zero_copy_only=False)
    s = pd.Series(text, dtype="str")
    has_offset = pc.fill_null(pc.match_substring_regex(text, _OFFSET_RE), False).to_numpy(zero_copy_only=False)
    result = pd.Series(pd.NaT, index=range(n), dtype="datetime64[ns]")
    if has_offset.any():
        aware = pd.to_datetime(s[has_offset], format="ISO8601", utc=True, errors="coerce")
        result.loc[has_offset] = _to_ns(aware.dt.tz_convert(tz).dt.tz_localize(None)).to_numpy()
    naive_mask = ~has_offset & ~missing
    if naive_mask.any():
        naive = pd.to_datetime(s[naive_mask], format="ISO8601", errors="coerce")
        retry = naive.isna().to_numpy()
        if retry.any():
            # Second chance for "2026/11/20 8:15", "2026年11月20日 8:15" and the like: per element,
            # so only for the few; only with a full date first (dateutil would complete a bare
            # "08:15" with today's date).
            again = s[naive_mask][retry].str.replace(r"[/.年月]", "-", regex=True).str.replace("日", " ", regex=False)
            dated = again.str.match(r"^\s*\d{4}-\d{1,2}-\d{1,2}(?:[ T]|$)|^\s*\d{8}(?:[ T]|$)", na=False)
            parsed = pd.to_datetime(again.where(dated), format="mixed", errors="coerce")
            naive.loc[retry] = parsed.to_numpy()
        result.loc[naive_mask] = _to_ns(naive).to_numpy()
    bad = ~missing & result.isna().to_numpy()
    if bad.any() and second_chance:
        # ISO 8601 forms pandas does not read, tried only where parsing failed (a clean feed
        # pays nothing): "24:00" is the end of the day (2026-11-20 24:00 = 2026-11-21 00:00),
        # and UTC may be written "z".
        retry = np.flatnonzero(bad)
        original = s.iloc[retry].reset_index(drop=True)
        # Full-width digits and colons (２０２６－１１－２０ ０８：４５, typed with a Chinese input
        # method) are the same time: folded, as the registry import folds its dates.
        folded = original.str.normalize("NFKC")
        midnight = folded.str.replace(_END_OF_DAY_RE, "00:00", regex=True)
        next_day = (midnight != folded).to_numpy()
        rewritten = midnight.str.replace(_LOWER_Z_RE, r"\1Z", regex=True)
        changed = (rewritten != original).to_numpy()
        if changed.any():
            again, _, still_bad = _parse_ts(rewritten[changed].reset_index(drop=True), tz, second_chance=False)
            # Naive local time: China has no DST, so a calendar day is 24 h, offsets or not.
            again = again + pd.to_timedelta(next_day[changed].astype(np.int64), unit="D")
            result.iloc[retry[changed]] = again.to_numpy()
            bad[retry[changed]] = still_bad
    return result, missing, bad


def _to_ns(ts: pd.Series) -> pd.Series:
    return ts.astype("datetime64[ns]").dt.floor("s")


@dataclass(frozen=True)
class ReadingTimes:
    """The ``ts`` column of a raw frame read once (:func:`parse_reading_times`), for the calls
    that would each read it again: a meter-API pull asks :func:`already_stored` which rows the
    store holds and cleans the others (``clean_readings(times=...)``); reading a million
    timestamps with offsets takes about 0.6 s, a third of what the pull's cleaning takes."""

    ts: pd.Series          # naive local datetime64[ns], NaT where missing or unreadable
    missing: np.ndarray    # bool: no time given
    bad: np.ndarray        # bool: a time given that cannot be read
    timezone: str

    def __len__(self) -> int:
        return len(self.missing)

    def take(self, keep: np.ndarray) -> "ReadingTimes":
        """The times of the rows where ``keep`` (a boolean mask), as ``raw.loc[keep]`` keeps them."""
        keep = np.asarray(keep, dtype=bool)
        return ReadingTimes(self.ts[keep].reset_index(drop=True), self.missing[keep], self.bad[keep], self.timezone)


def parse_reading_times(raw: pd.DataFrame, timezone: str = LOCAL_TZ_NAME) -> ReadingTimes:
    """``raw["ts"]`` read as :func:`clean_readings` reads it (offsets converted to ``timezone``)."""
    ts, missing, bad = _parse_ts(raw["ts"].reset_index(drop=True), timezone)
    return ReadingTimes(ts, missing, bad, timezone)


def _times_of(raw: pd.DataFrame, times: ReadingTimes | None, timezone: str) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    if times is None:
        return _parse_ts(raw["ts"], timezone)
    if len(times) != len(raw) or times.timezone != timezone:
        raise ValueError(f"times: {len(times)} rows in {times.timezone}, the frame has {len(raw)} in {timezone}")
    return times.ts, times.missing, times.bad


def readings_after(raw: pd.DataFrame, as_of: datetime, now: datetime, *,
                   future_skew: pd.Timedelta = DEFAULT_FUTURE_SKEW, timezone: str = LOCAL_TZ_NAME) -> int:
    """How many rows of ``raw`` are readings of a day after ``as_of``'s day but not in the future
    of the clock ``now`` (within ``future_skew``): readings of a later day, not of a meter clock
    ahead. Days as the store counts them: ``ts`` is the end of an interval, so a reading stamped
    00:00 closes the day before (a day's export runs to the next midnight).

    A replay of a past day must leave a file holding such readings to the run of their day:
    ingested now, it would be moved to ``done/`` and that run would never read it. Rows later
    than the clock are not counted: they are ``future_ts`` whenever the file is ingested, and
    counted here they would keep the file waiting for ever."""
    if not len(raw) or "ts" not in raw.columns:
        return 0
    ts, _, _ = _parse_ts(raw["ts"].reset_index(drop=True), timezone)
    values = ts.to_numpy()
    readable = ~np.isnat(values)
    day = (values[readable] - np.timedelta64(1, "ns")).astype("datetime64[D]")
    last_day = np.datetime64(_local_now(as_of, timezone).date(), "D")
    upper = (_local_now(now, timezone) + future_skew).to_datetime64()
    return int(((day > last_day) & (values[readable] <= upper)).sum())


def _local_now(now: datetime | None, tz: str) -> pd.Timestamp:
    if now is None:
        return pd.Timestamp.now(tz=tz).tz_localize(None)
    stamp = pd.Timestamp(now)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert(tz).tz_localize(None)
    return stamp


def already_stored(raw: pd.DataFrame, last_ts: dict[str, pd.Timestamp], load_stored, *,
                   interval_minutes: dict[str, int] | int | None = None,
                   timezone: str = LOCAL_TZ_NAME, times: ReadingTimes | None = None) -> np.ndarray:
    """Mask of the rows of ``raw`` (as :func:`clean_readings` takes it) that the store already
    holds: the same meter and time, read and snapped onto the meter's grid as the cleaning reads
    it, and, for interval kWh, the same value (a register's value is not what is stored).

    A meter-API pull resumes from the meter that lags most, so it sends again what earlier pulls
    stored: those rows are not a new batch's to read. Only rows at or before their meter's
    stored last reading (``ReadingStore.last_ts()``) can be; ``load_stored(start, end,
    meter_ids)`` (``ReadingStore.load``) gives the stored readings of that span. A reading that
    arrives late (its meter's later ones stored first) or with another value (a correction,
    quarantined as a conflicting duplicate) is read. Rows without a meter or a readable time,
    and meters the store does not hold, are never masked (the cleaning judges them).
    ``times``: ``raw``'s times already read (:func:`parse_reading_times`), not read again."""
    n = len(raw)
    if not n or not last_ts:
        return np.zeros(n, dtype=bool)
    raw = raw.reset_index(drop=True)
    meters = _MeterCodes.of(raw["meter_id"])
    ts, ts_missing, ts_bad = _times_of(raw, times, timezone)
    values = ts.to_numpy()
    readable = ~ts_missing & ~ts_bad & (meters.codes >= 0)
    interval = meters.per_row(_interval_per_meter(meters.names, interval_minutes))
    values = _snap_to_grid(values, interval, np.flatnonzero(readable))
    stored_last = pd.Series(meters.names.to_pandas()).map(
        pd.Series(last_ts, dtype="datetime64[ns]")).to_numpy(dtype="datetime64[ns]")
    limit = np.append(stored_last, np.datetime64("NaT", "ns"))[meters.codes]
    with np.errstate(invalid="ignore"):
        maybe = readable & ~np.isnat(limit) & (values <= limit)
    out = np.zeros(n, dtype=bool)
    rows = np.flatnonzero(maybe)
    if not len(rows):
        return out
    names = np.asarray(meters.names.to_pandas(), dtype=object)[meters.codes[rows]]
    lo, hi = values[rows].min(), values[rows].max()
    have = load_stored(pd.Timestamp(lo) - pd.Timedelta(1, "ns"), pd.Timestamp(hi), sorted(set(names)))
    if not len(have):
        return out
    probe = pd.DataFrame({"meter_id": names, "ts": values[rows], "row": rows})
    if "kwh" in raw.columns:
        probe["sent"] = pd.to_numeric(raw["kwh"].iloc[rows].to_numpy(), errors="coerce")
    hit = probe.merge(have.rename(columns={"kwh": "held"}), on=["meter_id", "ts"], how="inner")
    if "sent" in hit.columns:
        # the store keeps float32: equal to a thousandth of a watt-hour is the same reading
        hit = hit[np.isclose(hit["sent"].to_numpy(float), hit["held"].to_numpy(float), rtol=1e-5, atol=1e-6)]
    out[hit["row"].to_numpy()] = True
    return out


# --------------------------------------------------------------------------- cleaning

def clean_readings(
    raw: pd.DataFrame,
    *,
    source: str,
    known_meters: set[str] | None = None,
    now: datetime | None = None,
    interval_minutes: dict[str, int] | int | None = None,
    timezone: str = LOCAL_TZ_NAME,
    max_kw: float = MAX_HOUSEHOLD_KW,
    future_skew: pd.Timedelta = DEFAULT_FUTURE_SKEW,
    min_ts: pd.Timestamp = DEFAULT_MIN_TS,
    last_registers: pd.DataFrame | None = None,
    snap_to_grid: bool = False,
    max_interval_minutes: int | None = None,
    conflicts: str = CONFLICTS_KEEP_FIRST,
    times: ReadingTimes | None = None,
) -> CleanResult:
    """Validate, convert and deduplicate raw readings; see the module docstring for the rules.

    ``raw`` has ``meter_id, ts`` and ``kwh`` (intervals) or ``register_kwh`` (cumulative),
    optionally ``line`` (else row position + 2). ``interval_minutes`` is per meter (from
    meters.csv), one value for all, or None for 15. ``now`` (naive = local; the real clock) bounds
    future timestamps. ``last_registers`` (``meter_id, ts, register_kwh``:
    the previous result's ``last_registers``, or ``ReadingStore.last_registers()``) continues
    cumulative registers across batches; the result's ``last_registers`` is the state after
    this batch (``register_kwh`` is the reference, which read noise does not lower).

    ``snap_to_grid`` moves timestamps a little off their meter's interval grid onto it (clock
    jitter; see :func:`_snap_to_grid`) before duplicates are looked for. ``max_interval_minutes``
    sets aside every row of a meter whose interval is longer (``interval_too_long``). Both
    need ``interval_minutes`` (see :func:`infer_interval_minutes`); the feeds use neither.

    ``conflicts``: readings of one meter and time with different kWh keep the first in file
    order (CONFLICTS_KEEP_FIRST, the feeds and the store) or none (CONFLICTS_SET_ASIDE: every
    such row is ``conflicting_duplicate``, so the result does not depend on the order of the
    rows; ``sibifang detect``). See the module docstring.

    ``times``: ``raw``'s ``ts`` already read by :func:`parse_reading_times` (same rows, same
    ``timezone``), which a caller that has read them for another purpose passes so they are
    not read twice; the result is the same.
    """
    if "kwh" in raw.columns:
        cumulative = False
        value_col = "kwh"
    elif "register_kwh" in raw.columns:
        cumulative = True
        value_col = "register_kwh"
    else:
        raise DataContractError(source, ["readings lack a kwh or register_kwh column"],
                                message_zh=f"{source} 的读数缺少 kwh（用电量）或 register_kwh（累计读数）列。")
    for col in ("meter_id", "ts"):
        if col not in raw.columns:
            raise DataContractError(source, [f"readings lack the {col} column"],
                                    message_zh=f"{source} 的读数缺少 {col} 列。")

    n = len(raw)
    raw = raw.reset_index(drop=True)
    line = (raw["line"].to_numpy(dtype=np.int64) if "line" in raw.columns
            else np.arange(2, n + 2, dtype=np.int64))

    # Meter ids as integer codes into a sorted dictionary: sorting, deduplication and the
    # per-meter lookups below then work on integers, never on millions of Python strings.
    meters = _MeterCodes.of(raw["meter_id"])
    ts, ts_missing, ts_bad = _times_of(raw, times, timezone)
    ts_values = ts.to_numpy()
    interval = meters.per_row(_interval_per_meter(meters.names, interval_minutes))
    if snap_to_grid:
        ts_values = _snap_to_grid(ts_values, interval, np.flatnonzero(~ts_missing & ~ts_bad & (meters.codes >= 0)))
    value, value_bad = _parse_number(raw[value_col])
    value_missing = np.isnan(value) & ~value_bad

    # One code per row: the first failing check wins, in this order.
    # Codes are small integers (0 = accepted, see _CODE_NUMBER): comparing millions of
    # Python strings would cost more than all the cleaning.
    code = np.zeros(n, dtype=np.int8)

    def flag(mask: np.ndarray, name: str) -> None:
        code[mask & (code == 0)] = _CODE_NUMBER[name]

    detail = np.full(n, "", dtype=object)
    reason = np.full(n, "", dtype=object)  # a reason other than the code's own ("" = the code's)
    # Looked for only where no time could be read (a header's 读数时间 is none): a few rows.
    header_rows = repeated_header_rows(raw, np.flatnonzero(ts_missing | ts_bad))
    code[header_rows] = _CODE_NUMBER["repeated_header"]
    if EXTRA_FIELDS in raw.columns:
        extra = raw[EXTRA_FIELDS].astype("str").fillna("").to_numpy(dtype=object) != ""
        flag(extra, "extra_fields")
    flag(_total_rows(raw, meters, ts_missing | ts_bad), "total_row")
    flag(meters.codes < 0, "missing_meter_id")
    flag(ts_missing, "missing_ts")
    flag(ts_bad, "bad_ts")
    flag(value_missing, "missing_kwh")
    flag(value_bad, "bad_kwh")
    _explain_commas(raw[value_col], np.flatnonzero(code == _CODE_NUMBER["bad_kwh"]), value_col, reason)
    if known_meters is not None:
        known = np.append(pc.is_in(meters.names, pa.array(sorted(map(str, known_meters)), pa.string()))
                          .to_numpy(zero_copy_only=False), True)
        flag(~known[meters.codes], "unknown_meter")
    local_now = _local_now(now, timezone)
    flag(ts_values > (local_now + future_skew).to_datetime64(), "future_ts")
    flag(ts_values < pd.Timestamp(min_ts).to_datetime64(), "ts_too_old")
    flag(value < 0, "negative_kwh")
    if max_interval_minutes is not None:
        too_long = (interval > max_interval_minutes) & (code == 0)
        flag(too_long, "interval_too_long")
        detail[too_long] = ("（约每 " + pd.Series(interval[too_long]).round().astype(int).astype(str)
                            + " 分钟一条）").to_numpy(dtype=object)
    if not cumulative:
        flag(value > max_kw * interval / 60.0, "implausible_kwh")

    kwh = np.full(n, np.nan)
    register_state = None
    valid = np.flatnonzero(code == 0)
    if len(valid):
        order = _sorted_rows(meters.codes[valid], ts_values[valid])
        rows = valid[order]  # valid rows by meter, ts, file order
        rows, unresolved = _deduplicate(rows, meters.codes, ts_values, value, code, timezone, conflicts)
        reason[unresolved] = CONFLICT_SET_ASIDE_REASON
        if cumulative:
            register_state = _difference_registers(rows, meters, ts_values, value, interval, code, kwh,
                                                   detail, max_kw, last_registers)
        else:
            kwh[rows] = value[rows]
        accepted_rows = rows[code[rows] == 0]
    else:
        accepted_rows = valid

    accepted = pd.DataFrame({
        "meter_id": pd.Series(meters.names_of(accepted_rows), dtype="str"),
        "ts": pd.Series(ts_values[accepted_rows], dtype="datetime64[ns]"),
        "kwh": kwh[accepted_rows].astype(np.float64),
    })

    quarantined = _quarantine_frame(raw, value_col, code, detail, line, meters, source, reason)
    counts = {"read": n, "accepted": len(accepted), "quarantined": len(quarantined)}
    per_code = np.bincount(code, minlength=len(_CODE_NAMES))
    for name in QUARANTINE_CODES:
        counts[name] = int(per_code[_CODE_NUMBER[name]])
    if counts["read"] != counts["accepted"] + counts["quarantined"]:
        raise RuntimeError(f"{source}: rows lost in cleaning: read {counts['read']} != "
                           f"{counts['accepted']} accepted + {counts['quarantined']} quarantined")

    last = _register_state(last_registers, register_state) if cumulative else None
    if counts["quarantined"]:
        log.info("%s: %d readings read, %d accepted, %d quarantined %s", source, n,
                 counts["accepted"], counts["quarantined"],
                 {k: v for k, v in counts.items() if k in QUARANTINE_CODES and v})
    return CleanResult(accepted=accepted, quarantined=quarantined, counts=counts, last_registers=last,
                       accepted_lines=line[accepted_rows].astype(np.int64))


def _explain_commas(values: pd.Series, rows: np.ndarray, value_col: str, reason: np.ndarray) -> None:
    """The reason of the bad values (``rows``) that hold a comma (``1,5``, ``12,34``; ``，`` too),
    in place: what a comma may mean here, as the registry's ``bad_thousands`` says it. The
    well-formed separators were read as numbers (readings_files._settle_commas); "不是有效数字"
    would not tell the clerk what is wrong with a number that looks like one."""
    if not len(rows):
        return
    from sibifang.importing import REASONS_ZH

    text = values.iloc[rows].astype("str").str.normalize("NFKC")
    comma = text.str.contains(",", regex=False).to_numpy(dtype=bool, na_value=False)
    label = "用电量" if value_col == "kwh" else "累计读数"
    reason[rows[comma]] = REASONS_ZH["bad_thousands"].format(field=label)


def _total_rows(raw: pd.DataFrame, meters: "_MeterCodes", ts_unread: np.ndarray) -> np.ndarray:
    """Mask: totals rows, labelled 合计 in the meter column or in the time column (looked at only
    where no time could be read: a few rows)."""
    from sibifang.checks import is_total_label

    named = np.append(is_total_label(pd.Series(meters.names.to_pandas(), dtype="str")), False)[meters.codes]
    rows = np.flatnonzero(ts_unread & ~named)
    if len(rows):
        named[rows] = is_total_label(raw["ts"].iloc[rows].astype("str"))
    return named


class _MeterCodes:
    """Row -> meter code (-1 where missing) into ``names``, the sorted distinct meter ids."""

    def __init__(self, text: pa.Array):
        encoded = pc.dictionary_encode(text).combine_chunks() if isinstance(text, pa.ChunkedArray) \
            else pc.dictionary_encode(text)
        dictionary = encoded.dictionary
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        present = pc.is_valid(encoded.indices).to_numpy(zero_copy_only=False)
        folded = fold_meter_ids(dictionary)
        if folded is not None:  # full-width ids: one meter, however it was typed
            dictionary, merged = folded
            indices = np.where(present, merged[np.where(present, indices, 0).astype(np.int64)], 0) \
                if len(merged) else indices
        order = pc.array_sort_indices(dictionary).to_numpy()
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        self.names: pa.Array = dictionary.take(pa.array(order))
        self.codes = np.where(present, rank[np.where(present, indices, 0).astype(np.int64)], -1) \
            if len(order) else np.full(len(text), -1, dtype=np.int64)

    @classmethod
    def of(cls, values: pd.Series) -> "_MeterCodes":
        if isinstance(values.dtype, pd.CategoricalDtype):
            # Parquet dictionary columns arrive as categoricals: encode the few categories,
            # not the millions of rows.
            by_category = cls(_as_text(meter_id_text(pd.Series(values.cat.categories))))
            out = cls(pa.array([], pa.string()))
            out.names = by_category.names
            category_codes = values.cat.codes.to_numpy()
            out.codes = np.where(category_codes >= 0,
                                 np.append(by_category.codes, -1)[category_codes], -1).astype(np.int64)
            return out
        return cls(_as_text(meter_id_text(values)))

    def per_row(self, per_meter: np.ndarray) -> np.ndarray:
        """Spread a per-meter array over rows (rows without a meter get the last element)."""
        return np.append(per_meter, per_meter[-1] if len(per_meter) else np.nan)[self.codes]

    def names_of(self, rows: np.ndarray) -> pa.Array:
        codes = self.codes[rows]
        return self.names.take(pa.array(codes, mask=codes < 0))

    def lookup(self, meter_ids: pd.Series) -> np.ndarray:
        return pd.Index(self.names.to_pandas()).get_indexer(meter_ids.astype("str"))


def meter_codes_of(meter_ids: pd.Series) -> np.ndarray:
    """Each row's meter as :func:`clean_readings` tells meters apart (an integer; -1: none)."""
    return _MeterCodes.of(meter_ids).codes


def fold_meter_ids(names: pa.Array) -> tuple[pa.Array, np.ndarray] | None:
    """Distinct meter ids with full-width letters and digits folded (NFKC: ``Ｍ００１`` is
    ``M001``, what a Chinese input method types into an Excel cell), as the registry import
    folds the ids it stores (``sibifang.checks.fold_width``): else such a row would be an
    unknown meter on import and a meter of its own in ``sibifang detect``. -> (the folded
    distinct ids, the position of each of ``names`` among them), or None when no id changes
    (the usual feed: ASCII ids, or Chinese ones, which NFKC leaves as they are)."""
    if not len(names) or pc.all(pc.string_is_ascii(names)).as_py():
        return None
    folded = pc.utf8_normalize(names, "NFKC")
    if pc.all(pc.equal(folded, names)).as_py():
        return None
    encoded = pc.dictionary_encode(pc.utf8_trim_whitespace(folded))  # NFKC turns U+3000 into a space
    return encoded.dictionary, encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _interval_per_meter(names: pa.Array, interval_minutes: dict[str, int] | int | None) -> np.ndarray:
    if interval_minutes is None:
        return np.full(len(names), float(DEFAULT_INTERVAL_MINUTES))
    if isinstance(interval_minutes, (int, float)):
        return np.full(len(names), float(interval_minutes))
    mapped = pd.Series(names.to_pandas()).map(interval_minutes).astype("float64").to_numpy()
    return np.where(np.isnan(mapped), float(DEFAULT_INTERVAL_MINUTES), mapped)


def _sorted_rows(meter_codes: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Stable order by (meter, ts): ties keep file order, so 'first' means first in the file."""
    seconds = ts.astype("datetime64[s]").astype(np.int64)
    span = int(seconds.max() - seconds.min()) if len(seconds) else 0
    if span < 2**32 and (meter_codes.max(initial=0) < 2**30):
        key = (meter_codes.astype(np.int64) << 32) | (seconds - seconds.min())
        return np.argsort(key, kind="stable")
    return np.lexsort((seconds, meter_codes))


def _deduplicate(rows: np.ndarray, meter_codes: np.ndarray, ts: np.ndarray, value: np.ndarray,
                 code: np.ndarray, timezone: str = LOCAL_TZ_NAME,
                 conflicts: str = CONFLICTS_KEEP_FIRST) -> tuple[np.ndarray, np.ndarray]:
    """Flag all but the first row of each (meter_id, ts); ``rows`` are sorted. -> (kept rows,
    the rows set aside whole as conflicting, for their reason).

    In the hour repeated when summer time ends the second row is the clock's second pass
    (``ambiguous_dst_hour``), not a duplicate; see the module docstring. With ``conflicts``
    CONFLICTS_SET_ASIDE, a (meter, ts) whose rows disagree on kWh (outside a repeated hour)
    keeps none of them: every row is ``conflicting_duplicate``, whatever the order of the rows."""
    m = meter_codes[rows]
    t = ts[rows]
    dup = np.zeros(len(rows), dtype=bool)
    dup[1:] = (m[1:] == m[:-1]) & (t[1:] == t[:-1])
    no_rows = np.zeros(0, dtype=rows.dtype)
    if not dup.any():
        return rows, no_rows
    # Value of the kept (first) row of each group, carried forward onto its duplicates.
    group_start = np.maximum.accumulate(np.where(~dup, np.arange(len(rows)), 0))
    kept_value = value[rows][group_start]
    same = np.isclose(value[rows], kept_value, rtol=0, atol=_SAME_KWH_ATOL)
    second_pass = np.zeros(len(rows), dtype=bool)
    at = np.flatnonzero(dup)  # the few rows looked at in the zone's calendar
    repeated = np.zeros(len(rows), dtype=bool)
    repeated[at] = _repeated_clock_time(t[at], timezone)
    if repeated.any():
        occurrence = np.arange(len(rows)) - group_start
        second_pass = repeated & (occurrence == 1)
        # A third row or later is a duplicate of either pass, or conflicts with both.
        second_value = value[rows][np.minimum(group_start + 1, len(rows) - 1)]
        same |= repeated & np.isclose(value[rows], second_value, rtol=0, atol=_SAME_KWH_ATOL)
    set_aside = np.zeros(len(rows), dtype=bool)
    if conflicts == CONFLICTS_SET_ASIDE:
        # A group conflicts when its values spread wider than equal: decided on the group's
        # smallest and largest value, which no order of its rows changes.
        starts = np.flatnonzero(~dup)
        spread = np.maximum.reduceat(value[rows], starts) - np.minimum.reduceat(value[rows], starts)
        in_dst_hour = np.logical_or.reduceat(repeated, starts)  # the passes: file order tells them apart
        group = np.cumsum(~dup) - 1
        set_aside = ((spread > _SAME_KWH_ATOL) & ~in_dst_hour)[group]
    elif conflicts != CONFLICTS_KEEP_FIRST:
        raise ValueError(f"conflicts: {CONFLICTS_KEEP_FIRST!r} or {CONFLICTS_SET_ASIDE!r}, not {conflicts!r}")
    code[rows[second_pass]] = _CODE_NUMBER["ambiguous_dst_hour"]
    code[rows[dup & ~second_pass & same & ~set_aside]] = _CODE_NUMBER["duplicate"]
    code[rows[(dup & ~second_pass & ~same) | set_aside]] = _CODE_NUMBER["conflicting_duplicate"]
    return rows[~dup & ~set_aside], rows[set_aside]


def _repeated_clock_time(ts: np.ndarray, timezone: str) -> np.ndarray:
    """Mask: naive local times that occur twice in ``timezone`` (the hour repeated when summer
    time ends): read as summer time and as standard time they are different instants."""
    if not len(ts):
        return np.zeros(0, dtype=bool)
    naive = pd.DatetimeIndex(ts)
    summer = naive.tz_localize(timezone, ambiguous=np.ones(len(ts), dtype=bool), nonexistent="NaT")
    standard = naive.tz_localize(timezone, ambiguous=np.zeros(len(ts), dtype=bool), nonexistent="NaT")
    return (summer.asi8 != standard.asi8) & ~summer.isna() & ~standard.isna()


def _difference_registers(rows: np.ndarray, meters: _MeterCodes, ts_all: np.ndarray, value: np.ndarray,
                          interval_all: np.ndarray, code: np.ndarray, kwh: np.ndarray, detail: np.ndarray,
                          max_kw: float, last_registers: pd.DataFrame | None) -> pd.DataFrame:
    """Intervals from registers, in place (``code``, ``kwh``, ``detail``); -> the register state
    after this batch: per meter, the ts of its last reading and the reference reached there."""
    meter_codes = meters.codes[rows]
    ts = ts_all[rows]
    reg = value[rows]
    interval = interval_all[rows]
    row_ids = rows
    stored = np.zeros(len(rows), dtype=bool)
    if last_registers is not None and len(last_registers):
        # The state an earlier batch left (its last reading's ts and its reference): pseudo-rows
        # (row id -1) that only serve as the reference for the readings after them.
        prev_codes = meters.lookup(last_registers["meter_id"])
        keep = prev_codes >= 0
        prev_ts = pd.to_datetime(last_registers["ts"]).astype("datetime64[ns]").to_numpy()[keep]
        meter_codes = np.concatenate([prev_codes[keep], meter_codes])
        ts = np.concatenate([prev_ts, ts])
        reg = np.concatenate([last_registers["register_kwh"].astype("float64").to_numpy()[keep], reg])
        interval = np.concatenate([np.full(keep.sum(), np.nan), interval])
        row_ids = np.concatenate([np.full(keep.sum(), -1), rows])
        stored = np.concatenate([np.ones(keep.sum(), dtype=bool), stored])
        # At equal ts the batch's reading comes first: it is differenced within its batch as
        # it was the first time (a re-sent or re-ingested reading), and the stored state after
        # it carries the reference on, so a re-ingested old file never moves the state back.
        order = np.lexsort((stored, ts.astype(np.int64), meter_codes))
        meter_codes, ts, reg, interval, row_ids, stored = (
            a[order] for a in (meter_codes, ts, reg, interval, row_ids, stored))

    first = np.ones(len(row_ids), dtype=bool)
    first[1:] = meter_codes[1:] != meter_codes[:-1]
    prev_time = np.concatenate([ts[:1], ts[:-1]])
    elapsed_min = (ts - prev_time).astype("timedelta64[s]").astype(np.float64) / 60.0
    limit = max_kw * elapsed_min / 60.0
    gap = elapsed_min > GAP_FACTOR * interval  # NaN interval (stored state): never a gap
    # Where a reading starts a new baseline whatever the register says.
    fixed = first | stored | (elapsed_min <= 0) | gap
    starts, reference = register_baselines(reg, fixed, limit)
    prev_ref = np.concatenate([[np.nan], reference[:-1]])
    diff = reg - prev_ref

    out_code = np.zeros(len(row_ids), dtype=np.int8)

    def flag(mask: np.ndarray, name: str) -> None:
        out_code[mask & (out_code == 0)] = _CODE_NUMBER[name]

    flag(first | stored | (elapsed_min <= 0), "register_baseline")
    dropped = diff < -REGISTER_JITTER_KWH
    flag(dropped & (reg <= np.maximum(limit, REGISTER_JITTER_KWH)), "register_reset")
    flag(dropped, "register_drop")
    flag(gap, "register_gap")
    flag(diff > limit, "implausible_kwh")
    ok = out_code == 0
    if not np.array_equal(ok, ~starts):
        raise RuntimeError("register differencing: the codes and the baselines disagree")

    real = row_ids >= 0
    gap_rows = (out_code == _CODE_NUMBER["register_gap"]) & real
    if gap_rows.any():
        detail[row_ids[gap_rows]] = (
            "（间隔 " + pd.Series(elapsed_min[gap_rows]).round().astype(int).astype(str)
            + " 分钟，期间共用电 " + pd.Series(np.maximum(diff[gap_rows], 0.0)).round(3).astype(str) + " kWh）"
        ).to_numpy()
    code[row_ids[real]] = out_code[real]
    # = max(diff, 0): measured from the reference, so read noise adds nothing.
    kwh[row_ids[real & ok]] = (reference - prev_ref)[real & ok]

    last = np.ones(len(row_ids), dtype=bool)
    last[:-1] = meter_codes[1:] != meter_codes[:-1]
    return pd.DataFrame({"meter_id": pd.Series(meters.names.take(pa.array(meter_codes[last])), dtype="str"),
                         "ts": pd.Series(ts[last], dtype="datetime64[ns]"),
                         "register_kwh": reference[last].astype(np.float64)})


# Passes of the vectorised baseline search before the plain scan takes over (see below).
_BASELINE_PASSES = 12


def register_baselines(reg: np.ndarray, fixed: np.ndarray, limit: np.ndarray,
                       jitter: float = REGISTER_JITTER_KWH) -> tuple[np.ndarray, np.ndarray]:
    """Which readings start a new baseline, and the reference after each reading.

    The rule, reading by reading in time order (meters one after the other; ``fixed`` marks
    the readings that start a baseline anyway: a meter's first, the one after a gap):

    * the reference is the highest reading since the last baseline. A register cannot run
      backwards, so a reading up to ``jitter`` below the reference is read noise: it adds
      0 kWh and leaves the reference where it is, and the next reading is measured from the
      reference, not from the noisy one (100.00, 100.04, 100.00, 100.04 is 0.04 kWh, not
      0.08). Accepted intervals therefore sum to the highest reading minus the baseline;
    * a reading more than ``jitter`` below the reference (reset, replaced meter) or more than
      ``limit`` above it (implausible) starts a new baseline.

    Vectorised: baselines are guessed, references taken as running maxima between them, and
    the baselines recomputed until they no longer change. The rule's outcome is the only
    fixed point, and each pass settles at least the next reading of every meter; meters
    still changing after a few passes (never seen in real feeds) go through
    :func:`register_baselines_scan`.
    """
    n = len(reg)
    if n == 0:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.float64)
    fixed = _first_is_fixed(fixed)
    meter_start = np.flatnonzero(fixed)
    # First guess: measured from the previous reading (exact for feeds without noise).
    guess = _baselines_from(reg, np.concatenate([[np.nan], reg[:-1]]), fixed, limit, jitter)
    changed_at = np.arange(n)
    for _ in range(_BASELINE_PASSES):
        reference = _running_max_between(reg, guess)
        again = _baselines_from(reg, np.concatenate([[np.nan], reference[:-1]]), fixed, limit, jitter)
        if np.array_equal(again, guess):
            return guess, reference
        changed_at, guess = np.flatnonzero(again != guess), again
    # The rest, reading by reading, only for the stretches (from a fixed baseline on) that
    # still changed; the others have settled, and stretches do not depend on each other.
    reference = _running_max_between(reg, guess)
    stretch = np.searchsorted(meter_start, changed_at, side="right") - 1
    bounds = np.append(meter_start, n)
    for k in np.unique(stretch):
        lo, hi = bounds[k], bounds[k + 1]
        guess[lo:hi], reference[lo:hi] = register_baselines_scan(reg[lo:hi], fixed[lo:hi], limit[lo:hi], jitter)
    return guess, reference


def register_baselines_scan(reg: np.ndarray, fixed: np.ndarray, limit: np.ndarray,
                            jitter: float = REGISTER_JITTER_KWH) -> tuple[np.ndarray, np.ndarray]:
    """:func:`register_baselines`, reading by reading: the rule as written (slow, plain)."""
    fixed = _first_is_fixed(fixed)
    starts = np.zeros(len(reg), dtype=bool)
    reference = np.zeros(len(reg), dtype=np.float64)
    level = np.nan
    for i, value in enumerate(reg.tolist()):
        # The same float expressions as _baselines_from: equal at the very edge of the tolerance.
        if fixed[i] or value - level < -jitter or value - level > limit[i]:
            starts[i], level = True, value
        else:
            level = max(level, value)
        reference[i] = level
    return starts, reference


def _first_is_fixed(fixed: np.ndarray) -> np.ndarray:
    """The first reading has nothing before it: a baseline, whatever ``fixed`` says."""
    if len(fixed) and not fixed[0]:
        fixed = fixed.copy()
        fixed[0] = True
    return fixed


def _baselines_from(reg: np.ndarray, prev_ref: np.ndarray, fixed: np.ndarray, limit: np.ndarray,
                    jitter: float) -> np.ndarray:
    diff = reg - prev_ref
    return fixed | (diff < -jitter) | (diff > limit)


def _running_max_between(reg: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Running maximum of ``reg`` that restarts at every ``starts``."""
    rises = np.ones(len(reg), dtype=bool)
    rises[1:] = starts[1:] | (reg[1:] >= reg[:-1])
    if rises.all():
        return reg.astype(np.float64, copy=True)  # no reading below its predecessor: reg itself
    # A copy: pandas may hand out a read-only view, and the scan fallback writes into it.
    return pd.Series(reg).groupby(np.cumsum(starts)).cummax().to_numpy(dtype=np.float64, copy=True)


def _register_state(previous: pd.DataFrame | None, batch: pd.DataFrame | None) -> pd.DataFrame:
    """State to hand to the next batch: this batch's meters as it left them, the other
    meters of ``previous`` as they were."""
    frames = []
    if previous is not None and len(previous):
        previous = previous[REGISTER_STATE_COLUMNS].astype({"meter_id": "str", "register_kwh": "float64"})
        if batch is not None:
            previous = previous[~previous["meter_id"].isin(batch["meter_id"])]
        frames.append(previous)
    if batch is not None:
        frames.append(batch)
    if not frames:
        return pd.DataFrame({"meter_id": pd.Series([], dtype="str"), "ts": pd.Series([], dtype="datetime64[ns]"),
                             "register_kwh": pd.Series([], dtype="float64")})
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].copy()
    frame["ts"] = pd.to_datetime(frame["ts"]).astype("datetime64[ns]")
    return frame.sort_values("meter_id", kind="stable", ignore_index=True)


def _quarantine_frame(raw: pd.DataFrame, value_col: str, code: np.ndarray, detail: np.ndarray,
                      line: np.ndarray, meters: _MeterCodes, source: str,
                      reason: np.ndarray | None = None) -> pd.DataFrame:
    rows = np.flatnonzero(code != 0)
    if not len(rows):
        return pd.DataFrame({c: pd.Series([], dtype="int64" if c == "line" else "str")
                             for c in QUARANTINE_COLUMNS})
    codes = pd.Series(np.asarray(_CODE_NAMES, dtype=object)[code[rows]], dtype="str")
    fields = codes.map({k: v[0] for k, v in QUARANTINE_CODES.items()})
    if value_col == "kwh":
        fields = fields.replace("register_kwh", "kwh")
    else:
        fields = fields.replace("kwh", "register_kwh")
    reasons = codes.map({k: v[1] for k, v in QUARANTINE_CODES.items()})
    if reason is not None and (reason[rows] != "").any():
        reasons = pd.Series(np.where(reason[rows] != "", reason[rows], reasons.to_numpy(dtype=object)), dtype="str")
    reasons = reasons + pd.Series(detail[rows], dtype="str")
    sub = raw.iloc[rows]
    # The offending field's raw text, so the clerk sees what the file said.
    extra = _raw_text(sub[EXTRA_FIELDS]) if EXTRA_FIELDS in sub.columns else np.full(len(rows), "", dtype=object)
    value_text = np.where(fields.to_numpy() == "meter_id", _raw_text(meter_id_text(sub["meter_id"])),
                          np.where(fields.to_numpy() == "ts", _raw_text(sub["ts"]),
                                   np.where(fields.to_numpy() == "_row", extra, _raw_text(sub[value_col]))))
    out = pd.DataFrame({
        "source_file": pd.Series(np.full(len(rows), source, dtype=object), dtype="str"),
        "line": line[rows].astype(np.int64),
        "meter_id": pd.Series(meters.names_of(rows), dtype="str"),
        "ts": pd.Series(_raw_text(sub["ts"]), dtype="str"),
        "field": fields,
        "code": codes,
        "reason": reasons,
        "value": pd.Series(value_text, dtype="str"),
    })
    return out.sort_values("line", kind="stable", ignore_index=True)


def _raw_text(values: pd.Series) -> np.ndarray:
    return values.astype("str").where(values.notna(), "").to_numpy(dtype=object)

