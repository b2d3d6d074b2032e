provider "aws" {
  region     = var.region
  access_key = var.access_key
  secret_key = var.secret_key

  # Ferry answers the MSK Replicator API only: send the kafka service there and skip every call that would go to
  # AWS itself (STS to validate the keys and find the account, the EC2 metadata endpoint for credentials).
  endpoints {
    kafka = var.ferry_endpoint
  }
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
}

resource "aws_msk_replicator" "this" {
  replicator_name            = var.replicator_name
  description                = "orders and payments to the DR cluster"
  service_execution_role_arn = var.service_execution_role_arn

  kafka_cluster {
    apache_kafka_cluster {
      apache_kafka_cluster_id = var.source_cluster_id
      bootstrap_broker_string = var.source_bootstrap
    }

    # The provider sends encryptionInTransit {encryptionType: TLS} for every self-managed cluster, block or no
    # block: the listeners must speak TLS. This block only adds the CA.
    dynamic "encryption_in_transit" {
      for_each = var.root_ca_secret_arn == null ? [] : [var.root_ca_secret_arn]
      content {
        root_ca_certificate = encryption_in_transit.value
      }
    }
  }

  kafka_cluster {
    apache_kafka_cluster {
      apache_kafka_cluster_id = var.target_cluster_id
      bootstrap_broker_string = var.target_bootstrap
    }

    dynamic "encryption_in_transit" {
      for_each = var.root_ca_secret_arn == null ? [] : [var.root_ca_secret_arn]
      content {
        root_ca_certificate = encryption_in_transit.value
      }
    }
  }

  replication_info_list {
    source_kafka_cluster_id = var.source_cluster_id
    target_kafka_cluster_id = var.target_cluster_id
    target_compression_type = "LZ4"

    topic_replication {
      topics_to_replicate = var.topics_to_replicate
      topics_to_exclude   = var.topics_to_exclude

      starting_position {
        type = "EARLIEST"
      }

      topic_name_configuration {
        type = "PREFIXED_WITH_SOURCE_CLUSTER_ALIAS"
      }
    }

    consumer_group_replication {
      consumer_groups_to_replicate = var.consumer_groups_to_replicate
    }
  }

  tags = var.tags

  # Ferry moves a replicator to RUNNING in seconds; the provider's 30-minute defaults are for MSK.
  timeouts {
    create = "10m"
    update = "10m"
    delete = "10m"
  }
}
