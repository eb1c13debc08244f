#!/usr/bin/env sh
# Write deploy/.env and deploy/secrets/ for docker-compose.yml (once; never overwrites).
#
#   KAFKA_EXTERNAL_HOST=kafka.plant.example deploy/make-env.sh
#
# KAFKA_EXTERNAL_HOST is the name (or IP) cameras reach this host by: the brokers advertise it
# and their TLS certificate is issued for it. Secrets are files (compose `secrets:`), never
# environment values; deploy/secrets/ca.crt and camera_password go to the camera hosts.
set -eu
cd "$(dirname "$0")"
: "${KAFKA_EXTERNAL_HOST:?set KAFKA_EXTERNAL_HOST to the name cameras reach this host by}"
if [ -e .env ] || [ -e secrets ]; then
    echo "deploy/.env or deploy/secrets/ exists; delete both first to make new credentials" >&2
    exit 1
fi
command -v openssl > /dev/null || { echo "make-env.sh needs openssl (for the brokers' TLS certificate)" >&2; exit 1; }
rand() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
umask 077
mkdir secrets
cat > .env <<ENV
# docker compose reads this file from the compose file's folder. Keep it (and secrets/) out of git.
KAFKA_EXTERNAL_HOST=${KAFKA_EXTERNAL_HOST}
# A KRaft cluster id: 16 bytes, base64url without padding (fixed, so the data volumes stay valid);
# a leading '-' would read as an option to kafka-storage, so it becomes 'A'.
KAFKA_CLUSTER_ID=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' | sed 's/^[-_]/A/')
ENV

printf '%s' "$(rand 24)" > secrets/clickhouse_password
printf 'lg%s' "$(rand 9)" > secrets/s3_access_key
printf '%s' "$(rand 30)" > secrets/s3_secret_key
printf '%s\n' "$(rand 24)" > secrets/api_keys
printf '%s' "$(rand 16)" > secrets/grafana_admin_password
camera_password=$(rand 24)
printf '%s' "$camera_password" > secrets/camera_password
key_password=$(rand 24)

# A CA of this plant, and one certificate for the three brokers' external listener.
case "$KAFKA_EXTERNAL_HOST" in
    *[!0-9.]*) san="DNS:${KAFKA_EXTERNAL_HOST}" ;;
    *) san="IP:${KAFKA_EXTERNAL_HOST}" ;;
esac
openssl req -x509 -newkey rsa:3072 -nodes -days 3650 -subj "/CN=lineguard plant CA" \
    -keyout secrets/ca.key -out secrets/ca.crt 2> /dev/null
openssl req -newkey rsa:3072 -nodes -subj "/CN=${KAFKA_EXTERNAL_HOST}" \
    -keyout secrets/broker.key -out secrets/broker.csr 2> /dev/null
printf 'subjectAltName=%s,DNS:kafka-1,DNS:kafka-2,DNS:kafka-3\n' "$san" > secrets/broker.ext
openssl x509 -req -in secrets/broker.csr -CA secrets/ca.crt -CAkey secrets/ca.key -CAcreateserial \
    -days 825 -extfile secrets/broker.ext -out secrets/broker.crt 2> /dev/null
# Kafka's PEM key store: the encrypted PKCS#8 key, then the certificate chain.
openssl pkcs8 -topk8 -v2 aes-256-cbc -in secrets/broker.key -passout "pass:${key_password}" > secrets/kafka_broker.pem
cat secrets/broker.crt secrets/ca.crt >> secrets/kafka_broker.pem
rm -f secrets/broker.key secrets/broker.csr secrets/broker.ext secrets/broker.crt secrets/ca.srl

# Read by the brokers' FileConfigProvider (${file:...} in docker-compose.yml): the external
# listener's accounts and the key password stay out of the environment.
cat > secrets/kafka_external.properties <<PROPS
ssl.key.password=${key_password}
sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_camera="${camera_password}";
PROPS
# The containers run as other users than this one: readable, but only inside this folder (0700).
chmod 0644 secrets/*
chmod 0600 secrets/ca.key
echo "wrote deploy/.env and deploy/secrets/ (cameras need secrets/ca.crt and secrets/camera_password)"
