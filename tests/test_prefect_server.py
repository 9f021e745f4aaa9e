"""The pinned Prefect server stack answers the requests its own runner and CLI send.

prefect 3.8.8 with fastapi >= 0.151 rejects explicit nulls in filter bodies (HTTP 422), which
silently stops `serve` from picking up scheduled runs; >= 0.155 fails to import. This test
keeps the pin honest."""


import pytest


@pytest.fixture
def server_app(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED", "false")
    from prefect.server.api.server import create_app

    return create_app(ephemeral=True)


def test_filter_endpoints_accept_explicit_nulls(server_app):
    from starlette.testclient import TestClient

    with TestClient(server_app) as client:
        for path, body in [("/api/flow_runs/filter", {"sort": None, "limit": 5, "offset": 0, "flows": None}),
                           ("/api/flows/filter", {"sort": None, "limit": None, "offset": 0, "flow_runs": None})]:
            r = client.post(path, json=body)
            assert r.status_code == 200, (path, r.text[:300])
