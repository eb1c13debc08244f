"""The two Kafka client libraries are configured from one Settings and must agree.

Producers, sinks and tools use confluent-kafka (librdkafka); the processors use
faust, which hands its settings to aiokafka. lineguard.kafka.clients translates
the settings for both. These tests read each side the way the library itself
does (librdkafka's dotted keys; faust's settings and its own
``credentials_to_aiokafka_auth``, as its aiokafka driver calls it) and compare:
security (protocol, SASL mechanism and credentials, the CA trusted) and size
limits. A change to one translation that the other does not follow fails here.
No broker is needed.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiokafka
import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from lineguard.config import KafkaConfig, load_settings
from lineguard.kafka import (consumer_client, consumer_config, faust_broker_settings, producer_client,
                             producer_config, topic_max_message_bytes)

MiB = 1024 * 1024
UNREACHABLE = "127.0.0.1:1"  # clients are built, never connected


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a CA certificate")
    folder = tmp_path_factory.mktemp("ca")
    cert, key = folder / "ca.pem", folder / "ca.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=lineguard-ca",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert


def _security_cases(ca_file: Path, password_file: Path) -> dict[str, dict[str, Any]]:
    return {
        "plaintext": {},
        "sasl-scram-256": {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
                           "sasl_username": "proc", "sasl_password": "inline-secret"},
        "sasl-scram-512-password-file": {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                                         "sasl_username": "proc", "sasl_password_file": password_file},
        "ssl-ca-file": {"security_protocol": "SSL", "ssl_cafile": ca_file},
        "sasl-ssl-ca-file": {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                             "sasl_username": "proc", "sasl_password": "inline-secret", "ssl_cafile": ca_file},
    }


def _trusted(cafile: str) -> set[bytes]:
    """The CA certificates (DER) in a PEM file, as an SSL context loads them."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=cafile)
    return {bytes(c) for c in context.get_ca_certs(binary_form=True)}


def _confluent_security(conf: dict[str, Any]) -> dict[str, Any]:
    protocol = conf["security.protocol"]
    tls = protocol in ("SSL", "SASL_SSL")
    if tls:  # verification left at librdkafka's defaults (on), never turned off
        assert conf.get("enable.ssl.certificate.verification", True) not in (False, "false")
        assert conf.get("ssl.endpoint.identification.algorithm", "https") == "https"
    return {
        "protocol": protocol,
        "mechanism": conf.get("sasl.mechanism"),
        "username": conf.get("sasl.username"),
        "password": conf.get("sasl.password"),
        "trusts": _trusted(conf["ssl.ca.location"]) if tls else None,
    }


def _faust_app(kafka: KafkaConfig) -> faust.App:
    return faust.App("test-kafka-clients", **faust_broker_settings(kafka))


def _aiokafka_security(app: faust.App) -> dict[str, Any]:
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    context = auth.get("ssl_context")
    if context is not None:
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    return {
        "protocol": auth["security_protocol"],
        "mechanism": auth.get("sasl_mechanism"),
        "username": auth.get("sasl_plain_username"),
        "password": auth.get("sasl_plain_password"),
        "trusts": {bytes(c) for c in context.get_ca_certs(binary_form=True)} if context is not None else None,
    }


@pytest.mark.parametrize("case", ["plaintext", "sasl-scram-256", "sasl-scram-512-password-file", "ssl-ca-file",
                                  "sasl-ssl-ca-file"])
def test_both_libraries_get_the_same_security(case: str, ca_file: Path, tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("file-secret\n")
    kafka = KafkaConfig(bootstrap_servers=UNREACHABLE, **_security_cases(ca_file, password_file)[case])

    for_confluent = _confluent_security(consumer_config(kafka, "g"))
    assert _confluent_security(producer_config(kafka)) == for_confluent
    for_aiokafka = _aiokafka_security(_faust_app(kafka))
    assert for_aiokafka == for_confluent

    # And the settings are what was configured, not merely equal on both sides.
    assert for_confluent["protocol"] == kafka.security_protocol
    assert for_confluent["mechanism"] == kafka.sasl_mechanism
    if kafka.sasl_mechanism:
        assert for_confluent["username"] == "proc"
        assert for_confluent["password"] == ("file-secret" if kafka.sasl_password_file else "inline-secret")
    if kafka.ssl_cafile:
        assert for_confluent["trusts"] == _trusted(str(ca_file)) and len(for_confluent["trusts"]) == 1


@pytest.mark.parametrize("message_max_mib", [1, 16, 100, 256])
def test_both_libraries_get_the_same_size_limits(message_max_mib: int) -> None:
    kafka = KafkaConfig(bootstrap_servers=UNREACHABLE, message_max_bytes=message_max_mib * MiB)
    producer, consumer = producer_config(kafka), consumer_config(kafka, "g")
    conf = _faust_app(kafka).conf

    # The largest record a producer sends: librdkafka's message.max.bytes, aiokafka's max_request_size.
    assert producer["message.max.bytes"] == conf.producer_max_request_size == kafka.message_max_bytes
    # What a consumer takes from one partition per fetch: a whole record batch as big as the topic allows.
    assert consumer["max.partition.fetch.bytes"] == conf.consumer_max_fetch_size
    assert conf.consumer_max_fetch_size >= topic_max_message_bytes(kafka) > kafka.message_max_bytes
    # Per fetch request: faust has no setting for aiokafka's fetch_max_bytes, so librdkafka's is raised
    # from the same floor (the default of both) and only as far as one partition's fetch needs.
    aiokafka_fetch_max = inspect.signature(aiokafka.AIOKafkaConsumer).parameters["fetch_max_bytes"].default
    assert consumer["fetch.max.bytes"] == max(aiokafka_fetch_max, conf.consumer_max_fetch_size)


@pytest.mark.parametrize("message_max_mib", [1, 256])
def test_librdkafka_accepts_the_client_settings(message_max_mib: int, ca_file: Path) -> None:
    """librdkafka checks its settings when a client is built (e.g. receive.message.max.bytes must
    exceed fetch.max.bytes by 512, and the CA file must load); build each kind, never connecting."""
    quiet = logging.getLogger("test.kafka_clients.librdkafka")
    quiet.setLevel(logging.CRITICAL)
    kafka = KafkaConfig(bootstrap_servers=UNREACHABLE, message_max_bytes=message_max_mib * MiB,
                        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_username="proc",
                        sasl_password="inline-secret", ssl_cafile=ca_file)
    consumer = consumer_client(kafka, "g", logger=quiet)
    consumer.close()
    producer = producer_client(kafka, logger=quiet)
    assert producer.flush(0) == 0


def test_settings_from_the_environment_reach_both_sides(ca_file: Path, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    """The path a deployment takes: LINEGUARD_KAFKA__* variables -> Settings -> both client libraries."""
    for name in list(os.environ):
        if name.startswith("LINEGUARD_"):
            monkeypatch.delenv(name)
    for name, value in {"SECURITY_PROTOCOL": "SASL_SSL", "SASL_MECHANISM": "SCRAM-SHA-256",
                        "SASL_USERNAME": "proc", "SASL_PASSWORD": "env-secret", "SSL_CAFILE": str(ca_file),
                        "MESSAGE_MAX_BYTES": str(32 * MiB)}.items():
        monkeypatch.setenv(f"LINEGUARD_KAFKA__{name}", value)
    monkeypatch.setenv("LINEGUARD_STATE_DIR", str(tmp_path / "state"))
    kafka = load_settings().kafka
    app = _faust_app(kafka)
    assert _aiokafka_security(app) == _confluent_security(consumer_config(kafka, "g"))
    assert _aiokafka_security(app)["password"] == "env-secret"
    assert app.conf.producer_max_request_size == producer_config(kafka)["message.max.bytes"] == 32 * MiB
