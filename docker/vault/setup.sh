#!/usr/bin/env bash
# Sets Vault (compose, --profile security) up for Lakeward: the worker and API policies, AppRole
# roles for both, and dynamic MongoDB credentials through Vault's MongoDB database plugin.
# Step by step with explanations: docs/secrets.md. Idempotent: run it again after a change.
#
#   VAULT_ADDR       default http://127.0.0.1:8200
#   VAULT_TOKEN      an admin token (compose dev mode: VAULT_DEV_ROOT_TOKEN from .env)
#   MONGO_ADMIN_PASSWORD  password of `vault-admin` (userAdminAnyDatabase), which Vault creates
#                    and drops the capture users with (docs/secrets.md, step 2)
#   MONGO_URL        how Vault reaches MongoDB, default mongo:27017 (inside compose)
#   LAKEWARD_DATABASES  space-separated databases the capture role may read, default "shop"
#   CREDS_TTL / CREDS_MAX_TTL  lease TTLs of the capture credentials, default 1h / 24h
#   OUT_DIR          where the AppRole ids are written (mode 0600), default .lakeward/vault
set -euo pipefail

: "${VAULT_ADDR:=http://127.0.0.1:8200}"
: "${VAULT_TOKEN:?set VAULT_TOKEN to an admin token}"
: "${MONGO_ADMIN_PASSWORD:?set MONGO_ADMIN_PASSWORD (the vault-admin MongoDB user)}"
: "${MONGO_URL:=mongo:27017}"
: "${LAKEWARD_DATABASES:=shop}"
: "${CREDS_TTL:=1h}"
: "${CREDS_MAX_TTL:=24h}"
: "${OUT_DIR:=.lakeward/vault}"
export VAULT_ADDR VAULT_TOKEN

here=$(cd "$(dirname "$0")" && pwd)
vault=$(command -v vault || command -v bao || true)
[[ -n $vault ]] || { echo "setup.sh: needs the vault (or bao) CLI" >&2; exit 1; }

"$vault" policy write lakeward-worker "$here/worker.hcl"
"$vault" policy write lakeward-api "$here/api.hcl"

"$vault" auth list -format=json | grep -q '"approle/"' || "$vault" auth enable approle
umask 077
mkdir -p "$OUT_DIR"
for who in worker api; do
  "$vault" write "auth/approle/role/lakeward-$who" token_policies="lakeward-$who" \
    token_ttl=1h token_max_ttl=24h secret_id_ttl=0 >/dev/null
  "$vault" read -field=role_id "auth/approle/role/lakeward-$who/role-id" >"$OUT_DIR/$who-role-id"
  "$vault" write -f -field=secret_id "auth/approle/role/lakeward-$who/secret-id" \
    >"$OUT_DIR/$who-secret-id"
done

"$vault" secrets list -format=json | grep -q '"database/"' || "$vault" secrets enable database
roles=""
for db in $LAKEWARD_DATABASES; do
  roles+="${roles:+, }{\"role\": \"read\", \"db\": \"$db\"}"
done
"$vault" write database/config/lakeward-mongo plugin_name=mongodb-database-plugin \
  allowed_roles="lakeward-*" \
  connection_url="mongodb://{{username}}:{{password}}@$MONGO_URL/admin?directConnection=true" \
  username=vault-admin password="$MONGO_ADMIN_PASSWORD"
"$vault" write database/roles/lakeward-capture db_name=lakeward-mongo \
  creation_statements="{\"db\": \"admin\", \"roles\": [$roles]}" \
  default_ttl="$CREDS_TTL" max_ttl="$CREDS_MAX_TTL"

echo "done. worker: LAKEWARD_VAULT_ROLE_ID=$(cat "$OUT_DIR/worker-role-id")" \
  "LAKEWARD_VAULT_SECRET_ID=file:$OUT_DIR/worker-secret-id"
echo "spec: username: vault:database/creds/lakeward-capture#username," \
  "password: vault:database/creds/lakeward-capture#password"
