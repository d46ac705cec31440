#!/usr/bin/env bash
# Brings up everything the tests need, idempotently, on a fresh Debian 12 machine:
# packages, and two private MariaDB instances (never the system one on 3306):
#   source  127.0.0.1:${BA_SRC_PORT:-33061}  binlog on, server-id 1  (what gets backed up)
#   target  127.0.0.1:${BA_DST_PORT:-33062}  binlog off              (where restores go)
# Both: max_allowed_packet=64M, an admin account test_admin/test (TCP) for the tests.
# Writes the addresses to $BA_TEST_DIR/env, which the tests read (or their defaults).
#
# Usage: scripts/test-services.sh [up|down|status]
set -euo pipefail

BA_TEST_DIR=${BA_TEST_DIR:-/var/tmp/backup-agent-test}
SRC_PORT=${BA_SRC_PORT:-33061}
DST_PORT=${BA_DST_PORT:-33062}
ADMIN_PASSWORD=test

log() { printf '[test-services] %s\n' "$*" >&2; }

need_packages() {
  local missing=()
  command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
  command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
  command -v gpg >/dev/null 2>&1 || missing+=(gnupg)
  dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
  dpkg -s nettle-dev >/dev/null 2>&1 || missing+=(nettle-dev)
  dpkg -s pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
  command -v gunzip >/dev/null 2>&1 || missing+=(gzip)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
  fi
}

# start_instance NAME PORT SERVER_ID BINLOG(0|1)
start_instance() {
  local name=$1 port=$2 sid=$3 binlog=$4
  local dir=$BA_TEST_DIR/$name
  local sock=$dir/mysqld.sock
  if mariadb-admin --socket="$sock" -uroot ping >/dev/null 2>&1; then
    log "$name already running on 127.0.0.1:$port"
    return
  fi
  mkdir -p "$dir"
  if [ ! -d "$dir/data/mysql" ]; then
    log "initialising $name in $dir/data"
    rm -rf "$dir/data"
    mkdir -p "$dir/data"
    chown -R mysql:mysql "$dir"
    mariadb-install-db --no-defaults --user=mysql --datadir="$dir/data" --auth-root-authentication-method=socket \
      --skip-test-db >"$dir/install.log" 2>&1
  fi
  cat >"$dir/my.cnf" <<EOF
[mariadbd]
user=mysql
datadir=$dir/data
socket=$sock
pid-file=$dir/mysqld.pid
port=$port
bind-address=127.0.0.1
log-error=$dir/error.log
server-id=$sid
max_allowed_packet=64M
innodb_buffer_pool_size=256M
innodb_log_file_size=128M
innodb_flush_log_at_trx_commit=2
sync_binlog=0
character-set-server=utf8mb4
collation-server=utf8mb4_general_ci
event_scheduler=OFF
EOF
  if [ "$binlog" = 1 ]; then
    printf 'log-bin=%s/data/mariadb-bin\nbinlog_format=ROW\n' "$dir" >>"$dir/my.cnf"
  fi
  chown -R mysql:mysql "$dir"
  log "starting $name on 127.0.0.1:$port"
  start-stop-daemon --start --background --pidfile "$dir/mysqld.pid" --exec /usr/sbin/mariadbd -- \
    --defaults-file="$dir/my.cnf"
  for _ in $(seq 1 100); do
    mariadb-admin --socket="$sock" -uroot ping >/dev/null 2>&1 && break
    sleep 0.2
  done
  if ! mariadb-admin --socket="$sock" -uroot ping >/dev/null 2>&1; then
    log "$name did not start; its log:"
    tail -n 30 "$dir/error.log" >&2 || true
    exit 1
  fi
  mariadb --socket="$sock" -uroot <<EOF
CREATE USER IF NOT EXISTS 'test_admin'@'127.0.0.1' IDENTIFIED BY '$ADMIN_PASSWORD';
CREATE USER IF NOT EXISTS 'test_admin'@'localhost' IDENTIFIED BY '$ADMIN_PASSWORD';
GRANT ALL PRIVILEGES ON *.* TO 'test_admin'@'127.0.0.1' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO 'test_admin'@'localhost' WITH GRANT OPTION;
EOF
}

stop_instance() {
  local dir=$BA_TEST_DIR/$1
  if [ -f "$dir/mysqld.pid" ]; then
    start-stop-daemon --stop --retry 30 --pidfile "$dir/mysqld.pid" --exec /usr/sbin/mariadbd >/dev/null 2>&1 || true
  fi
}

write_env() {
  cat >"$BA_TEST_DIR/env" <<EOF
BA_SRC_PORT=$SRC_PORT
BA_SRC_SOCKET=$BA_TEST_DIR/source/mysqld.sock
BA_DST_PORT=$DST_PORT
BA_DST_SOCKET=$BA_TEST_DIR/target/mysqld.sock
BA_ADMIN_USER=test_admin
BA_ADMIN_PASSWORD=$ADMIN_PASSWORD
EOF
}

case "${1:-up}" in
  up)
    need_packages
    mkdir -p "$BA_TEST_DIR"
    start_instance source "$SRC_PORT" 1 1
    start_instance target "$DST_PORT" 2 0
    write_env
    log "ready (addresses in $BA_TEST_DIR/env)"
    ;;
  down)
    stop_instance source
    stop_instance target
    ;;
  status)
    for n in source target; do
      if mariadb-admin --socket="$BA_TEST_DIR/$n/mysqld.sock" -uroot ping >/dev/null 2>&1; then echo "$n: up"; else echo "$n: down"; fi
    done
    ;;
  *) echo "usage: $0 [up|down|status]" >&2; exit 2 ;;
esac
