"""Risk flagging (风险研判): meter episodes, visit cues and overdue visits become flags and a level.

Pure functions over frames. The meter detectors themselves are ``sibifang.detectors``; this
module turns their episodes into flags that are raised once per episode (a later run that
sees the same episode extends it instead of raising it again), reads dispute and safety
cues in visit notes, and combines everything into a household level 红/橙/黄/绿.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pandas as pd

from templates import wording
from sibifang.records import stable_id

def evidence_sentence(kind: str, **fields) -> str:
    """A visit-derived flag's evidence, worded in ``templates/flag_risks/visit_evidence.toml``."""
    return wording("flag_risks/visit_evidence.toml")[kind].format(**fields)

LEXICON_FILE = Path(__file__).with_name("risk_lexicon.toml")
_GAP = "\ue000"  # stands for a space after an entry's negation (Lexicon.find); no whitespace, no punctuation
FLAG_COLUMNS = ["flag_id", "dedup_key", "household_id", "meter_id", "kind", "severity", "score", "start",
                "detected_at", "end", "evidence", "details"]
SEVERITY_POINTS = {"critical": 60, "high": 35, "medium": 20, "low": 10}
LEVELS = (("红", 60), ("橙", 35), ("黄", 15), ("绿", 0))
# Episodes of the same kind closer than this are one situation, not two flags.
MERGE_GAP = timedelta(hours=12)


@dataclass(frozen=True)
class Cue:
    """A word in a visit note that signals a risk (风险线索)."""

    term: str
    kind: str  # dispute | domestic_violence | self_harm | gambling | hardship
    severity: str


@dataclass
class Lexicon:
    """The visit-note lexicon (走访记录风险词库, ``risk_lexicon.toml``): cues and how a note
    negates or asks about them."""

    cues: list[Cue] = field(default_factory=list)
    negations: list[str] = field(default_factory=list)
    fillers: list[str] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    answers_no: list[str] = field(default_factory=list)
    list_joiners: list[str] = field(default_factory=list)
    traditional: dict[str, str] = field(default_factory=dict)
    limited_negations: dict[str, list[str]] = field(default_factory=dict)  # negation -> the kinds it denies
    not_negations: list[str] = field(default_factory=list)
    campaign_prefixes: list[str] = field(default_factory=list)
    not_campaign_prefixes: list[str] = field(default_factory=list)
    campaign_words: list[str] = field(default_factory=list)
    resolved_kinds: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    resolved_unless: list[str] = field(default_factory=list)
    harmless: list[str] = field(default_factory=list)

    _LISTS = ("negations", "fillers", "questions", "answers_no", "list_joiners", "not_negations", "campaign_prefixes",
              "not_campaign_prefixes", "campaign_words", "resolved_kinds", "resolved", "resolved_unless", "harmless")

    @classmethod
    def load(cls, path: Path | None = None) -> Lexicon:
        data = tomllib.loads((path or LEXICON_FILE).read_text(encoding="utf-8"))
        cues = [Cue(term, kind, spec["severity"]) for kind, spec in data["cues"].items() for term in spec["terms"]]
        return cls(cues=cues, traditional=dict(data.get("traditional", {})),
                   limited_negations={w: list(k) for w, k in data.get("limited_negations", {}).items()},
                   **{name: list(data.get(name, [])) for name in cls._LISTS})

    @staticmethod
    def _alternatives(words: list[str]) -> str:
        return "|".join(map(re.escape, sorted(words, key=len, reverse=True)))

    def find(self, text: str | None) -> list[Cue]:
        """Cues present in a note, in lexicon order, one per term.

        Skipped: a negated mention ("无家暴", "没有发现家暴", "无明显矛盾", "无殴打、打骂", "无矛盾纠纷"), a form's
        question answered no ("有无家暴：无", "是否有家暴情况：否"), a form's entry answered no
        ("家暴：无", "赌博：没有"; the answer ends there), and a term inside a longer one
        that is itself a cue ("无婆媳矛盾" is no "矛盾"). Kept, since a missed danger costs more
        than a needless look: a negation that belongs to another word ("丈夫长期无业，家暴"), the
        answer to the entry before ("低保：无 家暴：有", "低保：无家暴：有"), a question answered yes or not at
        all. A negation opening a labelled answer negates ("备注：无家暴"). Also skipped: a quarrel
        denied ("没吵架", "从不吵架"; not "不得不离婚"), a campaign's or a law's name ("参加反赌博宣传",
        "学习反家庭暴力法"), a dispute settled right after it ("婆媳矛盾已化解"; not "矛盾已调解但昨晚又
        打了"), a word that holds a term and is none ("动手术"); each mention is judged on its own,
        so a real cue beside a denied one ("没吵架，但丈夫殴打她") still counts.
        Read with spaces within a line removed, lines as sentences, full-width forms folded and
        traditional characters as simplified."""
        if not text:
            return []
        t = unicodedata.normalize("NFKC", str(text)).translate(str.maketrans(self.traditional))
        t = re.sub(r"\s*\n\s*", "。", t)
        # a space before a form's next entry ("家暴：未处理 备注：…") ends the answer before it, as a
        # line's end does: read without it, "未" would answer an entry "处理备注"
        t = re.sub(r"[^\S\n]+(?=[^\s，。；,;:]{1,6}:)", "；", t)
        # a space after an entry's "无" parts it from what follows: "低保：无 家暴后" is no "无家暴". It is
        # kept as a mark, not read as the end of the answer: "家暴：未 处理" is "家暴：未处理", a cue
        if self.negations:
            t = re.sub(f":((?:{self._alternatives(self.negations)}))[^\\S\\n]+(?=\\S)", f":\\1{_GAP}", t)
        t = re.sub(r"[^\S\n]+", "", t)
        # longest first where mentions overlap: a term inside a longer cue belongs to that cue, and one
        # inside a harmless word ("动手术", "打电话") to that word, which is then no cue at all
        mentions: list[tuple[int, int, Cue]] = []
        words = [*self.cues, *(Cue(w, "", "") for w in self.harmless)]
        for s, e, cue in sorted(((m.start(), m.end(), c) for c in words
                                 for m in re.finditer(re.escape(c.term), t)), key=lambda o: o[0] - o[1]):
            if not any(s < te and ts < e for ts, te, _ in mentions):
                mentions.append((s, e, cue))
        mentions = [m for m in mentions if m[2].kind]
        fill = f"(?:{self._alternatives(self.fillers)})*" if self.fillers else ""
        # the negations of each kind: some deny only some kinds ("不吵架", not "不再动手")
        negated_kind = {k: re.compile(f"(?:{self._alternatives(words)}){fill}$")
                        for k in {c.kind for c in self.cues}
                        if (words := [*self.negations, *(w for w, ks in self.limited_negations.items() if k in ks)])}
        # "不得不离婚", "保证不再动手": the negation belongs to another word and the cue stands
        unnegated = re.compile(f"(?:{self._alternatives(self.not_negations)}){fill}$") if self.not_negations \
            else None
        # a negation right after ":" opens that entry's answer ("备注：无家暴"), unless this term is
        # an entry of its own with its own answer ("低保：无家暴：有")
        after_colon = re.compile(f":(?:{self._alternatives(self.negations)}){fill}$") if self.negations else None
        own_entry = re.compile(r"^[^，。；,;:]{0,4}:")
        asked = re.compile(f"(?:{self._alternatives(self.questions)}){fill}$") if self.questions else None
        # a "no" answer ends there, or the next entry begins, written on without a space, with a term
        # of its own ("家暴：无赌博：无"): "离婚：无法协商", "家暴：未处理", "是否家暴：无法确认" are no "no"
        terms = self._alternatives([c.term for c in self.cues]) or "(?!)"
        answer_ends = f"(?={_GAP}?(?:$|[，。；、,;.!?！？])|(?:{terms})[^，。；,;:]{{0,4}}:)"
        # the answer may follow a word or two of the question ("是否有家暴情况：否")
        answered_no = re.compile(f"^[^，。；,;:]{{0,4}}:?(?:{self._alternatives(self.answers_no)}){answer_ends}") \
            if self.answers_no else None
        joined = re.compile(f"(?:{self._alternatives(self.list_joiners)})") if self.list_joiners else None
        # a form's entry answered no right after its colon ("家暴：无", "家暴情况：未发现")
        entry_no = re.compile(f"^[^，。；,;:]{{0,4}}:(?:{self._alternatives(self.answers_no)}){fill}{answer_ends}") \
            if self.answers_no else None
        campaign, settled = self._campaign(t), self._settled(t, fill)
        present: set[str] = set()
        prev_end, prev_negated, prev_kind = None, False, None
        for s, e, cue in sorted(mentions, key=lambda o: o[0]):
            before = t[:s]
            if asked is not None and asked.search(before):
                no = answered_no is not None and answered_no.search(t[e:]) is not None
            else:
                no = bool(cue.kind in negated_kind and negated_kind[cue.kind].search(before)
                          and not (unnegated is not None and unnegated.search(before))
                          and not (after_colon.search(before) and own_entry.search(t[e:]))) or (
                    # a list ("无殴打、打骂") or terms of one kind written together ("无矛盾纠纷"); a
                    # cue of another kind right after is a fact of its own ("未离婚家暴多年")
                    prev_negated and (t[prev_end:s] == "" and cue.kind == prev_kind or joined is not None
                                      and joined.fullmatch(t[prev_end:s]) is not None)) or (
                    entry_no is not None and entry_no.search(t[e:]) is not None)
            no = no or campaign(s, e) or settled(e, cue)
            prev_end, prev_negated, prev_kind = e, no, cue.kind
            if not no:
                present.add(cue.term)
        return [c for c in self.cues if c.term in present]

    def _campaign(self, t: str):
        """``(start, end) -> bool``: the mention at ``t[start:end]`` names a campaign or a law
        ("参加反赌博宣传", "学习反家庭暴力法"): a campaign prefix right before it, not a word of its own
        ("违反"), and a campaign word in its clause."""
        if not (self.campaign_prefixes and self.campaign_words):
            return lambda s, e: False
        prefixed = re.compile(f"(?:{self._alternatives(self.campaign_prefixes)})$")
        unprefixed = re.compile(f"(?:{self._alternatives(self.not_campaign_prefixes)})$") \
            if self.not_campaign_prefixes else None
        about = re.compile(self._alternatives(self.campaign_words))
        clause_before, clause_after = re.compile(r"[^，。；,;!?！？]*$"), re.compile(r"[^，。；,;!?！？]*")

        def check(s: int, e: int) -> bool:
            before = t[:s]
            if not prefixed.search(before) or (unprefixed is not None and unprefixed.search(before)):
                return False
            clause = clause_before.search(before).group() + t[s:e] + clause_after.match(t, e).group()
            return about.search(clause) is not None
        return check

    def _settled(self, t: str, fill: str):
        """``(end, cue) -> bool``: a cue of a settled kind said to be settled right after it, the
        same kind's terms and a few words between ("婆媳矛盾已化解", "矛盾纠纷经村委会调解已解决",
        "矛盾纠纷：已化解"), and nothing in the rest of its sentence to say otherwise ("矛盾已调解但昨晚又
        打了", "…已化解，但又闹离婚")."""
        if not (self.resolved and self.resolved_kinds):
            return lambda e, cue: False
        unless = self._alternatives([*self.resolved_unless, *self.negations])
        lead = {kind: re.compile(f"(?:{self._alternatives([c.term for c in self.cues if c.kind == kind])}"
                                 f"{'|' + self._alternatives(self.list_joiners) if self.list_joiners else ''})*:?")
                for kind in self.resolved_kinds}
        # a few words before the marker ("现已化解", "经村委会调解已解决"), none of them a "but" or a "not"
        marker = re.compile(f"(?:(?!{unless})[^，。；,;:!?！？]){{0,8}}?(?:{self._alternatives(self.resolved)})")
        # (a "not" later in the sentence is no "but": "已化解，家庭和睦，不再吵架")
        goes_on = re.compile(self._alternatives(self.resolved_unless)) if self.resolved_unless else re.compile("(?!)")
        sentence = re.compile(r"[^。；;!?！？]*")

        def check(e: int, cue: Cue) -> bool:
            if cue.kind not in lead:
                return False
            m = marker.match(t, lead[cue.kind].match(t, e).end())
            return m is not None and goes_on.search(sentence.match(t, m.end()).group()) is None
        return check


def episodes_to_flags(episodes: pd.DataFrame, meters: pd.DataFrame) -> pd.DataFrame:
    """Detector episodes (one per meter event) → flag rows for the household that owns the meter."""
    if episodes.empty:
        return pd.DataFrame(columns=FLAG_COLUMNS)
    df = episodes.merge(meters[["meter_id", "household_id"]], on="meter_id", how="inner")
    out = pd.DataFrame({
        "household_id": df["household_id"], "meter_id": df["meter_id"], "kind": df["kind"],
        "severity": df["severity"], "score": df["score"].astype(float),
        "start": pd.to_datetime(df["start"]), "detected_at": pd.to_datetime(df["detected_at"]),
        "end": pd.to_datetime(df["end"]), "evidence": df["evidence"],
    })
    out["details"] = [
        {"expected_kwh_per_h": _num(e), "observed_kwh_per_h": _num(o)}
        for e, o in zip(df.get("expected_kwh_per_h", [None] * len(df)), df.get("observed_kwh_per_h", [None] * len(df)))
    ]
    out["dedup_key"] = [f"meter|{m}|{k}|{s:%Y-%m-%dT%H:%M}" for m, k, s in zip(out.meter_id, out.kind, out.start)]
    out["flag_id"] = [stable_id("F", k) for k in out.dedup_key]
    return out[FLAG_COLUMNS].reset_index(drop=True)


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else round(f, 3)


def merge_with_open_flags(new: pd.DataFrame, open_flags: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split new flags into (to_insert, to_extend).

    One situation, one flag: an episode that continues an open flag of the same household and
    kind (starting within ``MERGE_GAP`` of its end) extends that flag instead of raising a second
    alert, and so do episodes of one batch that follow each other closely (two meters of one
    household, a detector that split an episode). Ends only ever move later.

    An acknowledged flag whose end is not known (``acked_at`` in ``open_flags``, empty for the
    others; a visit finding never has an end) reaches to when it was answered, not on for good:
    a finding weeks after the grid worker answered the first one is a new flag and a new alert."""
    empty_ext = pd.DataFrame(columns=["flag_id", "end"])
    if new.empty:
        return new, empty_ext
    known = open_flags if not open_flags.empty else pd.DataFrame(columns=["flag_id", "dedup_key", "household_id",
                                                                          "kind", "start", "end"])
    by_dedup = {k: (fid, e) for k, fid, e in zip(known.dedup_key, known.flag_id, known.end)}
    # (household, kind) → list of [flag_id, start, end, is_new]
    spans: dict[tuple, list[list]] = {}
    for f in known.itertuples(index=False):
        answered = getattr(f, "acked_at", None)
        spans.setdefault((f.household_id, f.kind), []).append(
            [f.flag_id, pd.Timestamp(f.start), f.end, False, answered if answered is not None else pd.NaT])
    inserts: dict[str, dict] = {}
    extends: dict[str, pd.Timestamp] = {}

    def later(a, b):
        if pd.isna(a):
            return b
        if pd.isna(b):
            return a
        return max(pd.Timestamp(a), pd.Timestamp(b))

    for row in new.sort_values(["household_id", "kind", "start", "dedup_key"]).itertuples(index=False):
        if row.dedup_key in by_dedup:  # the same episode seen again: it may have grown
            fid, end = by_dedup[row.dedup_key]
            if pd.notna(row.end) and (pd.isna(end) or pd.Timestamp(row.end) > pd.Timestamp(end)):
                extends[fid] = later(extends.get(fid), row.end)
            continue
        match = None
        for span in spans.get((row.household_id, row.kind), []):
            reach = span[2] if pd.notna(span[2]) else span[4] if pd.notna(span[4]) else pd.Timestamp(row.start)
            if span[1] - MERGE_GAP <= pd.Timestamp(row.start) <= pd.Timestamp(reach) + MERGE_GAP:
                match = span
                break
        if match is None:
            d = row._asdict()
            inserts[d["flag_id"]] = d
            spans.setdefault((row.household_id, row.kind), []).append([d["flag_id"], pd.Timestamp(row.start),
                                                                     row.end, True, pd.NaT])
            by_dedup[row.dedup_key] = (d["flag_id"], row.end)
            continue
        new_end = later(match[2], row.end) if pd.notna(row.end) and pd.notna(match[2]) else (
            pd.NaT if pd.isna(row.end) else later(match[2], row.end))
        match[2] = new_end
        if match[3]:
            inserts[match[0]]["end"] = new_end
        elif pd.notna(new_end) or pd.isna(row.end):
            if pd.notna(new_end):
                extends[match[0]] = later(extends.get(match[0]), new_end)
    ins = pd.DataFrame(list(inserts.values()), columns=new.columns) if inserts else new.iloc[0:0]
    ext = pd.DataFrame([{"flag_id": k, "end": v} for k, v in extends.items()], columns=["flag_id", "end"])
    return ins.reset_index(drop=True), ext


def drop_settled_episodes(new: pd.DataFrame, settled: pd.DataFrame) -> pd.DataFrame:
    """Drop episodes that belong to a flag already closed or acknowledged: the same household and
    kind, starting inside that flag's span (up to its end, plus ``MERGE_GAP``). A grid worker who
    went to the door and found all well is not asked again about the same episode; a new
    episode after it is a new flag.

    ``settled``: ``dedup_key, household_id, kind, start, end, closed_at, acked_at``. The flag's
    own episode, reported again, is kept (it may bring the end the flag lacks). A flag whose end
    is not known yet ends, for this purpose, where its episode as reported now ends, else where
    it was closed or acknowledged: an acknowledged one with no end would otherwise silence that
    household's kind for good.

    A visit finding (no meter) made after a flag was closed is a new flag, however soon: the grid
    worker's answer (已上门，一切正常) covers what was there when she went, and a danger a visit finds
    hours later is news. ``MERGE_GAP`` past the closing is for meter episodes, where a detector
    that split one silence or one surge in two must not knock on the door twice."""
    if new.empty or settled.empty:
        return new
    reported = new[new["end"].notna()].groupby("dedup_key")["end"].max()
    spans: dict[tuple, list[tuple]] = {}
    for f in settled.itertuples(index=False):
        stop = next((pd.Timestamp(t) for t in (f.end, reported.get(f.dedup_key), f.closed_at, f.acked_at)
                     if t is not None and pd.notna(t)), None)
        hi = stop + MERGE_GAP if stop is not None else pd.Timestamp.max
        closed = pd.Timestamp(f.closed_at) if f.closed_at is not None and pd.notna(f.closed_at) else None
        spans.setdefault((f.household_id, f.kind), []).append((pd.Timestamp(f.start) - MERGE_GAP, hi, closed))
    own = set(settled["dedup_key"])
    has_meter = new["meter_id"].notna() if "meter_id" in new else pd.Series(True, index=new.index)
    keep = []
    for row, metered in zip(new.itertuples(index=False), has_meter):
        start = pd.Timestamp(row.start)
        keep.append(row.dedup_key in own
                    or not any(lo <= start <= hi and (metered or closed is None or start <= closed)
                               for lo, hi, closed in spans.get((row.household_id, row.kind), [])))
    return new[keep]


def visit_cue_flags(visits: pd.DataFrame, lexicon: Lexicon) -> pd.DataFrame:
    """Dispute and safety cues in visit notes and findings (家暴, 离婚, 赌博, 轻生, ...).

    A flag starts at the visit and is detected when its sheet was recorded (``recorded_at``, if
    the frame has it and it is later): a sheet typed in weeks after the visit is news on the day it
    comes in, and is alerted then like any new finding."""
    rows = []
    # the notes, the three findings (家情, 企情, 妇情) and the difficulties; not the measures taken
    text_cols = [c for c in ("notes", "family_situation", "business_situation", "women_situation", "difficulties")
                 if c in visits]
    for v in visits.itertuples(index=False):
        # one sentence per field: "无" ending one field must not negate the next field's first words
        text = "。".join(str(getattr(v, c)) for c in text_cols if isinstance(getattr(v, c), str))
        cues = lexicon.find(text)
        for kind in sorted({c.kind for c in cues}):
            kc = [c for c in cues if c.kind == kind]
            sev = max((c.severity for c in kc), key=lambda s: SEVERITY_POINTS[s])
            key = f"visit|{v.visit_id}|{kind}"
            when = pd.Timestamp(v.visited_at)
            recorded = pd.Timestamp(getattr(v, "recorded_at", None))
            rows.append({
                "flag_id": stable_id("F", key), "dedup_key": key, "household_id": v.household_id, "meter_id": None,
                "kind": kind, "severity": sev, "score": float(SEVERITY_POINTS[sev]), "start": when,
                "detected_at": max(when, recorded) if pd.notna(recorded) else when, "end": pd.NaT,
                "evidence": evidence_sentence("visit_cue", terms="、".join(sorted({c.term for c in kc}))),
                "details": {"visit_id": v.visit_id, "terms": sorted({c.term for c in kc})},
            })
    return pd.DataFrame(rows, columns=FLAG_COLUMNS)


# What a clerk types for "nothing" in a free-text field (困难/措施: 无, 暂无, 没有, 无困难, 无明显困难).
_NOTHING = re.compile(r"[暂暫]?[无無没沒]有?(?:明显|明顯|特殊|其他|什么|什麼)?(?:困难|困難|措施)?|[/\-—.。]+")


def _blank_answer(value) -> bool:
    """An empty field, or one that says there is nothing."""
    if not isinstance(value, str):
        return True
    # (ended with a stop as often as not: "无。" is "无")
    text = re.sub(r"\s+", "", unicodedata.normalize("NFKC", value)).rstrip("。.,，;；!！、")
    return not text or _NOTHING.fullmatch(text) is not None


def unresolved_difficulty_flags(visits: pd.DataFrame, as_of: date, *, window_days: int = 90,
                                min_times: int = 2) -> pd.DataFrame:
    """Difficulties recorded again and again without a measure (反复反映困难未解决)."""
    if visits.empty:
        return pd.DataFrame(columns=FLAG_COLUMNS)
    v = visits.copy()
    v["visited_at"] = pd.to_datetime(v["visited_at"])
    start = pd.Timestamp(as_of) - pd.Timedelta(days=window_days)
    v = v[(v.visited_at >= start) & (v.visited_at < pd.Timestamp(as_of) + pd.Timedelta(days=1))]
    has_diff = ~v["difficulties"].map(_blank_answer)
    has_measure = ~v["measures"].map(_blank_answer)
    # only the visits since the last one that recorded a measure: a difficulty answered is no
    # longer "again and again without a measure"
    since = v["visited_at"].where(has_measure).groupby(v["household_id"]).transform("max")
    v = v[has_diff & ~has_measure & (since.isna() | (v["visited_at"] > since))]
    hits = v.groupby("household_id").agg(n=("visit_id", "size"), last=("visited_at", "max"),
                                         first=("visited_at", "min"))
    hits = hits[hits.n >= min_times]
    rows = []
    for hid, r in hits.iterrows():
        key = f"difficulty|{hid}|{r['first']:%Y-%m-%d}"
        rows.append({"flag_id": stable_id("F", key), "dedup_key": key, "household_id": hid, "meter_id": None,
                     "kind": "unresolved_difficulty", "severity": "medium", "score": 20.0 + 5 * int(r.n),
                     "start": r["first"], "detected_at": r["last"], "end": pd.NaT,
                     "evidence": evidence_sentence("unresolved_difficulty", window_days=window_days, times=int(r.n)),
                     "details": {"times": int(r.n)}})
    return pd.DataFrame(rows, columns=FLAG_COLUMNS)


def drop_answered_difficulties(new: pd.DataFrame, closed: pd.DataFrame, still_off=()) -> pd.DataFrame:
    """Drop unresolved-difficulty candidates that a closed flag of the household already answered.

    The candidate's key names the first visit of its 90-day window, so as days pass the same
    situation turns up under another key. A grid worker who closed the flag answered the sheets
    up to then: the window sliding brings nothing new and raises nothing. A visit after the
    closing that records the difficulty again, still without a measure, is what she would want
    to hear about: the candidate's latest visit (``detected_at``) is then after the closing and
    it is raised again.

    A flag withdrawn rather than answered (``outcome`` in ``WITHDRAWN``: its record corrected to
    another family, or its family taken off the register and since put back, 在册) answered
    nothing: the difficulty still going on is flagged again. While the family is still off the
    register (``still_off``: household ids), its removal's closing stands: the window sliding over
    its old visits raises nothing under another key.

    ``closed``: ``household_id, closed_at`` (and ``outcome``, if known) of the household's closed
    unresolved-difficulty flags."""
    if "outcome" in closed:
        gone = closed["outcome"].eq(DEREGISTERED) & closed["household_id"].isin(set(still_off))
        closed = closed[~closed["outcome"].isin(WITHDRAWN) | gone]
    if new.empty or closed.empty:
        return new
    last_closed = pd.to_datetime(closed["closed_at"]).groupby(closed["household_id"]).max()
    answered_until = pd.to_datetime(new["household_id"].map(last_closed))
    answered = (new["kind"] == "unresolved_difficulty") & (pd.to_datetime(new["detected_at"]) <= answered_until)
    return new[~answered]


def overdue_visit_flags(plans: pd.DataFrame, as_of: date, *, grace_days: int = 3) -> pd.DataFrame:
    """Must-visits still not done past their window plus a grace period (逾期未访)."""
    if plans.empty:
        return pd.DataFrame(columns=FLAG_COLUMNS)
    p = plans[(plans.status == "planned")].copy()
    end = pd.to_datetime(p["window_end"].fillna(p["due_date"]))
    p = p[end + pd.Timedelta(days=grace_days) < pd.Timestamp(as_of)]
    rows = []
    for r in p.itertuples(index=False):
        key = f"overdue|{r.id}"
        due = pd.Timestamp(r.due_date)
        days = (pd.Timestamp(as_of) - due).days
        rows.append({"flag_id": stable_id("F", key), "dedup_key": key, "household_id": r.household_id,
                     "meter_id": None, "kind": "overdue_visit", "severity": "high" if r.urgent else "low",
                     "score": float(10 + days), "start": due, "detected_at": pd.Timestamp(as_of), "end": pd.NaT,
                     "evidence": evidence_sentence("overdue_visit", due=f"{due:%m月%d日}", days=days),
                     "details": {"plan_id": r.id}})
    return pd.DataFrame(rows, columns=FLAG_COLUMNS)


# Flags raised from the records, not from an event a grid worker goes to: the day's
# candidates say whether they still hold.
RECORD_KINDS = ("overdue_visit", "unresolved_difficulty")


def refresh_record_flags(candidates: pd.DataFrame, open_flags: pd.DataFrame) -> pd.DataFrame:
    """Open flags raised from the records whose wording today's candidates update: ``flag_id,
    evidence, score, details``.

    Their evidence is a count that goes on (近90天内3次走访反映困难, 已逾期20天), and it is the reason a
    grid worker reads on the household: raised once, it would keep the count of its first day. An
    overdue visit is its plan's (same key); a household has one difficulty count, whose key moves
    as its window slides (``unresolved_difficulty_flags``), so it is matched by household."""
    cols = ["flag_id", "evidence", "score", "details"]
    if candidates.empty or open_flags.empty:
        return pd.DataFrame(columns=cols)
    rec = candidates[candidates["kind"].isin(RECORD_KINDS)]
    by_key = {r.dedup_key: r for r in rec.itertuples(index=False)}
    by_household = {r.household_id: r for r in rec.itertuples(index=False) if r.kind == "unresolved_difficulty"}
    out = []
    for f in open_flags[open_flags["kind"].isin(RECORD_KINDS)].itertuples(index=False):
        c = by_key.get(f.dedup_key) or (by_household.get(f.household_id) if f.kind == "unresolved_difficulty"
                                        else None)
        if c is not None and c.kind == f.kind and c.evidence != f.evidence:
            out.append((f.flag_id, c.evidence, float(c.score), c.details))
    return pd.DataFrame(out, columns=cols)


def flags_settled_by_records(open_flags: pd.DataFrame, candidates: pd.DataFrame, away: pd.DataFrame,
                             last_visit: pd.Series) -> pd.DataFrame:
    """Open flags whose situation the records now say is over, nobody having to answer them:
    ``flag_id, outcome``.

    - ``overdue_visit``: the family was visited on or after the day the visit was due
      (``last_visit``: household → its latest visit): ``visited``. A plan marked missed or
      replanned without a visit leaves the flag open: the family is still waiting;
    - ``unresolved_difficulty``: the household has no such candidate any more (a measure was
      recorded, or the visits left the window): ``measure_recorded``;
    - a meter flag that began inside an absence recorded on the household since it was raised
      (住院, 外出探亲; ``away``: ``household_id, start, end``, end empty while away): the
      detectors no longer see it, and nobody was home to be at risk: ``absence_recorded``.
    """
    out = []
    if open_flags.empty:
        return pd.DataFrame(out, columns=["flag_id", "outcome"])
    pairs = set(zip(candidates.household_id, candidates.kind)) if len(candidates) else set()
    spans: dict[str, list[tuple]] = {}
    for a in away.itertuples(index=False):
        if pd.notna(a.start):
            spans.setdefault(a.household_id, []).append(
                (pd.Timestamp(a.start), pd.Timestamp(a.end) + pd.Timedelta(days=1) if pd.notna(a.end) else None))
    for f in open_flags.itertuples(index=False):
        if f.kind == "overdue_visit":
            seen_at = last_visit.get(f.household_id)
            if seen_at is not None and pd.notna(seen_at) and pd.Timestamp(seen_at) >= pd.Timestamp(f.start):
                out.append((f.flag_id, "visited"))
        elif f.kind == "unresolved_difficulty" and (f.household_id, f.kind) not in pairs:
            out.append((f.flag_id, "measure_recorded"))
        elif pd.notna(f.meter_id) and any(lo <= pd.Timestamp(f.start) and (hi is None or pd.Timestamp(f.start) < hi)
                                          for lo, hi in spans.get(f.household_id, ())):
            out.append((f.flag_id, "absence_recorded"))
    return pd.DataFrame(out, columns=["flag_id", "outcome"])


RECORD_CORRECTED = "record_corrected"  # the outcome of a flag whose record now names another family
DEREGISTERED = "deregistered"  # the outcome of a flag closed because its family left the register
# Outcomes of flags closed without anyone answering them: they settle nothing
WITHDRAWN = (RECORD_CORRECTED, DEREGISTERED)


def rekey_corrected_records(candidates: pd.DataFrame, on_record: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Candidates whose episode key is on record for another household: the record behind it was
    corrected since (a visit sheet re-sent naming the family the visit was really to).

    ``on_record``: ``flag_id, dedup_key, household_id, status, outcome`` of the stored flags with
    the candidates' keys, and of those stored under their corrections (``corrections_to_read``).
    Returns (candidates, corrected): such a candidate gets a key of its own, ``<key>|<household>``,
    so the right family is flagged once; so does one whose flag under its key was closed as
    ``record_corrected`` (a record corrected back: the first family is flagged again). Every stored
    flag of the episode of another household, while not closed, is ``corrected`` (``flag_id,
    outcome`` = ``record_corrected``)."""
    cols = ["flag_id", "outcome"]
    if candidates.empty or on_record.empty:
        return candidates, pd.DataFrame(columns=cols)
    moved = _rekeyed(candidates, on_record)
    if not any(moved):
        return candidates, pd.DataFrame(columns=cols)
    out = candidates.copy()
    keys, households = list(out.loc[moved, "dedup_key"]), list(out.loc[moved, "household_id"])
    out.loc[moved, "dedup_key"] = [f"{k}|{h}" for k, h in zip(keys, households)]
    out.loc[moved, "flag_id"] = [stable_id("F", k) for k in out.loc[moved, "dedup_key"]]
    right = dict(zip(keys, households))
    stale = [fid for fid, k, h, st in zip(on_record.flag_id, on_record.dedup_key, on_record.household_id,
                                           on_record.status)
             if st != "closed" and any(k == e or k.startswith(e + "|") for e in right if right[e] != h)]
    return out, pd.DataFrame({"flag_id": stale, "outcome": RECORD_CORRECTED}, columns=cols)


def corrections_to_read(candidates: pd.DataFrame, on_record: pd.DataFrame) -> list[str]:
    """The candidates' keys whose flags under corrections (``<key>|<household>``) must be read for
    ``rekey_corrected_records``: those on record for another household or closed as corrected."""
    if candidates.empty or on_record.empty:
        return []
    return sorted(set(candidates.dedup_key[_rekeyed(candidates, on_record)]))


def _rekeyed(candidates: pd.DataFrame, on_record: pd.DataFrame) -> list[bool]:
    """Which candidates get a key of their own: their key is on record for another household, or
    its flag was closed as ``record_corrected`` (``rekey_corrected_records``)."""
    outcomes = on_record["outcome"] if "outcome" in on_record else pd.Series(None, index=on_record.index, dtype=object)
    stored = {k: (h, oc) for k, h, oc in zip(on_record.dedup_key, on_record.household_id, outcomes)}
    return [k in stored and (stored[k][0] != h or stored[k][1] == RECORD_CORRECTED)
            for k, h in zip(candidates.dedup_key, candidates.household_id)]


def score_households(households: pd.DataFrame, open_flags: pd.DataFrame) -> pd.DataFrame:
    """Household risk score and level (红/橙/黄/绿) with the reasons behind it."""
    base = households[["household_id", "grid_id", "categories"]].copy()
    points = {hid: 0.0 for hid in base.household_id}
    reasons: dict[str, list[str]] = {hid: [] for hid in base.household_id}
    for hid, cats in zip(base.household_id, base.categories):
        cats = cats if isinstance(cats, list) else []
        if "dispute" in cats:
            points[hid] += 15
            reasons[hid].append("存在婚姻家庭矛盾")
        if "hardship" in cats:
            points[hid] += 5
            reasons[hid].append("困难家庭")
    # a reason weighs what its own household's flag weighs: two families overdue by the same days
    # share a sentence, and one's urgent plan must not lift the other's plain one
    weight = {(h, r): {"存在婚姻家庭矛盾": 15, "困难家庭": 5}[r] for h, rs in reasons.items() for r in rs}
    if not open_flags.empty:
        for f in open_flags.itertuples(index=False):
            if f.household_id in points:
                pts = SEVERITY_POINTS.get(f.severity, 10)
                points[f.household_id] += pts
                reasons[f.household_id].append(str(f.evidence))
                key = (f.household_id, str(f.evidence))
                weight[key] = max(weight.get(key, 0), pts)
    out = base[["household_id", "grid_id"]].copy()
    out["risk_score"] = [min(100.0, points[h]) for h in out.household_id]
    out["risk_level"] = [next(lvl for lvl, lo in LEVELS if s >= lo) for s in out.risk_score]
    # five reasons at most, the gravest first and each once: the flags come in no set order, and a
    # 红 level must not lose its critical finding behind five overdue visits read before it. Equal
    # weights by their text, so the list (stored, compared between runs) does not follow read order.
    out["risk_reasons"] = [sorted(dict.fromkeys(reasons[h]), key=lambda r: (-weight[(h, r)], r))[:5]
                           for h in out.household_id]
    return out


def risk_map(scored: pd.DataFrame, as_of: date, previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """Households per grid and level, with the change since the previous run (动态预警图)."""
    counts = scored.groupby(["grid_id", "risk_level"]).size().rename("households").reset_index()
    counts = counts.rename(columns={"risk_level": "level"})
    if previous is not None and not previous.empty:
        # Outer merge: a level that fell to zero in a grid is a change worth showing.
        prev = previous.rename(columns={"households": "prev"})[["grid_id", "level", "prev"]]
        counts = counts.merge(prev, on=["grid_id", "level"], how="outer")
        counts["households"] = counts["households"].fillna(0).astype(int)
        counts["change"] = counts["households"] - counts["prev"].fillna(0).astype(int)
        # only the run in which it emptied: a zero kept from run to run would stay on the map for good
        counts = counts[(counts["households"] > 0) | (counts["change"] != 0)].drop(columns="prev")
    else:
        counts["change"] = 0
    counts["as_of"] = as_of
    return counts[["as_of", "grid_id", "level", "households", "change"]]
