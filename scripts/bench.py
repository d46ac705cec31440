#!/usr/bin/env python3
"""Benchmark: backup-agent against the shell pipeline it replaces, on the same database,
same machine, same run, commands alternating, median of N runs, raw figures kept.

  backup:  backup-agent backup
     vs    mariadb-dump --single-transaction --routines --triggers --events | gzip
           | gpg --encrypt -r DPO | tee FILE | sha256sum
     and   mydumper -t 2 -c (the parallel peer; no encryption, no checksum)
  restore: restore --into scratch (verified: checksum, signature, MDC, completeness first)
     vs    gpg -d FILE | gunzip | mariadb          (on the same backup file)
     and   myloader -t 2                           (on mydumper's output)

Two databases of the same rows, one with latin1 text and one with utf8mb4 text
(--charsets), each measured on its own.

Measured per run: wall time, CPU time (user+sys of the whole process tree, from wait4;
the MariaDB server's own CPU is not included on either side), peak RSS (the largest
process of the tree), output size. Writes docs/benchmarks.md (or --out).

Usage: scripts/bench.py [--gib 1] [--runs 3] [--charsets latin1,utf8mb4] [--jobs N] [--no-restore] [--out docs/benchmarks.md]
Run by hand, not in CI; needs root (private MariaDB instances on 33101/33102).
"""

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.environ.get("BA_BENCH_DIR", "/var/tmp/backup-agent-bench")
# Clear of the test services (33061/33062, Galera 33081-33083, S3 33090/33091).
SRC_PORT, DST_PORT = int(os.environ.get("BA_BENCH_SRC_PORT", 33101)), int(os.environ.get("BA_BENCH_DST_PORT", 33102))
AGENT = os.path.join(ROOT, "target/release/backup-agent")
RESTORE = os.path.join(ROOT, "target/release/restore")


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, executable="/bin/bash", **kw)


def lib(cmd):
    sh(f". {ROOT}/scripts/lib/mariadb.sh; BA_LOG_TAG=bench; {cmd}")


def sql(sock, q, db=""):
    out = subprocess.run(["mariadb", f"--socket={sock}", "-uroot", "-N", "-B", db, "-e", q],
                         check=True, capture_output=True, text=True)
    return out.stdout


def measure(cmd, env=None):
    """Runs cmd under bash; returns wall s, cpu s (tree), peak RSS KiB (largest process)."""
    t0 = time.monotonic()
    p = subprocess.Popen(["/bin/bash", "-o", "pipefail", "-c", cmd], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    err = p.stderr.read().decode(errors="replace")
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {cmd}\n{err}")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss_kib": ru.ru_maxrss}


WORDS = ("the order was shipped to customer from warehouse in region north south east west with priority "
         "normal high low invoice payment received pending refund requested item quantity price total discount "
         "delivery address street city postal code country phone email note support ticket opened closed "
         "resolved product category electronics books garden tools clothing kitchen sports toys "
         # Words every legacy charset holds but that are more than one byte in UTF-8.
         "Zürich Straße café façade naïve Øresund señor Ångström Müller Besançon Göteborg").split()
DATA_VERSION = "v3"


def text_expr(n_words):
    """SQL for a sentence of n_words words, varied per row (like prose, not filler)."""
    elts = ",".join(f"'{w}'" for w in WORDS)
    parts = [f"ELT(1 + ((seq * {p} + {k}) % {len(WORDS)}), {elts})" for k, p in
             enumerate([7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83][:n_words])]
    return "CONCAT_WS(' ', " + ", ".join(parts) + ")"


def build_database(sock, gib, db, charset):
    """Database `db` with >= gib GiB of rows; its text columns in `charset` (the database's
    default: every VARCHAR/CHAR/TEXT column takes it)."""
    want = int(gib * (1 << 30))
    have = sql(sock, f"SELECT COALESCE(SUM(DATA_LENGTH),0) FROM information_schema.TABLES WHERE TABLE_SCHEMA='{db}'").strip()
    marker = sql(sock, f"SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA='{db}' AND TABLE_NAME='meta'").strip()
    if marker == "1" and sql(sock, "SELECT v FROM meta", db).strip() == f"{gib}-{DATA_VERSION}":
        print(f"database {db} exists ({int(have) / (1 << 30):.2f} GiB of InnoDB data)")
        return
    print(f"building database {db} ({charset}) with >= {gib} GiB of row data ...", flush=True)
    collation = {"utf8mb4": "utf8mb4_unicode_ci", "latin1": "latin1_swedish_ci"}.get(charset, "")
    sql(sock, f"DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db} CHARACTER SET {charset}" + (f" COLLATE {collation}" if collation else ""))
    sql(sock, "CREATE TABLE meta (v VARCHAR(20))", db)
    # A few big tables of mixed types, rows ~ 400-600 bytes, text that compresses like
    # real data (hex digests, words, numbers), not like repeated filler.
    sql(sock, """
      CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id INT NOT NULL, created DATETIME(6) NOT NULL,
        amount DECIMAL(12,2), currency CHAR(3), status ENUM('new','paid','shipped','returned'),
        note VARCHAR(255), ref CHAR(64), ratio DOUBLE, flags BIT(8), KEY (customer_id)) ENGINE=InnoDB;
      CREATE TABLE events (id BIGINT PRIMARY KEY, at TIMESTAMP(3) NOT NULL DEFAULT '2024-01-01 00:00:00',
        kind VARCHAR(32), payload JSON, src INET6, digest VARBINARY(32)) ENGINE=InnoDB;
      CREATE TABLE documents (id INT PRIMARY KEY, title VARCHAR(200), body MEDIUMTEXT, blob_part BLOB) ENGINE=InnoDB;
    """, db)
    for i in range(200):
        sql(sock, f"CREATE TABLE small_{i:03d} (id INT PRIMARY KEY, name VARCHAR(64), v DECIMAL(10,3), d DATE); "
                  f"INSERT INTO small_{i:03d} SELECT seq, CONCAT('item ', seq, ' ', SHA1(seq + {i})), seq / 7, '2020-01-01' + INTERVAL seq DAY FROM seq_1_to_1000", db)
    step = 200_000
    n = 0
    while True:
        size = int(sql(sock, f"SELECT SUM(DATA_LENGTH) FROM information_schema.TABLES WHERE TABLE_SCHEMA='{db}'").strip())
        if size >= want:
            break
        a, b = n + 1, n + step
        sql(sock, f"""
          INSERT INTO orders SELECT seq, seq % 50000, '2020-01-01' + INTERVAL seq SECOND + INTERVAL (seq % 997) MICROSECOND,
            (seq * 37 % 100000) / 100, ELT(1 + seq % 3, 'EUR', 'USD', 'CHF'), 1 + seq % 4,
            CONCAT('order ', seq, ' for customer ', seq % 50000, ': ', {text_expr(8)}),
            SHA2(seq, 256), seq / 3.0, seq % 256 FROM seq_{a}_to_{b};
          INSERT INTO events SELECT seq, '2024-01-01' + INTERVAL seq SECOND, ELT(1 + seq % 4, 'login', 'logout', 'view', 'buy'),
            JSON_OBJECT('user', seq % 9973, 'path', CONCAT('/shop/item/', seq % 5000), 'ms', seq % 1000),
            INET6_ATON(CONCAT('2001:db8::', HEX(seq % 65535))), UNHEX(SHA2(seq, 256)) FROM seq_{a}_to_{b};
          INSERT INTO documents SELECT seq, CONCAT('Document ', seq, ': ', {text_expr(6)}),
            CONCAT_WS('\\n', {text_expr(20)}, CONCAT('Reference ', SHA1(seq), ' amount ', seq % 9973, '.', seq % 100), {text_expr(20)}, {text_expr(12)}),
            UNHEX(CONCAT(MD5(seq), SHA2(seq, 256), SHA1(seq))) FROM seq_{a}_to_{a + step // 10 - 1};
        """, db)
        n = b
        print(f"  {size / (1 << 30):.2f} GiB ...", flush=True)
    sql(sock, f"INSERT INTO meta VALUES ('{gib}-{DATA_VERSION}')", db)
    print("built:", sql(sock, f"SELECT CONCAT(ROUND(SUM(DATA_LENGTH)/POW(1024,3),2), ' GiB data, ', SUM(TABLE_ROWS), ' rows (est.), ', COUNT(*), ' tables') FROM information_schema.TABLES WHERE TABLE_SCHEMA='{db}'").strip())


def write_config(work, src_sock, db, agent="", source=""):
    """The agent's config for the bench: one source (database `db`), one local store."""
    with open(f"{work}/config.toml", "w") as f:
        f.write(f"""[agent]
state_dir = "{work}/state"
{agent}[[source]]
name = "bench"
socket = "{src_sock}"
user = "bench"
password_file = "{work}/pw"
databases = {{ include = ["{db}"] }}
users_and_grants = false
{source}[encryption]
dpo_certificates = ["{ROOT}/testdata/dpo.pub.asc"]
signing_key_file = "{ROOT}/testdata/agent.sec.asc"
[[store]]
name = "local"
kind = "local"
path = "{work}/store"
[policy]
copies = 1
media = 1
offsite = 0
""")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-restore", action="store_true")
    ap.add_argument("--charsets", default="latin1,utf8mb4", help="one database per charset, its text columns in it")
    ap.add_argument("--jobs", type=int, default=0, help="restore --jobs N (default: restore's own default)")
    ap.add_argument("--s3", action="store_true",
                    help="also measure a backup to local + S3 (the test services' Garage: scripts/test-services.sh up)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/benchmarks.md"))
    ap.add_argument("--pitr", action="store_true",
                    help="point-in-time recovery: the archiver's cost on a busy source, and a restore of a dump plus the archived log")
    ap.add_argument("--pitr-seconds", type=int, default=180, help="how long the writer runs at --pitr-rate")
    ap.add_argument("--pitr-rate", type=int, default=50, help="transactions per second of the steady writer")
    ap.add_argument("--tenants", type=int, default=0,
                    help="many tenants: N ERP-like databases (~400 tables each) backed up one per database, against a shell loop")
    ap.add_argument("--pitr-hour", type=int, default=72000,
                    help="transactions written as fast as possible for the restore measurement (an hour at 20/s)")
    args = ap.parse_args()
    if args.pitr:
        return pitr_bench(args)
    if args.tenants:
        return tenants_bench(args)

    lib("ba_need_packages bench")
    lib(f"ba_build {ROOT}")
    src_dir, dst_dir = f"{BENCH_DIR}/source", f"{BENCH_DIR}/scratch"
    lib(f"ba_start_instance {src_dir} {SRC_PORT} 1 1 bench-admin")
    lib(f"ba_start_instance {dst_dir} {DST_PORT} 2 0 bench-admin")
    src_sock, dst_sock = f"{src_dir}/mysqld.sock", f"{dst_dir}/mysqld.sock"
    for h in ("127.0.0.1", "localhost"):
        sql(src_sock, f"CREATE OR REPLACE USER 'bench'@'{h}' IDENTIFIED BY 'bench'; GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES, RELOAD, BINLOG MONITOR ON *.* TO 'bench'@'{h}'")
    for charset in args.charsets.split(","):
        db = f"bench_{charset}"
        build_database(src_sock, args.gib, db, charset)
        bench_database(args, src_sock, dst_sock, db, charset)


def ratio(a, b):
    return a / b if b else float("nan")


def bench_database(args, src_sock, dst_sock, db, charset):
    """The three backups and the three restores of database `db`, alternating."""
    data_bytes = int(sql(src_sock, f"SELECT SUM(DATA_LENGTH) FROM information_schema.TABLES WHERE TABLE_SCHEMA='{db}'").strip())
    work = tempfile.mkdtemp(prefix="bench-", dir=BENCH_DIR)
    gnupg = os.path.join(work, "gnupg")
    os.makedirs(gnupg, mode=0o700)
    env = dict(os.environ, GNUPGHOME=gnupg, BACKUP_AGENT_LOG_FORMAT="json")
    sh(f"gpg --batch -q --import {ROOT}/testdata/dpo.sec.asc {ROOT}/testdata/agent.pub.asc", env=env)
    with open(f"{work}/pw", "w") as f:
        f.write("bench\n")
    write_config(work, src_sock, db)
    # Warm the caches: read every table once.
    print(f"{db}: warming caches ...", flush=True)
    sh(f"mariadb-dump --socket={src_sock} -uroot --single-transaction {db} > /dev/null")

    shell_backup = (f"mariadb-dump --socket={src_sock} -ubench -pbench --single-transaction --routines --triggers --events --databases {db}"
                    f" | gzip | gpg --batch --trust-model always --encrypt -r dpo@backup-agent.invalid | tee {work}/shell.sql.gz.gpg | sha256sum > {work}/shell.sha256")
    mydumper = (f"rm -rf {work}/mydumper && mydumper --socket={src_sock} -u bench -p bench -B {db} -t 2 -c -G -E -R"
                f" --trx-consistency-only -o {work}/mydumper -v 1")
    raw = {k: [] for k in ("agent backup", "shell backup", "mydumper", "agent restore", "shell restore", "myloader")}
    agent_file = None
    for i in range(args.runs):
        shutil.rmtree(f"{work}/store", ignore_errors=True)
        os.makedirs(f"{work}/store")
        r = measure(f"{AGENT} --config {work}/config.toml backup", env)
        files = [os.path.join(dp, fn) for dp, _, fns in os.walk(f"{work}/store") for fn in fns if fn.endswith(".sql.gz.gpg")]
        r["size"] = os.path.getsize(files[0])
        agent_file = f"{work}/agent-{i}.sql.gz.gpg"
        for fsuffix in ("", ".sha256"):
            shutil.copy(files[0] + fsuffix, agent_file + fsuffix)
        raw["agent backup"].append(r)
        print(f"run {i + 1}: agent backup {r['wall']:.1f}s cpu {r['cpu']:.1f}s rss {r['rss_kib'] / 1024:.0f} MiB size {r['size']}", flush=True)
        r = measure(shell_backup, env)
        r["size"] = os.path.getsize(f"{work}/shell.sql.gz.gpg")
        raw["shell backup"].append(r)
        print(f"run {i + 1}: shell backup {r['wall']:.1f}s cpu {r['cpu']:.1f}s rss {r['rss_kib'] / 1024:.0f} MiB size {r['size']}", flush=True)
        r = measure(mydumper, env)
        r["size"] = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(f"{work}/mydumper") for fn in fns)
        raw["mydumper"].append(r)
        print(f"run {i + 1}: mydumper -t 2 -c {r['wall']:.1f}s cpu {r['cpu']:.1f}s rss {r['rss_kib'] / 1024:.0f} MiB size {r['size']}", flush=True)
    # The .sha256 file names the original file name; rewrite it for the copy.
    digest = open(agent_file + ".sha256").read().split()[0]
    with open(agent_file + ".sha256", "w") as f:
        f.write(f"{digest}  {os.path.basename(agent_file)}\n")

    s3_run = None
    if args.s3:
        envf = dict(l.split("=", 1) for l in open("/var/tmp/backup-agent-test/env").read().split() if "=" in l)
        cfg = open(f"{work}/config.toml").read().replace("[policy]", f"""[[store]]
name = "garage"
kind = "s3"
site = "offsite"
endpoint = "{envf['BA_GARAGE_URL']}"
bucket = "{envf['BA_GARAGE_BUCKET']}"
region = "garage"
path_style = true
key_prefix = "bench-{os.getpid()}"
access_key_id_file = "{envf['BA_GARAGE_KEY_ID_FILE']}"
secret_access_key_file = "{envf['BA_GARAGE_SECRET_FILE']}"
part_size = "16MiB"
parts_in_flight = 2

[policy]""")
        with open(f"{work}/config-s3.toml", "w") as f:
            f.write(cfg)
        shutil.rmtree(f"{work}/store", ignore_errors=True)
        os.makedirs(f"{work}/store")
        s3_run = measure(f"{AGENT} --config {work}/config-s3.toml backup", env)
        print(f"agent backup to local + Garage: {s3_run['wall']:.1f}s rss {s3_run['rss_kib'] / 1024:.0f} MiB", flush=True)

    if not args.no_restore:
        jobs = f" --jobs {args.jobs}" if args.jobs else ""
        fingerprint = None
        for i in range(args.runs):
            sql(dst_sock, f"DROP DATABASE IF EXISTS {db}")
            r = measure(f"{RESTORE} --into 'mysql://root@localhost/?socket={dst_sock}' --no-password --backup {agent_file}{jobs}"
                        f" --dpo-key {ROOT}/testdata/dpo.sec.asc --agent-cert {ROOT}/testdata/agent.pub.asc", env)
            raw["agent restore"].append(r)
            print(f"run {i + 1}: verified restore {r['wall']:.1f}s cpu {r['cpu']:.1f}s rss {r['rss_kib'] / 1024:.0f} MiB", flush=True)
            if fingerprint is None:
                fingerprint = (table_fingerprint(src_sock, db), table_fingerprint(dst_sock, db))
            sql(dst_sock, f"DROP DATABASE IF EXISTS {db}")
            r = measure(f"gpg --batch -q -d {agent_file} | gunzip | mariadb --socket={dst_sock} -uroot --max-allowed-packet=1G", env)
            raw["shell restore"].append(r)
            print(f"run {i + 1}: gpg|gunzip|mariadb {r['wall']:.1f}s cpu {r['cpu']:.1f}s rss {r['rss_kib'] / 1024:.0f} MiB", flush=True)
            sql(dst_sock, f"DROP DATABASE IF EXISTS {db}")
            r = measure(f"myloader --socket={dst_sock} -u root -d {work}/mydumper -t 2 -o -v 1", env)
            raw["myloader"].append(r)
            print(f"run {i + 1}: myloader -t 2 {r['wall']:.1f}s cpu {r['cpu']:.1f}s rss {r['rss_kib'] / 1024:.0f} MiB", flush=True)
        sql(dst_sock, f"DROP DATABASE IF EXISTS {db}")
        if fingerprint[0] != fingerprint[1]:
            sys.exit(f"the verified restore of {db} differs from the source: {fingerprint}")

    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in raw.items() if v}
    cpu = subprocess.run("lscpu | sed -n 's/^Model name: *//p'", shell=True, capture_output=True, text=True).stdout.strip()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    version = sql(src_sock, "SELECT VERSION()").strip()
    gzip_v = subprocess.run("gzip --version | head -1", shell=True, capture_output=True, text=True).stdout.strip()
    gpg_v = subprocess.run("gpg --version | head -1", shell=True, capture_output=True, text=True).stdout.strip()
    mydumper_v = subprocess.run("mydumper --version", shell=True, capture_output=True, text=True).stdout.strip().split(",")[0]

    def fmt_row(name, r):
        size = f"{r['size'] / (1 << 20):.1f} MiB" if "size" in r else "-"
        return f"| {name} | {r['wall']:.2f} s | {r['cpu']:.2f} s | {r['rss_kib'] / 1024:.1f} MiB | {size} |"

    section = [f"## {args.gib:g} GiB database, {charset} text ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit})", "",
               f"Machine: {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}; "
               f"MariaDB {version}; {gzip_v}; {gpg_v}; {mydumper_v}.",
               f"Database `{db}`: {data_bytes / (1 << 30):.2f} GiB of InnoDB row data, every text column {charset} (3 big tables of mixed types: "
               "DATETIME(6), DECIMAL, ENUM, BIT, DOUBLE, JSON, INET6, VARBINARY, MEDIUMTEXT, BLOB; 200 small tables).",
               f"Median of {args.runs} runs, the commands alternating; caches warmed first.", "",
               "| command | wall | CPU (process tree) | peak RSS (largest process) | output |", "|---|---|---|---|---|"]
    section.append(fmt_row("backup-agent backup", med["agent backup"]))
    section.append(fmt_row("mariadb-dump \\| gzip \\| gpg \\| tee \\| sha256sum", med["shell backup"]))
    section.append(fmt_row("mydumper -t 2 -c (no encryption, no checksum)", med["mydumper"]))
    a, s, m = med["agent backup"], med["shell backup"], med["mydumper"]
    ratios = [f"- backup wall time: agent / shell = **{ratio(a['wall'], s['wall']):.2f}** (target <= 0.35), agent / mydumper = **{ratio(a['wall'], m['wall']):.2f}** (target <= 0.6)",
              f"- backup CPU time: agent / shell = {ratio(a['cpu'], s['cpu']):.2f}",
              f"- output size: agent / shell = **{ratio(a['size'], s['size']):.3f}** (target <= 1.00), agent / mydumper = {ratio(a['size'], m['size']):.3f}",
              f"- agent peak RSS, backup: **{a['rss_kib'] / 1024:.1f} MiB** (target <= 64 MiB)"]
    if "agent restore" in med:
        section.append(fmt_row(f"restore --into (verified, 2 passes{', --jobs ' + str(args.jobs) if args.jobs else ''})", med["agent restore"]))
        section.append(fmt_row("gpg -d \\| gunzip \\| mariadb (unverified)", med["shell restore"]))
        section.append(fmt_row("myloader -t 2 (mydumper's output)", med["myloader"]))
        ar, sr, ml = med["agent restore"], med["shell restore"], med["myloader"]
        ratios.append(f"- restore wall time: verified restore / stock pipeline = **{ratio(ar['wall'], sr['wall']):.2f}** (target <= 0.6), "
                      f"verified restore / myloader = **{ratio(ar['wall'], ml['wall']):.2f}** (target < 1.0)")
        ratios.append(f"- agent peak RSS, restore: **{ar['rss_kib'] / 1024:.1f} MiB** (target <= 128 MiB)")
        ratios.append("- the restored database equals the source (every table's row count and CRC32 sum)")
    if s3_run:
        section.append(fmt_row("backup-agent backup to local + S3 (Garage, 16 MiB parts, 2 in flight)", s3_run))
        ratios.append(f"- agent peak RSS with an S3 store: **{s3_run['rss_kib'] / 1024:.1f} MiB** "
                      "(bound: 64 MiB + 2 parts in flight x 16 MiB + the part being filled = 112 MiB)")
    section += ["", *ratios, "", "Raw figures (wall s, CPU s, peak RSS MiB, output bytes):", ""]
    for k, v in raw.items():
        for i, r in enumerate(v):
            section.append(f"- {k} run {i + 1}: {r['wall']:.2f}, {r['cpu']:.2f}, {r['rss_kib'] / 1024:.1f}" + (f", {r['size']}" if "size" in r else ""))
    section.append("")

    header = "# Benchmarks\n\nProduced by `scripts/bench.py` (run by hand: `scripts/bench.py --gib 1`). Each run appends a section; the newest is last.\n\n"
    old = open(args.out).read() if os.path.exists(args.out) else header
    if not old.startswith("# Benchmarks"):
        old = header + old
    with open(args.out, "w") as f:
        f.write(old.rstrip("\n") + "\n\n" + "\n".join(section))
    print("\n".join(section))
    shutil.rmtree(work, ignore_errors=True)


def table_fingerprint(sock, db):
    """Every table's row count and CRC32 sum over all its columns (CHECKSUM TABLE)."""
    tables = sql(sock, f"SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA='{db}' ORDER BY TABLE_NAME").split()
    return sql(sock, "CHECKSUM TABLE " + ", ".join(f"`{db}`.`{t}`" for t in tables) + " EXTENDED")


def proc_cpu_rss(pid):
    """CPU seconds (user+sys) and peak RSS (KiB) of a running process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return cpu, hwm


def write_steady(sock, rate, seconds, start_id):
    """A writer at a steady rate (insert + update per transaction); returns (transactions, last id)."""
    p = subprocess.Popen(["mariadb", f"--socket={sock}", "-uroot", "pitr"], stdin=subprocess.PIPE, text=True)
    n, i = 0, start_id
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        due = t0 + n / rate if rate else 0
        if rate and time.monotonic() < due:
            time.sleep(due - time.monotonic())
        p.stdin.write(f"BEGIN; INSERT INTO w VALUES ({i}, REPEAT('x', 200), NOW(6)); UPDATE w SET v = CONCAT('u', v) WHERE id = {i - 10}; COMMIT;\n")
        n += 1
        i += 1
        if rate == 0 and n >= seconds:
            break
    p.stdin.close()
    p.wait()
    return n, i


def pitr_bench(args):
    lib("ba_need_packages bench")
    lib(f"ba_build {ROOT}")
    src_dir, dst_dir = f"{BENCH_DIR}/source", f"{BENCH_DIR}/scratch"
    lib(f"ba_start_instance {src_dir} {SRC_PORT} 1 1 bench-admin")
    lib(f"ba_start_instance {dst_dir} {DST_PORT} 2 0 bench-admin")
    src_sock, dst_sock = f"{src_dir}/mysqld.sock", f"{dst_dir}/mysqld.sock"
    sql(src_sock, "DROP DATABASE IF EXISTS pitr; CREATE DATABASE pitr")
    sql(src_sock, "CREATE TABLE w (id INT PRIMARY KEY, v TEXT, t DATETIME(6)) ENGINE=InnoDB;"
                  "INSERT INTO w SELECT seq, REPEAT('s', 200), NOW(6) FROM seq_1_to_100000", "pitr")
    for h in ("127.0.0.1", "localhost"):
        sql(src_sock, f"CREATE OR REPLACE USER 'bench'@'{h}' IDENTIFIED BY 'bench'; GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES, RELOAD, BINLOG MONITOR, REPLICATION SLAVE ON *.* TO 'bench'@'{h}'")
    work = tempfile.mkdtemp(prefix="bench-pitr-", dir=BENCH_DIR)
    os.makedirs(f"{work}/store")
    env = dict(os.environ, BACKUP_AGENT_LOG_FORMAT="json")
    with open(f"{work}/pw", "w") as f:
        f.write("bench\n")
    write_config(work, src_sock, "pitr", agent='http_bind = "127.0.0.1:0"\n',
                 source='schedule = "0 3 1 1 *"\n[source.binlog]\nsegment_max_age = "1m"\n')
    sh(f"{AGENT} --config {work}/config.toml backup > /dev/null", env=env)
    daemon = subprocess.Popen([AGENT, "--config", f"{work}/config.toml", "run"], env=env,
                              stdout=open(f"{work}/daemon.log", "w"), stderr=subprocess.STDOUT)
    time.sleep(3)
    cpu0, _ = proc_cpu_rss(daemon.pid)
    print(f"steady writer: {args.pitr_rate} tx/s for {args.pitr_seconds} s ...", flush=True)
    t0 = time.monotonic()
    n1, next_id = write_steady(src_sock, args.pitr_rate, args.pitr_seconds, 1_000_000)
    steady_wall = time.monotonic() - t0
    time.sleep(65)  # the last segment's age limit
    cpu1, hwm = proc_cpu_rss(daemon.pid)
    binlog1 = sum(os.path.getsize(os.path.join(f"{work}/store/bench/binlog", x)) for x in os.listdir(f"{work}/store/bench/binlog") if x.endswith(".binlog.gz.gpg"))
    print(f"archiver: {cpu1 - cpu0:.1f} CPU s over {steady_wall + 65:.0f} s, peak RSS {hwm / 1024:.1f} MiB", flush=True)
    print(f"an hour of transactions ({args.pitr_hour}) as fast as possible ...", flush=True)
    t1 = time.monotonic()
    n2, next_id = write_steady(src_sock, 0, args.pitr_hour, next_id)
    burst_wall = time.monotonic() - t1
    last_gtid = sql(src_sock, "SELECT @@gtid_binlog_pos").strip()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        st = open(f"{work}/state/state.json").read()
        if f'"binlog_position": "{last_gtid}"' in st:
            break
        time.sleep(2)
    archive_wall = time.monotonic() - t1
    cpu2, hwm2 = proc_cpu_rss(daemon.pid)
    daemon.terminate()
    daemon.wait()
    segs = [x for x in os.listdir(f"{work}/store/bench/binlog") if x.endswith(".binlog.gz.gpg")]
    sealed = sum(os.path.getsize(os.path.join(f"{work}/store/bench/binlog", x)) for x in segs)
    binlog_bytes = 0
    import json
    for x in os.listdir(f"{work}/store/bench/binlog"):
        if x.endswith(".manifest.json"):
            binlog_bytes += json.load(open(os.path.join(f"{work}/store/bench/binlog", x)))["binlog_bytes"]
    sql(dst_sock, "DROP DATABASE IF EXISTS pitr")
    r = measure(f"{RESTORE} --into 'mysql://root@localhost/?socket={dst_sock}' --no-password --config {work}/config.toml"
                f" --until-gtid {last_gtid} --dpo-key {ROOT}/testdata/dpo.sec.asc --agent-cert {ROOT}/testdata/agent.pub.asc", env)
    rows_src = sql(src_sock, "SELECT COUNT(*), SUM(CRC32(CONCAT(id, v, t))) FROM pitr.w").strip()
    rows_dst = sql(dst_sock, "SELECT COUNT(*), SUM(CRC32(CONCAT(id, v, t))) FROM pitr.w").strip()
    if rows_src != rows_dst:
        sys.exit(f"restore differs: source {rows_src}, restored {rows_dst}")
    sql(dst_sock, "DROP DATABASE IF EXISTS pitr")
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cpu = subprocess.run("lscpu | sed -n 's/^Model name: *//p'", shell=True, capture_output=True, text=True).stdout.strip()
    section = [f"## Point-in-time recovery ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit})", "",
               f"Machine: {os.cpu_count()} cores ({cpu}); MariaDB {sql(src_sock, 'SELECT VERSION()').strip()}, binlog_format=ROW, "
               "the source and the agent on the same machine. Each transaction: one INSERT of a 200-byte row and one UPDATE.", "",
               "| what | figure |", "|---|---|",
               f"| archiver CPU, steady writer {args.pitr_rate} tx/s for {args.pitr_seconds} s ({n1} tx) | {cpu1 - cpu0:.1f} CPU s over {steady_wall + 65:.0f} s = {100 * (cpu1 - cpu0) / (steady_wall + 65):.1f}% of one core |",
               f"| archiver peak RSS (whole daemon) | {hwm / 1024:.1f} MiB after the steady phase, {hwm2 / 1024:.1f} MiB after the burst |",
               f"| burst: {n2} tx written in {burst_wall:.0f} s, all archived after | {archive_wall:.0f} s |",
               f"| archived: {len(segs)} segments, binary log {binlog_bytes / (1 << 20):.1f} MiB, sealed {sealed / (1 << 20):.1f} MiB | |",
               f"| restore --until-gtid (dump of 100k rows + {n1 + n2} tx of log, verified first) | {r['wall']:.1f} s wall, {r['cpu']:.1f} CPU s, {r['rss_kib'] / 1024:.0f} MiB peak RSS |",
               "", f"The restored table equals the source ({rows_dst.split()[0]} rows, same checksum).", ""]
    old = open(args.out).read()
    with open(args.out, "w") as f:
        f.write(old.rstrip("\n") + "\n\n" + "\n".join(section))
    print("\n".join(section))
    shutil.rmtree(work, ignore_errors=True)


TENANT_TABLES = 392
TENANT_VERSION = "t1"


def tenant_schema_sql():
    """An ERP-like schema (Dolibarr's is GPL and too large to vendor): 392 tables, ~12k rows,
    foreign keys, latin1 and utf8mb3 columns, one MyISAM table; table i references i // 2."""
    out = ["SET foreign_key_checks = 0;"]
    for i in range(TENANT_TABLES):
        fk = f", fk_parent INT, KEY (fk_parent), CONSTRAINT fk_{i} FOREIGN KEY (fk_parent) REFERENCES llx_t{i // 2:03d} (rowid)" if i > 0 else ""
        engine = "MyISAM" if i == TENANT_TABLES - 1 else "InnoDB"
        if engine == "MyISAM":
            fk = ""
        out.append(f"CREATE TABLE llx_t{i:03d} (rowid INT PRIMARY KEY, ref VARCHAR(30) CHARACTER SET latin1, "
                   f"label VARCHAR(255) CHARACTER SET utf8mb3, note TEXT CHARACTER SET latin1, amount DECIMAL(24,8), "
                   f"datec DATETIME, tms TIMESTAMP NOT NULL DEFAULT '2024-01-01 00:00:00', status SMALLINT{fk}) ENGINE={engine} DEFAULT CHARSET=utf8mb3;")
        rows = 60 if i % 8 == 0 else 25
        parent = ", 1 + seq % 20" if fk else ""
        out.append(f"INSERT INTO llx_t{i:03d} SELECT seq, CONCAT('REF', seq), CONCAT('Libellé ', seq, ' Müller & Söhne'), "
                   f"CONCAT('Note ', SHA1(seq + {i})), seq * 1.5, '2024-01-01' + INTERVAL seq HOUR, '2024-02-01', seq % 3{parent} FROM seq_1_to_{rows};")
    out.append("SET foreign_key_checks = 1;")
    return "\n".join(out)


def tenants_bench(args):
    """N tenant databases on one server: backup-agent (one split source, a backup per
    database, accounts scoped) against the shell loop of mariadb-dump | gzip | gpg."""
    lib("ba_need_packages bench")
    lib(f"ba_build {ROOT}")
    src_dir = f"{BENCH_DIR}/source"
    lib(f"ba_start_instance {src_dir} {SRC_PORT} 1 1 bench-admin")
    sock = f"{src_dir}/mysqld.sock"
    sql(sock, "SET GLOBAL max_connections = 500")
    for h in ("127.0.0.1", "localhost"):
        sql(sock, f"CREATE OR REPLACE USER 'bench'@'{h}' IDENTIFIED BY 'bench'; GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES, RELOAD, BINLOG MONITOR ON *.* TO 'bench'@'{h}'")
    n = args.tenants
    dbs = [f"tenant_{i:03d}" for i in range(1, n + 1)]
    schema = os.path.join(BENCH_DIR, f"tenant-{TENANT_VERSION}.sql")
    with open(schema, "w") as f:
        f.write(tenant_schema_sql())
    for db in dbs:
        ok = sql(sock, f"SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA='{db}'").strip() == str(TENANT_TABLES)
        if ok:
            continue
        print(f"building {db} ...", flush=True)
        sql(sock, f"DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db} CHARACTER SET utf8mb3")
        sh(f"mariadb --socket={sock} -uroot {db} < {schema}")
        sql(sock, f"CREATE OR REPLACE USER 'u_{db}'@'%' IDENTIFIED BY 'pw-{db}'; GRANT ALL ON {db}.* TO 'u_{db}'@'%'")
    rows = sql(sock, f"SELECT SUM(TABLE_ROWS) FROM information_schema.TABLES WHERE TABLE_SCHEMA='{dbs[0]}'").strip()
    work = tempfile.mkdtemp(prefix="bench-tenants-", dir=BENCH_DIR)
    gnupg = os.path.join(work, "gnupg")
    os.makedirs(gnupg, mode=0o700)
    os.makedirs(f"{work}/shell")
    os.makedirs(f"{work}/store")
    env = dict(os.environ, GNUPGHOME=gnupg, BACKUP_AGENT_LOG_FORMAT="json")
    sh(f"gpg --batch -q --import {ROOT}/testdata/dpo.pub.asc", env=env)
    with open(f"{work}/pw", "w") as f:
        f.write("bench\n")
    jobs = os.cpu_count() or 2
    write_config(work, sock, "tenant_*", agent=f"max_concurrent_backups = {jobs}\n",
                 source='split = "database"\n')
    # users_and_grants: the agent carries each tenant's own account, as the loop cannot.
    cfgtext = open(f"{work}/config.toml").read().replace("users_and_grants = false", "users_and_grants = true")
    open(f"{work}/config.toml", "w").write(cfgtext)
    loop = ("for db in " + " ".join(dbs) + "; do "
            f"mariadb-dump --socket={sock} -ubench -pbench --single-transaction --routines --triggers --events --databases $db"
            f" | gzip | gpg --batch --trust-model always --encrypt -r dpo@backup-agent.invalid | tee {work}/shell/$db.sql.gz.gpg"
            f" | sha256sum > {work}/shell/$db.sha256 || exit 1; done")
    agent = f"{AGENT} --config {work}/config.toml backup 2> {work}/agent.log"
    sh(f"mariadb-dump --socket={sock} -uroot --all-databases > /dev/null")
    shell_runs, agent_runs = [], []
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs}: shell loop ...", flush=True)
        shell_runs.append(measure(loop, env))
        print(f"run {i + 1}/{args.runs}: backup-agent ...", flush=True)
        agent_runs.append(measure(agent, env))
        time.sleep(1)
    per_db = [x for x in os.listdir(f"{work}/store/bench") if x.startswith("tenant_")]
    if len(per_db) != n:
        sys.exit(f"expected {n} database directories in the store, found {len(per_db)}")
    shell_size = sum(os.path.getsize(f"{work}/shell/{x}") for x in os.listdir(f"{work}/shell") if x.endswith(".gpg"))
    agent_size = 0
    for db in dbs:
        files = sorted(x for x in os.listdir(f"{work}/store/bench/{db}") if x.endswith(".sql.gz.gpg"))
        agent_size += os.path.getsize(f"{work}/store/bench/{db}/{files[-1]}")
    med = lambda runs, k: statistics.median(r[k] for r in runs)
    walls = lambda runs: ", ".join(f"{r['wall']:.1f}" for r in runs)
    sw, aw = med(shell_runs, "wall"), med(agent_runs, "wall")
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cpu = subprocess.run("lscpu | sed -n 's/^Model name: *//p'", shell=True, capture_output=True, text=True).stdout.strip()
    section = [f"## Many tenants: {n} databases, one backup each ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit})", "",
               f"Machine: {os.cpu_count()} cores ({cpu}); MariaDB {sql(sock, 'SELECT VERSION()').strip()} on the same machine, over its socket. "
               f"Each database: {TENANT_TABLES} tables (foreign keys, latin1 and utf8mb3 text, one MyISAM table), about {rows} rows, its own account. "
               f"backup-agent: one `split = \"database\"` source, `max_concurrent_backups = {jobs}`, accounts scoped to each database; "
               "the shell loop: `mariadb-dump --single-transaction --routines --triggers --events --databases $db | gzip | gpg -e | tee | sha256sum` per database. "
               f"Median of {args.runs} runs, alternating.", "",
               "| what | wall | CPU | peak RSS | sealed output |", "|---|---|---|---|---|",
               f"| shell loop | {sw:.1f} s | {med(shell_runs, 'cpu'):.1f} s | {max(r['rss_kib'] for r in shell_runs) / 1024:.0f} MiB | {shell_size / (1 << 20):.1f} MiB |",
               f"| backup-agent backup | {aw:.1f} s | {med(agent_runs, 'cpu'):.1f} s | {max(r['rss_kib'] for r in agent_runs) / 1024:.0f} MiB | {agent_size / (1 << 20):.1f} MiB |",
               "", f"backup-agent / shell loop: wall {ratio(aw, sw):.2f}x ({ratio(sw, aw):.1f} times faster), "
               f"{aw / n:.2f} s per database. Raw runs (wall s): shell {walls(shell_runs)}; agent {walls(agent_runs)}.", ""]
    old = open(args.out).read()
    with open(args.out, "w") as f:
        f.write(old.rstrip("\n") + "\n\n" + "\n".join(section))
    print("\n".join(section))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
