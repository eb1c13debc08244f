"""Camera keys chosen for their partition (benchmarks and fault tests spread frames over every partition)."""

from __future__ import annotations

import zlib

from lineguard.kafka import cameras_for_partitions, partition_of_key


def test_partition_of_key_is_crc32_of_the_key_like_librdkafkas_default_partitioner() -> None:
    assert partition_of_key("line1-cam0", 7) == zlib.crc32(b"line1-cam0") % 7
    assert {partition_of_key(f"k{i}", 3) for i in range(50)} == {0, 1, 2}


def test_cameras_for_partitions_cover_every_partition_once() -> None:
    for partitions in (1, 2, 4, 6):
        cameras = cameras_for_partitions("line7", 8, partitions)
        assert len(cameras) == partitions
        assert sorted(partition_of_key(c, partitions) for c in cameras) == list(range(partitions))
        assert all(c.startswith("line7-cam") for c in cameras)
    assert len(cameras_for_partitions("line7", 2, 6)) == 2  # never more cameras than asked for
