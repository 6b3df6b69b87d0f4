"""The live experiment control plane: versioned experiment configuration on a compacted
topic (:mod:`.config`, :mod:`.plane`), what SDK processes follow (:mod:`.live`), and the
canary guardrails the stream jobs judge (:mod:`.guardrails`)."""

from feedbackloop.control.config import Canary, ExperimentConfig, Guardrail, Status
from feedbackloop.control.live import HttpSource, KafkaSource, LiveConfig
from feedbackloop.control.plane import ControlPlane, apply, new_experiment

__all__ = [
    "Canary",
    "ControlPlane",
    "ExperimentConfig",
    "Guardrail",
    "HttpSource",
    "KafkaSource",
    "LiveConfig",
    "Status",
    "apply",
    "new_experiment",
]
