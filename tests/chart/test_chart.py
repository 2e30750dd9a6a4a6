"""services/chart checked with the helm that tooling/chart.py builds (never skipped: no helm is a
failure): lint, render, the rendered objects against Kubernetes' schemas (kubernetes-validate,
offline) and KEDA's (vendored from its CRDs), and what the chart promises: non-root read-only
containers, probes on the served paths, each step with its own principal's secret only, KEDA
capped at the partitions, the jobs as hooks. No cluster, no Kafka, no PostgreSQL."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from typer.main import get_command

from services.cli import app
from services.specs import SECRET_STEPS
from shared.domain.acls import ADMIN, API, user_name
from shared.domain.steps import ALL_STEPS, STEP_KEYS
from tooling import chart
from tooling.errors import ToolingError

pytestmark = pytest.mark.chart

HERE = Path(__file__).resolve().parent
FULL_VALUES = HERE / "full-values.yaml"
VARIANTS = {"default": (), "full": (FULL_VALUES,)}
KEDA_SCHEMAS = {
    "ScaledObject": HERE / "keda-scaledobject.schema.json",
    "TriggerAuthentication": HERE / "keda-triggerauthentication.schema.json",
}
# The chart's kubeVersion floor, a recent release, and the newest the package ships.
KUBE_VERSIONS = (
    "1.31",
    "1.34",
    kubernetes_validate.utils.major_minor(kubernetes_validate.utils.latest_version()),
)
TENANT_CLUSTER_STEPS = frozenset({"database", "schema", "verify"})
HOOK = "helm.sh/hook"
Doc = dict[str, Any]


@pytest.fixture(scope="session", autouse=True)
def helm(pytestconfig: pytest.Config) -> Path:
    """The pinned helm, built on first use (its progress on the terminal, past the capture): a build
    that fails fails every test here."""
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")

    def progress(line: str) -> None:
        if reporter is None or capture is None:
            print(line)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)

    try:
        return chart.ensure_helm(progress=progress)
    except ToolingError as exc:
        pytest.fail(f"helm could not be had, so the chart is unchecked: {exc}", pytrace=False)


@functools.cache
def _render(variant: str, *sets: str) -> tuple[Doc, ...]:
    text = chart.template(values=VARIANTS[variant], set_values=sets)
    return tuple(doc for doc in yaml.safe_load_all(text) if doc)


def _kind(docs: tuple[Doc, ...], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def _component(doc: Doc) -> str:
    component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
    assert isinstance(component, str)
    return component


def _pods(docs: tuple[Doc, ...]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield f"{doc['kind']} {doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def _secret_keys(container: Doc) -> dict[str, tuple[str, str]]:
    """Each variable taken from a Secret: its Secret and key."""
    refs = {}
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            refs[var["name"]] = (ref["name"], ref["key"])
    return refs


def _literal(container: Doc, name: str) -> str | None:
    return next((v.get("value") for v in container.get("env", []) if v["name"] == name), None)


def _steps(docs: tuple[Doc, ...]) -> dict[str, Doc]:
    return {_component(d): d for d in _kind(docs, "Deployment") if _component(d) != "api"}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_passes(variant: str) -> None:
    """`helm lint --strict` passes with the default values and with every switch on."""
    result = chart.lint(values=VARIANTS[variant])
    assert result.ok, result.stdout + result.stderr


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_template_renders_every_object(variant: str) -> None:
    """The chart renders a Deployment per step and the API, two hook Jobs, a PDB each, config and secrets."""
    docs = _render(variant)
    counts = {kind: len(_kind(docs, kind)) for kind in {d["kind"] for d in docs}}
    expected = {
        "Deployment": 8,
        "PodDisruptionBudget": 8,
        "Job": 2,
        "ConfigMap": 1,
        "Secret": 2,
        "Service": 1,
    }
    if variant == "full":
        expected |= {"ScaledObject": 7, "TriggerAuthentication": 7}
    assert counts == expected
    assert set(_steps(docs)) == set(STEP_KEYS)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(variant: str, version: str) -> None:
    """Every built-in object validates strictly (no unknown field) against that Kubernetes's schema."""
    checked = 0
    for doc in _render(variant):
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        used = kubernetes_validate.validate(doc, version, strict=True)
        assert used == version, f"{doc['kind']}: validated against {used}, not {version}"
        checked += 1
    assert checked >= 22


def test_the_package_ships_a_current_kubernetes_schema() -> None:
    """kubernetes-validate has the schemas of a current Kubernetes (1.34 or newer)."""
    latest = tuple(int(part) for part in kubernetes_validate.utils.latest_version().split("."))
    assert latest >= (1, 34)


def test_the_keda_objects_validate_against_kedas_crd_schemas() -> None:
    """Each ScaledObject and TriggerAuthentication validates against the schema of KEDA's CRD."""
    docs = _render("full")
    for kind, path in KEDA_SCHEMAS.items():
        schema = json.loads(path.read_text(encoding="utf-8"))
        validator = jsonschema.Draft202012Validator(schema)
        objects = _kind(docs, kind)
        assert len(objects) == 7
        for doc in objects:
            errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
            assert not errors, f"{kind} {doc['metadata']['name']}: {errors}"


def test_the_keda_schema_refuses_what_keda_would() -> None:
    """The vendored schema is no rubber stamp: an unknown field and a non-string trigger value fail it."""
    scaled = json.loads(json.dumps(_kind(_render("full"), "ScaledObject")[0]))
    validator = jsonschema.Draft202012Validator(json.loads(KEDA_SCHEMAS["ScaledObject"].read_text()))
    typo = json.loads(json.dumps(scaled))
    typo["spec"]["maxReplicas"] = 3
    number = json.loads(json.dumps(scaled))
    number["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 10
    assert not list(validator.iter_errors(scaled))
    assert list(validator.iter_errors(typo))
    assert list(validator.iter_errors(number))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_container_is_non_root_with_a_read_only_root_filesystem(variant: str) -> None:
    """Pods non-root, seccomp RuntimeDefault; containers read-only, no escalation or caps, /tmp emptyDir."""
    pods = list(_pods(_render(variant)))
    assert len(pods) == 10
    for where, pod in pods:
        pod_context = pod["securityContext"]
        assert pod_context["runAsNonRoot"] is True, where
        assert pod_context["runAsUser"] != 0, where
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod["automountServiceAccountToken"] is False, where
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert context.get("runAsNonRoot", pod_context["runAsNonRoot"]) is True, where
            assert "privileged" not in context, where
            tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")  # noqa: S108
            assert "emptyDir" in volumes[tmp["name"]], where
            assert container["resources"]["requests"] and container["resources"]["limits"], where


def _port(container: Doc, probe: Doc) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    return next(int(p["containerPort"]) for p in container["ports"] if p["name"] == port)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_probes_ask_the_paths_and_ports_the_processes_serve(variant: str) -> None:
    """Workers: /healthz and /readyz on PROVISION_METRICS_PORT; the API: readiness /healthz on its port."""
    docs = _render(variant)
    for step, deployment in _steps(docs).items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        metrics_port = int(_literal(container, "PROVISION_METRICS_PORT") or 0)
        assert metrics_port, step
        for probe, path in (
            ("startupProbe", "/healthz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ):
            assert container[probe]["httpGet"]["path"] == path, (step, probe)
            assert _port(container, container[probe]) == metrics_port, (step, probe)
    api = next(d for d in _kind(docs, "Deployment") if _component(d) == "api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    bound = int(args[args.index("--port") + 1])
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert _port(container, container["readinessProbe"]) == bound
    # Liveness asks for a route that needs no database, so a database outage restarts no pod.
    assert container["livenessProbe"]["httpGet"]["path"] == "/metrics"
    assert _port(container, container["livenessProbe"]) == bound
    service = _kind(docs, "Service")[0]
    assert service["spec"]["ports"][0]["targetPort"] in ("http", bound)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_step_gets_only_its_own_principals_secret(variant: str) -> None:
    """A step's pod reads its own principal's password and only the secrets its step uses, key by key."""
    docs = _render(variant)
    secret_name = next(
        s["metadata"]["name"]
        for s in _kind(docs, "Secret")
        if HOOK not in s["metadata"].get("annotations", {})
    )
    usernames = {"api": "tenant-api-key"} if variant == "full" else {}
    for step, deployment in _steps(docs).items():
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        expected = {
            "DATABASE_URL": (secret_name, "DATABASE_URL"),
            "PROVISION_KAFKA_SASL_PASSWORD": (secret_name, f"KAFKA_{step.upper()}_PASSWORD"),
        }
        if step in SECRET_STEPS:
            expected["PROVISION_SECRET_KEY"] = (secret_name, "PROVISION_SECRET_KEY")
        if step in TENANT_CLUSTER_STEPS:
            expected["TENANT_DATABASE_URL"] = (secret_name, "TENANT_DATABASE_URL")
        assert _secret_keys(container) == expected, step
        assert _literal(container, "PROVISION_KAFKA_SASL_USERNAME") == user_name(step), step
        assert all("secretRef" not in source for source in container.get("envFrom", [])), step
        assert all("secret" not in v or v["name"] == "kafka-ca" for v in pod["volumes"]), step
    api = next(d for d in _kind(docs, "Deployment") if _component(d) == "api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    assert {key for _, key in _secret_keys(container).values()} == {
        "DATABASE_URL",
        "PROVISION_API_TOKENS",
        "KAFKA_API_PASSWORD",
    }
    assert _literal(container, "PROVISION_KAFKA_SASL_USERNAME") == usernames.get(API, user_name(API))
    jobs = {_component(j): j["spec"]["template"]["spec"]["containers"][0] for j in _kind(docs, "Job")}
    assert {key for _, key in _secret_keys(jobs["migrate"]).values()} == {
        "DATABASE_URL",
        "PROVISION_MIGRATION_DATABASE_URL",
    }
    assert {key for _, key in _secret_keys(jobs["topics"]).values()} == {
        "DATABASE_URL",
        "KAFKA_ADMIN_PASSWORD",
    }
    assert _literal(jobs["topics"], "PROVISION_KAFKA_SASL_USERNAME") == user_name(ADMIN)
    # The long-lived Secret holds no admin password and no migration URL: only the hooks use them.
    main = next(s for s in _kind(docs, "Secret") if s["metadata"]["name"] == secret_name)
    assert not {"KAFKA_ADMIN_PASSWORD", "PROVISION_MIGRATION_DATABASE_URL"} & set(main["stringData"])
    config = _kind(docs, "ConfigMap")[0]["data"]
    assert not set(config) & set(main["stringData"])
    assert not any("@" in value for value in config.values()), "a URL with a password in the ConfigMap"


def test_an_existing_secret_replaces_the_charts_own() -> None:
    """With existingSecret the chart makes no Secret and every pod reads that one (the CA from its own)."""
    docs = _render("full", "existingSecret=provisioning-secrets")
    assert not _kind(docs, "Secret")
    names = {
        name
        for _, pod in _pods(docs)
        for container in pod["containers"]
        for name, _ in _secret_keys(container).values()
    }
    assert names == {"provisioning-secrets"}
    refs = {r["name"] for t in _kind(docs, "TriggerAuthentication") for r in t["spec"]["secretTargetRef"]}
    assert refs == {"provisioning-secrets", "kafka-ca"}


def test_the_scaledobjects_follow_the_steps_groups_and_stay_within_the_partitions() -> None:
    """Each step's ScaledObject scales its Deployment on its groups' input lag, within 1..partitions."""
    docs = _render("full")
    partitions = yaml.safe_load(FULL_VALUES.read_text())["kafka"]["partitions"]
    deployments = {d["metadata"]["name"]: d for d in _kind(docs, "Deployment")}
    for scaled in _kind(docs, "ScaledObject"):
        step = _component(scaled)
        spec = scaled["spec"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions, step
        target = deployments[spec["scaleTargetRef"]["name"]]
        assert _component(target) == step
        assert "replicas" not in target["spec"], f"{step}: KEDA owns the replicas"
        wanted = {(s.consumer_group, s.input_topic) for s in ALL_STEPS if s.service == step}
        triggers = spec["triggers"]
        assert {(t["metadata"]["consumerGroup"], t["metadata"]["topic"]) for t in triggers} == wanted
        assert all(t["type"] == "kafka" for t in triggers)
        assert all(
            t["metadata"]["sasl"] == "scram_sha512" and t["metadata"]["tls"] == "enable" for t in triggers
        )


def test_a_larger_maximum_is_cut_to_the_partitions() -> None:
    """keda.maxReplicaCount above kafka.partitions renders as the partitions."""
    docs = _render("full", "keda.maxReplicaCount=50", "kafka.partitions=4", "workers.steps.keys.replicas=1")
    assert {s["spec"]["maxReplicaCount"] for s in _kind(docs, "ScaledObject")} == {4}


@pytest.mark.parametrize(
    ("sets", "says"),
    [
        (("workers.replicas=4",), "only kafka.partitions (3)"),
        (("keda.enabled=true", "keda.minReplicaCount=0"), "at least 1"),
    ],
)
def test_the_chart_refuses_replicas_that_cannot_work(sets: tuple[str, ...], says: str) -> None:
    """More step replicas than partitions, or KEDA scaling a step to zero, fail the render with the reason."""
    with pytest.raises(ToolingError, match=re.escape(says)):
        _render("default", *sets)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_migrations_and_topics_run_as_hooks_before_install_and_upgrade(variant: str) -> None:
    """The two Jobs (and their Secret) are pre-install,pre-upgrade hooks, in order, deleted on success."""
    docs = _render(variant)
    hooks = {
        d["metadata"]["name"]: d["metadata"]["annotations"]
        for d in docs
        if HOOK in d["metadata"].get("annotations", {})
    }
    jobs = {_component(j): j["metadata"]["name"] for j in _kind(docs, "Job")}
    assert set(jobs.values()) <= set(hooks)
    assert len(hooks) == 3  # the two jobs and the hooks' Secret
    for marks in hooks.values():
        assert marks[HOOK] == "pre-install,pre-upgrade"
        assert set(marks["helm.sh/hook-delete-policy"].split(",")) == {
            "before-hook-creation",
            "hook-succeeded",
        }
    weights = {name: int(a["helm.sh/hook-weight"]) for name, a in hooks.items()}
    secret = next(name for name in hooks if name not in jobs.values())
    assert weights[secret] < weights[jobs["migrate"]] < weights[jobs["topics"]]


def test_the_commands_the_chart_runs_exist() -> None:
    """Every container's arguments name a real `provision` command (worker <step>, migrate, topics, api)."""
    commands = get_command(app).list_commands(None)  # type: ignore[attr-defined, arg-type]
    for _, pod in _pods(_render("default")):
        args = pod["containers"][0]["args"]
        assert args[0] in commands, args
        if args[0] == "worker":
            assert args[1] in STEP_KEYS


def test_the_workers_have_time_to_drain() -> None:
    """A worker's grace period outlasts its final flush (10 s) with room for the message in hand."""
    for deployment in _steps(_render("default")).values():
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30
