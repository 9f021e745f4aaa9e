"""Alert dispatch logic (告警派发): who gets a flag, what the message says, when it goes.

Pure functions, no I/O except reading the Jinja2 templates in ``templates/dispatch_alerts/``.
The lead's Prefect tasks call them and keep the outbox.

Rules
- ``route_flag``: the grid worker(s) of the household's grid (网格员); where none is available,
  the village federation chair (村/社区妇联主席); a critical flag also goes to the chair at once.
  Nobody at all: the supervisors (市/区妇联), and if there is none either, ``NoRecipientError`` —
  a flag is never dropped in silence. ``SIBIFANG_ALERT_WEBHOOK_URL`` replaces every
  recipient's channel with that one generic webhook (trials, tests); the outbox stores it as a
  marker without its key (``outbox.stored_address``) and the sender reads it again at send time.
- ``render_alert``: plain Chinese — what happened, where, what to do by when, the ack link.
  Never an ID number, never relatives' phones; the household's own phone and the evidence
  details stay behind the ack link. Sensitive kinds (纠纷, 家暴, 轻生) sent to a group robot or
  an SMS only say that there is an urgent matter and its reference code. A message longer than
  its channel takes (``channels.fits``) is fitted here, never cut by the channel: its free text
  gives way with a visible "…" (``ALERT_GIVE_WAY``), its header, deadline and ack link never.
- Quiet hours (免打扰时段) hold non-critical alerts until morning; critical ones go anyway.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from datetime import date as date_cls, datetime, timedelta, time as dtime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import jinja2
import pandas as pd

import templates as _templates_pkg
from sibifang.channels import ELLIPSIS, GROUP_ROBOT_KINDS, OutgoingMessage, fits, message_size
from sibifang.checks import FLAG_KIND_LABELS
from sibifang.settings import LOCAL_TZ

TEMPLATE_DIR = Path(_templates_pkg.__file__).parent

SEVERITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}
SEVERITY_LABEL = {"critical": "紧急", "high": "较急", "medium": "一般", "low": "提示"}
# How fast someone should act; stated in the message so "within how long" is never vague.
RESPONSE_HOURS = {"critical": 1, "high": 4, "medium": 24, "low": 72}

# Kinds whose details must not land in a group chat (or an SMS inbox others may read).
SENSITIVE_KINDS = frozenset({"dispute", "domestic_violence", "self_harm", "gambling"})
MASKED_CHANNEL_KINDS = GROUP_ROBOT_KINDS | {"sms"}

KIND_LABEL = FLAG_KIND_LABELS
METER_KINDS = frozenset({"inactivity", "sustained_drop", "missing_morning_routine", "night_activity",
                         "high_use", "meter_offline"})

COMPOUND_SURNAMES = ("欧阳", "司马", "诸葛", "上官", "东方", "皇甫", "尉迟", "公孙", "慕容", "长孙",
                     "宇文", "司徒", "夏侯", "轩辕", "令狐", "端木", "南宫", "西门", "独孤", "申屠")


class NoRecipientError(LookupError):
    """No cadre, chair or supervisor can receive this flag: a human must fix the registry."""


@dataclass(frozen=True)
class Recipient:
    recipient_id: str  # cadre_id
    name: str
    role: str  # grid_worker | village_chair | supervisor
    channel_kind: str  # webhook | wecom | dingtalk | feishu | sms | email
    address: str
    reason: str  # why she gets it: grid_worker | no_grid_worker | critical | fallback_supervisor
    overridden: bool = False  # channel replaced by SIBIFANG_ALERT_WEBHOOK_URL

    def __repr__(self) -> str:  # addresses may hold robot keys; keep them out of logs
        return f"Recipient({self.recipient_id!r}, {self.role!r}, {self.channel_kind!r}, reason={self.reason!r})"

    # Aliases under the outbox's column names.
    @property
    def cadre_id(self) -> str:
        return self.recipient_id

    @property
    def channel(self) -> str:
        return self.channel_kind


def _recipient_id(r: Any) -> str:
    """Duck-typed: a :class:`Recipient` or any object with ``cadre_id``/``channel`` (escalation)."""
    return str(getattr(r, "recipient_id", None) or getattr(r, "cadre_id", None) or "")


def _recipient_kind(r: Any) -> str:
    return str(getattr(r, "channel_kind", None) or getattr(r, "channel", None) or "").lower()


# --------------------------------------------------------------------------- routing


def _cell(value: Any) -> str:
    """A DataFrame cell as clean text: CSV blanks arrive as NaN, which ``str`` would make "nan"."""
    if value is None:
        return ""
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    return str(value).strip()


def _grids(cell: Any) -> set[str]:
    """``grid_ids`` as a set: a ``;``-list from CSV, or a real list from the database's JSON column."""
    if isinstance(cell, (list, tuple, set, frozenset)) or hasattr(cell, "tolist"):
        items = cell.tolist() if hasattr(cell, "tolist") else cell
        return {_cell(g) for g in items if _cell(g)}
    return {g.strip() for g in _cell(cell).replace(",", ";").split(";") if g.strip()}


def _on_leave(row: Mapping[str, Any], today) -> bool:
    start, end = _cell(row.get("on_leave_from")), _cell(row.get("on_leave_until"))
    if not start:
        return False
    start_d = pd.Timestamp(start).date()
    end_d = pd.Timestamp(end).date() if end else None
    return start_d <= today and (end_d is None or today <= end_d)


def _to_recipient(row: Mapping[str, Any], reason: str) -> Recipient:
    return Recipient(recipient_id=_cell(row["cadre_id"]), name=_cell(row.get("name")), role=_cell(row["role"]),
                     channel_kind=_cell(row.get("alert_channel")).lower(),
                     address=_cell(row.get("alert_address")), reason=reason)


def route_flag(flag: Mapping[str, Any], household: Mapping[str, Any], cadres: pd.DataFrame, *,
               settings: Any = None, now: datetime | None = None) -> list[Recipient]:
    """Recipients of one flag, most responsible first, without duplicates.

    ``cadres`` has the cadres.csv columns (cadre_id, name, role, grid_ids, alert_channel,
    alert_address, on_leave_from, on_leave_until). A cadre on leave on ``now``'s date (default:
    the flag's ``detected_at``) or without a usable channel is skipped — her grid counts as
    having no grid worker. ``settings`` defaults to ``get_settings()``.
    """
    if settings is None:
        from sibifang.settings import get_settings
        settings = get_settings()
    grid_id = _cell(household.get("grid_id"))
    today = _local(now or flag.get("detected_at") or datetime.now(LOCAL_TZ)).date()
    rows = [dict(r) for r in cadres.to_dict("records")] if cadres is not None and len(cadres) else []

    def usable(r: Mapping[str, Any]) -> bool:
        has_channel = bool(_cell(r.get("alert_channel"))) and bool(_cell(r.get("alert_address")))
        # With the override every recipient goes to the one webhook, so her own channel is irrelevant.
        return (has_channel or bool(settings.alert_webhook_url)) and not _on_leave(r, today)

    def covering(role: str) -> list[dict]:
        return [r for r in rows if _cell(r.get("role")) == role and grid_id in _grids(r.get("grid_ids")) and usable(r)]

    out: list[Recipient] = [_to_recipient(r, "grid_worker") for r in covering("grid_worker")]
    chairs = covering("village_chair")
    if not out:
        out += [_to_recipient(r, "no_grid_worker") for r in chairs]
    elif str(flag.get("severity")) == "critical":
        out += [_to_recipient(r, "critical") for r in chairs]
    if not out:
        out += [_to_recipient(r, "fallback_supervisor") for r in rows
                if _cell(r.get("role")) == "supervisor" and usable(r)]
    if not out:
        raise NoRecipientError(f"标记 {flag.get('flag_id')} 所在网格 {grid_id or '(空)'} 没有可接收告警的网格员、"
                               f"村妇联主席或上级妇联,请补充干部名册")
    seen: set[str] = set()
    unique = [r for r in out if not (r.recipient_id in seen or seen.add(r.recipient_id))]
    if settings.alert_webhook_url:
        unique = [replace(r, channel_kind="webhook", address=settings.alert_webhook_url, overridden=True)
                  for r in unique]
    return unique


# --------------------------------------------------------------------------- wording helpers


def _local(value: Any) -> datetime:
    """Any timestamp (str, datetime, pandas) as an aware Asia/Shanghai datetime; naive = local."""
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        ts = ts.tz_localize(LOCAL_TZ)
    return ts.tz_convert(LOCAL_TZ).to_pydatetime()


def stored_moment(value: Any) -> datetime | None:
    """A moment as the database stores it: naive Asia/Shanghai local time. An aware one (a flow
    parameter given in UTC, Prefect's scheduled time) is converted, not stripped of its zone;
    a naive one is local already and kept. For every entry point that takes a ``now``."""
    return None if value is None else _local(value).replace(tzinfo=None)


def surname_of(name: str) -> str:
    name = (name or "").strip()
    for compound in COMPOUND_SURNAMES:
        if name.startswith(compound) and len(name) > 2:
            return compound
    return name[:1]


def _sex(value: Any) -> str | None:
    v = str(value or "").strip().lower()
    if v in ("f", "female", "女", "w", "2"):
        return "F"
    if v in ("m", "male", "男", "1"):
        return "M"
    return None


def honorific(head_name: str, birth_year: Any = None, sex: Any = None, *, year: int | None = None) -> str:
    """How a grid worker speaks of the head of household: 李奶奶, 王叔叔, else 户主李某."""
    surname = surname_of(head_name)
    if not surname:
        return "该户"
    s = _sex(sex)
    age = None
    if birth_year is not None and not (isinstance(birth_year, float) and pd.isna(birth_year)):
        try:
            age = (year or datetime.now(LOCAL_TZ).year) - int(birth_year)
        except (TypeError, ValueError):
            age = None
    if s is None or age is None:
        return f"户主{surname}某"
    if age >= 60:
        return surname + ("奶奶" if s == "F" else "爷爷")
    if age >= 40:
        return surname + ("阿姨" if s == "F" else "叔叔")
    return surname + ("女士" if s == "F" else "先生")


def _clock_phrase(t: datetime) -> tuple[str, str]:
    h, m = t.hour, t.minute
    if h < 5:
        part = "凌晨"
    elif h < 9:
        part = "早上"
    elif h < 12:
        part = "上午"
    elif h < 13:
        part = "中午"
    elif h < 18:
        part = "下午"
    else:
        part = "晚上"
    h12 = h if h <= 12 else h - 12
    minutes = "" if m == 0 else ("半" if m == 30 else f"{m}分")
    return part, f"{h12}点{minutes}"


def when_phrase(t: Any, ref: Any) -> str:
    """``昨晚8点`` / ``今天下午3点半`` / ``11月20日上午9点`` relative to ``ref``."""
    t, ref = _local(t), _local(ref)
    part, clock = _clock_phrase(t)
    days = (ref.date() - t.date()).days
    if days == 0:
        return ("今晚" if part == "晚上" else "今天" + part) + clock
    if days == 1:
        return ("昨晚" if part == "晚上" else "昨天" + part) + clock
    return f"{t.month}月{t.day}日{part}{clock}"


def _kwh(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return None
    x = float(v)
    return f"{x:.2f}".rstrip("0").rstrip(".") if x < 10 else f"{x:.0f}"


def reference_code(flag_or_alert_id: Any) -> str:
    """Short code a person can read out on the phone, e.g. ``A-7K3M9Q``. Stable per alert."""
    digest = hashlib.sha256(str(flag_or_alert_id).encode("utf-8")).digest()
    alphabet = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"  # no 0/O, 1/I/L: read aloud without confusion
    n = int.from_bytes(digest[:8], "big")
    chars = []
    for _ in range(6):
        n, r = divmod(n, len(alphabet))
        chars.append(alphabet[r])
    return "A-" + "".join(chars)


def what_happened(flag: Mapping[str, Any], who: str, now: Any = None) -> str:
    """One line: what happened at ``who``'s home. Wording: ``templates/dispatch_alerts/what_happened.j2``.

    ``now``: when the message is read (send time); "昨晚" is relative to it.
    """
    kind = str(flag.get("kind"))
    ref = now or flag.get("detected_at") or flag.get("start")
    since = when_phrase(flag["start"], ref) if flag.get("start") is not None else None
    return _render_line("what_happened.j2", kind=kind, who=who, since=since,
                        expected=_kwh(flag.get("expected_kwh_per_h")), observed=_kwh(flag.get("observed_kwh_per_h")),
                        sensitive=kind in SENSITIVE_KINDS, kind_label=KIND_LABEL.get(kind, ""))


def what_to_do(flag: Mapping[str, Any], recipient_role: str = "grid_worker") -> str:
    """One line: what the recipient should do, within how long. Wording: ``templates/dispatch_alerts/what_to_do.j2``."""
    kind, severity = str(flag.get("kind")), str(flag.get("severity"))
    backup = "网格员或上级妇联" if recipient_role == "village_chair" else "村妇联主席"
    return _render_line("what_to_do.j2", kind=kind, severity=severity, hours=RESPONSE_HOURS.get(severity, 24),
                        meter=kind in METER_KINDS, sensitive=kind in SENSITIVE_KINDS, backup=backup)


# --------------------------------------------------------------------------- rendering

_ENV: jinja2.Environment | None = None


def template_env() -> jinja2.Environment:
    global _ENV
    if _ENV is None:
        # Plain text and robot markdown, not HTML: no autoescape. StrictUndefined so a missing
        # field fails the test instead of sending a message with a hole in it.
        _ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
                                  undefined=jinja2.StrictUndefined, autoescape=False,
                                  trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
    return _ENV


def _render(name: str, **ctx) -> str:
    return template_env().get_template(f"dispatch_alerts/{name}").render(**ctx).strip()


def _render_line(name: str, **ctx) -> str:
    """A one-line phrase template, unstripped: its whitespace control keeps newlines out, and the
    caller's values (``who``) come back exactly as given."""
    return template_env().get_template(f"dispatch_alerts/{name}").render(**ctx)


def is_sensitive(flag: Mapping[str, Any]) -> bool:
    return str(flag.get("kind")) in SENSITIVE_KINDS or bool(flag.get("sensitive"))


def must_mask(flag: Mapping[str, Any], recipient: Recipient) -> bool:
    return is_sensitive(flag) and _recipient_kind(recipient) in MASKED_CHANNEL_KINDS


def alert_id_for(flag: Mapping[str, Any], recipient: Recipient) -> str:
    return f"{flag['flag_id']}:{_recipient_id(recipient)}"


# A resident ID number (身份证号) never leaves in a message, even when a cadre typed one into an
# address or a visit note: 18 characters (17 digits + digit or X) or the old 15 digits, in
# half- or full-width digits, written whole or in groups split by spaces, hyphens or dots
# ("330203 19400101 1234", "330203.19400101.1234"), also run together with a number beside it
# ("33020319400101123413800138000": the spaces lost). Matched on a copy with the digits folded to
# ASCII, one character for one, so the rest of the text keeps its full-width punctuation.
# A run of digits that is exactly an ID's length is hidden whole, as before (with a dot in it,
# only if it reads as an ID: "9.83000000000001" is a number). Inside a longer run,
# any 18 or 15 characters that read as an ID (a province's region code, a real birth date) are
# candidates; where candidates overlap (a window across an ID and the phone beside it can read
# as one too), the likelier is hidden: a valid check digit, then ends on the run's groups, then
# 18 characters, then the first. Every candidate is hidden or overlaps one hidden, so no ID
# survives whole, and the digits beside an ID (a phone number) stay.
# Also a slash, a tab, an underscore or a middle dot between the groups (a note copied from a form
# or a spreadsheet cell: "330203/19400101/1234"), folded to a space.
_FOLD = str.maketrans({**{chr(0xFF10 + i): str(i) for i in range(10)}, "Ｘ": "X", "ｘ": "x", "\u3000": " ",
                       "－": "-", "—": "-", "–": "-", "‐": "-", "‑": "-", "．": ".", "\t": " ", "/": " ",
                       "／": " ", "_": " ", "＿": " ", "·": " ", "・": " "})
_SEPARATOR = re.compile(r"[ .\-]")
_DIGIT_GROUPS = re.compile(r"[0-9](?:[ .\-]{0,3}[0-9Xx])*")
_ID_NUMBER = re.compile(r"[0-9]{17}[0-9Xx]|[0-9]{15}")
# The first two digits of a region code (行政区划代码): the provinces, 11 Beijing .. 82 Macao.
_PROVINCES = frozenset({"11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37",
                        "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64",
                        "65", "71", "81", "82"})
ID_MASK = "［身份证号已隐去］"


def _birth_date(year: str, month: str, day: str) -> bool:
    try:
        date_cls(int(year), int(month), int(day))
    except ValueError:
        return False
    return True


def _reads_as_id(chars: str) -> bool:
    """18 (17 digits + digit/X) or 15 digits with a province's region code and a real birth date."""
    if chars[:2] not in _PROVINCES or not _ID_NUMBER.fullmatch(chars):
        return False
    if len(chars) == 18:
        return chars[6:8] in ("19", "20") and _birth_date(chars[6:10], chars[10:12], chars[12:14])
    return _birth_date("19" + chars[6:8], chars[8:10], chars[10:12])


_CHECK_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def _check_digit_ok(chars: str) -> bool:
    if len(chars) != 18:
        return False
    total = sum(int(c) * w for c, w in zip(chars[:17], _CHECK_WEIGHTS))
    return "10X98765432"[total % 11] == chars[17].upper()


def _id_spans(run: str) -> list[tuple[int, int]]:
    """Where ID numbers are in one run of digits and separators, as (start, end) in ``run``."""
    kept = [(i, c) for i, c in enumerate(run) if not _SEPARATOR.fullmatch(c)]
    chars = "".join(c for _, c in kept)
    # a dot may also be a decimal point ("9.83000000000001"): such a run is hidden whole only if
    # it reads as an ID
    if _ID_NUMBER.fullmatch(chars) and ("." not in run or _reads_as_id(chars)):
        return [(0, len(run))]
    # group boundaries, as indices into ``chars``: the run's ends and where a separator stood
    bounds = {0, len(chars)} | {k for k in range(1, len(chars)) if kept[k][0] != kept[k - 1][0] + 1}
    cands = [(k, k + n) for n in (18, 15) for k in range(len(chars) - n + 1) if _reads_as_id(chars[k:k + n])]
    cands.sort(key=lambda w: (not _check_digit_ok(chars[w[0]:w[1]]), -((w[0] in bounds) + (w[1] in bounds)),
                              -(w[1] - w[0]), w[0]))
    chosen: list[tuple[int, int]] = []
    for start, end in cands:
        if all(end <= a or b <= start for a, b in chosen):
            chosen.append((start, end))
    return sorted((kept[a][0], kept[b - 1][0] + 1) for a, b in chosen)


def scrub_id_numbers(text: str) -> str:
    folded = text.translate(_FOLD)
    out, last = [], 0
    for m in _DIGIT_GROUPS.finditer(folded):
        for start, end in _id_spans(m.group()):
            out += [text[last:m.start() + start], ID_MASK]
            last = m.start() + end
    return "".join(out) + text[last:]


def _place(village: str, grid: str) -> str:
    return grid if village and grid.startswith(village) else village + grid


def _context(flag, household, recipient, ack_url, alert_id, now=None, sent=None) -> dict[str, Any]:
    """``now``: when it is read (its time phrases); ``sent``: when it went out (default ``now``)."""
    severity = str(flag.get("severity") or "medium")
    detected = _local(flag.get("detected_at") or flag.get("start") or datetime.now(LOCAL_TZ))
    who = honorific(str(household.get("head_name") or ""), household.get("birth_year"), household.get("sex"),
                    year=detected.year)
    # From when it reaches her: an alert held over quiet hours gets its whole time from the
    # morning send, not a deadline that passed in the night
    sent = sent if sent is not None else now
    deadline = max(detected, _local(sent) if sent is not None else detected) + timedelta(
        hours=RESPONSE_HOURS.get(severity, 24))
    kind = str(flag.get("kind"))
    # Evidence text comes from the detector for meter kinds; visit findings may hold personal
    # details, so they stay behind the ack link.
    evidence = scrub_id_numbers(str(flag.get("evidence") or "").strip()) if kind in METER_KINDS else ""
    return {
        "alert_id": alert_id,
        # Per flag, not per recipient: the grid worker and the chair can talk about one code.
        "ref": flag.get("reference_code") or reference_code(flag.get("flag_id") or alert_id),
        "severity": severity,
        "severity_label": SEVERITY_LABEL.get(severity, severity),
        "critical": severity == "critical",
        "kind_label": KIND_LABEL.get(kind, "需关注事项"),
        "who": who,
        "what": what_happened(flag, who, now),
        "evidence": evidence,
        "grid_name": str(household.get("grid_name") or ""),
        "village_name": str(household.get("village_name") or ""),
        # "万堤村第2网格", not "万堤村万堤村第2网格": grid names often already start with the village's
        "place": _place(str(household.get("village_name") or ""), str(household.get("grid_name") or "")),
        "address": scrub_id_numbers(str(household.get("address") or "")),
        "todo": what_to_do(flag, str(getattr(recipient, "role", "") or "")),
        "deadline": f"{deadline.month}月{deadline.day}日{deadline:%H:%M}",
        "ack_url": ack_url,
        "recipient_name": str(getattr(recipient, "name", "") or ""),
    }


# --------------------------------------------------------------------------- fitting a channel's limit

# The free-text parts of a message that give way, in this order, when it is longer than its
# channel takes (``channels.fits``), each cut with a visible "…" and kept to at least so many
# characters: the detector's evidence first (the page behind the link shows it whole), then the
# registry's address, then the wording of what happened and what to do (an SMS whose link is
# long). The header, the place, the deadline, the code and the ack link are never shortened.
ALERT_GIVE_WAY = (("evidence", 12), ("address", 12), ("what", 12), ("todo", 12))
DIGEST_ITEM_GIVE_WAY = (("address", 12), ("what", 12), ("todo", 12))


def _cut(text: str, keep: int) -> str:
    # scrubbed again: a cut inside a run of digits may leave one of exactly an ID's length, which
    # the scrubber hides whole (it was part of a longer run before)
    return text if len(text) <= keep else scrub_id_numbers(text[:keep]) + ELLIPSIS


def _fitted(render, parts: Sequence[tuple[dict, str, int]], fit) -> str:
    """``render()`` after cutting the ``parts`` (``(context, key, at least)``, in the order they
    give way) just enough for ``fit``; as first rendered when it fits, or when even every part at
    its least does not (the channel then refuses it, ``channels.fit_text``: never a cut link)."""
    first = render()
    if fit(first):
        return first
    before = [(ctx, key, ctx.get(key)) for ctx, key, _ in parts]
    for ctx, key, keep in parts:
        full = str(ctx.get(key) or "")
        if len(full) <= keep:
            continue
        ctx[key] = _cut(full, keep)
        if not fit(render()):
            continue  # this part at its least is not enough: the next one gives way too
        lo, hi = keep, len(full) - 1  # the most of it that fits: lo fits, hi + 1 does not
        while lo < hi:
            mid = (lo + hi + 1) // 2
            ctx[key] = _cut(full, mid)
            if fit(render()):
                lo = mid
            else:
                hi = mid - 1
        ctx[key] = _cut(full, lo)
        return render()
    for ctx, key, value in before:
        ctx[key] = value
    return first


def _fits_with_link(kind: str, ack_url: str, link_length: int | None):
    """Whether a body fits channel ``kind`` once ``ack_url`` in it is the link sent: a body stored
    in the outbox holds the link's slot, filled at send time with a link ``link_length`` long."""
    if link_length is None:
        return lambda body: fits(kind, body)
    stand_in = "x" * link_length
    return lambda body: fits(kind, body.replace(ack_url, stand_in))


def render_alert(flag: Mapping[str, Any], household: Mapping[str, Any], recipient: Recipient, ack_url: str,
                 *, alert_id: str | None = None, now: datetime | None = None,
                 link_length: int | None = None) -> OutgoingMessage:
    """One message for one recipient, fitted to what the recipient's channel takes in one message
    (``ALERT_GIVE_WAY``).

    ``alert_id`` defaults to ``"<flag_id>:<recipient_id>"``; ``now`` is the send time (default
    the flag's ``detected_at``), so an alert held over quiet hours still says "昨晚8点" right.
    ``link_length``: when ``ack_url`` is the outbox's slot, the length of the link that fills it.
    """
    alert_id = alert_id or alert_id_for(flag, recipient)
    ctx = _context(flag, household, recipient, ack_url, alert_id, now)
    base = "alert_masked" if must_mask(flag, recipient) else "alert"
    kind = _recipient_kind(recipient)
    fit = _fits_with_link(kind, ack_url, link_length)
    give_way = [(ctx, key, keep) for key, keep in ALERT_GIVE_WAY]
    markdown = None
    if kind in ("wecom", "dingtalk", "webhook"):
        # what a robot shows; fitted first, so the plain text shortens the same parts
        markdown = _fitted(lambda: _render(f"{base}.md.j2", **ctx), give_way, fit)
    # SMS: one short plain line whose wording gives way so the ack link goes whole.
    text_template = f"{base}.sms.j2" if kind == "sms" else f"{base}.text.j2"
    text = _fitted(lambda: _render(text_template, **ctx), give_way, fit)
    return OutgoingMessage(alert_id=alert_id, dedup_key=alert_id, severity=ctx["severity"],
                           title=_render(f"{base}.title.j2", **ctx), text=text, markdown=markdown)


def least_sms_length(link_length: int) -> int:
    """How long the shortest SMS alert is whose ack link is ``link_length`` long: each SMS wording
    (plain and masked; both are sent) with the parts that give way at their least
    (``ALERT_GIVE_WAY``) and the longest deadline (two-digit month and day). Past the SMS limit no
    SMS alert can carry its link whole: each would be refused at send time (``channels.fit_text``)."""
    at = datetime(2026, 12, 31, 10, 0)
    flag = {"flag_id": "F", "kind": "inactivity", "severity": "critical", "start": at, "detected_at": at}
    recipient = Recipient("", "", "village_chair", "sms", "", "check")
    ctx = _context(flag, {"head_name": "李"}, recipient, "x" * link_length, "A", now=at)
    for key, keep in ALERT_GIVE_WAY:
        ctx[key] = _cut("x" * (keep + 1), keep)
    return max(message_size("sms", _render(f"{base}.sms.j2", **ctx)) for base in ("alert", "alert_masked"))


def alert_page_context(flag: Mapping[str, Any], household: Mapping[str, Any], recipient_role: str,
                       alert_id: str, now: datetime | None = None, sent: datetime | None = None) -> dict[str, Any]:
    """What the page behind an alert's signed link shows (预警详情页): the whole alert, never
    masked, since the link is the recipient's own, with a visit finding's evidence that messages
    leave out (ID numbers still scrubbed). ``sent``: when the alert went out, which its deadline
    counts from (as in the message). Wording: ``templates/dispatch_alerts/ack_page.html.j2``."""
    recipient = Recipient("", "", recipient_role or "grid_worker", "web", "", "link")
    ctx = _context(flag, household, recipient, "", alert_id, now, sent)
    ctx["evidence"] = scrub_id_numbers(str(flag.get("evidence") or "").strip())
    return ctx


# --------------------------------------------------------------------------- digest


@dataclass(frozen=True)
class PendingAlert:
    """An alert waiting in the outbox (held for quiet hours or batched into a digest)."""
    alert_id: str
    flag: Mapping[str, Any]
    household: Mapping[str, Any]
    recipient: Recipient
    ack_url: str


def digest_order(alerts: Iterable[PendingAlert]) -> list[PendingAlert]:
    return sorted(alerts, key=lambda a: (SEVERITY_RANK.get(str(a.flag.get("severity")), 9),
                                         _local(a.flag.get("detected_at") or a.flag.get("start")),
                                         a.alert_id))


def build_digest(alerts: Sequence[PendingAlert], recipient: Recipient, *, now: datetime | None = None
                 ) -> OutgoingMessage | None:
    """One message listing this recipient's non-critical alerts, most urgent first.

    Critical alerts are left out (they go on their own, at once); ``None`` when nothing is left.
    A digest of one alert longer than the recipient's channel takes is fitted to it
    (``DIGEST_ITEM_GIVE_WAY``); one of several is left as it is, for the sender to split
    (``tasks.dispatch_alerts._digest_parts``): whole items rather than shortened ones.
    """
    mine = [a for a in alerts if _recipient_id(a.recipient) == _recipient_id(recipient)
            and str(a.flag.get("severity")) != "critical"]
    if not mine:
        return None
    items = []
    for a in digest_order(mine):
        ctx = _context(a.flag, a.household, recipient, a.ack_url, a.alert_id, now)
        ctx["masked"] = must_mask(a.flag, recipient)
        items.append(ctx)
    ids = ",".join(sorted(a.alert_id for a in mine))
    digest_id = f"digest:{_recipient_id(recipient)}:{hashlib.sha256(ids.encode()).hexdigest()[:12]}"
    when = _local(now or datetime.now(LOCAL_TZ))
    ctx = {"items": items, "count": len(items), "recipient_name": str(getattr(recipient, "name", "") or ""),
           "date": f"{when.month}月{when.day}日"}
    top = items[0]["severity"]
    kind = _recipient_kind(recipient)

    def fit(body: str) -> bool:  # the items' links are in it already, signed for this send
        return fits(kind, body)

    give_way = [(items[0], key, keep) for key, keep in DIGEST_ITEM_GIVE_WAY] if len(items) == 1 else []
    markdown = (_fitted(lambda: _render("digest.md.j2", **ctx), give_way, fit)
                if kind in ("wecom", "dingtalk", "webhook") else None)
    return OutgoingMessage(alert_id=digest_id, dedup_key=digest_id, severity=top,
                           title=f"待处理提醒汇总（{len(items)}条）",
                           text=_fitted(lambda: _render("digest.text.j2", **ctx), give_way, fit), markdown=markdown)


def group_by_recipient(alerts: Iterable[PendingAlert]) -> dict[str, list[PendingAlert]]:
    out: dict[str, list[PendingAlert]] = {}
    for a in alerts:
        out.setdefault(_recipient_id(a.recipient), []).append(a)
    return out


# --------------------------------------------------------------------------- quiet hours


def _quiet_bounds(settings: Any, start: int | None, end: int | None) -> tuple[int, int]:
    if start is None or end is None:
        if settings is None:
            from sibifang.settings import get_settings
            settings = get_settings()
        start = settings.quiet_hours_start if start is None else start
        end = settings.quiet_hours_end if end is None else end
    return int(start), int(end)


def in_quiet_hours(now: datetime, *, start: int | None = None, end: int | None = None, settings: Any = None) -> bool:
    """True between ``start`` and ``end`` o'clock local time (22–7 by default; may wrap midnight)."""
    start, end = _quiet_bounds(settings, start, end)
    if start == end:
        return False
    h = _local(now).hour
    return start <= h < end if start < end else (h >= start or h < end)


def release_time(now: datetime, *, start: int | None = None, end: int | None = None, settings: Any = None) -> datetime:
    """When a held non-critical alert may go: ``now`` outside quiet hours, else the next morning end hour."""
    start, end = _quiet_bounds(settings, start, end)
    local = _local(now)
    if not in_quiet_hours(local, start=start, end=end):
        return local
    release = datetime.combine(local.date(), dtime(end), tzinfo=LOCAL_TZ)
    if release <= local:
        release += timedelta(days=1)
    return release


def should_hold(flag: Mapping[str, Any], now: datetime, **quiet) -> bool:
    """Hold this alert until ``release_time``? Critical alerts are never held."""
    return str(flag.get("severity")) != "critical" and in_quiet_hours(now, **quiet)
