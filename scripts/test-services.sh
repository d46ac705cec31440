#!/usr/bin/env bash
# Brings up everything the tests need, idempotently, on a fresh Debian 12 machine:
# packages, and two private MariaDB instances (never the system one on 3306):
#   source  127.0.0.1:${BA_SRC_PORT:-33061}  binlog on, server-id 1  (what gets backed up)
#   target  127.0.0.1:${BA_DST_PORT:-33062}  binlog off              (where restores go)
# Both: max_allowed_packet=64M, an admin account test_admin/test (TCP) for the tests.
# S3 servers:
#   moto    127.0.0.1:${BA_MOTO_PORT:-33090}    (Object Lock semantics; never checks checksums)
# Galera  a 3-node cluster on 127.0.0.1:$((BA_GALERA_BASE+1..3)) (default 33081-33083; gcomm,
#         IST and SST ports BASE+1001.., +1011.., +1021..), data under $BA_TEST_DIR/galera;
#         `galera-up` heals it (continues stopped nodes, restarts dead ones) for the tests
#   Garage  127.0.0.1:${BA_GARAGE_PORT:-33091}  (a real store: checks checksums; bucket
#           "backups", key in $BA_TEST_DIR/garage-key-id / garage-secret; the garage binary
#           is built once with cargo install and cached under $BA_TEST_DIR/garage)
# Writes the addresses to $BA_TEST_DIR/env, which the tests read.
#
# Usage: scripts/test-services.sh [up|galera-up|down|status]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BA_LOG_TAG=test-services
. "$here/lib/mariadb.sh"
. "$here/lib/galera.sh"

BA_TEST_DIR=${BA_TEST_DIR:-/var/tmp/backup-agent-test}
SRC_PORT=${BA_SRC_PORT:-33061}
DST_PORT=${BA_DST_PORT:-33062}
ADMIN_PASSWORD=test

MOTO_PORT=${BA_MOTO_PORT:-33090}
GARAGE_PORT=${BA_GARAGE_PORT:-33091}
GALERA_BASE=${BA_GALERA_BASE:-33080}
GALERA_DIR=$BA_TEST_DIR/galera

# Our fixed ports lie in Linux's ephemeral range (32768-60999): a client connection of any
# test can be given one of them as its local port, and a Galera node restarting a moment
# later cannot bind its SST port ("rsync daemon terminated unexpectedly"). Reserve them.
reserve_ports() {
  local f=/proc/sys/net/ipv4/ip_local_reserved_ports cur
  local want="33060-33100,$((GALERA_BASE + 1000))-$((GALERA_BASE + 1540))"
  cur=$(cat "$f" 2>/dev/null || true)
  echo "${cur:+$cur,}$want" >"$f" 2>/dev/null ||
    ba_log "note: could not reserve ports $want ($f not writable); a port clash makes a node restart retry"
}

galera_up() {
  reserve_ports
  dpkg -s galera-4 >/dev/null 2>&1 || { ba_log "installing galera-4"; DEBIAN_FRONTEND=noninteractive apt-get install -y -q galera-4 rsync socat >/dev/null; }
  mkdir -p "$BA_TEST_DIR"
  # One healer at a time (a test's heal and a concurrent `up` would start the same node).
  (
    flock 9
    ba_galera_up "$GALERA_DIR" "$GALERA_BASE"
    ba_galera_admin "$GALERA_DIR" "$ADMIN_PASSWORD"
  ) 9>"$BA_TEST_DIR/galera.lock"
}
GARAGE_VERSION=2.5.0
GARAGE_BIN=$BA_TEST_DIR/garage/bin/garage
GARAGE_CFG=$BA_TEST_DIR/garage.toml

garage() { "$GARAGE_BIN" -c "$GARAGE_CFG" "$@"; }

start_garage() {
  if [ ! -x "$GARAGE_BIN" ] || ! "$GARAGE_BIN" --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
    ba_log "building garage $GARAGE_VERSION once (cargo install, ~10 min on 2 cores; cached in $BA_TEST_DIR/garage)"
    CARGO_TARGET_DIR=$BA_TEST_DIR/garage-build cargo install garage --version "$GARAGE_VERSION" --locked \
      --root "$BA_TEST_DIR/garage" >"$BA_TEST_DIR/garage-build.log" 2>&1 \
      || { tail -20 "$BA_TEST_DIR/garage-build.log" >&2; exit 1; }
    rm -rf "$BA_TEST_DIR/garage-build"
  fi
  if [ ! -f "$GARAGE_CFG" ]; then
    mkdir -p "$BA_TEST_DIR/garage-data/meta" "$BA_TEST_DIR/garage-data/data"
    cat >"$GARAGE_CFG" <<TOML
metadata_dir = "$BA_TEST_DIR/garage-data/meta"
data_dir = "$BA_TEST_DIR/garage-data/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$((GARAGE_PORT + 1))"
rpc_public_addr = "127.0.0.1:$((GARAGE_PORT + 1))"
rpc_secret = "$(openssl rand -hex 32)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$GARAGE_PORT"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$((GARAGE_PORT + 2))"
TOML
  fi
  if ! curl -s -o /dev/null "http://127.0.0.1:$GARAGE_PORT/" 2>/dev/null; then
    ba_log "starting garage on 127.0.0.1:$GARAGE_PORT"
    setsid nohup "$GARAGE_BIN" -c "$GARAGE_CFG" server >"$BA_TEST_DIR/garage.log" 2>&1 </dev/null &
    for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$GARAGE_PORT/" 2>/dev/null && break; sleep 0.1; done
  fi
  # Layout, key and bucket (idempotent).
  for _ in $(seq 1 50); do garage status >/dev/null 2>&1 && break; sleep 0.2; done
  local layout
  layout=$(garage layout show 2>/dev/null || true)
  if [[ "$layout" == *"No nodes currently have a role"* ]]; then
    local node
    node=$(garage node id -q 2>/dev/null | cut -d@ -f1)
    garage layout assign -z dc1 -c 1G "$node" >/dev/null
    garage layout apply --version 1 >/dev/null
    for _ in $(seq 1 50); do garage key list >/dev/null 2>&1 && break; sleep 0.2; done
  fi
  if [ ! -s "$BA_TEST_DIR/garage-secret" ]; then
    local out
    out=$(garage key create test-key)
    echo "$out" | sed -n 's/^Key ID: *//p' | tr -d ' \n' >"$BA_TEST_DIR/garage-key-id"
    echo "$out" | sed -n 's/^Secret key: *//p' | tr -d ' \n' >"$BA_TEST_DIR/garage-secret"
    chmod 600 "$BA_TEST_DIR/garage-secret"
  fi
  garage bucket info backups >/dev/null 2>&1 || garage bucket create backups >/dev/null
  garage bucket allow --read --write --owner backups --key "$(cat "$BA_TEST_DIR/garage-key-id")" >/dev/null
  [ -s "$BA_TEST_DIR/garage-key-id" ] || { ba_log "garage key setup failed; see $BA_TEST_DIR/garage.log"; exit 1; }
}

case "${1:-up}" in
  up)
    ba_need_packages test
    # promtool and a real Prometheus for the shipped alert rules (monitoring/prometheus).
    command -v promtool >/dev/null 2>&1 || {
      ba_log "installing prometheus (promtool, rules tests)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
    }
    reserve_ports
    mkdir -p "$BA_TEST_DIR"
    ba_start_instance "$BA_TEST_DIR/source" "$SRC_PORT" 1 1 "$ADMIN_PASSWORD"
    ba_start_instance "$BA_TEST_DIR/target" "$DST_PORT" 2 0 "$ADMIN_PASSWORD"
    # Python venv for the SMTP sink (Debian's Python is externally managed).
    if ! "$BA_TEST_DIR/venv/bin/python" -c 'import aiosmtpd' >/dev/null 2>&1; then
      ba_log "creating the Python venv with aiosmtpd"
      command -v python3 >/dev/null 2>&1 || apt-get install -y -q python3 >/dev/null
      python3 -m venv "$BA_TEST_DIR/venv" 2>/dev/null || { apt-get install -y -q python3-venv >/dev/null && python3 -m venv "$BA_TEST_DIR/venv"; }
      "$BA_TEST_DIR/venv/bin/pip" install -q aiosmtpd
    fi
    command -v openssl >/dev/null 2>&1 || apt-get install -y -q openssl >/dev/null
    # moto server (S3 with Object Lock), in the same venv.
    if [ ! -x "$BA_TEST_DIR/venv/bin/moto_server" ]; then
      ba_log "installing moto into the venv"
      "$BA_TEST_DIR/venv/bin/pip" install -q 'moto[s3,server]' flask flask-cors
    fi
    # The offline Kubernetes schema validator (deploy/kubernetes), in the same venv.
    if [ ! -x "$BA_TEST_DIR/venv/bin/kubernetes-validate" ]; then
      ba_log "installing kubernetes-validate into the venv"
      "$BA_TEST_DIR/venv/bin/pip" install -q kubernetes-validate
    fi
    if ! curl -fsS -o /dev/null "http://127.0.0.1:$MOTO_PORT/" 2>/dev/null; then
      ba_log "starting moto on 127.0.0.1:$MOTO_PORT"
      setsid nohup "$BA_TEST_DIR/venv/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" \
        >"$BA_TEST_DIR/moto.log" 2>&1 </dev/null &
      for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:$MOTO_PORT/" 2>/dev/null && break; sleep 0.1; done
      curl -fsS -o /dev/null "http://127.0.0.1:$MOTO_PORT/" || { ba_log "moto did not start; see $BA_TEST_DIR/moto.log"; exit 1; }
    fi
    start_garage
    galera_up
    cat >"$BA_TEST_DIR/env" <<ENV
BA_SRC_PORT=$SRC_PORT
BA_DST_PORT=$DST_PORT
BA_ADMIN_USER=test_admin
BA_ADMIN_PASSWORD=$ADMIN_PASSWORD
BA_PYTHON=$BA_TEST_DIR/venv/bin/python
BA_MOTO_SERVER=$BA_TEST_DIR/venv/bin/moto_server
BA_MOTO_URL=http://127.0.0.1:$MOTO_PORT
BA_GARAGE_URL=http://127.0.0.1:$GARAGE_PORT
BA_GARAGE_BUCKET=backups
BA_GARAGE_KEY_ID_FILE=$BA_TEST_DIR/garage-key-id
BA_GARAGE_SECRET_FILE=$BA_TEST_DIR/garage-secret
BA_GALERA_BASE=$GALERA_BASE
BA_GALERA_DIR=$GALERA_DIR
BA_SERVICES=$here/test-services.sh
ENV
    ba_log "ready (addresses in $BA_TEST_DIR/env)"
    ;;
  galera-up)
    galera_up
    ;;
  down)
    ba_galera_down "$GALERA_DIR"
    pkill -f "moto_server -H 127.0.0.1 -p $MOTO_PORT" || true
    pkill -f "$GARAGE_BIN -c $GARAGE_CFG server" || true
    ba_stop_instance "$BA_TEST_DIR/source"
    ba_stop_instance "$BA_TEST_DIR/target"
    ;;
  status)
    for n in source target; do
      if mariadb-admin --socket="$BA_TEST_DIR/$n/mysqld.sock" -uroot ping >/dev/null 2>&1; then echo "$n: up"; else echo "$n: down"; fi
    done
    ;;
  *) echo "usage: $0 [up|galera-up|down|status]" >&2; exit 2 ;;
esac
