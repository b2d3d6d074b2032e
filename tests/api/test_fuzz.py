"""API fuzzing: Schemathesis generates requests from the committed OpenAPI document (openapi/openapi.json), valid
and invalid, signed with SigV4 as boto3 signs them, against the real API on the test database.

Whatever it sends: no 5xx, no stack trace in a body, and every error AWS-shaped (``x-amzn-ErrorType`` and a JSON
``message``). The requests are made under an account of their own, whose replicators are deleted afterwards.
About 1,000 cases per run (``CASES_PER_OPERATION`` times the operations), with a fixed seed so a failure
reproduces; ``FERRY_FUZZ_CASES`` raises the count for a longer run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, settings
from sqlalchemy import Engine, delete

from models.access_keys import IssuedKey
from models.replicator import ReplicatorRow
from models.settings import FerrySettings
from tests.conftest import REGION, issue_key

OPENAPI = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
FUZZ_ACCOUNT = "222233334444"
CASES_PER_OPERATION = int(os.environ.get("FERRY_FUZZ_CASES", "60"))

schema = schemathesis.openapi.from_path(OPENAPI)


class SigV4RequestsAuth(requests.auth.AuthBase):
    """Signs the final request (URL and body as sent), as botocore signs the kafka client's."""

    def __init__(self, key: IssuedKey) -> None:
        self._signer = SigV4Auth(Credentials(key.access_key_id, key.secret_access_key), "kafka", REGION)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body.encode() if isinstance(request.body, str) else (request.body or b"")
        signed = AWSRequest(
            method=request.method,
            url=request.url,
            data=body,
            headers={k: v for k, v in request.headers.items() if k.lower() == "content-type"},
        )
        self._signer.add_auth(signed)
        request.headers.update(dict(signed.headers.items()))
        return request


@pytest.fixture(scope="module")
def fuzz_key(test_settings: FerrySettings, migrated_test_database: str) -> IssuedKey:
    return issue_key(test_settings, FUZZ_ACCOUNT)


@pytest.fixture(scope="module", autouse=True)
def _remove_fuzzed_replicators(db_engine: Engine) -> Iterator[None]:
    yield
    with db_engine.begin() as connection:
        connection.execute(delete(ReplicatorRow).where(ReplicatorRow.account_id == FUZZ_ACCOUNT))


def assert_aws_shaped(response: Any) -> None:
    body = response.text
    assert response.status_code < 500, f"{response.status_code} for {response.request.method} {response.request.url}"
    assert "Traceback" not in body and 'File "' not in body, f"a stack trace in the body: {body[:500]}"
    if response.status_code >= 400:
        headers = {name.lower(): value for name, value in response.headers.items()}
        assert headers.get("x-amzn-errortype"), f"no x-amzn-ErrorType on {response.status_code}: {body[:300]}"
        assert isinstance(response.json().get("message"), str), f"no JSON message: {body[:300]}"


@schema.parametrize()
@settings(
    max_examples=CASES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_generated_requests_never_break_the_api(case: Any, api_url: str, fuzz_key: IssuedKey) -> None:
    response = case.call(base_url=api_url, auth=SigV4RequestsAuth(fuzz_key), timeout=30)
    assert_aws_shaped(response)
