"""The configuration model: file < environment precedence, validation errors, secrets never printed."""

from __future__ import annotations

import json

import pytest

from lineguard.config import ConfigError, load_settings
from lineguard.kafka import client_config


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for key in list(__import__("os").environ):
        if key.startswith("LINEGUARD_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("LINEGUARD_STATE_DIR", str(tmp_path / "state"))


def test_file_then_environment(tmp_path, monkeypatch):
    cfg = tmp_path / "plant.yml"
    cfg.write_text("kafka:\n  bootstrap_servers: broker:9092\n  frame_partitions: 6\n"
                   "processor:\n  batching: {max_batch: 8}\n  threshold_overrides: {line7: {washer: 2.5}}\n")
    s = load_settings(cfg)
    assert s.kafka.bootstrap_servers == "broker:9092" and s.kafka.frame_partitions == 6
    assert s.processor.batching.max_batch == 8 and s.processor.batching.max_wait_ms == 50
    assert s.processor.threshold_overrides == {"line7": {"washer": 2.5}}
    monkeypatch.setenv("LINEGUARD_KAFKA__FRAME_PARTITIONS", "12")
    monkeypatch.setenv("LINEGUARD_PROCESSOR__BATCHING__MAX_WAIT_MS", "5")
    s = load_settings(cfg)
    assert s.kafka.frame_partitions == 12 and s.processor.batching.max_wait_ms == 5
    assert s.kafka.bootstrap_servers == "broker:9092"  # untouched by env


def test_invalid_values_list_every_problem(tmp_path, monkeypatch):
    cfg = tmp_path / "bad.yml"
    cfg.write_text("kafka: {frame_partitions: 0}\nprocessor: {heatmaps: sometimes}\nunknown_section: 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    text = str(info.value)
    assert "kafka.frame_partitions" in text and "processor.heatmaps" in text and "unknown_section" in text
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.yml")
    monkeypatch.setenv("LINEGUARD_KAFKA__MESSAGE_MAX_BYTES", "lots")
    with pytest.raises(ConfigError, match="message_max_bytes"):
        load_settings()


def test_batching_per_product_and_its_old_name_with_a_warning(tmp_path, monkeypatch):
    import warnings

    cfg = tmp_path / "plant.yml"
    cfg.write_text("processor:\n  batching_per_product: {hazelnut: {max_batch: 8, max_wait_ms: 20}}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the current name warns of nothing
        s = load_settings(cfg)
    assert s.processor.batching_for("hazelnut").max_batch == 8 and s.processor.batching_for("washer").max_batch == 16
    cfg.write_text("processor:\n  batching_per_model: {hazelnut: {max_batch: 4, max_wait_ms: 20}}\n")
    with pytest.warns(FutureWarning, match="batching_per_product"):
        s = load_settings(cfg)
    assert s.processor.batching_for("hazelnut").max_batch == 4
    monkeypatch.setenv("LINEGUARD_PROCESSOR__BATCHING_PER_MODEL", json.dumps({"washer": {"max_batch": 2}}))
    with pytest.warns(FutureWarning, match="batching_per_product"):
        s = load_settings()
    assert s.processor.batching_for("washer").max_batch == 2
    cfg.write_text("processor:\n  batching_per_product: {hazelnut: {max_batch: 8}}\n")
    with pytest.raises(ConfigError, match="batching_per_model"), pytest.warns(FutureWarning):
        load_settings(cfg)  # both names at once: which one was meant?


def test_stack_file_supplies_local_addresses_but_env_wins(tmp_path, monkeypatch):
    state = tmp_path / "state"
    state.mkdir()
    (state / "stack.json").write_text(json.dumps({"kafka_bootstrap": "127.0.0.1:40001", "s3_endpoint": "127.0.0.1:40002",
                                                  "s3_access_key": "AK", "s3_secret_key": "SK"}))
    s = load_settings()
    assert s.kafka.bootstrap_servers == "127.0.0.1:40001"
    assert s.sinks.object_store.endpoint == "127.0.0.1:40002"
    assert s.sinks.object_store.credentials() == ("AK", "SK")
    monkeypatch.setenv("LINEGUARD_KAFKA__BOOTSTRAP_SERVERS", "plant:9092")
    assert load_settings().kafka.bootstrap_servers == "plant:9092"


def test_secrets_from_files_and_never_in_reprs(tmp_path, monkeypatch):
    secret_file = tmp_path / "pw"
    secret_file.write_text("s3cr3t-value\n")
    monkeypatch.setenv("LINEGUARD_KAFKA__SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("LINEGUARD_KAFKA__SASL_USERNAME", "proc")
    monkeypatch.setenv("LINEGUARD_KAFKA__SASL_PASSWORD_FILE", str(secret_file))
    monkeypatch.setenv("LINEGUARD_SINKS__CLICKHOUSE__PASSWORD", "ch-pass-value")
    s = load_settings()
    assert client_config(s.kafka)["sasl.password"] == "s3cr3t-value"
    assert s.sinks.clickhouse.secret() == "ch-pass-value"
    dumped = repr(s) + str(s.model_dump())
    assert "ch-pass-value" not in dumped and "s3cr3t-value" not in dumped


def test_configuration_page_documents_every_setting():
    from pathlib import Path

    from pydantic import BaseModel

    from lineguard.config import Settings

    page = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()

    def names(model, prefix="LINEGUARD_"):
        for name, field in model.model_fields.items():
            default = field.default
            if isinstance(default, BaseModel):
                yield from names(type(default), f"{prefix}{name.upper()}__")
            else:
                yield f"{prefix}{name.upper()}"

    missing = [n for n in names(Settings) if f"`{n}`" not in page]
    assert not missing, f"docs/configuration.md lacks {missing}"
