"""``/live`` and ``/ready`` on the metrics endpoint, the probes of docker-compose.yml and the Helm chart.

A processor is ready once it is in its consumer group and has a model loaded; a sink once it
has its partitions. Liveness answers as soon as the endpoint serves.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lineguard.metrics import readiness, set_readiness, stop_metrics

sys.path.insert(0, str(Path(__file__).parent))
from fault_helpers import FaultPipeline, free_port  # noqa: E402
from pipeline_helpers import wait_for  # noqa: E402
from test_faults import models  # noqa: E402,F401 - the module's fitted model fixture


def probe(port: int, path: str) -> tuple[int, str]:
    """(status, body) of GET ``path``; 0 when nothing answers yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def test_probe_endpoints_answer_what_the_check_says() -> None:
    from lineguard.metrics import serve_metrics

    port = free_port()
    reason: list[str | None] = ["joining the consumer group"]
    try:
        serve_metrics(port, component="test")
        set_readiness(lambda: reason[0])
        assert probe(port, "/live") == (200, "alive\n")
        assert probe(port, "/ready") == (503, "not ready: joining the consumer group\n")
        reason[0] = None
        assert probe(port, "/ready") == (200, "ready\n")
        set_readiness(lambda: 1 / 0)  # a broken check means "not ready", never a dead endpoint
        status, body = probe(port, "/ready")
        assert status == 503 and "ZeroDivisionError" in body
        assert probe(port, "/metrics")[0] == 200
    finally:
        stop_metrics()
    assert readiness() is None  # stop_metrics forgets the check


@pytest.mark.kafka
@pytest.mark.timeout(240)
def test_processor_and_sink_become_ready_only_when_consuming_with_a_model(
    stack, models: Path, tmp_path: Path  # noqa: ANN001,F811
) -> None:
    empty_models = tmp_path / "no-models"
    empty_models.mkdir()
    p = FaultPipeline(stack, tmp_path, models, "ready")
    ready_port, modelless_port, sink_port = free_port(), free_port(), free_port()
    try:
        p.processor("processor", metrics_port=ready_port)
        p.processor("modelless", metrics_port=modelless_port, LINEGUARD_PROCESSOR__MODEL_DIR=str(empty_models))
        p.sink("clickhouse", metrics_port=sink_port)
        wait_for(lambda: probe(ready_port, "/ready")[0] == 200, 120, "processor ready")
        wait_for(lambda: probe(sink_port, "/ready")[0] == 200, 120, "sink ready")
        # The worker without a model joined the same group, answers /live, and is not ready.
        wait_for(lambda: probe(modelless_port, "/live")[0] == 200, 60, "modelless processor alive")
        wait_for(lambda: "no model loaded" in probe(modelless_port, "/ready")[1], 60,
                 "modelless processor says why it is not ready")
        assert probe(modelless_port, "/ready")[0] == 503
        assert probe(ready_port, "/live")[0] == 200 and probe(sink_port, "/live")[0] == 200
    finally:
        p.stop_all()
