"""The evidence sentences of the meter risk detectors come from templates/flag_risks/evidence.toml."""

from __future__ import annotations

import re
import string
import tomllib

import numpy as np
import pandas as pd
import pytest

from sibifang.detectors import KINDS, DetectorConfig, detect, evidence
from sibifang.detectors.evidence import EVIDENCE_TEMPLATE

T0 = pd.Timestamp("2026-09-07")  # 9月7日0时


def _toml() -> dict:
    with EVIDENCE_TEMPLATE.open("rb") as f:
        return tomllib.load(f)


def _ep(kind, start, det, **kw):
    return dict(kind=kind, i=0, start=start, det=det, end=None, score=1.0, **kw)


# One episode per case of _rows: both inactivity variants, every other kind, and the recurrent
# suffix; the same-incident suffix comes from _merge_incidents (a drop raised inside the
# silence already alerted).
# Hours 0-23 of X are a constant load (frozen-on), 24-47 standby (lights off), 48-71 a low level.
CASES = {
    "inactivity_frozen": (_ep("inactivity", 2, 9), "high"),
    "inactivity": (_ep("inactivity", 26, 35), "critical"),
    "sustained_drop": (_ep("sustained_drop", 48, 59, obs=0.12, exp=0.4, ratio=0.3), "high"),
    "high_use": (_ep("high_use", 48, 53, obs=1.8, exp=0.4, ratio=4.5), "medium"),
    "missing_morning_routine": (_ep("missing_morning_routine", 26, 31), "high"),
    "night_activity": (_ep("night_activity", 48, 51), "low"),
    "meter_offline": (_ep("meter_offline", 60, 65), "medium"),
    "suffix_recurrent": (_ep("missing_morning_routine", 50, 55, recurrent=(3, 28)), "low"),
}


@pytest.fixture(scope="module")
def rendered():
    M, T, D = 1, 72, 3
    X = np.concatenate([np.full(24, 0.5), np.full(24, 0.05), np.full(24, 0.2)])[None, :]
    P = {"mean": np.full((M, T), 0.4), "standby": np.full((M, D), 0.05)}
    delta_md = np.full((M, D), 0.01)
    used = []
    real = evidence._evidence

    def spy(key, **fields):
        used.append(key)
        return real(key, **fields)

    eps = [dict(e) for e, _ in CASES.values()]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evidence, "_evidence", spy)
        rows = evidence._rows(eps, ["m1"], X, np.zeros_like(X, bool), P, T0, T, delta_md)
        out = dict(zip(CASES, rows))
        silence, drop = (dict(r) for r in evidence._rows([_ep("inactivity", 26, 35), _ep(
            "sustained_drop", 30, 47, obs=0.05, exp=0.4, ratio=0.12)], ["m1"], X, np.zeros_like(X, bool), P, T0, T,
            delta_md))
        out["suffix_same_incident"] = evidence._merge_incidents([silence, drop], DetectorConfig())[1]
    return out, used


def test_every_template_key_is_used_and_every_used_key_exists(rendered):
    _, used = rendered
    keys = set(_toml())
    assert set(used) == keys
    assert {k for k in keys if not k.startswith("suffix_")} == set(KINDS) | {"inactivity_frozen"}


def test_every_template_is_a_format_string_with_known_fields():
    known = {"since", "detected", "hours", "obs", "exp", "ratio_pct", "ratio", "first", "n_prev", "n_days"}
    for key, text in _toml().items():
        assert isinstance(text, str) and text, key
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        assert fields and fields <= known, (key, fields)


def test_every_case_renders_without_leftover_braces_and_keeps_its_severity(rendered):
    rows, _ = rendered
    for key, row in rows.items():
        assert "{" not in row["evidence"] and "}" not in row["evidence"], key
        assert row["severity"] == (CASES[key][1] if key in CASES else "low"), key
    assert rows["suffix_same_incident"]["evidence"].endswith(
        "（与9月8日12时已发出的预警属同一事件，记录备查，不重复派人）")
    assert rows["suffix_recurrent"]["evidence"].endswith(
        "（该户近28天内已有3次类似情况，属其常态，记录备查，暂不派人）")
    assert rows["suffix_recurrent"]["evidence"].startswith("今天早上到9月9日8时还没有起床用电")


def test_exact_sentences(rendered):
    rows, _ = rendered
    assert rows["inactivity"]["evidence"] == (
        "从9月8日2时起用电接近停止（已10小时），平时此时段约0.40千瓦时/小时，"
        "现约0.05；按该户作息这样长的安静很少见，请尽快上门查看")
    assert rows["inactivity_frozen"]["evidence"] == (
        "从9月7日2时起用电一直平稳在约0.50千瓦时/小时、没有起伏（已8小时），"
        "像是电器开着而无人活动；平时此时段约0.40千瓦时/小时且有起伏，请尽快上门查看")
    assert rows["sustained_drop"]["evidence"] == (
        "近12小时用电明显减少：平时约0.40千瓦时/小时，现约0.12，"
        "只有平时的30%，可能是电器坏了（如空调）或老人身体、生活有变化，请上门了解原因")
    assert rows["high_use"]["evidence"] == (
        "近6小时用电持续偏高：平时约0.40千瓦时/小时，现约1.80，是平时的4.5倍，可能有电器异常或家中情况变化")
    assert rows["meter_offline"]["evidence"] == (
        "电表从9月9日12时起没有传回数据（已6小时以上），这不等于家中无人用电，"
        "请先联系供电所或检查电表通信，必要时电话确认老人情况")


def test_templates_are_loaded_once():
    assert evidence._evidence_templates() is evidence._evidence_templates()


def test_detect_evidence_on_a_lights_off_household():
    # a regular routine for four weeks, then the lights stay off for two days
    rng = np.random.default_rng(0)
    n = 30 * 48
    ts = T0 + pd.to_timedelta((np.arange(n) + 1) * 30, unit="min")
    hour = (np.arange(n) // 2) % 24
    p_act = np.where((hour >= 7) & (hour < 22), 0.8, 0.02)
    kwh = (0.05 + np.where(rng.random(n) < p_act, rng.uniform(0.2, 1.0, n), 0.0)) / 2
    off = ts > T0 + pd.Timedelta(days=28)
    kwh[off] = 0.05 / 2
    out = detect(pd.DataFrame({"meter_id": "m1", "ts": ts, "kwh": kwh}))
    inact = out[out["kind"] == "inactivity"]
    assert len(inact) >= 1
    ev = inact["evidence"].iloc[0]
    assert re.fullmatch(r"从10月[45]日\d{1,2}时起用电接近停止（已\d+小时），平时此时段约\d+\.\d\d千瓦时/小时，"
                        r"现约0\.05；按该户作息这样长的安静很少见，请尽快上门查看", ev), ev
    assert not out["evidence"].str.contains(r"[{}]").any()
