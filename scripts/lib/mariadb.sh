# Shell helpers shared by the test services and the demo: private MariaDB instances with
# their own datadir, socket, pidfile and port (never the system server on 3306).

ba_log() { printf '[%s] %s\n' "${BA_LOG_TAG:-backup-agent}" "$*" >&2; }

# ba_need_packages [test|bench]: installs the Debian packages the demo needs (MariaDB,
# gpg, what the build links), with "test" also what the tests use, and with "bench" also
# the peers the benchmark measures (mydumper/myloader).
ba_need_packages() {
  local missing=()
  [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
  command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
  command -v gpg >/dev/null 2>&1 || missing+=(gnupg)
  command -v gzip >/dev/null 2>&1 || missing+=(gzip)
  dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
  dpkg -s nettle-dev >/dev/null 2>&1 || missing+=(nettle-dev)
  dpkg -s pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
  if [ "${1:-}" = test ] || [ "${1:-}" = bench ]; then
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    [ -x /usr/bin/time ] || missing+=(time)
    [ -x /usr/bin/kill ] || missing+=(procps)
    command -v ss >/dev/null 2>&1 || missing+=(iproute2)
    command -v groff >/dev/null 2>&1 || missing+=(groff-base)
  fi
  if [ "${1:-}" = bench ]; then
    command -v mydumper >/dev/null 2>&1 || missing+=(mydumper)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    ba_log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
  fi
}

# ba_start_instance DIR PORT SERVER_ID BINLOG(0|1) ADMIN_PASSWORD
# Idempotent: an instance that answers is left alone.
ba_start_instance() {
  local dir=$1 port=$2 sid=$3 binlog=$4 admin_pw=$5
  local sock=$dir/mysqld.sock
  if mariadb-admin --socket="$sock" -uroot ping >/dev/null 2>&1; then
    ba_log "MariaDB in $dir already running on 127.0.0.1:$port"
    return 0
  fi
  mkdir -p "$dir"
  if [ ! -d "$dir/data/mysql" ]; then
    rm -rf "$dir/data"
    mkdir -p "$dir/data"
    chown -R mysql:mysql "$dir"
    mariadb-install-db --no-defaults --user=mysql --datadir="$dir/data" \
      --auth-root-authentication-method=socket --skip-test-db >"$dir/install.log" 2>&1
  fi
  cat >"$dir/my.cnf" <<CNF
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
CNF
  if [ "$binlog" = 1 ]; then
    printf 'log-bin=%s/data/mariadb-bin\nbinlog_format=ROW\n' "$dir" >>"$dir/my.cnf"
  fi
  chown -R mysql:mysql "$dir"
  ba_log "starting MariaDB ($dir) on 127.0.0.1:$port"
  start-stop-daemon --start --background --pidfile "$dir/mysqld.pid" --exec /usr/sbin/mariadbd -- \
    --defaults-file="$dir/my.cnf"
  local i
  for i in $(seq 1 150); do
    mariadb-admin --socket="$sock" -uroot ping >/dev/null 2>&1 && break
    sleep 0.2
  done
  if ! mariadb-admin --socket="$sock" -uroot ping >/dev/null 2>&1; then
    ba_log "MariaDB in $dir did not start; its log:"
    tail -n 30 "$dir/error.log" >&2 || true
    return 1
  fi
  ba_admin_account "$sock" "$admin_pw"
}

# ba_admin_account SOCKET PASSWORD: the tests' admin account test_admin (TCP and socket).
ba_admin_account() {
  local sock=$1 pw=$2
  mariadb --socket="$sock" -uroot <<SQL
CREATE USER IF NOT EXISTS 'test_admin'@'127.0.0.1' IDENTIFIED BY '$pw';
CREATE USER IF NOT EXISTS 'test_admin'@'localhost' IDENTIFIED BY '$pw';
GRANT ALL PRIVILEGES ON *.* TO 'test_admin'@'127.0.0.1' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO 'test_admin'@'localhost' WITH GRANT OPTION;
SQL
}

ba_stop_instance() {
  local dir=$1
  if [ -f "$dir/mysqld.pid" ]; then
    start-stop-daemon --stop --retry 30 --pidfile "$dir/mysqld.pid" --exec /usr/sbin/mariadbd >/dev/null 2>&1 || true
  fi
}

# Builds the release binaries once (cargo keeps target/ between runs).
ba_build() {
  local root=$1
  if [ -x "$root/target/release/backup-agent" ] && [ -x "$root/target/release/restore" ]; then
    ba_log "building backup-agent and restore (release; already built, checking for changes)"
  else
    ba_log "building backup-agent and restore (release): the first build compiles ~400 crates, about 15 minutes on 2 cores; cargo shows its progress"
  fi
  (cd "$root" && cargo build --release -p backup-agent -p restore-cli)
}
