"""The read models on PostgreSQL: the list view's stage, derived in SQL in one pass, agrees
with the domain's ``derive_stage`` over every combination of step statuses that decides it."""

from __future__ import annotations

import random

from services.bootstrap import App
from shared.domain.steps import (
    PURGE_STEP,
    REVERSE_STEP_NAMES,
    REVERSE_STEPS,
    STEPS,
    Stage,
    StepStatus,
    derive_stage,
    step_by_name,
)
from tests.integration.test_store_contract import REV_SECOND, deprovision, register, reverse_done
from tests.support import unique_project

S = StepStatus
FORWARD = [s.name for s in STEPS]
REMOVAL = [*REVERSE_STEP_NAMES, PURGE_STEP.name]
POSITION = {**{s.name: s.position for s in STEPS}, **{s.name: s.position for s in REVERSE_STEPS}}
POSITION[PURGE_STEP.name] = PURGE_STEP.position
NOT_DONE = (S.PENDING, S.RUNNING, S.FAILED, S.CANCELLED)
DONE = (S.SUCCESS, S.SKIPPED)
Case = tuple[dict[str, StepStatus], bool]


def _chain(names: list[str], k: int, done: StepStatus, at: StepStatus) -> dict[str, StepStatus]:
    """The first ``k`` steps ``done``, the next ``at``, the rest pending."""
    return {n: done if i < k else at if i == k else S.PENDING for i, n in enumerate(names)}


def stage_cases() -> list[Case]:
    """Step statuses (with whether the project was ever ready) that decide a stage: no rows; the
    provisioning chain stopped at each step in each way; done in full; a failure or a done step
    past one not done; the removal chain likewise over a few provisioning states, its purge in
    every status once the reverse chain is done, an orphan's removal rows alone; then a seeded
    sample of every status anywhere."""
    cases: list[Case] = [({}, False), ({n: S.PENDING for n in FORWARD}, False)]
    for k in range(len(FORWARD)):
        for done in DONE:
            for at in NOT_DONE:
                cases.append((_chain(FORWARD, k, done, at), False))
    cases.append(({n: S.SUCCESS for n in FORWARD}, True))
    cases.append(({n: DONE[i % 2] for i, n in enumerate(FORWARD)}, True))
    cases.append(({n: S.PENDING for n in FORWARD} | {FORWARD[0]: S.RUNNING, FORWARD[3]: S.FAILED}, False))
    cases.append(({n: S.PENDING for n in FORWARD} | {FORWARD[1]: S.SUCCESS}, False))
    cases.append(({n: S.SUCCESS for n in FORWARD} | {FORWARD[2]: S.PENDING}, True))
    forwards = [
        {n: S.SUCCESS for n in FORWARD},
        _chain(FORWARD, 2, S.SUCCESS, S.FAILED),
        _chain(FORWARD, 3, S.SKIPPED, S.CANCELLED) | {FORWARD[5]: S.CANCELLED},
    ]
    reverse = REMOVAL[:-1]
    for forward in forwards:
        for ready in (False, True):
            for k in range(len(reverse)):
                for done in DONE:
                    for at in NOT_DONE:
                        removal = _chain(reverse, k, done, at) | {PURGE_STEP.name: S.PENDING}
                        cases.append((forward | removal, ready))
            for purge in S:
                cases.append((forward | {n: S.SUCCESS for n in reverse} | {PURGE_STEP.name: purge}, ready))
    for purge in S:
        cases.append(({n: S.SKIPPED for n in reverse} | {PURGE_STEP.name: purge}, False))
    cases.append(({n: S.PENDING for n in REMOVAL}, False))
    rng = random.Random(20250101)  # noqa: S311 - a reproducible sample, not a secret
    for _ in range(300):
        statuses = {n: rng.choice(list(S)) for n in FORWARD}
        if rng.random() < 0.5:
            statuses |= {n: rng.choice(list(S)) for n in REMOVAL}
        cases.append((statuses, rng.random() < 0.5))
    return cases


def _stage_of_key(key: str) -> Stage:
    return Stage(key) if key in Stage._value2member_map_ else step_by_name(key).stage


def test_the_list_views_stage_agrees_with_derive_stage_over_the_status_combinations(app: App) -> None:
    """Every case written to the step table as it stands is staged by the overview's SQL as
    derive_stage stages it (and the per-stage counts include it)."""
    cases = {f"{unique_project('stage')}-{i}": case for i, case in enumerate(stage_cases())}
    with app.engine.begin() as conn:
        for project_id, (statuses, ready) in cases.items():
            conn.exec_driver_sql(
                "INSERT INTO projects (project_id, ready_at) VALUES (%(p)s, CASE WHEN %(r)s THEN now() END)",
                {"p": project_id, "r": ready},
            )
            for name, status in statuses.items():
                conn.exec_driver_sql(
                    "INSERT INTO provisioning_steps (project_id, step_name, position, status) "
                    "VALUES (%(p)s, %(s)s, %(pos)s, %(st)s)",
                    {"p": project_id, "s": name, "pos": POSITION[name], "st": status.value},
                )

    rows, counts = app.read_models.overview(limit=10**7)

    staged = {row.project_id: row.stage_key for row in rows if row.project_id in cases}
    assert set(staged) == set(cases)
    disagreements = {
        project_id: (statuses, ready, staged[project_id], derive_stage(statuses, ever_ready=ready).value)
        for project_id, (statuses, ready) in cases.items()
        if _stage_of_key(staged[project_id]) is not derive_stage(statuses, ever_ready=ready)
    }
    assert disagreements == {}
    seen = {_stage_of_key(key) for key in staged.values()}
    assert seen == set(Stage)
    assert all(counts[key] >= 1 for key in set(staged.values()))


def test_overview_stages_of_a_deprovisioning_agree_with_derive_stage(app: App) -> None:
    """The overview's stage keys once reverse rows exist are DEPROVISIONING, DELETED (was ready),
    CANCELLED (never ready) and FAILED (a reverse step failed), as derive_stage has them."""
    repo = app.repository
    projects: dict[Stage, str] = {}
    for stage in (Stage.DEPROVISIONING, Stage.DELETED, Stage.CANCELLED, Stage.FAILED):
        project_id, _, _ = register(repo)
        if stage is Stage.DELETED:
            app.projects.mark_ready(project_id)
        deprovisioning = deprovision(repo, project_id)
        if stage is not Stage.DEPROVISIONING:
            reverse_done(
                repo, project_id, deprovisioning, failing=REV_SECOND if stage is Stage.FAILED else None
            )
        projects[stage] = project_id

    rows, counts = app.read_models.overview(limit=100_000)

    found = {row.project_id: row.stage_key for row in rows}
    for stage, project_id in projects.items():
        snapshot = repo.snapshot(project_id)
        assert snapshot.project is not None
        statuses = {r.step_name: r.status for r in snapshot.steps}
        derived = derive_stage(statuses, ever_ready=snapshot.project.ready_at is not None)
        assert found[project_id] == stage.value == derived.value, project_id
        assert counts[stage.value] >= 1
    selected, _ = app.read_models.overview([Stage.CANCELLED.value], limit=100_000)
    assert projects[Stage.CANCELLED] in {row.project_id for row in selected}
    assert not {projects[s] for s in (Stage.DELETED, Stage.FAILED)} & {row.project_id for row in selected}
