"""Realistic LLM-app traffic through the real SDK: the demo's data and a load generator.

Sessions are assigned to variants by the SDK's hashing; each variant has a true satisfaction
rate (the planted effect); non-English inputs and inputs with code fail more often on one
prompt version; implicit signals and business outcomes follow with realistic rates and
delays; a small share of events arrives late (backdated ``occurred_at``) or malformed (raw
bytes that the stream jobs must dead-letter).

With a :class:`ShadowPlan`, a candidate shadows a sampled share of sessions
(:meth:`FeedbackClient.shadow`): it answers what users wanted on one slice (on inputs with
code: the correction the user then writes, else a good answer), answers off the point on
another (one language), and answers exactly as the live model elsewhere, so
``feedbackloop shadow report`` has a planted win and a planted loss to find.
"""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from feedbackloop.producers import Experiment, FeedbackClient, shadow_sampled

__all__ = ["ShadowPlan", "TrafficSpec", "SimulationResult", "Simulator"]

_INPUTS: dict[str, list[str]] = {
    "en": [
        "How do I reset my password?",
        "Summarise this contract clause about termination.",
        "Why is my invoice higher this month?",
        "Write a polite reply declining the meeting.",
        "What is the refund policy for annual plans?",
    ],
    "de": [
        "Wie kann ich mein Passwort zurücksetzen?",
        "Warum ist meine Rechnung diesen Monat höher?",
        "Schreibe eine höfliche Absage für das Treffen.",
    ],
    "fr": [
        "Comment réinitialiser mon mot de passe ?",
        "Pourquoi ma facture est-elle plus élevée ce mois-ci ?",
        "Quelle est la politique de remboursement pour les abonnements annuels ?",
    ],
    "es": [
        "¿Cómo restablezco mi contraseña?",
        "¿Por qué mi factura es más alta este mes?",
    ],
}
_CODE_INPUTS = [
    "Why does this fail?\n```python\nfor i in range(len(xs)): xs.remove(xs[i])\n```",
    "Fix my SQL: ```SELECT * FROM orders WHERE created_at > now() - 7```",
    "What does this do? `git rebase -i HEAD~3`",
]
_COMMENTS = {
    "language": ["answered in English although I wrote in German", "wrong language in the reply"],
    "code": ["the code does not compile", "the snippet has a bug in the loop"],
    "length": ["far too long, just give me the answer", "too verbose"],
}
_CORRECTIONS = [
    "You can reset your password from Settings > Security > Reset password.",
    "Annual plans are refundable pro rata within 30 days of renewal.",
    "Use a list comprehension instead of removing while iterating.",
]


#: What the planted candidate answers on its bad slice: off the point, in no user's words.
OFF_THE_POINT = "Thanks for your message! Our team will get back to you soon."


@dataclass(frozen=True)
class ShadowPlan:
    """A shadow candidate planted into the simulated traffic.

    On inputs with code it answers what users wanted (the correction they write, else the
    good answer); on inputs in ``worse_language`` it answers :data:`OFF_THE_POINT`; everywhere
    else exactly what the live model answered. Sessions are sampled at ``rate``.
    """

    candidate: str = "v2.0-shadow"
    model: str = "gpt-4o"
    rate: float = 0.5
    worse_language: str = "de"
    #: The candidate is this much faster than the live answer, on average.
    latency_factor: float = 0.8


@dataclass(frozen=True)
class TrafficSpec:
    """What to simulate. ``satisfaction`` is each variant's true probability that a response
    is good (thumbs up), over all its traffic: the effect between variants is the difference
    you plant. On ``weak_prompt_version``, non-English and code inputs fail
    ``weak_slice_multiplier`` times as often as the rest of that variant's traffic, with the
    variant's overall rate kept at its ``satisfaction``."""

    app_id: str = "demo-app"
    experiment: str = "support-prompt"
    weights: Mapping[str, float] = field(default_factory=lambda: {"control": 0.5, "treatment": 0.5})
    satisfaction: Mapping[str, float] = field(
        default_factory=lambda: {"control": 0.62, "treatment": 0.72}
    )
    prompt_versions: Mapping[str, str] = field(
        default_factory=lambda: {"control": "v1.0", "treatment": "v1.1"}
    )
    model: str = "gpt-4o-mini"
    #: Prompt version on which non-English and code inputs fail twice as often.
    weak_prompt_version: str = "v1.1"
    weak_slice_multiplier: float = 2.0
    languages: Mapping[str, float] = field(
        default_factory=lambda: {"en": 0.7, "de": 0.12, "fr": 0.1, "es": 0.08}
    )
    code_share: float = 0.15
    interactions_per_session: tuple[int, int] = (1, 6)
    feedback_rate: float = 0.6
    rating_rate: float = 0.15
    correction_rate: float = 0.3  # of negative feedback
    comment_rate: float = 0.2  # of negative feedback
    copy_rate: float = 0.35
    regenerate_rate: float = 0.08
    abandon_rate: float = 0.05
    outcome_rate: float = 0.4
    late_share: float = 0.01
    malformed_share: float = 0.002
    seed: int = 7
    #: A shadow candidate to plant (none by default).
    shadow: ShadowPlan | None = None

    def experiment_config(self) -> Experiment:
        return Experiment(self.experiment, dict(self.weights))

    @property
    def weak_share(self) -> float:
        """Share of inputs in the weak slices (not English, or containing code)."""
        return 1 - self.languages.get("en", 0.0) / sum(self.languages.values()) * (
            1 - self.code_share
        )

    def p_good(self, variant: str, weak_slice: bool) -> float:
        """Probability of a good response, such that the variant's overall rate is its
        ``satisfaction``: with weak share w and multiplier m, the base rate b solves
        ``target = (1 - w) b + w (1 - m (1 - b))``."""
        target = self.satisfaction[variant]
        if self.prompt_versions.get(variant) != self.weak_prompt_version:
            return target
        k = self.weak_share * (self.weak_slice_multiplier - 1)
        base = min(1.0, (target + k) / (1 + k))
        if not weak_slice:
            return base
        return max(0.0, 1 - (1 - base) * self.weak_slice_multiplier)


@dataclass
class SimulationResult:
    """What was sent, by kind and variant, so a test or the demo can account for it."""

    sent: Counter[str] = field(default_factory=Counter)
    by_variant: dict[str, Counter[str]] = field(default_factory=dict)
    malformed: int = 0
    elapsed_s: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.sent.values()) + self.malformed

    def count(self, variant: str, what: str, n: int = 1) -> None:
        self.by_variant.setdefault(variant, Counter())[what] += n

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": dict(self.sent),
            "malformed": self.malformed,
            "by_variant": {v: dict(c) for v, c in self.by_variant.items()},
            "elapsed_s": round(self.elapsed_s, 2),
        }


class Simulator:
    """Drives a :class:`FeedbackClient` with traffic following a :class:`TrafficSpec`.

    ``raw_send(bytes)`` sends malformed payloads around the SDK (which would refuse them) so
    the stream jobs' dead-letter path gets exercised; without it, none are sent.
    """

    def __init__(
        self,
        client: FeedbackClient,
        spec: TrafficSpec | None = None,
        raw_send: Callable[[bytes], None] | None = None,
    ) -> None:
        self.client = client
        self.spec = spec or TrafficSpec()
        self.raw_send = raw_send
        self.rng = random.Random(self.spec.seed)
        self.result = SimulationResult()
        client.register_experiment(self.spec.experiment_config())
        self._session_no = 0
        # Its own stream, so the live traffic is the same with or without a shadow.
        self._shadow_rng = random.Random(self.spec.seed + 1)

    def run(
        self,
        duration_s: float | None = None,
        sessions: int | None = None,
        rate: float | None = None,
        progress: Callable[[SimulationResult], None] | None = None,
    ) -> SimulationResult:
        """Simulate until ``duration_s`` passed or ``sessions`` were simulated; ``rate`` caps
        events per second (None: as fast as the SDK takes them)."""
        if duration_s is None and sessions is None:
            raise ValueError("give duration_s or sessions")
        start = time.monotonic()
        last_progress = start
        while True:
            elapsed = time.monotonic() - start
            if duration_s is not None and elapsed >= duration_s:
                break
            if sessions is not None and self._session_no >= sessions:
                break
            self.session()
            if rate:
                ahead = self.result.total / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
            if progress and time.monotonic() - last_progress > 0.2:
                self.result.elapsed_s = time.monotonic() - start
                progress(self.result)
                last_progress = time.monotonic()
        self.result.elapsed_s = time.monotonic() - start
        if progress:
            progress(self.result)
        return self.result

    # --------------------------------------------------------------------- one session

    def session(self) -> None:
        s, rng, c = self.spec, self.rng, self.client
        self._session_no += 1
        session_id = f"sim-{s.seed}-{self._session_no}"
        user_id = f"user-{self._session_no % 5000}"
        variant = c.assign_variant(s.experiment, session_id)
        prompt_version = s.prompt_versions.get(variant, "v1.0")
        self.result.count(variant, "sessions")
        lang = _pick(rng, s.languages)
        for turn in range(rng.randint(*s.interactions_per_session)):
            has_code = rng.random() < s.code_share
            user_input = rng.choice(_CODE_INPUTS if has_code else _INPUTS[lang])
            good = rng.random() < s.p_good(variant, weak_slice=lang != "en" or has_code)
            latency = rng.lognormvariate(6.5, 0.4)
            when = None
            if rng.random() < s.late_share:
                when = _utcnow() - dt.timedelta(minutes=rng.uniform(2, 30))
            response = _response(rng, good, lang, has_code)
            iid = c.log_interaction(
                session_id=session_id,
                user_id=user_id,
                system_prompt=f"You are a helpful support assistant. ({prompt_version})",
                user_input=user_input,
                response=response,
                model=s.model,
                prompt_version=prompt_version,
                experiment=s.experiment,
                variant=variant,
                latency_ms=round(latency, 1),
                input_tokens=rng.randint(20, 400),
                output_tokens=rng.randint(50, 800),
                cost_usd=round(rng.uniform(0.0002, 0.004), 6),
                metadata={"turn": turn, "channel": rng.choice(["web", "mobile"])},
                occurred_at=when,
            )
            self._sent("interaction", variant)
            correction = self._feedback(iid, session_id, variant, good, lang, has_code, when)
            if s.shadow is not None and self._shadow(
                s.shadow, iid, session_id, response, correction, lang, has_code
            ):
                self._sent("shadow", variant)
            self._implicit(iid, session_id, variant, good, when)
            self._outcome(iid, session_id, variant, good, has_code, when)
            if self.raw_send is not None and rng.random() < s.malformed_share:
                self.raw_send(_malformed(rng, s.app_id, session_id))
                self.result.malformed += 1
            if not good and rng.random() < s.abandon_rate:
                c.implicit(iid, "abandon", session_id=session_id, occurred_at=when)
                self._sent("implicit", variant, "abandon")
                break

    def _feedback(
        self,
        iid: uuid.UUID,
        session_id: str,
        variant: str,
        good: bool,
        lang: str,
        has_code: bool,
        when: dt.datetime | None,
    ) -> str | None:
        """Explicit feedback; returns the correction the user wrote, if any."""
        s, rng, c = self.spec, self.rng, self.client
        correction = None
        if rng.random() < s.feedback_rate:
            c.thumbs(iid, good, session_id=session_id, occurred_at=when)
            self._sent("feedback", variant, "thumbs_up" if good else "thumbs_down")
        if rng.random() < s.rating_rate:
            rating = rng.choice([4, 5, 5]) if good else rng.choice([1, 2, 2, 3])
            c.rate(iid, rating, session_id=session_id, occurred_at=when)
            self._sent("feedback", variant, "rating")
        if good:
            return None
        if rng.random() < s.correction_rate:
            correction = rng.choice(_CORRECTIONS)
            c.correct(iid, correction, session_id=session_id, occurred_at=when)
            self._sent("feedback", variant, "correction")
        if rng.random() < s.comment_rate:
            topic = "code" if has_code else ("language" if lang != "en" else "length")
            c.comment(iid, rng.choice(_COMMENTS[topic]), session_id=session_id, occurred_at=when)
            self._sent("feedback", variant, "comment")
        return correction

    def _shadow(
        self,
        plan: ShadowPlan,
        iid: uuid.UUID,
        session_id: str,
        response: str,
        correction: str | None,
        lang: str,
        has_code: bool,
    ) -> bool:
        """The planted candidate's answer to this live interaction; False if the session is
        not sampled."""
        if not shadow_sampled(plan.candidate, session_id, plan.rate):
            return False  # decided before computing the answer, as an app would
        if has_code:
            answer = correction or _response(self._shadow_rng, True, lang, True)
        elif lang == plan.worse_language:
            answer = OFF_THE_POINT
        else:
            answer = response
        rng = self._shadow_rng
        sid = self.client.shadow(
            iid,
            rate=plan.rate,
            response=answer,
            model=plan.model,
            prompt_version=plan.candidate,
            session_id=session_id,
            latency_ms=round(rng.lognormvariate(6.5, 0.4) * plan.latency_factor, 1),
            input_tokens=rng.randint(20, 400),
            output_tokens=rng.randint(50, 800),
            cost_usd=round(rng.uniform(0.0004, 0.006), 6),
        )
        return sid is not None

    def _implicit(
        self, iid: uuid.UUID, session_id: str, variant: str, good: bool, when: dt.datetime | None
    ) -> None:
        s, rng, c = self.spec, self.rng, self.client
        if rng.random() < s.copy_rate * (1.3 if good else 0.4):
            c.implicit(
                iid,
                "copy",
                copied_chars=rng.randint(10, 400),
                session_id=session_id,
                occurred_at=when,
            )
            self._sent("implicit", variant, "copy")
        if not good and rng.random() < s.regenerate_rate * 3:
            c.implicit(iid, "regenerate", session_id=session_id, occurred_at=when)
            self._sent("implicit", variant, "regenerate")
        if rng.random() < 0.1:
            c.implicit(
                iid,
                "dwell",
                dwell_ms=rng.uniform(500, 30_000),
                session_id=session_id,
                occurred_at=when,
            )
            self._sent("implicit", variant, "dwell")

    def _outcome(
        self,
        iid: uuid.UUID,
        session_id: str,
        variant: str,
        good: bool,
        has_code: bool,
        when: dt.datetime | None,
    ) -> None:
        s, rng, c = self.spec, self.rng, self.client
        if rng.random() >= s.outcome_rate:
            return
        if has_code:
            name = "code_accepted" if rng.random() < (0.8 if good else 0.25) else "code_rejected"
        else:
            name = (
                "ticket_resolved" if rng.random() < (0.85 if good else 0.35) else "ticket_escalated"
            )
        c.outcome(
            name,
            interaction_id=iid,
            session_id=session_id,
            time_to_outcome_ms=round(rng.lognormvariate(10.5 if good else 11.2, 0.5), 1),
            value=1.0,
            occurred_at=when,
        )
        self._sent("outcome", variant, name)

    def _sent(self, kind: str, variant: str, what: str | None = None) -> None:
        self.result.sent[kind] += 1
        self.result.count(variant, what or kind)


def _pick(rng: random.Random, weights: Mapping[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _response(rng: random.Random, good: bool, lang: str, has_code: bool) -> str:
    if has_code:
        return (
            "Use `xs = [x for x in xs if keep(x)]` instead."
            if good
            else "Try `for i in range(len(xs)): del xs[i]`."
        )
    if lang != "en" and not good:
        return "Sure! Here is the answer in English: please check your settings."
    return rng.choice(
        [
            "Go to Settings, then Security, and choose Reset password.",
            "Your invoice includes the seats added on the 12th, billed pro rata.",
            "Here is a short, polite reply you can send.",
        ]
    )


def _malformed(rng: random.Random, app_id: str, session_id: str) -> bytes:
    """One of the ways real clients get events wrong."""
    kind = rng.randrange(4)
    if kind == 0:
        return b'{"event_type": "feedback", "app_id": "' + app_id.encode() + b'", truncated'
    if kind == 1:
        return (
            b'{"event_type": "clickstream", "app_id": "' + app_id.encode() + b'", '
            b'"session_id": "' + session_id.encode() + b'"}'
        )
    if kind == 2:
        return (
            b'{"event_type": "feedback", "app_id": "'
            + app_id.encode()
            + b'", "session_id": "'
            + session_id.encode()
            + b'", "interaction_id": "'
            + str(uuid.uuid4()).encode()
            + b'", "kind": "rating", "rating": 11}'
        )
    return b'{"event_type": "outcome", "schema_version": 99, "app_id": "x", "session_id": "y"}'
