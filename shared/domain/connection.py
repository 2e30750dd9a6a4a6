"""The connection string a tenant is given: a libpq URL to its own database as its own role."""

from __future__ import annotations

from urllib.parse import quote


def tenant_connection_string(
    host: str,
    port: int,
    database: str,
    role: str,
    *,
    password: str | None = None,
    sslmode: str | None = None,
) -> str:
    """``postgresql://role[:password]@host:port/database[?sslmode=…]``, each part percent-encoded.

    ``sslmode`` is the one the tenant cluster's admin URL names, if it names one (None: no
    ``sslmode`` parameter, libpq's default). Its ``sslrootcert`` is never carried: it is a path
    on the control plane's machine. With ``verify-full`` or ``verify-ca`` nothing else is added:
    the tenant brings its own CA (``sslrootcert`` in its own connection, or libpq's
    ``~/.postgresql/root.crt``). ``password`` is given only for the one-time reveal; the
    published result never carries it.
    """
    user = quote(role, safe="")
    if password is not None:
        user += ":" + quote(password, safe="")
    dsn = f"postgresql://{user}@{host}:{port}/{quote(database, safe='')}"
    if sslmode:
        dsn += "?sslmode=" + quote(sslmode, safe="")
    return dsn
