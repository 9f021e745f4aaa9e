"""Registry files imported over what is already on record, on both engines: a file updates what
it carries and nothing else; a row the database cannot hold is quarantined, not the whole file."""

from __future__ import annotations

from pathlib import Path

from schemas.models import Cadre, Household
from sibifang.db import session_scope
from tests.test_inbox_rejects import seed

HOUSEHOLDS = "household_id,head_name,id_number,phone,address,grid_id,categories"
CADRES = "cadre_id,name,phone,role,grid_ids"


def _import(kind: str, path: Path, url: str, text: str) -> dict:
    from tasks.import_registry import import_file

    path.write_text(text, encoding="utf-8")
    return import_file(kind, path, database_url=url, out_dir=path.parent / "out")


def test_a_file_without_some_columns_leaves_those_fields_as_they_are(database_url, app_env):
    seed(database_url)
    _import("households", app_env / "households.csv", database_url,
            f"{HOUSEHOLDS},elderly_living_alone,away_from,away_reason\n"
            "H1,李桂英,330203195603120028,13805740001,万堤村1号,G001,empty_nest,1,2026-11-18,住院\n")
    _import("cadres", app_env / "cadres.csv", database_url,
            f"{CADRES},alert_channel,alert_address,on_leave_from,on_leave_until\n"
            "K1,陈丽,13805740011,网格员,G001,sms,13805740011,2026-11-20,2026-11-30\n")
    # a later sheet with the template's required columns only: new phone numbers
    _import("households", app_env / "households_phones.csv", database_url,
            f"{HOUSEHOLDS}\nH1,李桂英,330203195603120028,13805740002,万堤村1号,G001,empty_nest\n")
    _import("cadres", app_env / "cadres_phones.csv", database_url,
            f"{CADRES}\nK1,陈丽,13805740012,网格员,G001\n")
    with session_scope(database_url) as s:
        h, k = s.get(Household, "H1"), s.get(Cadre, "K1")
        assert h.phone == "13805740002" and k.phone == "13805740012"
        # still in hospital, still living alone; her grid worker still gets alerts, still on leave
        assert (h.elderly_living_alone, str(h.away_from), h.away_reason) == (True, "2026-11-18", "住院")
        assert (k.alert_channel, k.alert_address, str(k.on_leave_until)) == ("sms", "13805740011", "2026-11-30")
    # a column the file carries, left blank, still clears the field: she is back home
    _import("households", app_env / "households_back.csv", database_url,
            f"{HOUSEHOLDS},away_from,away_reason\n"
            "H1,李桂英,330203195603120028,13805740002,万堤村1号,G001,empty_nest,,\n")
    with session_scope(database_url) as s:
        h = s.get(Household, "H1")
        assert (h.away_from, h.away_reason, h.elderly_living_alone) == (None, None, True)


def test_a_value_longer_than_its_column_is_quarantined_and_the_other_rows_imported(database_url, app_env):
    from schemas.models import QuarantinedRow
    from sqlalchemy import select

    seed(database_url)
    result = _import("households", app_env / "households.csv", database_url,
                     f"{HOUSEHOLDS},away_from,away_reason\n"
                     "H1,李桂英,330203195603120028,13805740001,万堤村1号,G001,empty_nest,2026-11-18,"
                     + "因脑梗住院治疗" * 10 + "\n"
                     "H2,张兰,330203194807050047,13805740003,万堤村2号,G001,empty_nest,,\n")
    assert (result["read"], result["accepted"], result["quarantined"]) == (2, 1, 1)
    with session_scope(database_url) as s:
        assert s.get(Household, "H2").phone == "13805740003"
        [q] = s.scalars(select(QuarantinedRow).where(QuarantinedRow.kind == "import_households"))
        assert (q.line, q.field, q.code) == (2, "away_reason", "too_long") and "64" in q.reason
