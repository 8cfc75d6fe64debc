#!/bin/sh
# One-shot (temporal-init service): the namespace Lakeward uses and its custom search attributes,
# as `lakeward stack up` registers them on the dev server. Idempotent: it creates only what is
# missing, so it runs on each `docker compose up`.
set -eu

address="${TEMPORAL_ADDRESS:-temporal:7233}"
namespace="${TEMPORAL_NAMESPACE:-default}"
attributes="${SEARCH_ATTRIBUTES:?SEARCH_ATTRIBUTES must list Name=Type pairs}"

# The CLI sometimes fails to dial a compose host name that also resolves to IPv6; use IPv4.
host="${address%:*}"
port="${address##*:}"
ip="$(getent ahostsv4 "$host" | awk 'NR == 1 { print $1 }')"
address="${ip:-$host}:$port"

retry() {
  # retry DESCRIPTION COMMAND...: up to 60 tries, 2 s apart (the frontend and the namespace
  # cache need a few seconds after the port opens).
  what="$1"
  shift
  tries=0
  until "$@"; do
    tries=$((tries + 1))
    if [ "$tries" -ge 60 ]; then
      echo "giving up: $what (Temporal at $address)" >&2
      exit 1
    fi
    sleep 2
  done
}

retry "cluster health" temporal operator cluster health --address "$address"

if ! temporal operator namespace describe --namespace "$namespace" --address "$address" >/dev/null 2>&1; then
  retry "create namespace $namespace" \
    temporal operator namespace create --namespace "$namespace" --retention 72h --address "$address"
fi

existing() {
  temporal operator search-attribute list --namespace "$namespace" --address "$address" 2>/dev/null
}

for pair in $(echo "$attributes" | tr ',' ' '); do
  name="${pair%%=*}"
  type="${pair#*=}"
  if existing | awk '{ print $1 }' | grep -qx "$name"; then
    echo "search attribute $name exists"
    continue
  fi
  retry "create search attribute $name" \
    temporal operator search-attribute create --namespace "$namespace" \
    --name "$name" --type "$type" --address "$address"
done
echo "namespace $namespace has search attributes: $attributes"
