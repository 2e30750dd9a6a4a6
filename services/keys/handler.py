"""generate_api_keys: ``count`` keys with the request's prefix; a re-run creates none."""

from __future__ import annotations

from services.ports import KeyStore
from shared.domain.outcomes import StepContext, StepOutput
from shared.domain.payloads import StepResults


def handle(context: StepContext, *, keys: KeyStore) -> StepOutput:
    """Create the project's API keys if it has none; publish only ids and visible prefixes."""
    spec = context.payload.api_keys
    infos = keys.ensure_keys(context.project_id, spec.count, spec.prefix)
    return StepOutput(StepResults(api_keys=infos))


def revoke(context: StepContext, *, keys: KeyStore) -> StepOutput:
    """revoke_api_keys: delete the project's keys, hashes and any unrevealed secret (none
    left is done)."""
    keys.revoke_keys(context.project_id)
    return StepOutput()
