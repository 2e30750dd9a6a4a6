"""``provision reconcile``: drift between the record and the clusters, repaired forward.

An inventory is taken first, whole: every project with its steps and where it stands in its
life, every tenant database, archive and role on each tenant cluster, every tenant registered at
each service, every project's API keys. Only then is anything judged, because absence proves
something only against a complete listing:

- a source that cannot be listed aborts the run (``ReconcileAbortedError``), nothing judged;
- a listing that contradicts the record wholesale (empty, or lacking more than a small share of
  what the record says it holds) is not trusted either: the run aborts naming the source and the
  counts. A service restarted with an empty catalogue must not look like 22 lost tenants.

Judging changes nothing. What ``--apply`` does with a report never removes a live project:

- a live project lacking what its record says was made (a registration, its role, its keys, or
  the database of a project never ready) has the steps that made it re-run (``success ->
  pending``, a repair), through the normal chain: the step's own idempotent work, then verify;
- the database of a project that was ready, or the archive of a deleted one, missing is data
  loss: reported for a human, never "fixed";
- an orphan (a tenant database, role or registration no project explains) is removed, by the
  reverse chain (which archives, purge later), only once it has been seen orphaned in two
  inventories at least a grace period apart (``PROVISION_RECONCILE_GRACE_SECONDS``);
- what is left by a deleted project, a stray on another cluster, an archive no deleted project
  explains: left to the operator.

One concern a module, each importing only those before it: ``findings`` (the drift kinds, the
finding records and the report), ``records`` (what the control plane records: projects, their
placements and keys, the orphans' sightings), ``inventory`` (what is listed, whole or not at
all), ``judge`` (the evidence rules, and ``reconcile`` itself), ``plan`` (what is to be done,
decided purely) and ``repair`` (what ``--apply`` does). The names callers use are re-exported
here.
"""

from __future__ import annotations

from .findings import DriftKind, Finding, ReconcileAbortedError, ReconcileReport
from .inventory import Inventory, take_inventory
from .judge import judge, reconcile
from .plan import Action, Planned, Repair, describe, plan
from .records import ProjectState, Removal
from .repair import plan_for, repair

__all__ = [
    "Action",
    "DriftKind",
    "Finding",
    "Inventory",
    "Planned",
    "ProjectState",
    "ReconcileAbortedError",
    "ReconcileReport",
    "Removal",
    "Repair",
    "describe",
    "judge",
    "plan",
    "plan_for",
    "reconcile",
    "repair",
    "take_inventory",
]
