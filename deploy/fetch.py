"""Fetching the stack's software into the cache, and checking the tools that needs.

Kafka is assembled from Maven Central (``deploy/kafka/pom.xml``) into
``<cache>/kafka-<version>/libs``; the S3 server is versitygw, built with
``go install`` into ``<cache>/versitygw-<version>/``. One folder per version,
so a version bump in the settings fetches anew; a lock per download lets
several stacks share one cache.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .processes import StackError, file_lock, log, require_tool, run_logged

POM_PATH = Path(__file__).resolve().parent / "kafka" / "pom.xml"
VERSITYGW_MODULE = "github.com/versity/versitygw/cmd/versitygw"
KAFKA_MIN_JAVA = 17  # Kafka 4.x brokers need Java 17+
JAVA_HINT = "a Java 17+ runtime (e.g. `apt-get install openjdk-17-jre-headless`)"


@dataclass(frozen=True)
class FetchTimes:
    kafka_s: float
    versitygw_s: float | None


class Downloads:
    """Kafka's jars and the versitygw binary of the given versions, under ``cache_dir``."""

    def __init__(self, cache_dir: Path, kafka_version: str, versitygw_version: str) -> None:
        self.cache_dir = cache_dir
        self.kafka_version = kafka_version
        self.versitygw_version = versitygw_version

    @property
    def kafka_libs(self) -> Path:
        return self.cache_dir / f"kafka-{self.kafka_version}" / "libs"

    @property
    def versitygw_bin(self) -> Path:
        return self.cache_dir / f"versitygw-{self.versitygw_version}" / "versitygw"

    def check_prerequisites(self, with_s3: bool = True) -> None:
        """Raise one StackError naming every missing tool, before any slow step starts."""
        needed = {"java": JAVA_HINT}
        if not (self.kafka_libs / ".complete").exists():
            needed["mvn"] = "Maven 3, to fetch Kafka from Maven Central (e.g. `apt-get install maven`)"
        if with_s3 and not self.versitygw_bin.exists():
            needed["go"] = "Go >= 1.24, to build the versitygw S3 server (or start with --no-s3)"
        missing = [f"`{tool}` not found on PATH: install {hint}" for tool, hint in needed.items()
                   if shutil.which(tool) is None]
        if missing:
            raise StackError("cannot start the local stack:\n  " + "\n  ".join(missing))
        java_major = _java_major(shutil.which("java") or "java")
        if java_major < KAFKA_MIN_JAVA:
            raise StackError(f"Kafka {self.kafka_version} needs Java {KAFKA_MIN_JAVA}+, found Java {java_major}")

    def fetch(self, with_s3: bool = True) -> FetchTimes:
        """Download Kafka's jars and build versitygw where missing; quick when cached."""
        started = time.monotonic()
        self.fetch_kafka()
        kafka_s = time.monotonic() - started
        versitygw_s = None
        if with_s3:
            started = time.monotonic()
            self.fetch_versitygw()
            versitygw_s = time.monotonic() - started
        return FetchTimes(kafka_s, versitygw_s)

    def fetch_kafka(self) -> Path:
        done_marker = self.kafka_libs / ".complete"
        if done_marker.exists():
            return self.kafka_libs
        mvn = require_tool("mvn", "install Maven 3 (e.g. `apt-get install maven`) to fetch Kafka from Maven Central")
        with file_lock(self.cache_dir / ".fetch-kafka.lock"):
            if done_marker.exists():  # another process fetched it while we waited
                return self.kafka_libs
            log.info("fetching Kafka %s from Maven Central into %s", self.kafka_version, self.kafka_libs)
            staging = self.kafka_libs.with_name("libs.partial")
            shutil.rmtree(staging, ignore_errors=True)
            run_logged(
                [
                    mvn, "-q", "-B", "-f", str(POM_PATH), "dependency:copy-dependencies",
                    f"-Dkafka.version={self.kafka_version}", f"-DoutputDirectory={staging}",
                ],
                f"mvn fetching kafka_2.13:{self.kafka_version}",
            )
            if not (staging / f"kafka_2.13-{self.kafka_version}.jar").exists():
                raise StackError(f"mvn finished but {staging} holds no kafka_2.13-{self.kafka_version}.jar")
            shutil.rmtree(self.kafka_libs, ignore_errors=True)
            staging.rename(self.kafka_libs)
            done_marker.touch()
        return self.kafka_libs

    def fetch_versitygw(self) -> Path:
        if self.versitygw_bin.exists():
            return self.versitygw_bin
        go = require_tool("go", "install Go >= 1.24 to build the versitygw S3 server (or use --no-s3)")
        with file_lock(self.cache_dir / ".fetch-versitygw.lock"):
            if self.versitygw_bin.exists():
                return self.versitygw_bin
            log.info("building versitygw %s with go install (a few minutes the first time)", self.versitygw_version)
            gobin = self.versitygw_bin.parent
            gobin.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "GOBIN": str(gobin), "GOFLAGS": "-buildvcs=false"}
            # Run outside any Go module so `go install pkg@version` ignores a go.mod in the cwd.
            run_logged([go, "install", f"{VERSITYGW_MODULE}@{self.versitygw_version}"],
                       "go install versitygw", env=env, cwd=self.cache_dir)
        return self.versitygw_bin


def _java_major(java: str) -> int:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise StackError(f"cannot read the Java version from: {out.strip()[:200]}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8" style means 8
