"""One parametrised check over every pipeline: imports, descriptions, parameters, deployments."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from flows import STAGES, get_flow

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", STAGES)
def test_flow_imports_is_named_and_described(name):
    f = get_flow(name)
    assert f.name == name
    assert f.description and len(f.description) > 20


@pytest.mark.parametrize("name", [s for s in STAGES if s != "import_registry"])
def test_every_stage_flow_replays_a_day(name):
    params = inspect.signature(get_flow(name).fn).parameters
    assert "as_of" in params or "now" in params, "every flow takes the date or time it acts for"


@pytest.mark.parametrize("name", STAGES)
def test_stage_files_share_the_stage_name(name):
    assert (ROOT / "flows" / f"{name}.py").exists()
    if name != "closed_loop":
        assert (ROOT / "tasks" / f"{name}.py").exists()


def test_prefect_yaml_entrypoints_resolve():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    names = set()
    for d in spec["deployments"]:
        path, func = d["entrypoint"].split(":")
        assert (ROOT / path).exists(), path
        assert get_flow(func).name == d["name"]
        names.add(d["name"])
    assert names == set(STAGES) - {"record_visits"} | {"record_visits"}


def _run_in_flow(t, *args):
    """Run task ``t`` (retry delays set to 0) once inside a real Prefect flow; return its final state."""
    from prefect import flow

    fast = t.with_options(retry_delay_seconds=0)

    states = []

    @flow(name="retry-probe")
    def probe():
        states.append(fast(*args, return_state=True))

    probe()
    return states[0]


def _ingest_file_failure(failure):
    from schemas.validation import DataContractError

    return {"bad_data": DataContractError("readings.csv", ["meter_id: column missing"]),
            "io_error": OSError("disk not ready")}[failure]


@pytest.mark.parametrize("failure, retried", [("bad_data", False), ("io_error", True)])
def test_ingest_file_task_retries_io_errors_but_not_bad_data(failure, retried, prefect_harness, app_env,
                                                             monkeypatch, tmp_path):
    import sibifang.readings_files as readings_files
    from tasks.ingest_readings import ingest_file_task

    assert ingest_file_task.retries >= 2
    calls = []

    def failing_read(path):
        calls.append(path)
        raise _ingest_file_failure(failure)

    monkeypatch.setattr(readings_files, "read_readings_file", failing_read)
    state = _run_in_flow(ingest_file_task, str(tmp_path / "readings.csv"), "file-x")
    assert state.is_failed()
    assert len(calls) == (1 + ingest_file_task.retries if retried else 1), calls


def test_ingest_file_task_does_not_retry_a_file_with_missing_columns(prefect_harness, app_env, monkeypatch, tmp_path):
    import sibifang.readings_files as readings_files
    from tasks.ingest_readings import ingest_file_task

    bad = tmp_path / "readings.csv"
    bad.write_text("meter,when,value\nM001,2026-01-01 00:00,1.5\n", encoding="utf-8")
    calls = []
    real_read = readings_files.read_readings_file

    def counting_read(path):
        calls.append(path)
        return real_read(path)

    monkeypatch.setattr(readings_files, "read_readings_file", counting_read)
    assert _run_in_flow(ingest_file_task, str(bad), "file-bad").is_failed()
    assert len(calls) == 1, f"bad data read {len(calls)} times"


@pytest.mark.parametrize("answer, retried", [
    ((400, {"error": "bad since"}), False),   # HTTP 4xx: the same request fails the same way
    ((404, {"error": "no such path"}), False),
    ((503, {"error": "maintenance"}), True),  # HTTP 5xx: worth another try
    ((500, {"error": "boom"}), True),
    ((200, "not json"), False),               # a malformed answer is not fixed by retrying
])
def test_pull_api_task_retries_5xx_but_not_4xx_or_malformed_answers(answer, retried, prefect_harness, app_env,
                                                                    monkeypatch):
    import functools

    import sibifang.meter_api as meter_api
    from sibifang.settings import reset_settings
    from tasks.ingest_readings import pull_api_task
    from tests.http_receiver import HttpReceiver

    assert pull_api_task.retries >= 2
    # One HTTP attempt per task run (no in-client retries or sleeps): only Prefect retries remain.
    monkeypatch.setattr(meter_api, "fetch_readings",
                        functools.partial(meter_api.fetch_readings, max_attempts=1, sleep=lambda s: None))
    with HttpReceiver(fixed_response=answer) as api:
        monkeypatch.setenv("SIBIFANG_METER_API_URL", api.url)
        reset_settings()
        state = _run_in_flow(pull_api_task)
    assert state.is_failed()
    assert all(r.path == "/readings" for r in api.requests)
    assert len(api.requests) == (1 + pull_api_task.retries if retried else 1), [r.answered_status for r in api.requests]


def test_pull_api_task_does_not_retry_bad_data(prefect_harness, app_env, monkeypatch):
    import sibifang.meter_api as meter_api
    from schemas.validation import DataContractError
    from sibifang.settings import reset_settings
    from tasks.ingest_readings import pull_api_task

    calls = []

    def bad_data(*args, **kwargs):
        calls.append(1)
        raise DataContractError("meter-api", ["ts: not a timestamp"])

    monkeypatch.setattr(meter_api, "fetch_readings", bad_data)
    monkeypatch.setenv("SIBIFANG_METER_API_URL", "http://127.0.0.1:9")
    reset_settings()
    assert _run_in_flow(pull_api_task).is_failed()
    assert len(calls) == 1


def test_served_deployments_match_prefect_yaml():
    from sibifang.deployments import SCHEDULES, concurrency_limit

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    yaml_names = {d["name"] for d in spec["deployments"]}
    assert set(SCHEDULES) == yaml_names
    for d in spec["deployments"]:
        crons = sorted(s["cron"] for s in d.get("schedules", []) if "cron" in s)
        assert crons == sorted(s["cron"] for s in SCHEDULES[d["name"]] if "cron" in s), d["name"]
        served = concurrency_limit(d["name"])
        assert d["concurrency_limit"] == {"limit": served.limit,
                                          "collision_strategy": served.collision_strategy.value}, d["name"]


def test_the_server_keeps_one_run_of_each_deployment_at_a_time(prefect_harness):
    from prefect.client.orchestration import get_client

    from sibifang.deployments import build_deployments

    deployments = {d.name: d for d in build_deployments()}
    with get_client(sync_client=True) as client:
        for name, strategy in (("dispatch_alerts", "CANCEL_NEW"), ("schedule_visits", "ENQUEUE")):
            stored = client.read_deployment(deployments[name].apply())
            assert stored.global_concurrency_limit.limit == 1, name
            assert stored.concurrency_options.collision_strategy.value == strategy, name
