"""The one configuration model of lineguard.

Precedence, lowest first: built-in defaults < the local stack's addresses
(``<state_dir>/stack.json``, written by ``lineguard stack up``) < a YAML file
(``--config`` or ``LINEGUARD_CONFIG``) < environment variables
(``LINEGUARD_<SECTION>__<FIELD>``, e.g. ``LINEGUARD_KAFKA__BOOTSTRAP_SERVERS``).

Secrets are ``SecretStr`` so they never appear in logs or reprs; each secret
can also be read from a file (``*_file`` fields), the way container
orchestrators mount them.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

MiB = 1024 * 1024


class ConfigError(ValueError):
    """Raised with a readable message when the configuration is invalid."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _read_secret(value: SecretStr | None, path: Path | None) -> str | None:
    if value is not None:
        return value.get_secret_value()
    if path is not None:
        return path.read_text().strip()
    return None


class KafkaConfig(_Section):
    """Where the brokers are and how to reach them; lineguard.kafka.clients makes client settings of it."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None  # client certificate (PEM) for brokers that require mutual TLS
    ssl_keyfile: Path | None = None   # its private key (PEM)
    # Images are big: every hop (broker, topic, producer, consumer) is raised to this.
    message_max_bytes: int = Field(default=16 * MiB, ge=1 * MiB, le=256 * MiB)
    frame_partitions: int = Field(default=2, ge=1, le=1024)
    # "auto": from the brokers alive at topic creation, 3 replicas and 2 in sync once there are 3 brokers.
    replication_factor: int | Literal["auto"] = Field(default="auto", ge=1)
    min_insync_replicas: int | Literal["auto"] = Field(default="auto", ge=1)
    verdict_retention_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=60_000)
    # Frames are only needed until scored: a day of images, not the broker's week (see docs/deployment.md).
    frames_retention_ms: int = Field(default=24 * 3600 * 1000, ge=60_000)

    @model_validator(mode="after")
    def _min_insync_fits(self) -> KafkaConfig:
        rf, min_isr = self.replication_factor, self.min_insync_replicas
        if isinstance(rf, int) and isinstance(min_isr, int) and min_isr > rf:
            raise ValueError(f"kafka.min_insync_replicas ({min_isr}) > kafka.replication_factor ({rf}): "
                             "no write with acks=all could succeed")
        return self

    def password(self) -> str | None:
        return _read_secret(self.sasl_password, self.sasl_password_file)


class LimitsConfig(_Section):
    """Bounds applied when decoding frames, so hostile input cannot exhaust memory."""

    max_image_bytes: int = Field(default=12 * MiB, ge=1024)
    max_width: int = Field(default=8192, ge=16)
    max_height: int = Field(default=8192, ge=16)
    max_pixels: int = Field(default=40_000_000, ge=256)
    deadletter_max_raw_bytes: int = Field(default=1 * MiB, ge=0)


class ProducerConfig(_Section):
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    linger_ms: int = Field(default=5, ge=0)
    delivery_timeout_ms: int = Field(default=120_000, ge=1000)
    jpeg_quality: int = Field(default=92, ge=10, le=100)
    metrics_port: int = Field(default=0, ge=0, le=65535)  # Prometheus /metrics; 0 = off
    # Live sources (rtsp://, genicam:): docs/cameras.md#live-cameras-rtsp-and-genicam.
    stream_stale_after_s: float = Field(default=5.0, ge=0)  # no frame this long: WARNING + gauge; 0 = off
    stream_read_timeout_s: float = Field(default=5.0, gt=0)  # opening, or waiting for a frame, gives up after
    stream_reconnect_initial_s: float = Field(default=0.5, gt=0)  # reconnect back-off: first delay ...
    stream_reconnect_max_s: float = Field(default=10.0, gt=0)     # ... doubled up to this
    stream_fps: float = Field(default=0.0, ge=0)  # the camera's frame rate for gap estimates; 0 = as the stream says
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    # FFmpeg without its start-up buffering: frames arrive as sent, so receipt time is capture time plus
    # the network; turn off for a camera FFmpeg cannot open so (its SDP lacks the stream's parameters).
    rtsp_low_latency: bool = True
    genicam_device: str = ""  # device id, serial number or index among the producer's devices; "" = the first
    genicam_timestamp_tick_hz: int = Field(default=0, ge=0)  # 0 = as the producer or device reports


class BatchingConfig(_Section):
    """Dynamic batching, as Triton's: flush when max_batch frames wait or the oldest waited max_wait_ms."""

    max_batch: int = Field(default=16, ge=1, le=1024)
    max_wait_ms: int = Field(default=50, ge=0, le=60_000)


class ProcessorConfig(_Section):
    model_dir: Path = Path("models")
    processor_id: str = Field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}")
    consumer_group: str = "lineguard-processors"
    lines: list[str] = Field(default_factory=lambda: ["line1", "line2"])
    batching: BatchingConfig = BatchingConfig()
    # Per-product batching overrides: {"hazelnut": {"max_batch": 8, "max_wait_ms": 20}}
    batching_per_product: dict[str, BatchingConfig] = Field(default_factory=dict)
    # Per-line threshold overrides: {"line1": {"hazelnut": 0.42}}; "*" matches any product.
    threshold_overrides: dict[str, dict[str, float]] = Field(default_factory=dict)
    heatmaps: Literal["defective", "all", "none"] = "defective"
    # The frame archive (docs/replay.md): raw frames to the object store, by the heatmap sink, for re-scoring
    # and `lineguard dataset export`. sample: archive_sample_rate of the frames, chosen by frame_id.
    archive: Literal["none", "defective", "sample", "all"] = "none"
    archive_sample_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    model_poll_s: float = Field(default=2.0, gt=0)
    # object_store: pull the promoted versions (`lineguard models promote`) from sinks.object_store into
    # model_cache_dir instead of reading model_dir.
    model_source: Literal["local", "object_store"] = "local"
    model_cache_dir: Path = Path("model-cache")
    web_port: int = Field(default=0, ge=0, le=65535)
    inference_threads: int = Field(default=0, ge=0)  # 0: all cores
    # int8 / fp16: score with a model folder's model.int8.onnx / model.fp16.onnx (`lineguard export --int8`,
    # `--fp16`) and the threshold calibrated for it, where the folder has one; fp16 also turns on TensorRT's
    # FP16 kernels.
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    # The GPU this processor scores on (TensorRT and CUDA providers; counted within CUDA_VISIBLE_DEVICES).
    device_id: int = Field(default=0, ge=0)
    # TensorRT's engine and timing caches, one subfolder per model sha256, GPU and TensorRT version; must be
    # writable (model folders are often mounted read-only). None: $XDG_CACHE_HOME/lineguard/tensorrt.
    trt_cache_dir: Path | None = None
    # ONNX Runtime providers in order, e.g. ["OpenVINOExecutionProvider", "CPUExecutionProvider"] (OpenVINO is
    # used only when named); empty: the engine's preference (TensorRT, CUDA, CPU) among those installed.
    providers: list[str] = Field(default_factory=list)
    metrics_port: int = Field(default=0, ge=0, le=65535)  # Prometheus /metrics; 0 = off
    # A worker that dies is noticed by the group after this long (its partitions then move).
    session_timeout_s: float = Field(default=10.0, ge=3.0, le=300.0)
    lag_report_s: float = Field(default=5.0, gt=0)  # how often consumer lag is measured

    @model_validator(mode="before")
    @classmethod
    def _renamed_batching_per_model(cls, data: Any) -> Any:
        """``batching_per_model`` was keyed by product all along: still read, with a warning."""
        if isinstance(data, dict) and "batching_per_model" in data:
            warnings.warn("processor.batching_per_model is deprecated: it is keyed by product, "
                          "call it processor.batching_per_product", FutureWarning, stacklevel=2)
            data = dict(data)
            old = data.pop("batching_per_model")
            if "batching_per_product" in data:
                raise ValueError("set processor.batching_per_product only, not also its old name batching_per_model")
            data["batching_per_product"] = json.loads(old) if isinstance(old, str) else old
        return data

    def batching_for(self, product: str) -> BatchingConfig:
        return self.batching_per_product.get(product, self.batching)


class ClickHouseConfig(_Section):
    backend: Literal["chdb", "server"] = "chdb"
    chdb_path: Path | None = None  # default: <state_dir>/chdb
    url: str = "http://127.0.0.1:8123"
    username: str = "default"
    password: SecretStr | None = None
    password_file: Path | None = None
    database: str = "lineguard"
    ttl_days: int = Field(default=365, ge=0)  # verdicts older than this are dropped (whole parts); 0 keeps all
    cluster: str | None = None  # a ClickHouse cluster name: replicated, sharded DDL ON CLUSTER

    def secret(self) -> str:
        return _read_secret(self.password, self.password_file) or ""


class ObjectStoreConfig(_Section):
    backend: Literal["local", "s3"] = "local"
    local_dir: Path | None = None  # default: <state_dir>/heatmaps
    endpoint: str = "127.0.0.1:9000"
    secure: bool = False
    access_key: SecretStr | None = None
    access_key_file: Path | None = None
    secret_key: SecretStr | None = None
    secret_key_file: Path | None = None
    bucket: str = "lineguard-heatmaps"
    region: str | None = None

    def credentials(self) -> tuple[str, str]:
        return (
            _read_secret(self.access_key, self.access_key_file) or "",
            _read_secret(self.secret_key, self.secret_key_file) or "",
        )


class SinkConfig(_Section):
    batch_size: int = Field(default=500, ge=1)
    flush_interval_ms: int = Field(default=1000, ge=1)
    retry_initial_ms: int = Field(default=200, ge=1)
    retry_max_ms: int = Field(default=10_000, ge=1)
    metrics_port: int = Field(default=0, ge=0, le=65535)  # Prometheus /metrics; 0 = off
    lag_report_s: float = Field(default=5.0, gt=0)  # how often consumer lag is measured (and logged while retrying)
    # A consumer whose partitions were taken (rebalance, session timeout) and that has not been given an
    # assignment again, or whose oldest commit is unanswered, after this long is closed and opened anew
    # (librdkafka can stay stuck rejoining after a broker restart). Also bounds the wait for commit
    # answers and for the consumer's close when a sink stops.
    rejoin_timeout_s: float = Field(default=30.0, gt=0)
    clickhouse: ClickHouseConfig = ClickHouseConfig()
    object_store: ObjectStoreConfig = ObjectStoreConfig()


_SHIFT = re.compile(r"^([01]\d|2[0-3])(?::([0-5]\d))?-([01]\d|2[0-4])(?::([0-5]\d))?$")


def parse_shift(spec: str) -> tuple[int, int]:
    """``"06-14"`` or ``"22:30-06:30"`` (UTC) -> (start minute, end minute) of the day."""
    m = _SHIFT.match(spec.strip())
    if not m:
        raise ValueError(f"shift {spec!r} must look like HH-HH or HH:MM-HH:MM (UTC)")
    start = int(m.group(1)) * 60 + int(m.group(2) or 0)
    end = (int(m.group(3)) * 60 + int(m.group(4) or 0)) % (24 * 60)
    if start == end:
        raise ValueError(f"shift {spec!r} is empty")
    return start, end


class AnalyticsConfig(_Section):
    # Production shifts in UTC; together they must cover the day exactly once.
    shifts: list[str] = Field(default_factory=lambda: ["06-14", "14-22", "22-06"])

    @field_validator("shifts")
    @classmethod
    def _shifts_cover_the_day(cls, v: list[str]) -> list[str]:
        covered = [0] * (24 * 60)
        for spec in v:
            start, end = parse_shift(spec)
            minute = start
            while minute != end:
                covered[minute] += 1
                minute = (minute + 1) % (24 * 60)
        if any(c != 1 for c in covered):
            raise ValueError(f"shifts {v} must cover every minute of the day exactly once")
        return [s.strip() for s in v]


class ApiConfig(_Section):
    """``lineguard serve``: the synchronous inspection API and the operator dashboard."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)  # 0: any free port (printed at start)
    api_keys: list[SecretStr] = Field(default_factory=list)
    api_keys_file: Path | None = None  # one key per line; '#' starts a comment
    max_upload_bytes: int = Field(default=8 * MiB, ge=1024)
    max_pixels: int = Field(default=16_000_000, ge=256)

    def keys(self) -> list[str]:
        """Every accepted key (settings and file together); empty keys are ignored."""
        keys = [k.get_secret_value().strip() for k in self.api_keys]
        if self.api_keys_file is not None:
            for line in self.api_keys_file.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                keys.append(line)
        return [k for k in keys if k]


class StackConfig(_Section):
    # Kafka nodes for a new state dir (a KRaft cluster when > 1); None: what the state dir has, 1 if new.
    brokers: int | None = Field(default=None, ge=1, le=9)
    kafka_version: str = "4.1.1"
    versitygw_version: str = "v1.7.0"
    cache_dir: Path = Path(".cache")


class TilingConfig(_Section):
    """Cut a camera's region into overlapping square tiles, each scored at the model's input size."""

    size: int = Field(ge=32, le=8192)  # tile side in frame pixels
    overlap: int = Field(default=0, ge=0)  # pixels shared by neighbouring tiles (their maps are blended)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "TilingConfig":
        if self.overlap >= self.size:
            raise ValueError(f"tiling.overlap ({self.overlap}) must be smaller than tiling.size ({self.size})")
        return self


class CameraConfig(_Section):
    """What of a camera's frame is inspected: applied the same way in training and scoring."""

    roi: tuple[int, int, int, int] | None = None  # x, y, width, height in frame pixels; None: the whole frame
    ignore_mask: Path | None = None  # image of the ROI's size (or the frame's); non-zero pixels are not inspected
    tiling: TilingConfig | None = None  # None: the ROI is resized to the model's input


class LineConfig(_Section):
    """Timing and part rules of one line (``plant.lines.<line_id>``; ``"*"`` applies to lines not named)."""

    # A verdict scored later than this after capture is flagged late (published and stored, never gated).
    verdict_deadline_ms: int | None = Field(default=None, ge=1)
    # Camera ids that see each part; a part is decided when all have a verdict, or at part_deadline_ms.
    part_views: list[str] = Field(default_factory=list)
    # None: 2000 ms, or 3/4 of verdict_deadline_ms when that is shorter (see part_wait_ms).
    part_deadline_ms: int | None = Field(default=None, ge=1)
    # A view missing at the deadline: reject the part (fail safe) or decide on the views that arrived.
    missing_view_decision: Literal["reject", "pass"] = "reject"
    cameras: dict[str, CameraConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _parts_decided_before_the_verdict_deadline(self) -> "LineConfig":
        if (self.verdict_deadline_ms is not None and self.part_deadline_ms is not None
                and self.part_deadline_ms >= self.verdict_deadline_ms):
            raise ValueError(f"part_deadline_ms ({self.part_deadline_ms}) must be below verdict_deadline_ms "
                             f"({self.verdict_deadline_ms}): a part missing a view must be decided while a "
                             "reject gate can still act on it")
        return self

    @property
    def part_wait_ms(self) -> int:
        """How long after a part's first capture its views are waited for."""
        if self.part_deadline_ms is not None:
            return self.part_deadline_ms
        if self.verdict_deadline_ms is not None:
            return min(2000, max(1, self.verdict_deadline_ms * 3 // 4))
        return 2000


class PlantConfig(_Section):
    lines: dict[str, LineConfig] = Field(default_factory=dict)

    def line(self, line_id: str) -> LineConfig:
        return self.lines.get(line_id) or self.lines.get("*") or LineConfig()

    def camera(self, line_id: str, camera_id: str) -> CameraConfig | None:
        cameras = self.line(line_id).cameras
        return cameras.get(camera_id) or cameras.get("*")


class OpcUaGateConfig(_Section):
    """``lineguard gate opcua``: the PLC's OPC UA server and the nodes the gate writes (``{line}`` is the line id)."""

    endpoint: str = "opc.tcp://127.0.0.1:4840"
    part_id_node: str = "ns=2;s=lineguard.{line}.part_id"      # String
    reject_node: str = "ns=2;s=lineguard.{line}.reject"        # Boolean
    sequence_node: str = "ns=2;s=lineguard.{line}.sequence"    # Int32, written last: the PLC's trigger
    heartbeat_node: str = "ns=2;s=lineguard.{line}.heartbeat"  # Int32, +1 every gate.heartbeat_s
    # No username: anonymous. Message security (signing, encryption) is not implemented: SecurityPolicy None.
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    timeout_s: float = Field(default=2.0, gt=0)  # connect and each write

    def secret(self) -> str | None:
        return _read_secret(self.password, self.password_file)


class MqttGateConfig(_Section):
    """``lineguard gate mqtt``: the broker and the topics the gate publishes to (``{line}`` is the line id)."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    # plain: ``topic``; sparkplug: spBv1.0/<group>/DDATA/<edge node>/<device>, JSON payload (not Sparkplug B protobuf).
    topic_style: Literal["plain", "sparkplug"] = "plain"
    topic: str = "lineguard/{line}/parts"
    sparkplug_group_id: str = "lineguard"
    sparkplug_edge_node_id: str = "gate"
    sparkplug_device_id: str = "{line}"
    heartbeat_topic: str = "lineguard/{line}/heartbeat"
    qos: int = Field(default=1, ge=0, le=2)  # 1 and 2: a decision counts as sent once the broker acknowledged it
    client_id: str = Field(default_factory=lambda: f"lineguard-gate-{os.uname().nodename}-{os.getpid()}")
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    keepalive_s: int = Field(default=10, ge=1)
    timeout_s: float = Field(default=2.0, gt=0)  # connect and each acknowledgement

    def secret(self) -> str | None:
        return _read_secret(self.password, self.password_file)


class GateConfig(_Section):
    """``lineguard gate``: PartVerdicts of ``lines`` -> the PLC's reject gate (OPC UA or MQTT)."""

    lines: list[str] = Field(default_factory=lambda: ["line1"])
    consumer_group: str | None = None  # None: lineguard-gate-<opcua|mqtt>
    queue_size: int = Field(default=1000, ge=1)  # decisions held while the PLC is away; Kafka is paused when full
    heartbeat_s: float = Field(default=1.0, gt=0)
    reconnect_initial_ms: int = Field(default=200, ge=1)
    reconnect_max_ms: int = Field(default=5000, ge=1)
    metrics_port: int = Field(default=0, ge=0, le=65535)  # Prometheus /metrics; 0 = off
    opcua: OpcUaGateConfig = OpcUaGateConfig()
    mqtt: MqttGateConfig = MqttGateConfig()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LINEGUARD_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    state_dir: Path = Path(".state")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    metrics_host: str = "127.0.0.1"  # address the metrics endpoints bind (0.0.0.0 for a Prometheus elsewhere)
    kafka: KafkaConfig = KafkaConfig()
    limits: LimitsConfig = LimitsConfig()
    producer: ProducerConfig = ProducerConfig()
    processor: ProcessorConfig = ProcessorConfig()
    sinks: SinkConfig = SinkConfig()
    stack: StackConfig = StackConfig()
    analytics: AnalyticsConfig = AnalyticsConfig()
    api: ApiConfig = ApiConfig()
    plant: PlantConfig = PlantConfig()
    gate: GateConfig = GateConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats init kwargs (which carry the file and stack values).
        return (env_settings, init_settings)

    @field_validator("state_dir")
    @classmethod
    def _absolute_state_dir(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @property
    def chdb_path(self) -> Path:
        return self.sinks.clickhouse.chdb_path or self.state_dir / "chdb"

    @property
    def heatmap_dir(self) -> Path:
        return self.sinks.object_store.local_dir or self.state_dir / "heatmaps"


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def stack_overrides(state_dir: Path) -> dict[str, Any]:
    """Addresses of the local stack, if ``lineguard stack up`` is running one."""
    path = state_dir / "stack.json"
    if not path.exists():
        return {}
    info = json.loads(path.read_text())
    out: dict[str, Any] = {}
    if info.get("kafka_bootstrap"):
        out["kafka"] = {"bootstrap_servers": info["kafka_bootstrap"]}
    if info.get("s3_endpoint"):
        out["sinks"] = {
            "object_store": {
                "endpoint": info["s3_endpoint"],
                "access_key": info.get("s3_access_key"),
                "secret_key": info.get("s3_secret_key"),
            }
        }
    return out


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; raise ConfigError with every problem listed."""
    config_file = config_file or os.environ.get("LINEGUARD_CONFIG")
    data: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at top level")
        data = loaded
    data = _deep_merge(data, overrides)
    state_dir = Path(
        os.environ.get("LINEGUARD_STATE_DIR") or data.get("state_dir") or ".state"
    ).expanduser().resolve()
    data = _deep_merge(stack_overrides(state_dir), data)
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
