"""``lineguard bench pipeline`` on the session's real Kafka: the JSON other scripts read, and its counts.

No figure is asserted (speed is for the benchmark to print); what is checked is that every frame of the
throughput phase came back as a verdict, the latency phase measured live frames, and each field the
issue names is present and sane.
"""

from __future__ import annotations

import math

import pytest

from lineguard.benchmarks.pipeline import PipelineBenchConfig, markdown, run
from lineguard.benchmarks.pipeline_ceilings import render_frames
from lineguard.config import Settings


def test_frames_mix_defects_at_the_share_asked(tmp_path) -> None:  # noqa: ANN001
    from lineguard.producers.synthetic import SyntheticCamera

    SyntheticCamera(product="washer", size=64, seed=1).write_mvtec(tmp_path / "d", 10, 2, 10)
    frames = render_frames(64, 200, tmp_path / "d", defect_share=0.25)
    assert len(frames) == 200 and all(f[:2] == b"\xff\xd8" for f in frames)  # JPEG
    assert render_frames(64, 20, tmp_path / "d", defect_share=0.25) == frames[:20]  # same seed, same frames


def test_bench_pipeline_counts_every_frame(settings: Settings) -> None:
    cfg = PipelineBenchConfig(lines=2, frames=48, size=64, latency_seconds=3.0, workers=1, poison_share=0.2)
    result = run(settings, cfg)
    assert result["pipeline_frames"] == 96  # 2 lines x 48 frames, every verdict arrived
    for key in ("pipeline_fps", "engine_fps", "kafka_fps", "p50_capture_to_verdict_ms",
                "p99_capture_to_verdict_ms", "p99_capture_to_row_ms", "batch_scoring_ms"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["max_wait_ms"] == 50 and result["kafka_frames"] == 96
    assert result["latency_frames"] > 0 and result["rows_in_clickhouse"] >= 96
    assert result["pipeline_cpu_ms_per_frame"]["processors"] > 0
    stages = result["p50_latency_stages_ms"]
    assert set(stages) == {"kafka_in_and_decode", "batch_wait", "scoring", "render_and_send", "kafka_out"}
    assert result["p50_capture_to_verdict_ms"] >= stages["batch_wait"]
    assert "capture → verdict" in markdown(result)
    # The poison phase, three rounds: the same 96 good frames scored among 24 hostile messages, each dead-lettered.
    poison = result["poison"]
    assert poison["pipeline_frames"] == 96 and poison["poison_frames"] == 3 * 2 * round(48 * 0.2 / 0.8) == 72
    assert poison["dead_letters"] == poison["poison_frames"]
    assert len(poison["clean_fps"]) == len(poison["poison_fps"]) == 3
    assert poison["share_of_clean_fps"] > 0 and poison["processor_peak_rss_mib"] > 0
    assert "hostile messages" in markdown(result)


@pytest.mark.kafka
@pytest.mark.slow
def test_bench_pipeline_on_a_cluster_compares_rf1_and_rf3_and_reports_each_workers_share(
        cluster_settings: Settings) -> None:
    """``bench pipeline --brokers 3``: the throughput phase on RF 1 and RF 3 topics of one cluster, two workers."""
    from lineguard.benchmarks import pipeline_cluster

    cfg = PipelineBenchConfig(lines=2, frames=24, size=64)
    result = pipeline_cluster.run(cluster_settings, cfg, workers=(2,))
    assert result["brokers"] == 3 and set(result["kafka"]) == {"1", "3"}
    assert [(r["replication_factor"], r["replicas_seen"]) for r in result["runs"]] == [(1, [1]), (3, [3])]
    for r in result["runs"]:
        assert r["pipeline_frames"] == 48 and math.isfinite(r["pipeline_fps"]) and r["pipeline_fps"] > 0
        # Two lines x two partitions over two workers: two each, every verdict counted for one of them.
        assert r["frame_partitions"] == 4 and r["partitions_per_member"] == [2, 2]
        assert sum(r["frames_per_worker"]) == 48 and len(r["frames_per_worker"]) <= 2
    assert "RF 3 / RF 1" in pipeline_cluster.markdown(result)
