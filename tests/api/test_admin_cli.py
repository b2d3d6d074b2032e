"""``ferry admin`` as an operator runs it (a process with the server's FERRY_* settings): a key it creates signs
boto3 calls, list-access-keys never shows a secret, a revoked key fails on its next request; and authentication
turned off takes an explicit FERRY_AUTH=disabled, with a warning at every start."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from api.app import create_app
from models.access_keys import IssuedKey, KeyPermission
from models.settings import FerrySettings
from tests.api.conftest import RunningServer, kafka_client
from tests.conftest import ROOT, TEST_SECRET_KEY, issue_key


def ferry(test_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "cli", *args]
    return subprocess.run(argv, cwd=ROOT, env=test_env, capture_output=True, text=True, timeout=60, check=False)


def test_create_list_and_revoke_an_access_key(
    api_url: str, test_env: dict[str, str], migrated_test_database: str
) -> None:
    created = ferry(test_env, "admin", "create-access-key", "--account-id", "444455556666", "--description", "ci")
    assert created.returncode == 0, created.stderr
    printed: dict[str, Any] = json.loads(created.stdout)
    assert set(printed) == {"AccessKeyId", "SecretAccessKey", "AccountId"}
    key = IssuedKey(printed["AccessKeyId"], printed["SecretAccessKey"], printed["AccountId"], KeyPermission.READ_WRITE)
    client = kafka_client(api_url, key)
    assert client.list_replicators()["Replicators"] == []  # a new account sees nothing of others'

    listed = ferry(test_env, "admin", "list-access-keys", "--account-id", "444455556666")
    assert listed.returncode == 0, listed.stderr
    assert key.access_key_id in listed.stdout and key.secret_access_key not in listed.stdout

    revoked = ferry(test_env, "admin", "revoke-access-key", key.access_key_id)
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(client.exceptions.UnauthorizedException):
        client.list_replicators()
    again = ferry(test_env, "admin", "revoke-access-key", key.access_key_id)
    assert again.returncode == 1 and "no active access key" in again.stderr


def test_an_invalid_account_id_is_refused(test_env: dict[str, str]) -> None:
    refused = ferry(test_env, "admin", "create-access-key", "--account-id", "12345")
    assert refused.returncode != 0 and "12 digits" in refused.stderr


def test_the_api_refuses_to_start_without_a_secret_key(test_settings: FerrySettings) -> None:
    settings = test_settings.model_copy(update={"secret_key": None, "secret_key_file": None})
    with pytest.raises(ValueError, match="FERRY_SECRET_KEY"), RunningServer(create_app(settings)):
        pass


def test_authentication_off_is_explicit_and_warned_about(
    test_settings: FerrySettings, migrated_test_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = test_settings.model_copy(update={"auth": "disabled"})
    caplog.set_level(logging.WARNING)
    with RunningServer(create_app(settings)) as server:
        response = httpx.get(f"{server.url}/replication/v1/replicators")
    assert response.status_code == 200
    assert any("authentication is DISABLED" in record.getMessage() for record in caplog.records)


def test_rotating_the_secret_key_keeps_every_access_key_working(
    test_settings: FerrySettings, test_env: dict[str, str], migrated_test_database: str, tmp_path: Path
) -> None:
    key = issue_key(test_settings, "777788889999")
    old_file = tmp_path / "old.key"
    old_file.write_text(TEST_SECRET_KEY)
    new_secret = "a-new-secret-key-for-the-rotation-test-0123456789"
    rotated = test_settings.model_copy(update={"secret_key": SecretStr(new_secret)})
    new_file = tmp_path / "new.key"
    new_file.write_text(new_secret)

    def reseal(current: str, previous: Path) -> subprocess.CompletedProcess[str]:
        env = {**test_env, "FERRY_SECRET_KEY": current}
        return ferry(env, "admin", "reseal-access-keys", "--previous-secret-key-file", str(previous))

    try:
        with RunningServer(create_app(rotated)) as server:
            client = kafka_client(server.url, key)
            with pytest.raises(client.exceptions.UnauthorizedException):
                client.list_replicators()  # sealed under the old secret key: refused, not a 500
            resealed = reseal(new_secret, old_file)
            assert resealed.returncode == 0, resealed.stderr
            assert json.loads(resealed.stdout)["Resealed"] >= 1
            assert client.list_replicators()["Replicators"] == []
    finally:
        # The suite's other keys live in the same database: seal them back under the suite's secret key.
        assert reseal(TEST_SECRET_KEY, new_file).returncode == 0
