"""Request examples of the OpenAPI document (``Body(openapi_examples=...)``): each a request the API accepts, in
wire names, as the interactive docs offer them and as the fuzzer sends them first. tests/api/test_openapi.py checks
each against its operation's request shape."""

from __future__ import annotations

from typing import Any

from fastapi.openapi.models import Example

ACCOUNT = "111122223333"
REPLICATOR_ARN = f"arn:aws:kafka:us-east-1:{ACCOUNT}:replicator/orders-dr/0b7e3a52-6f1c-4c36-9e2f-2d0f8c1a9b41"
SCRAM_SECRET_ARN = f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:AmazonMSK_orders-source-scram-Ab12Cd"
CA_SECRET_ARN = f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:orders-source-ca-Ef34Gh"


def _example(summary: str, description: str, value: dict[str, Any]) -> Example:
    return Example(summary=summary, description=description, value=value)


CREATE_REPLICATOR: dict[str, Example] = {
    "apacheKafka": _example(
        "Two self-managed clusters",
        "Every topic starting with orders, from the beginning, and the offsets of every consumer group; the "
        "target topics are named <source alias>.<topic>.",
        {
            "replicatorName": "orders-dr",
            "description": "Orders to the disaster recovery site",
            "serviceExecutionRoleArn": f"arn:aws:iam::{ACCOUNT}:role/ferry-replicator",
            "kafkaClusters": [
                {
                    "apacheKafkaCluster": {
                        "apacheKafkaClusterId": "primary",
                        "bootstrapBrokerString": "kafka-1.primary.example.com:9092,kafka-2.primary.example.com:9092",
                    }
                },
                {
                    "apacheKafkaCluster": {
                        "apacheKafkaClusterId": "standby",
                        "bootstrapBrokerString": "kafka-1.standby.example.com:9092",
                    }
                },
            ],
            "replicationInfoList": [
                {
                    "sourceKafkaClusterId": "primary",
                    "targetKafkaClusterId": "standby",
                    "targetCompressionType": "LZ4",
                    "topicReplication": {
                        "topicsToReplicate": ["orders.*"],
                        "topicsToExclude": [".*\\.internal"],
                        "startingPosition": {"type": "EARLIEST"},
                        "copyTopicConfigurations": True,
                        "copyAccessControlListsForTopics": True,
                        "detectAndCopyNewTopics": True,
                    },
                    "consumerGroupReplication": {
                        "consumerGroupsToReplicate": [".*"],
                        "synchroniseConsumerGroupOffsets": True,
                        "detectAndCopyNewConsumerGroups": True,
                    },
                }
            ],
            "tags": {"team": "payments"},
        },
    ),
    "scramAndIdentical": _example(
        "SASL/SCRAM over TLS, identical topic names",
        "The source is reached with SASL/SCRAM over TLS (the credentials and CA certificate read from Secrets "
        "Manager by the workers); target topics keep their names, and consumer group offsets are synchronised in "
        "ENHANCED mode (a replicator in the other direction makes failback possible).",
        {
            "replicatorName": "orders-active-active",
            "serviceExecutionRoleArn": f"arn:aws:iam::{ACCOUNT}:role/ferry-replicator",
            "kafkaClusters": [
                {
                    "apacheKafkaCluster": {
                        "apacheKafkaClusterId": "primary",
                        "bootstrapBrokerString": "kafka-1.primary.example.com:9096",
                    },
                    "clientAuthentication": {"saslScram": {"mechanism": "SHA512", "secretArn": SCRAM_SECRET_ARN}},
                    "encryptionInTransit": {"encryptionType": "TLS", "rootCaCertificate": CA_SECRET_ARN},
                },
                {
                    "apacheKafkaCluster": {
                        "apacheKafkaClusterId": "standby",
                        "bootstrapBrokerString": "kafka-1.standby.example.com:9092",
                    }
                },
            ],
            "replicationInfoList": [
                {
                    "sourceKafkaClusterId": "primary",
                    "targetKafkaClusterId": "standby",
                    "targetCompressionType": "ZSTD",
                    "topicReplication": {
                        "topicsToReplicate": ["orders", "payments"],
                        "topicNameConfiguration": {"type": "IDENTICAL"},
                        "startingPosition": {"type": "LATEST"},
                    },
                    "consumerGroupReplication": {
                        "consumerGroupsToReplicate": ["orders-.*"],
                        "consumerGroupOffsetSyncMode": "ENHANCED",
                    },
                }
            ],
        },
    ),
}

UPDATE_REPLICATION_INFO: dict[str, Example] = {
    "topics": _example(
        "Change the topics",
        "Replicate the payments topics too and stop copying ACLs. Every member of topicReplication is required; "
        "currentVersion is DescribeReplicator's.",
        {
            "currentVersion": "K3TWHJMK5PQZ",
            "sourceKafkaClusterId": "primary",
            "targetKafkaClusterId": "standby",
            "topicReplication": {
                "topicsToReplicate": ["orders.*", "payments.*"],
                "topicsToExclude": [".*\\.internal"],
                "copyTopicConfigurations": True,
                "copyAccessControlListsForTopics": False,
                "detectAndCopyNewTopics": True,
            },
        },
    ),
    "consumerGroups": _example(
        "Change the consumer groups",
        "Synchronise only the orders applications' groups.",
        {
            "currentVersion": "K3TWHJMK5PQZ",
            "sourceKafkaClusterId": "primary",
            "targetKafkaClusterId": "standby",
            "consumerGroupReplication": {
                "consumerGroupsToReplicate": ["orders-.*"],
                "consumerGroupsToExclude": ["orders-test-.*"],
                "detectAndCopyNewConsumerGroups": True,
                "synchroniseConsumerGroupOffsets": True,
            },
        },
    ),
}

TAG_RESOURCE: dict[str, Example] = {
    "tags": _example("Add two tags", "Existing keys are overwritten.", {"tags": {"team": "payments", "env": "prod"}}),
}

START_FAILOVER: dict[str, Example] = {
    "twoGroups": _example(
        "Move two consumer groups",
        "Producers and the groups' consumers stopped on the source; wait 10 s of quiet, give up after 10 minutes.",
        {"consumerGroups": ["orders-app", "billing"], "gracePeriodSeconds": 10, "timeoutSeconds": 600},
    ),
}

START_AUDIT: dict[str, Example] = {
    "topic": _example(
        "A whole topic", "Every partition, from the log start to the end when it starts.", {"topic": "orders"}
    ),
    "range": _example(
        "A range of one partition",
        "Source offsets 1,000,000 (included) to 2,000,000 (excluded) of partition 3.",
        {"topic": "orders", "partition": 3, "fromOffset": 1000000, "toOffset": 2000000},
    ),
}
