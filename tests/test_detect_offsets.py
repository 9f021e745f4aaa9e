"""``detect`` on timestamps that carry an offset (issue #3, part 5: "an offset such as +08:00 or Z is
converted"): they are the same instants as local Asia/Shanghai times, whatever offset they are
written with, and an as-of time with an offset is that instant too."""

from __future__ import annotations

import pandas as pd

from sibifang.detectors import detect
from tests.test_detect_causality import START, area_readings


def test_utc_and_shanghai_offsets_are_the_same_local_hours():
    local = area_readings(7, meters=3, days=21)
    expected = detect(local)
    assert len(expected)
    aware = local.ts.dt.tz_localize("Asia/Shanghai")
    for ts in (aware, aware.dt.tz_convert("UTC"),
               aware.dt.tz_convert("UTC").dt.strftime("%Y-%m-%dT%H:%M:%SZ")):
        pd.testing.assert_frame_equal(detect(local.assign(ts=ts)), expected)


def test_an_as_of_with_an_offset_is_that_instant():
    local = area_readings(7, meters=3, days=21)
    as_of = pd.Timestamp(START) + pd.Timedelta(days=15, hours=9)
    expected = detect(local, as_of=as_of)
    utc = as_of.tz_localize("Asia/Shanghai").tz_convert("UTC")
    pd.testing.assert_frame_equal(detect(local, as_of=utc), expected)
    pd.testing.assert_frame_equal(detect(local.assign(ts=local.ts.dt.tz_localize("Asia/Shanghai")), as_of=utc),
                                  expected)


def test_one_column_mixing_offsets_and_local_times_reads_as_ingestion_reads_it():
    # A merged export: one system wrote "+08:00", another "Z", a third local times with a space.
    local = area_readings(7, meters=3, days=21)
    expected = detect(local)
    aware = local.ts.dt.tz_localize("Asia/Shanghai")
    texts = [aware.dt.strftime("%Y-%m-%dT%H:%M:%S+08:00"),
             aware.dt.tz_convert("UTC").dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
             local.ts.dt.strftime("%Y-%m-%d %H:%M:%S")]
    mixed = pd.Series([texts[i % 3].iat[i] for i in range(len(local))], index=local.index)
    pd.testing.assert_frame_equal(detect(local.assign(ts=mixed)), expected)
