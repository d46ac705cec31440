# Shell helpers for a 3-node Galera cluster on loopback (Debian galera-4), for the tests and
# the demo. Node N (1..3) listens on SQL port BASE+N, gcomm BASE+1000+N, IST BASE+1010+N,
# SST BASE+1020+N; data, socket, pid and log under DIR/nodeN. Needs ba_log and
# ba_admin_account (mariadb.sh).

ba_galera_port() { echo $(($1 + $2)); }

# ba_galera_write_cnf DIR BASE N [SHIFT]: SHIFT (default 0) moves the node's IST and SST
# receive ports by SHIFT*100, so that a start can retry away from a port still held.
ba_galera_write_cnf() {
  local dir=$1 base=$2 n=$3 shift=${4:-0}
  local nd=$dir/node$n
  local g1=$((base + 1001)) g2=$((base + 1002)) g3=$((base + 1003))
  mkdir -p "$nd/data"
  cat >"$nd/my.cnf" <<CNF
[mariadbd]
user=mysql
datadir=$nd/data
socket=$nd/mysqld.sock
pid-file=$nd/mysqld.pid
port=$((base + n))
bind-address=127.0.0.1
log-error=$nd/error.log
server-id=$((100 + n))
max_allowed_packet=64M
innodb_buffer_pool_size=64M
innodb_log_file_size=48M
innodb_flush_log_at_trx_commit=2
innodb_autoinc_lock_mode=2
binlog_format=ROW
log-bin=$nd/data/mariadb-bin
log-slave-updates=ON
# GTIDs shared by the cluster (point-in-time recovery follows any node by GTID): one
# domain for replicated write sets, a node-local one for what is not replicated.
wsrep_gtid_mode=ON
wsrep_gtid_domain_id=1
gtid_domain_id=$((10 + n))
character-set-server=utf8mb4
collation-server=utf8mb4_general_ci
wsrep_on=ON
wsrep_provider=/usr/lib/galera/libgalera_smm.so
wsrep_cluster_name=ba_test
wsrep_node_name=node$n
wsrep_node_address=127.0.0.1:$((base + 1000 + n))
wsrep_cluster_address=gcomm://127.0.0.1:$g1,127.0.0.1:$g2,127.0.0.1:$g3
wsrep_provider_options="gmcast.listen_addr=tcp://127.0.0.1:$((base + 1000 + n));ist.recv_addr=127.0.0.1:$((base + 1010 + n + shift * 100));gcache.size=128M"
wsrep_sst_receive_address=127.0.0.1:$((base + 1020 + n + shift * 100))
wsrep_sst_method=rsync
CNF
  chown -R mysql:mysql "$nd"
}

# Prints the node's wsrep_local_state_comment, or "down".
ba_galera_state() {
  local dir=$1 n=$2
  mariadb --socket="$dir/node$n/mysqld.sock" -uroot -N -B \
    -e "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME='wsrep_local_state_comment'" \
    2>/dev/null || echo down
}

# Prints the pid of node N's mariadbd if it runs (a stale pid file whose number now
# belongs to another process does not count).
ba_galera_pid() {
  local f=$1/node$2/mysqld.pid pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "--defaults-file=$1/node$2/my.cnf" || return 1
  echo "$pid"
}

# Kills what a dead node N may have left behind: the rsync daemon and SST scripts of an
# interrupted state transfer, which would keep its SST port and make the next one fail.
ba_galera_reap() {
  local nd=$1/node$2
  pkill -KILL -f -- "wsrep_sst_.*$nd/" 2>/dev/null || true
  pkill -KILL -f -- "rsync --daemon.*$nd/" 2>/dev/null || true
  rm -f "$nd/data/rsync_sst.pid" "$nd/data/stunnel.pid" "$nd/data/sst_in_progress"
}

# ba_galera_start_node DIR BASE N [--wsrep-new-cluster]; waits until Synced.
ba_galera_start_node() {
  local dir=$1 base=$2 n=$3 extra=${4:-}
  local nd=$dir/node$n
  ba_galera_write_cnf "$dir" "$base" "$n"
  if [ -n "$extra" ] && [ ! -d "$nd/data/mysql" ]; then
    mariadb-install-db --no-defaults --user=mysql --datadir="$nd/data" \
      --auth-root-authentication-method=socket --skip-test-db >"$nd/install.log" 2>&1
    chown -R mysql:mysql "$nd"
  fi
  if [ -n "$extra" ] && [ -f "$nd/data/grastate.dat" ]; then
    sed -i 's/^safe_to_bootstrap: 0/safe_to_bootstrap: 1/' "$nd/data/grastate.dat"
  fi
  # A joiner's state transfer can fail (a port of an earlier transfer still busy, a donor
  # busy or going away); the node then aborts. Start it again, with the state-transfer
  # ports moved and leftovers reaped, and from the third attempt on with a full state
  # transfer (its saved position dropped).
  local attempt i lines
  for attempt in 1 2 3 4 5; do
    ba_galera_reap "$dir" "$n"
    ba_galera_write_cnf "$dir" "$base" "$n" $((attempt - 1))
    if [ $attempt -ge 3 ] && [ -z "$extra" ]; then
      rm -f "$nd/data/grastate.dat"
    fi
    ba_log "starting Galera node $n on 127.0.0.1:$((base + n)) ${extra} (attempt $attempt)"
    lines=$( (wc -l <"$nd/error.log") 2>/dev/null || echo 0)
    rm -f "$nd/mysqld.pid"
    start-stop-daemon --start --background --pidfile "$nd/mysqld.pid" --exec /usr/sbin/mariadbd -- \
      --defaults-file="$nd/my.cnf" $extra
    sleep 0.5
    for i in $(seq 1 400); do
      [ "$(ba_galera_state "$dir" "$n")" = Synced ] && return 0
      # Gone (and not just starting up): try again.
      if [ $i -gt 10 ] && [ -z "$(ba_galera_pid "$dir" "$n" || true)" ] && ! pgrep -f -- "--defaults-file=$nd/my.cnf" >/dev/null; then
        break
      fi
      sleep 0.2
    done
    ba_log "Galera node $n did not reach Synced; errors and the end of its log since the start:"
    tail -n +$((lines + 1)) "$nd/error.log" 2>/dev/null | grep -E "\[(ERROR|Warning)\]|Aborting|failed" | head -n 25 >&2 || true
    ba_log "..."
    tail -n +$((lines + 1)) "$nd/error.log" 2>/dev/null | tail -n 15 >&2 || true
    start-stop-daemon --stop --retry 30 --pidfile "$nd/mysqld.pid" --exec /usr/sbin/mariadbd >/dev/null 2>&1 || true
    pkill -KILL -f -- "--defaults-file=$nd/my.cnf" 2>/dev/null || true
    sleep $((2 * attempt))
  done
  return 1
}

# Brings the cluster to three running, Synced nodes, whatever state it is in: stopped
# (SIGSTOP) nodes are continued, a node that lost the Primary component is bootstrapped
# again, dead nodes are started (the first one bootstraps when none runs).
ba_galera_up() {
  local dir=$1 base=$2 n pid running=()
  mkdir -p "$dir"
  for n in 1 2 3; do
    pid=$(ba_galera_pid "$dir" "$n" || true)
    if [ -n "$pid" ]; then
      kill -CONT "$pid" 2>/dev/null || true
      running+=("$n")
    fi
  done
  if [ ${#running[@]} -gt 0 ]; then
    # Give continued nodes a moment, then make sure one Primary component exists.
    local primary=0 i
    for i in $(seq 1 50); do
      for n in "${running[@]}"; do
        if [ "$(mariadb --socket="$dir/node$n/mysqld.sock" -uroot -N -B -e "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME='wsrep_cluster_status'" 2>/dev/null)" = Primary ]; then
          primary=1
        fi
      done
      [ $primary = 1 ] && break
      sleep 0.2
    done
    if [ $primary = 0 ]; then
      ba_log "no Primary component: bootstrapping node ${running[0]} again (pc.bootstrap=YES)"
      mariadb --socket="$dir/node${running[0]}/mysqld.sock" -uroot \
        -e "SET GLOBAL wsrep_provider_options='pc.bootstrap=YES'" || true
    fi
  fi
  for n in 1 2 3; do
    if [ -z "$(ba_galera_pid "$dir" "$n" || true)" ]; then
      if [ -z "$(ba_galera_pid "$dir" 1 || true)" ] && [ -z "$(ba_galera_pid "$dir" 2 || true)" ] && [ -z "$(ba_galera_pid "$dir" 3 || true)" ]; then
        ba_galera_start_node "$dir" "$base" "$n" --wsrep-new-cluster
      else
        ba_galera_start_node "$dir" "$base" "$n"
      fi
    fi
  done
  # Desyncs left by a test are turned off; every node must end up Synced.
  for n in 1 2 3; do
    mariadb --socket="$dir/node$n/mysqld.sock" -uroot -e "SET GLOBAL wsrep_desync=OFF" 2>/dev/null || true
  done
  local all
  for _ in $(seq 1 150); do
    all=1
    for n in 1 2 3; do
      [ "$(ba_galera_state "$dir" "$n")" = Synced ] || all=0
    done
    [ $all = 1 ] && return 0
    sleep 0.2
  done
  for n in 1 2 3; do ba_log "node $n: $(ba_galera_state "$dir" "$n")"; done
  return 1
}

# The admin account on the cluster (created on node 1, replicated to the others).
ba_galera_admin() {
  ba_admin_account "$1/node1/mysqld.sock" "$2"
}

ba_galera_down() {
  local dir=$1 n
  for n in 3 2 1; do
    local pid
    pid=$(ba_galera_pid "$dir" "$n" || true)
    [ -n "$pid" ] && kill -CONT "$pid" 2>/dev/null
    if [ -f "$dir/node$n/mysqld.pid" ]; then
      start-stop-daemon --stop --retry 30 --pidfile "$dir/node$n/mysqld.pid" --exec /usr/sbin/mariadbd >/dev/null 2>&1 || true
    fi
  done
}
