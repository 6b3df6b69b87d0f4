"""Derived attributes of an interaction: input language, code, lengths.

Pure functions, shared by the stream jobs' enrichment (which stores them on every enriched
event, :class:`~feedbackloop.schemas.DerivedAttributes`) and by the analysis layer (which
recomputes them for rows that were stored without enrichment). They live beside the contract
rather than in ``feedbackloop.stream_jobs`` so that importing them never imports faust.
"""

from __future__ import annotations

import re

from feedbackloop.schemas.enriched import LENGTH_BUCKETS, LengthBucket
from feedbackloop.schemas.events import Interaction

__all__ = ["derive", "detect_language", "has_code", "length_bucket"]

#: Only the head of a text is inspected: the attributes are for slicing, not for truth.
_SCAN_CHARS = 2000

#: Substrings typical of code. Two distinct ones (or a fence) make a text "has code": plain
#: substring tests run in C, several times faster than one regex with alternations.
_CODE_MARKERS = (
    "def ",
    "class ",
    "import ",
    "return ",
    "function ",
    "const ",
    "let ",
    "var ",
    "=>",
    "{",
    "};",
    ";\n",
    "#include",
    "SELECT ",
    "\n    ",
    "\n\t",
    "();",
    "):\n",
    "==",
    "!=",
    "print(",
    "console.",
    "</",
    "/>",
)
_WORD_RE = re.compile(r"[a-zà-ÿ']+")
# A handful of very frequent function words per language: cheap, and right for most inputs
# longer than a few words. Ties and unknowns give "und".
_STOPWORD_TEXT = {
    "en": "the and is are to of in it that you what how do i can this for with",
    "es": "el la los las de que y es en un una por para cómo qué con no se",
    "fr": "le la les de des et est un une que qui pour dans comment ce pas je",
    "de": "der die das und ist ein eine nicht ich wie was zu mit den für auf",
    "pt": "o a os as de que e é um uma para com não como em do da",
    "it": "il la di che e è un una per non come con del della sono",
    "nl": "de het een en is van ik niet dat wat hoe voor met op te",
}
_LANGS = tuple(_STOPWORD_TEXT)
#: word -> indices (into _LANGS) of the languages it is a function word of: one dict
#: look-up per word instead of one set test per word and language.
_WORD_LANGS: dict[str, tuple[int, ...]] = {}
for _i, _lang in enumerate(_LANGS):
    for _w in _STOPWORD_TEXT[_lang].split(" "):
        _WORD_LANGS[_w] = (*_WORD_LANGS.get(_w, ()), _i)
#: Language detection reads fewer characters than code detection: a sentence suffices.
_LANG_CHARS = 400
_SCRIPTS: tuple[tuple[str, int, int], ...] = (
    ("ru", 0x0400, 0x04FF),  # Cyrillic: Russian is by far the most common
    ("el", 0x0370, 0x03FF),
    ("ar", 0x0600, 0x06FF),
    ("he", 0x0590, 0x05FF),
    ("hi", 0x0900, 0x097F),
    ("th", 0x0E00, 0x0E7F),
    ("ko", 0xAC00, 0xD7AF),
    ("ja", 0x3040, 0x30FF),  # kana before CJK ideographs: kana means Japanese
    ("zh", 0x4E00, 0x9FFF),
)


def detect_language(text: str) -> str:
    """ISO 639-1 code of ``text``'s language from its script or function words; "und"."""
    head = text[:_SCAN_CHARS]
    if not head.isascii():
        counts: dict[str, int] = {}
        for ch in head:
            o = ord(ch)
            if o < 0x0370:
                continue
            for lang, lo, hi in _SCRIPTS:
                if lo <= o <= hi:
                    counts[lang] = counts.get(lang, 0) + 1
                    break
        if counts:
            if counts.get("ja"):
                return "ja"
            best = max(counts, key=counts.__getitem__)
            if counts[best] * 3 >= len(head.strip()):
                return best
    scores = [0] * len(_LANGS)
    get = _WORD_LANGS.get
    for w in _WORD_RE.findall(head[:_LANG_CHARS].lower()):
        for i in get(w, ()):
            scores[i] += 1
    top = max(scores)
    if top == 0 or scores.count(top) > 1:
        return "und"
    return _LANGS[scores.index(top)]


def has_code(text: str) -> bool:
    """A fenced block, or at least two distinct code markers in the head of the text."""
    head = text[:_SCAN_CHARS]
    if "```" in head:
        return True
    found = 0
    for marker in _CODE_MARKERS:
        if marker in head:
            found += 1
            if found == 2:
                return True
    return False


def length_bucket(chars: int) -> LengthBucket:
    for name, upper in LENGTH_BUCKETS:
        if chars <= upper:
            return name
    return "xl"


def derive(interaction: Interaction) -> dict[str, object]:
    """The :class:`~feedbackloop.schemas.DerivedAttributes` of an interaction, as a dict."""
    n_in = len(interaction.user_input)
    return {
        "input_language": detect_language(interaction.user_input),
        "input_has_code": has_code(interaction.user_input),
        "response_has_code": has_code(interaction.response),
        "input_chars": n_in,
        "response_chars": len(interaction.response),
        "input_length_bucket": length_bucket(n_in),
    }
