"""``sibifang demo``: a synthetic county through the whole closed loop, day by day.

Everything is written under ``out/``: the generated hand-over files, the SQLite database
(unless ``SIBIFANG_DATABASE_URL`` points elsewhere), the readings store, the inbox, the
alerts a local webhook receiver got, the import error reports and the summary report.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime, time as dtime, timedelta
from pathlib import Path


def _configure(out: Path) -> None:
    """Point every setting into ``out/`` unless the user set it explicitly."""
    out = out.resolve()
    os.environ.setdefault("SIBIFANG_DATABASE_URL", f"sqlite:///{out / 'sibifang.db'}")
    os.environ["SIBIFANG_DATA_DIR"] = str(out / "data")
    os.environ["SIBIFANG_INBOX_DIR"] = str(out / "data" / "inbox")
    os.environ["SIBIFANG_OUT_DIR"] = str(out)
    # The simulator writes each day's files whole before that day's loop reads them.
    os.environ["SIBIFANG_INBOX_SETTLE_SECONDS"] = "0"
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from sibifang.settings import reset_settings

    reset_settings()


def _reset_database(url: str) -> None:
    from sqlalchemy import text

    from schemas.models import Base
    from sibifang.db import get_engine

    engine = get_engine(url)
    with engine.begin() as conn:
        Base.metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))


def run_demo(*, scale: str = "county", seed: int = 7, days: int = 7, out: Path = Path("out"), reset: bool = True,
             echo: Callable[[str], None] = print) -> dict:
    t0 = time.monotonic()
    out = Path(out)
    if reset and out.exists():
        for child in ("area", "data", "reports", "import-errors", "schedule", "alerts-received.jsonl",
                      "sibifang.db", "sibifang.db-wal", "sibifang.db-shm"):
            p = out / child
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    _configure(out)

    from sibifang.db import migrate
    from sibifang.settings import get_settings

    settings = get_settings()
    if reset and not settings.database_url.startswith("sqlite"):
        _reset_database(settings.database_url)
    migrate()

    # 1. The hand-over: a synthetic county, a few deliberately broken rows to show quarantine.
    from sibifang.generate import generate_area

    echo(f"[1/4] generating a synthetic {scale} (seed {seed}) ...")
    area = out / "area"
    manifest = generate_area(scale, seed, area, broken_rows=5, progress=lambda m: echo(f"      {m}"))
    r_start = datetime.fromisoformat(str(manifest["start"]))
    r_end = datetime.fromisoformat(str(manifest["end"]))  # exclusive: the last day is the day before
    last_day = (r_end - timedelta(days=1)).date()
    first_day = last_day - timedelta(days=days - 1)

    # 2. Registry import through the validated import flow.
    from flows.import_registry import import_registry

    echo(f"[2/4] importing the registry ({time.monotonic() - t0:.0f} s) ...")
    # The hand-over is the register as the simulated days begin: its families are on it from
    # then (registered_at), so the period's report counts them.
    imported = import_registry(directory=str(area), now=datetime.combine(first_day, dtime.min))
    for r in imported:
        echo(f"      {r['kind']:<16} read {r['read']:>6}  accepted {r['accepted']:>6}"
             f"  quarantined {r['quarantined']:>3}"
             + (f"  → {r['error_report']}" if r.get("error_report") else ""))

    # 3. Meter history up to the first simulated day, then the loop day by day.
    from sibifang.demo_receiver import AlertReceiver
    from sibifang.simulate import acknowledge_alerts, close_cases, drop_readings, visit_sheet, write_visit_sheet

    inbox = Path(settings.inbox_dir)
    readings_file = area / "readings.parquet"
    n_hist = drop_readings(readings_file, inbox, r_start - timedelta(days=1),
                           datetime.combine(first_day, dtime.min), "history")
    echo(f"[3/4] running the closed loop for {days} day(s) from {first_day} "
         f"(history: {n_hist:,} readings) ({time.monotonic() - t0:.0f} s) ...")
    from flows.closed_loop import closed_loop
    from sibifang.settings import reset_settings

    day_results = []
    broken_shown = False
    # The demo replays a week in one short process: run heartbeats (which detect crashed runs of
    # long-lived workers, and cost ≈ 1 s per flow run) are off here only; `serve` keeps them.
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), \
            AlertReceiver(out / "alerts-received.jsonl", secret="demo-webhook-secret") as receiver:
        os.environ["SIBIFANG_ALERT_WEBHOOK_URL"] = receiver.url
        os.environ["SIBIFANG_ALERT_WEBHOOK_SECRET"] = "demo-webhook-secret"
        reset_settings()
        for i in range(days):
            day = first_day + timedelta(days=i)
            drop_readings(readings_file, inbox, datetime.combine(day, dtime.min),
                          datetime.combine(day + timedelta(days=1), dtime.min), f"readings-{day}")
            if i > 0:
                # The first sheet with visits carries one broken row, to show the quarantine.
                sheet = visit_sheet(day - timedelta(days=1), seed, broken_rows=0 if broken_shown else 1)
                broken_shown = broken_shown or len(sheet) > 0
                write_visit_sheet(sheet, inbox, day - timedelta(days=1))
            result = closed_loop(as_of=day, report=(i == days - 1), report_period_days=days)
            acks = acknowledge_alerts(day, seed)
            closed = close_cases(day, seed)
            fr, da, sv = result["flag_risks"], result["dispatch_alerts"], result["schedule_visits"]
            echo(f"      {day}: visits in {result['record_visits']['accepted']:>4}, "
                 f"readings {result['ingest_readings']['new']:>8,}, new flags {fr['new_flags']:>3}, "
                 f"alerts sent {da['sent']:>3}, escalated {da['escalated']:>2}, acked {acks['alerts_acked']:>3}, "
                 f"cases +{result['escalate_disputes']['cases_opened']} -{closed}, "
                 f"new plans {sv['new_plans']:>5} ({time.monotonic() - t0:.0f} s)")
            slow = sorted(result["seconds"].items(), key=lambda kv: -kv[1])[:3]
            echo("                  slowest stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in slow))
            day_results.append(result)
        duplicates = receiver.duplicates
        received = receiver.alerts
        notices_received = receiver.notices
    os.environ.pop("SIBIFANG_ALERT_WEBHOOK_URL", None)
    os.environ.pop("SIBIFANG_ALERT_WEBHOOK_SECRET", None)
    reset_settings()

    # 4. What the loop did.
    from sibifang.stats import collect_stats

    stats = collect_stats()
    report = day_results[-1].get("summary_report", {}).get("path")
    echo(f"[4/4] done in {time.monotonic() - t0:.0f} s")
    summary = {
        "households": stats["households"], "cadres": stats["cadres"],
        "visits_planned": stats["visit_plans"], "visits_done": stats["visit_plans_done"],
        "visit_records": stats["visits"], "readings": stats["readings"], "flags": stats["flags"],
        "alerts_delivered": stats["alerts_sent"], "alerts_pending": stats["alerts_pending"],
        "alerts_acked": stats["alerts_acked"], "alerts_received_by_webhook": received,
        "alerts_received_twice": duplicates, "cases_opened": stats["cases"],
        "notices_to_cadres": notices_received,
        "quarantined_rows": stats["quarantined_rows"], "report": report,
        "seconds": round(time.monotonic() - t0, 1),
    }
    (out / "demo-summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    return summary
