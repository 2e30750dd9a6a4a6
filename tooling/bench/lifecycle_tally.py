"""The lifecycle bench's pure parts (unit-tested): which projects are removed and when, the
kept projects' rate, the deprovisioning durations, what is left of a removed project, the
tallies, the verdict and the summary lines. The run is :mod:`tooling.bench.lifecycle`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from shared.domain.records import StepRow
from shared.domain.steps import STEP_NAMES, Stage, StepStatus
from tooling.bench.stats import burst_rate, ms

REMOVED = frozenset({Stage.DELETED, Stage.CANCELLED})
"""Where a deprovisioned project must end."""

# --- the tallies ---------------------------------------------------------------------------------


def spread(project_ids: Sequence[str], count: int) -> list[str]:
    """``count`` of the ids, evenly spread through them (every (M/D)-th, the first included).

    ValueError when ``count`` is negative or more than there are ids.
    """
    if not 0 <= count <= len(project_ids):
        raise ValueError(f"cannot pick {count} of {len(project_ids)} projects")
    return [project_ids[i * len(project_ids) // count] for i in range(count)]


def schedule(project_ids: Sequence[str], removed: Iterable[str], lag: int) -> dict[str, list[str]]:
    """After which project's request each removed project is deprovisioned: ``lag`` requests
    after its own (0: right after it), or after the last request when the burst is shorter.
    A larger lag reaches projects whose steps have run (their work is undone) or are done."""
    if lag < 0:
        raise ValueError(f"lag must not be negative, got {lag}")
    position = {pid: i for i, pid in enumerate(project_ids)}
    after: dict[str, list[str]] = {}
    for pid in removed:
        trigger = project_ids[min(position[pid] + lag, len(project_ids) - 1)]
        after.setdefault(trigger, []).append(pid)
    return after


def durations_s(rows: Iterable[tuple[datetime | None, datetime | None]]) -> list[float]:
    """Seconds from each deprovisioning request to its ``deleted_at`` (pairs not both known are
    left out)."""
    return [ms(deleted - requested) / 1000 for requested, deleted in rows if requested and deleted]


def kept_rate(first_call: float, finals: Sequence[datetime | None]) -> dict[str, Any]:
    """Throughput of the kept projects: how many completed, from the burst's first request
    call (``time.time()``) to the last one's final step ``completed_at``."""
    return {
        **burst_rate(first_call, finals),
        "timing": "first request call start -> last kept project's verify completed_at",
    }


def residue(found: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """What is left of each removed project, from ``(project_id, what)`` pairs."""
    left: dict[str, list[str]] = {}
    for project_id, what in found:
        left.setdefault(project_id, []).append(what)
    return {pid: sorted(whats) for pid, whats in sorted(left.items())}


def provisioned_any(steps: Iterable[StepRow]) -> bool:
    """Whether any provisioning step of these rows succeeded (its work then had to be undone)."""
    return any(s.status is StepStatus.SUCCESS and s.step_name in STEP_NAMES for s in steps)


def counts(
    kept_integrity: Mapping[str, Any],
    stages: Mapping[str, Stage],
    left: Mapping[str, list[str]],
    failed: Iterable[str],
    dead_lettered: Iterable[str],
) -> dict[str, int]:
    """The run's tallies: kept projects completed, lost and duplicated; removed ones deleted,
    cancelled, not removed (any other stage) and left behind; projects with a failed step or a
    dead-lettered message."""
    checked = int(kept_integrity["projects_checked"])
    lost = int(kept_integrity["lost"])
    return {
        "completed": checked - lost,
        "lost": lost,
        "duplicated": int(kept_integrity["duplicated_or_missing_side_effects"]),
        "deleted": sum(1 for s in stages.values() if s is Stage.DELETED),
        "cancelled": sum(1 for s in stages.values() if s is Stage.CANCELLED),
        "not_removed": sum(1 for s in stages.values() if s not in REMOVED),
        "left_behind": len(left),
        "failed": len(set(failed)),
        "dead_lettered": len(set(dead_lettered)),
    }


_BAD = ("lost", "duplicated", "not_removed", "left_behind", "failed", "dead_lettered")


def verdict(tally: Mapping[str, int]) -> tuple[bool, str]:
    """Whether the run is clean, and a one-line account of what is not."""
    wrong = [f"{tally[k]} {k.replace('_', ' ')}" for k in _BAD if tally[k]]
    return not wrong, ", ".join(wrong) or "nothing lost, duplicated or left behind"


def summary_lines(section: Mapping[str, Any]) -> list[str]:
    """The lines printed at the end of a run, from the result's ``lifecycle`` section."""
    c, kept, dep = section["counts"], section["kept_throughput"], section["deprovision_s"]
    sizes = f"{section['requested']} requested, {section['deprovisioned']} deprovisioned during the burst"
    if section.get("lag"):
        sizes += f", each {section['lag']} requests after its own"
    durations = "none finished" if dep is None else f"p50 {dep['p50']:.2f} s, p95 {dep['p95']:.2f} s"
    return [
        f"lifecycle: {sizes}",
        f"kept: {c['completed']} of {section['kept']} completed, {c['lost']} lost, "
        f"{c['duplicated']} duplicated; {kept['projects_per_second']} projects/s over {kept['seconds']} s",
        f"removed: {c['deleted']} deleted, {c['cancelled']} cancelled, {c['not_removed']} not removed, "
        f"{c['left_behind']} left behind ({section['removed_after_a_step_done']} after a step done); "
        f"request -> deleted_at {durations}",
        f"failed: {c['failed']}, dead-lettered: {c['dead_lettered']}",
        f"verdict: {'ok' if section['ok'] else 'FAILED'} ({section['verdict']})",
    ]
