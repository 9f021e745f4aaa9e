"""Row-level checks that Great Expectations cannot express, and the label ↔ code maps.

Everything here is vectorised over a ``pd.Series`` and returns a boolean mask (or codes
Series) aligned with the input, so the importer can turn failures into row problems
without looping over rows. No function here returns or logs the values it checks.

The label maps are the one place where the Chinese words a clerk types are turned into
the codes the rest of the project uses.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from sibifang.settings import LOCAL_TZ, LOCAL_TZ_NAME


# --------------------------------------------------------------------------------------
# Label ↔ code maps (file-formats.md). Keys are codes; values are the Chinese labels shown
# to users. ALIASES add what clerks also type (longer or shorter forms).
# --------------------------------------------------------------------------------------

CATEGORY_LABELS: dict[str, str] = {
    "entrepreneur": "创业困难",
    "hardship": "困难家庭",
    "empty_nest": "空巢老人",
    "left_behind": "留守妇女儿童",
    "dispute": "婚姻家庭矛盾",
}
CATEGORY_ALIASES: dict[str, str] = {
    "生产经营遇到困难的创业女性家庭": "entrepreneur",
    "创业女性": "entrepreneur",
    "空巢老人家庭": "empty_nest",
    "留守妇女儿童家庭": "left_behind",
    "留守": "left_behind",
    "涉及婚姻家庭矛盾纠纷的家庭": "dispute",
    "婚姻家庭矛盾纠纷": "dispute",
}

ROLE_LABELS: dict[str, str] = {
    "cadre": "妇联干部",
    "executive_member": "执委",
    "vice_chair": "兼职副主席",
    "grid_worker": "网格员",
    "village_chair": "村/社区妇联主席",
    "mediator": "调解员",
    "supervisor": "市/区妇联",
}
ROLE_ALIASES: dict[str, str] = {
    "村妇联主席": "village_chair",
    "社区妇联主席": "village_chair",
    "妇联主席": "village_chair",
    "妇联执委": "executive_member",
    "市妇联": "supervisor",
    "区妇联": "supervisor",
}

VISIT_STEP_LABELS: dict[str, str] = {
    "identify": "亮明身份",
    "commit": "作出承诺",
    "listen": "倾听诉求",
    "guide": "分类引领",
    "serve": "精准服务",
}
# The five-step method names each step "...访" (亮明身份访); accept both forms.
VISIT_STEP_ALIASES: dict[str, str] = {f"{label}访": code for code, label in VISIT_STEP_LABELS.items()}
# The order of the five-step method (五步工作法).
VISIT_STEP_ORDER: tuple[str, ...] = tuple(VISIT_STEP_LABELS)

MODE_LABELS: dict[str, str] = {"visit": "入户", "phone": "电话", "wechat": "微信"}
MODE_ALIASES: dict[str, str] = {"入户走访": "visit", "上门": "visit", "电话联系": "phone", "微信联系": "wechat"}

DEMAND_CATEGORY_LABELS: dict[str, str] = {
    "democratic_participation": "民主参与",
    "marriage_family_rights": "婚姻家庭权益",
    "employment_rights": "就业权益",
    "entrepreneurship": "创业信息和资金",
    "elderly_care": "空巢老人照料",
    "domestic_services": "家政服务",
    "family_education": "家庭教育",
    "skills": "技能提升",
}
DEMAND_CATEGORY_ALIASES: dict[str, str] = {"创业": "entrepreneurship", "养老": "elderly_care"}

PROVIDER_TYPE_LABELS: dict[str, str] = {
    "model_post": "巾帼文明岗",
    "best_family": "最美家庭",
    "red_banner": "三八红旗手",
    "micro_home": "妇女微家",
    "volunteer_team": "志愿服务队",
    "expert": "专家",
}
PROVIDER_TYPE_ALIASES: dict[str, str] = {"志愿者团队": "volunteer_team", "志愿队": "volunteer_team"}

VILLAGE_KIND_LABELS: dict[str, str] = {"village": "村", "community": "社区"}

# Risk flag kinds as alerts, reports and the risk map name them (one table for all three).
FLAG_KIND_LABELS: dict[str, str] = {
    "inactivity": "长时间无用电活动",
    "sustained_drop": "用电持续下降",
    "missing_morning_routine": "早间用电缺失",
    "night_activity": "夜间异常用电",
    "high_use": "用电异常偏高",
    "meter_offline": "电表离线",
    "visit_cue": "走访发现情况",
    "dispute": "婚姻家庭矛盾",
    "domestic_violence": "家庭暴力线索",
    "self_harm": "轻生线索",
    "gambling": "赌博线索",
    "hardship": "生活困难",
    "unresolved_difficulty": "困难反复未解决",
    "overdue_visit": "逾期未访",
}

ALERT_CHANNELS: tuple[str, ...] = ("webhook", "wecom", "dingtalk", "feishu", "sms", "email")
ALERT_CHANNEL_LABELS: dict[str, str] = {
    "webhook": "接口推送",  # a generic HTTP endpoint (a county platform, a trial receiver)
    "wecom": "企业微信",
    "dingtalk": "钉钉",
    "feishu": "飞书",
    "sms": "短信",
    "email": "电子邮件",
}

# A family's place on the register (家庭档案 状态): on it, or taken off it and why. A code other
# than ``registered`` is the reason stored in ``households.deregistered_reason``.
REGISTER_STATUS_LABELS: dict[str, str] = {
    "registered": "在册",
    "moved_away": "迁出",
    "deceased": "去世",
    "other": "注销",
}
REGISTER_STATUS_ALIASES: dict[str, str] = {"其他": "other", "已注销": "other", "已迁出": "moved_away"}
DEREGISTERED_REASON_LABELS: dict[str, str] = {"moved_away": "迁出", "deceased": "去世", "other": "其他"}

BOOL_TRUE = frozenset({"1", "true", "yes", "y", "是", "t"})
BOOL_FALSE = frozenset({"0", "false", "no", "n", "否", "f"})

# Separators inside a list cell: ";" per the contract; the full-width "；" and "、" are what a
# clerk typing Chinese produces, and rejecting them would quarantine good rows.
LIST_SEPARATORS = re.compile(r"[;；、]")


def label_lookup(labels: Mapping[str, str], aliases: Mapping[str, str] | None = None) -> dict[str, str]:
    """Map every accepted spelling (code, lower-cased code, label, alias) to its code."""
    lookup: dict[str, str] = {}
    for code, label in labels.items():
        lookup[code] = code
        lookup[code.lower()] = code
        lookup[label] = code
    for alias, code in (aliases or {}).items():
        lookup[alias] = code
    return lookup


CATEGORY_LOOKUP = label_lookup(CATEGORY_LABELS, CATEGORY_ALIASES)
ROLE_LOOKUP = label_lookup(ROLE_LABELS, ROLE_ALIASES)
VISIT_STEP_LOOKUP = label_lookup(VISIT_STEP_LABELS, VISIT_STEP_ALIASES)
MODE_LOOKUP = label_lookup(MODE_LABELS, MODE_ALIASES)
DEMAND_CATEGORY_LOOKUP = label_lookup(DEMAND_CATEGORY_LABELS, DEMAND_CATEGORY_ALIASES)
PROVIDER_TYPE_LOOKUP = label_lookup(PROVIDER_TYPE_LABELS, PROVIDER_TYPE_ALIASES)
VILLAGE_KIND_LOOKUP = label_lookup(VILLAGE_KIND_LABELS)
REGISTER_STATUS_LOOKUP = label_lookup(REGISTER_STATUS_LABELS, REGISTER_STATUS_ALIASES)
ALERT_CHANNEL_LOOKUP = label_lookup(ALERT_CHANNEL_LABELS, {"Webhook": "webhook", "WEBHOOK": "webhook"})


def fold_width(values: pd.Series) -> pd.Series:
    """NFKC: full-width digits, letters and ASCII punctuation (what a Chinese IME types:
    ``１５８``, ``Ｈ００１``, ``；``) become their ASCII forms; Chinese characters are unchanged.

    Patterns in this module use ``[0-9]``, never ``\\d``: ``\\d`` also matches full-width and
    other Unicode digits, which would pass a pattern and then break ASCII-only arithmetic.
    """
    text = values.astype("str")
    return text.str.normalize("NFKC").where(values.notna())


# The label of a totals row (合计) at the foot of a sheet, spaces and a trailing colon ignored.
# No meter, household or visit is named so; "累计" is not here: it heads a register column.
TOTAL_LABELS = frozenset({"合计", "总计", "小计", "共计", "汇总", "总合计", "total", "totals", "sum",
                          "subtotal", "grandtotal"})


def is_total_label(values: pd.Series) -> np.ndarray:
    """Mask: cells that label a totals row (``合计``, ``总 计：``, ``Total``)."""
    text = fold_width(values).str.replace(r"[\s:]+", "", regex=True).str.lower()
    return text.isin(TOTAL_LABELS).to_numpy(dtype=bool)


def _blank(values: pd.Series) -> pd.Series:
    """True where a cell holds nothing (NA or only whitespace)."""
    return values.isna() | values.astype("str").str.strip().eq("")


def to_code(values: pd.Series, lookup: Mapping[str, str]) -> tuple[pd.Series, pd.Series]:
    """Translate single-valued cells (code or Chinese label) to codes.

    Returns ``(codes, unknown)``: codes is NA where the cell is blank or unknown; ``unknown``
    is True only for non-blank cells that match no spelling.
    """
    stripped = values.astype("str").str.strip()
    codes = stripped.map(lookup)
    codes = codes.where(codes.notna(), stripped.str.lower().map(lookup))
    blank = _blank(values)
    unknown = codes.isna() & ~blank
    return codes.astype("str"), unknown


def _split_cell(cell: object) -> list[str]:
    if not isinstance(cell, str):
        return []
    return [part.strip() for part in LIST_SEPARATORS.split(cell) if part.strip()]


def _per_distinct(values: pd.Series, fn) -> pd.Series:
    """Apply ``fn`` once per distinct cell: list columns repeat a few combinations many times."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    results = [fn(u) for u in uniques] + [fn(None)]  # the last slot serves NA (code -1)
    table = np.empty(len(results), dtype=object)
    table[:] = results
    return pd.Series(table[codes], index=values.index, dtype=object)


def split_list(values: pd.Series) -> pd.Series:
    """Split ``;``-list cells into Python lists of stripped, non-empty items ([] when blank)."""
    # Each row gets its own list object, so callers may mutate one without touching others.
    return _per_distinct(values, _split_cell).map(list)


def to_code_list(values: pd.Series, lookup: Mapping[str, str]) -> tuple[pd.Series, pd.Series]:
    """Translate ``;``-list cells to lists of codes (order kept, repeats dropped).

    Returns ``(code_lists, unknown)`` where ``unknown`` marks rows with any unknown item.
    """

    def translate(cell: object) -> tuple[list[str], bool]:
        codes: list[str] = []
        bad = False
        for part in _split_cell(cell):
            code = lookup.get(part) or lookup.get(part.lower())
            if code is None:
                bad = True
            elif code not in codes:
                codes.append(code)
        return codes, bad

    translated = _per_distinct(values, translate)
    unknown = pd.Series([t[1] for t in translated], index=values.index, dtype=bool)
    return translated.map(lambda t: list(t[0])), unknown


def to_bool(values: pd.Series, *, default: bool = False) -> tuple[pd.Series, pd.Series]:
    """Parse 1/0, 是/否, true/false. Blank → ``default``. Returns ``(bools, invalid)``."""
    lowered = values.astype("str").str.strip().str.lower()
    blank = _blank(values)
    is_true = lowered.isin(BOOL_TRUE)
    is_false = lowered.isin(BOOL_FALSE)
    invalid = ~blank & ~is_true & ~is_false
    result = pd.Series(np.where(blank, default, is_true), index=values.index, dtype=bool)
    return result, invalid


def to_int(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parse whole numbers (``"10"``, ``"10.0"`` as Excel writes them). Returns ``(Int64, invalid)``."""
    blank = _blank(values)
    numbers = pd.to_numeric(values.astype("str").str.strip(), errors="coerce")
    whole = numbers.notna() & (numbers == np.floor(numbers.fillna(0)))
    invalid = ~blank & ~whole
    result = numbers.where(whole).astype("Float64").astype("Int64")
    return result, invalid


def to_float(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    blank = _blank(values)
    numbers = pd.to_numeric(values.astype("str").str.strip(), errors="coerce")
    invalid = ~blank & numbers.isna()
    return numbers.astype("float64"), invalid


_OFFSET = re.compile(r"(?:Z|[+-][0-9]{2}:?[0-9]{2})$")


def _date_text(values: pd.Series) -> pd.Series:
    """What clerks type → ISO 8601: 2026/1/5, 2026年1月5日 9:30 → 2026-01-05 09:30."""
    text = values.astype("str").str.strip()
    text = text.str.replace(r"^([0-9]{4})[-/.年]([0-9]{1,2})[-/.月]([0-9]{1,2})日?", r"\1-\2-\3", regex=True)
    text = text.str.replace(r"\s+", " ", regex=True)
    # Zero-pad lone digits (month, day, hour) — ISO 8601 parsing wants two.
    return text.str.replace(r"(?<![0-9.])([0-9])(?![0-9])", r"0\1", regex=True)


def to_datetime_local(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parse ``YYYY-MM-DD[ HH:MM[:SS]]`` as Asia/Shanghai local time, or honour an offset.

    Returns ``(tz-aware datetimes in Asia/Shanghai, invalid)``.
    """
    text = _date_text(values)
    blank = _blank(values)
    has_offset = text.str.contains(_OFFSET, regex=True, na=False) & ~blank
    result = pd.Series(pd.NaT, index=values.index, dtype=f"datetime64[us, {LOCAL_TZ_NAME}]")
    naive_part = text[~has_offset & ~blank]
    if len(naive_part):
        parsed = pd.to_datetime(naive_part, format="ISO8601", errors="coerce")
        result.loc[naive_part.index] = parsed.dt.tz_localize(LOCAL_TZ, ambiguous="NaT", nonexistent="NaT")
    offset_part = text[has_offset]
    if len(offset_part):
        parsed = pd.to_datetime(offset_part, format="ISO8601", errors="coerce", utc=True)
        result.loc[offset_part.index] = parsed.dt.tz_convert(LOCAL_TZ)
    invalid = ~blank & result.isna()
    return result, invalid


def to_date(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parse ``YYYY-MM-DD`` to naive midnight datetimes (a calendar date, no time zone).

    A time part (Excel writes ``2024-05-01 00:00:00``) is accepted and dropped.
    """
    text = _date_text(values)
    blank = _blank(values)
    parsed = pd.to_datetime(text.where(~blank), format="ISO8601", errors="coerce")
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert(LOCAL_TZ).dt.tz_localize(None)
    parsed = parsed.dt.normalize()
    invalid = ~blank & parsed.isna()
    return parsed, invalid


def not_in_future(when: pd.Series, *, now: dt.datetime | None = None, slack_minutes: int = 10) -> pd.Series:
    """True where ``when`` is NaT or not after now (+ slack for clock skew of field devices).

    Works on tz-aware (compared as instants) and naive (compared as local dates) values.
    """
    now = now or dt.datetime.now(LOCAL_TZ)
    if now.tzinfo is None:
        now = now.replace(tzinfo=LOCAL_TZ)
    tz = getattr(when.dt, "tz", None)
    if tz is None:
        today = pd.Timestamp(now.astimezone(LOCAL_TZ).date())
        return when.isna() | (when <= today)
    limit = pd.Timestamp(now) + pd.Timedelta(minutes=slack_minutes)
    return when.isna() | (when <= limit)


# --------------------------------------------------------------------------------------
# GB 11643-1999 citizen identity number: 6 digits area, 8 digits birth date YYYYMMDD,
# 3 digits sequence, 1 check character (ISO 7064 MOD 11-2).
# --------------------------------------------------------------------------------------

_ID_WEIGHTS = np.array([pow(2, 17 - i, 11) for i in range(17)], dtype=np.int64)
_ID_CHECK_CHARS = np.array(list("10X98765432"))
_ID_PATTERN = r"[0-9]{17}[0-9X]"
EARLIEST_BIRTH = pd.Timestamp("1900-01-01")

ID_OK = "ok"
ID_BAD_FORMAT = "id_number_format"
ID_BAD_BIRTH_DATE = "id_number_birth_date"
ID_BAD_CHECK_DIGIT = "id_number_check_digit"


def normalise_id_number(values: pd.Series) -> pd.Series:
    """Fold full-width digits, strip spaces and upper-case the trailing x (clerks type all three)."""
    return fold_width(values).str.replace(r"\s+", "", regex=True).str.upper()


def resident_id_check_char(first17: str) -> str:
    """Check character of the first 17 digits (scalar helper, used by generators and tests)."""
    digits = np.frombuffer(first17.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    return str(_ID_CHECK_CHARS[int((digits * _ID_WEIGHTS).sum() % 11)])


def resident_id_problems(values: pd.Series, *, today: dt.date | None = None) -> pd.Series:
    """Per row: ``"ok"`` or the code of the first problem of an 18-character resident ID.

    Blank cells are ``"ok"`` here: whether the field is required is the caller's business.
    Codes: id_number_format, id_number_birth_date (not a calendar date, before 1900 or in the
    future), id_number_check_digit.
    """
    today = today or dt.datetime.now(LOCAL_TZ).date()
    ids = normalise_id_number(values)
    blank = _blank(values)
    result = pd.Series(ID_OK, index=values.index, dtype="str")
    well_formed = ids.str.fullmatch(_ID_PATTERN).fillna(False).astype(bool) & ~blank
    result[~blank & ~well_formed] = ID_BAD_FORMAT
    if not well_formed.any():
        return result
    good = ids[well_formed]
    births = pd.to_datetime(good.str.slice(6, 14), format="%Y%m%d", errors="coerce")
    bad_birth = births.isna() | (births < EARLIEST_BIRTH) | (births > pd.Timestamp(today))
    # Vectorised MOD 11-2 over all well-formed IDs: bytes → digit matrix (n × 17).
    raw = np.frombuffer("".join(good.str.slice(0, 17).tolist()).encode("ascii"), dtype=np.uint8)
    digits = raw.reshape(-1, 17).astype(np.int64) - 48
    expected = _ID_CHECK_CHARS[(digits @ _ID_WEIGHTS) % 11]
    bad_check = good.str.slice(17, 18).to_numpy(dtype=object) != expected
    result.loc[good.index[bad_check]] = ID_BAD_CHECK_DIGIT
    # A bad birth date is the more telling message when both fail.
    result.loc[good.index[bad_birth.to_numpy()]] = ID_BAD_BIRTH_DATE
    return result


def valid_resident_id(values: pd.Series) -> pd.Series:
    """True where the cell is a valid resident ID (blank → False)."""
    return resident_id_problems(values).eq(ID_OK) & ~_blank(values)


# --------------------------------------------------------------------------------------
# Phones: mainland mobile 1[3-9]XXXXXXXXX, landline 0XXX-XXXXXXX(X) (area code 3-4 digits).
# --------------------------------------------------------------------------------------

MOBILE_PATTERN = r"1[3-9][0-9]{9}"
LANDLINE_PATTERN = r"0[0-9]{2,3}-[0-9]{7,8}"


def normalise_phone(values: pd.Series) -> pd.Series:
    """Fold full-width digits, drop spaces and a +86 / 0086 country prefix; keep the landline dash."""
    text = fold_width(values).str.replace(r"\s+", "", regex=True)
    text = text.str.replace(r"^(\+86|0086)-?", "", regex=True)
    return text.where(~_blank(values))


def valid_mobile(values: pd.Series) -> pd.Series:
    return normalise_phone(values).str.fullmatch(MOBILE_PATTERN).fillna(False).astype(bool)


def valid_phone(values: pd.Series) -> pd.Series:
    """True for a mainland mobile or a landline; blank → False."""
    phones = normalise_phone(values)
    ok = phones.str.fullmatch(MOBILE_PATTERN) | phones.str.fullmatch(LANDLINE_PATTERN)
    return ok.fillna(False).astype(bool)


EMAIL_PATTERN = r"[^@\s]+@[^@\s]+\.[^@\s]+"
URL_PATTERN = r"https?://\S+"


def valid_alert_address(channels: pd.Series, addresses: pd.Series) -> pd.Series:
    """The address fits its channel: sms → mobile, email → e-mail, the rest → http(s) URL.

    Rows without a channel are valid here (no alerts go to them).
    """
    text = addresses.astype("str").str.strip()
    is_email = text.str.fullmatch(EMAIL_PATTERN).fillna(False).astype(bool)
    is_url = text.str.fullmatch(URL_PATTERN).fillna(False).astype(bool)
    is_mobile = valid_mobile(addresses)
    ok = pd.Series(True, index=channels.index)
    ok = ok.where(channels.ne("sms").fillna(True), is_mobile)
    ok = ok.where(channels.ne("email").fillna(True), is_email)
    url_channels = channels.isin(["webhook", "wecom", "dingtalk", "feishu"])
    ok = ok.where(~url_channels, is_url)
    return ok.astype(bool)


# --------------------------------------------------------------------------------------
# References to known entities (grids, households, cadres, meters, villages, townships).
# --------------------------------------------------------------------------------------


def known_reference(values: pd.Series, known: Iterable[str]) -> pd.Series:
    """True where the cell is blank or names a known id."""
    known_set = set(known)
    stripped = values.astype("str").str.strip()
    return (_blank(values) | stripped.isin(known_set)).astype(bool)


def known_references(lists: pd.Series, known: Iterable[str]) -> pd.Series:
    """True where every id in a list cell is known (empty list → True)."""
    known_set = set(known)
    return lists.map(lambda ids: all(i in known_set for i in ids)).astype(bool)
