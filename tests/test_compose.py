"""deploy/docker-compose.yml and deploy/Dockerfile: checked without Docker, against the code they run."""

from __future__ import annotations

import os
import re
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
# The services the README names, each of which must report health.
SERVICES = ("kafka", "clickhouse", "s3", "processor", "clickhouse-sink", "heatmap-sink")
LINEGUARD_SERVICES = ("processor", "clickhouse-sink", "heatmap-sink")
# What deploy/make-env.sh writes to deploy/.env.
DOTENV = {"CLICKHOUSE_PASSWORD": "pw", "S3_ACCESS_KEY": "ak", "S3_SECRET_KEY": "sk",
          "KAFKA_CLUSTER_ID": "MkU3OEVBNTcwNTJENDM2Qk"}
_VARIABLE = re.compile(r"\$\{(\w+)(?:(:\?|:-)([^}]*))?\}")


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} substitution, enough for this file."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        raise KeyError(f"${{{name}}} is unset: {arg or 'no default'}")

    return _VARIABLE.sub(substitute, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _interpolate(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()), DOTENV)


@pytest.mark.parametrize("name", SERVICES)
def test_service_exists_with_a_healthcheck(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    check = service["healthcheck"]["test"]
    assert isinstance(check, list) and check[0] in ("CMD", "CMD-SHELL") and len(check) > 1
    assert service.get("image") or service.get("build")


def test_every_credential_must_come_from_the_env_file() -> None:
    raw = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    with pytest.raises(KeyError, match="make-env.sh"):
        _interpolate(raw, {})
    text = (DEPLOY / "docker-compose.yml").read_text()
    for secret in ("PASSWORD", "SECRET_KEY", "ACCESS_KEY"):
        for line in text.splitlines():
            if re.search(rf"{secret}\w*:", line) and "${" not in line:
                pytest.fail(f"literal credential in compose: {line.strip()}")


def test_make_env_writes_every_variable_compose_needs(tmp_path: Path) -> None:
    import shutil
    import subprocess

    shutil.copy(DEPLOY / "make-env.sh", tmp_path / "make-env.sh")
    subprocess.run(["sh", str(tmp_path / "make-env.sh")], check=True, capture_output=True)
    written = dict(line.split("=", 1) for line in (tmp_path / ".env").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert set(written) == set(DOTENV)
    assert all(len(v) >= 16 for v in written.values())
    assert not written["KAFKA_CLUSTER_ID"].startswith("-")
    # And it refuses to overwrite existing credentials.
    again = subprocess.run(["sh", str(tmp_path / "make-env.sh")], capture_output=True)
    assert again.returncode != 0


@pytest.mark.parametrize("name", LINEGUARD_SERVICES)
def test_lineguard_services_have_valid_settings_and_commands(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = compose["services"][name]
    env = {k: str(v) for k, v in service["environment"].items()}
    for key in list(os.environ):
        if key.startswith("LINEGUARD_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()  # raises ConfigError on any misspelled LINEGUARD_* variable
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.sinks.clickhouse.backend == "server"
    assert settings.sinks.object_store.backend == "s3"
    assert settings.sinks.object_store.credentials() == ("ak", "sk")
    assert settings.processor.lines == ["line1", "line2"]
    # The command is a real lineguard subcommand.
    args = build_parser().parse_args(service["command"])
    assert callable(args.handler)
    # The health check names only flags the healthcheck module knows.
    check = service["healthcheck"]["test"]
    assert check[1:4] == ["python", "-m", "lineguard.deploy.healthcheck"]
    flags = {arg for arg in check[4:] if arg.startswith("--")}
    assert flags <= {"--http", "--kafka", "--clickhouse", "--s3"}


def test_broker_limits_fit_the_topics_lineguard_creates(compose: dict[str, Any]) -> None:
    kafka_env = compose["services"]["kafka"]["environment"]
    lineguard_env = compose["services"]["processor"]["environment"]
    settings = load_settings(kafka={"message_max_bytes": int(lineguard_env["LINEGUARD_KAFKA__MESSAGE_MAX_BYTES"])})
    assert int(kafka_env["KAFKA_MESSAGE_MAX_BYTES"]) >= topic_max_message_bytes(settings.kafka)
    assert int(kafka_env["KAFKA_REPLICA_FETCH_MAX_BYTES"]) >= topic_max_message_bytes(settings.kafka)
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_dependencies_wait_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in LINEGUARD_SERVICES:
        for dependency, rule in services[name]["depends_on"].items():
            assert dependency in services
            assert rule["condition"] == "service_healthy"
    assert set(services["clickhouse-sink"]["depends_on"]) >= {"kafka", "clickhouse"}
    assert set(services["heatmap-sink"]["depends_on"]) >= {"kafka", "s3"}


def test_docker_context_keeps_every_package_folder() -> None:
    """The image copies the context; no package folder of pyproject.toml may be ignored out of it."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values()) | {"pyproject.toml", "README.md", "LICENSE"}
    ignored = {line.strip().rstrip("/") for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert not folders & ignored, f"Dockerfile.dockerignore drops {sorted(folders & ignored)}"
    assert "COPY . ." in (DEPLOY / "Dockerfile").read_text()
    # And the heavy local folders stay out of the build context.
    assert {".venv", ".cache", ".state", ".git"} <= ignored


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
