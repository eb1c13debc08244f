"""Helpers for tests that run lineguard components as real processes against the local stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, TypeVar

from confluent_kafka import Consumer, TopicPartition

from lineguard.config import KafkaConfig
from lineguard.kafka_admin import consumer_config

T = TypeVar("T")


class Component:
    """A ``lineguard ...`` subprocess with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "lineguard.cli", *args], env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def component_env(kafka_bootstrap: str, state_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")}
    env.update({"LINEGUARD_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap, "LINEGUARD_STATE_DIR": str(state_dir)})
    env.update(extra)
    return env


def read_topics(kafka: KafkaConfig, topic_names: list[str], decode: Callable[[bytes], T], expect: int,
                timeout_s: float = 120.0, settle_s: float = 2.0) -> list[T]:
    """Read every message of ``topic_names`` from the beginning with a throwaway group.

    Returns once ``expect`` messages were read and nothing more arrived for
    ``settle_s`` (so an excess shows up as a count above ``expect``), or at
    the timeout with what was read.
    """
    consumer = Consumer(consumer_config(kafka, f"test-reader-{uuid.uuid4().hex[:8]}", **{"enable.auto.commit": False}))
    consumer.subscribe(topic_names)
    out: list[T] = []
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                if len(out) >= expect and time.monotonic() - last_new > settle_s:
                    break
                continue
            if msg.error():
                continue
            out.append(decode(msg.value()))
            last_new = time.monotonic()
    finally:
        consumer.close()
    return out


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def committed_offsets(kafka: KafkaConfig, group: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer(consumer_config(kafka, group, **{"enable.auto.commit": False}))
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return [tp.offset for tp in tps]
    finally:
        consumer.close()
