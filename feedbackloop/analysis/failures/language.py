"""Language of a user input, for slicing failures by it.

Uses py3langid (a maintained fork of langid.py, Lui & Baldwin 2012): a naive-Bayes byte
n-gram model over 97 languages whose model file ships inside the wheel, so nothing is
downloaded at run time. The stream jobs store a cheaper stop-word heuristic
(:func:`feedbackloop.schemas.derive.detect_language`) on every event; the analysis re-detects
with the real model because a failure slice is only as good as its labels, and falls back to
the heuristic when the model is unsure.

Code is removed before detection (fenced blocks and code-looking lines): identifiers and
keywords are English-ish whatever the user's language.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import Any

from feedbackloop.errors import MissingDependency
from feedbackloop.schemas.derive import detect_language as heuristic_language

__all__ = [
    "HEAD_CHARS",
    "UNDETERMINED",
    "detect_input_language",
    "load_model",
    "strip_code",
]

UNDETERMINED = "und"
#: The head of an input the analysis reads: enough to detect its language and show it in a
#: table (what the stored labels, sinks/input_labels.py, are computed from).
HEAD_CHARS = 600
#: Below this many letters a guess is noise ("ok", "thanks", "hi").
MIN_LETTERS = 12
#: py3langid's length-calibrated posterior; below it the model abstains.
MIN_CONFIDENCE = 0.3
_HEAD_CHARS = 1000

_FENCE = re.compile(r"```.*?(```|$)", re.S)
_CODE_LINE = re.compile(
    r"^\s*(?:[{}()\[\];<>#/*]|def |class |import |from \S+ import|return\b|function\b|const |"
    r"let |var |public |private |SELECT |INSERT |if \(|for \(|while \(|\$ |>>> )"
    r"|[;{}]\s*$|=>|==|\w+\(.*\)\s*;?\s*$",
)
_LETTER = re.compile(r"[^\W\d_]", re.U)

_lock = threading.Lock()
_identifier: Any = None


def _model() -> Any:
    global _identifier
    with _lock:
        if _identifier is None:
            try:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier
            except ImportError as e:
                raise MissingDependency("py3langid", "analysis") from e
            _identifier = LanguageIdentifier.from_model_file(
                MODEL_FILE, norm_probs=True, min_confidence=MIN_CONFIDENCE
            )
        return _identifier


def load_model() -> None:
    """Load py3langid's model now (:class:`MissingDependency` when it is not installed)."""
    _model()


def strip_code(text: str) -> str:
    """``text`` without fenced code blocks and lines that look like code."""
    text = _FENCE.sub(" ", text[:_HEAD_CHARS])
    return "\n".join(line for line in text.splitlines() if not _CODE_LINE.search(line))


@lru_cache(maxsize=65536)
def detect_input_language(text: str) -> str:
    """ISO 639-1 code of the language of ``text``'s prose, or ``"und"`` when unsure."""
    prose = strip_code(text)
    if len(_LETTER.findall(prose)) < MIN_LETTERS:
        return UNDETERMINED
    lang, _conf = _model().classify(prose)
    if lang == UNDETERMINED:
        return heuristic_language(prose)
    return str(lang)
