"""``ferry replicators`` waiting on a real fleet: docs/cli.md's ``fleet`` snippet as written (create --wait until
RUNNING, wait, delete --wait until gone), and a wait for RUNNING that ends at once, exit 8 with the StateInfo,
when the replicator FAILED."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from models.access_keys import IssuedKey
from tests.api.cli_support import FerryCli, doc_blocks, one_error_line
from tests.api.conftest import create_request
from tests.fleet.conftest import Fleet


@pytest.fixture(scope="module")
def worker(fleet: Fleet) -> Fleet:
    fleet.start_worker("cli-worker")
    return fleet


@pytest.fixture
def cli(fleet_api: str, fleet_key: IssuedKey, tmp_path: Path) -> FerryCli:
    return FerryCli(tmp_path, fleet_api, fleet_key)


def test_the_docs_fleet_snippet_runs_as_written(
    worker: Fleet, cli: FerryCli, unique: str, source_bootstrap: str, target_bootstrap: str
) -> None:
    name = f"{unique}-orders"
    cli.write_doc_files(name, source_bootstrap, target_bootstrap)
    (snippet,) = [text for label, text in doc_blocks("snippet") if label == "fleet"]

    ran = cli.sh(cli.from_doc(snippet, name, source_bootstrap, target_bootstrap))

    print(ran.stderr)
    assert ran.returncode == 0, ran.stderr + worker.log_tail()
    progress = ran.stderr.splitlines()
    assert any(line.startswith(f"{name}: RUNNING after") for line in progress), progress
    assert progress[-1].startswith(f"{name}: DELETED after"), progress  # delete --wait saw it gone
    gone = cli("describe", name)
    assert gone.returncode == 3 and "NotFoundException" in one_error_line(gone)


def test_waiting_for_running_ends_with_exit_8_when_the_replicator_failed(
    worker: Fleet, cli: FerryCli, unique: str, target_bootstrap: str
) -> None:
    with socket.socket() as closed:  # a port nothing listens on: the source is unreachable
        closed.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{closed.getsockname()[1]}"
    clusters: dict[str, Any] = {
        "source_id": "src",
        "target_id": "dst",
        "source_bootstrap": nowhere,
        "target_bootstrap": target_bootstrap,
    }
    (cli.workdir / "unreachable.yaml").write_text(json.dumps(create_request(unique, clusters)))
    assert cli("create", "-f", "unreachable.yaml").returncode == 0

    waited = cli("wait", unique, "--state", "RUNNING", "--timeout", "120")

    assert waited.returncode == 8, waited.stderr + worker.log_tail()
    error = waited.stderr.splitlines()[-1]
    assert error.startswith(f"ferry: ReplicatorFailed: {unique} is FAILED while waiting for RUNNING: ")
    assert "SOURCE_CLUSTER_UNREACHABLE" in error and nowhere in error
