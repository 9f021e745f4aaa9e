"""A failed statement's message reaches Prefect's task-run logs (and the flow's exception):
it must not carry the statement's bound values, which are robot webhook keys, phone numbers
and ID numbers (SQLAlchemy prints them by default as ``[parameters: ...]``)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

SECRET = "https://oapi.dingtalk.com/robot/send?access_token=s3cr3t-robot-key"
ID_NUMBER = "330203194001011234"


def test_a_failed_statement_names_the_error_but_not_the_values(database_url):
    from sibifang.db import get_engine

    with pytest.raises(DBAPIError) as failed:
        with get_engine(database_url).begin() as conn:
            conn.execute(text("INSERT INTO no_such_table (webhook, id_number) VALUES (:w, :i)"),
                         {"w": SECRET, "i": ID_NUMBER})
    message = str(failed.value)
    assert "no_such_table" in message          # still says what went wrong
    assert "hidden due to hide_parameters" in message
    assert "s3cr3t" not in message and ID_NUMBER not in message
