"""A Kafka client properties file, as managed services hand it out: ``key=value`` or
``key: value`` lines, ``#``/``!`` comments, backslash continuations, and the Java client's
``sasl.jaas.config`` line parsed into a username and password (or an OAuth client). Only the
keys of :data:`FILE_KEYS` are taken; those of :data:`IGNORED_FILE_KEYS` are passed over, and so is
the Java client's OIDC login handler (``sasl.login.callback.handler.class``); any
other key is refused in one line, so no librdkafka setting reaches a client unseen. What the
settings make of them is :mod:`shared.kafka.security`'s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from shared.settings import ConfigurationError

# The keys a client properties file may hold, each onto the setting it fills.
FILE_KEYS: Mapping[str, str] = {
    "bootstrap.servers": "bootstrap_servers",
    "security.protocol": "protocol",
    "sasl.mechanism": "mechanism",
    "sasl.mechanisms": "mechanism",
    "sasl.username": "username",
    "sasl.password": "password",
    "sasl.jaas.config": "jaas",
    "ssl.ca.location": "ca",
    "ssl.certificate.location": "certificate",
    "ssl.key.location": "key",
    "ssl.key.password": "key_password",
    "sasl.oauthbearer.method": "oauth_method",
    "sasl.oauthbearer.token.endpoint.url": "token_url",
    "sasl.oauthbearer.client.id": "client_id",
    "sasl.oauthbearer.client.secret": "client_secret",
    "sasl.oauthbearer.scope": "scope",
    "sasl.oauthbearer.extensions": "extensions",
    "https.ca.location": "https_ca",
    "ssl.endpoint.identification.algorithm": "endpoint_identification",
}
# What managed services put in their files beside the connection: the Java client's tuning and
# a client id (the project sets its own), and the schema registry's settings (not a Kafka client's).
IGNORED_FILE_KEYS = frozenset(
    {
        "client.dns.lookup",
        "session.timeout.ms",
        "acks",
        "client.id",
        "schema.registry.url",
        "basic.auth.credentials.source",
        "basic.auth.user.info",
    }
)
# The Java client's OIDC login (client credentials at sasl.oauthbearer.token.endpoint.url): what
# librdkafka's sasl.oauthbearer.method=oidc does, so this value of the key is passed over; any other
# login handler is code librdkafka cannot run, and refused.
_LOGIN_HANDLER_KEY = "sasl.login.callback.handler.class"
_OIDC_LOGIN_HANDLERS = frozenset(
    {
        "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginCallbackHandler",
        "org.apache.kafka.common.security.oauthbearer.secured.OAuthBearerLoginCallbackHandler",
    }
)


def read_client_properties(source: Path) -> dict[str, str]:
    """The settings of a client properties file, by the names of :data:`FILE_KEYS`'s values
    (``sasl.jaas.config`` parsed into username and password, or the OAuth client). One-line
    ConfigurationError for an unreadable file or a key outside the allow-list."""
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"PROVISION_KAFKA_CLIENT_PROPERTIES: cannot read {source}: {exc.strerror}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"PROVISION_KAFKA_CLIENT_PROPERTIES: {source} is not UTF-8 text") from None
    resolved: dict[str, str] = {}
    for key, value in parse_properties(text).items():
        if key in IGNORED_FILE_KEYS:
            continue
        if key == _LOGIN_HANDLER_KEY:
            if value.strip() in _OIDC_LOGIN_HANDLERS:
                continue
            raise ConfigurationError(
                f"{source}: {key} {value!r} is not supported (only the OIDC client credentials login, "
                "OAuthBearerLoginCallbackHandler)"
            )
        name = FILE_KEYS.get(key)
        if name is None:
            raise ConfigurationError(
                f"{source}: unsupported key {key!r} (supported: {', '.join(sorted(FILE_KEYS))})"
            )
        if name == "jaas":
            for jaas_name, jaas_value in parse_jaas(value, where=f"{source}: sasl.jaas.config").items():
                resolved.setdefault(jaas_name, jaas_value)
        else:
            resolved[name] = value  # an explicit sasl.username wins over the jaas line's
    return resolved


def parse_properties(text: str) -> dict[str, str]:
    """A Java properties text: ``key=value``, ``key: value`` or ``key value``; ``#`` and ``!``
    comments; a line ending in an odd number of backslashes continues on the next; the escapes
    ``\\t \\n \\r \\f \\uXXXX`` and any other escaped character as itself. The last value of a key wins."""
    result: dict[str, str] = {}
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.lstrip()
        if not pending and (not line or line[0] in "#!"):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:
            pending += line[:-1]
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    for line in logical:
        key, value = _split(line)
        result[_unescape(key)] = _unescape(value)
    return result


def _split(line: str) -> tuple[str, str]:
    """Key and value: the key ends at the first unescaped ``=``, ``:`` or white space; then
    white space, at most one ``=`` or ``:``, and white space again are skipped."""
    i = 0
    while i < len(line) and line[i] not in "=: \t\f":
        i += 2 if line[i] == "\\" else 1
    key, rest = line[:i], line[i:].lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
        rest = rest[1:]
    return key, rest.lstrip(" \t\f")


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2 : i + 6]):
                out.append(chr(int(text[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


_JAAS = re.compile(
    r"^\s*(?P<module>[\w.$]+)\s+(?P<flag>required|requisite|sufficient|optional)\s*(?P<options>.*?)\s*;?\s*$",
    re.S,
)
_OPTION = re.compile(
    r"""\s*(?P<key>[\w.]+)\s*=\s*(?:"(?P<dq>(?:[^"\\]|\\.)*)"|'(?P<sq>(?:[^'\\]|\\.)*)'|(?P<bare>[^\s;]+))""",
    re.S,
)
_USER_MODULES = ("PlainLoginModule", "ScramLoginModule")


def parse_jaas(value: str, *, where: str = "sasl.jaas.config") -> dict[str, str]:
    """The credentials of a ``sasl.jaas.config`` line: username and password for the plain and
    SCRAM login modules, the client id, secret, scope and ``extension_<key>`` options (as
    ``sasl.oauthbearer.extensions``) for OAuthBearerLoginModule. Any other
    module, or a line that does not parse, is a ConfigurationError (the line's values not in it)."""
    match = _JAAS.match(value)
    if match is None:
        raise ConfigurationError(f"{where}: not a JAAS line (<LoginModule> required key='value' ...;)")
    module = match["module"].rsplit(".", 1)[-1]
    options: dict[str, str] = {}
    rest = match["options"]
    pos = 0
    while pos < len(rest):
        if rest[pos:].strip() == "":
            break
        option = _OPTION.match(rest, pos)
        if option is None:
            raise ConfigurationError(f"{where}: cannot read the options of {module}")
        raw = (
            option["dq"]
            if option["dq"] is not None
            else option["sq"]
            if option["sq"] is not None
            else option["bare"]
        )
        options[option["key"]] = re.sub(r"\\(.)", r"\1", raw or "")
        pos = option.end()
    if module in _USER_MODULES:
        found = {"username": options.get("username"), "password": options.get("password")}
    elif module == "OAuthBearerLoginModule":
        extensions = ",".join(
            f"{name.removeprefix('extension_')}={value}"
            for name, value in options.items()
            if name.startswith("extension_")
        )
        found = {
            "client_id": options.get("clientId"),
            "client_secret": options.get("clientSecret"),
            "scope": options.get("scope"),
            "extensions": extensions or None,
        }
    else:
        raise ConfigurationError(
            f"{where}: {module} is not supported (PlainLoginModule, ScramLoginModule, OAuthBearerLoginModule)"
        )
    return {k: v for k, v in found.items() if v is not None}
