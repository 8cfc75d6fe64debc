# Lakeward API: reads its own secrets and the shared ones; no database credentials.
# Path layout (docs/secrets.md):
#   secret/data/lakeward/api/*      KV v2: API tokens' pepper, bootstrap admin token
#   secret/data/lakeward/shared/*   KV v2: what the worker and the API both need (payload key)

path "secret/data/lakeward/api/*" {
  capabilities = ["read"]
}

path "secret/data/lakeward/shared/*" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
