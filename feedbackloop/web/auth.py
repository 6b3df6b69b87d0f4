"""Project API keys: who is calling, and what they may do.

Two kinds of key per project (``app_id``), both from :class:`~feedbackloop.config.Settings`:

* a **public** key (``web_public_keys``): write-only and bound to its ``app_id``. It is meant
  to sit in a browser or a mobile app, so assume everyone has it: it can submit events for
  its own app and nothing else, and it can never read.
* a **secret** key (``web_secret_keys``): reads (dashboard, ``/api``) and writes for its app;
  the app_id ``*`` makes a key that covers every app (an operator's key).

With no key configured at all the server runs in *local mode*: loopback clients get full
access and everyone else is refused. That keeps ``feedbackloop up`` on a laptop key-free
without ever exposing an open collector on a network interface.

A key is sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Public keys may
also come as the ``key`` query parameter, because ``navigator.sendBeacon`` (the only reliable
way to report an ``abandon`` as a page closes) cannot set headers; a secret key in a URL
would end up in access logs, so secret keys are refused there.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from pydantic import SecretStr

from feedbackloop.config import Settings
from feedbackloop.errors import FeedbackLoopError

__all__ = ["AuthError", "KeyKind", "KeyRing", "Principal", "ALL_APPS"]

ALL_APPS = "*"


class KeyKind(str, Enum):
    public = "public"
    secret = "secret"
    local = "local"


class AuthError(FeedbackLoopError):
    """The request may not do what it asks; ``status`` is 401 (who are you?) or 403 (no)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    ``rate_key`` names the bucket the caller's requests are rate limited in: the key itself
    (by its app and kind, never the key text), or the client address in local mode.
    """

    kind: KeyKind
    app_id: str  # ALL_APPS for an operator key and in local mode
    rate_key: str

    @property
    def can_read(self) -> bool:
        return self.kind is not KeyKind.public

    def may_write(self, app_id: str) -> bool:
        return self.app_id == ALL_APPS or self.app_id == app_id

    def may_read(self, app_id: str) -> bool:
        return self.can_read and self.may_write(app_id)


def _digest(key: str) -> bytes:
    # Keys are looked up by their SHA-256, so the comparison time says nothing about how
    # much of a guessed key was right.
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """Resolves the key of a request to a :class:`Principal` (see the module docstring)."""

    def __init__(
        self,
        public_keys: Mapping[str, SecretStr | str] | None = None,
        secret_keys: Mapping[str, SecretStr | str] | None = None,
    ) -> None:
        self._keys: dict[bytes, Principal] = {}
        for kind, keys in ((KeyKind.public, public_keys), (KeyKind.secret, secret_keys)):
            for app_id, key in (keys or {}).items():
                # Plain strings too: Settings.model_copy(update=...) does not re-validate.
                text = key.get_secret_value() if isinstance(key, SecretStr) else str(key)
                if not text:
                    continue
                if kind is KeyKind.public and app_id == ALL_APPS:
                    raise ValueError("a public key must belong to one app_id, not '*'")
                if _digest(text) in self._keys:
                    raise ValueError(f"the {kind.value} key of {app_id!r} is used twice")
                self._keys[_digest(text)] = Principal(kind, app_id, f"{kind.value}:{app_id}")

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        return cls(settings.web_public_keys, settings.web_secret_keys)

    @property
    def local_mode(self) -> bool:
        """No keys configured: loopback clients only, with full access."""
        return not self._keys

    def authenticate(
        self,
        *,
        authorization: str | None,
        api_key: str | None,
        query_key: str | None,
        client_host: str | None,
    ) -> Principal:
        """The caller of a request, from its headers, ``key`` query parameter and address.

        Raises :class:`AuthError` (401) for a missing or unknown key.
        """
        if self.local_mode:
            if _is_loopback(client_host):
                return Principal(KeyKind.local, ALL_APPS, f"local:{client_host}")
            raise AuthError(
                401,
                "local_mode",
                "no API keys are configured, so only clients on this machine are served; "
                "set FEEDBACKLOOP_WEB_PUBLIC_KEYS / FEEDBACKLOOP_WEB_SECRET_KEYS",
            )
        key = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise AuthError(401, "bad_authorization", "expected 'Authorization: Bearer <key>'")
            key = value.strip()
        key = key or (api_key or "").strip() or None
        from_query = False
        if key is None and query_key:
            key, from_query = query_key.strip(), True
        if not key:
            raise AuthError(
                401, "missing_key", "an API key is required (Authorization: Bearer <key>)"
            )
        principal = self._keys.get(_digest(key))
        if principal is None:
            raise AuthError(401, "unknown_key", "unknown API key")
        if from_query and principal.kind is not KeyKind.public:
            raise AuthError(
                401,
                "secret_key_in_url",
                "secret keys are not accepted in the URL (they would be logged); "
                "send them in the Authorization header, and rotate this one",
            )
        return principal


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
