"""docs/quickstart.md and README.md as a reader runs them, block after block in one shell session, against the
real API server and a real fleet worker on the stack's clusters: the pages' addresses replaced by the test's,
`orders` by a name of the test's own, `.run/` holding what `make up` would write there (a key this test issued,
the metrics token, the stack's description). tests/docs/test_doc_snippets.py checks that no block is left out."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from models.access_keys import IssuedKey
from tests.conftest import ROOT, TEST_METRICS_TOKEN
from tests.doc_snippets import ShellSession, blocks, python_path_env, snippet
from tests.fleet.conftest import Fleet

QUICKSTART = ROOT / "docs" / "quickstart.md"
README = ROOT / "README.md"
WAYS = ("create-ferry", "create-boto3", "create-aws")


@pytest.fixture(scope="module")
def worker(fleet: Fleet) -> Fleet:
    fleet.start_worker("docs-worker")
    return fleet


def reader_session(
    workdir: Path, name: str, api: str, key: IssuedKey, stack: dict[str, Any], source: str, target: str
) -> ShellSession:
    """A working directory as `make up` leaves the repository, and the pages' placeholders for this test."""
    run_dir = workdir / ".run"
    run_dir.mkdir(parents=True)
    (run_dir / "credentials").write_text(
        f"[ferry]\naws_access_key_id = {key.access_key_id}\naws_secret_access_key = {key.secret_access_key}\n"
    )
    (run_dir / "metrics.token").write_text(TEST_METRICS_TOKEN + "\n")
    (run_dir / "stack.json").write_text(json.dumps(stack))
    (workdir / ".venv").symlink_to(Path(sys.executable).parents[1])
    secure = (stack.get("secure") or {}).get("source") or {}
    replacements = {
        "http://127.0.0.1:8080": api,
        "127.0.0.1:19092": source,
        "127.0.0.1:29092": target,
        "orders": f"{name}-orders",
    }
    if secure.get("sasl_scram"):
        replacements["127.0.0.1:19094"] = secure["sasl_scram"]
    session = ShellSession(workdir, {**python_path_env(ROOT), "HOME": str(workdir)}, replacements)
    for block in blocks(QUICKSTART):
        if block.kind == "file":
            (workdir / block.label).write_text(session.replace(block.text))
    return session


def run_quickstart(session: ShellSession, way: str) -> dict[str, str]:
    """The page from the top with one way of creating the replicator; each block's standard output by label."""
    outputs: dict[str, str] = {}
    for block in blocks(QUICKSTART):
        if block.kind != "snippet" or (block.label in WAYS and block.label != way):
            continue
        outputs[block.label] = session.run_ok(block.text, block.language)
    return outputs


def test_the_quickstart_runs_as_written_each_way(
    worker: Fleet,
    fleet_api: str,
    fleet_key: IssuedKey,
    stack: dict[str, Any],
    source_bootstrap: str,
    target_bootstrap: str,
    unique: str,
    tmp_path: Path,
) -> None:
    sessions = {
        way: reader_session(
            tmp_path / way, f"{unique}-{way[7:]}", fleet_api, fleet_key, stack, source_bootstrap, target_bootstrap
        )
        for way in WAYS
    }
    with ThreadPoolExecutor(max_workers=len(WAYS)) as pool:
        ran = dict(zip(WAYS, pool.map(lambda way: run_quickstart(sessions[way], way), WAYS), strict=True))

    for way, outputs in ran.items():
        name = f"{unique}-{way[7:]}"
        transcript = "\n".join(sessions[way].transcript)
        assert json.loads(outputs["setup"])["database"]["status"] == "up", transcript  # /readyz
        assert outputs["produce"].startswith(f"produced {name}-orders:"), transcript
        # The record on the target, under the source cluster's alias, with its key, value and header.
        copied = outputs["consume"].splitlines()
        assert copied[0].startswith("src-") and f".{name}-orders:" in copied[0], transcript + worker.log_tail()
        assert copied[0].endswith("""b'order-1' b'{"order": 1, "amount": 42}'"""), transcript
        assert "'source'" in copied[1], transcript
        assert f"{name}-orders" in outputs["metrics"], transcript  # a row per partition
        assert "ReplicatorState: RUNNING" in outputs["metrics"], transcript
        gone = sessions[way].run(f"ferry replicators describe {name}-orders-dr")
        assert gone.returncode == 3, transcript  # delete --wait returned once it was gone


def test_the_readme_runs_as_written(
    worker: Fleet,
    fleet_api: str,
    fleet_key: IssuedKey,
    stack: dict[str, Any],
    source_bootstrap: str,
    target_bootstrap: str,
    unique: str,
    tmp_path: Path,
) -> None:
    session = reader_session(tmp_path, unique, fleet_api, fleet_key, stack, source_bootstrap, target_bootstrap)

    session.run_ok(snippet(README, "readme-credentials"))
    with_aws = session.run_ok(snippet(README, "readme-aws"))
    decoder = json.JSONDecoder()
    described, end = decoder.raw_decode(with_aws)  # describe-replicator "$ARN"
    arn = described["ReplicatorArn"]
    assert arn.startswith("arn:aws:kafka:us-east-1:") and f"/{unique}-orders-dr/" in arn, with_aws
    assert described["ReplicatorName"] == f"{unique}-orders-dr" and described["ReplicatorState"] in (
        "CREATING",
        "RUNNING",
    )
    rest = with_aws[end:].lstrip()
    metrics, end = decoder.raw_decode(rest)
    prometheus = rest[end:]
    assert metrics["replicatorArn"] == arn
    assert "ferry_replicator_state{" in prometheus and "ferry_fleet_live_workers" in prometheus

    with_scram = session.run_ok(snippet(README, "readme-scram"))
    scram = json.loads(with_scram)
    assert scram["ReplicatorName"] == f"{unique}-orders-dr-scram" and scram["ReplicatorState"] == "CREATING"

    with_ferry = session.run(snippet(README, "readme-cli"))
    assert with_ferry.returncode == 0, "\n".join(session.transcript)
    assert f"{unique}-orders-ci: RUNNING after" in with_ferry.stderr
    assert with_ferry.stderr.splitlines()[-1].startswith(f"{unique}-orders-ci: DELETED after")
