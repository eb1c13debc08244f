"""One Kafka package: settings -> clients (confluent-kafka and faust/aiokafka), topics,
offsets and lag, and reading a topic through to its end.

Import from ``lineguard.kafka``; the submodules are an implementation detail.
"""

from lineguard.kafka.admin import coordinator_not_ready, ensure_compacted_topic, ensure_topics
from lineguard.kafka.clients import (
    FRAMING_HEADROOM_BYTES,
    SizeLimits,
    admin_client,
    client_config,
    consumer_client,
    consumer_config,
    faust_broker_settings,
    producer_client,
    producer_config,
    size_limits,
    ssl_context,
    topic_max_message_bytes,
)
from lineguard.kafka.keys import cameras_for_partitions, partition_of_key
from lineguard.kafka.offsets import (
    LagProbe,
    LagTracker,
    committed_offsets,
    count_messages,
    group_lag,
    topic_end_offsets,
    watermarks,
)
from lineguard.kafka.read import Record, iter_range, offsets_at, read_topic

__all__ = [
    "FRAMING_HEADROOM_BYTES",
    "LagProbe",
    "LagTracker",
    "Record",
    "SizeLimits",
    "admin_client",
    "cameras_for_partitions",
    "client_config",
    "committed_offsets",
    "consumer_client",
    "consumer_config",
    "coordinator_not_ready",
    "count_messages",
    "ensure_compacted_topic",
    "ensure_topics",
    "faust_broker_settings",
    "group_lag",
    "iter_range",
    "offsets_at",
    "partition_of_key",
    "producer_client",
    "producer_config",
    "read_topic",
    "size_limits",
    "ssl_context",
    "topic_end_offsets",
    "topic_max_message_bytes",
    "watermarks",
]
