"""Security on a real broker with a SASL listener and the StandardAuthorizer.

A second local stack (``LocalStack(sasl=True, authorizer=True)``) adds a
SASL_PLAINTEXT listener with SCRAM-SHA-256 users and turns ACLs on. The whole
pipeline (producers, the faust processor, both sinks, and the topic admin they
run at start) talks to it only through the SASL listener, with the password
read from a file; every secret (Kafka password, S3 secret key, ClickHouse
password) is then searched for in every log the run wrote. An MES client
granted READ on one line's verdict topic can read that line and nothing else.

Set LINEGUARD_TEST_SASL_STACK_DIR to reuse a SASL stack between runs (it is
then left running), as LINEGUARD_TEST_STACK_DIR does for the plain stack.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

from lineguard.config import KafkaConfig
from lineguard.deploy.stack import LocalStack
from lineguard.kafka import admin_client, client_config, consumer_client, consumer_config, producer_client, producer_config
from lineguard.schemas import Verdict, topics

sys.path.insert(0, str(Path(__file__).parent))
from fault_helpers import ChdbHttpServer, FaultPipeline, log_text  # noqa: E402
from pipeline_helpers import wait_for  # noqa: E402

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.slow]
PIPELINE_USER = "lineguard"
CACHE_DIR = Path(os.environ.get("LINEGUARD_STACK__CACHE_DIR") or Path(__file__).resolve().parents[1] / ".cache")


class SaslStack:
    """What the tests need from the SASL stack (the shape FaultPipeline expects of a stack)."""

    def __init__(self, local: LocalStack, password: str) -> None:
        import json

        info = json.loads(local.stack_json.read_text())
        self.local = local
        self.plain_bootstrap = info["kafka_bootstrap"]
        self.kafka_bootstrap = info["kafka_sasl_bootstrap"]
        self.s3_endpoint = info["s3_endpoint"]
        self.s3_access_key = info["s3_access_key"]
        self.s3_secret_key = info["s3_secret_key"]
        self.password = password

    def sasl(self, user: str, password: str) -> KafkaConfig:
        return KafkaConfig(bootstrap_servers=self.kafka_bootstrap, security_protocol="SASL_PLAINTEXT",
                           sasl_mechanism="SCRAM-SHA-256", sasl_username=user, sasl_password=password)

    def add_user(self, name: str) -> str:
        password = secrets.token_urlsafe(18)
        self.local.add_scram_user(name, password)
        return password


@pytest.fixture(scope="module")
def sasl_stack() -> Iterator[SaslStack]:
    reuse = os.environ.get("LINEGUARD_TEST_SASL_STACK_DIR")
    state_dir = Path(reuse) if reuse else Path(tempfile.mkdtemp(prefix="lineguard-test-sasl-"))
    local = LocalStack(state_dir, CACHE_DIR, sasl=True, authorizer=True, super_users=(PIPELINE_USER,))
    try:
        local.up()
        stack = SaslStack(local, password="")
        stack.password = stack.add_user(PIPELINE_USER)
        yield stack
    finally:
        if not reuse:
            local.down(purge=True)
            shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lineguard.engines.training import train
    from lineguard.producers.synthetic import SyntheticCamera

    root = tmp_path_factory.mktemp("sasl-models")
    SyntheticCamera(product="washer", size=128, seed=1).write_mvtec(root / "data", n_train=30, n_test_good=2,
                                                                    n_test_defect=2)
    train("baseline", root / "data", root / "models" / "washer", name="washer", version="sasl")
    return root / "models"


def _wrong_password_is_refused(stack: SaslStack) -> str:
    admin = admin_client(stack.sasl(PIPELINE_USER, "not-the-password"), logger=_quiet())
    try:
        admin.list_topics(timeout=4)
    except Exception as exc:  # noqa: BLE001 - the refusal is what we want to see
        return str(exc)
    raise AssertionError("a wrong SASL password was accepted")


def _quiet():  # noqa: ANN202
    import logging

    logger = logging.getLogger("test.security.librdkafka")
    logger.setLevel(logging.CRITICAL)
    return logger


@pytest.mark.timeout(300)
def test_pipeline_over_sasl_scram_and_no_secret_in_any_log(sasl_stack: SaslStack, models: Path,
                                                           tmp_path: Path) -> None:
    stack = sasl_stack
    password_file = tmp_path / "kafka-password"
    password_file.write_text(stack.password + "\n")
    password_file.chmod(0o600)
    clickhouse_password = "ch-" + secrets.token_urlsafe(16)
    server = ChdbHttpServer(tmp_path / "clickhouse", tmp_path / "chdb-http.log")
    server.start()
    database = f"lg_{uuid.uuid4().hex[:8]}"
    bucket = f"heatmaps-{uuid.uuid4().hex[:6]}"
    env = {
        "LINEGUARD_LOG_LEVEL": "DEBUG",  # the most talkative level: secrets must not show even there
        "LINEGUARD_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "LINEGUARD_KAFKA__SASL_MECHANISM": "SCRAM-SHA-256",
        "LINEGUARD_KAFKA__SASL_USERNAME": PIPELINE_USER,
        "LINEGUARD_KAFKA__SASL_PASSWORD_FILE": str(password_file),
        "LINEGUARD_PROCESSOR__HEATMAPS": "defective",
        "LINEGUARD_SINKS__CLICKHOUSE__BACKEND": "server",
        "LINEGUARD_SINKS__CLICKHOUSE__URL": server.url,
        "LINEGUARD_SINKS__CLICKHOUSE__DATABASE": database,
        "LINEGUARD_SINKS__CLICKHOUSE__USERNAME": "lineguard_writer",
        "LINEGUARD_SINKS__CLICKHOUSE__PASSWORD": clickhouse_password,
        "LINEGUARD_SINKS__OBJECT_STORE__BACKEND": "s3",
        "LINEGUARD_SINKS__OBJECT_STORE__ENDPOINT": stack.s3_endpoint,
        "LINEGUARD_SINKS__OBJECT_STORE__ACCESS_KEY": stack.s3_access_key,
        "LINEGUARD_SINKS__OBJECT_STORE__SECRET_KEY": stack.s3_secret_key,
        "LINEGUARD_SINKS__OBJECT_STORE__BUCKET": bucket,
    }
    # The pipeline's own admin (topic creation) goes through SASL as well.
    per_line = 40
    p = FaultPipeline(_StackView(stack), tmp_path, models, "sasl", kafka=stack.sasl(PIPELINE_USER, stack.password),
                      **env)
    try:
        p.processor()
        sinks = [p.sink("clickhouse"), p.sink("heatmaps")]
        producers = p.producers(count=per_line, fps=20)
        sent = p.wait_producers(producers)
        p.wait_all_scored(sent, 180)
        for kind, names in (("clickhouse", p.verdict_topics()), ("heatmaps", p.heatmap_topics())):
            p.wait_sink_caught_up(p.sink_group(kind), names, 90)
        assert all(s.alive() for s in sinks), p.logs()
        refusal = _wrong_password_is_refused(stack)
        p.stop_all()
        from lineguard.stores import ServerStore

        store = ServerStore(server.url, database=database)
        try:
            tally = p.tally("none", sent, store=store)
        finally:
            store.close()
    finally:
        p.stop_all()
        server.stop()
    print(tally.line().replace("fault=none", "security=sasl_scram_sha_256") + " wrong_password=refused")
    assert tally.in_topics == sent == 2 * per_line and tally.lost == 0 and tally.deadletter == 0
    assert tally.verdict_frames == sent and tally.rows == sent and tally.duplicate_rows == 0
    assert "Authentication failed" in refusal or "SASL" in refusal or "_TRANSPORT" in refusal, refusal

    logs = {getattr(c, "name", "?"): log_text(c) for c in p.components}
    # Real runs' logs, not empty files: each component wrote its own lines.
    assert all("produce: line=" in text for name, text in logs.items() if name.startswith("produce"))
    assert "sink: kind=clickhouse written=" in logs["sink-clickhouse"]
    assert "sink: kind=heatmaps written=" in logs["sink-heatmaps"]
    assert "loaded model washer" in logs["processor"]
    for service in ("kafka", "s3"):  # and the servers' own logs
        logs[f"stack {service}"] = stack.local.log_path(service).read_text(errors="replace")
    logs["chdb-http"] = (tmp_path / "chdb-http.log").read_text()
    secrets_used = {"kafka password": stack.password, "S3 secret key": stack.s3_secret_key,
                    "ClickHouse password": clickhouse_password}
    print(f"secrets_checked={len(secrets_used)} logs_checked={len(logs)} "
          f"log_bytes={sum(len(t) for t in logs.values())} secrets_found=0")
    for name, text in logs.items():
        for what, value in secrets_used.items():
            assert value not in text, f"the {what} appears in the log of {name}"


class _StackView:
    """The SASL stack under the attribute names FaultPipeline reads."""

    def __init__(self, stack: SaslStack) -> None:
        self.kafka_bootstrap = stack.kafka_bootstrap


@pytest.mark.timeout(120)
def test_mes_client_reads_only_its_line_verdicts(sasl_stack: SaslStack) -> None:
    """ACLs as the README prescribes for an MES client: READ on its line's verdict topic and on
    its own consumer-group prefix. It reads that line; another line's verdicts and any write
    are refused by the broker."""
    stack = sasl_stack
    tag = uuid.uuid4().hex[:6]
    mine, other = f"mes{tag}-a", f"mes{tag}-b"
    admin_cfg = stack.sasl(PIPELINE_USER, stack.password)
    from lineguard.kafka import ensure_topics

    ensure_topics(admin_cfg, [mine, other])
    producer = producer_client(admin_cfg)
    for line in (mine, other):
        for i in range(3):
            verdict = Verdict(frame_id=uuid.uuid4().hex, line_id=line, camera_id="cam", product="washer", seq=i,
                              captured_at_ns=time.time_ns(), scored_at_ns=time.time_ns(), model_name="m",
                              model_version="v", score=0.1, threshold=0.5, is_defective=False, heatmap_key=None,
                              queue_wait_ms=1.0, inference_ms=1.0, processor_id="p")
            producer.produce(topics.verdicts(line), key=b"cam", value=verdict.encode())
    assert producer.flush(30) == 0

    mes_user = f"mes-{mine}"
    mes_password = stack.add_user(mes_user)
    principal = f"User:{mes_user}"
    admin = admin_client(admin_cfg)
    acls = [
        AclBinding(ResourceType.TOPIC, topics.verdicts(mine), ResourcePatternType.LITERAL, principal, "*",
                   AclOperation.READ, AclPermissionType.ALLOW),
        AclBinding(ResourceType.GROUP, mes_user, ResourcePatternType.PREFIXED, principal, "*",
                   AclOperation.READ, AclPermissionType.ALLOW),
    ]
    for future in admin.create_acls(acls).values():
        future.result(timeout=30)
    mes = stack.sasl(mes_user, mes_password)

    def read(line: str, seconds: float = 20.0) -> tuple[list[Verdict], set[int]]:
        consumer = consumer_client(mes, f"{mes_user}-{uuid.uuid4().hex[:4]}", logger=_quiet())
        consumer.subscribe([topics.verdicts(line)])
        got, errors = [], set()
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline and len(got) < 3 and not errors:
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    errors.add(msg.error().code())
                    continue
                got.append(Verdict.decode(msg.value()))
        finally:
            consumer.close()
        return got, errors

    wait_for(lambda: len(read(mine, 10)[0]) == 3, 60, "the MES client to read its line (ACLs propagate)")
    got, errors = read(mine)
    assert len(got) == 3 and {v.line_id for v in got} == {mine} and not errors
    got, errors = read(other)
    assert not got and KafkaError.TOPIC_AUTHORIZATION_FAILED in errors

    failures: list[KafkaError] = []
    mes_producer = producer_client(mes, logger=_quiet(), **{"message.timeout.ms": 10_000})
    mes_producer.produce(topics.verdicts(mine), value=b"forged", on_delivery=lambda err, _m: failures.append(err))
    mes_producer.flush(20)
    assert failures and failures[0] is not None
    assert failures[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    print(f"security=mes_acl line={mine} read_own=3 read_other=TOPIC_AUTHORIZATION_FAILED "
          f"write_own=TOPIC_AUTHORIZATION_FAILED")


def test_tls_and_sasl_settings_reach_every_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SASL_SSL with a CA, a client certificate and a password file: the settings every client is
    built from carry all of it (confluent-kafka for producers, sinks and admin; the faust/aiokafka
    credentials of the processor), and the TLS context really loads the certificate chain.
    (The SASL half is proven against a live broker above; no TLS listener runs locally.)"""
    import shutil
    import ssl
    import subprocess

    import faust

    from lineguard.config import load_settings
    from lineguard.kafka import faust_broker_settings, ssl_context

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=lineguard",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    password_file = tmp_path / "pw"
    password_file.write_text("file-secret\n")
    for name in list(os.environ):
        if name.startswith("LINEGUARD_"):
            monkeypatch.delenv(name)
    for name, value in {"SECURITY_PROTOCOL": "SASL_SSL", "SASL_MECHANISM": "SCRAM-SHA-512",
                        "SASL_USERNAME": "proc", "SASL_PASSWORD_FILE": str(password_file),
                        "SSL_CAFILE": str(cert), "SSL_CERTFILE": str(cert), "SSL_KEYFILE": str(key)}.items():
        monkeypatch.setenv(f"LINEGUARD_KAFKA__{name}", value)
    monkeypatch.setenv("LINEGUARD_STATE_DIR", str(tmp_path / "state"))
    settings = load_settings()
    kafka = settings.kafka
    for conf in (consumer_config(kafka, "g"), producer_config(kafka), client_config(kafka)):
        assert conf["security.protocol"] == "SASL_SSL" and conf["sasl.mechanism"] == "SCRAM-SHA-512"
        assert conf["sasl.username"] == "proc" and conf["sasl.password"] == "file-secret"
        assert conf["ssl.ca.location"] == str(cert) and conf["ssl.certificate.location"] == str(cert)
        assert conf["ssl.key.location"] == str(key)
    context = ssl_context(kafka)
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    credentials = faust_broker_settings(kafka)["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL" and credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.username == "proc" and credentials.password == "file-secret"
    assert isinstance(credentials.ssl_context, ssl.SSLContext)
    assert "file-secret" not in repr(settings) + repr(credentials)
