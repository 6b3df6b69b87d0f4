"""Deterministic experiment assignment: the same session gets the same variant everywhere.

The algorithm (documented in docs/ASSIGNMENT.md with test vectors, so other languages can
reproduce it bit for bit):

1. ``digest = MD5(UTF-8(salt + "." + session_id))``; ``salt`` defaults to the experiment name.
2. ``bucket = uint32_big_endian(digest[0:4]) mod 10_000`` -- a bucket in ``[0, 10_000)``.
3. Variants are listed control first. The bucket space is cut into ``k - 1`` equal slices,
   one per treatment (``slice_i = [floor((i-1)*B/(k-1)), floor(i*B/(k-1)))``, i = 1..k-1);
   treatment *i* owns the *top* ``round(weight_i * B)`` buckets of its slice, and every bucket
   no treatment owns belongs to control.

Because each treatment grows downwards inside its own slice, raising a treatment's weight
only ever moves sessions *from control to that treatment*: ramping 5% -> 50% never reshuffles
anyone else. The price is that a treatment weight may not exceed ``1 / (k - 1)``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from feedbackloop.errors import ConfigError

__all__ = ["BUCKETS", "Experiment", "bucket_of", "assign_variant"]

BUCKETS = 10_000


def bucket_of(salt: str, session_id: str) -> int:
    """The session's bucket in ``[0, BUCKETS)`` for this salt."""
    digest = hashlib.md5(f"{salt}.{session_id}".encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:4], "big") % BUCKETS


@dataclass(frozen=True)
class Experiment:
    """An experiment: variant names with weights (control first), and the hashing salt."""

    name: str
    variants: Mapping[str, float]
    salt: str | None = None
    _ranges: tuple[tuple[str, int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = list(self.variants)
        if len(names) < 2:
            raise ConfigError(f"experiment {self.name!r} needs at least two variants")
        weights = [float(self.variants[n]) for n in names]
        if any(not math.isfinite(w) or w < 0 for w in weights):
            raise ConfigError(f"experiment {self.name!r}: weights must be finite and >= 0")
        if not math.isclose(sum(weights), 1.0, abs_tol=1e-6):
            raise ConfigError(
                f"experiment {self.name!r}: weights must sum to 1, got {sum(weights):.6f}"
            )
        k = len(names)
        cap = 1.0 / (k - 1)
        ranges: list[tuple[str, int, int]] = []
        for i, (name, w) in enumerate(zip(names[1:], weights[1:], strict=True), start=1):
            if w > cap + 1e-9:
                raise ConfigError(
                    f"experiment {self.name!r}: treatment {name!r} has weight {w:g}, more than "
                    f"1/(k-1) = {cap:g}, the most a treatment can have while ramping stays "
                    "monotone"
                )
            end = (i * BUCKETS) // (k - 1)
            ranges.append((name, end - round(w * BUCKETS), end))
        object.__setattr__(self, "_ranges", tuple(ranges))

    @property
    def control(self) -> str:
        return next(iter(self.variants))

    def variant_for_bucket(self, bucket: int) -> str:
        for name, start, end in self._ranges:
            if start <= bucket < end:
                return name
        return self.control

    def assign(self, session_id: str) -> str:
        """The variant of ``session_id``; the same answer in every process and language."""
        return self.variant_for_bucket(bucket_of(self.salt or self.name, session_id))


def assign_variant(experiment: Experiment, session_id: str) -> str:
    """Functional form of :meth:`Experiment.assign`."""
    return experiment.assign(session_id)
