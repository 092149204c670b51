#!/usr/bin/env bash
# The cluster tests' services on loopback: a throw-away PostgreSQL cluster and a nats-server.
#
#   bash .ci/services.sh install   # Debian's nats-server and postgresql, if missing (root or sudo)
#   source .ci/services.sh start   # starts both, exports ZSERVER_TEST_POSTGRES and ZSERVER_TEST_NATS
#   bash .ci/services.sh stop      # stops both and removes their data
#
# Both listen on 127.0.0.1 only, on ports that can be overridden with ZSERVER_PG_PORT and
# ZSERVER_NATS_PORT; their data and logs live under ZSERVER_SERVICES_DIR (/tmp/zserver-services).

ZSERVER_SERVICES_DIR="${ZSERVER_SERVICES_DIR:-/tmp/zserver-services}"
ZSERVER_PG_PORT="${ZSERVER_PG_PORT:-55432}"
ZSERVER_NATS_PORT="${ZSERVER_NATS_PORT:-54222}"

zs_pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/initdb" ]; then
      echo "$dir"
      return
    fi
  done
  echo "PostgreSQL server binaries not found: run 'bash .ci/services.sh install'" >&2
  return 1
}

# Runs a PostgreSQL server program as the `postgres` user when we are root (it refuses root).
zs_as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

zs_install() {
  local missing=()
  command -v nats-server >/dev/null || missing+=(nats-server)
  zs_pg_bin >/dev/null 2>&1 || missing+=(postgresql)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]} from Debian's packages"
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
      sudo=(sudo -n)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # The packages' own services are not used (and must not hold our ports).
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl stop nats-server postgresql >/dev/null 2>&1 || true
  fi
}

zs_stop() {
  local pgbin
  if [ -f "$ZSERVER_SERVICES_DIR/nats.pid" ]; then
    kill "$(cat "$ZSERVER_SERVICES_DIR/nats.pid")" 2>/dev/null || true
  fi
  if [ -f "$ZSERVER_SERVICES_DIR/pg/postmaster.pid" ] && pgbin="$(zs_pg_bin 2>/dev/null)"; then
    zs_as_pg "$pgbin/pg_ctl" -D "$ZSERVER_SERVICES_DIR/pg" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$ZSERVER_SERVICES_DIR"
}

zs_start() {
  local pgbin i
  pgbin="$(zs_pg_bin)" || return 1
  command -v nats-server >/dev/null || {
    echo "nats-server not found: run 'bash .ci/services.sh install'" >&2
    return 1
  }
  zs_stop
  mkdir -p "$ZSERVER_SERVICES_DIR/pg"
  if [ "$(id -u)" = 0 ]; then
    chown -R postgres: "$ZSERVER_SERVICES_DIR/pg"
  fi
  zs_as_pg "$pgbin/initdb" -D "$ZSERVER_SERVICES_DIR/pg" -A trust -U zserver >/dev/null || return 1
  zs_as_pg "$pgbin/pg_ctl" -D "$ZSERVER_SERVICES_DIR/pg" -l "$ZSERVER_SERVICES_DIR/pg/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $ZSERVER_PG_PORT -k $ZSERVER_SERVICES_DIR/pg -c fsync=off -c max_connections=300" \
    start >/dev/null || { cat "$ZSERVER_SERVICES_DIR/pg/server.log" >&2; return 1; }
  nats-server -a 127.0.0.1 -p "$ZSERVER_NATS_PORT" -P "$ZSERVER_SERVICES_DIR/nats.pid" \
    -l "$ZSERVER_SERVICES_DIR/nats.log" &
  for i in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$ZSERVER_NATS_PORT") 2>/dev/null; then
      break
    fi
    sleep 0.1
  done
  export ZSERVER_TEST_POSTGRES="postgres://zserver@127.0.0.1:$ZSERVER_PG_PORT/postgres"
  export ZSERVER_TEST_NATS="nats://127.0.0.1:$ZSERVER_NATS_PORT"
  echo "services: PostgreSQL at $ZSERVER_TEST_POSTGRES, NATS at $ZSERVER_TEST_NATS"
}

case "${1:-}" in
  install) zs_install ;;
  start) zs_start ;;
  stop) zs_stop ;;
  *)
    echo "usage: bash .ci/services.sh install|stop, or: source .ci/services.sh start" >&2
    return 2 2>/dev/null || exit 2
    ;;
esac
