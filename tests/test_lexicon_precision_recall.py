"""The visit-note lexicon against notes as grid workers write them: what is no danger (a quarrel
denied, a campaign attended, a dispute settled) raises nothing, and every danger still does.

A missed danger costs more than a needless look: the recall list is the one that must never
shrink. Each phrasing names the kinds it must raise (more may be found)."""

from __future__ import annotations

import pytest

from sibifang.flag_risks import Lexicon

DV, DISPUTE, SELF_HARM, GAMBLING = "domestic_violence", "dispute", "self_harm", "gambling"


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return Lexicon.load()


def kinds(lexicon: Lexicon, text: str) -> set[str]:
    return {c.kind for c in lexicon.find(text)}


RECALL = [
    # quarrels and hitting
    ("丈夫常吵架还动手", {DISPUTE, DV}),
    ("说没吵架但脸上有伤", {DV}),
    ("不吵架了，直接打", {DV}),
    ("夫妻经常吵架", {DISPUTE}),
    ("家里还好，不过吵架多", {DISPUTE}),
    ("不过丈夫常殴打她", {DV}),
    ("丈夫酒后殴打妻子", {DV}),
    ("女方称常被打", {DV}),
    ("孩子说爸爸打人", {DV}),
    ("手臂有淤青，称是自己摔的", {DV}),
    ("丈夫保证不再动手", {DV}),
    ("没吵架，但丈夫殴打她", {DV}),
    ("从不吵架，可丈夫喝酒后打骂孩子", {DV}),
    ("反复家暴", {DV}),
    ("家暴：有", {DV}),
    ("有无家暴：有", {DV}),
    ("邻居反映家暴", {DV}),
    ("丈夫违反家暴告诫书", {DV}),
    ("参加反家暴宣传时哭诉被丈夫家暴", {DV}),
    ("参加反家暴宣传，自述常被打", {DV}),
    # disputes not settled, or settled and broken again
    ("婆媳矛盾未化解", {DISPUTE}),
    ("婆媳矛盾尚未化解", {DISPUTE}),
    ("矛盾已调解但昨晚又打了", {DISPUTE, DV}),
    ("矛盾已调解，但丈夫仍常吵架", {DISPUTE}),
    ("婆媳矛盾已化解，但又闹离婚", {DISPUTE}),
    ("矛盾纠纷仍未解决", {DISPUTE}),
    ("矛盾未能调解，已调解三次", {DISPUTE}),
    ("矛盾已调解，调解不了", {DISPUTE}),
    ("矛盾已调解多次无果", {DISPUTE}),
    ("矛盾已调解，丈夫不听", {DISPUTE}),
    ("不得不离婚", {DISPUTE}),
    ("丈夫不同意离婚", {DISPUTE}),
    ("男方坚决不离婚", {DISPUTE}),
    ("为了孩子不离婚", {DISPUTE}),
    ("夫妻不和", {DISPUTE}),
    ("他说以后不再动手", {DV}),
    ("女方说没家暴，神情紧张", {DV}),           # a bare "没" denies a quarrel only
    ("没自杀过，但常说不想活", {SELF_HARM}),
    ("丈夫表示不再打老婆", {DV}),
    ("不再家暴的保证书写了三次", {DV}),
    ("夫妻不停吵架", {DISPUTE}),
    ("吵架不断，已分居", {DISPUTE}),
    ("无家暴，但夫妻经常吵架", {DISPUTE}),
    # gambling
    ("赌博欠债被追", {GAMBLING}),
    ("丈夫欠下赌债", {GAMBLING}),
    ("参加反赌博宣传后仍去赌博", {GAMBLING}),
    # self-harm
    ("想轻生", {SELF_HARM}),
    ("她说最近不想活了", {SELF_HARM}),
    ("有轻生念头", {SELF_HARM}),
    ("老人说活着没意思，想不开", {SELF_HARM}),
    ("没吵架，但她说不想活了", {SELF_HARM}),
    # traditional characters
    ("說沒吵架但臉上有傷", {DV}),
]


@pytest.mark.parametrize("text, expected", RECALL)
def test_every_danger_phrasing_still_raises_its_cue(lexicon, text, expected):
    assert expected <= kinds(lexicon, text)


def test_the_recall_list_is_long_enough_to_mean_something():
    assert len(RECALL) >= 30


PRECISION = [
    # a quarrel denied
    "没吵架", "不吵架", "从不吵架", "夫妻从来不吵架", "从没吵架", "婆媳从不争吵", "夫妻不再吵架",
    # a campaign or the law, not the family's problem
    "参加反赌博宣传", "开展反家暴宣传", "参加反家暴法讲座", "学习反家庭暴力法", "开展反家暴、反赌博宣传",
    "发放防家暴宣传手册",
    # a dispute settled
    "婆媳矛盾已化解", "矛盾已调解好", "矛盾纠纷已化解", "夫妻矛盾已经化解", "邻里纠纷经村委会调解已解决",
    "矛盾纠纷：已化解", "婆媳矛盾现已化解，关系和睦", "矛盾已化解，家庭和睦，不再吵架",
    # words that hold a cue and are none
    "老人去年动手术", "给她打电话没人接", "直接打电话给村委", "老人能自己动手做饭",
]


@pytest.mark.parametrize("text", PRECISION)
def test_no_danger_raises_nothing(lexicon, text):
    assert lexicon.find(text) == []


@pytest.mark.parametrize("text, kind", [
    ("没吵架，但丈夫殴打她", DV), ("不吵架了，直接打", DV), ("婆媳矛盾已化解，丈夫赌博", GAMBLING),
    ("参加反家暴宣传，丈夫赌博", GAMBLING),
])
def test_a_real_cue_beside_a_denied_or_settled_one_wins(lexicon, text, kind):
    found = kinds(lexicon, text)
    assert kind in found and DISPUTE not in found


def test_a_settled_danger_is_still_a_danger(lexicon):
    # violence and self-harm are not "mediated away": only disputes are read as settled
    assert kinds(lexicon, "家暴已调解") == {DV}
