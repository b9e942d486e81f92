#!/bin/sh
# What the official image's entry point does that the compose file relies on: on a first start (an empty PGDATA),
# a cluster whose superuser `postgres` has POSTGRES_PASSWORD, network logins by password (scram-sha-256), and the
# database POSTGRES_DB; then the server runs as the postgres user, listening on every address.
set -eu
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
if [ "${1:-}" = postgres ]; then
  mkdir -p "$PGDATA" /run/postgresql
  chown postgres:postgres "$PGDATA" /run/postgresql
  chmod 700 "$PGDATA"
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
      echo "Error: the database is uninitialized and POSTGRES_PASSWORD is not set" >&2
      exit 1
    fi
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    chown postgres "$pwfile"
    as_postgres initdb --username=postgres --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
      --auth-local=trust --auth-host=scram-sha-256 -D "$PGDATA"
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    database="${POSTGRES_DB:-postgres}"
    if [ "$database" != postgres ]; then
      as_postgres pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
      # psql interpolates :"db" (quoted as an identifier) in what it reads, not in -c.
      echo 'CREATE DATABASE :"db";' | as_postgres psql -v ON_ERROR_STOP=1 -v db="$database" -U postgres -d postgres
      as_postgres pg_ctl -D "$PGDATA" -m fast -w stop
    fi
  fi
  shift
  exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" "$@"
fi
exec "$@"
