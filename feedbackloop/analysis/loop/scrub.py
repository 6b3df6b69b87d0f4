"""Scrubbing of personal data and secrets from texts that leave the store (exports).

Replaced with placeholders, in this order (secrets first, so a key that contains digits is
not half-eaten as a phone number):

* ``[API_KEY]``: OpenAI-style ``sk-…`` (incl. ``sk-proj-…``), Anthropic ``sk-ant-…``, AWS access
  key ids ``AKIA…``/``ASIA…``, GitHub tokens ``ghp_/gho_/ghu_/ghs_/ghr_/github_pat_…``,
  Slack ``xox?-…``, Google ``AIza…``, Stripe ``sk_live_/rk_live_…``, JWTs, ``Bearer <token>``,
  and the value in ``api_key=…`` / ``token: …`` / ``secret=…`` / ``password=…`` assignments;
* ``[EMAIL]``: ``local@domain.tld``;
* ``[PHONE]``: 9 to 15 digits written as a phone number (``+`` country code, or groups
  separated by spaces, dots, dashes, parentheses). Dates (``2024-01-15``), times, IPv4
  addresses, version numbers and bare digit runs without a ``+`` are left alone: those are
  far more common in LLM traffic than unformatted phone numbers.

Regular expressions catch the common formats, not all; this is a safety net for exports,
not a guarantee. Scrubbing is on by default and reported per kind.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["ScrubStats", "scrub"]

_SECRETS = re.compile(
    r"""
    \b(?:sk-ant-[A-Za-z0-9_\-]{20,}
      |sk-(?:proj-|svcacct-)?[A-Za-z0-9_\-]{20,}
      |(?:AKIA|ASIA)[0-9A-Z]{16}
      |gh[pousr]_[A-Za-z0-9]{30,}
      |github_pat_[A-Za-z0-9_]{40,}
      |xox[abposr]-[A-Za-z0-9\-]{10,}
      |AIza[0-9A-Za-z_\-]{35}
      |(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}
      |eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}
    )
    |(?<=Bearer\ )[A-Za-z0-9_\-.=]{16,}
    """,
    re.X,
)
_ASSIGNED = re.compile(
    r"""(?ix)
    (\b(?:api[_-]?key|apikey|access[_-]?token|auth[_-]?token|secret(?:[_-]?key)?|token|password|passwd)
     ["']?\s*[:=]\s*["']?)
    ([^\s"'`,;]{8,})
    """
)
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b")
_PHONE_CANDIDATE = re.compile(r"(?<![\w.+\-/:])(\+?\(?\d[\d\s().\-]{6,}\d)(?![\w\-/:]|\.\d)")
_DATE_LIKE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")
_IPV4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")


@dataclass
class ScrubStats:
    """How many of each kind were replaced."""

    counts: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, int]:
        return {k: self.counts[k] for k in ("api_key", "email", "phone")}


def _phone(m: re.Match[str], stats: ScrubStats | None) -> str:
    s = m.group(1).strip()
    digits = sum(c.isdigit() for c in s)
    if not 9 <= digits <= 15 or _DATE_LIKE.match(s) or _IPV4.match(s):
        return m.group(0)
    has_sep = any(c in s for c in " ().-")
    if not s.startswith("+") and not has_sep:
        return m.group(0)  # a bare digit run: an id or an amount far more often than a phone
    if not s.startswith("+") and all(c.isdigit() or c == "." for c in s):
        return m.group(0)  # dotted numbers: versions and amounts
    if stats is not None:
        stats.counts["phone"] += 1
    return m.group(0).replace(s, "[PHONE]")


def scrub(text: str, stats: ScrubStats | None = None) -> str:
    """``text`` with e-mail addresses, phone numbers and API keys replaced by placeholders."""

    def secret(m: re.Match[str]) -> str:
        if stats is not None:
            stats.counts["api_key"] += 1
        return "[API_KEY]"

    def assigned(m: re.Match[str]) -> str:
        if m.group(2) == "[API_KEY]":
            return m.group(0)
        if stats is not None:
            stats.counts["api_key"] += 1
        return m.group(1) + "[API_KEY]"

    def email(m: re.Match[str]) -> str:
        if stats is not None:
            stats.counts["email"] += 1
        return "[EMAIL]"

    text = _SECRETS.sub(secret, text)
    text = _ASSIGNED.sub(assigned, text)
    text = _EMAIL.sub(email, text)
    return _PHONE_CANDIDATE.sub(lambda m: _phone(m, stats), text)
