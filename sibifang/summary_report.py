"""Periodic summary report to the party committee and government (工作情况报告): aggregates only.

Pure functions: frames in, a dict of aggregates out, and the HTML rendered from
``templates/summary_report.html.j2``. No name, ID number, phone or address leaves this module:
the aggregates are validated by the ``report_aggregates`` suite before rendering, and counts
below ``SMALL_COUNT`` in a cross-tabulation by village are shown as "<3" so that no family can
be singled out.
"""

from __future__ import annotations

import html
from datetime import date
from pathlib import Path

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

import templates as _templates

SMALL_COUNT = 3
CATEGORY_LABELS = {"entrepreneur": "创业困难女性家庭", "hardship": "困难家庭", "empty_nest": "空巢老人家庭",
                   "left_behind": "留守妇女儿童家庭", "dispute": "婚姻家庭矛盾家庭"}
DEMAND_LABELS = {"democratic_participation": "民主参与", "marriage_family_rights": "婚姻家庭权益",
                 "employment_rights": "就业权益", "entrepreneurship": "创业信息和资金", "elderly_care": "空巢老人照料",
                 "domestic_services": "家政服务", "family_education": "家庭教育", "skills": "技能提升"}
FLAG_LABELS = {"inactivity": "长时间无用电活动", "sustained_drop": "用电持续下降",
               "missing_morning_routine": "早间用电缺失",
               "night_activity": "夜间异常用电", "high_use": "用电异常偏高", "meter_offline": "电表离线",
               "dispute": "婚姻家庭矛盾", "domestic_violence": "家庭暴力线索", "self_harm": "轻生线索",
               "gambling": "赌博线索", "unresolved_difficulty": "困难反复未解决", "overdue_visit": "逾期未访"}
LEVEL_COLORS = {"红": "#d7301f", "橙": "#fc8d59", "黄": "#fdcc8a", "绿": "#b3de69"}


def _env() -> Environment:
    return Environment(loader=FileSystemLoader(Path(_templates.__file__).parent),
                       autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)


def summarise(*, period_start: date, period_end: date, households: pd.DataFrame, plans: pd.DataFrame,
              visits: pd.DataFrame, flags: pd.DataFrame, alerts: pd.DataFrame, cases: pd.DataFrame,
              needs: pd.DataFrame, risk_map: pd.DataFrame, areas: pd.DataFrame) -> dict:
    """The report's numbers. Inputs carry ids and codes only; the output carries counts only."""
    in_period = lambda s: (pd.to_datetime(s) >= pd.Timestamp(period_start)) & (  # noqa: E731
        pd.to_datetime(s) < pd.Timestamp(period_end) + pd.Timedelta(days=1))
    cats = households.explode("categories")["categories"].dropna().value_counts()
    p = plans[in_period(plans.due_date)] if not plans.empty else plans
    v = visits[in_period(visits.visited_at)] if not visits.empty else visits
    f = flags[in_period(flags.detected_at)] if not flags.empty else flags
    a = alerts[in_period(alerts.created_at)] if not alerts.empty else alerts
    c_open = cases[in_period(cases.opened_at)] if not cases.empty else cases
    n = needs[in_period(needs.created_at)] if not needs.empty else needs
    done = p[p.status == "done"] if not p.empty else p
    acked = a[a.acked_at.notna()] if not a.empty else a
    ack_minutes = ((pd.to_datetime(acked.acked_at) - pd.to_datetime(acked.first_sent_at)).dt.total_seconds() / 60
                   ).dropna() if not acked.empty else pd.Series(dtype=float)
    demands = n.category.value_counts() if not n.empty else pd.Series(dtype=int)
    latest = risk_map[risk_map.as_of == risk_map.as_of.max()] if not risk_map.empty else risk_map
    by_village = []
    if not latest.empty:
        lv = latest.merge(areas[["grid_id", "village_name"]], on="grid_id", how="left")
        tab = lv.pivot_table(index="village_name", columns="level", values="households", aggfunc="sum", fill_value=0)
        for village, row in tab.iterrows():
            by_village.append({"village": village, **{lvl: _mask(int(row.get(lvl, 0))) for lvl in LEVEL_COLORS}})
    return {
        "period_start": period_start.isoformat(), "period_end": period_end.isoformat(),
        "households": int(len(households)),
        "must_visit_households": int(households.categories.map(lambda c: bool(c)).sum()),
        "by_category": [{"label": CATEGORY_LABELS.get(k, k), "count": int(cnt)} for k, cnt in cats.items()],
        "visits_planned": int(len(p)), "visits_done": int(len(done)),
        "visits_recorded": int(len(v)),
        "completion_rate": round(len(done) / len(p), 3) if len(p) else None,
        "flags": int(len(f)),
        "flags_by_kind": [{"label": FLAG_LABELS.get(k, k), "count": int(cnt)}
                          for k, cnt in (f.kind.value_counts().items() if not f.empty else [])],
        "alerts": int(len(a)), "alerts_sent": int((a.status == "sent").sum()) if not a.empty else 0,
        "alerts_dead": int((a.status == "dead").sum()) if not a.empty else 0,
        "alerts_acked": int(len(acked)),
        "median_minutes_to_ack": round(float(ack_minutes.median()), 1) if len(ack_minutes) else None,
        "cases_opened": int(len(c_open)),
        "cases_closed": int((cases.status == "closed").sum()) if not cases.empty else 0,
        "needs": int(len(n)), "needs_matched": int((n.status == "matched").sum()) if not n.empty else 0,
        "common_demands": [{"label": DEMAND_LABELS.get(k, k), "count": int(cnt)} for k, cnt in demands.head(5).items()],
        "risk_levels": {lvl: int(latest[latest.level == lvl].households.sum()) if not latest.empty else 0
                        for lvl in LEVEL_COLORS},
        "risk_by_village": by_village,
        "response_by_channel": response_metrics(a, "channel"),
        "response_by_village": response_metrics(a.merge(areas[["grid_id", "village_name"]], on="grid_id", how="left")
                                                if not a.empty and "grid_id" in a else a, "village_name"),
    }


def response_metrics(alerts: pd.DataFrame, by: str) -> list[dict]:
    """Time to acknowledge and time to outcome (预警响应时效), per channel or per village."""
    if alerts.empty or by not in alerts:
        return []
    a = alerts.copy()
    a["ack_min"] = (pd.to_datetime(a.acked_at) - pd.to_datetime(a.first_sent_at)).dt.total_seconds() / 60
    if "flag_closed_at" in a and "flag_detected_at" in a:
        a["outcome_h"] = (pd.to_datetime(a.flag_closed_at) - pd.to_datetime(a.flag_detected_at)
                          ).dt.total_seconds() / 3600
    else:
        a["outcome_h"] = float("nan")
    out = []
    for key, g in a.groupby(by):
        ack, outc = g.ack_min.dropna(), g.outcome_h.dropna()
        out.append({"unit": str(key), "alerts": int(len(g)), "acked": int(g.acked_at.notna().sum()),
                    "median_minutes_to_ack": round(float(ack.median()), 1) if len(ack) else None,
                    "median_hours_to_outcome": round(float(outc.median()), 1) if len(outc) else None})
    return out


def _mask(n: int) -> int | str:
    return f"<{SMALL_COUNT}" if 0 < n < SMALL_COUNT else n


def aggregates_frame(agg: dict) -> pd.DataFrame:
    """The scalar aggregates as a one-row frame, for the ``report_aggregates`` suite."""
    return pd.DataFrame([{k: v for k, v in agg.items() if not isinstance(v, (list, dict))}])


def risk_map_svg(risk_map: pd.DataFrame, areas: pd.DataFrame, *, cell: int = 22) -> str:
    """The dynamic risk map as a heat grid: one row per village, one cell per grid, coloured by
    the share of households at 红/橙 (red/orange) level; the title of each cell gives the counts."""
    latest = risk_map[risk_map.as_of == risk_map.as_of.max()] if not risk_map.empty else risk_map
    if latest.empty:
        return ('<svg xmlns="http://www.w3.org/2000/svg" width="200" height="30">'
                '<text x="5" y="20">暂无数据</text></svg>')
    t = latest.pivot_table(index="grid_id", columns="level", values="households", aggfunc="sum", fill_value=0)
    for lvl in LEVEL_COLORS:
        if lvl not in t:
            t[lvl] = 0
    t = t.reset_index().merge(areas[["grid_id", "village_name"]], on="grid_id", how="left")
    t["village_name"] = t["village_name"].fillna("?")
    villages = sorted(t.village_name.fillna("?").unique())
    width_cells = int(t.groupby("village_name").size().max())
    label_w = 110
    w, h = label_w + width_cells * cell + 10, 40 + len(villages) * cell + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-size="11" '
             f'font-family="sans-serif">',
             '<text x="5" y="16" font-size="13">家庭风险动态预警图（按网格，红橙户占比）</text>']
    for yi, village in enumerate(villages):
        y = 30 + yi * cell
        parts.append(f'<text x="5" y="{y + cell * 0.7:.0f}">{html.escape(str(village))}</text>')
        rows = t[t.village_name == village].sort_values("grid_id")
        for xi, r in enumerate(rows.itertuples(index=False)):
            total = sum(getattr(r, lvl) for lvl in LEVEL_COLORS) or 1
            hot = (getattr(r, "红") * 1.0 + getattr(r, "橙") * 0.5) / total
            color = _blend(hot)
            x = label_w + xi * cell
            # Grids are small: the tooltip masks counts below SMALL_COUNT like the tables do.
            tip = " ".join(f"{lvl}{_mask(int(getattr(r, lvl)))}" for lvl in LEVEL_COLORS)
            parts.append(f'<rect x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" fill="{color}">'
                         f'<title>{html.escape(str(r.grid_id))}: {html.escape(tip)}</title></rect>')
    parts.append("</svg>")
    return "\n".join(parts)


def _blend(x: float) -> str:
    x = max(0.0, min(1.0, x * 4))  # a quarter of a grid at red already reads as hot
    g = (int(0xb3 + (0xd7 - 0xb3) * x), int(0xde + (0x30 - 0xde) * x), int(0x69 + (0x1f - 0x69) * x))
    return "#%02x%02x%02x" % g


def render_report(agg: dict, *, risk_map_svg_text: str, title: str = "四必访工作情况报告") -> str:
    return _env().get_template("summary_report.html.j2").render(a=agg, svg=risk_map_svg_text, title=title,
                                                                level_colors=LEVEL_COLORS)
