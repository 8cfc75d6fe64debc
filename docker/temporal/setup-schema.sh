#!/bin/sh
# One-shot (temporal-schema service): create or upgrade Temporal's PostgreSQL schemas.
# Every step is idempotent, so it runs on each `docker compose up`; a newer admin-tools image
# applies only the missing versioned migrations.
set -eu

host="${POSTGRES_HOST:-temporal-db}"
user="${POSTGRES_USER:-temporal}"
schemas=/etc/temporal/schema/postgresql/v12

sql() {
  temporal-sql-tool --plugin postgres12 --ep "$host" -p 5432 -u "$user" "$@"
}

for db in temporal temporal_visibility; do
  case "$db" in
    temporal) dir="$schemas/temporal/versioned" ;;
    *) dir="$schemas/visibility/versioned" ;;
  esac
  echo "schema for database $db"
  sql --db "$db" create
  sql --db "$db" setup-schema -v 0.0
  sql --db "$db" update-schema -d "$dir"
done
echo "Temporal schemas are up to date"
