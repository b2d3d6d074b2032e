"""Secrets a worker reads itself to reach secured clusters: never stored in the database, Redis, a Celery message,
a log line, an API response or an exception text.

A replicator names its secrets by Secrets Manager ARN (``arn:aws:secretsmanager:<region>:<account>:secret:<name>``).
They are read:

- from AWS Secrets Manager (or a compatible service at ``FERRY_SECRETS_MANAGER_ENDPOINT``, e.g. the local stack's)
  with boto3's credential chain, in the ARN's region; or
- on premises, from files: with ``FERRY_SECRETS_DIR`` set, the secret ``<name>`` is the file ``<dir>/<name>``
  (a Kubernetes Secret mounted as files: the key is the secret's name, its value the secret string).

Values are cached for ``FERRY_SECRET_CACHE_SECONDS`` and read again at once when a cluster refuses the
credentials (``forget``), so a rotated password is picked up without a restart.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

SECRET_ARN = re.compile(
    r"^arn:aws[a-z-]*:secretsmanager:(?P<region>[a-z0-9-]+):\d{12}:secret:(?P<name>[A-Za-z0-9/_+=.@-]+)$"
)
# Secrets Manager appends "-" and six characters to a secret's name in its ARN.
_ARN_SUFFIX = re.compile(r"-[A-Za-z0-9]{6}$")


class SecretUnavailable(Exception):
    """A secret could not be read; the message names the secret's ARN and the kind of failure, nothing more."""

    def __init__(self, message: str, *, missing: bool) -> None:
        super().__init__(message)
        self.missing = missing


class SecretStore:
    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        secrets_dir: Path | None = None,
        cache_seconds: float = 300.0,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.secrets_dir = secrets_dir
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, str]] = {}
        self._clients: dict[str, Any] = {}

    async def get(self, arn: str) -> str:
        cached = self._cache.get(arn)
        if cached is not None and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]
        value = await asyncio.to_thread(self._read, arn)
        self._cache[arn] = (time.monotonic(), value)
        return value

    def forget(self, arns: list[str]) -> None:
        """Read these again at their next use (the cluster refused what they held)."""
        for arn in arns:
            self._cache.pop(arn, None)

    def _read(self, arn: str) -> str:
        match = SECRET_ARN.match(arn)
        if match is None:
            raise SecretUnavailable(f"{arn[:200]} is not a Secrets Manager secret ARN", missing=True)
        if self.secrets_dir is not None:
            return self._read_file(arn, match["name"])
        client = self._clients.get(match["region"])
        if client is None:
            client = boto3.client(
                "secretsmanager",
                region_name=match["region"],
                endpoint_url=self.endpoint_url,
                config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2}),
            )
            self._clients[match["region"]] = client
        try:
            answer = client.get_secret_value(SecretId=arn)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            missing = code in ("ResourceNotFoundException", "InvalidRequestException")
            raise SecretUnavailable(f"secret {arn} could not be read ({code})", missing=missing) from None
        except BotoCoreError as exc:
            raise SecretUnavailable(f"secret {arn} could not be read ({type(exc).__name__})", missing=False) from None
        value = answer.get("SecretString")
        if not isinstance(value, str):
            raise SecretUnavailable(f"secret {arn} holds no secret string", missing=True)
        return value

    def _read_file(self, arn: str, name: str) -> str:
        assert self.secrets_dir is not None
        for candidate in (name, _ARN_SUFFIX.sub("", name)):
            path = (self.secrets_dir / candidate).resolve()
            if self.secrets_dir.resolve() not in path.parents:
                break  # a name that climbs out of the folder names nothing
            if path.is_file():
                return path.read_text()
        raise SecretUnavailable(f"secret {arn} not found in FERRY_SECRETS_DIR", missing=True)
