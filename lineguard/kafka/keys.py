"""Message keys chosen for where they land: the default partitioner of librdkafka hashes a
message's key with CRC-32, so a key's partition is known before it is sent."""

from __future__ import annotations

import zlib


def partition_of_key(key: str, partitions: int) -> int:
    """The partition librdkafka's default partitioner (``consistent_random``) gives ``key``."""
    return zlib.crc32(key.encode()) % partitions


def cameras_for_partitions(line: str, n: int, partitions: int) -> list[str]:
    """Up to ``n`` camera ids for ``line`` whose keys land on distinct partitions, so that frames
    spread over every partition (benchmarks and fault tests that want each worker to get work)."""
    chosen: dict[int, str] = {}
    k = 0
    while len(chosen) < min(n, partitions):
        camera = f"{line}-cam{k}"
        chosen.setdefault(partition_of_key(camera, partitions), camera)
        k += 1
    return list(chosen.values())
