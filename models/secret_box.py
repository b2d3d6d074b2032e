"""Encryption at rest for the secrets Ferry must be able to read back (the secret access keys it verifies SigV4
signatures with: SigV4 is an HMAC, so the server needs the secret itself, not a hash of it).

AES-256-GCM with a key derived from ``FERRY_SECRET_KEY`` (or the file ``FERRY_SECRET_KEY_FILE`` names) by
HKDF-SHA256; each value gets a fresh 96-bit nonce and is bound to its row by associated data (the access key id),
so a ciphertext moved to another row does not decrypt. The key never enters the database; a database dump holds
ciphertexts only (docs/security.md says exactly what it gives an attacker).
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_VERSION = b"\x01"
_NONCE_BYTES = 12
MIN_SECRET_KEY_LENGTH = 32


class SecretKeyError(ValueError):
    """The configured secret key is missing, too short, or is not the key these values were encrypted with."""


class SecretBox:
    def __init__(self, secret_key: str | bytes, *, purpose: bytes = b"ferry access keys") -> None:
        material = secret_key.encode() if isinstance(secret_key, str) else secret_key
        if len(material) < MIN_SECRET_KEY_LENGTH:
            raise SecretKeyError(
                f"the secret key must be at least {MIN_SECRET_KEY_LENGTH} characters "
                "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(material)
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, *, bound_to: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext.encode(), bound_to.encode())

    def open(self, sealed: bytes, *, bound_to: str) -> str:
        if len(sealed) < 1 + _NONCE_BYTES or sealed[:1] != _VERSION:
            raise SecretKeyError("not a value this version of Ferry sealed")
        nonce, ciphertext = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, ciphertext, bound_to.encode()).decode()
        except InvalidTag:
            raise SecretKeyError(
                "a stored secret does not decrypt with the configured FERRY_SECRET_KEY (was the key changed?)"
            ) from None
