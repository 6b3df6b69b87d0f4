"""What a model call costs: the one price table of feedbackloop.

The provider wrappers and the OpenTelemetry ingestion both price calls with :func:`cost_usd`.
Prices are list prices in US dollars per million tokens, as the providers published them
(November 2025); they change, and contracts differ, so every user of the table accepts
overrides (``wrap(..., prices={"my-model": Price(1.0, 2.0)})``), merged over
:data:`PRICES`. A model that is not in the table gets no cost (``None``), never a guess.

A dated snapshot (``gpt-4o-mini-2024-07-18``, ``claude-sonnet-4-5-20250929``) takes the price
of its model (``gpt-4o-mini``, ``claude-sonnet-4-5``); nothing else is matched loosely, since
a newer model of a family (``claude-sonnet-4-6``) may well cost something else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["PRICES", "Price", "cost_usd", "price_of"]


@dataclass(frozen=True)
class Price:
    """USD per million tokens. ``cached_input``: the price of input tokens read from the
    provider's prompt cache (``None``: priced as ordinary input)."""

    input: float
    output: float
    cached_input: float | None = None


_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")

PRICES: Mapping[str, Price] = {
    # OpenAI, https://openai.com/api/pricing/
    "gpt-5": Price(1.25, 10.0, 0.125),
    "gpt-5-mini": Price(0.25, 2.0, 0.025),
    "gpt-5-nano": Price(0.05, 0.40, 0.005),
    "gpt-4.1": Price(2.0, 8.0, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "gpt-4o": Price(2.50, 10.0, 1.25),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "gpt-4-turbo": Price(10.0, 30.0),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "o1": Price(15.0, 60.0, 7.50),
    "o1-mini": Price(1.10, 4.40, 0.55),
    "o3": Price(2.0, 8.0, 0.50),
    "o3-mini": Price(1.10, 4.40, 0.55),
    "o4-mini": Price(1.10, 4.40, 0.275),
    # Anthropic, https://www.anthropic.com/pricing (cache reads at 10% of input)
    "claude-opus-4-5": Price(5.0, 25.0, 0.50),
    "claude-opus-4-1": Price(15.0, 75.0, 1.50),
    "claude-opus-4": Price(15.0, 75.0, 1.50),
    "claude-sonnet-4-5": Price(3.0, 15.0, 0.30),
    "claude-sonnet-4": Price(3.0, 15.0, 0.30),
    "claude-3-7-sonnet": Price(3.0, 15.0, 0.30),
    "claude-3-5-sonnet": Price(3.0, 15.0, 0.30),
    "claude-haiku-4-5": Price(1.0, 5.0, 0.10),
    "claude-3-5-haiku": Price(0.80, 4.0, 0.08),
    "claude-3-haiku": Price(0.25, 1.25, 0.03),
    "claude-3-opus": Price(15.0, 75.0, 1.50),
}


def price_of(model: str, prices: Mapping[str, Price] | None = None) -> Price | None:
    """The price of ``model`` (first in ``prices``, then in :data:`PRICES`): its own entry,
    else that of the name without a snapshot suffix (a date, or ``-latest``)."""
    names = [model]
    base = _SNAPSHOT.sub("", model)
    if base != model:
        names.append(base)
    for name in names:
        for table in (prices or {}, PRICES):
            found = table.get(name)
            if found is not None:
                return found
    return None


def cost_usd(
    model: str,
    input_tokens: int | None,
    output_tokens: int | None,
    *,
    cached_input_tokens: int = 0,
    prices: Mapping[str, Price] | None = None,
) -> float | None:
    """The cost of one call; ``None`` when the model is unknown or no token count is known.

    ``input_tokens`` includes ``cached_input_tokens`` (the cached part is priced at
    ``Price.cached_input`` where the table has one).
    """
    price = price_of(model, prices)
    if price is None or (input_tokens is None and output_tokens is None):
        return None
    cached = min(max(cached_input_tokens, 0), input_tokens or 0)
    fresh = (input_tokens or 0) - cached
    cached_price = price.input if price.cached_input is None else price.cached_input
    total = fresh * price.input + cached * cached_price + (output_tokens or 0) * price.output
    return round(total / 1_000_000, 12)  # no float noise below a picodollar
