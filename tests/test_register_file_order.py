"""A register file imported after a newer one does not put the register back.

What the importer knows of a file's age: when the same rows were first imported (under any file
name) and the import's own moment (``now``: a hand-over imported for an earlier day). A file
older than the latest news of a family's place on the register (在册 / 迁出 / 去世 / 注销) does
not change that place; the clerk's report names the families so kept, in Chinese. The same file
again changes nothing and reports nothing."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from tests.test_deregister import GOOD_ID, HEADER, OTHER_ID, _areas, _file, _state

STATUS = HEADER + ",状态,注销日期"


def _import(path: Path, url: str, out: Path, now: datetime) -> dict:
    from tasks.import_registry import import_file

    return import_file("households", path, database_url=url, out_dir=out, now=now)


def test_an_older_register_file_imported_again_does_not_undo_the_newer_status(database_url, tmp_path):
    _areas(database_url)
    oct_ = _file(tmp_path, "households_oct.csv", f"H1,甲,{GOOD_ID},13800000000,住址,G1,empty_nest,在册,",
                 f"H2,乙,{OTHER_ID},13800000001,住址,G1,hardship,迁出,2026-10-20",
                 "H3,丙,,,住址,G1,hardship,在册,", header=STATUS)
    nov = _file(tmp_path, "households_nov.csv", f"H1,甲,{GOOD_ID},13800000000,住址,G1,empty_nest,去世,2026-11-20",
                f"H2,乙,{OTHER_ID},13800000001,住址,G1,hardship,在册,", header=STATUS)
    t_oct, t_nov = datetime(2026, 11, 1, 9), datetime(2026, 11, 25, 9)
    first = _import(oct_, database_url, tmp_path, t_oct)
    assert first.get("status_kept", 0) == 0
    _import(nov, database_url, tmp_path, t_nov)
    newest = _state(database_url)
    assert newest["H1"][1:] == (datetime(2026, 11, 20), "deceased") and newest["H2"][1:] == (None, None)

    # The same file again: nothing changes, nothing to tell.
    again = _import(nov, database_url, tmp_path, t_nov + timedelta(days=1))
    assert _state(database_url) == newest and again.get("status_kept", 0) == 0

    # October's file again (a clerk re-sends it): H1 stays 去世, H2 stays 在册; H3 is unchanged anyway.
    old = _import(oct_, database_url, tmp_path, t_nov + timedelta(days=2))
    assert _state(database_url) == newest
    assert old["status_kept"] == 2
    report = Path(old["error_report"]).read_text(encoding="utf-8")
    assert "H1" in report and "H2" in report and "H3" not in report
    assert "较新" in report and "去世" in report and "在册" in report

    # The same rows under another name (saved again as a new file) are still October's.
    copy = tmp_path / "households_copy.csv"
    copy.write_text(oct_.read_text(encoding="utf-8"), encoding="utf-8")
    assert _import(copy, database_url, tmp_path, t_nov + timedelta(days=3))["status_kept"] == 2
    assert _state(database_url) == newest

    # A new file (December): it is news, H2 leaves again.
    dec = _file(tmp_path, "households_dec.csv", f"H2,乙,{OTHER_ID},13800000001,住址,G1,hardship,迁出,", header=STATUS)
    t_dec = datetime(2026, 12, 2, 9)
    assert _import(dec, database_url, tmp_path, t_dec).get("status_kept", 0) == 0
    assert _state(database_url)["H2"][1:] == (t_dec, "moved_away")


def test_a_file_imported_for_an_earlier_moment_does_not_undo_a_later_status(database_url, tmp_path):
    """A register imported for its own earlier day (the flow's ``now``) after a later one was
    imported: the later status stands."""
    _areas(database_url)
    later = _file(tmp_path, "later.csv", f"H1,甲,{GOOD_ID},13800000000,住址,G1,empty_nest,迁出,2026-11-20",
                  header=STATUS)
    _import(later, database_url, tmp_path, datetime(2026, 11, 25, 9))
    earlier = _file(tmp_path, "earlier.csv", f"H1,甲,{GOOD_ID},13800000000,住址,G1,empty_nest,在册,",
                    f"H2,乙,{OTHER_ID},13800000001,住址,G1,hardship,在册,", header=STATUS)
    out = _import(earlier, database_url, tmp_path, datetime(2026, 11, 10, 9))
    state = _state(database_url)
    assert state["H1"][1:] == (datetime(2026, 11, 20), "moved_away") and state["H2"][1:] == (None, None)
    assert out["status_kept"] == 1
