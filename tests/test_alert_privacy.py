"""No resident ID number (身份证号) leaves in an alert, a digest or the page behind its link, however a
cadre typed it into an address or a visit note; the signed link stays out of a message's repr."""

from __future__ import annotations

import pytest

from sibifang.channels import OutgoingMessage
from sibifang.dispatch_alerts import (ID_MASK, PendingAlert, alert_page_context, build_digest, render_alert,
                                      scrub_id_numbers)
from tests.test_dispatch_alerts import make_flag, make_household, rec

ID = "330203194001011234"
# Separators a note copied from a form or a spreadsheet cell keeps between the groups of an ID
WRITTEN = ["330203/19400101/1234", "330203\t19400101\t1234", "330203_19400101_1234", "330203·19400101·1234",
           "330203／19400101／1234"]


@pytest.mark.parametrize("written", WRITTEN)
def test_an_id_number_split_by_slashes_tabs_or_underscores_is_scrubbed(written):
    out = scrub_id_numbers(f"身份证{written}，电话13800138000")
    assert ID_MASK in out and "13800138000" in out
    assert "19400101" not in out


@pytest.mark.parametrize("written", WRITTEN)
def test_no_alert_digest_or_page_carries_such_an_id_number(written):
    household = {**make_household(), "address": f"万地村三组18号（户主身份证 {written}）"}
    flag = {**make_flag(), "evidence": f"用电接近停止；备注：身份证{written}"}
    msg = render_alert(flag, household, rec("wecom"), "http://a/ack?t=x")
    digest = build_digest([PendingAlert("x", {**flag, "severity": "low"}, household, rec("wecom"), "http://a/ack")],
                          rec("wecom"))
    page = alert_page_context(flag, household, "grid_worker", "x")
    for out in (msg.title, msg.text, msg.markdown or "", digest.text, digest.markdown or "", page["address"],
                page["evidence"]):
        assert "19400101" not in out, out


def test_a_message_repr_shows_no_link_nor_text():
    """The text holds the signed link (a bearer token) and the household's name and address: a
    message in a log line or a traceback shows its id only."""
    msg = OutgoingMessage("A1", "A1", "critical", "【紧急】", "李奶奶 http://a/ack?t=SECRET", "md ?t=SECRET")
    assert "SECRET" not in repr(msg) and "李奶奶" not in repr(msg) and "A1" in repr(msg)
