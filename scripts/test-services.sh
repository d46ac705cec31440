#!/usr/bin/env bash
# Brings up everything the tests need, idempotently, on a fresh Debian 12 machine:
# packages, and two private MariaDB instances (never the system one on 3306):
#   source  127.0.0.1:${BA_SRC_PORT:-33061}  binlog on, server-id 1  (what gets backed up)
#   target  127.0.0.1:${BA_DST_PORT:-33062}  binlog off              (where restores go)
# Both: max_allowed_packet=64M, an admin account test_admin/test (TCP) for the tests.
# Writes the addresses to $BA_TEST_DIR/env, which the tests read.
#
# Usage: scripts/test-services.sh [up|down|status]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BA_LOG_TAG=test-services
. "$here/lib/mariadb.sh"

BA_TEST_DIR=${BA_TEST_DIR:-/var/tmp/backup-agent-test}
SRC_PORT=${BA_SRC_PORT:-33061}
DST_PORT=${BA_DST_PORT:-33062}
ADMIN_PASSWORD=test

case "${1:-up}" in
  up)
    ba_need_packages
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
    cat >"$BA_TEST_DIR/env" <<ENV
BA_SRC_PORT=$SRC_PORT
BA_DST_PORT=$DST_PORT
BA_ADMIN_USER=test_admin
BA_ADMIN_PASSWORD=$ADMIN_PASSWORD
BA_PYTHON=$BA_TEST_DIR/venv/bin/python
ENV
    ba_log "ready (addresses in $BA_TEST_DIR/env)"
    ;;
  down)
    ba_stop_instance "$BA_TEST_DIR/source"
    ba_stop_instance "$BA_TEST_DIR/target"
    ;;
  status)
    for n in source target; do
      if mariadb-admin --socket="$BA_TEST_DIR/$n/mysqld.sock" -uroot ping >/dev/null 2>&1; then echo "$n: up"; else echo "$n: down"; fi
    done
    ;;
  *) echo "usage: $0 [up|down|status]" >&2; exit 2 ;;
esac
