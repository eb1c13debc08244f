"""A shadow trial on the real stack: v1 live and v2 in shadow on one line while frames flow, then v2 promoted
and rolled back without a restart. Every part is a real ``lineguard`` process (Kafka broker, faust
processor, chdb sinks, the CLI); the models travel through an object-store folder."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest

from lineguard.config import KafkaConfig
from lineguard.engines.training import train
from lineguard.harness import LocalPipeline
from lineguard.kafka import ensure_topics
from lineguard.producers.synthetic import SyntheticCamera
from lineguard.schemas import Verdict, topics
from lineguard.stores import ChdbStore

from pipeline_helpers import read_topics, wait_for

pytestmark = [pytest.mark.kafka]
POLL_S = 0.5


class Trial(LocalPipeline):
    def __init__(self, stack, root) -> None:
        tag = uuid.uuid4().hex[:6]
        self.root = root
        self.line = f"shadow{tag}"
        super().__init__(KafkaConfig(bootstrap_servers=stack.kafka_bootstrap), root / "state", [self.line],
                         group=f"processors-{tag}", log_dir=root / "logs",
                         LINEGUARD_SINKS__FLUSH_INTERVAL_MS="300",
                         LINEGUARD_SINKS__OBJECT_STORE__BACKEND="local",
                         LINEGUARD_SINKS__OBJECT_STORE__LOCAL_DIR=str(root / "bucket"),
                         LINEGUARD_PROCESSOR__MODEL_SOURCE="object_store",
                         LINEGUARD_PROCESSOR__MODEL_CACHE_DIR=str(root / "cache"),
                         LINEGUARD_PROCESSOR__MODEL_POLL_S=str(POLL_S))

    def cli(self, *args: str) -> str:
        return self.run(args[0] if args[0] != "models" else f"models-{args[1]}", list(args), timeout_s=300)

    def drain_sinks(self) -> None:
        """The verdict and shadow sinks, one after the other (one process at a time opens chdb), until idle."""
        for kind in ("clickhouse", "shadow"):
            comp = self.sink(kind, until_idle=4)
            assert comp.wait(240) == 0, comp.output()[-3000:]

    def query(self, sql: str, **params) -> list[dict]:
        store = ChdbStore(self.state_dir / "chdb")
        try:
            return store.query(sql, params)
        finally:
            store.close()

    def flow(self, count: int, seed: int, during=None, fps: float = 10.0) -> float:
        """``count`` frames at ``fps``; ``during`` run while they flow; returns when ``during`` finished (ns)."""
        camera = self.camera(self.line, "cam-1", count, fps=fps, size=128, defect_rate=0.3, seed=seed)
        done_ns = 0
        if during is not None:
            time.sleep(2.0)
            during()
            done_ns = time.time_ns()
        assert self.wait_producers([camera]) == count
        wait_for(self.scored, 240, "the processor to score every frame", watch=[self.worker])
        return done_ns


def _verdicts(p: Trial, topic: str, expect: int) -> list[Verdict]:
    return read_topics(p.kafka, [topic], Verdict.decode, expect=expect, timeout_s=120, settle_s=2)


@pytest.fixture(scope="module")
def trial(stack, tmp_path_factory):
    p = Trial(stack, tmp_path_factory.mktemp("shadow"))
    data = p.root / "data"
    SyntheticCamera(product="washer", size=128, seed=1).write_mvtec(data, n_train=30, n_test_good=2, n_test_defect=2)
    for version, rate in (("v1", 0.01), ("v2", 0.5)):  # v2 calibrated to a lower threshold: it disagrees now and then
        train("baseline", data, p.root / "builds" / version, name="washer", version=version,
              target_false_reject_rate=rate)
        p.cli("models", "push", str(p.root / "builds" / version), "--product", "washer")
    ensure_topics(p.kafka, p.lines)
    p.cli("models", "promote", "washer", "v1", "--reason", "first model", "--by", "alice")
    p.cli("models", "shadow", "--product", "washer", "--version", "v2", "--line", p.line, "--reason", "trial v2",
          "--by", "alice")
    p.worker = p.processor()
    yield p
    p.stop_all()


def test_shadow_trial_compare_promote_and_rollback(trial):
    p = trial
    sent = 0
    # 1. v1 live, v2 in shadow: the verdict topic carries v1 only, the shadow topic v2 for the same frames.
    p.flow(40, seed=11, fps=20)
    sent += 40
    live = _verdicts(p, topics.verdicts(p.line), sent)
    shadow = _verdicts(p, topics.shadow(p.line), sent)
    assert len(live) == sent and {v.model_version for v in live} == {"v1"}
    assert {v.model_version for v in shadow} == {"v2"} and {v.frame_id for v in shadow} == {v.frame_id for v in live}
    p.drain_sinks()
    rows = p.query("SELECT toString(frame_id) AS f, model_version AS m, is_defective AS d, score AS s "
                   "FROM lineguard.shadow_verdicts WHERE line_id = {l:String}", l=p.line)
    assert len(rows) == sent and {r["m"] for r in rows} == {"v2"}
    assert {r["f"].replace("-", "") for r in rows} == {v.frame_id for v in live}
    live_rows = {r["f"]: r["d"] for r in p.query(
        "SELECT toString(frame_id) AS f, is_defective AS d FROM lineguard.verdicts_latest WHERE line_id = {l:String}",
        l=p.line)}
    table = Counter((bool(live_rows[r["f"]]), bool(r["d"])) for r in rows)
    expected = {"both_pass": table[(False, False)], "both_defective": table[(True, True)],
                "live_only": table[(True, False)], "shadow_only": table[(False, True)]}
    out = p.cli("models", "compare", "--line", p.line)
    summary = next(line for line in out.splitlines() if line.startswith("compare:"))
    fields = dict(part.split("=", 1) for part in summary.split()[1:])
    assert {k: int(fields[k]) for k in expected} == expected, (summary, expected)
    assert int(fields["frames"]) == sent and fields["live"] == "v1" and fields["shadow"] == "v2"
    agreement = (expected["both_pass"] + expected["both_defective"]) / sent
    assert float(fields["agreement"]) == pytest.approx(agreement, abs=1e-4)
    print(f"shadow-e2e: phase=trial frames={sent} {summary}")

    # 2. v2 promoted while frames flow: no frame lost, later frames v2, the trial over.
    promote = lambda: p.cli("models", "promote", "washer", "v2", "--line", p.line,  # noqa: E731
                            "--reason", "agreement ok", "--by", "bob")
    promoted_ns = p.flow(100, seed=12, during=promote)
    sent += 100
    # 3. rolled back while frames flow: later frames v1 again.
    rollback = lambda: p.cli("models", "rollback", "washer", "--line", p.line,  # noqa: E731
                             "--reason", "false alarms", "--by", "carol")
    rolled_ns = p.flow(150, seed=13, during=rollback)
    sent += 150
    live = _verdicts(p, topics.verdicts(p.line), sent)
    assert len({v.frame_id for v in live}) == sent
    settle_ns = int((3 * POLL_S + 3) * 1e9)
    after_promote = [v for v in live if promoted_ns + settle_ns < v.captured_at_ns < rolled_ns - int(3e9)]
    after_rollback = [v for v in live if v.captured_at_ns > rolled_ns + settle_ns]
    assert len(after_promote) >= 10 and {v.model_version for v in after_promote} == {"v2"}
    assert len(after_rollback) >= 10 and {v.model_version for v in after_rollback} == {"v1"}
    shadow = _verdicts(p, topics.shadow(p.line), 0)
    assert not [v for v in shadow if v.captured_at_ns > promoted_ns + settle_ns]  # promoting ended the trial

    p.drain_sinks()
    [counts] = p.query("SELECT count() AS rows, uniqExact(frame_id) AS frames FROM lineguard.verdicts "
                       "WHERE line_id = {l:String}", l=p.line)
    assert counts == {"rows": sent, "frames": sent}, counts
    versions = Counter(v.model_version for v in live)
    events = p.query("SELECT action, line_id, version, previous_version, by, reason FROM lineguard.model_events "
                     "ORDER BY event_at_ns")
    assert [tuple(e.values()) for e in events] == [
        ("promote", "", "v1", "", "alice", "first model"),
        ("shadow", p.line, "v2", "", "alice", "trial v2"),
        ("promote", p.line, "v2", "v1", "bob", "agreement ok"),
        ("rollback", p.line, "v1", "v2", "carol", "false alarms"),
    ]
    print(f"shadow-e2e: phase=promote+rollback frames_sent={sent} verdict_rows={counts['rows']} "
          f"distinct_frames={counts['frames']} versions={dict(versions)} after_promote_v2={len(after_promote)} "
          f"after_rollback_v1={len(after_rollback)} model_events={len(events)}")
