"""What a SQL statement's span may record: operation, table, text with literals masked, no password."""

from __future__ import annotations

import pytest

from shared.sql_summary import MAX_TEXT, sanitize, summarize


@pytest.mark.parametrize(
    ("statement", "operation", "collection"),
    [
        ("SELECT id FROM outbox WHERE published_at IS NULL", "SELECT", "outbox"),
        ("insert into tenant_credentials (p) values (%(p)s)", "INSERT", "tenant_credentials"),
        ('UPDATE "public"."steps" SET n = 1', "UPDATE", "public.steps"),
        ("DELETE FROM api_keys WHERE project_id = :p", "DELETE", "api_keys"),
        (
            "WITH c AS (UPDATE provisioning_steps SET s = 1 RETURNING *) SELECT * FROM c",
            "WITH",
            "provisioning_steps",
        ),
        ('CREATE DATABASE "t" OWNER "t"', "CREATE DATABASE", None),
        ('ALTER DEFAULT PRIVILEGES IN SCHEMA "t" GRANT ALL ON TABLES TO "t"', "ALTER", None),
        ("SELECT pg_advisory_lock(hashtext(%s))", "SELECT", None),
    ],
)
def test_operation_and_table(statement: str, operation: str, collection: str | None) -> None:
    """The operation (with its object for DDL) and a DML statement's first table, as written."""
    summary = summarize(statement)
    assert (summary.operation, summary.collection) == (operation, collection)
    assert summary.name == (f"{operation} {collection}" if collection else operation)


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE ROLE \"tenant_a\" LOGIN NOSUPERUSER PASSWORD 's3cr''et'",
        "ALTER ROLE \"tenant_a\" WITH LOGIN password 'hunter22'",
        "ALTER USER x PASSWORD NULL",
    ],
)
def test_a_statement_naming_a_password_keeps_no_text(statement: str) -> None:
    """A statement with the PASSWORD keyword gives its operation only: never its text."""
    summary = summarize(statement)
    assert summary.text is None
    assert summary.operation in ("CREATE ROLE", "ALTER ROLE", "ALTER USER")
    assert "PASSWORD" not in summary.name.upper()


@pytest.mark.parametrize(
    ("statement", "masked"),
    [
        ("SELECT 'secret', 42, -1.5e3 FROM t", "SELECT ?, ?, ? FROM t"),
        ("SELECT 'it''s', E'a\\'b secret', U&'x' FROM t", "SELECT ?, ?, ? FROM t"),
        ("SELECT $$body$$, $q$more$q$", "SELECT ?, ?"),
        ("SELECT X'ff', B'01'", "SELECT ?, ?"),
        ("SELECT a -- 'note'\nFROM t /* 'x' */", "SELECT a FROM t"),
        ("SELECT '--', 'secret'", "SELECT ?, ?"),
        ("SELECT * FROM t WHERE a = %(a)s AND b = %s AND c = :c AND d = $1", None),
        ('SELECT "col 1", tenant_1, t2.x FROM "t""q"', None),
        ("SELECT 'unterminated secret", "SELECT ?"),
    ],
)
def test_literals_are_masked_and_identifiers_and_placeholders_kept(
    statement: str, masked: str | None
) -> None:
    """Every literal becomes ``?``; placeholders, identifiers and quoted names stay as written."""
    assert sanitize(statement) == (masked or statement)
    for secret in ("secret", "42", "body", "more"):
        assert secret not in (summarize(statement).text or "")


def test_whitespace_collapses_and_long_text_is_cut() -> None:
    """The text is on one line, and cut at MAX_TEXT characters."""
    assert summarize("SELECT\n   a,\n\tb FROM t").text == "SELECT a, b FROM t"
    long = summarize("SELECT " + ", ".join(f"c{i}" for i in range(2000)) + " FROM t").text
    assert long is not None and len(long) == MAX_TEXT and long.endswith("...")


def test_an_empty_statement_has_nothing() -> None:
    """A blank statement (a pool's liveness check) has no operation and no text."""
    summary = summarize("  ")
    assert (summary.operation, summary.collection, summary.text, summary.name) == (
        None,
        None,
        None,
        "postgresql",
    )
