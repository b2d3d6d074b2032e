variable "ferry_endpoint" {
  description = "Ferry's API, e.g. https://ferry.example.internal (the provider's kafka endpoint)"
  type        = string
}

variable "region" {
  description = "The region Ferry signs for (FERRY_AWS_REGION); ARNs carry it"
  type        = string
  default     = "us-east-1"
}

variable "access_key" {
  description = "A Ferry access key id (ferry admin create-access-key); null reads AWS_ACCESS_KEY_ID"
  type        = string
  default     = null
}

variable "secret_key" {
  description = "Its secret; null reads AWS_SECRET_ACCESS_KEY"
  type        = string
  default     = null
  sensitive   = true
}

variable "replicator_name" {
  type    = string
  default = "orders-to-dr"
}

variable "service_execution_role_arn" {
  description = "Stored and returned as MSK does; Ferry itself assumes no role"
  type        = string
  default     = "arn:aws:iam::000000000000:role/ferry-replicator"
}

variable "source_cluster_id" {
  type    = string
  default = "onprem-east"
}

variable "source_bootstrap" {
  description = "host:port[,host:port...] of the source cluster's TLS listener"
  type        = string
}

variable "target_cluster_id" {
  type    = string
  default = "onprem-west"
}

variable "target_bootstrap" {
  description = "host:port[,host:port...] of the target cluster's TLS listener"
  type        = string
}

variable "root_ca_secret_arn" {
  description = "Secrets Manager secret holding the clusters' CA (PEM); null when their certificates chain to a public CA"
  type        = string
  default     = null
}

variable "topics_to_replicate" {
  type    = list(string)
  default = ["orders.*", "payments"]
}

variable "topics_to_exclude" {
  type    = list(string)
  default = ["orders\\.internal.*"]
}

variable "consumer_groups_to_replicate" {
  type    = list(string)
  default = ["billing-.*"]
}

variable "tags" {
  type = map(string)
  default = {
    team = "payments"
    env  = "dr"
  }
}
