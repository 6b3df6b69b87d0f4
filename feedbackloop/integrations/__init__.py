"""One-line integrations: the apps' own LLM clients log their calls as interactions.

``feedbackloop.integrations.openai.wrap(OpenAI(), feedback_client)`` and
``feedbackloop.integrations.anthropic.wrap(Anthropic(), feedback_client)`` (the
``integrations`` extra) patch a provider client so that each call (sync or async, streamed
or not) becomes one :class:`~feedbackloop.schemas.Interaction`: system prompt, the last user
message, the answer, the model the provider reports, token counts, latency (for a stream:
until its end, with the time to first token in ``metadata.ttft_ms``), the cost from
:mod:`.pricing`, and the session, user, prompt version, experiment and variant the app set in
``with feedback_client.context(...)``, as wrap defaults, or per call with
``feedbackloop={...}``. The interaction id is chosen before the call:
``interaction_id(result)`` or ``ctx.interaction_id`` gives it to the app for feedback.

The app's call never fails or waits because of logging (:mod:`.recording`).
"""

from feedbackloop.integrations.pricing import PRICES, Price, cost_usd
from feedbackloop.integrations.recording import interaction_id, logging_failures

__all__ = ["PRICES", "Price", "cost_usd", "interaction_id", "logging_failures"]
