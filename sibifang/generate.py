"""Synthetic area generator (合成辖区数据): the files a federation would hand over.

``generate_area`` writes, for a fictional city / county / village, every file of the import
contract in ``docs/file-formats.md`` plus the ground truth of the meter anomalies it
injected, so that the whole loop (import → schedule → detect → alert → escalate → report)
can be run and checked end to end without personal data.

Everything is drawn from numpy generators seeded from ``seed`` through independent
streams, so the same seed gives byte-identical CSV files and identical Parquet contents,
and changing one part of the generator does not reshuffle the others.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sibifang import synthetic_names as W

GENERATOR_VERSION = 1

# Column orders of the import contract (docs/file-formats.md); the tests compare against
# the document itself, these constants are what the writer uses.
AREA_COLUMNS = ["grid_id", "grid_name", "village_id", "village_name", "village_kind",
                "township_id", "township_name", "district_id", "district_name", "city_id",
                "city_name"]
HOUSEHOLD_COLUMNS = ["household_id", "head_name", "id_number", "phone", "address", "grid_id",
                     "categories", "members", "elderly_living_alone", "consent",
                     "basic_situation", "difficulties", "measures", "away_from", "away_until",
                     "away_reason"]
CADRE_COLUMNS = ["cadre_id", "name", "phone", "role", "grid_ids", "capacity", "alert_channel",
                 "alert_address", "four_plus_one", "grassroots_weekday", "on_leave_from",
                 "on_leave_until"]
METER_COLUMNS = ["meter_id", "household_id", "interval_minutes", "installed_at"]
READING_COLUMNS = ["meter_id", "ts", "kwh"]
VISIT_COLUMNS = ["visit_id", "plan_id", "household_id", "cadre_id", "visited_at", "mode",
                 "steps", "family_situation", "business_situation", "women_situation",
                 "difficulties", "measures", "demand_category", "follow_up_needed", "notes"]
RESOURCE_COLUMNS = ["resource_id", "name", "provider_type", "offers", "village_id",
                    "contact_name", "phone"]
ROOM_COLUMNS = ["room_id", "name", "township_id", "mediator_ids"]
ANOMALY_COLUMNS = ["meter_id", "kind", "start", "end"]

CATEGORIES = ("empty_nest", "left_behind", "hardship", "dispute", "entrepreneur")
# Primary category of a must-visit family (not counting the metered elderly, who are all
# empty_nest): empty-nest and left-behind most common, hardship next, disputes ~6%,
# entrepreneurs a few per cent.
CATEGORY_P = np.array([0.33, 0.33, 0.24, 0.06, 0.04])
ANOMALY_KINDS = ("inactivity", "sustained_drop", "night_activity", "high_use", "meter_offline")
VISITING_ROLES = ("cadre", "executive_member", "vice_chair", "village_chair")
SLOTS_PER_DAY = 96  # 15-minute intervals
# Readings are simulated for a chunk of meters at a time, about this many readings per
# chunk: it bounds memory, and depends only on (scale, days) so output stays deterministic.
CHUNK_READINGS = 1_500_000
HISTORY_DAYS = 60   # past visit records cover the 60 days before ``start``

# Random streams: one per part, so that the parts are independent of each other.
_AREAS, _HOUSEHOLDS, _CADRES, _METERS, _ANOMALIES, _VISITS, _RESOURCES, _BROKEN = range(8)
_READINGS = 100  # + chunk index


@dataclass(frozen=True)
class ScaleSpec:
    """Size of a synthetic area. Households are archive families (家庭档案)."""

    households: int
    cadres: int
    metered_elderly: int
    districts: int
    townships: int
    villages: int
    default_days: int
    households_per_grid: int = 115


SCALES: dict[str, ScaleSpec] = {
    # One village like Wandi (万堤村): one district, one township, three grids.
    "village": ScaleSpec(households=300, cadres=30, metered_elderly=40, districts=1,
                         townships=1, villages=1, default_days=60, households_per_grid=100),
    "county": ScaleSpec(households=20_000, cadres=2_000, metered_elderly=3_000, districts=1,
                        townships=12, villages=60, default_days=42),
    # Ningbo-sized: 26,000 cadres and executive members (DOMAIN.md), ten districts/counties.
    "city": ScaleSpec(households=260_000, cadres=26_000, metered_elderly=50_000, districts=10,
                      townships=150, villages=800, default_days=7),
}


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream]))


def _split(total: int, parts: int, rng: np.random.Generator, spread: float = 0.3) -> np.ndarray:
    """Split ``total`` items into ``parts`` groups of at least one, sizes varying by ``spread``."""
    w = rng.uniform(1 - spread, 1 + spread, parts)
    extra = total - parts
    sizes = np.floor(w / w.sum() * extra).astype(np.int64)
    short = extra - sizes.sum()
    sizes[np.argsort(-(w / w.sum() * extra - sizes), kind="stable")[:short]] += 1
    return sizes + 1


def _unique_names(rng: np.random.Generator, n: int, first: tuple[str, ...],
                  second: tuple[str, ...], reserved: set[str] = frozenset()) -> list[str]:
    combos = [a + b for a in first for b in second if a != b and a + b not in reserved]
    if n > len(combos):
        raise ValueError(f"name pool too small for {n} names")
    return [combos[i] for i in rng.permutation(len(combos))[:n]]


def _person_names(rng: np.random.Generator, n: int, female: float | np.ndarray,
                  elderly: np.ndarray | None = None) -> np.ndarray:
    """Surname + one or two given-name characters; ``female`` is a share or a mask."""
    sur = np.array(W.SURNAMES)[rng.choice(len(W.SURNAMES), n, p=W.zipf_weights(len(W.SURNAMES)))]
    if np.ndim(female) == 0:
        female = rng.random(n) < female
    pool_f, pool_m, pool_e = (np.array(p) for p in (W.GIVEN_FEMALE, W.GIVEN_MALE, W.GIVEN_ELDERLY))
    g1 = np.where(female, pool_f[rng.integers(0, len(pool_f), n)],
                  pool_m[rng.integers(0, len(pool_m), n)])
    g2 = np.where(female, pool_f[rng.integers(0, len(pool_f), n)],
                  pool_m[rng.integers(0, len(pool_m), n)])
    if elderly is not None:
        g1 = np.where(elderly, pool_e[rng.integers(0, len(pool_e), n)], g1)
    two_chars = rng.random(n) < 0.7
    return np.array([s + a + (b if t else "") for s, a, b, t in zip(sur, g1, g2, two_chars)],
                    dtype=object)


def _mobiles(rng: np.random.Generator, n: int) -> np.ndarray:
    prefix = np.array(W.MOBILE_PREFIXES)[rng.integers(0, len(W.MOBILE_PREFIXES), n)]
    rest = rng.integers(0, 100_000_000, n)
    return np.array([f"{p}{r:08d}" for p, r in zip(prefix, rest)], dtype=object)


GB11643_WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2])
GB11643_CHECK = "10X98765432"


def id_check_digit(first17: str) -> str:
    """GB 11643 check character (校验码) of the first 17 digits of a resident ID."""
    s = sum(int(c) * w for c, w in zip(first17, GB11643_WEIGHTS))
    return GB11643_CHECK[s % 11]


def _id_numbers(rng: np.random.Generator, area_codes: np.ndarray, births: np.ndarray,
                female: np.ndarray) -> np.ndarray:
    """Unique 18-character resident IDs: area code, birth date, sequence (odd = male), check."""
    n = len(births)
    ymd = pd.DatetimeIndex(births).strftime("%Y%m%d").to_numpy()
    seq = rng.integers(0, 500, n) * 2 + np.where(female, 0, 1)
    first = np.array([f"{a}{b}{s:03d}" for a, b, s in zip(area_codes, ymd, seq)], dtype=object)
    # Collisions are rare but must not happen: bump the sequence of duplicates.
    while True:
        dup = pd.Series(first).duplicated().to_numpy()
        if not dup.any():
            break
        for i in np.flatnonzero(dup):
            s = (int(first[i][14:17]) + 2) % 1000
            first[i] = first[i][:14] + f"{s:03d}"
    digits = (np.array(first.tolist(), dtype="S17").view(np.uint8).reshape(n, 17)
              .astype(np.int64) - ord("0"))
    check = np.array(list(GB11643_CHECK))[(digits @ GB11643_WEIGHTS) % 11]
    return np.array([f + c for f, c in zip(first, check)], dtype=object)


def _random_dates(rng: np.random.Generator, n: int, lo: date, hi: date) -> np.ndarray:
    span = (hi - lo).days
    return np.datetime64(lo, "D") + rng.integers(0, span + 1, n).astype("timedelta64[D]")


def _fmt_dates(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.full(len(values), "", dtype=object)
    if mask.any():
        out[mask] = pd.DatetimeIndex(values[mask]).strftime("%Y-%m-%d").to_numpy()
    return out


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    # UTF-8 with BOM so that Excel on a federation PC opens the Chinese text correctly;
    # "\n" line ends and no index so that the bytes depend only on the data.
    df.to_csv(path, index=False, encoding="utf-8-sig", lineterminator="\n")


_FIXED_ZIP_TIME = (2026, 1, 1, 0, 0, 0)
_NS_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_NS_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_NS_PKG = "http://schemas.openxmlformats.org/package/2006/relationships"
_CT = "application/vnd.openxmlformats-officedocument.spreadsheetml"
_XML_DECL = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
_XF = 'numFmtId="0" fontId="0" fillId="0" borderId="0"'
_XLSX_PARTS = {
    "[Content_Types].xml":
        _XML_DECL +
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" '
        'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        f'<Override PartName="/xl/workbook.xml" ContentType="{_CT}.sheet.main+xml"/>'
        f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{_CT}.worksheet+xml"/>'
        f'<Override PartName="/xl/styles.xml" ContentType="{_CT}.styles+xml"/></Types>',
    "_rels/.rels":
        _XML_DECL + f'<Relationships xmlns="{_NS_PKG}">'
        f'<Relationship Id="rId1" Type="{_NS_REL}/officeDocument" Target="xl/workbook.xml"/>'
        '</Relationships>',
    "xl/_rels/workbook.xml.rels":
        _XML_DECL + f'<Relationships xmlns="{_NS_PKG}">'
        f'<Relationship Id="rId1" Type="{_NS_REL}/worksheet" Target="worksheets/sheet1.xml"/>'
        f'<Relationship Id="rId2" Type="{_NS_REL}/styles" Target="styles.xml"/></Relationships>',
    "xl/styles.xml":
        _XML_DECL + f'<styleSheet xmlns="{_NS_MAIN}">'
        '<fonts count="1"><font><sz val="11"/><name val="宋体"/></font></fonts>'
        '<fills count="2"><fill><patternFill patternType="none"/></fill>'
        '<fill><patternFill patternType="gray125"/></fill></fills>'
        '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
        f'<cellStyleXfs count="1"><xf {_XF}/></cellStyleXfs>'
        f'<cellXfs count="1"><xf {_XF} xfId="0"/></cellXfs>'
        '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
        '</styleSheet>',
}


def _xml_text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _write_xlsx(df: pd.DataFrame, path: Path, sheet: str) -> None:
    """One-sheet XLSX with every cell as text (ID numbers must never become numbers).

    Written directly as SpreadsheetML with inline strings: openpyxl needs ~40 s for the
    city's 260,000 households, this takes a few, streams row blocks into the zip, and has
    fixed timestamps so the same seed gives the same bytes.
    """
    letters = [chr(65 + i) if i < 26 else chr(64 + i // 26) + chr(65 + i % 26)
               for i in range(len(df.columns))]
    workbook = (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
                f'<workbook xmlns="{_NS_MAIN}" xmlns:r="{_NS_REL}"><sheets>'
                f'<sheet name="{_xml_text(sheet)}" sheetId="1" r:id="rId1"/></sheets></workbook>')

    def rows_xml(values: list[list[str]], first_row: int) -> str:
        parts = []
        for r, row in enumerate(values, first_row):
            cells = "".join(f'<c r="{c}{r}" t="inlineStr"><is><t>{_xml_text(v)}</t></is></c>'
                            for c, v in zip(letters, row) if v != "")
            parts.append(f'<row r="{r}">{cells}</row>')
        return "".join(parts)

    text = df.astype(str)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name, body in {**_XLSX_PARTS, "xl/workbook.xml": workbook}.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=_FIXED_ZIP_TIME), body,
                        compress_type=zipfile.ZIP_DEFLATED)
        info = zipfile.ZipInfo("xl/worksheets/sheet1.xml", date_time=_FIXED_ZIP_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as sink:
            sink.write(f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
                       f'<worksheet xmlns="{_NS_MAIN}"><sheetData>'.encode())
            sink.write(rows_xml([list(df.columns)], 1).encode())
            block = 20_000
            for lo in range(0, len(text), block):
                chunk = text.iloc[lo:lo + block].values.tolist()
                sink.write(rows_xml(chunk, lo + 2).encode())
            sink.write(b"</sheetData></worksheet>")


# --------------------------------------------------------------------------- areas

def _build_areas(spec: ScaleSpec, rng: np.random.Generator) -> pd.DataFrame:
    """City → district → township/street → village/community → grid (网格)."""
    n_grids = max(spec.villages, round(spec.households / spec.households_per_grid))
    grids_per_village = _split(n_grids, spec.villages, rng, 0.6)
    villages_per_township = _split(spec.villages, spec.townships, rng, 0.4)
    townships_per_district = _split(spec.townships, spec.districts, rng, 0.3)

    d_names = _unique_names(rng, spec.districts, W.PLACE_A, W.PLACE_B)
    d_names = [n + W.DISTRICT_SUFFIX[i % len(W.DISTRICT_SUFFIX)] if spec.districts > 1 else n + "区"
               for i, n in enumerate(d_names)]
    t_base = _unique_names(rng, spec.townships, W.PLACE_B, W.PLACE_A)
    # Urban districts have more streets (街道, whose villages are communities 社区), rural
    # ones more towns (镇, with villages 村). The single-village scale is a 村 like Wandi.
    street = rng.random(spec.townships) < (0.0 if spec.villages == 1 else 0.45)
    t_names = [b + ("街道" if s else "镇") for b, s in zip(t_base, street)]
    v_base = (["万堤"] if spec.villages == 1 else
              _unique_names(rng, spec.villages, W.VILLAGE_A, W.VILLAGE_B))

    rows = []
    g = v = 0
    t = 0
    for d in range(spec.districts):
        for _ in range(townships_per_district[d]):
            for _ in range(villages_per_township[t]):
                kind = "社区" if street[t] else "村"
                v_name = v_base[v] + kind
                for k in range(grids_per_village[v]):
                    g += 1
                    rows.append((f"G{g:04d}", f"{v_name}第{k + 1}网格", f"V{v + 1:03d}", v_name,
                                 kind, f"T{t + 1:03d}", t_names[t], f"D{d + 1:02d}", d_names[d],
                                 W.CITY_ID, W.CITY_NAME))
                v += 1
            t += 1
    return pd.DataFrame(rows, columns=AREA_COLUMNS)


# --------------------------------------------------------------------------- cadres

def _build_cadres(spec: ScaleSpec, areas: pd.DataFrame, rng: np.random.Generator,
                  start: date) -> pd.DataFrame:
    """Grid workers, village chairs, mediators, supervisors, and visiting cadres.

    Visiting cadres (cadre/executive_member/vice_chair) are placed later by
    ``_place_visiting_cadres`` once the must-visit families are known.
    """
    rows: list[dict] = []
    for gid in areas.grid_id:
        rows.append({"role": "grid_worker", "grid_ids": gid})
    for _, grp in areas.groupby("village_id", sort=True):
        rows.append({"role": "village_chair", "grid_ids": ";".join(grp.grid_id)})
    for _, grp in areas.groupby("township_id", sort=True):
        rows.append({"role": "mediator", "grid_ids": ";".join(grp.grid_id)})
    for _, grp in areas.groupby("district_id", sort=True):
        for _ in range(1 + int(rng.random() < 0.5) if spec.districts > 1 else 1):
            rows.append({"role": "supervisor", "grid_ids": ";".join(grp.grid_id)})
    n_visiting = max(0, spec.cadres - len(rows))
    rows.extend({"role": "", "grid_ids": ""} for _ in range(n_visiting))
    df = pd.DataFrame(rows)
    n = len(df)
    df.insert(0, "cadre_id", [f"K{i + 1:05d}" for i in range(n)])
    df.insert(1, "name", _person_names(rng, n, 0.92))
    df.insert(2, "phone", _mobiles(rng, n))
    visiting = (df.role == "") | (df.role == "village_chair")
    cap = rng.choice([8, 10, 12], n, p=[0.1, 0.8, 0.1])
    # Grid workers, mediators and supervisors respond and approve; they keep no archive families.
    df["capacity"] = np.where(visiting, cap, 0)
    channel = rng.choice(["webhook", "wecom", "dingtalk", "feishu", "sms"], n,
                         p=[0.7, 0.1, 0.08, 0.05, 0.07])
    df["alert_channel"] = channel
    df["alert_address"] = [ph if ch == "sms" else f"https://alerts.example.invalid/{ch}/{cid}"
                           for ch, ph, cid in zip(channel, df.phone, df.cadre_id)]
    fpo = (df.role == "") & (rng.random(n) < 0.03 * spec.cadres / max(n_visiting, 1))
    df["four_plus_one"] = fpo.astype(int)
    df["grassroots_weekday"] = np.where(fpo, rng.integers(0, 5, n).astype(str), "")
    leave = rng.random(n) < 0.02
    lf = np.datetime64(start, "D") + rng.integers(-10, 11, n).astype("timedelta64[D]")
    lu = lf + rng.integers(7, 31, n).astype("timedelta64[D]")
    df["on_leave_from"] = _fmt_dates(lf, leave)
    df["on_leave_until"] = _fmt_dates(lu, leave)
    return df


def _place_visiting_cadres(cadres: pd.DataFrame, areas: pd.DataFrame, must_per_grid: pd.Series,
                           rng: np.random.Generator) -> None:
    """Give each visiting cadre a role and 1–2 grids of one village.

    Cadres go to villages in proportion to their must-visit families, with some noise, so
    capacity is mostly enough but a few grids have a shortfall, as in real districts.
    """
    idx = np.flatnonzero(cadres.role.to_numpy() == "")
    n = len(idx)
    if n == 0:
        return
    grids_of = areas.groupby("village_id", sort=True).grid_id.apply(list)
    need = must_per_grid.reindex(areas.grid_id, fill_value=0).groupby(
        areas.village_id.to_numpy()).sum().reindex(grids_of.index).to_numpy(float)
    # Small noise around the village's need: most villages have enough, some fall short.
    w = (need + 1) * rng.lognormal(0, 0.08, len(need))
    counts = np.floor(w / w.sum() * n).astype(int)
    rest = n - counts.sum()
    counts[np.argsort(-(w / w.sum() * n - counts), kind="stable")[:rest]] += 1
    roles = rng.choice(["cadre", "executive_member", "vice_chair"], n, p=[0.45, 0.4, 0.15])
    capacity = cadres.capacity.to_numpy()[idx].astype(float)
    grid_ids = []
    k = 0
    for vid, c in zip(grids_of.index, counts):
        gl = grids_of[vid]
        # Each cadre takes the grid with the most families still uncovered (and sometimes
        # the next one too), so the shortfalls come from villages, not from bad placement.
        left = must_per_grid.reindex(gl, fill_value=0).to_numpy(float)
        for _ in range(c):
            two = len(gl) > 1 and rng.random() < 0.3
            pick = np.argsort(-left, kind="stable")[:2 if two else 1]
            left[pick] -= capacity[k] / len(pick)
            grid_ids.append(";".join(sorted(gl[p] for p in pick)))
            k += 1
    cadres.loc[idx, "role"] = roles
    cadres.loc[idx, "grid_ids"] = grid_ids


# --------------------------------------------------------------------------- households

def _build_households(spec: ScaleSpec, areas: pd.DataFrame, must_total: int,
                      rng: np.random.Generator, start: date) -> pd.DataFrame:
    n = spec.households
    grid_sizes = _split(n, len(areas), rng, 0.25)
    grid_idx = np.repeat(np.arange(len(areas)), grid_sizes)
    grid = areas.iloc[grid_idx].reset_index(drop=True)

    # Who is what: the metered elderly living alone (独居老人) are must-visit empty-nest
    # families; the other must-visit families get a primary category and sometimes a second.
    order = rng.permutation(n)
    alone = np.zeros(n, bool)
    alone[order[:spec.metered_elderly]] = True
    must = np.zeros(n, bool)
    must[order[:max(must_total, spec.metered_elderly)]] = True
    primary = np.full(n, "", dtype=object)
    primary[must] = np.array(CATEGORIES)[rng.choice(5, must.sum(), p=CATEGORY_P)]
    primary[alone] = "empty_nest"
    second = np.array(CATEGORIES)[rng.choice(5, n, p=[0.1, 0.15, 0.55, 0.15, 0.05])]
    has_second = must & (rng.random(n) < 0.12) & (second != primary)
    cats = np.array([";".join([p, s] if h else [p]) if p else ""
                     for p, s, h in zip(primary, second, has_second)], dtype=object)

    # Birth dates plausible for the family: the elderly 1935–1955, empty-nest couples a bit
    # younger, left-behind mothers 1975–2000, everyone else 1955–2000.
    births = np.empty(n, dtype="datetime64[D]")
    bands = {"alone": (date(1935, 1, 1), date(1955, 12, 31)),
             "empty_nest": (date(1940, 1, 1), date(1965, 12, 31)),
             "left_behind": (date(1975, 1, 1), date(2000, 12, 31)),
             "other": (date(1955, 1, 1), date(2000, 12, 31))}
    band = np.where(alone, "alone", np.where(primary == "empty_nest", "empty_nest",
                    np.where(primary == "left_behind", "left_behind", "other")))
    for b, (lo, hi) in bands.items():
        m = band == b
        births[m] = _random_dates(rng, int(m.sum()), lo, hi)
    female = np.where(np.isin(band, ["alone", "left_behind"]), rng.random(n) < 0.8,
                      rng.random(n) < 0.55)
    female = np.where(band == "left_behind", True, female)
    names = _person_names(rng, n, female, elderly=alone | (band == "empty_nest"))
    district_no = grid.district_id.str[1:].astype(int).to_numpy() - 1
    area_codes = np.array(W.AREA_CODES)[district_no % len(W.AREA_CODES)]
    ids = _id_numbers(rng, area_codes, births, female)

    phones = _mobiles(rng, n)
    landline = (alone | (band == "empty_nest")) & (rng.random(n) < 0.3)
    land = np.array([f"{W.LANDLINE_AREA}-8{x:07d}" for x in rng.integers(0, 10_000_000, n)],
                    dtype=object)
    phones = np.where(landline, land, phones)

    kind = grid.village_kind.to_numpy()
    t_name, v_name = grid.township_name.to_numpy(), grid.village_name.to_numpy()
    a1, a2, a3 = rng.integers(1, 31, n), rng.integers(1, 5, n), rng.integers(1, 25, n)
    floors = rng.integers(1, 19, n)
    addresses = np.array(
        [f"{t}{v}{x}幢{y}单元{f}{z:02d}室" if k == "社区" else f"{t}{v}{y + x % 8}组{x * 3 + z}号"
         for t, v, k, x, y, z, f in zip(t_name, v_name, kind, a1, a2, a3 % 4 + 1, floors)],
        dtype=object)

    # Empty-nest couples are two; one person alone is the elderly_living_alone case.
    members = np.where(alone, 1, np.where(primary == "empty_nest", 2, rng.integers(2, 6, n)))
    consent = (rng.random(n) < 0.97) | alone  # the metered elderly consented to monitoring
    key = np.where(must, primary, "")

    def pick(table: dict[str, tuple[str, ...]]) -> np.ndarray:
        out = np.empty(n, dtype=object)
        for k_, opts in table.items():
            m = key == k_
            out[m] = np.array(opts, dtype=object)[rng.integers(0, len(opts), m.sum())]
        return out

    basic = pick(W.BASIC_SITUATION)
    basic[alone] = np.array(["老人独居，子女在外地工作", "高龄老人独居，已安装智能电表"],
                            dtype=object)[rng.integers(0, 2, alone.sum())]
    difficulties, measures = pick(W.DIFFICULTIES), pick(W.MEASURES)

    away = rng.random(n) < 0.01
    af = np.datetime64(start, "D") + rng.integers(-30, 15, n).astype("timedelta64[D]")
    au = af + rng.integers(7, 61, n).astype("timedelta64[D]")
    reason = np.where(alone | (band == "empty_nest"),
                      np.array(["住院", "随子女外地"])[rng.integers(0, 2, n)],
                      np.array(["住院", "随子女外地", "外出务工"])[rng.integers(0, 3, n)])

    return pd.DataFrame({
        "household_id": [f"H{i + 1:07d}" for i in range(n)],
        "head_name": names, "id_number": ids, "phone": phones, "address": addresses,
        "grid_id": grid.grid_id.to_numpy(), "categories": cats, "members": members,
        "elderly_living_alone": alone.astype(int), "consent": consent.astype(int),
        "basic_situation": basic, "difficulties": difficulties, "measures": measures,
        "away_from": _fmt_dates(af, away), "away_until": _fmt_dates(au, away),
        "away_reason": np.where(away, reason, ""),
    })


def _broken_households(households: pd.DataFrame, n: int, rng: np.random.Generator
                       ) -> tuple[pd.DataFrame, list[dict]]:
    """Deliberately broken rows for the importer's quarantine (隔离区) demo."""
    problems = ("bad_id_check_digit", "unknown_grid_id", "malformed_phone", "empty_name",
                "bad_date")
    base = households.sample(n=n, replace=n > len(households),
                             random_state=np.random.RandomState(rng.integers(2**31)))
    rows, notes = [], []
    for i, row in enumerate(base.to_dict("records")):
        row = dict(row)
        row["household_id"] = f"H{len(households) + i + 1:07d}"
        problem = problems[i % len(problems)]
        # A fresh, valid ID first, so that each broken row has exactly one defect.
        seq = (int(row["id_number"][14:17]) + 500 + 2 * i) % 1000
        first17 = row["id_number"][:14] + f"{seq:03d}"
        row["id_number"] = first17 + id_check_digit(first17)
        if problem == "bad_id_check_digit":
            good = row["id_number"][-1]
            row["id_number"] = row["id_number"][:17] + ("0" if good != "0" else "1")
        elif problem == "unknown_grid_id":
            row["grid_id"] = "G9999"
        elif problem == "malformed_phone":
            row["phone"] = "12" + row["phone"][-6:]
        elif problem == "empty_name":
            row["head_name"] = ""
        else:
            row["away_from"], row["away_until"], row["away_reason"] = "2026-13-45", "", "住院"
        rows.append(row)
        notes.append({"household_id": row["household_id"], "line": len(households) + i + 2,
                      "problem": problem})
    return pd.DataFrame(rows, columns=HOUSEHOLD_COLUMNS), notes


# --------------------------------------------------------------------------- visits

_DEMAND_BY_CATEGORY = {
    "empty_nest": (["elderly_care", "domestic_services", ""], [0.6, 0.15, 0.25]),
    "left_behind": (["family_education", "skills", "employment_rights", ""],
                    [0.35, 0.25, 0.15, 0.25]),
    "hardship": (["employment_rights", "domestic_services", "skills", ""], [0.3, 0.2, 0.2, 0.3]),
    "dispute": (["marriage_family_rights", "family_education", ""], [0.7, 0.1, 0.2]),
    "entrepreneur": (["entrepreneurship", "skills", "democratic_participation", ""],
                     [0.6, 0.15, 0.05, 0.2]),
}
_STEPS = ("identify", "commit", "listen", "guide", "serve")


def _build_visits(households: pd.DataFrame, cadres: pd.DataFrame, rng: np.random.Generator,
                  start: date) -> pd.DataFrame:
    """Past visit records (走访记录) of the 60 days before ``start``."""
    must = households[households.categories != ""]
    # Who visits whom: the visiting cadres of the family's grid in turn; a grid without
    # one falls back to its village chair.
    vis = cadres[cadres.role.isin(VISITING_ROLES) & (cadres.capacity > 0)]
    by_grid: dict[str, list[str]] = {}
    chair_of: dict[str, str] = {}
    for cid, role, gids in zip(vis.cadre_id, vis.role, vis.grid_ids):
        for g in gids.split(";"):
            if role == "village_chair":
                chair_of[g] = cid
            else:
                by_grid.setdefault(g, []).append(cid)
    n_per = rng.choice([0, 1, 2, 3], len(must), p=[0.2, 0.4, 0.3, 0.1])
    hh = np.repeat(must.household_id.to_numpy(), n_per)
    grid = np.repeat(must.grid_id.to_numpy(), n_per)
    cat = np.repeat(must.categories.str.split(";").str[0].to_numpy(), n_per)
    pos = np.repeat(np.arange(len(must)), n_per)
    m = len(hh)
    # The k-th must-visit family of a grid goes to the grid's cadres in turn, so one family
    # keeps the same cadre across its visits.
    cadre = np.array([by_grid[g][p % len(by_grid[g])] if g in by_grid else chair_of.get(g, "")
                      for g, p in zip(grid, pos)], dtype=object)
    day = rng.integers(-HISTORY_DAYS, 0, m)
    minute = rng.integers(8 * 60 + 30, 18 * 60, m)
    ts = (np.datetime64(start, "m") + day.astype("timedelta64[D]").astype("timedelta64[m]")
          + minute.astype("timedelta64[m]"))
    order = np.lexsort((hh, ts))
    mode = rng.choice(["visit", "phone", "wechat"], m, p=[0.6, 0.25, 0.15])
    n_steps = np.where(mode == "visit", rng.choice([3, 4, 5], m, p=[0.15, 0.25, 0.6]),
                       rng.choice([2, 3], m))
    steps = np.array([";".join(_STEPS[:k]) for k in n_steps], dtype=object)
    demand = np.empty(m, dtype=object)
    for c, (opts, p) in _DEMAND_BY_CATEGORY.items():
        sel = cat == c
        demand[sel] = np.array(opts, dtype=object)[rng.choice(len(opts), sel.sum(), p=p)]

    def pick(opts: tuple[str, ...], p_empty: float) -> np.ndarray:
        out = np.array(opts, dtype=object)[rng.integers(0, len(opts), m)]
        out[rng.random(m) < p_empty] = ""
        return out

    business = pick(W.BUSINESS_SITUATION, 0.0)
    business[cat != "entrepreneur"] = ""
    notes = pick(W.NEUTRAL_NOTES, 0.6)
    # ~2% of records carry a dispute or safety cue; dispute families far more often.
    cue = rng.random(m) < np.where(cat == "dispute", 0.2, 0.01)
    notes[cue] = np.array(W.CUE_NOTES, dtype=object)[rng.integers(0, len(W.CUE_NOTES), cue.sum())]
    follow = (rng.random(m) < 0.25) | cue
    df = pd.DataFrame({
        "visit_id": "", "plan_id": "", "household_id": hh, "cadre_id": cadre,
        "visited_at": pd.DatetimeIndex(ts).strftime("%Y-%m-%d %H:%M").to_numpy(),
        "mode": mode, "steps": steps,
        "family_situation": pick(W.FAMILY_SITUATION, 0.05),
        "business_situation": business,
        "women_situation": pick(W.WOMEN_SITUATION, 0.2),
        "difficulties": pick(W.VISIT_DIFFICULTIES, 0.4),
        "measures": pick(W.VISIT_MEASURES, 0.3),
        "demand_category": demand, "follow_up_needed": follow.astype(int), "notes": notes,
    }).iloc[order].reset_index(drop=True)
    df["visit_id"] = [f"VS{i + 1:07d}" for i in range(len(df))]
    return df


# --------------------------------------------------------------------------- resources

def _build_resources(areas: pd.DataFrame, cadres: pd.DataFrame, rng: np.random.Generator
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    villages = areas.drop_duplicates("village_id")
    rows = []
    for vid, vname in zip(villages.village_id, villages.village_name):
        for k in rng.choice(len(W.RESOURCE_KINDS), rng.integers(3, 7), replace=False):
            ptype, pattern, offers = W.RESOURCE_KINDS[k]
            person = _person_names(rng, 1, 0.85)[0]
            rows.append({"name": pattern.format(v=vname, p=person), "provider_type": ptype,
                         "offers": ";".join(offers), "village_id": vid,
                         "contact_name": person, "phone": _mobiles(rng, 1)[0]})
    res = pd.DataFrame(rows, columns=RESOURCE_COLUMNS[1:])
    res.insert(0, "resource_id", [f"R{i + 1:05d}" for i in range(len(res))])

    med = cadres[cadres.role == "mediator"]
    town_of_grid = dict(zip(areas.grid_id, areas.township_id))
    mediators_by_town: dict[str, list[str]] = {}
    for cid, gids in zip(med.cadre_id, med.grid_ids):
        mediators_by_town.setdefault(town_of_grid[gids.split(";")[0]], []).append(cid)
    towns = areas.drop_duplicates("township_id")
    rooms = pd.DataFrame({
        "room_id": [f"MR{i + 1:03d}" for i in range(len(towns))],
        "name": [f"{t}木兰调解室" for t in towns.township_name],
        "township_id": towns.township_id.to_numpy(),
        "mediator_ids": [";".join(mediators_by_town.get(t, [])) for t in towns.township_id],
    })
    return res, rooms


# --------------------------------------------------------------------------- meters

def _daily_temperature(day0: date, days: int, rng: np.random.Generator) -> np.ndarray:
    """Mean daily temperature (°C) of a Zhejiang coastal city: ~6 °C in January, ~29 in July."""
    doy = np.array([(day0 + timedelta(d)).timetuple().tm_yday for d in range(days)])
    return 17.5 + 11.5 * np.cos(2 * np.pi * (doy - 200) / 365.25) + rng.normal(0, 1.8, days)


def _rest_days(day0: date, days: int) -> np.ndarray:
    """Weekends and public holidays (National Day week brings children home)."""
    try:
        import chinese_calendar
    except ImportError:  # pragma: no cover - chinesecalendar is a dependency
        chinese_calendar = None
    out = np.zeros(days, bool)
    for d in range(days):
        day = day0 + timedelta(d)
        try:
            out[d] = chinese_calendar.is_holiday(day) if chinese_calendar else day.weekday() >= 5
        except NotImplementedError:  # years the calendar does not know yet
            out[d] = day.weekday() >= 5
    return out


@dataclass(frozen=True)
class _Anomaly:
    meter: int  # index into the meter list
    kind: str
    start: int  # first affected slot (reading index, 0 = the reading at start+15 min)
    end: int    # one past the last affected slot
    factor: float


def _plan_anomalies(n_meters: int, days: int, rng: np.random.Generator) -> list[_Anomaly]:
    """Choose which meters get which anomaly, when; no more than one per meter.

    None starts in the baseline the detectors need (21 days, or the first half of a short
    run); about 40% fall in the last 7 days so that a demo replaying a week sees several.
    """
    total = days * SLOTS_PER_DAY
    baseline = min(21, days // 2) * SLOTS_PER_DAY
    if n_meters == 0 or total - baseline < SLOTS_PER_DAY:
        return []
    n = min(n_meters, max(5, round(0.065 * n_meters)))
    meters = np.sort(rng.choice(n_meters, n, replace=False))
    kinds = [ANOMALY_KINDS[i % 5] for i in rng.permutation(n)]
    h = 4  # slots per hour
    durations = {"inactivity": (8 * h, 72 * h), "sustained_drop": (72 * h, 168 * h),
                 "night_activity": (3, 6), "high_use": (24 * h, 96 * h),
                 "meter_offline": (6 * h, 48 * h)}
    last_week = max(baseline, total - 7 * SLOTS_PER_DAY)
    out = []
    for m, kind in zip(meters, kinds):
        lo, hi = durations[kind]
        if kind == "night_activity":
            nights = int(rng.integers(lo, hi + 1))
            nights = min(nights, (total - baseline) // SLOTS_PER_DAY)
            first_day = int(rng.integers(baseline // SLOTS_PER_DAY,
                                         total // SLOTS_PER_DAY - nights + 1))
            # From midnight of the first night to 04:00 after the last one.
            start, end = first_day * SLOTS_PER_DAY, (first_day + nights - 1) * SLOTS_PER_DAY + 16
            out.append(_Anomaly(int(m), kind, start, end, float(nights)))
            continue
        dur = min(int(rng.integers(lo, hi + 1)), total - baseline)
        window_lo = last_week if rng.random() < 0.4 else baseline
        start = int(rng.integers(window_lo, max(window_lo, total - dur) + 1))
        end = min(total, start + dur)
        factor = {"sustained_drop": rng.uniform(0.2, 0.5),
                  "high_use": rng.uniform(0.3, 1.0)}.get(kind, 1.0)
        out.append(_Anomaly(int(m), kind, start, end, float(factor)))
    return out


def _simulate_chunk(n: int, days: int, temp: np.ndarray, rest: np.ndarray,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Usage (kWh per 15 min) and standby level of ``n`` households over ``days`` days.

    Shapes (n, days*96). Each household has its own routine — wake 5:30–7:30, cooking
    late morning and ~17:00–18:30, TV in the evening, sleep 20:30–22:30 — jittered day to
    day, a fridge cycling on top of the standby load, heating/AC by temperature, children
    visiting on some rest days, and lognormal noise.
    """
    f32 = np.float32
    hour = ((np.arange(SLOTS_PER_DAY, dtype=f32) + 0.5) / 4)[None, None, :]  # interval middle

    def per_house(lo, hi):
        return rng.uniform(lo, hi, (n, 1, 1)).astype(f32)

    def per_day(mean, sd):
        return (mean + rng.normal(0, sd, (n, days, 1))).astype(f32)

    wake = per_day(per_house(5.5, 7.5), 0.3)
    sleep = per_day(per_house(20.5, 22.5), 0.3)
    lunch = per_day(per_house(10.5, 11.6), 0.25)
    dinner = per_day(per_house(17.0, 18.5), 0.25)

    base = per_house(0.008, 0.02)
    fridge_amp = per_house(0.004, 0.016)
    period = per_house(3.0, 6.0)
    phase = per_house(0, 1)
    t = np.arange(days * SLOTS_PER_DAY, dtype=f32).reshape(1, days, SLOTS_PER_DAY)
    standby = base + fridge_amp * (0.5 + 0.5 * np.sin(2 * np.pi * (t / period + phase)))

    def sig(x):
        return 1 / (1 + np.exp(-x))

    awake = sig((hour - wake) * 6) * sig((sleep - hour) * 6)
    active = per_house(0.01, 0.035) * awake
    morning = per_house(0.03, 0.1) * np.exp(-((hour - wake - 0.4) / 0.35) ** 2)
    cook = per_house(0.06, 0.22)
    meals = cook * (np.exp(-((hour - lunch) / 0.45) ** 2)
                    + 1.1 * np.exp(-((hour - dinner) / 0.45) ** 2))
    tv = per_house(0.015, 0.05) * sig((hour - 18.8) * 4) * sig((sleep - hour) * 6)

    temp_ = temp.astype(f32)[None, :, None]
    has_heater = rng.random((n, 1, 1)) < 0.7
    heat = np.where(has_heater, per_house(0.03, 0.2), f32(0)) * np.clip((13 - temp_) / 8, 0, 1.5)
    has_ac = rng.random((n, 1, 1)) < 0.75
    cool = np.where(has_ac, per_house(0.1, 0.35), f32(0)) * np.clip((temp_ - 25) / 5, 0, 1.5)
    climate = heat * (awake + 0.3) + cool * (0.6 * awake + 0.4 * sig((hour - 13) * 2))

    # Children come home on some rest days: more cooking, more people between 10:00 and 20:00.
    visit_p = per_house(0.1, 0.5)
    visited = (rng.random((n, days, 1)) < visit_p) & rest[None, :, None]
    family = np.where(visited, f32(1), f32(0)) * (
        0.8 * meals + per_house(0.05, 0.15) * sig((hour - 10) * 3) * sig((20 - hour) * 3))

    # Short appliance uses (kettle, hair dryer, washing machine) while awake: the spikes
    # real curves have and a smooth routine lacks.
    spikes = ((rng.random(load_shape := (n, days, SLOTS_PER_DAY), dtype=f32) < 0.04 * awake)
              * rng.exponential(0.12, load_shape).astype(f32))
    day_level = rng.lognormal(0, 0.1, (n, days, 1)).astype(f32)  # some days are busier
    load = (standby + day_level * (active + morning + meals + tv + climate + family + spikes))
    sigma = f32(0.25)
    noise = np.exp(rng.normal(-sigma * sigma / 2, sigma, load.shape).astype(f32))
    load = (load * noise).reshape(n, -1)
    return load, standby.reshape(n, -1) * noise.reshape(n, -1)


def _readings_chunk(seed: int, chunk: int, n: int, days: int, temp: np.ndarray, rest: np.ndarray,
                    anomalies: list[_Anomaly], first_meter: int) -> tuple[np.ndarray, np.ndarray]:
    """Simulated kWh and the mask of present readings for meters ``first_meter ..+n``."""
    rng = _rng(seed, _READINGS + chunk)
    kwh, standby = _simulate_chunk(n, days, temp, rest, rng)
    present = rng.random(kwh.shape) >= 0.003  # ~0.3% of readings lost in transmission
    for a in anomalies:
        i = a.meter - first_meter
        if not 0 <= i < n:
            continue
        s, e = a.start, a.end
        if a.kind == "inactivity":
            # Lights off: only what runs by itself remains, the household's own night standby.
            kwh[i, s:e] = standby[i, s:e]
        elif a.kind == "sustained_drop":
            kwh[i, s:e] *= a.factor
        elif a.kind == "high_use":
            kwh[i, s:e] += a.factor
        elif a.kind == "meter_offline":
            present[i, s:e] = False
        elif a.kind == "night_activity":
            for night in range(int(a.factor)):
                base = s + night * SLOTS_PER_DAY
                burst = rng.random(16) < 0.6
                kwh[i, base:base + 16] += burst * rng.uniform(0.08, 0.3, 16).astype(np.float32)
    # Meters report to the watt-hour; never below 1 Wh so that a present reading is never 0.
    kwh = np.maximum(np.round(kwh.astype(np.float64), 3), 0.001)
    return kwh, present


READINGS_SCHEMA = pa.schema([("meter_id", pa.string()), ("ts", pa.timestamp("us")),
                             ("kwh", pa.float64())])


def _write_readings(seed: int, meter_ids: list[str], start: date, days: int,
                    anomalies: list[_Anomaly], out_dir: Path, write_csv: bool,
                    progress: Callable[[str], None]) -> int:
    temp = _daily_temperature(start, days, _rng(seed, _READINGS - 1))
    rest = _rest_days(start, days)
    total_slots = days * SLOTS_PER_DAY
    # ts is the END of each 15-minute interval, naive local time.
    ts_all = (np.datetime64(start, "us")
              + (np.arange(1, total_slots + 1) * 15 * 60_000_000).astype("timedelta64[us]"))
    rows = 0
    writer = pq.ParquetWriter(out_dir / "readings.parquet", READINGS_SCHEMA, compression="zstd")
    csv_sink = open(out_dir / "readings.csv", "wb") if write_csv else None
    if csv_sink is not None:
        csv_sink.write(",".join(READING_COLUMNS).encode() + b"\n")  # Arrow would quote it
    try:
        per_chunk = max(16, CHUNK_READINGS // total_slots)
        n_chunks = (len(meter_ids) + per_chunk - 1) // per_chunk
        for c in range(n_chunks):
            lo, hi = c * per_chunk, min(len(meter_ids), (c + 1) * per_chunk)
            kwh, present = _readings_chunk(seed, c, hi - lo, days, temp, rest, anomalies, lo)
            mi, si = np.nonzero(present)
            table = pa.table({
                "meter_id": pc.take(pa.array(meter_ids[lo:hi], pa.string()), pa.array(mi)),
                "ts": pa.array(ts_all[si], pa.timestamp("us")),
                "kwh": pa.array(kwh[mi, si]),
            }, schema=READINGS_SCHEMA)
            writer.write_table(table, row_group_size=1_000_000)
            if csv_sink is not None:
                # Arrow's %S prints microseconds; whole seconds are what the contract shows.
                ts_text = pc.binary_join_element_wise(
                    pc.strftime(table["ts"], "%Y-%m-%d %H:%M"), ":00", "")
                text = table.set_column(1, "ts", ts_text)
                pacsv.write_csv(text, csv_sink, pacsv.WriteOptions(
                    include_header=False, quoting_style="none"))  # ids and times hold no separators
            rows += table.num_rows
            progress(f"readings: meters {hi}/{len(meter_ids)}, {rows:,} rows")
    finally:
        writer.close()
        if csv_sink is not None:
            csv_sink.close()
    return rows


# --------------------------------------------------------------------------- entry point

def generate_area(scale: str, seed: int, out_dir: Path, *, start: date = date(2026, 10, 1),
                  days: int | None = None, write_readings_csv: bool = False,
                  broken_rows: int = 0, progress: Callable[[str], None] | None = None) -> dict:
    """Write a synthetic area of ``scale`` into ``out_dir`` and return its manifest.

    Readings cover ``start`` 00:00 to ``start + days`` 00:00 (``ts`` = end of interval);
    visit records cover the 60 days before ``start``. Anomaly windows in
    ``anomalies.csv`` affect the readings with ``start < ts <= end``.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    if broken_rows < 0:
        raise ValueError("broken_rows must be >= 0")
    spec = SCALES[scale]
    days = spec.default_days if days is None else days
    if days < 1:
        raise ValueError("days must be >= 1")
    say = progress or (lambda _msg: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    areas = _build_areas(spec, _rng(seed, _AREAS))
    say(f"areas: {len(areas)} grids, {areas.village_id.nunique()} villages")
    cadres = _build_cadres(spec, areas, _rng(seed, _CADRES), start)
    # Must-visit families ≈ 90% of what the visiting cadres can keep (10 each).
    must_total = min(round(0.9 * int(cadres.capacity.sum())), round(0.95 * spec.households))
    households = _build_households(spec, areas, must_total, _rng(seed, _HOUSEHOLDS), start)
    must_per_grid = households[households.categories != ""].groupby("grid_id").size()
    _place_visiting_cadres(cadres, areas, must_per_grid, _rng(seed, _CADRES + 50))
    cadres = cadres[CADRE_COLUMNS]
    say(f"households: {len(households):,}, cadres: {len(cadres):,}")

    meter_hh = households[households.elderly_living_alone == 1]
    mrng = _rng(seed, _METERS)
    meters = pd.DataFrame({
        "meter_id": [f"M{i + 1:06d}" for i in range(len(meter_hh))],
        "household_id": meter_hh.household_id.to_numpy(),
        "interval_minutes": 15,
        "installed_at": pd.DatetimeIndex(_random_dates(
            mrng, len(meter_hh), start - timedelta(720), start - timedelta(30))
        ).strftime("%Y-%m-%d"),
    })
    anomalies = _plan_anomalies(len(meters), days, _rng(seed, _ANOMALIES))
    visits = _build_visits(households, cadres, _rng(seed, _VISITS), start)
    resources, rooms = _build_resources(areas, cadres, _rng(seed, _RESOURCES))

    broken_notes: list[dict] = []
    hh_csv = households
    if broken_rows:
        broken, broken_notes = _broken_households(households, broken_rows, _rng(seed, _BROKEN))
        hh_csv = pd.concat([households, broken], ignore_index=True)

    _write_csv(areas, out_dir / "areas.csv")
    _write_csv(hh_csv, out_dir / "households.csv")
    _write_xlsx(households, out_dir / "households.xlsx", "households")
    _write_csv(cadres, out_dir / "cadres.csv")
    _write_xlsx(cadres, out_dir / "cadres.xlsx", "cadres")
    _write_csv(meters, out_dir / "meters.csv")
    _write_csv(visits, out_dir / "visits.csv")
    _write_csv(resources, out_dir / "resources.csv")
    _write_csv(rooms, out_dir / "mediation_rooms.csv")
    t0 = np.datetime64(start, "m")
    mids = meters.meter_id.to_numpy()
    anom = pd.DataFrame({
        "meter_id": [mids[a.meter] for a in anomalies],
        "kind": [a.kind for a in anomalies],
        # Window bounds in wall time: readings with start < ts <= end are affected.
        "start": [str(t0 + np.timedelta64(a.start * 15, "m")).replace("T", " ") + ":00"
                  for a in anomalies],
        "end": [str(t0 + np.timedelta64(a.end * 15, "m")).replace("T", " ") + ":00"
                for a in anomalies],
    }, columns=ANOMALY_COLUMNS)
    _write_csv(anom, out_dir / "anomalies.csv")
    say(f"registry files written; simulating {len(meters):,} meters over {days} days")

    n_readings = _write_readings(seed, list(mids), start, days, anomalies, out_dir,
                                 write_readings_csv, say)

    counts = {"areas.csv": len(areas), "households.csv": len(hh_csv),
              "households.xlsx": len(households), "cadres.csv": len(cadres),
              "cadres.xlsx": len(cadres), "meters.csv": len(meters),
              "readings.parquet": n_readings, "visits.csv": len(visits),
              "resources.csv": len(resources), "mediation_rooms.csv": len(rooms),
              "anomalies.csv": len(anom)}
    if write_readings_csv:
        counts["readings.csv"] = n_readings
    manifest = {
        "generator": "sibifang.generate", "generator_version": GENERATOR_VERSION,
        "scale": scale, "seed": seed, "spec": asdict(spec),
        "start": start.isoformat(), "end": (start + timedelta(days)).isoformat(), "days": days,
        "visits_from": (start - timedelta(HISTORY_DAYS)).isoformat(),
        "counts": counts,
        "must_visit_households": int((households.categories != "").sum()),
        "visiting_capacity": int(cadres.capacity.sum()),
        "anomaly_kinds": {k: sum(a.kind == k for a in anomalies) for k in ANOMALY_KINDS},
        "broken_rows": broken_notes,
    }
    (out_dir / "manifest.json").write_text(
        json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    say(f"done: {n_readings:,} readings, {len(anom)} anomalies")
    return manifest
