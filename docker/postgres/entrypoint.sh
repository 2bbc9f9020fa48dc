#!/bin/sh
# First start: a cluster in $PGDATA with the `cast` role (password
# $CAST_DB_PASSWORD, scram-sha-256 over TCP) owning the database `cast`. Every
# start: PostgreSQL in the foreground, listening on all addresses.
set -eu
: "${CAST_DB_PASSWORD:?set CAST_DB_PASSWORD}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "$CAST_DB_PASSWORD" > "$pwfile"
    initdb -D "$PGDATA" -U cast --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    cat >> "$PGDATA/postgresql.conf" <<CONF
listen_addresses = '*'
max_connections = 200
shared_buffers = 128MB
CONF
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    createdb -U cast cast
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec postgres -D "$PGDATA"
