"""One Kafka package: configuration -> clients, admin, offsets and lag.

Import from ``lineguard.kafka``; the submodules are an implementation detail.
"""

from lineguard.kafka.admin import (
    topic_max_message_bytes,
    producer_config,
    consumer_config,
    admin_client,
    ensure_topics,
    topic_end_offsets,
    count_messages,
    group_lag,
    LagProbe,
    FRAMING_HEADROOM_BYTES,
)

__all__ = [
    "topic_max_message_bytes",
    "producer_config",
    "consumer_config",
    "admin_client",
    "ensure_topics",
    "topic_end_offsets",
    "count_messages",
    "group_lag",
    "LagProbe",
    "FRAMING_HEADROOM_BYTES",
]
