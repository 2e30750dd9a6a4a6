"""docker-compose.yml is checked without a Docker engine: the Compose Specification's own
schema (as vendored by check-jsonschema), then what `docker compose config` adds on top of it:
references between services, volumes and files, interpolation syntax, and commands that
the image's entry point really has."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import AliasChoices
from typer.main import get_command

from services.cli import app
from shared.domain.acls import ADMIN, API, REQUESTER, user_name
from shared.domain.steps import STEP_KEYS, step_by_key
from shared.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}, ${VAR:+x}, $VAR, $$.
INTERPOLATION = re.compile(r"\$(?:\$|[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?[-?+])[^}]*)?\})")


def _compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def _spec_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text(encoding="utf-8"))
    assert isinstance(schema, dict)
    return schema


def _validator() -> jsonschema.protocols.Validator:
    schema = _spec_schema()
    validator: jsonschema.protocols.Validator = jsonschema.validators.validator_for(schema)(schema)
    return validator


def _strings(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in (*_strings(key), *_strings(value))]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []


def test_compose_file_follows_the_compose_specification() -> None:
    """docker-compose.yml validates against the Compose Specification's JSON Schema."""
    validator = _validator()
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(_compose())
    ]
    assert errors == []


def test_compose_file_references_resolve() -> None:
    """Every depends_on names a service, every named volume is declared, every build exists."""
    compose = _compose()
    services: dict[str, dict[str, Any]] = compose["services"]
    volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert set(depends) <= set(services), f"{name} depends on an unknown service"
        for mount in service.get("volumes") or []:
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount.get("source", "")
            if source and not source.startswith((".", "/", "~")):
                assert source in volumes, f"{name} mounts undeclared volume {source!r}"
        build = service.get("build")
        if isinstance(build, dict):
            context = REPO_ROOT / build.get("context", ".")
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), f"{name}: no Dockerfile"


def test_compose_interpolations_are_well_formed() -> None:
    """Every `$` in the file is a valid Compose interpolation (or an escaped `$$`)."""
    for text in _strings(_compose()):
        leftover = INTERPOLATION.sub("", text)
        assert "$" not in leftover, f"malformed interpolation in {text!r}"


def test_compose_runs_one_worker_per_step_with_real_commands() -> None:
    """There is one worker service per step, and every command is a real `provision` command."""
    services: dict[str, dict[str, Any]] = _compose()["services"]
    commands = get_command(app).list_commands(None)  # type: ignore[attr-defined, arg-type]
    image_services = {
        n: s for n, s in services.items() if s.get("image", "").startswith("tenant-provisioning")
    }
    for name, service in image_services.items():
        command = service.get("command")
        assert isinstance(command, list) and command, f"{name} has no command"
        assert command[0] in commands or command == ["--help"], f"{name} runs unknown command {command[0]!r}"
    workers = sorted(s["command"][1] for s in image_services.values() if s["command"][0] == "worker")
    assert workers == sorted(STEP_KEYS)


@pytest.mark.parametrize("broken", ["${PROVISION_SECRET_KEY", "$ {X}", "${1X}"])
def test_malformed_interpolation_is_caught(broken: str) -> None:
    """The interpolation check itself refuses malformed forms."""
    assert "$" in INTERPOLATION.sub("", broken)


def test_the_specification_check_refuses_an_unknown_service_key() -> None:
    """The schema check is live: a misspelt service key is refused."""
    compose = _compose()
    compose["services"]["database"]["comand"] = ["worker", "database"]
    validator = _validator()
    assert any("comand" in e.message for e in validator.iter_errors(compose))


def _setting_names() -> set[str]:
    """Every environment variable Settings reads: PROVISION_<FIELD> and each alias."""
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        names.add(f"PROVISION_{name.upper()}")
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias)
    return names


def test_every_variable_given_to_the_image_is_a_setting_the_code_reads() -> None:
    """Each environment variable of a service running the image is read by Settings."""
    settings = _setting_names()
    for name, service in _compose()["services"].items():
        if not service.get("image", "").startswith("tenant-provisioning"):
            continue
        environment = service.get("environment") or {}
        keys = [e.split("=", 1)[0] for e in environment] if isinstance(environment, list) else environment
        unknown = sorted(set(keys) - settings)
        assert unknown == [], f"{name} sets variables nothing reads: {unknown}"


def test_every_service_of_the_image_can_build_it() -> None:
    """Each service running the project's image has a build section, so any of them builds it."""
    for name, service in _compose()["services"].items():
        if service.get("image", "").startswith("tenant-provisioning"):
            assert service.get("build"), f"{name} cannot build the image"


def test_each_service_connects_to_kafka_as_its_own_principal() -> None:
    """Each step worker, the API and the topic initialiser default to their own principal."""
    services: dict[str, dict[str, Any]] = _compose()["services"]
    expected = {**{step: user_name(step_by_key(step).service) for step in STEP_KEYS}}
    expected |= {"api": user_name(API), "topics": user_name(ADMIN), "provision": user_name(REQUESTER)}
    for name, principal in expected.items():
        username = services[name]["environment"]["PROVISION_KAFKA_SASL_USERNAME"]
        assert username.endswith(f":-{principal}}}"), f"{name} connects as {username}"
        assert services[name]["environment"]["PROVISION_KAFKA_SASL_PASSWORD"].endswith(":-}")
    usernames = [services[name]["environment"]["PROVISION_KAFKA_SASL_USERNAME"] for name in expected]
    assert len(set(usernames)) == len(usernames)  # nobody shares one


def test_an_empty_variable_reads_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`${VAR:-}` gives the services an empty value, which Settings reads as not given."""
    monkeypatch.setenv("PROVISION_KAFKA_SECURITY_PROTOCOL", "")
    monkeypatch.setenv("PROVISION_KAFKA_SASL_PASSWORD", "")
    settings = Settings()
    assert settings.kafka_security_protocol is None and settings.kafka_sasl_password is None
