"""Generated interactions with planted failure patterns, shared by unit and integration tests.

Planted: on prompt version ``v1.2`` inputs that are not English, and inputs with code, fail
twice as often as everything else (``BASE_RATE`` → ``2 * BASE_RATE``). Null: ``meta.plan``,
the model and the experiment variant have no effect. Complaint texts come in three topics
(wrong language, broken code, too long) so clustering has something to separate.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Iterator

from feedbackloop.analysis.failures.negative import InteractionSignals
from feedbackloop.analysis.failures.records import FeedbackText, JudgedInteraction
from feedbackloop.schemas import Feedback, Implicit, Interaction
from feedbackloop.schemas.derive import derive

BASE_RATE = 0.10
PLANTED_RATE = 0.20
SYSTEM = "You are a helpful assistant for the ACME data platform."

_TOPICS = ["table", "report", "dashboard", "export", "user account", "invoice", "query", "chart"]
_PROSE = {
    "en": [
        "How can I {t} the {o} and send it to my team every Monday morning?",
        "Please explain why my {o} shows different numbers than yesterday when I {t} it.",
        "What is the fastest way to {t} a {o} without losing the formatting?",
    ],
    "de": [
        "Wie kann ich die {o} exportieren und jeden Montag an mein Team schicken?",
        "Bitte erkläre mir, warum meine {o} heute andere Zahlen zeigt als gestern.",
        "Was ist der schnellste Weg, eine {o} zu teilen, ohne die Formatierung zu verlieren?",
    ],
    "es": [
        "¿Cómo puedo exportar la {o} y enviarla a mi equipo todos los lunes por la mañana?",
        "Por favor explica por qué mi {o} muestra números diferentes que ayer.",
        "¿Cuál es la forma más rápida de compartir una {o} sin perder el formato?",
    ],
    "fr": [
        "Comment puis-je exporter le {o} et l'envoyer à mon équipe chaque lundi matin ?",
        "Pourquoi mon {o} affiche-t-il des chiffres différents de ceux d'hier, s'il vous plaît ?",
        "Quelle est la façon la plus rapide de partager un {o} sans perdre la mise en forme ?",
    ],
}
_VERBS = ["export", "share", "schedule", "filter", "rename"]
_CODE = "\n```python\ndef load(path):\n    with open(path) as f:\n        return f.read()\n```\n"

COMPLAINT_TOPICS = {
    "language": [
        "The answer was in English but I asked in {lang}, please reply in my language",
        "Wrong language again: I wrote in {lang} and the assistant answered in English",
        "Please respond in {lang}, not English, the reply language is wrong",
    ],
    "code": [
        "The code does not compile, syntax error on line {n} of the function",
        "This function throws an exception, the code is broken and fails to run",
        "Compile error: the snippet has a syntax error and the import is missing",
    ],
    "verbose": [
        "Way too long and verbose, I only needed a short summary in {n} sentences",
        "Too much text, the response is far too long, keep it short and concise",
        "Verbose answer with filler paragraphs, please be brief and shorter",
    ],
}
_LANG_NAMES = ["German", "Spanish", "French"]


def complaint(topic: str, rng: random.Random) -> str:
    tpl = rng.choice(COMPLAINT_TOPICS[topic])
    return tpl.format(lang=rng.choice(_LANG_NAMES), n=rng.randint(2, 40))


def planted_events(
    n: int = 3000, seed: int = 7, *, app: str = "app1", start: dt.datetime | None = None
) -> Iterator[tuple[Interaction, list[Feedback | Implicit]]]:
    """``n`` interactions, each with the feedback and implicit events it received."""
    rng = random.Random(seed)
    start = start or dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=10 * n + 3600)
    for i in range(n):
        lang = rng.choices(["en", "de", "es", "fr"], weights=[60, 15, 15, 10])[0]
        text = rng.choice(_PROSE[lang]).format(t=rng.choice(_VERBS), o=rng.choice(_TOPICS))
        code = rng.random() < 0.25
        if code:
            text += _CODE
        pv = rng.choice(["v1.1", "v1.2"])
        planted = pv == "v1.2" and (lang != "en" or code)
        rate = PLANTED_RATE if planted else BASE_RATE
        t = start + dt.timedelta(seconds=10 * i)
        it = Interaction(
            event_id=uuid.UUID(int=rng.getrandbits(128)),
            interaction_id=uuid.UUID(int=rng.getrandbits(128)),
            app_id=app,
            session_id=f"s{i % 400}",
            occurred_at=t,
            system_prompt=SYSTEM,
            user_input=text,
            response=f"Here is how to do it (answer {i}). " * 3,
            model=rng.choice(["m-small", "m-large"]),
            prompt_version=pv,
            experiment="exp1",
            variant=rng.choice(["a", "b"]),
            metadata={"plan": rng.choice(["free", "pro"]), "request": i},
        )
        common = dict(
            app_id=app,
            session_id=it.session_id,
            interaction_id=it.interaction_id,
            occurred_at=t + dt.timedelta(seconds=5),
        )
        evs: list[Feedback | Implicit] = []

        def eid() -> uuid.UUID:
            return uuid.UUID(int=rng.getrandbits(128))

        if rng.random() < rate:
            kind = rng.choices(["thumbs", "correction", "regenerate", "rating"], [5, 2, 2, 1])[0]
            topic = "language" if lang != "en" else ("code" if code else "verbose")
            if kind == "thumbs":
                evs.append(Feedback(event_id=eid(), kind="thumbs", thumbs=-1, **common))
                if rng.random() < 0.6:
                    evs.append(
                        Feedback(
                            event_id=eid(), kind="comment", text=complaint(topic, rng), **common
                        )
                    )
            elif kind == "correction":
                evs.append(
                    Feedback(
                        event_id=eid(),
                        kind="correction",
                        text=f"Correct answer: open the {rng.choice(_TOPICS)} menu, choose "
                        f"{rng.choice(_VERBS)} and confirm. ({complaint(topic, rng)})",
                        **common,
                    )
                )
            elif kind == "regenerate":
                evs.append(Implicit(event_id=eid(), signal="regenerate", **common))
            else:
                evs.append(Feedback(event_id=eid(), kind="rating", rating=1, **common))
        elif rng.random() < 0.4:
            evs.append(Feedback(event_id=eid(), kind="thumbs", thumbs=1, **common))
            if rng.random() < 0.2:
                evs.append(Implicit(event_id=eid(), signal="abandon", **common))
        yield it, evs


def judged(it: Interaction, evs: list[Feedback | Implicit]) -> JudgedInteraction:
    """What :func:`~feedbackloop.analysis.failures.load_judged_interactions` returns for it."""
    fb = [e for e in evs if isinstance(e, Feedback)]
    im = [e for e in evs if isinstance(e, Implicit)]
    d = derive(it)
    return JudgedInteraction(
        interaction_id=str(it.interaction_id),
        event_id=str(it.event_id),
        occurred_at=it.occurred_at.isoformat(),
        app_id=it.app_id,
        model=it.model,
        prompt_version=it.prompt_version or "",
        experiment=it.experiment or "",
        variant=it.variant or "",
        user_input=it.user_input,
        response=it.response,
        system_prompt=it.system_prompt,
        input_has_code=bool(d["input_has_code"]),
        input_length_bucket=str(d["input_length_bucket"]),
        input_chars=len(it.user_input),
        stored_language=str(d["input_language"]),
        metadata={k: str(v) for k, v in it.metadata.items()},
        signals=InteractionSignals(
            thumbs_up=sum(e.thumbs == 1 for e in fb),
            thumbs_down=sum(e.thumbs == -1 for e in fb),
            ratings=tuple(e.rating for e in fb if e.rating is not None),
            corrections=sum(e.kind.value == "correction" for e in fb),
            comments=sum(e.kind.value == "comment" for e in fb),
            report_categories=tuple(e.category.value for e in fb if e.category is not None),
            regenerates=sum(e.signal.value == "regenerate" for e in im),
            abandons=sum(e.signal.value == "abandon" for e in im),
        ),
        texts=tuple(
            FeedbackText(e.kind.value, e.text, str(e.event_id), e.occurred_at.isoformat())
            for e in fb
            if e.text
        ),
    )


def planted_judged(n: int = 3000, seed: int = 7) -> list[JudgedInteraction]:
    return [judged(it, evs) for it, evs in planted_events(n, seed)]
