"""Enrichment: derived attributes of an interaction and the JSON of enriched events.

The hot path never builds :class:`~feedbackloop.schemas.EnrichedEvent` models: it splices
pre-serialized fragments (the validated raw event, the interaction's context and derived
attributes, serialized once when the interaction arrives) into the same JSON the model
produces. ``tests/unit/test_stream_enrich.py`` checks that the bytes parse back into the
model.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pydantic_core import to_json

from feedbackloop.schemas import Interaction
from feedbackloop.schemas.derive import (  # lives there so it imports without faust
    derive,
    detect_language,
    has_code,
    length_bucket,
)
from feedbackloop.schemas.enriched import ENRICHED_SCHEMA_VERSION, RequestContext

__all__ = [
    "InteractionRecord",
    "derive",
    "detect_language",
    "enriched_json",
    "has_code",
    "interaction_record",
    "length_bucket",
]


@dataclass(slots=True)
class InteractionRecord:
    """What the join keeps per interaction: group, time and pre-serialized context.

    Treat it as immutable. Not ``frozen``: a frozen dataclass assigns each of its fields
    through ``object.__setattr__``, ~1 us per interaction on the hot path.
    """

    occurred_at: float  # epoch seconds, event time
    app_id: str
    experiment: str
    variant: str
    prompt_version: str
    model: str
    shadow: bool
    context_json: bytes
    derived_json: bytes
    #: Source partition, where its changelog record lives.
    partition: int = 0
    #: (app_id, experiment, variant, prompt_version, model): the window group of its events,
    #: built once here rather than once per joined event.
    group: tuple[str, str, str, str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.group = (self.app_id, self.experiment, self.variant, self.prompt_version, self.model)

    def to_bytes(self) -> bytes:
        """The changelog value (JSON): restored by :meth:`from_bytes` after a restart."""
        head = to_json(
            [
                self.occurred_at,
                self.app_id,
                self.experiment,
                self.variant,
                self.prompt_version,
                self.model,
                self.shadow,
                self.partition,
            ]
        )
        return b'{"h":' + head + b',"c":' + self.context_json + b',"d":' + self.derived_json + b"}"

    @classmethod
    def from_bytes(cls, data: bytes) -> InteractionRecord:
        import json

        obj = json.loads(data)
        ts, app, exp, var, pv, model, shadow, partition = obj["h"]
        return cls(
            ts,
            app,
            exp,
            var,
            pv,
            model,
            shadow,
            to_json(obj["c"]),
            to_json(obj["d"]),
            partition,
        )


_INTERACTION_SERIALIZER = Interaction.__pydantic_serializer__
# The context is the interaction's fields that RequestContext declares; its own occurred_at
# is renamed interaction_occurred_at below.
_CONTEXT_FIELDS = {
    "occurred_at" if name == "interaction_occurred_at" else name
    for name in RequestContext.model_fields
}


def interaction_record(ia: Interaction, partition: int = 0) -> InteractionRecord:
    """Serialize an interaction's context and derived attributes once, for every join."""
    # Serialized straight from the model (pydantic-core, no dict in between); the only
    # rename is occurred_at, the first included key. An escaped quote inside a text value
    # can never match the unescaped pattern, so the replace cannot touch user text.
    ctx = _INTERACTION_SERIALIZER.to_json(ia, include=_CONTEXT_FIELDS).replace(
        b'{"occurred_at":', b'{"interaction_occurred_at":', 1
    )
    return InteractionRecord(
        occurred_at=ia.occurred_at.timestamp(),
        app_id=ia.app_id,
        experiment=ia.experiment or "",
        variant=ia.variant or "",
        prompt_version=ia.prompt_version or "",
        model=ia.model,
        shadow=ia.shadow,
        context_json=ctx,
        derived_json=to_json(derive(ia)),
        partition=partition,
    )


ENRICHED_PREFIX = b'{"enriched_schema_version":%d,"event":' % ENRICHED_SCHEMA_VERSION


def enriched_json(
    raw_event: bytes,
    *,
    context_json: bytes | None,
    derived_json: bytes | None,
    orphaned: bool,
    waited_ms: float,
    partition: int,
    offset: int,
    enriched_at: str,
) -> bytes:
    """The :class:`~feedbackloop.schemas.EnrichedEvent` JSON, spliced from fragments.

    ``raw_event`` must be the bytes that just passed :func:`~feedbackloop.schemas.decode`
    (valid JSON of a known event with no extra fields), so the result is valid too.
    """
    return b"".join(
        (
            ENRICHED_PREFIX,
            raw_event.strip(),
            b',"context":',
            context_json or b"null",
            b',"derived":',
            derived_json or b"null",
            b',"orphaned":true' if orphaned else b',"orphaned":false',
            b',"waited_ms":%.1f,"source_partition":%d,"source_offset":%d,"enriched_at":"'
            % (waited_ms, partition, offset),
            enriched_at.encode(),
            b'"}',
        )
    )


def iso_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
