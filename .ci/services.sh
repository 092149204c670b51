#!/usr/bin/env bash
# The cluster tests' services on loopback: a throw-away PostgreSQL cluster and a nats-server.
#
#   bash .ci/services.sh install   # Debian's nats-server and postgresql, if missing (root or sudo)
#   source .ci/services.sh start   # starts both, exports ZSERVER_TEST_POSTGRES and ZSERVER_TEST_NATS
#   bash .ci/services.sh stop      # stops both and removes their data
#
# Both listen on 127.0.0.1 only. Each takes the first free port from ZSERVER_PG_PORT (25432)
# and ZSERVER_NATS_PORT (24222) upwards: below Linux's ephemeral range, so no outgoing
# connection holds them, and the next one is tried if a port turns out to be taken. Their data
# and logs live under ZSERVER_SERVICES_DIR, by default a directory under /tmp of this checkout's
# own, so two checkouts on one machine do not stop each other's services.

ZSERVER_SERVICES_DIR="${ZSERVER_SERVICES_DIR:-/tmp/zserver-services-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd | cksum | cut -d' ' -f1)}"
ZSERVER_PG_PORT="${ZSERVER_PG_PORT:-25432}"
ZSERVER_NATS_PORT="${ZSERVER_NATS_PORT:-24222}"
# How many ports each service tries before giving up.
ZSERVER_PORT_TRIES=20

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

# True when something accepts connections on 127.0.0.1:$1.
zs_listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Prints the first port from $1 upwards on which nothing listens.
zs_free_port() {
  local port=$1
  while zs_listening "$port"; do
    port=$((port + 1))
  done
  echo "$port"
}

zs_install() {
  local missing=()
  # .ci/run starts an install in the background while Rust compiles; a second one (from
  # .ci/test) waits here for it instead of running apt-get beside it.
  exec 8>"${TMPDIR:-/tmp}/zserver-services-install.lock"
  flock 8
  command -v nats-server >/dev/null || missing+=(nats-server)
  zs_pg_bin >/dev/null 2>&1 || missing+=(postgresql)
  # tests/suite/wire.rs runs docs/PROTOCOL.md's Python client as printed.
  command -v python3 >/dev/null || missing+=(python3-minimal)
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

# Runs "$2 PORT" on the first free port from $1 upwards, then on the next ones while it fails,
# up to ZSERVER_PORT_TRIES ports; prints the port it succeeded on.
zs_on_free_port() {
  local port=$1 start=$2
  for _ in $(seq 1 "$ZSERVER_PORT_TRIES"); do
    port="$(zs_free_port "$port")"
    if "$start" "$port"; then
      echo "$port"
      return
    fi
    port=$((port + 1))
  done
  return 1
}

# Starts PostgreSQL (binaries in ZS_PGBIN) on port $1; shows the end of its log if it fails.
zs_pg_on() {
  local dir="$ZSERVER_SERVICES_DIR/pg"
  zs_as_pg "$ZS_PGBIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $1 -k $dir -c fsync=off -c max_connections=300" \
    start >/dev/null && return
  echo "PostgreSQL could not start on port $1:" >&2
  tail -n 5 "$dir/server.log" >&2
  return 1
}

# Starts nats-server on port $1 and waits until it listens; shows the end of its log if it
# fails.
zs_nats_on() {
  local pid i
  nats-server -a 127.0.0.1 -p "$1" -P "$ZSERVER_SERVICES_DIR/nats.pid" \
    -l "$ZSERVER_SERVICES_DIR/nats.log" </dev/null >/dev/null 2>&1 &
  pid=$!
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    zs_listening "$1" && return
    sleep 0.1
  done
  kill "$pid" 2>/dev/null || true
  echo "nats-server could not start on port $1:" >&2
  tail -n 5 "$ZSERVER_SERVICES_DIR/nats.log" >&2 2>/dev/null || true
  return 1
}

zs_start() {
  local pgbin pg_port nats_port
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
  pg_port="$(ZS_PGBIN="$pgbin" zs_on_free_port "$ZSERVER_PG_PORT" zs_pg_on)" || return 1
  nats_port="$(zs_on_free_port "$ZSERVER_NATS_PORT" zs_nats_on)" || return 1
  export ZSERVER_SERVICES_DIR
  export ZSERVER_TEST_POSTGRES="postgres://zserver@127.0.0.1:$pg_port/postgres"
  export ZSERVER_TEST_NATS="nats://127.0.0.1:$nats_port"
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
