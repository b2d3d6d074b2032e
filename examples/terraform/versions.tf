terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 6.64.0 (2026-09-09) added self-managed clusters to aws_msk_replicator: `kafka_cluster.apache_kafka_cluster`,
      # `encryption_in_transit`, `client_authentication` and `source/target_kafka_cluster_id` (PR #49265).
      version = ">= 6.64.0"
    }
  }
}
