"""Container health checks: ``python -m lineguard.deploy.healthcheck [--http URL] [--kafka] [--clickhouse] [--s3]``.

Used by deploy/docker-compose.yml. Each check reads the same settings as the
service (``LINEGUARD_*`` environment), so a container is healthy only when it
can reach what it actually uses. Exit 0 when every requested check passes,
1 otherwise, with one line per failure on stdout (docker keeps it in
``docker inspect``'s health log).
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from collections.abc import Callable

from lineguard.config import Settings, load_settings

TIMEOUT_S = 5.0


def check_http(url: str) -> None:
    """The service's own endpoint answers 2xx (a processor's or sink's /ready, the API's /health)."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 - a fixed local URL
        if not 200 <= response.status < 300:
            raise RuntimeError(f"{url} answered {response.status}")


def check_kafka(settings: Settings) -> None:
    from lineguard.kafka import admin_client

    admin = admin_client(settings.kafka, log_level=0)
    if not admin.list_topics(timeout=TIMEOUT_S).brokers:
        raise RuntimeError(f"no broker in the metadata of {settings.kafka.bootstrap_servers}")


def check_clickhouse(settings: Settings) -> None:
    cfg = settings.sinks.clickhouse
    if cfg.backend != "server":
        return  # embedded chdb: nothing to reach
    with urllib.request.urlopen(cfg.url.rstrip("/") + "/ping", timeout=TIMEOUT_S) as response:  # noqa: S310
        if response.read().strip() != b"Ok.":
            raise RuntimeError(f"{cfg.url}/ping did not answer Ok.")


def check_s3(settings: Settings) -> None:
    import urllib3
    from minio import Minio

    cfg = settings.sinks.object_store
    if cfg.backend != "s3":
        return  # local folder: nothing to reach
    access, secret = cfg.credentials()
    client = Minio(cfg.endpoint, access_key=access, secret_key=secret, secure=cfg.secure, region=cfg.region,
                   http_client=urllib3.PoolManager(timeout=TIMEOUT_S, retries=False))
    client.list_buckets()  # proves the address and the credentials


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lineguard.deploy.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--http", metavar="URL", help="GET this URL and expect 2xx")
    parser.add_argument("--kafka", action="store_true", help="the brokers answer metadata requests")
    parser.add_argument("--clickhouse", action="store_true", help="the ClickHouse server answers /ping")
    parser.add_argument("--s3", action="store_true", help="the S3 server accepts the configured keys")
    args = parser.parse_args(argv)

    settings = load_settings()
    checks: list[tuple[str, Callable[[], None]]] = []
    if args.http:
        checks.append(("http", lambda: check_http(args.http)))
    if args.kafka:
        checks.append(("kafka", lambda: check_kafka(settings)))
    if args.clickhouse:
        checks.append(("clickhouse", lambda: check_clickhouse(settings)))
    if args.s3:
        checks.append(("s3", lambda: check_s3(settings)))
    if not checks:
        parser.error("name at least one check")

    failed = 0
    for name, check in checks:
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - any failure makes the container unhealthy
            print(f"unhealthy: {name}: {exc}")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
