#!/usr/bin/env bash
# The demo: a throwaway MariaDB with a sample database, throwaway DPO and agent keys made
# with gpg, one backup with backup-agent, one verified restore into a scratch MariaDB with
# a table-by-table comparison, and one restore drill (restore --verify). Everything is printed; everything is removed at the end.
#
# Usage: scripts/demo.sh        (needs root for the private MariaDB instances)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
BA_LOG_TAG=demo
. "$root/scripts/lib/mariadb.sh"

SRC_PORT=${DEMO_SRC_PORT:-33071}
DST_PORT=${DEMO_DST_PORT:-33072}
work=$(mktemp -d /var/tmp/backup-agent-demo.XXXXXX)
chmod 755 "$work"
export GNUPGHOME=$work/gnupg
cleanup() {
  ba_stop_instance "$work/source"
  ba_stop_instance "$work/scratch"
  gpgconf --kill gpg-agent 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n=== %s\n' "$*"; }

step "Installing packages (if missing) and building"
ba_need_packages
ba_build "$root"
agent=$root/target/release/backup-agent
restore=$root/target/release/restore

step "Starting a throwaway MariaDB (127.0.0.1:$SRC_PORT) and a scratch one (127.0.0.1:$DST_PORT)"
ba_start_instance "$work/source" "$SRC_PORT" 1 1 demo-admin
ba_start_instance "$work/scratch" "$DST_PORT" 2 0 demo-admin
src() { mariadb --socket="$work/source/mysqld.sock" -uroot "$@"; }
dst() { mariadb --socket="$work/scratch/mysqld.sock" -uroot "$@"; }

step "Loading the sample database 'shop' (every column type, views, routines, triggers, events)"
src -e "CREATE DATABASE shop CHARACTER SET utf8mb4"
src shop <"$root/testdata/schema.sql"
src -N -e "SELECT CONCAT(COUNT(*), ' tables and views, ', (SELECT SUM(TABLE_ROWS) FROM information_schema.TABLES WHERE TABLE_SCHEMA='shop'), ' rows (estimate)') FROM information_schema.TABLES WHERE TABLE_SCHEMA='shop'"
echo demo-dump-password >"$work/db.password"
for h in 127.0.0.1 localhost; do
  src -e "CREATE USER 'backup'@'$h' IDENTIFIED BY 'demo-dump-password';
          GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES, RELOAD, BINLOG MONITOR ON *.* TO 'backup'@'$h'"
done

step "Making throwaway keys with gpg: the DPO's key pair, and the agent's signing key"
mkdir -m 700 "$GNUPGHOME"
for who in dpo agent; do
  gpg --batch --quiet --passphrase '' --quick-gen-key "THROWAWAY demo $who <$who@demo.invalid>" ed25519 sign 0
  fpr=$(gpg --batch --with-colons --list-keys "$who@demo.invalid" | awk -F: '/^fpr/ {print $10; exit}')
  if [ "$who" = dpo ]; then
    gpg --batch --quiet --passphrase '' --quick-add-key "$fpr" cv25519 encr 0
  fi
  gpg --batch --armor --export "$who@demo.invalid" >"$work/$who.pub.asc"
  gpg --batch --armor --pinentry-mode loopback --passphrase '' --export-secret-keys "$who@demo.invalid" >"$work/$who.sec.asc"
  echo "$who key: $fpr"
done
agent_fpr=$(gpg --batch --with-colons --list-keys agent@demo.invalid | awk -F: '/^fpr/ {print $10; exit}')

mkdir -p "$work/store" "$work/offsite" "$work/state"
cat >"$work/config.toml" <<EOF
[agent]
site = "dc1"
state_dir = "$work/state"

[[source]]
name = "demo"
host = "127.0.0.1"
port = $SRC_PORT
user = "backup"
password_file = "$work/db.password"

[encryption]
dpo_certificates = ["$work/dpo.pub.asc"]
signing_key_file = "$work/agent.sec.asc"

[[store]]
name = "local"
kind = "local"
path = "$work/store"
media = "disk"

# In the demo, a second directory stands in for the offsite copy (another site, another
# medium): with it the backup meets the default 3-2-1 policy (2 copies, 2 media, 1 offsite).
[[store]]
name = "offsite"
kind = "local"
path = "$work/offsite"
media = "removable-disk"
site = "offsite"

[restore]
dpo_secret_key_file = "$work/dpo.sec.asc"
agent_certificates = ["$work/agent.pub.asc"]
agent_fingerprints = ["$agent_fpr"]
EOF

step "backup-agent check-config"
"$agent" --config "$work/config.toml" check-config

step "backup-agent backup (the agent holds only the DPO's public certificate)"
BACKUP_AGENT_LOG_FORMAT=text "$agent" --config "$work/config.toml" backup
ls -l "$work/store/demo"
step "backup-agent list: every backup across the stores, verified copies, 3-2-1 verdict"
"$agent" --config "$work/config.toml" list
(cd "$work/store/demo" && sha256sum -c ./*.sha256)
data=$(ls "$work/store/demo"/*.sql.gz.gpg)

step "restore: verify checksum, DPO decryption, agent signature, completeness; then replay into the scratch server"
"$restore" --config "$work/config.toml" --into "mysql://root@localhost/?socket=$work/scratch/mysqld.sock" --no-password --backup "$data"

step "Comparing every table (CHECKSUM TABLE, row count) and every view, routine, trigger and event"
compare() {
  local f=$1
  $f -N shop -e "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA='shop' AND TABLE_TYPE='BASE TABLE' ORDER BY 1" |
    while IFS= read -r t; do
      q="\`${t//\`/\`\`}\`"
      $f -N shop -e "CHECKSUM TABLE $q EXTENDED; SELECT COUNT(*) FROM $q" | tr '\n' ' '
      echo
    done
  $f -N shop -e "SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA='shop' ORDER BY 1" |
    while read -r v; do $f -N shop -e "SHOW CREATE VIEW \`$v\`"; done
  $f -N shop -e "SELECT CONCAT(ROUTINE_TYPE, ' ', ROUTINE_NAME) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA='shop' ORDER BY 1" |
    while read -r k n; do $f -N shop -e "SHOW CREATE $k \`$n\`"; done
  $f -N shop -e "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA='shop' ORDER BY 1" |
    while read -r e; do $f -N shop -e "SHOW CREATE EVENT \`$e\`"; done
}
compare src >"$work/source.txt"
compare dst >"$work/scratch.txt"
tables=$(grep -c 'shop\.' "$work/source.txt" || true)
if diff "$work/source.txt" "$work/scratch.txt" >"$work/diff.txt"; then
  echo "OK: $tables tables identical (CHECKSUM TABLE and row counts), views/routines/events identical"
else
  echo "MISMATCH between source and restored copy:"
  cat "$work/diff.txt"
  exit 1
fi

step "The monthly drill: restore --verify (ephemeral scratch MariaDB, every table's digest compared with the dump's)"
"$restore" --config "$work/config.toml" --verify

step "Stock tools, as the DPO would in an emergency: gpg --decrypt | gunzip | head"
gpg --batch --decrypt --output "$work/manual.sql.gz" "$data" 2>"$work/gpg.log"
grep -E 'Good signature|using' "$work/gpg.log" || true
{ gunzip -c "$work/manual.sql.gz" || true; } | head -n 3
rm -f "$work/manual.sql.gz"
echo
echo "Demo finished; the throwaway servers, keys and files are removed now."
