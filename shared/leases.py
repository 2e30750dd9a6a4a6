"""The lease keeper: one thread per process renews the leases of the steps at work, the
domain's :class:`shared.domain.ports.LeaseHolder` (the domain starts no thread of its own)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from shared.domain.errors import StoreUnavailableError
from shared.domain.ports import StepStore


@dataclass(slots=True)
class _Held:
    store: StepStore
    project_id: str
    step_name: str
    owner: str
    lease_seconds: float
    due: float


class LeaseKeeper:
    """Keeps the leases of the steps at work alive: one thread per process renews each every
    third of its lease until its work ends (a thread per step would cost ~0.1 ms a step). So a
    lease lapses when its process dies, not when a slow step outlives it: nobody takes the step
    over, and its reverse step waits, while the work is still going."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held: dict[int, _Held] = {}
        self._last = 0
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def holding(
        self, store: StepStore, project_id: str, step_name: str, *, owner: str, lease_seconds: float
    ) -> Iterator[None]:
        """Renew ``owner``'s lease on the step while the body runs."""
        due = time.monotonic() + lease_seconds / 3
        with self._cond:
            self._last += 1
            key = self._last
            # The keeper sleeps until the soonest renewal: wake it only if this one comes first.
            first = all(due < held.due for held in self._held.values())
            self._held[key] = _Held(store, project_id, step_name, owner, lease_seconds, due)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                self._thread.start()
            elif first:
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._held.pop(key, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [(key, held) for key, held in self._held.items() if held.due <= now]
                if not due:
                    soonest = min((held.due for held in self._held.values()), default=None)
                    self._cond.wait(None if soonest is None else soonest - now)
                    continue
                for _, held in due:
                    held.due = now + held.lease_seconds / 3
            for key, held in due:
                try:
                    kept = held.store.renew_lease(
                        held.project_id,
                        held.step_name,
                        owner=held.owner,
                        lease_seconds=held.lease_seconds,
                        cancel_if_fenced=False,
                    )
                except StoreUnavailableError:
                    continue  # the control plane is away; the lease may lapse, a take-over is safe
                if not kept:
                    with self._cond:
                        self._held.pop(key, None)


LEASE_KEEPER = LeaseKeeper()
"""The process's one keeper, which every step run hands the flow."""
