"""Object stores and heatmap key checks (no Kafka); S3Store against the stack's real S3 server."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from lineguard.schemas import SchemaError, topics
from lineguard.stores import LocalFolderStore, S3Store, check_key

PNG = b"\x89PNG\r\n\x1a\n" + b"not really a png, but bytes are bytes"


def test_local_store_writes_atomically_and_overwrites(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path / "heatmaps")
    key = topics.heatmap_key("line1", "f00d", 1_714_978_800 * 10**9)
    store.put(key, PNG, "image/png")
    target = tmp_path / "heatmaps" / "line1" / "2024" / "05" / "06" / "f00d.png"
    assert target.read_bytes() == PNG
    store.put(key, b"second version", "image/png")  # a replay overwrites in place
    assert target.read_bytes() == b"second version"
    # No temporary files left behind next to the object.
    assert os.listdir(target.parent) == ["f00d.png"]


def test_local_store_refuses_keys_outside_its_root(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path / "root")
    with pytest.raises(ValueError, match="escapes"):
        store.put("../outside.png", PNG, "image/png")
    assert not (tmp_path / "outside.png").exists()


@pytest.mark.parametrize(
    "key",
    [
        "../line1/2024/05/06/x.png",
        "line1/../../etc/passwd",
        "/line1/2024/05/06/x.png",
        "line1/2024//x.png",
        "line1\\2024\\x.png",
        "line2/2024/05/06/x.png",  # another line's folder
        "line1",
        "line1/2024/05/06/x .png",
    ],
)
def test_check_key_rejects_unsafe_or_foreign_keys(key: str) -> None:
    with pytest.raises(SchemaError) as info:
        check_key(key, "line1")
    assert info.value.reason == "invalid_field"


def test_check_key_accepts_the_processor_layout() -> None:
    key = topics.heatmap_key("line-1_b", uuid.uuid4().hex, 1_714_978_800 * 10**9)
    assert check_key(key, "line-1_b") == key


@pytest.mark.s3
def test_s3_store_creates_the_bucket_and_stores_content_type(stack) -> None:  # noqa: ANN001
    from minio import Minio

    bucket = f"lg-test-{uuid.uuid4().hex[:10]}"
    store = S3Store(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key, bucket)
    key = topics.heatmap_key("line1", "abc", 1_714_978_800 * 10**9)
    store.put(key, PNG, "image/png")
    store.put(key, PNG, "image/png")  # replay: same key, still one object
    S3Store(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key, bucket)  # bucket exists: fine

    client = Minio(stack.s3_endpoint.split("://")[-1], access_key=stack.s3_access_key,
                   secret_key=stack.s3_secret_key, secure=False)
    objects = list(client.list_objects(bucket, recursive=True))
    assert [o.object_name for o in objects] == [key]
    stat = client.stat_object(bucket, key)
    assert stat.content_type == "image/png"
    assert client.get_object(bucket, key).read() == PNG
    assert stack.s3_secret_key not in repr(store)
