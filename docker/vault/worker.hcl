# Lakeward worker: reads its own secrets and its dynamic database credentials, nothing else.
# Path layout (docs/secrets.md):
#   secret/data/lakeward/worker/*   KV v2: MongoDB URIs and passwords, Kafka SASL, object-store keys
#   secret/data/lakeward/shared/*   KV v2: what the worker and the API both need (payload key)
#   database/creds/lakeward-*       dynamic credentials (database engine roles named lakeward-*)

path "secret/data/lakeward/worker/*" {
  capabilities = ["read"]
}

path "secret/data/lakeward/shared/*" {
  capabilities = ["read"]
}

path "database/creds/lakeward-*" {
  capabilities = ["read"]
}

# Renewing the leases of those credentials (a lease id names its creds path).
path "sys/leases/renew" {
  capabilities = ["update"]
}

# Its own login token: renew it and look it up (also in Vault's default policy).
path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
