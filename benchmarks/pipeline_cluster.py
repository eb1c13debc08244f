"""``lineguard bench pipeline --brokers 3``: replication factor 1 against 3 on one cluster, and the workers' shares.

On one multi-broker cluster, for each worker count (``--workers 1,2,4``) the
throughput phase of ``bench pipeline`` (``pipeline.measure_pipeline``: a backlog
of L lines x F frames, then the workers and the ClickHouse sink) runs twice, on
topics created with RF 1 (min.insync.replicas 1) and with RF 3 (min.insync 2),
one right after the other so that the machine's drift hits both alike. Raw
Kafka (produce + consume, no scoring) is measured for each RF as well. Every
producer sends with acks=all, so RF 3 waits for two replicas per write.

Per run it records each worker's share: the frame partitions each member of
the processors' group holds (admin ``describe_consumer_groups``, while the
workers are still in the group) and the throughput-phase verdicts per
``processor_id``. The topics' replica count is read back, not assumed.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

from confluent_kafka import ConsumerGroupState, KafkaException

from lineguard.config import Settings
from lineguard.harness import LocalPipeline
from lineguard.kafka import admin_client, coordinator_not_ready, ensure_topics

from .pipeline import PipelineBenchConfig, measure_pipeline, prepare
from .pipeline_ceilings import measure_kafka
from .report import write_report

REPLICATION = ((1, 1), (3, 2))  # (replication factor, min.insync.replicas) compared


def live_brokers(settings: Settings) -> int:
    admin = admin_client(settings.kafka)  # kept referenced until the request resolves
    return len(admin.list_topics(timeout=10).brokers)


def wait_for_members(pipeline: LocalPipeline, members: int, timeout_s: float = 120.0) -> None:
    """Until the processors' group is stable with ``members`` members, each holding frame partitions
    (the workers start before the backlog is written, so every one of them takes its share)."""
    admin = admin_client(pipeline.kafka)  # kept referenced until the futures resolve
    frame_topics = set(pipeline.frame_topics())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            group = admin.describe_consumer_groups([pipeline.group])[pipeline.group].result(timeout=30)
        except (KafkaException, TimeoutError) as exc:  # the group's coordinator is not ready yet
            if isinstance(exc, KafkaException) and not coordinator_not_ready(exc.args[0]):
                raise
            time.sleep(1.0)
            continue
        holding = [m for m in group.members if any(tp.topic in frame_topics for tp in m.assignment.topic_partitions)]
        if group.state == ConsumerGroupState.STABLE and len(group.members) == members \
                and len(holding) == min(members, len(frame_topics) * pipeline.kafka.frame_partitions):
            return
        time.sleep(1.0)
    raise RuntimeError(f"the group {pipeline.group} did not reach {members} members in {timeout_s:.0f} s")


def group_shares(pipeline: LocalPipeline) -> dict[str, Any]:
    """The frame partitions each member of the processors' group holds, and the topics' replica counts."""
    admin = admin_client(pipeline.kafka)  # kept referenced until the futures resolve
    group = admin.describe_consumer_groups([pipeline.group])[pipeline.group].result(timeout=30)
    frame_topics = set(pipeline.frame_topics())
    per_member = sorted((sum(tp.topic in frame_topics for tp in m.assignment.topic_partitions) for m in group.members),
                        reverse=True)
    metadata = admin.list_topics(timeout=10)
    replicas = {len(part.replicas) for name in frame_topics for part in metadata.topics[name].partitions.values()}
    return {"group_state": str(group.state), "partitions_per_member": per_member,
            "frame_partitions": len(frame_topics) * pipeline.kafka.frame_partitions,
            "replicas_seen": sorted(replicas)}


def with_replication(settings: Settings, rf: int, min_isr: int) -> Settings:
    """The settings with new topics created at ``rf`` replicas, ``min_isr`` in sync."""
    kafka = settings.kafka.model_copy(update={"replication_factor": rf, "min_insync_replicas": min_isr})
    return settings.model_copy(update={"kafka": kafka})


def run(settings: Settings, cfg: PipelineBenchConfig, workers: tuple[int, ...]) -> dict[str, Any]:
    brokers = live_brokers(settings)
    if brokers < max(rf for rf, _ in REPLICATION):
        raise RuntimeError(f"RF 3 needs 3 brokers; the cluster has {brokers} (lineguard stack up --brokers 3)")
    # The shared topics (the dead-letter topic) with the cluster's own replication first: the RF 1 runs
    # below would otherwise create them with RF 1 on a cluster that had none yet, for good.
    ensure_topics(settings.kafka, [])
    work, model_dir, jpegs = prepare(cfg)
    quick = replace(cfg, latency_seconds=0.0, poison_share=0.0)
    result: dict[str, Any] = {"config": {k: str(v) for k, v in cfg.__dict__.items()}, "brokers": brokers,
                              "cpu_count": os.cpu_count(), "workers": list(workers), "kafka": {}, "runs": []}
    for rf, min_isr in REPLICATION:
        lines = [f"benchraw-rf{rf}-{os.urandom(3).hex()}-{i + 1}" for i in range(cfg.lines)]
        result["kafka"][str(rf)] = measure_kafka(with_replication(settings, rf, min_isr), jpegs, lines, cfg.product)
    for count in workers:
        for rf, min_isr in REPLICATION:
            measured = measure_pipeline(with_replication(settings, rf, min_isr), replace(quick, workers=count),
                                        model_dir, jpegs, work / f"rf{rf}-workers{count}",
                                        after_throughput=group_shares,
                                        join_first=lambda p, n=count: wait_for_members(p, n))
            result["runs"].append({
                "replication_factor": rf, "min_insync_replicas": min_isr, "workers": count,
                "pipeline_fps": measured["pipeline_fps"], "pipeline_frames": measured["pipeline_frames"],
                "cpu_ms_per_frame": measured["pipeline_cpu_ms_per_frame"],
                "frames_per_worker": sorted(measured["verdicts_by_processor"].values(), reverse=True),
                **{k: measured[k] for k in ("partitions_per_member", "frame_partitions", "replicas_seen", "group_state")},
            })
    result["work_dir"] = str(work)
    return result


def markdown(result: dict[str, Any]) -> str:
    kafka = result["kafka"]
    out = [f"Raw Kafka (produce + consume, no scoring), {result['brokers']} brokers: "
           + ", ".join(f"RF {rf} {k['kafka_fps']:.1f} frames/s" for rf, k in kafka.items()), "",
           "| workers | RF | frames/s | RF 3 / RF 1 | frame partitions per worker | frames per worker | "
           "broker CPU ms/frame |", "|---|---|---|---|---|---|---|"]
    by_key = {(r["workers"], r["replication_factor"]): r for r in result["runs"]}
    for r in result["runs"]:
        one = by_key.get((r["workers"], 1))
        ratio = f"{r['pipeline_fps'] / one['pipeline_fps']:.2f}" if one and r["replication_factor"] != 1 else ""
        partitions = " / ".join(map(str, r["partitions_per_member"])) + f" (of {r['frame_partitions']})"
        out.append(f"| {r['workers']} | {r['replication_factor']} (seen {','.join(map(str, r['replicas_seen']))}) | "
                   f"{r['pipeline_fps']:.1f} | {ratio} | {partitions} | "
                   f"{' / '.join(map(str, r['frames_per_worker']))} | "
                   f"{r['cpu_ms_per_frame'].get('kafka_broker', float('nan')):.1f} |")
    return "\n".join(out)


def write_outputs(result: dict[str, Any], json_path: str | None) -> None:
    write_report(result, json_path, markdown)
