"""API fuzzing: Schemathesis generates requests from the committed OpenAPI document (openapi/openapi.json), valid
and invalid, signed with SigV4 as boto3 signs them, against the real API on the test database.

Whatever it sends: no 5xx, no stack trace in a body, and every error AWS-shaped (``x-amzn-ErrorType`` and a JSON
``message``). The requests are made under an account of their own, whose replicators are deleted afterwards.

- Stateless: each operation on its own, ``FERRY_FUZZ_CASES`` cases per operation (60: about 850 requests, as
  operations without parameters have a single case).
- Stateful: ``FERRY_FUZZ_SCENARIOS`` call sequences (60, of at most ``STEPS_PER_SCENARIO`` calls: about 600
  requests) following the document's links. Each scenario creates a replicator the API accepts (a generated
  CreateReplicator body given a fresh name and the stack's clusters), then Describe, Update (with the
  currentVersion Describe returned), Delete, the tag operations and the extensions on it, with generated
  bodies, in generated orders.

Both derandomized, so a failure reproduces; raise the two numbers for a longer run.
"""

from __future__ import annotations

import os
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
import schemathesis
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import Bundle, initialize
from schemathesis import Case, GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.stateful.state_machine import StepInput, StepOutput
from sqlalchemy import Engine, delete

from models.access_keys import IssuedKey
from models.replicator import ReplicatorRow
from models.settings import FerrySettings
from tests.conftest import REGION, issue_key

OPENAPI = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
FUZZ_ACCOUNT = "222233334444"
CASES_PER_OPERATION = int(os.environ.get("FERRY_FUZZ_CASES", "60"))
SCENARIOS = int(os.environ.get("FERRY_FUZZ_SCENARIOS", "60"))
STEPS_PER_SCENARIO = 10

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


# The probes are not AWS operations: their 503 is documented (a dependency down, or replicators on the test
# database but no live worker), with the probe's own body instead of an AWS error.
HEALTH_PROBES = frozenset({"/livez", "/readyz", "/healthz"})


def assert_probe_shaped(response: Any) -> None:
    assert response.status_code in (200, 503), f"{response.status_code} for {response.request.url}"
    body = response.json()
    assert body.get("status") == ("up" if response.status_code == 200 else "down"), body
    if response.status_code == 503:
        parts = [part for part in body.values() if isinstance(part, dict)]
        parts += [inner for part in parts for inner in part.values() if isinstance(inner, dict)]  # /healthz's kafka
        down = [part for part in parts if part.get("status") == "down"]
        assert down and all(isinstance(part.get("reason"), str) for part in down), f"503 without a reason: {body}"


def assert_aws_shaped(response: Any) -> None:
    if response.request.method == "GET" and urllib.parse.urlsplit(response.request.url).path in HEALTH_PROBES:
        assert_probe_shaped(response)
        return
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


# ----- stateful: call sequences along the document's links ----------------------------------------------------

stateful_schema = schemathesis.openapi.from_path(
    OPENAPI,
    config=SchemathesisConfig.from_dict(
        {
            # NUL is refused before anything reads a request (the stateless test and test_http_errors check it):
            # a generated NUL would end every sequence at its first step.
            "generation": {"allow-x00": False},
            # Only the links the document declares (api/links.py), none guessed from names.
            "phases": {"stateful": {"inference": {"algorithms": []}}},
        }
    ),
)
CREATE_REPLICATOR = stateful_schema["/replication/v1/replicators"]["POST"]


def acceptable_create(body: Any, name: str, clusters: dict[str, Any]) -> dict[str, Any]:
    """A generated CreateReplicator body made acceptable where generation cannot guess: a fresh name, an IAM role,
    the stack's two clusters and one replication from one to the other. The rest (patterns, compression, starting
    position, topic naming, offset sync mode, tags, description, log delivery) stays as generated, so the API may
    still refuse it; ``acceptable_create({}, ...)`` is the plainest body it accepts."""
    generated = body if isinstance(body, dict) else {}
    infos = generated.get("replicationInfoList") or [
        {
            "targetCompressionType": "NONE",
            "topicReplication": {"topicsToReplicate": [".*"]},
            "consumerGroupReplication": {"consumerGroupsToReplicate": [".*"]},
        }
    ]
    info = {k: v for k, v in infos[0].items() if k not in ("sourceKafkaClusterArn", "targetKafkaClusterArn")}
    info["sourceKafkaClusterId"] = clusters["source_id"]
    info["targetKafkaClusterId"] = clusters["target_id"]
    return {
        **generated,
        "replicatorName": name,
        "serviceExecutionRoleArn": f"arn:aws:iam::{FUZZ_ACCOUNT}:role/ferry-fuzz",
        "kafkaClusters": [
            {
                "apacheKafkaCluster": {
                    "apacheKafkaClusterId": clusters[f"{role}_id"],
                    "bootstrapBrokerString": clusters[f"{role}_bootstrap"],
                }
            }
            for role in ("source", "target")
        ],
        "replicationInfoList": [info],
    }


_GeneratedWorkflow = stateful_schema.as_state_machine()


class ReplicatorWorkflow(_GeneratedWorkflow):
    """Schemathesis' state machine for the document's links; every scenario starts from an accepted create.

    Schemathesis does not start scenarios with CreateReplicator (its analysis takes the cluster ids in the body for
    references to a resource no operation makes), so the create is added here, recorded as Schemathesis records
    its own first steps, so that the links from its response are followed."""

    base_url: ClassVar[str]
    auth: ClassVar[SigV4RequestsAuth]
    clusters: ClassVar[dict[str, Any]]
    name_prefix: ClassVar[str]
    # (operation, status) of every response, over all scenarios.
    outcomes: ClassVar[Counter[tuple[str, int]]] = Counter()

    @initialize(target=Bundle("created"), case=CREATE_REPLICATOR.as_strategy(GenerationMode.POSITIVE))
    def create_a_replicator(self, case: Case) -> StepOutput:
        name = f"{self.name_prefix}-{sum(self.outcomes.values())}"
        case.body = acceptable_create(case.body, name, self.clusters)
        output = self._first_step(case)
        if output.response.status_code != 200:  # a generated pattern, tag or setting was refused
            output = self._first_step(CREATE_REPLICATOR.Case(body=acceptable_create({}, name, self.clusters)))
        assert output.response.status_code == 200, output.response.text
        return output

    def _first_step(self, case: Case) -> StepOutput:
        step = StepInput.initial(case)
        self.recorder.record_case(case=case)
        self.control.record_step(step, self.recorder)
        return self._step(step)

    def get_call_kwargs(self, case: Case) -> dict[str, Any]:
        return {"base_url": self.base_url, "auth": self.auth, "timeout": 30}

    def validate_response(self, response: Any, case: Case, *args: Any, **kwargs: Any) -> None:
        self.outcomes[(case.operation.label, response.status_code)] += 1
        assert_aws_shaped(response)


# Scenarios start from the create above, or from ListReplicators (whose first replicator links on). The other
# starting points Schemathesis picks, TagResource, StartFailover and StartAudit on made-up ARNs, can only be refused
# (400, 404): the stateless test sends those.
for _rule in _GeneratedWorkflow.root_rules:
    if _rule != "RANDOM__GET_replication_v1_replicators":
        setattr(ReplicatorWorkflow, _rule, None)


def test_generated_call_sequences_never_break_the_api(
    api_url: str, fuzz_key: IssuedKey, clusters: dict[str, Any], unique: str
) -> None:
    ReplicatorWorkflow.base_url = api_url
    ReplicatorWorkflow.auth = SigV4RequestsAuth(fuzz_key)
    ReplicatorWorkflow.clusters = clusters
    ReplicatorWorkflow.name_prefix = unique
    ReplicatorWorkflow.outcomes.clear()

    ReplicatorWorkflow.run(
        settings=settings(
            max_examples=SCENARIOS,
            stateful_step_count=STEPS_PER_SCENARIO,
            # No shrinking (as Schemathesis runs its state machines): a failing sequence is reported as it ran.
            phases=[Phase.generate],
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
    )

    outcomes = ReplicatorWorkflow.outcomes
    print(f"stateful fuzzing: {sum(outcomes.values())} requests", dict(sorted(outcomes.items())))
    # The sequences went where only links lead: operations on the replicators the creates made, and on the
    # failovers and audits started on them. (UpdateReplicationInfo gets Describe's currentVersion the same way, but
    # a generated update is seldom one the API accepts: its own rules are test_validation's.)
    accepted = {operation for (operation, status) in outcomes if status < 300}
    assert {
        "GET /replication/v1/replicators/{replicatorArn}",
        "DELETE /replication/v1/replicators/{replicatorArn}",
        "GET /v1/tags/{resourceArn}",
        "GET /replication/v1/replicators/{replicatorArn}/metrics",
        "GET /replication/v1/replicators/{replicatorArn}/failover/{operationId}",
        "GET /replication/v1/replicators/{replicatorArn}/audits/{auditId}",
    } <= accepted, outcomes
