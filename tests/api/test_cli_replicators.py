"""``ferry replicators`` as a CI pipeline runs it: a real ``python -m cli`` process against the real API server,
signing with a key Ferry issued, the replicators on the stack's clusters. Also runs docs/cli.md's snippets marked
``environment``, ``profile`` and ``api`` as they are written (tests/fleet/test_fleet_cli.py runs ``fleet``)."""

from __future__ import annotations

import json
import os
import pty
import select
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from models.access_keys import IssuedKey
from tests.api.cli_support import DOC, FerryCli, doc_blocks, one_error_line
from tests.api.conftest import create_request
from tests.conftest import ROOT


@pytest.fixture
def cli(api_url: str, test_key: IssuedKey, tmp_path: Path) -> FerryCli:
    return FerryCli(tmp_path, api_url, test_key)


def created(cli: FerryCli, request: dict[str, Any]) -> str:
    path = cli.workdir / f"{request['ReplicatorName']}.yaml"
    path.write_text(yaml.safe_dump(request))
    result = cli("create", "-f", str(path))
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["ReplicatorArn"])


def describe(cli: FerryCli, name_or_arn: str, *options: str) -> dict[str, Any]:
    result = cli("describe", name_or_arn, *options)
    assert result.returncode == 0, result.stderr
    described: dict[str, Any] = json.loads(result.stdout)
    return described


def test_every_shell_snippet_of_the_doc_is_marked_and_run() -> None:
    text = DOC.read_text()
    labels = [label for label, _ in doc_blocks("snippet")]
    assert text.count("```sh") == len(labels), "a ```sh block of docs/cli.md has no <!-- snippet: ... --> marker"
    assert set(labels) == {"environment", "profile", "api", "fleet"}  # each run here or in tests/fleet
    assert {label for label, _ in doc_blocks("file")} == {"config", "credentials", "replicator.yaml", "update.yaml"}


def test_the_docs_snippets_run_as_written(
    cli: FerryCli, unique: str, source_bootstrap: str, target_bootstrap: str
) -> None:
    name = f"{unique}-orders"
    cli.write_doc_files(name, source_bootstrap, target_bootstrap)
    snippets: dict[str, list[str]] = {"environment": [], "profile": [], "api": []}
    for label, text in doc_blocks("snippet"):
        if label in snippets:
            snippets[label].append(text)

    def run(snippet: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return cli.sh(cli.from_doc(snippet, name, source_bootstrap, target_bootstrap), env)

    # Configuration: the snippet sets the endpoint and the key itself, in an environment that has neither.
    (environment,) = snippets["environment"]
    listed = run(environment, env=cli.bare_env)
    assert listed.returncode == 0, listed.stderr
    assert "Replicators" in json.loads(listed.stdout)

    lifecycle, create_unless_exists, wait_a_while = snippets["api"]
    ran = run(lifecycle)
    assert ran.returncode == 0, ran.stderr
    assert name in ran.stdout  # the table of list, the yaml of describe
    described = describe(cli, name)
    info = described["ReplicationInfoList"][0]
    # update.yaml named two members of TopicReplication: the others kept their values (EARLIEST too).
    assert info["TopicReplication"]["TopicsToReplicate"] == ["orders.*", "refunds"]
    assert info["TopicReplication"]["TopicsToExclude"] == ["orders.tmp.*"]
    assert info["TopicReplication"]["StartingPosition"] == {"Type": "EARLIEST"}
    assert info["ConsumerGroupReplication"]["ConsumerGroupsToReplicate"] == ["orders-.*"]
    assert described["Tags"] == {"team": "payments", "owner": "payments-team"}
    assert described["ReplicatorDescription"] == "orders to the DR cluster"

    exists = run(create_unless_exists)
    assert exists.returncode == 0 and exists.stdout.strip() == f"{name} exists", exists.stderr
    # The other branch: in a directory whose replicator.yaml names a replicator that does not exist yet.
    other = f"{unique}-other"
    (cli.workdir / "other").mkdir()
    cli.write_doc_files(other, source_bootstrap, target_bootstrap, cli.workdir / "other")
    missing = cli.sh("cd other\n" + cli.from_doc(create_unless_exists, other, source_bootstrap, target_bootstrap))
    assert missing.returncode == 0, missing.stderr
    assert json.loads(missing.stdout)["ReplicatorName"] == other
    assert describe(cli, other)["ReplicatorState"] == "CREATING"

    not_yet = run(wait_a_while)  # no fleet serves the API under test: it stays CREATING
    assert not_yet.returncode == 0, not_yet.stderr
    assert not_yet.stdout.strip() == f"{name} is not RUNNING yet"

    (profile,) = snippets["profile"]
    from_files = run(profile, env=cli.bare_env)
    assert from_files.returncode == 0, from_files.stderr
    assert name in from_files.stdout and "┃" in from_files.stdout  # --output table


def test_create_from_yaml_and_json_then_list_and_describe_in_each_output(
    cli: FerryCli, unique: str, clusters: dict[str, Any]
) -> None:
    from_yaml = created(cli, create_request(f"{unique}-yaml", clusters))
    (cli.workdir / "request.json").write_text(json.dumps(create_request(f"{unique}-json", clusters)))
    from_json = cli("create", "-f", "request.json")
    assert from_json.returncode == 0, from_json.stderr
    from_stdin = cli("create", "-f", "-", stdin=json.dumps(create_request(f"{unique}-stdin", clusters)))
    assert from_stdin.returncode == 0, from_stdin.stderr
    names = {f"{unique}-yaml", f"{unique}-json", f"{unique}-stdin"}

    as_json = cli("list", "--name-prefix", unique)
    as_yaml = cli("list", "--name-prefix", unique, "--output", "yaml")
    as_table = cli("list", "--name-prefix", unique, "-o", "table")
    for result in (as_json, as_yaml, as_table):
        assert result.returncode == 0 and not result.stderr, result.stderr
    assert {r["ReplicatorName"] for r in json.loads(as_json.stdout)["Replicators"]} == names
    assert yaml.safe_load(as_yaml.stdout) == json.loads(as_json.stdout)
    assert all(name in as_table.stdout for name in names) and from_yaml in as_table.stdout  # ARNs unwrapped

    by_name = describe(cli, f"{unique}-yaml")
    assert by_name == describe(cli, from_yaml)
    assert by_name["ReplicatorArn"] == from_yaml and by_name["ReplicatorState"] == "CREATING"
    assert yaml.safe_load(cli("describe", from_yaml, "-o", "yaml").stdout) == by_name
    table = cli("describe", from_yaml, "-o", "table").stdout
    assert "ReplicationInfoList[0].TopicReplication.TopicsToReplicate" in table and "orders.*, payments" in table


def test_names_are_looked_up_over_every_page(cli: FerryCli, unique: str, clusters: dict[str, Any]) -> None:
    # Names that start alike (the API filters by prefix), the one looked up created last: with one replicator a
    # page, its name is on the fourth page; and the shortest name must not be taken for the others.
    arns = [
        created(cli, create_request(name, clusters)) for name in (unique, f"{unique}-1", f"{unique}-2", f"{unique}-3")
    ]
    assert describe(cli, f"{unique}-3", "--page-size", "1")["ReplicatorArn"] == arns[3]
    assert describe(cli, unique, "--page-size", "1")["ReplicatorArn"] == arns[0]
    listed = cli("list", "--name-prefix", unique, "--page-size", "1")
    assert [r["ReplicatorArn"] for r in json.loads(listed.stdout)["Replicators"]] == arns
    absent = cli("describe", f"{unique}-4", "--page-size", "1")
    assert absent.returncode == 3
    assert one_error_line(absent) == f"ferry: NotFoundException: no replicator is named '{unique}-4'"


def test_update_tags_metrics_and_offset_translation(cli: FerryCli, unique: str, clusters: dict[str, Any]) -> None:
    request = create_request(unique, clusters)
    request["ReplicationInfoList"][0]["TopicReplication"].update(
        {"CopyTopicConfigurations": False, "TopicsToExclude": ["payments.tmp"]}
    )
    arn = created(cli, request)
    version = describe(cli, arn)["CurrentVersion"]

    (cli.workdir / "update.json").write_text(json.dumps({"TopicReplication": {"TopicsToReplicate": ["refunds"]}}))
    updated = cli("update", unique, "-f", "update.json")
    assert updated.returncode == 0, updated.stderr
    assert json.loads(updated.stdout)["ReplicatorArn"] == arn
    described = describe(cli, arn)
    topics = described["ReplicationInfoList"][0]["TopicReplication"]
    assert topics["TopicsToReplicate"] == ["refunds"]
    assert topics["TopicsToExclude"] == ["payments.tmp"] and topics["CopyTopicConfigurations"] is False
    assert described["CurrentVersion"] != version
    # A CurrentVersion in the file is sent as it is: a stale one is refused by the API.
    stale = cli(
        "update", arn, "-f", "-", stdin=f"CurrentVersion: {version}\nTopicReplication: {{TopicsToReplicate: [x]}}"
    )
    assert stale.returncode == 4 and "currentVersion" in one_error_line(stale)

    tagged = cli("tag", unique, "env=ci", "note=a=b")
    assert tagged.returncode == 0, tagged.stderr
    assert json.loads(tagged.stdout) == {"Tags": {"team": "platform", "env": "ci", "note": "a=b"}}
    untagged = cli("untag", arn, "team", "note", "-o", "yaml")
    assert untagged.returncode == 0 and yaml.safe_load(untagged.stdout) == {"Tags": {"env": "ci"}}
    assert json.loads(cli("tags", unique).stdout) == {"Tags": {"env": "ci"}}
    assert cli("tag", unique, "no-equals-sign").returncode == 2

    metrics = cli("metrics", unique)
    assert metrics.returncode == 0, metrics.stderr
    reading = json.loads(metrics.stdout)
    assert reading["replicatorArn"] == arn and reading["replicatorState"] == "CREATING"
    assert reading["totals"]["partitions"] == 0 and reading["partitions"] == []
    assert "partitions" in cli("metrics", arn, "-o", "table").stdout

    nothing_copied = cli("translate-offsets", unique, "--topic", "orders.eu", "--partition", "0", "--offset", "5")
    assert nothing_copied.returncode == 3
    assert "nothing of orders.eu:0 has been copied" in one_error_line(nothing_copied)

    failover = cli("failover", unique, "--group", "orders-app", "--no-wait")
    assert failover.returncode == 0, failover.stderr
    assert json.loads(failover.stdout)["state"] == "PENDING"
    audit = cli("audit", unique, "--topic", "refunds", "--no-wait", "-o", "yaml")
    assert audit.returncode == 0 and yaml.safe_load(audit.stdout)["targetTopic"].endswith(".refunds")


def test_each_failure_has_its_exit_code_and_one_line(
    cli: FerryCli, unique: str, clusters: dict[str, Any], test_key: IssuedKey
) -> None:
    arn = created(cli, create_request(unique, clusters))
    missing_arn = arn.rsplit("/", 1)[0] + "/00000000-0000-4000-8000-000000000000"
    invalid = create_request(f"{unique}-bad", clusters)
    invalid["ReplicationInfoList"][0]["TopicReplication"]["TopicsToReplicate"] = ["orders(?=x)"]  # not RE2
    wrong_secret = {**cli.env, "AWS_SECRET_ACCESS_KEY": test_key.secret_access_key[::-1]}
    no_credentials = {k: v for k, v in cli.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    same_name = json.dumps(create_request(unique, clusters))
    no_endpoint = {k: v for k, v in cli.env.items() if k != "FERRY_ENDPOINT_URL"}
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
    # (exit code, what stderr's one line starts with or contains, the command): independent, so run at once.
    cases: list[tuple[int, str, tuple[str, ...], dict[str, Any]]] = [
        (3, "ferry: NotFoundException:", ("describe", missing_arn), {}),
        (3, f"ferry: NotFoundException: no replicator is named '{unique}-absent'", ("delete", f"{unique}-absent"), {}),
        (4, "ferry: BadRequestException:", ("create", "-f", "-"), {"stdin": json.dumps(invalid)}),
        (4, "ferry: ParamValidationError:", ("create", "-f", "-"), {"stdin": "ReplicatorName: x\n"}),
        (4, "replicatorName -> ReplicatorName", ("create", "-f", "-"), {"stdin": '{"replicatorName": "x"}'}),
        (4, "not valid YAML", ("create", "-f", "-"), {"stdin": "a: ["}),
        (5, "ferry: ConflictException:", ("create", "-f", "-"), {"stdin": same_name}),
        (6, "ferry: UnauthorizedException:", ("list",), {"env": wrong_secret}),
        (6, "ferry: NoCredentialsError:", ("describe", unique), {"env": no_credentials}),
        (2, "--endpoint-url", ("list",), {"env": no_endpoint}),
        (2, "ferry: --page-size must be between 1 and 100, not 0", ("list", "--page-size", "0"), {}),
        (9, "ferry: EndpointConnectionError", ("list", "--endpoint-url", f"http://127.0.0.1:{closed_port}"), {}),
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        timed_out = pool.submit(cli, "wait", unique, "--timeout", "1")
        results = list(pool.map(lambda case: cli(*case[2], **case[3]), cases))
    for (code, expected, args, _), result in zip(cases, results, strict=True):
        assert result.returncode == code, (args, result.returncode, result.stderr)
        assert not result.stdout, args
        line = one_error_line(result)
        assert line.startswith(expected) or expected in line, (args, line)

    # Waiting: progress lines, then the error's one line.
    assert timed_out.result().returncode == 7
    assert timed_out.result().stderr.splitlines()[-1] == f"ferry: Timeout: {unique} still CREATING after 1s"
    assert cli("list", "--output", "xml").returncode == 2  # argparse's usage error


def _stderr_on_a_terminal(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run with standard error on a pseudo-terminal (as a person at a terminal sees it); its exit code and output."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(argv, cwd=cwd, env={**env, "TERM": "xterm"}, stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    out = bytearray()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # the child closed it: EIO on Linux
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=30), out.decode(errors="replace")
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()


def test_wait_shows_a_live_line_on_a_terminal_and_plain_lines_otherwise(
    cli: FerryCli, unique: str, clusters: dict[str, Any]
) -> None:
    created(cli, create_request(unique, clusters))
    argv = [sys.executable, "-m", "cli", "replicators", "wait", unique, "--timeout", "3"]
    code, shown = _stderr_on_a_terminal(argv, cli.env, cli.workdir)
    assert code == 7
    assert "\x1b[" in shown and f"{unique}: CREATING after 2s" in shown  # redrawn as the seconds pass
    assert f"ferry: Timeout: {unique} still CREATING after 3s" in shown

    plain = subprocess.run(argv, cwd=cli.workdir, env=cli.env, capture_output=True, text=True, check=False, timeout=60)
    assert plain.returncode == 7 and "\x1b" not in plain.stderr
    assert plain.stderr.splitlines() == [
        f"{unique}: CREATING after 0s",  # one line per change: the state never changed
        f"ferry: Timeout: {unique} still CREATING after 3s",
    ]


def test_the_command_is_the_one_ferry_entry_point() -> None:
    helped = subprocess.run(
        [sys.executable, "-m", "cli", "replicator", "--help"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert helped.returncode == 0 and "translate-offsets" in helped.stdout and "3 not found" in helped.stdout
