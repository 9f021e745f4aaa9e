"""``sibifang stats`` counts the register as it stands: families taken off it (迁出, 去世, 注销)
are counted apart, not as registered or must-visit households."""

from __future__ import annotations

from datetime import date, datetime

from schemas.models import Area, Household
from sibifang.db import migrate, session_scope


def test_stats_count_the_register_as_of_now_and_removed_families_apart(database_url):
    from sibifang.stats import collect_stats

    migrate(database_url)
    with session_scope(database_url) as s:
        s.add(Area(id="V1", level="village", name="村"))
        s.add(Area(id="G1", level="grid", name="网格", parent_id="V1"))
        s.flush()
        for hid, cats, off in (("H1", ["hardship"], None), ("H2", [], None),
                               ("H3", ["empty_nest"], datetime(2026, 11, 20)),      # died
                               ("H4", ["hardship"], datetime(2026, 12, 4, 15)),     # moved away today
                               ("H5", ["dispute"], datetime(2026, 12, 10))):       # a replayed import's date
            s.add(Household(id=hid, head_name="户主", grid_id="G1", categories=cats, deregistered_at=off,
                            deregistered_reason="deceased" if off else None))
    got = collect_stats(database_url, as_of=date(2026, 12, 4))
    assert (got["households"], got["households_must_visit"], got["households_deregistered"]) == (3, 2, 2)
    later = collect_stats(database_url, as_of=date(2026, 12, 10))
    assert (later["households"], later["households_must_visit"], later["households_deregistered"]) == (2, 1, 3)
