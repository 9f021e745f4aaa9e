"""Daily digests, overdue reminders and supervisors' overdue lists (pure)."""

from datetime import date

import pandas as pd

from sibifang.notify_cadres import build_notices

DAY = date(2026, 11, 20)


def _frames():
    plans = pd.DataFrame({
        "visit_id": ["V1", "V2", "V3", "V4", "V5"], "household_id": ["H1", "H2", "H3", "H4", "H5"],
        "cadre_id": ["C1", "C1", "C2", "C2", "C1"], "grid_id": ["G1", "G1", "G2", "G2", "G1"],
        "due_date": pd.to_datetime(["2026-11-20", "2026-11-20", "2026-11-18", "2026-11-10", "2026-11-20"]),
        "window_end": pd.to_datetime(["2026-11-22", "2026-11-22", "2026-11-19", "2026-11-12", None]),
        "reason": ["hardship", "urgent", "empty_nest", "dispute", "follow_up_mediation_7d"],
        "urgent": [False, True, False, False, False], "status": ["planned"] * 4 + ["done"]})
    cadres = pd.DataFrame({"cadre_id": ["C1", "C2", "S1"], "name": ["陈丽", "周敏", "徐红"],
                           "role": ["cadre", "cadre", "supervisor"], "grid_ids": [["G1"], ["G2"], ["G1", "G2"]]})
    hh = pd.DataFrame({"household_id": ["H1", "H2", "H3", "H4", "H5"],
                       "head_name": ["李桂英", "王秀兰", "张梅", "刘芳", "赵敏"]})
    grids = pd.DataFrame({"grid_id": ["G1", "G2"], "grid_name": ["万堤村第1网格", "万堤村第2网格"],
                          "village_id": ["V1", "V1"], "village_name": ["万堤村", "万堤村"]})
    return plans, cadres, hh, grids


def test_each_kind_goes_to_the_right_person_once():
    plans, cadres, hh, grids = _frames()
    n = build_notices(DAY, plans=plans, cadres=cadres, households=hh, grids=grids)
    kinds = {(r.recipient_id, r.kind) for r in n.itertuples()}
    assert kinds == {("C1", "daily_digest"), ("C2", "overdue_reminder"), ("S1", "supervisor_overdue")}
    again = build_notices(DAY, plans=plans, cadres=cadres, households=hh, grids=grids)
    assert list(again.notice_id) == list(n.notice_id)  # same day, same ids: sent once


def test_digest_lists_her_families_urgent_first_without_personal_numbers():
    plans, cadres, hh, grids = _frames()
    body = build_notices(DAY, plans=plans, cadres=cadres, households=hh, grids=grids).set_index("kind").loc[
        "daily_digest", "body"]
    assert body.index("王家") < body.index("李家")  # the urgent one first
    assert "紧急" in body and "陈丽" in body
    assert "赵家" not in body  # done plans are not announced
    assert "王秀兰" not in body  # surname only


def test_supervisor_sees_counts_per_village_only():
    plans, cadres, hh, grids = _frames()
    body = build_notices(DAY, plans=plans, cadres=cadres, households=hh, grids=grids).set_index("kind").loc[
        "supervisor_overdue", "body"]
    assert "万堤村：1次" in body  # only V4 is past its window plus the 3-day grace
    assert "刘" not in body and "H4" not in body


def test_a_moved_visit_is_announced_to_both_cadres():
    from sibifang.notify_cadres import build_move_notices

    plans, cadres, hh, grids = _frames()
    moved = pd.DataFrame({"visit_id": ["V1"], "household_id": ["H1"], "from_cadre_id": ["C2"],
                          "to_cadre_id": ["C1"], "due_date": pd.to_datetime(["2026-11-20"])})
    n = build_move_notices(DAY, moved=moved, cadres=cadres, households=hh)
    assert set(zip(n.recipient_id, n.kind)) == {("C2", "visit_moved_out"), ("C1", "visit_moved_in")}
    assert "陈丽" in n.set_index("kind").loc["visit_moved_out", "body"]  # who takes it over
    digest = build_notices(DAY, plans=plans, cadres=cadres, households=hh, grids=grids, moved=moved)
    assert "另有1户为代同事走访" in digest.set_index("kind").loc["daily_digest", "body"]


def test_supervisor_lines_add_up_to_the_total_when_a_grid_has_no_village():
    """A plan in a grid with no village (G3: its parent is not a village on file) and one in a grid
    not on file at all (G9) were counted in "共有N次" but left out of every line: the lines did not
    add up to the total. They get a line of their own."""
    import re

    plans, cadres, hh, grids = _frames()
    extra = pd.DataFrame({
        "visit_id": ["V6", "V7"], "household_id": ["H6", "H7"], "cadre_id": ["C3", "C3"], "grid_id": ["G3", "G9"],
        "due_date": pd.to_datetime(["2026-11-01", "2026-11-02"]), "window_end": pd.to_datetime([None, None]),
        "reason": ["hardship", "hardship"], "urgent": [False, False], "status": ["planned", "planned"]})
    plans = pd.concat([plans, extra], ignore_index=True)
    grids = pd.concat([grids, pd.DataFrame({"grid_id": ["G3"], "grid_name": ["第3网格"], "village_id": [None],
                                            "village_name": [None]})], ignore_index=True)
    cadres.at[2, "grid_ids"] = ["G1", "G2", "G3", "G9"]
    n = build_notices(DAY, plans=plans, cadres=cadres, households=hh, grids=grids).set_index("kind")
    body = n.loc["supervisor_overdue", "body"]
    total = int(re.search(r"有(\d+)次走访逾期", body).group(1))
    lines = [int(x) for x in re.findall(r"：(\d+)次", body)]
    assert total == 3 and sum(lines) == total, body
    assert "未归属村（社区）的网格：2次（涉及干部1人）" in body
    assert "逾期未访情况（3次）" == n.loc["supervisor_overdue", "title"]


def test_a_family_number_that_is_an_id_or_phone_number_is_not_sent():
    # Some villages number a family by the head's ID card (身份证号) or phone: the digest, the
    # reminder and the move notices show its last four characters only.
    from sibifang.notify_cadres import build_move_notices

    plans, cadres, hh, grids = _frames()
    ids = {"H1": "33028219650312002X", "H2": "13912345678", "H3": "330282650312002"}
    plans["household_id"] = plans.household_id.replace(ids)
    hh["household_id"] = hh.household_id.replace(ids)
    n = build_notices(DAY, plans=plans, cadres=cadres, households=hh, grids=grids)
    moved = pd.DataFrame({"visit_id": ["V1"], "household_id": [ids["H1"]], "from_cadre_id": ["C2"],
                          "to_cadre_id": ["C1"], "due_date": [pd.Timestamp(DAY)]})
    bodies = "\n".join(n.body) + "\n".join(build_move_notices(DAY, moved=moved, cadres=cadres, households=hh).body)
    for number in ids.values():
        assert number not in bodies
    assert "李家（编号尾号002X）" in bodies and "王家（编号尾号5678）" in bodies and "张家（编号尾号2002）" in bodies
    assert "刘家（H4）" in bodies  # an ordinary family number is shown as it is
