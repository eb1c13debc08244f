"""deploy/docker-compose.yml and deploy/Dockerfile: checked without Docker, against the code they run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from lineguard.cli import build_parser
from lineguard.config import load_settings
from lineguard.deploy import healthcheck
from lineguard.kafka import topic_max_message_bytes

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
REPO = DEPLOY.parent
# The services of a plant stack, each of which must report health.
BROKERS = ("kafka-1", "kafka-2", "kafka-3")
LINEGUARD_SERVICES = ("processor", "processor-gpu-0", "clickhouse-sink", "heatmap-sink", "parts-sink", "labels-sink", "shadow-sink", "parts-line1",
                      "api")
# Started only with `--profile gpu`, one per GPU.
GPU_PROCESSORS = ("processor-gpu-0",)
SERVICES = (*BROKERS, "clickhouse", "s3", *LINEGUARD_SERVICES, "prometheus", "grafana")
# What deploy/make-env.sh writes to deploy/.env (the secrets are files under deploy/secrets/).
DOTENV = {"KAFKA_EXTERNAL_HOST": "kafka.plant.example", "KAFKA_CLUSTER_ID": "MkU3OEVBNTcwNTJENDM2Qk"}
# Environment names that hold a secret unless they point at a file.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|(^|_)KEYS?($|_)|JAAS")
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:\?|:-)([^}]*))?\}")


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's $$, ${VAR}, ${VAR:-default} and ${VAR:?error} substitution, enough for this file."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.groups()
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        raise KeyError(f"${{{name}}} is unset: {arg or 'no default'}")

    return _VARIABLE.sub(substitute, value)


def _raw() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _interpolate(_raw(), DOTENV)


def _make_env(folder: Path, host: str | None = "kafka.plant.example") -> subprocess.CompletedProcess:
    shutil.copy(DEPLOY / "make-env.sh", folder / "make-env.sh")
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_EXTERNAL_HOST"}
    if host:
        env["KAFKA_EXTERNAL_HOST"] = host
    return subprocess.run(["sh", str(folder / "make-env.sh")], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("name", SERVICES)
def test_service_exists_with_a_healthcheck(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    check = service["healthcheck"]["test"]
    assert isinstance(check, list) and check[0] in ("CMD", "CMD-SHELL") and len(check) > 1
    assert service.get("image") or service.get("build")


def test_refuses_to_start_without_the_advertised_host_or_the_env_file() -> None:
    with pytest.raises(KeyError, match="KAFKA_EXTERNAL_HOST.*cameras reach"):
        _interpolate(_raw(), {"KAFKA_CLUSTER_ID": DOTENV["KAFKA_CLUSTER_ID"]})
    with pytest.raises(KeyError, match="make-env.sh"):
        _interpolate(_raw(), {"KAFKA_EXTERNAL_HOST": "kafka.plant.example"})


def test_brokers_form_one_cluster_with_sasl_ssl_outside(compose: dict[str, Any]) -> None:
    ports = set()
    for node_id, name in enumerate(BROKERS, start=1):
        env = compose["services"][name]["environment"]
        assert env["KAFKA_NODE_ID"] == node_id
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
        protocols = dict(pair.split(":") for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        assert protocols["EXTERNAL"] == "SASL_SSL"
        advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
        assert advertised["INTERNAL"] == f"{name}:9092"
        host, port = advertised["EXTERNAL"].rsplit(":", 1)
        assert host == DOTENV["KAFKA_EXTERNAL_HOST"]
        # The advertised port is the one published for this broker.
        assert f"{port}:9094" in compose["services"][name]["ports"]
        ports.add(port)
        # Kafka's own ${file:...} references survive compose's interpolation ($$).
        assert env["KAFKA_LISTENER_NAME_EXTERNAL_PLAIN_SASL_JAAS_CONFIG"].startswith("${file:/run/secrets/")
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == 2 and env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 3
        assert {s if isinstance(s, str) else s["source"] for s in compose["services"][name]["secrets"]} >= {
            "kafka_broker_pem", "kafka_external_properties"}
    assert len(ports) == 3
    # No broker listens in plain text on a published port: only 9094 (EXTERNAL) is published.
    published = [p for b in BROKERS for p in compose["services"][b]["ports"]]
    assert all(p.endswith(":9094") for p in published)


def test_no_plain_text_secret_in_any_environment(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if not SECRET_NAME.search(key):
                continue
            value = str(value)
            from_file = key.endswith("_FILE") or value.startswith("${file:/run/secrets/") or \
                value.startswith("/run/secrets/")
            assert from_file, f"{name}: {key} holds a secret value; use a *_FILE setting and compose secrets"
            if value.startswith("/run/secrets/"):
                secret = value.removeprefix("/run/secrets/")
                assert secret in service["secrets"], f"{name}: {key} names {secret}, not given to it"
                assert secret in compose["secrets"]


def test_processors_cpu_limit_matches_their_inference_threads(compose: dict[str, Any]) -> None:
    processors = [s for s in compose["services"].values() if s.get("command", [None])[0] == "process"]
    assert processors
    for service in processors:
        cpus = float(service["deploy"]["resources"]["limits"]["cpus"])
        threads = int(service["environment"]["LINEGUARD_PROCESSOR__INFERENCE_THREADS"])
        assert threads >= 1 and cpus == threads
    # Sized from one variable: another PROCESSOR_CPUS keeps them equal.
    other = _interpolate(_raw(), {**DOTENV, "PROCESSOR_CPUS": "6"})["services"]["processor"]
    assert other["deploy"]["resources"]["limits"]["cpus"] == "6"
    assert other["environment"]["LINEGUARD_PROCESSOR__INFERENCE_THREADS"] == "6"


def test_make_env_writes_every_variable_and_secret_compose_needs(tmp_path: Path, compose: dict[str, Any]) -> None:
    refused = _make_env(tmp_path, host=None)
    assert refused.returncode != 0 and "KAFKA_EXTERNAL_HOST" in refused.stderr
    assert not (tmp_path / ".env").exists()
    done = _make_env(tmp_path)
    assert done.returncode == 0, done.stderr
    written = dict(line.split("=", 1) for line in (tmp_path / ".env").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert set(written) == set(DOTENV)
    assert written["KAFKA_EXTERNAL_HOST"] == "kafka.plant.example"
    assert len(written["KAFKA_CLUSTER_ID"]) == 22 and not written["KAFKA_CLUSTER_ID"].startswith("-")
    for name, secret in compose["secrets"].items():
        path = tmp_path / secret["file"]
        assert path.is_file() and len(path.read_text().strip()) >= 16, name
    # The brokers' certificate is issued by the plant CA for the advertised host.
    chain = (tmp_path / "secrets" / "kafka_broker.pem").read_text()
    assert "BEGIN ENCRYPTED PRIVATE KEY" in chain and chain.count("BEGIN CERTIFICATE") == 2
    cert = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName"], input=chain,
                          capture_output=True, text=True, check=True).stdout
    assert "DNS:kafka.plant.example" in cert
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "secrets" / "ca.crt")], input=chain,
                              capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    properties = (tmp_path / "secrets" / "kafka_external.properties").read_text()
    camera_password = (tmp_path / "secrets" / "camera_password").read_text()
    assert f'user_camera="{camera_password}";' in properties and "ssl.key.password=" in properties
    # And it refuses to overwrite existing credentials.
    assert _make_env(tmp_path).returncode != 0


@pytest.mark.parametrize("name", LINEGUARD_SERVICES)
def test_lineguard_services_have_valid_settings_and_commands(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    service = compose["services"][name]
    # The secret files, where compose mounts them (/run/secrets), here under tmp_path.
    for secret in service["secrets"]:
        (tmp_path / secret).write_text(f"{secret}-value\n")
    env = {k: str(v).replace("/run/secrets/", f"{tmp_path}/") for k, v in service["environment"].items()}
    for key in list(os.environ):
        if key.startswith("LINEGUARD_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()  # raises ConfigError on any misspelled LINEGUARD_* variable
    assert settings.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
    assert settings.sinks.clickhouse.backend == "server"
    assert settings.sinks.clickhouse.secret() == "clickhouse_password-value"
    assert settings.sinks.object_store.backend == "s3"
    assert settings.sinks.object_store.credentials() == ("s3_access_key-value", "s3_secret_key-value")
    assert settings.processor.lines == ["*"] and settings.processor.model_source == "object_store"
    assert settings.metrics_host == "0.0.0.0"
    # The command is a real lineguard subcommand.
    args = build_parser().parse_args(service["command"])
    assert callable(args.handler)
    # The health check names only flags the healthcheck module knows, and asks the component's
    # own readiness (/ready on its metrics port) or the API's /health.
    check = service["healthcheck"]["test"]
    assert check[1:4] == ["python", "-m", "lineguard.deploy.healthcheck"]
    flags = {arg for arg in check[4:] if arg.startswith("--")}
    assert flags <= {"--http", "--kafka", "--clickhouse", "--s3"}
    url = check[check.index("--http") + 1]
    if name == "api":
        assert url == f"http://127.0.0.1:{settings.api.port}/health" and settings.api.host == "0.0.0.0"
        assert settings.api.keys() == ["api_keys-value"]
    else:
        port = (settings.processor.metrics_port if name.startswith(("processor", "parts-line"))
                else settings.sinks.metrics_port)
        assert port and url == f"http://127.0.0.1:{port}/ready"


def test_prometheus_scrapes_every_component_where_it_serves(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets: dict[str, str] = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for host in sd["names"]:
                targets[host] = str(sd["port"])
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets[host] = port
    for name in LINEGUARD_SERVICES:
        env = compose["services"][name]["environment"]
        port = env.get("LINEGUARD_PROCESSOR__METRICS_PORT") or env.get("LINEGUARD_SINKS__METRICS_PORT") \
            or env.get("LINEGUARD_API__PORT")
        assert targets.get(name) == str(port), f"{name} is not scraped on its metrics port {port}"
        assert env["LINEGUARD_METRICS_HOST"] == "0.0.0.0"  # reachable from the Prometheus container
    assert targets["clickhouse"] == "9363"
    assert "<port>9363</port>" in (DEPLOY / "clickhouse" / "prometheus.xml").read_text()
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_grafana_gets_the_dashboard_where_the_provider_reads_it(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = dict(m.rsplit(":", 1)[0].split(":", 1) for m in grafana["volumes"] if m.startswith("./"))
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards.yml").read_text())["providers"][0]
    assert mounts["./grafana/lineguard-dashboard.json"].startswith(provider["options"]["path"] + "/")
    assert mounts["./grafana/provisioning/datasources.yml"].startswith("/etc/grafana/provisioning/datasources/")
    for mounted in mounts:
        assert (DEPLOY / mounted).exists(), mounted
    # The data source's variables are all set (the password from the secret file by the entrypoint).
    source = (DEPLOY / "grafana" / "provisioning" / "datasources.yml").read_text()
    for variable in re.findall(r"\$\{(\w+)\}", source):
        assert variable in grafana["environment"] or variable in " ".join(grafana["entrypoint"]), variable


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    """The real compose client validates the file (it needs no engine for `config`)."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on this machine: `docker compose config` not run")
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker client has no compose plugin here: `docker compose config` not run")
    deploy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, deploy, ignore=shutil.ignore_patterns(".env", "secrets", "__pycache__"))
    assert _make_env(deploy).returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_EXTERNAL_HOST"}
    ok = subprocess.run([docker, "compose", "-f", str(deploy / "docker-compose.yml"), "config", "-q"],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    (deploy / ".env").write_text(f"KAFKA_CLUSTER_ID={DOTENV['KAFKA_CLUSTER_ID']}\n")
    refused = subprocess.run([docker, "compose", "-f", str(deploy / "docker-compose.yml"), "config", "-q"],
                             capture_output=True, text=True, env=env)
    assert refused.returncode != 0 and "KAFKA_EXTERNAL_HOST" in refused.stderr


def test_broker_limits_fit_the_topics_lineguard_creates(compose: dict[str, Any]) -> None:
    lineguard_env = compose["services"]["processor"]["environment"]
    settings = load_settings(kafka={"message_max_bytes": int(lineguard_env["LINEGUARD_KAFKA__MESSAGE_MAX_BYTES"])})
    for broker in BROKERS:
        kafka_env = compose["services"][broker]["environment"]
        assert int(kafka_env["KAFKA_MESSAGE_MAX_BYTES"]) >= topic_max_message_bytes(settings.kafka)
        assert int(kafka_env["KAFKA_REPLICA_FETCH_MAX_BYTES"]) >= topic_max_message_bytes(settings.kafka)
        assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_dependencies_wait_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in LINEGUARD_SERVICES:
        for dependency, rule in services[name]["depends_on"].items():
            assert dependency in services
            assert rule["condition"] == "service_healthy"
    assert set(services["processor"]["depends_on"]) >= {*BROKERS, "s3"}  # frames in, models from S3
    assert set(services["clickhouse-sink"]["depends_on"]) >= {*BROKERS, "clickhouse"}
    assert set(services["heatmap-sink"]["depends_on"]) >= {*BROKERS, "s3"}
    assert set(services["api"]["depends_on"]) >= {"clickhouse", "s3"}


@pytest.mark.parametrize("dockerfile", ("Dockerfile", "Dockerfile.gpu"))
def test_docker_context_keeps_every_package_folder(dockerfile: str) -> None:
    """The image copies the context; no package folder of pyproject.toml may be ignored out of it."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values()) | {"pyproject.toml", "README.md", "LICENSE"}
    # BuildKit reads <Dockerfile>.dockerignore beside each Dockerfile (there is no .dockerignore at the root).
    ignored = {line.strip().rstrip("/") for line in (DEPLOY / f"{dockerfile}.dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert not folders & ignored, f"{dockerfile}.dockerignore drops {sorted(folders & ignored)}"
    assert "COPY . ." in (DEPLOY / dockerfile).read_text()
    # And the heavy local folders, and the plant's credentials, stay out of the build context.
    assert {".venv", ".cache", ".state", ".git", "deploy/.env", "deploy/secrets"} <= ignored


def test_each_image_installs_one_onnxruntime_flavour() -> None:
    """No flavour is a hard dependency: the CPU image installs the cpu extra, the GPU image gpu (+ tensorrt)."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    cpu = (DEPLOY / "Dockerfile").read_text()
    assert "'.[cpu]'" in cpu and "'lineguard[cpu]'" in cpu
    gpu = (DEPLOY / "Dockerfile.gpu").read_text()
    (wanted,) = re.findall(r"^ARG EXTRAS=(\S+)$", gpu, re.M)
    assert wanted.split(",") == ["gpu", "tensorrt"] and all(e in extras for e in wanted.split(","))
    assert '".[${EXTRAS}]"' in gpu
    (base,) = set(re.findall(r"^ARG CUDA_IMAGE=(\S+)$", gpu, re.M))
    # CUDA 13 (what onnxruntime-gpu's wheel is built for); "base": the CUDA libraries come from the wheels.
    assert base.startswith("nvidia/cuda:13.") and "-base-" in base


def test_gpu_processors_run_only_with_the_gpu_profile_one_gpu_each(compose: dict[str, Any]) -> None:
    services = compose["services"]
    profiled = {name for name, s in services.items() if s.get("profiles")}
    assert profiled == set(GPU_PROCESSORS)  # a CPU plant's `docker compose up` starts exactly what it did
    devices = []
    for name in GPU_PROCESSORS:
        service = services[name]
        assert service["profiles"] == ["gpu"]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile.gpu" and service["image"] != "lineguard:latest"
        assert service["command"] == ["process"]
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        (gpu,) = device["device_ids"]  # one GPU per processor
        devices.append(gpu)
        env = service["environment"]
        # The container sees its one GPU as device 0.
        assert env["LINEGUARD_PROCESSOR__DEVICE_ID"] == "0"
        assert env["LINEGUARD_PROCESSOR__PRECISION"] == "fp16"
        cache = env["LINEGUARD_PROCESSOR__TRT_CACHE_DIR"]
        assert any(v.split(":")[1] == cache and v.split(":")[0] in compose["volumes"] for v in service["volumes"])
        # Same consumer group, so GPU and CPU processors share (never duplicate) the lines' partitions.
        assert env.get("LINEGUARD_PROCESSOR__CONSUMER_GROUP") == \
            services["processor"]["environment"].get("LINEGUARD_PROCESSOR__CONSUMER_GROUP")
        # Time for a first TensorRT engine build before the health check counts.
        assert int(service["healthcheck"]["start_period"].rstrip("s")) >= 300
    assert len(set(devices)) == len(devices)


def test_healthcheck_passes_against_the_real_stack(stack, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("LINEGUARD_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("LINEGUARD_STATE_DIR", str(stack.state_dir))  # picks up stack.json
    monkeypatch.setenv("LINEGUARD_SINKS__OBJECT_STORE__BACKEND", "s3")
    assert healthcheck.main(["--kafka", "--s3"]) == 0


def test_healthcheck_fails_when_a_dependency_is_unreachable(
    stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    for key in list(os.environ):
        if key.startswith("LINEGUARD_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("LINEGUARD_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("LINEGUARD_KAFKA__BOOTSTRAP_SERVERS", dead)
    monkeypatch.setenv("LINEGUARD_SINKS__OBJECT_STORE__BACKEND", "s3")
    monkeypatch.setenv("LINEGUARD_SINKS__OBJECT_STORE__ENDPOINT", stack.s3_endpoint)
    monkeypatch.setenv("LINEGUARD_SINKS__OBJECT_STORE__ACCESS_KEY", stack.s3_access_key)
    monkeypatch.setenv("LINEGUARD_SINKS__OBJECT_STORE__SECRET_KEY", "wrong")
    monkeypatch.setenv("LINEGUARD_SINKS__CLICKHOUSE__BACKEND", "server")
    monkeypatch.setenv("LINEGUARD_SINKS__CLICKHOUSE__URL", f"http://{dead}")
    assert healthcheck.main(["--kafka", "--s3", "--clickhouse", "--http", f"http://{dead}/"]) == 1
    out = capsys.readouterr().out
    for name in ("http", "kafka", "clickhouse", "s3"):
        assert f"unhealthy: {name}:" in out
