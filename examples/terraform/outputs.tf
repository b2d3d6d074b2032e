output "replicator_arn" {
  value = aws_msk_replicator.this.arn
}

output "current_version" {
  value = aws_msk_replicator.this.current_version
}

output "source_kafka_cluster_alias" {
  description = "Replicated topics are named <alias>.<topic> on the target (PREFIXED_WITH_SOURCE_CLUSTER_ALIAS)"
  value       = aws_msk_replicator.this.replication_info_list[0].source_kafka_cluster_alias
}
