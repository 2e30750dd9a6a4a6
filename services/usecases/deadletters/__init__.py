"""``provision deadletters``: what the workers could not take, listed, shown, redriven once its
cause is fixed (the ones that fail again parked), and purged by age.

One concern a module, each importing only those before it: ``ports`` (the broker and the journal
as ports, and their real implementations), ``letters`` (a letter read back, its id, its decoded
original, the filters), ``redrive`` (sending back and parking, with why the loop guard and the
idempotence sit where they do) and ``purge``.
"""

from .letters import (
    REDRIVE_COUNT_HEADER,
    REDRIVEN_HEADER,
    Filters,
    Letter,
    Listing,
    Original,
    find_letter,
    list_letters,
    parse_duration,
    parse_letter_id,
)
from .ports import LetterPorts, RawRecord, ports_for
from .purge import PurgeReport, purge
from .redrive import RedriveDecision, redrive, redrive_headers

__all__ = [
    "REDRIVEN_HEADER",
    "REDRIVE_COUNT_HEADER",
    "Filters",
    "Letter",
    "LetterPorts",
    "Listing",
    "Original",
    "PurgeReport",
    "RawRecord",
    "RedriveDecision",
    "find_letter",
    "list_letters",
    "parse_duration",
    "parse_letter_id",
    "ports_for",
    "purge",
    "redrive",
    "redrive_headers",
]
