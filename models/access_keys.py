"""Access keys Ferry issues (``ferry admin create-access-key``): the credentials boto3, the AWS CLI and Terraform
sign requests with, each belonging to one account.

The secret access key is stored sealed (``models/secret_box.py``): SigV4 signatures are HMACs, so the server must
read the secret back to verify one, and a hash would not do. A revoked key stays listed (with its revocation time)
and is refused within moments: every change to a key row is NOTIFYed (migration 0015), and the API's key cache
(``models/access_key_cache.py``) forgets the key when the notification arrives (the bounds are in its docstring).
"""

from __future__ import annotations

import enum
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, LargeBinary, String, Text, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.secret_box import SecretBox, SecretKeyError

ACCOUNT_ID = re.compile(r"^\d{12}$")
ACCESS_KEY_ID = re.compile(r"^FKIA[A-Z2-7]{16}$")
_KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


class KeyPermission(enum.StrEnum):
    """What a key may do: every operation, or only those that change nothing (GET)."""

    READ_WRITE = "read-write"
    READ_ONLY = "read-only"


class AccessKey(Base):
    __tablename__ = "access_keys"

    access_key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(12), nullable=False, index=True)
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    permission: Mapped[str] = mapped_column(String(16), nullable=False, default=KeyPermission.READ_WRITE.value)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class IssuedKey:
    """A new key, the only time its secret is shown."""

    access_key_id: str
    secret_access_key: str
    account_id: str
    permission: KeyPermission


@dataclass(frozen=True)
class KeyInfo:
    access_key_id: str
    account_id: str
    permission: KeyPermission
    description: str | None
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class VerifiableKey:
    """An active key with its secret, for verifying one request's signature."""

    access_key_id: str
    account_id: str
    secret_access_key: str
    permission: KeyPermission


def new_access_key_id() -> str:
    return "FKIA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))


async def create_key(
    conn: AsyncConnection,
    box: SecretBox,
    *,
    account_id: str,
    description: str | None = None,
    permission: KeyPermission = KeyPermission.READ_WRITE,
) -> IssuedKey:
    if not ACCOUNT_ID.match(account_id):
        raise ValueError(f"account id {account_id!r} must be 12 digits")
    key_id = new_access_key_id()
    secret = secrets.token_urlsafe(30)  # 40 characters, like an AWS secret access key
    await conn.execute(
        insert(AccessKey).values(
            access_key_id=key_id,
            account_id=account_id,
            secret_sealed=box.seal(secret, bound_to=key_id),
            permission=permission.value,
            description=description,
        )
    )
    return IssuedKey(key_id, secret, account_id, permission)


async def list_keys(conn: AsyncConnection, account_id: str | None = None) -> list[KeyInfo]:
    statement = select(
        AccessKey.access_key_id,
        AccessKey.account_id,
        AccessKey.permission,
        AccessKey.description,
        AccessKey.created_at,
        AccessKey.revoked_at,
    ).order_by(AccessKey.account_id, AccessKey.created_at)
    if account_id is not None:
        statement = statement.where(AccessKey.account_id == account_id)
    return [
        KeyInfo(r.access_key_id, r.account_id, KeyPermission(r.permission), r.description, r.created_at, r.revoked_at)
        for r in await conn.execute(statement)
    ]


async def revoke_key(conn: AsyncConnection, access_key_id: str) -> bool:
    """Revoke a key; False when no active key has this id."""
    result = await conn.execute(
        update(AccessKey)
        .where(AccessKey.access_key_id == access_key_id, AccessKey.revoked_at.is_(None))
        .values(revoked_at=func.now())
        .returning(AccessKey.access_key_id)
    )
    return result.first() is not None


async def verifiable_key(conn: AsyncConnection, box: SecretBox, access_key_id: str) -> VerifiableKey | None:
    """The active key with this id and its secret, or None (unknown, malformed or revoked)."""
    if not ACCESS_KEY_ID.match(access_key_id):
        return None
    row = (
        await conn.execute(
            select(AccessKey.account_id, AccessKey.secret_sealed, AccessKey.permission).where(
                AccessKey.access_key_id == access_key_id, AccessKey.revoked_at.is_(None)
            )
        )
    ).one_or_none()
    if row is None:
        return None
    secret = box.open(row.secret_sealed, bound_to=access_key_id)
    return VerifiableKey(access_key_id, row.account_id, secret, KeyPermission(row.permission))


async def reseal_keys(conn: AsyncConnection, previous: SecretBox, current: SecretBox) -> int:
    """Re-seal every key sealed under ``previous`` with ``current`` (rotating FERRY_SECRET_KEY); keys already
    sealed under ``current`` are left as they are. Returns how many were re-sealed."""
    rows = (await conn.execute(select(AccessKey.access_key_id, AccessKey.secret_sealed))).all()
    resealed = 0
    for row in rows:
        try:
            current.open(row.secret_sealed, bound_to=row.access_key_id)
            continue
        except SecretKeyError:
            secret = previous.open(row.secret_sealed, bound_to=row.access_key_id)
        await conn.execute(
            update(AccessKey)
            .where(AccessKey.access_key_id == row.access_key_id)
            .values(secret_sealed=current.seal(secret, bound_to=row.access_key_id))
        )
        resealed += 1
    return resealed
