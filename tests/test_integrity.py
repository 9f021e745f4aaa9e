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


def test_io_tasks_retry_but_not_on_bad_data():
    from tasks.ingest_readings import ingest_file_task, pull_api_task

    for t in (ingest_file_task, pull_api_task):
        assert t.retries >= 2
        assert t.retry_condition_fn is not None


def test_served_deployments_match_prefect_yaml():
    from sibifang.deployments import SCHEDULES

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    yaml_names = {d["name"] for d in spec["deployments"]}
    assert set(SCHEDULES) == yaml_names
    for d in spec["deployments"]:
        crons = sorted(s["cron"] for s in d.get("schedules", []) if "cron" in s)
        assert crons == sorted(s["cron"] for s in SCHEDULES[d["name"]] if "cron" in s), d["name"]
