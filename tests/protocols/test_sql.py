"""SQL statements to OBI's operation and table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from obi.protocols.sql import SqlFacts, sql_facts


@pytest.mark.parametrize(("text", "operation", "table"), [
    ("SELECT * FROM users WHERE id = $1", "SELECT", "users"),
    ("select name from public.users u join orders o on o.uid = u.id", "SELECT", "public.users"),
    ('SELECT 1 FROM "Weird Table"', "SELECT", "Weird Table"),
    ("SELECT count(*) FROM (SELECT * FROM inner_t) AS t", "SELECT", ""),
    ("SELECT 1", "SELECT", ""),
    ("SELECT 'FROM x' AS s FROM real_table", "SELECT", "real_table"),
    ("SELECT 'it''s' FROM t2", "SELECT", "t2"),
    ("/* hint */ -- line\n  INSERT INTO items (a, b) VALUES (1, 2)", "INSERT", "items"),
    ("UPDATE ONLY accounts SET x = 1", "UPDATE", "accounts"),
    ("DELETE FROM sessions WHERE expired", "DELETE", "sessions"),
    ("CREATE TABLE IF NOT EXISTS `logs` (id int)", "CREATE", "logs"),
    ("CREATE INDEX i ON logs (id)", "CREATE", ""),
    ("DROP TABLE IF EXISTS logs", "DROP", "logs"),
    ("TRUNCATE TABLE logs", "TRUNCATE", "logs"),
    ("WITH recent AS (SELECT * FROM events) SELECT * FROM recent", "SELECT", "recent"),
    ("BEGIN", "BEGIN", ""),
    ("COPY items FROM STDIN", "COPY", "items"),
    ("", "", ""),
    ("  ;", "", ""),
    ("123", "", ""),
])
def test_operation_and_table(text: str, operation: str, table: str) -> None:
    assert sql_facts(text) == SqlFacts(operation, table)


@given(st.text(max_size=300))
def test_any_text_gives_facts(text: str) -> None:
    facts = sql_facts(text)
    assert facts.operation == facts.operation.upper()
