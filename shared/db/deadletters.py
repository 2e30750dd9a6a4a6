"""What ``provision deadletters`` did with each dead letter (table ``deadletter_actions``):
redriven or parked, once per letter."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert

from shared.db.common import unavailable_as_error
from shared.db.tables import deadletter_actions


@dataclass(frozen=True, slots=True)
class LetterMark:
    """A letter acted on: ``action`` is "redriven" or "parked"."""

    letter_id: str
    origin_topic: str
    action: str
    acted_at: datetime
    acted_by: str | None


class LetterJournal:
    """The record of redrives and parkings, on the control plane's engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @unavailable_as_error
    def marks(self, event_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, LetterMark]:
        """The marks of those letters that have one."""
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return {}
        t = deadletter_actions
        with self._engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.letter_event_id.in_(ids))).all()
        return {
            r.letter_event_id: LetterMark(r.letter_id, r.origin_topic, r.action, r.acted_at, r.acted_by)
            for r in rows
        }

    @unavailable_as_error
    def act_once(
        self,
        event_id: uuid.UUID,
        *,
        letter_id: str,
        origin_topic: str,
        action: str,
        acted_by: str | None,
        send: Callable[[], None],
    ) -> bool:
        """Mark the letter and, in the same transaction, ``send`` it on (``send`` raising rolls
        the mark back, so a letter not delivered may be redriven again). False, and nothing
        sent, when the letter already has a mark: a concurrent or earlier run acted on it."""
        statement = (
            insert(deadletter_actions)
            .values(
                letter_event_id=event_id,
                letter_id=letter_id,
                origin_topic=origin_topic,
                action=action,
                acted_by=acted_by,
            )
            .on_conflict_do_nothing(index_elements=["letter_event_id"])
            .returning(deadletter_actions.c.letter_event_id)
        )
        with self._engine.begin() as conn:
            if conn.execute(statement).first() is None:
                return False
            send()
        return True
