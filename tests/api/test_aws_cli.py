"""The AWS CLI, unchanged, drives Ferry with --endpoint-url: create, describe, list, delete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from models.access_keys import IssuedKey

AWS = str(Path(sys.executable).with_name("aws"))


def aws(api_url: str, key: IssuedKey, *args: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": key.access_key_id,
        "AWS_SECRET_ACCESS_KEY": key.secret_access_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_PAGER": "",
    }
    completed = subprocess.run(
        [AWS, "kafka", *args, "--endpoint-url", api_url, "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, Any] = json.loads(completed.stdout) if completed.stdout.strip() else {}
    return result


def test_aws_cli_create_describe_list_delete(
    api_url: str, test_key: IssuedKey, unique: str, clusters: dict[str, Any], tmp_path: Path
) -> None:
    request = {
        "ReplicatorName": unique,
        "ServiceExecutionRoleArn": "arn:aws:iam::000000000000:role/ferry",
        "KafkaClusters": [
            {
                "ApacheKafkaCluster": {
                    "ApacheKafkaClusterId": clusters["source_id"],
                    "BootstrapBrokerString": clusters["source_bootstrap"],
                }
            },
            {
                "ApacheKafkaCluster": {
                    "ApacheKafkaClusterId": clusters["target_id"],
                    "BootstrapBrokerString": clusters["target_bootstrap"],
                }
            },
        ],
        "ReplicationInfoList": [
            {
                "SourceKafkaClusterId": clusters["source_id"],
                "TargetKafkaClusterId": clusters["target_id"],
                "TargetCompressionType": "ZSTD",
                "TopicReplication": {"TopicsToReplicate": ["cli-.*"], "TopicNameConfiguration": {"Type": "IDENTICAL"}},
                "ConsumerGroupReplication": {"ConsumerGroupsToReplicate": [".*"]},
            }
        ],
    }
    input_file = tmp_path / "create.json"
    input_file.write_text(json.dumps(request))

    created = aws(api_url, test_key, "create-replicator", "--cli-input-json", f"file://{input_file}")
    arn = created["ReplicatorArn"]
    described = aws(api_url, test_key, "describe-replicator", "--replicator-arn", arn)
    listed = aws(api_url, test_key, "list-replicators", "--replicator-name-filter", unique)
    deleted = aws(
        api_url,
        test_key,
        "delete-replicator",
        "--replicator-arn",
        arn,
        "--current-version",
        described["CurrentVersion"],
    )

    assert created["ReplicatorState"] == "CREATING"
    assert described["ReplicatorName"] == unique
    assert described["ReplicationInfoList"][0]["TargetCompressionType"] == "ZSTD"
    assert described["ReplicationInfoList"][0]["TopicReplication"]["TopicNameConfiguration"] == {"Type": "IDENTICAL"}
    assert [r["ReplicatorArn"] for r in listed["Replicators"]] == [arn]
    assert deleted == {"ReplicatorArn": arn, "ReplicatorState": "DELETING"}
    assert aws(api_url, test_key, "describe-replicator", "--replicator-arn", arn)["ReplicatorState"] == "DELETING"
