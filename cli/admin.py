"""``ferry admin``: access keys, run where the server runs with the same ``FERRY_*`` settings (database URL and
the secret key that seals the keys' secrets).

- ``ferry admin create-access-key --account-id 111122223333 [--description ...] [--read-only]`` prints
  ``{"AccessKeyId", "SecretAccessKey", "AccountId"}``: the only time the secret is ever shown;
- ``ferry admin list-access-keys [--account-id ...]`` lists keys without their secrets;
- ``ferry admin revoke-access-key FKIA...`` revokes a key: its next request fails;
- ``ferry admin reseal-access-keys --previous-secret-key-file PATH`` re-seals every key under the current
  ``FERRY_SECRET_KEY`` after it was rotated (docs/security.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from models import access_keys
from models.access_keys import IssuedKey, KeyPermission
from models.db import make_async_engine
from models.secret_box import SecretBox
from models.settings import FerrySettings, get_settings


def add_commands(sub: Any) -> None:
    admin = sub.add_parser("admin", help="manage access keys (runs where the server runs, same FERRY_* settings)")
    commands = admin.add_subparsers(dest="admin_command", required=True)
    create = commands.add_parser("create-access-key", help="issue a key for an account and print it once")
    create.add_argument("--account-id", required=True, help="the 12-digit account the key acts for")
    create.add_argument("--description", help="what the key is for (shown by list-access-keys)")
    create.add_argument("--read-only", action="store_true", help="the key may only read (GET)")
    listing = commands.add_parser("list-access-keys", help="list keys (never their secrets)")
    listing.add_argument("--account-id", help="only this account's keys")
    revoke = commands.add_parser("revoke-access-key", help="revoke a key; its next request fails")
    revoke.add_argument("access_key_id")
    reseal = commands.add_parser("reseal-access-keys", help="re-seal every key under a rotated FERRY_SECRET_KEY")
    reseal.add_argument("--previous-secret-key-file", required=True, type=Path, help="the secret key before")


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.admin_command == "create-access-key":
        issued = asyncio.run(create_access_key(settings, args.account_id, args.description, read_only=args.read_only))
        print(json.dumps({"AccessKeyId": issued.access_key_id, "SecretAccessKey": issued.secret_access_key,
                          "AccountId": issued.account_id}, indent=2))  # fmt: skip
        return 0
    if args.admin_command == "list-access-keys":
        print(json.dumps(asyncio.run(list_access_keys(settings, args.account_id)), indent=2))
        return 0
    if args.admin_command == "reseal-access-keys":
        previous = SecretBox(args.previous_secret_key_file.read_text().strip())
        count = asyncio.run(reseal_access_keys(settings, previous))
        print(json.dumps({"Resealed": count}, indent=2))
        return 0
    if asyncio.run(revoke_access_key(settings, args.access_key_id)):
        print(json.dumps({"AccessKeyId": args.access_key_id, "Revoked": True}, indent=2))
        return 0
    print(f"ferry: no active access key {args.access_key_id!r}", file=sys.stderr)
    return 1


def _box(settings: FerrySettings) -> SecretBox:
    secret = settings.secret_key_material()
    if secret is None:
        raise SystemExit("ferry: FERRY_SECRET_KEY or FERRY_SECRET_KEY_FILE must be set (the API's secret key)")
    return SecretBox(secret)


async def create_access_key(
    settings: FerrySettings, account_id: str, description: str | None = None, *, read_only: bool = False
) -> IssuedKey:
    box = _box(settings)
    engine = make_async_engine(settings)
    try:
        async with engine.begin() as conn:
            return await access_keys.create_key(
                conn,
                box,
                account_id=account_id,
                description=description,
                permission=KeyPermission.READ_ONLY if read_only else KeyPermission.READ_WRITE,
            )
    finally:
        await engine.dispose()


async def list_access_keys(settings: FerrySettings, account_id: str | None) -> list[dict[str, Any]]:
    engine = make_async_engine(settings)
    try:
        async with engine.connect() as conn:
            keys = await access_keys.list_keys(conn, account_id)
    finally:
        await engine.dispose()
    return [
        {
            "AccessKeyId": key.access_key_id,
            "AccountId": key.account_id,
            "Permission": key.permission.value,
            "Description": key.description,
            "CreatedAt": key.created_at.isoformat(),
            "Status": "Revoked" if key.revoked_at else "Active",
            "RevokedAt": key.revoked_at.isoformat() if key.revoked_at else None,
        }
        for key in keys
    ]


async def reseal_access_keys(settings: FerrySettings, previous: SecretBox) -> int:
    current = _box(settings)
    engine = make_async_engine(settings)
    try:
        async with engine.begin() as conn:
            return await access_keys.reseal_keys(conn, previous, current)
    finally:
        await engine.dispose()


async def revoke_access_key(settings: FerrySettings, access_key_id: str) -> bool:
    engine = make_async_engine(settings)
    try:
        async with engine.begin() as conn:
            return await access_keys.revoke_key(conn, access_key_id)
    finally:
        await engine.dispose()
