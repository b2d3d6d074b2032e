"""The console's session cookie: who signed in, and the token every form must carry back (CSRF).

Browsers cannot sign requests with SigV4, so the console signs people in once with an access key id and its secret
(``api/identity.py`` checks them against the stored sealed key) and then carries the key id in a cookie signed with
a key derived from ``FERRY_SECRET_KEY``: HttpOnly (no script reads it), SameSite=Strict (no other site's page sends
it), Secure when served over https, and expiring after ``FERRY_CONSOLE_SESSION_SECONDS``. The cookie holds no secret:
every request looks the key up again (``api/identity.py``), so a revoked key is signed out on its next request.

Every visitor has a session, signed in or not, so the sign-in form too carries a CSRF token bound to it (no other
site can sign a visitor in to an account of its choosing). A new token is issued at sign-in and sign-out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.responses import Response

COOKIE_NAME = "ferry_console"
PATH = "/console"


@dataclass(frozen=True)
class ConsoleSession:
    csrf_token: str
    # The access key the visitor signed in with; None before sign-in.
    access_key_id: str | None = None

    def signed_in_as(self, access_key_id: str) -> ConsoleSession:
        return ConsoleSession(csrf_token=_new_token(), access_key_id=access_key_id)

    def signed_out(self) -> ConsoleSession:
        return replace(self, csrf_token=_new_token(), access_key_id=None)

    def accepts(self, csrf_token: str | None) -> bool:
        return csrf_token is not None and hmac.compare_digest(csrf_token.encode(), self.csrf_token.encode())


def _new_token() -> str:
    return secrets.token_urlsafe(32)


def anonymous() -> ConsoleSession:
    return ConsoleSession(csrf_token=_new_token())


class SessionCodec:
    """Signs sessions into cookie values and reads them back, refusing forged, altered or expired ones."""

    def __init__(self, secret_key: str | None, max_age_seconds: float) -> None:
        # Without a secret key (authentication disabled) sessions only carry the CSRF token: a per-process key does.
        self._serializer = URLSafeTimedSerializer(
            secret_key or secrets.token_urlsafe(48),
            salt="ferry.console.session.v1",
            signer_kwargs={"digest_method": hashlib.sha256},
        )
        self.max_age_seconds = max_age_seconds

    def read(self, headers: list[tuple[bytes, bytes]]) -> ConsoleSession | None:
        value = _cookie(headers, COOKIE_NAME)
        if value is None:
            return None
        try:
            data: Any = self._serializer.loads(value, max_age=int(self.max_age_seconds))
        except BadSignature:  # also SignatureExpired
            return None
        if not isinstance(data, dict) or not isinstance(data.get("csrf"), str):
            return None
        key = data.get("key")
        return ConsoleSession(csrf_token=data["csrf"], access_key_id=key if isinstance(key, str) else None)

    def write(self, response: Response, session: ConsoleSession, *, secure: bool) -> None:
        value = self._serializer.dumps({"csrf": session.csrf_token, "key": session.access_key_id})
        response.set_cookie(
            COOKIE_NAME,
            value,
            max_age=int(self.max_age_seconds),
            path=PATH,
            httponly=True,
            samesite="strict",
            secure=secure,
        )


def _cookie(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    for header, value in headers:
        if header != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            key, _, content = part.strip().partition("=")
            if key == name:
                return content
    return None
