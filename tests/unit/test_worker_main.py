"""`python -m services.<step>` refuses bad configuration with one line and exit code 2."""

from __future__ import annotations

import pytest

from services.worker import main


@pytest.fixture(autouse=True)
def _no_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "PROVISION_LOCAL"):
        monkeypatch.delenv(name, raising=False)


def test_missing_addresses_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """No KAFKA_BOOTSTRAP_SERVERS/DATABASE_URL: one line naming them, exit 2, no traceback."""
    with pytest.raises(SystemExit) as exited:
        main("auth")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL are not set")


def test_an_invalid_setting_is_named_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A setting that does not parse is named with the reason, exit 2."""
    monkeypatch.setenv("PROVISION_SESSION_TIMEOUT_MS", "abc")
    with pytest.raises(SystemExit) as exited:
        main("auth")
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("error: invalid setting session_timeout_ms: ")
