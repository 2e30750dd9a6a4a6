"""Credentials kept out of reprs, logs and tracebacks: a URL is shown without its password."""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit, urlunsplit

MASK = "***"

# A password passed as a query parameter (libpq and SQLAlchemy both read ``?password=``).
_QUERY_PASSWORD = re.compile(r"(?i)((?:^|&)password=)[^&]*")


def mask_url(url: str | None) -> str | None:
    """``url`` with its password (in the userinfo or a ``password=`` parameter) replaced by
    ``***``; None stays None. Never raises: what cannot be parsed is masked whole."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        netloc, query = parts.netloc, parts.query
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            if ":" in userinfo:
                user = userinfo.split(":", 1)[0]
                netloc = f"{user}:{MASK}@{hostport}"
        query = _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", query)
        return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return MASK
