"""The ``sibifang`` command: demo, generate, import, run, serve, stats, pulls, export, detect, ack, migrate."""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Optional

import typer

# Telemetry off before Prefect is imported anywhere (no network here; noise on SQLite).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# A flow run without a Prefect server starts a temporary local API, which creates and migrates
# Prefect's database on its first start: on a fresh two-core machine that takes about 30 s,
# past Prefect's 20 s limit, and `make demo` failed there ("Timed out while attempting to
# connect to ephemeral Prefect API server"); later starts take about 11 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="四必访 sibifang — the Women's Federations' closed loop on Prefect.")

IMPORT_KINDS = ("areas", "households", "cadres", "meters", "readings", "visits", "resources", "mediation_rooms")
EXPORTS = ("visits", "flags", "alerts", "cases", "cadres", "coverage")


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic)."""
    from sibifang.db import migrate as do_migrate

    do_migrate()
    typer.echo("schema up to date")


@app.command()
def generate(scale: str = typer.Option("village", help="village | county | city"),
             seed: int = typer.Option(1), out: Path = typer.Option(Path("out/area")),
             days: Optional[int] = typer.Option(None, help="days of meter readings"),
             readings_csv: bool = typer.Option(False, help="also write readings.csv"),
             broken_rows: int = typer.Option(0, help="append deliberately broken household rows")) -> None:
    """Generate a synthetic area: the files a federation would hand over, plus the anomalies' ground truth."""
    from sibifang.generate import generate_area

    manifest = generate_area(scale, seed, out, days=days, write_readings_csv=readings_csv,
                             broken_rows=broken_rows, progress=lambda m: typer.echo(f"  {m}", err=True))
    _echo_json(manifest)


@app.command("import")
def import_(kind: str = typer.Argument(..., help="|".join(IMPORT_KINDS) + " | all (a directory)"),
            path: Path = typer.Argument(..., exists=True)) -> None:
    """Validate and import a file (CSV/XLSX, UTF-8/GBK); bad rows are quarantined with line, field and reason.

    Prints, in Chinese for the village clerk, what was read, imported and set aside per file. A file that
    cannot be imported at all is reported with its reason (exit code 1); the other files are imported."""
    from schemas.validation import DataContractError
    from sibifang.db import migrate as do_migrate
    from tasks.import_registry import record_rejected_file

    if kind != "all" and kind not in IMPORT_KINDS:
        raise typer.BadParameter(f"kind must be one of {', '.join(IMPORT_KINDS)} or all")
    do_migrate()
    if kind == "all":
        from flows.import_registry import registry_files

        files = registry_files(path)
    else:
        files = [(kind, path)]
    rejected = 0
    for k, p in files:
        try:
            r = _import_one_file(k, p, history=kind == "all")
        except DataContractError as e:
            r = record_rejected_file(k, p, e, stage="ingest_readings" if k == "readings" else None)
            rejected += 1
            typer.echo(f"{_kind_zh(k)} {p.name}：未导入。{r['reason']} → 报告 {r['error_report']}", err=True)
            continue
        typer.echo(_import_line(r))
        if r.get("error_report"):
            typer.echo(Path(r["error_report"]).read_text(encoding="utf-8")[:3000])
    if rejected:
        raise typer.Exit(1)


def _kind_zh(kind: str) -> str:
    from sibifang.importing import KIND_LABELS_ZH

    return KIND_LABELS_ZH.get(kind, kind)


def _import_one_file(kind: str, path: Path, history: bool = False) -> dict:
    if kind == "readings":
        from sibifang.readings_files import read_readings_file, skipped_lines_zh
        from tasks.ingest_readings import file_batch_id, ingest_frame

        raw = read_readings_file(path)
        r = ingest_frame(raw, source=path.name, batch_id=file_batch_id(path))
        r["header_note"] = skipped_lines_zh(raw)  # title lines above the header: named, not read
        earlier = r.get("earlier")
        if earlier:
            # The same content is in the ledger (reading_batches): imported again, a cumulative
            # file's first reading would become a baseline and contradict the earlier counts.
            typer.echo(f"电表读数 {path.name}：已导入过（{earlier['ingested_at']:%Y-%m-%d %H:%M}，"
                       f"文件 {earlier['source']}，内容相同），本次未重复导入。当时的结果：")
            return {"kind": "readings", "file": str(path), **earlier}
        return {"kind": "readings", "file": str(path), **r}
    from tasks.import_registry import import_file

    return import_file(kind, path, history=history)  # a directory (all) is a hand-over: its visits are history


def _import_line(r: dict) -> str:
    """``家庭档案 households.csv：读取 300 行，导入 298 行，隔离 2 行 → 报告 …`` (the clerk's summary)."""
    line = (f"{_kind_zh(r['kind'])} {Path(r['file']).name}：读取 {r['read']} 行，导入 {r['accepted']} 行，"
            f"隔离 {r['quarantined']} 行")
    if r.get("new") is not None:
        line += f"（新增 {r['new']} 条）"
    if r.get("unknown_columns"):
        line += f"；未识别的列（未导入）：{'、'.join(r['unknown_columns'])}"
    if r.get("header_note"):
        line += f"；{r['header_note']}"
    if r.get("error_report"):
        line += f" → 报告 {r['error_report']}"
    return line


def _parse_params(params: list[str]) -> dict:
    out = {}
    for p in params:
        if "=" not in p:
            raise typer.BadParameter(f"--param takes key=value, got {p!r}")
        k, v = p.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


@app.command()
def run(flow_name: str = typer.Argument(..., help="a flow: closed_loop, schedule_visits, flag_risks, ..."),
        param: list[str] = typer.Option([], "--param", "-p", help="key=value (repeatable)"),
        deployment: bool = typer.Option(False, help="trigger the served deployment instead of running here")) -> None:
    """Run one flow now with parameters: a supervisor's manual trigger."""
    from flows import get_flow

    params = _parse_params(param)
    if deployment:
        from prefect.deployments import run_deployment

        fr = run_deployment(f"{flow_name}/{flow_name}", parameters=params, timeout=0)
        typer.echo(f"triggered flow run {fr.id} of deployment {flow_name}/{flow_name}")
        return
    from sibifang.db import migrate as do_migrate

    from sibifang.errors import FlowParameterError

    do_migrate()
    try:
        result = get_flow(flow_name)(**params)
    except FlowParameterError as e:
        typer.echo(f"参数有误：{e}", err=True)
        raise typer.Exit(2) from None
    _echo_json(result)


@app.command()
def serve(ack_port: int = typer.Option(8765, help="port of the acknowledgement endpoint (0 = off)"),
          prefect_port: int = typer.Option(4200, help="port of the Prefect server started when PREFECT_API_URL "
                                                      "is unset")) -> None:
    """Serve every flow on its schedule from this process, plus the acknowledgement endpoint.

    Without PREFECT_API_URL a local Prefect server (with its scheduler and UI) is started."""
    from sibifang.db import migrate as do_migrate
    from sibifang.deployments import serve_all

    do_migrate()
    serve_all(ack_port=ack_port, prefect_port=prefect_port)


@app.command()
def stats(as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Counts for each stage, read from the database."""
    from sibifang.db import migrate as do_migrate
    from sibifang.stats import collect_stats

    do_migrate()
    s = collect_stats()
    if as_json:
        typer.echo(json.dumps(s, ensure_ascii=False, default=str))
    else:
        for k, v in s.items():
            typer.echo(f"{k:<22} {v}")


@app.command()
def pulls(resume: Optional[str] = typer.Option(
        None, "--resume", metavar="BATCH",
        help="put a set-aside pull back: the next pull (sibifang run ingest_readings) finishes it")) -> None:
    """Meter-API pulls set aside after failing to finish, and readings batches never finished."""
    from sibifang.readings_store import ReadingStore, StoreBusy

    store = ReadingStore.from_settings()
    if resume:
        try:
            store.resume_set_aside(resume)
        except (LookupError, FileExistsError, StoreBusy) as e:
            typer.echo(str(e), err=True)
            raise typer.Exit(1) from None
        typer.echo(f"拉取批次 {resume} 已放回，下一次拉取（sibifang run ingest_readings）先完成它")
        return
    aside = store.set_aside_pulls()
    typer.echo(f"暂存的电表平台拉取批次（多次入库失败）：{len(aside)}")
    for journal in aside:
        info = journal.info()
        typer.echo(f"  {info['batch_id']}  {info['source']}  开始于 {info['begun']:%Y-%m-%d %H:%M}  "
                   f"失败 {info['attempts']} 次  {journal.directory}（readings.csv 为拉取到的读数）")
        typer.echo(f"    最后一次错误：{info.get('last_error')}")
    files = store.unfinished_files()
    typer.echo(f"写入读数库后未记账的读数文件批次：{len(files)}")
    for journal in files:
        info = journal.info()
        # Finished when the same file is ingested again; a file that will not come back leaves
        # readings in the store that no ledger row counts (the operator decides, nothing is deleted).
        typer.echo(f"  {info['source'] or '（来源未记录）'}  {info['batch_id'] or journal.directory.name}  "
                   f"开始于 {info['begun']:%Y-%m-%d %H:%M}：同一文件再次导入时完成")


@app.command()
def export(what: str = typer.Argument(..., help="|".join(EXPORTS)), out: Path = typer.Option(..., "--out"),
           as_of: Optional[str] = typer.Option(None, help="for coverage: the day it is computed for")) -> None:
    """Export visits, flags, alerts, cases, cadres or coverage as CSV (UTF-8 with BOM, opens in Excel)."""
    from sibifang.db import migrate as do_migrate
    from sibifang.stats import export_frame

    if what not in EXPORTS:
        raise typer.BadParameter(f"one of {', '.join(EXPORTS)}")
    do_migrate()
    df = export_frame(what, as_of=date.fromisoformat(as_of) if as_of else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, encoding="utf-8-sig", quoting=csv.QUOTE_MINIMAL)
    typer.echo(f"{len(df)} rows → {out}")


# `sibifang detect` reads files from anywhere (public data sets, synthetic areas), not a feed that
# arrives as it is measured: there is no wall clock to bound its timestamps (a synthetic file may
# be dated after today, and a replay's readings after --as-of are cut, not wrong), so the cleaner
# is given a "now" after any plausible reading. Public smart-meter data reach back to 2006 (the
# UCI Sceaux household), before the feeds' own floor of 2010; a meter clock reset to 1970 or
# 2000-01-01 after a power cut is still caught.
DETECT_NOW = "2200-01-01"
DETECT_MIN_TS = "2001-01-01"
_AS_OF_DATE = re.compile(r"\s*(?:\d{4}[-/]\d{1,2}[-/]\d{1,2}|\d{8})(?:[ T]|\s*$)")
# The detectors judge hours: a meter read less often (daily, monthly) is set aside.
DETECT_MAX_INTERVAL_MINUTES = 60
# Memory. Rows are cleaned a group of whole meters at a time (cleaning holds ~300 bytes per row);
# the detectors bound their own blocks by meter-hours (DetectorConfig.block_meter_hours). Meters
# are independent, so neither split changes a flag.
CLEAN_ROWS_PER_CHUNK = 1_000_000
# An --as-of this far past the file's last reading would flag every meter offline: a mistake.
AS_OF_MAX_PAST_LAST = "7D"
# Most readings above the physical maximum: the file is in Wh, not a few broken rows.
WH_SHARE = 0.5


class DetectInputError(Exception):
    """Bad input to ``detect``: the Chinese message is printed, exit code 2, no traceback."""


def check_timezone(tz: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise DetectInputError(f"--tz {tz!r} 不是有效的时区名，应为 IANA 时区名，如 Asia/Shanghai、"
                               "Europe/London、America/Vancouver。") from None
    return tz


def _parse_as_of(value: Optional[str], tz: str) -> Optional[datetime]:
    """``--as-of`` as naive local time in ``tz``: an offset or ``Z`` is converted."""
    import pandas as pd

    if value is None:
        return None
    stamp = None
    if _AS_OF_DATE.match(value):  # a date first: no "today"/"now" read in the host's zone
        try:
            stamp = pd.to_datetime(value.strip(), format="ISO8601")
        except (ValueError, OverflowError):
            stamp = None
    if stamp is None or pd.isna(stamp):
        raise DetectInputError(f"--as-of {value!r} 无法识别：应为 YYYY-MM-DD[ HH:MM[:SS]]，可带时区如 +08:00 或 Z"
                               f"（换算为 {tz} 当地时间）；不带时区即为当地时间。")
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert(tz).tz_localize(None)
    return stamp.to_pydatetime()


class _Cleaned:
    """A readings file cleaned for ``detect``: accepted readings per group of meters, all the
    quarantined rows, and the counts (read = accepted + quarantined)."""

    def __init__(self) -> None:
        self.accepted: list = []
        self.quarantined: list = []
        self.counts: dict = {}

    def add(self, result) -> None:
        if len(result.accepted):
            # Meter ids as a categorical: one string per meter, not per reading (28 million rows
            # of text would be the largest thing held while the other groups are cleaned).
            self.accepted.append(result.accepted.astype({"meter_id": "category"}))
        self.quarantined.append(result.quarantined)
        for key, n in result.counts.items():
            self.counts[key] = self.counts.get(key, 0) + n

    def quarantine_frame(self):
        import pandas as pd

        frames = [q for q in self.quarantined if len(q)] or self.quarantined[:1]
        return pd.concat(frames, ignore_index=True).sort_values("line", kind="stable", ignore_index=True)


def _meter_groups(meter_ids, max_rows: int):
    """Row positions (file order) in groups of whole meters of about ``max_rows`` rows, one
    group at a time (a meter is never split: its duplicates and intervals are judged together).
    Rows without a meter id go with the first group, where they are quarantined. Meters are
    told apart as the cleaning tells them (spaces trimmed, full-width ids folded): " M1" and
    "Ｍ１" are the meter M1, in M1's group."""
    import numpy as np
    import pandas as pd

    from sibifang.ingest_readings import meter_codes_of

    if isinstance(meter_ids.dtype, pd.CategoricalDtype):  # Parquet dictionary: no need to hash the rows
        codes, uniques = meter_ids.cat.codes.to_numpy(), pd.Series(meter_ids.cat.categories)
    else:
        codes, uniques = pd.factorize(meter_ids, use_na_sentinel=True)
        uniques = pd.Series(uniques)
    # each distinct id as the cleaning reads it (-1: no meter), then + 1 (0: rows without a meter)
    codes = (np.append(meter_codes_of(uniques), -1)[codes] + 1).astype(np.int32)
    rows_per_meter = np.bincount(codes)
    group_of_meter = ((np.cumsum(rows_per_meter) - rows_per_meter) // max_rows).astype(np.int32)
    group = group_of_meter[codes]
    del codes
    for k in np.unique(group_of_meter[rows_per_meter > 0]) if len(group) else []:
        yield np.flatnonzero(group == k)
    if not len(group):
        yield np.zeros(0, dtype=np.int64)


def clean_for_detect(path: Path, tz: str) -> _Cleaned:
    """Read and clean a readings file with the ingestion code (formats, encodings, headers,
    offsets, duplicates, implausible values), a group of meters at a time. Raises
    DataContractError or DetectInputError for a file that cannot be judged at all. The
    evaluation harness reads anyone's households through it too (``--real``)."""
    import pandas as pd

    from sibifang.ingest_readings import CONFLICTS_SET_ASIDE
    from sibifang.readings_files import read_readings_file

    try:
        raw = read_readings_file(path)
    except OSError as e:  # unreadable (permissions, a vanished file): not a traceback either
        raise DetectInputError(f"文件 {path.name} 无法读取：{e.strerror or e}。") from None
    options = dict(source=path.name, now=pd.Timestamp(DETECT_NOW).to_pydatetime(),
                   min_ts=pd.Timestamp(DETECT_MIN_TS), timezone=tz,
                   # the rows of a file have no order that says which of two readings came first:
                   # a meter and time whose readings disagree keeps none (the flags never depend on
                   # the order of the rows); see sibifang/ingest_readings.py, "Duplicates"
                   conflicts=CONFLICTS_SET_ASIDE)
    cleaned = _Cleaned()
    for rows in _meter_groups(raw["meter_id"], CLEAN_ROWS_PER_CHUNK):
        cleaned.add(_clean_meter_group(raw.iloc[rows], options))
    del raw
    _refuse_wh(path, cleaned)
    return cleaned


def _clean_meter_group(raw, options: dict):
    """Two passes: the first (no physical maximum, 1e9 kW) only learns each meter's interval,
    which the second needs to snap jittered clocks, set aside daily meters and scale the maximum
    (hourly public data may hold 10 kWh, a 15-minute reading not)."""
    from sibifang.ingest_readings import clean_readings, infer_interval_minutes

    # The first pass reads a cumulative register's values as plain numbers: differenced without
    # an interval (15 minutes by default), every 30- or 60-minute spacing would be a gap and
    # nothing would be left to learn the interval from. Only the times matter here.
    register = "register_kwh" in raw.columns and "kwh" not in raw.columns
    first = clean_readings(raw.rename(columns={"register_kwh": "kwh"}) if register else raw, max_kw=1e9, **options)
    return clean_readings(raw, interval_minutes=infer_interval_minutes(first.accepted), snap_to_grid=True,
                          max_interval_minutes=DETECT_MAX_INTERVAL_MINUTES, **options)


def _refuse_wh(path: Path, cleaned: _Cleaned) -> None:
    """Readings mostly above what a household can draw are in Wh (1000 x kWh): refuse the file
    rather than quarantine all of it as broken."""
    implausible = cleaned.counts.get("implausible_kwh", 0)
    if not implausible or implausible < WH_SHARE * (implausible + cleaned.counts.get("accepted", 0)):
        return
    q = cleaned.quarantine_frame()
    first = q[q["code"] == "implausible_kwh"].iloc[0]
    raise DetectInputError(
        f"文件 {path.name} 第{first['line']}行 {first['field']}（用电量）列的值 {first['value']}："
        f"{implausible} 行读数超过家庭用电的物理上限，单位很可能是 Wh（瓦时）而不是 kWh（千瓦时）。"
        "请把数值除以 1000 后重新提交。")


def _resolve_as_of(path: Path, cleaned: _Cleaned, cutoff: Optional[datetime]):
    """The time the replay judges up to: --as-of, or the file's last reading (not beyond: the
    hours after it have no readings yet, they are not an outage)."""
    import pandas as pd

    last = max(a["ts"].max() for a in cleaned.accepted)
    first = min(a["ts"].min() for a in cleaned.accepted)
    if cutoff is None:
        return last
    cutoff = pd.Timestamp(cutoff)
    if cutoff > last + pd.Timedelta(AS_OF_MAX_PAST_LAST):
        raise DetectInputError(
            f"--as-of {cutoff:%Y-%m-%d %H:%M:%S} 比文件 {path.name} 的最后一条读数（{last:%Y-%m-%d %H:%M:%S}）"
            f"晚 {(cutoff - last).days} 天：这段时间没有任何读数，所有电表都会被判为离线。"
            "请检查 --as-of（年份、日期）或改用更新的读数文件；不给 --as-of 即判断到最后一条读数。")
    if cutoff < first:
        raise DetectInputError(
            f"--as-of {cutoff:%Y-%m-%d %H:%M:%S} 早于文件 {path.name} 的第一条读数（{first:%Y-%m-%d %H:%M:%S}），"
            "没有可判断的读数。")
    return cutoff


def _detect_groups(cleaned: _Cleaned, cutoff, config=None):
    """Episodes of every group of meters, each judged up to ``cutoff``."""
    import pandas as pd

    from sibifang.detectors import detect as run_detect

    frames = [run_detect(accepted, as_of=cutoff, config=config) for accepted in cleaned.accepted]
    episodes = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return episodes.sort_values(["meter_id", "detected_at", "kind"], kind="stable", ignore_index=True)


def _no_usable_rows_message(path: Path, counts: dict, quarantine_path: Path) -> str:
    if not counts.get("read"):
        return f"文件 {path.name} 只有表头，没有任何读数行，无法检测。"
    return (f"文件 {path.name} 没有可用的读数：{_detect_counts_line(path, counts, quarantine_path, 0, None)}。"
            "请按隔离明细中的原因修改后重新提交。")


def _detect_counts_line(path: Path, counts: dict, quarantine_path: Path, after_as_of: int,
                        as_of: Optional[datetime]) -> str:
    """``电表读数 r.csv：读取 10 行，接受 9 行，隔离 1 行（读数时间无法识别 1 行）→ 隔离明细 …``."""
    from sibifang.ingest_readings import QUARANTINE_CODES

    line = (f"电表读数 {path.name}：读取 {counts['read']} 行，接受 {counts['accepted']} 行，"
            f"隔离 {counts['quarantined']} 行")
    reasons = [f"{re.split('[，（]', QUARANTINE_CODES[code][1])[0]} {n} 行"
               for code, n in counts.items() if code in QUARANTINE_CODES and n]
    if reasons:
        line += f"（{'、'.join(reasons)}）"
    if after_as_of:
        line += f"；其中 {after_as_of} 行晚于 --as-of {as_of:%Y-%m-%d %H:%M:%S}，未参与检测"
    if counts["quarantined"]:
        line += f" → 隔离明细 {quarantine_path}"
    return line


@app.command()
def detect(readings: Path = typer.Option(..., "--readings", exists=True, dir_okay=False,
                                         help="CSV (UTF-8/GBK; , ; or tab), Parquet or XLSX: meter_id, ts, kwh"),
           out: Path = typer.Option(..., "--out"),
           as_of: Optional[str] = typer.Option(
               None, "--as-of", help="replay as of this time: readings after it are not seen "
                                     "(local time; an offset such as +08:00 or Z is converted). "
                                     "Default: the file's last reading"),
           tz: str = typer.Option(
               "Asia/Shanghai", "--tz", help="the households' time zone: timestamps without an offset are "
                                             "local time there, those with one are converted to it; "
                                             "the flags are written in it"),
           min_severity: str = typer.Option(
               "medium", "--min-severity",
               help="low | medium | high | critical. Default medium: the episodes that would alert a grid "
                    "worker. 'low' episodes are recorded for the family archive, not alerted."),
           silence_budget: Optional[float] = typer.Option(
               None, "--silence-budget",
               help="needless alerts a household-month the silence alarm may spend (higher: sooner and "
                    "noisier). Default SIBIFANG_SILENCE_ALARMS_PER_MONTH, 0.15")) -> None:
    """Run the meter detectors on a file, outside the database: one row per episode.

    The file is read and cleaned as `sibifang import readings` does (offsets converted to
    local time, duplicates and implausible values set aside -- readings of one meter and time
    that disagree are all set aside, so the order of the rows never changes a flag; clock jitter snapped to each
    meter's interval; meters read less often than hourly set aside; in a zone with summer time
    the second pass of the hour repeated in autumn set aside as ``ambiguous_dst_hour``, see
    sibifang/ingest_readings.py); rows set aside are written with their line and reason to
    FLAGS.quarantine.csv beside the output, and counted.

    The flag_risks flow judges the same readings with the same code and the same hours (a
    partly covered hour scaled up, tests/test_detect_agreement.py), over the 35 days before
    the midnight of its run: on a file that starts within them the two raise the same episodes
    (kWh as the store keeps them, float32); on a longer one the command learns each household's
    routine from more history."""
    from schemas.validation import DataContractError
    from sibifang.detectors import SEVERITIES
    from sibifang.settings import SILENCE_BUDGET_MAX, get_settings

    if min_severity not in SEVERITIES:
        typer.echo(f"--min-severity: one of {', '.join(SEVERITIES)}", err=True)
        raise typer.Exit(2)
    if silence_budget is not None and not 0 < silence_budget <= SILENCE_BUDGET_MAX:      # NaN fails both
        typer.echo(f"--silence-budget: a number above 0 and at most {SILENCE_BUDGET_MAX:g} "
                   "(needless alerts a household-month)", err=True)
        raise typer.Exit(2)
    quarantine_path = out.with_name(f"{out.stem}.quarantine.csv")
    try:
        tz = check_timezone(tz)
        requested = _parse_as_of(as_of, tz)
        cleaned = clean_for_detect(readings, tz)
        out.parent.mkdir(parents=True, exist_ok=True)
        # Written every time (header only when nothing was set aside): no stale file from an earlier run.
        cleaned.quarantine_frame().to_csv(quarantine_path, index=False, encoding="utf-8-sig")
        if not cleaned.accepted:
            raise DetectInputError(_no_usable_rows_message(readings, cleaned.counts, quarantine_path))
        cutoff = _resolve_as_of(readings, cleaned, requested)
    except (DataContractError, DetectInputError) as e:
        typer.echo(getattr(e, "message_zh", None) or str(e), err=True)
        raise typer.Exit(2) from None

    episodes = _detect_groups(cleaned, cutoff, get_settings().detector_config(silence_budget))
    recorded = len(episodes)
    episodes = episodes[episodes["severity"].isin(SEVERITIES[SEVERITIES.index(min_severity):])]
    cols = ["meter_id", "kind", "start", "detected_at", "severity", "score"]
    extra = [c for c in episodes.columns if c not in cols]
    # UTF-8 with BOM, as `export` writes: Excel on a Chinese Windows then shows the evidence.
    episodes[cols + extra].to_csv(out, index=False, encoding="utf-8-sig")
    after = sum(int((a["ts"] > cutoff).sum()) for a in cleaned.accepted) if requested is not None else 0
    typer.echo(_detect_counts_line(readings, cleaned.counts, quarantine_path, after, cutoff))
    meters = sum(a["meter_id"].nunique() for a in cleaned.accepted)
    typer.echo(f"{len(episodes)} episodes of severity {min_severity} or above ({recorded} in all) "
               f"from {meters} meters, judged up to {cutoff:%Y-%m-%d %H:%M:%S} ({tz}) → {out}")


@app.command()
def ack(alert_id: str, outcome: Optional[str] = typer.Option(None, help="visited_all_well | needs_help | escalate"),
        actor: str = typer.Option("cli", help="who acknowledges")) -> None:
    """Acknowledge an alert (and record the outcome of the visit)."""
    from sibifang.acknowledge import AckError, acknowledge

    try:
        _echo_json(acknowledge(alert_id, actor=actor, outcome=outcome))
    except AckError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None


@app.command("close-case")
def close_case(case_id: str,
               outcome: str = typer.Option(..., help="调解结果: 调解成功 | 调解未成功 | 转诉讼 | 当事人撤回"),
               actor: str = typer.Option("cli", help="who records it (the mediator)"),
               at: Optional[str] = typer.Option(None, help="when the case was closed (local time); default now")
               ) -> None:
    """Record a mediation room's outcome for a case (调解结案); the same outcome again changes nothing."""
    from sibifang.escalate_disputes import CaseOutcomeError
    from tasks.escalate_disputes import close_mediation_case

    try:
        when = None if at is None else _case_time(at)
        _echo_json(close_mediation_case(case_id, outcome, actor=actor, at=when))
    except CaseOutcomeError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None


def _case_time(value: str) -> datetime:
    """``--at`` as naive local time: an offset or ``Z`` is converted."""
    import pandas as pd

    from sibifang.escalate_disputes import CaseOutcomeError
    from sibifang.settings import LOCAL_TZ_NAME

    try:
        stamp = pd.Timestamp(value.strip())
    except (ValueError, OverflowError):
        stamp = None
    if stamp is None or pd.isna(stamp):
        raise CaseOutcomeError(f"--at {value!r} 无法识别：应为 YYYY-MM-DD HH:MM（北京时间）")
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert(LOCAL_TZ_NAME).tz_localize(None)
    return stamp.to_pydatetime()


@app.command()
def demo(scale: str = typer.Option("county"), seed: int = typer.Option(7), days: int = typer.Option(7),
         out: Path = typer.Option(Path("out")), reset: bool = typer.Option(True)) -> None:
    """Generate a synthetic area, import it and run the whole closed loop over simulated days."""
    from sibifang.demo import run_demo

    summary = run_demo(scale=scale, seed=seed, days=days, out=out, reset=reset,
                       echo=lambda m: typer.echo(m, err=False))
    typer.echo(json.dumps(summary, ensure_ascii=False, indent=2, default=str))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
