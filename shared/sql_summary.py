"""What a SQL statement may say about itself on a span: its operation, the table it works on
and its text with every literal replaced by ``?``; no text at all for a statement that sets a
password.

The database semantic conventions name these ``db.operation.name``, ``db.collection.name`` and
``db.query.text``, and ask that the text be sanitised (literals out) unless it is known to be
parameterised. Ours are parameterised, but a statement composed with ``psycopg.sql.Literal``
(``CREATE ROLE ... PASSWORD '...'``) is rendered with its values in: such a statement gives its
operation only, and every literal of any other is masked, so no value reaches a span."""

from __future__ import annotations

import re
from dataclasses import dataclass

_DDL = frozenset({"CREATE", "ALTER", "DROP"})
"""Operations named with the kind of object they act on: ``CREATE ROLE``, ``DROP DATABASE``."""
_DDL_OBJECTS = frozenset(
    {"DATABASE", "ROLE", "USER", "SCHEMA", "TABLE", "INDEX", "EXTENSION", "SEQUENCE", "VIEW", "FUNCTION"}
)
_SECRET = re.compile(r"\bPASSWORD\b", re.IGNORECASE)
"""A statement naming a password (``CREATE/ALTER ROLE ... PASSWORD``) keeps no text."""

_LITERALS = re.compile(
    r"""
      (?P<comment>--[^\n]*|/\*.*?(?:\*/|$))                                # comments: dropped
    | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)?\$.*?\$(?P=tag)?\$)   # $$...$$, $tag$...$tag$
    | (?P<escaped>(?<![A-Za-z0-9_$])[Ee]'(?:[^'\\]|\\.|'')*'?)                # E'...' (backslash escapes)
    | (?P<string>(?:(?<![A-Za-z0-9_$])(?:[BbXxNn]|[Uu]&))?'(?:[^']|'')*'?)      # '...', X'...', U&'...'
    | (?P<ident>"(?:[^"]|"")*"?)                                          # "identifier": kept
    | (?P<param>%(?:\([^)]*\))?s|:[A-Za-z_][A-Za-z0-9_]*|\$[0-9]+|\?)    # placeholders: kept
    | (?P<number>(?<![A-Za-z0-9_])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z0-9_]))
    """,
    re.DOTALL | re.VERBOSE,
)
_WORD = re.compile(r"[A-Za-z_]+")
_TARGET = re.compile(
    r"""\b(?:FROM|INTO|UPDATE|JOIN)\s+(?:ONLY\s+)?((?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)
        (?:\.(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*))?)""",
    re.IGNORECASE | re.VERBOSE,
)
_DML = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "MERGE"})
MAX_TEXT = 2048
"""Longer texts are cut here (with ``...``): a span is no place for a whole migration."""


@dataclass(frozen=True, slots=True)
class SqlSummary:
    """The parts of a statement a span records."""

    operation: str | None
    """The statement's operation (``SELECT``, ``INSERT``, ``CREATE ROLE``), or None when the
    statement does not start with a keyword."""
    collection: str | None
    """The table a DML statement reads or writes first, as written (unquoted), or None."""
    text: str | None
    """The statement with its literals replaced by ``?``, whitespace collapsed; None for one
    that names a password."""

    @property
    def name(self) -> str:
        """The span name the conventions ask for: ``{operation} {collection}``, else the
        operation, else ``postgresql``."""
        if self.operation and self.collection:
            return f"{self.operation} {self.collection}"
        return self.operation or "postgresql"


def _mask(match: re.Match[str]) -> str:
    if match.group("comment") is not None:
        return " "
    if match.group("ident") is not None or match.group("param") is not None:
        return match.group(0)
    return "?"


def sanitize(statement: str) -> str:
    """``statement`` without comments, every string, dollar-quoted and numeric literal replaced
    by ``?`` (quoted identifiers and placeholders kept), whitespace collapsed."""
    return " ".join(_LITERALS.sub(_mask, statement).split())


def summarize(statement: str) -> SqlSummary:
    """What a span may record of ``statement``: see :class:`SqlSummary`."""
    clean = sanitize(statement)
    words = [w.upper() for w in _WORD.findall(clean[:200])[:2]]
    operation: str | None = words[0] if words else None
    if operation in _DDL and len(words) > 1 and words[1] in _DDL_OBJECTS:
        operation = f"{operation} {words[1]}"
    collection = None
    if operation in _DML:
        target = _TARGET.search(clean)
        if target is not None:
            collection = target.group(1).replace('""', "\x00").replace('"', "").replace("\x00", '"')
    text: str | None = None
    if clean and not _SECRET.search(statement):
        text = clean if len(clean) <= MAX_TEXT else clean[: MAX_TEXT - 3] + "..."
    return SqlSummary(operation, collection, text)
