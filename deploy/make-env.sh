#!/usr/bin/env sh
# Write deploy/.env with fresh random credentials for docker-compose.yml (once; never overwrites).
set -eu
cd "$(dirname "$0")"
if [ -e .env ]; then
    echo "deploy/.env exists; delete it first to make new credentials" >&2
    exit 1
fi
rand() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
umask 077
cat > .env <<ENV
# docker compose reads this file from the compose file's folder. Keep it out of git.
CLICKHOUSE_PASSWORD=$(rand 24)
S3_ACCESS_KEY=lg$(rand 9)
S3_SECRET_KEY=$(rand 30)
# A KRaft cluster id: 16 bytes, base64url without padding (fixed, so the data volume stays valid);
# a leading '-' would read as an option to kafka-storage, so it becomes 'A'.
KAFKA_CLUSTER_ID=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' | sed 's/^[-_]/A/')
ENV
echo "wrote deploy/.env"
