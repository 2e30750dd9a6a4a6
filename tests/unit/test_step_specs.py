"""The step specs are built one step at a time: a worker builds the specs of the steps it runs
(and the collaborators of their handlers), nothing of the other steps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import services.specs
import services.worker
from services.bootstrap import App, build_app
from services.specs import SPEC_FACTORIES, Adapters, build_spec
from shared.domain.outcomes import StepSpec
from shared.domain.steps import ALL_STEPS, Chain
from shared.kafka import WorkerOptions
from shared.settings import Settings
from tests.fakes import Fakes

URL = "postgresql+psycopg://nobody@127.0.0.1:1/none"  # never connected to: specs are lazy
KEY = "m1d2Yk1sS3dVQ0hZbVh3b2pGb2xIVzBvWjZtM0lqZ0E="
COLLABORATORS = ("placed_clusters", "credentials", "registry", "key_store", "projects")
"""The App's cached collaborators that step handlers are bound to."""


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The step keys whose spec is built, in order (every factory spied on)."""
    keys: list[str] = []

    def spy(key: str, factory: Callable[[Adapters], StepSpec]) -> Callable[[Adapters], StepSpec]:
        def build(adapters: Adapters) -> StepSpec:
            keys.append(key)
            return factory(adapters)

        return build

    monkeypatch.setattr(services.specs, "SPEC_FACTORIES", {k: spy(k, f) for k, f in SPEC_FACTORIES.items()})
    return keys


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        kafka_bootstrap_servers="127.0.0.1:1", database_url=URL, state_dir=tmp_path, secret_key=KEY
    )


def _probe(step: str, point: str) -> None:
    """A probe that does nothing."""


def _made(app: App) -> set[str]:
    """Which of the handlers' collaborators the app has built."""
    return {name for name in COLLABORATORS if name in app.__dict__}


def test_every_step_of_every_chain_has_a_factory() -> None:
    """The registry holds one factory per step key of the three chains."""
    assert set(SPEC_FACTORIES) == {step.key for step in ALL_STEPS}


def test_a_factory_builds_the_spec_of_its_step(fakes: Fakes) -> None:
    """build_spec(key) gives a spec for that step, whichever the chain."""
    adapters = Adapters(
        clusters=lambda: fakes.clusters,
        credentials=lambda: fakes.credentials,
        registry=lambda: fakes.registry,
        keys_store=lambda: fakes.keys,
        ledger=lambda: fakes.ledger,
        regions=lambda: fakes.regions,
    )
    for step in ALL_STEPS:
        assert build_spec(step.key, adapters).step is step


def test_a_collaborator_not_given_is_a_type_error_only_when_used() -> None:
    """A step whose handler needs no collaborator builds from none; one that needs one refuses."""
    assert build_spec("deprovision-schema", Adapters()).step.key == "deprovision-schema"
    with pytest.raises(TypeError, match="not given"):
        build_spec("schema", Adapters())


def test_app_spec_builds_that_step_once_and_nothing_else(tmp_path: Path, built: list[str]) -> None:
    """App.spec(key) builds the spec of that one step, once, with only its handler's collaborators."""
    app = build_app(_settings(tmp_path))
    first = app.spec("keys")
    assert app.spec("keys") is first
    assert built == ["keys"]
    assert _made(app) == {"key_store"}


def test_the_all_steps_views_are_the_specs_app_spec_gives(tmp_path: Path, built: list[str]) -> None:
    """specs, reverse_specs and purge_specs hold the very specs App.spec gives, each built once."""
    app = build_app(_settings(tmp_path))
    views = {**app.specs, **app.reverse_specs, **app.purge_specs}
    assert list(views) == [step.key for step in ALL_STEPS]
    assert all(app.spec(key) is spec for key, spec in views.items())
    assert sorted(built) == sorted(views)


@pytest.mark.parametrize(
    ("chains", "expected"),
    [((Chain.PROVISIONING,), ["schema"]), (tuple(Chain), ["schema", "deprovision-schema"])],
)
def test_a_worker_for_one_step_builds_only_that_steps_spec(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    built: list[str],
    chains: tuple[Chain, ...],
    expected: list[str],
) -> None:
    """run_worker("schema") builds the specs of the schema service's steps in the chains it
    runs, and of their collaborators only the tenant clusters; each worker gets the probe."""
    apps: list[App] = []
    given: list[str] = []
    options: list[WorkerOptions] = []

    def wire(settings: Settings, **kwargs: Any) -> App:
        apps.append(build_app(settings, **kwargs))
        return apps[-1]

    def worker(spec: StepSpec, **wiring: Any) -> object:
        given.append(spec.step.key)
        options.append(wiring["options"])
        return object()

    monkeypatch.setattr(services.worker, "build_app", wire)
    monkeypatch.setattr(services.worker, "StepWorker", worker)
    monkeypatch.setattr(services.worker, "_run_all", lambda workers, stop: None)
    monkeypatch.setattr(services.worker, "configure_logging", lambda *_: None)
    monkeypatch.setattr(App, "consumer", lambda self, group_id, **_: object())
    monkeypatch.setattr(App, "publisher", None)
    services.worker.run_worker("schema", _settings(tmp_path), chains=chains, probe=_probe)
    assert given == built == expected
    assert [o.probe for o in options] == [_probe] * len(expected)
    assert len({o.owner for o in options}) == len(expected), "each consumer leases as an owner of its own"
    # The project records back the worker's store as well; the rest is the handlers'.
    assert _made(apps[0]) - {"projects"} == {"placed_clusters"}
