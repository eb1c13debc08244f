"""Settings -> Kafka clients, in one place: confluent-kafka (producers, sinks, admin, tools)
and faust/aiokafka (processors).

Frames are camera images of several megabytes, far above Kafka's 1 MB
defaults, so every hop has to agree on the limit: the broker (the local stack
raises it), each topic (``max.message.bytes``), producers and consumers. All
the numbers derive from ``KafkaConfig.message_max_bytes`` in
:func:`size_limits`, and security (SASL, TLS) from the same fields for both
client libraries, so the two cannot drift apart (tests/test_kafka_clients.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from lineguard.config import KafkaConfig

# A record batch carries framing (batch header, record header, key, headers) on top of
# the value. Producers refuse values above message_max_bytes; topics and fetches allow
# this much more, so a frame right at the limit is not rejected for its envelope.
FRAMING_HEADROOM_BYTES = 64 * 1024

# How often consumers refresh the cluster's metadata: a line's new partitions are assigned within
# this long, and processors look for new line topics as often (processors/lines.py).
METADATA_REFRESH_MS = 10_000

# librdkafka's own defaults; the raised limits never go below them.
_LIBRDKAFKA_FETCH_MAX_BYTES = 52_428_800
_LIBRDKAFKA_RECEIVE_MAX_BYTES = 100_000_000


@dataclass(frozen=True)
class SizeLimits:
    """The size limits of every hop, derived from one setting."""

    message_max_bytes: int        # producers refuse a larger record
    topic_max_message_bytes: int  # a topic's max.message.bytes: the record plus its batch framing
    partition_fetch_bytes: int    # per partition and fetch: one whole record batch of a topic
    fetch_max_bytes: int          # per fetch request
    receive_max_bytes: int        # librdkafka's response buffer; it wants fetch_max_bytes + 512 at least


def size_limits(kafka_cfg: KafkaConfig) -> SizeLimits:
    topic_max = kafka_cfg.message_max_bytes + FRAMING_HEADROOM_BYTES
    fetch_max = max(_LIBRDKAFKA_FETCH_MAX_BYTES, topic_max)
    return SizeLimits(
        message_max_bytes=kafka_cfg.message_max_bytes,
        topic_max_message_bytes=topic_max,
        partition_fetch_bytes=topic_max,
        fetch_max_bytes=fetch_max,
        receive_max_bytes=max(_LIBRDKAFKA_RECEIVE_MAX_BYTES, fetch_max + 1024 * 1024),
    )


def topic_max_message_bytes(kafka_cfg: KafkaConfig) -> int:
    """``max.message.bytes`` for lineguard topics: the configured limit plus batch framing."""
    return size_limits(kafka_cfg).topic_max_message_bytes


# ---- confluent-kafka -------------------------------------------------------------------

def client_config(kafka_cfg: KafkaConfig) -> dict[str, Any]:
    """librdkafka settings every confluent-kafka client shares: the address and the security."""
    conf: dict[str, Any] = {
        "bootstrap.servers": kafka_cfg.bootstrap_servers,
        "security.protocol": kafka_cfg.security_protocol,
    }
    if kafka_cfg.sasl_mechanism:
        conf["sasl.mechanism"] = kafka_cfg.sasl_mechanism
        conf["sasl.username"] = kafka_cfg.sasl_username or ""
        conf["sasl.password"] = kafka_cfg.password() or ""
    if kafka_cfg.ssl_cafile:
        conf["ssl.ca.location"] = str(kafka_cfg.ssl_cafile)
    if kafka_cfg.ssl_certfile:
        conf["ssl.certificate.location"] = str(kafka_cfg.ssl_certfile)
    if kafka_cfg.ssl_keyfile:
        conf["ssl.key.location"] = str(kafka_cfg.ssl_keyfile)
    return conf


def producer_config(kafka_cfg: KafkaConfig, **extra: Any) -> dict[str, Any]:
    """confluent-kafka Producer settings with the message size limit raised.

    ``extra`` is merged last and passed through as is, so dotted librdkafka keys
    go in as ``**{"linger.ms": 5}`` and Python callbacks as ``error_cb=fn``.
    """
    conf = client_config(kafka_cfg)
    conf["message.max.bytes"] = size_limits(kafka_cfg).message_max_bytes
    conf.update(extra)
    return conf


def consumer_config(kafka_cfg: KafkaConfig, group: str, **extra: Any) -> dict[str, Any]:
    """confluent-kafka Consumer settings for ``group`` with fetch limits raised to fit a whole frame.

    Starts from the earliest offset when the group has none, so nothing produced
    before the first start is skipped. ``extra`` is merged last, as in producer_config.
    """
    limits = size_limits(kafka_cfg)
    conf = client_config(kafka_cfg)
    conf.update(
        {
            "group.id": group,
            "auto.offset.reset": "earliest",
            "message.max.bytes": limits.message_max_bytes,
            "max.partition.fetch.bytes": limits.partition_fetch_bytes,
            "fetch.max.bytes": limits.fetch_max_bytes,
            "receive.message.max.bytes": limits.receive_max_bytes,
        }
    )
    conf.update(extra)
    return conf


def producer_client(kafka_cfg: KafkaConfig, **extra: Any) -> Producer:
    """A confluent-kafka Producer built from :func:`producer_config`."""
    return Producer(producer_config(kafka_cfg, **extra))


def consumer_client(kafka_cfg: KafkaConfig, group: str, **extra: Any) -> Consumer:
    """A confluent-kafka Consumer built from :func:`consumer_config`."""
    return Consumer(consumer_config(kafka_cfg, group, **extra))


def admin_client(kafka_cfg: KafkaConfig, **extra: Any) -> AdminClient:
    """A confluent-kafka AdminClient; ``extra`` as in producer_config (e.g. ``logger=...``)."""
    return AdminClient({**client_config(kafka_cfg), **extra})


# ---- faust / aiokafka ------------------------------------------------------------------

def ssl_context(kafka_cfg: KafkaConfig) -> Any:
    """An ``ssl.SSLContext`` for the asyncio clients (faust/aiokafka), or None without TLS.

    It trusts what ``ssl.ca.location`` trusts for librdkafka (the CA file, else the
    system's store) and presents the same client certificate.
    """
    if kafka_cfg.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    import ssl

    context = ssl.create_default_context(cafile=str(kafka_cfg.ssl_cafile) if kafka_cfg.ssl_cafile else None)
    if kafka_cfg.ssl_certfile:
        context.load_cert_chain(str(kafka_cfg.ssl_certfile),
                                str(kafka_cfg.ssl_keyfile) if kafka_cfg.ssl_keyfile else None)
    return context


def faust_broker_settings(kafka_cfg: KafkaConfig) -> dict[str, Any]:
    """faust App settings (passed on to aiokafka) with image-sized limits and the configured security."""
    import faust  # only the processors need it

    limits = size_limits(kafka_cfg)
    conf: dict[str, Any] = {
        "broker": [f"kafka://{h.strip()}" for h in kafka_cfg.bootstrap_servers.split(",")],
        "producer_max_request_size": limits.message_max_bytes,
        # aiokafka's max_partition_fetch_bytes: "at least as large as the maximum message size",
        # which for a topic is the record plus its framing, as for librdkafka.
        "consumer_max_fetch_size": limits.partition_fetch_bytes,
        "producer_acks": -1,
        "consumer_metadata_max_age_ms": METADATA_REFRESH_MS,  # aiokafka's default is 5 minutes
    }
    if kafka_cfg.security_protocol != "PLAINTEXT":
        context = ssl_context(kafka_cfg)  # CA file and client certificate, when TLS is on
        if kafka_cfg.sasl_mechanism:
            conf["broker_credentials"] = faust.SASLCredentials(
                username=kafka_cfg.sasl_username, password=kafka_cfg.password(),
                mechanism=kafka_cfg.sasl_mechanism, ssl_context=context,
            )
        elif context is not None:
            conf["broker_credentials"] = context
    return conf
