//! `restore --verify`, the drill: passes on the round-trip schema (ephemeral scratch server
//! and --scratch), fails and alerts on bad files and on validly signed dumps whose content
//! disagrees with their trailer, and leaves no scratch server behind when interrupted.

mod common;
use common::receivers::*;
use common::*;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn drill(extra: &[String]) -> (std::process::Output, serde_json::Value) {
    let mut args = vec!["--verify".to_string(), "--json".into()];
    args.extend(key_args());
    args.extend(extra.iter().cloned());
    let o = restore(&args);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o, v)
}

#[test]
fn drill_passes_on_the_round_trip_schema_with_ephemeral_and_given_scratch() {
    let src = source();
    let dst = target();
    let db = unique("drill");
    load_schema(&src, &db);
    let mut setup = Setup::new(&src, &db);
    let hook = Receiver::start(Mode::Ok);
    setup.webhook_to(&hook);
    ok(&setup.agent(&src, &["backup"]), "backup");
    let cfg = setup.config(&src);
    let tmp = setup.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();

    let mut args = key_args();
    args.splice(
        0..0,
        [
            "--verify".to_string(),
            "--json".into(),
            "--config".into(),
            cfg.display().to_string(),
        ],
    );
    let o = Command::new(restore_bin())
        .args(&args)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("{}\n{}", String::from_utf8_lossy(&o.stdout), stderr(&o)));
    assert_eq!(o.status.code(), Some(0), "{r:#}\n{}", stderr(&o));
    assert_eq!(r["success"], true);
    assert_eq!(r["tables_compared"], 22, "{r:#}");
    assert!(r["objects_checked"].as_u64().unwrap() >= 11, "{r:#}");
    assert!(r["restore_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(r["source"], "main");
    assert_eq!(r["store"], "local");
    for c in r["checks"].as_array().unwrap() {
        assert_eq!(c["ok"], true, "{c}");
    }
    // The objects' definer (the test's admin account, with global privileges) is not in
    // this backup of one database: the ephemeral server stands in for it, and says so.
    let definers = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "definers")
        .unwrap_or_else(|| panic!("no definers check: {r:#}"));
    assert!(
        definers["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("`{ADMIN_USER}`@`localhost`")),
        "{definers}"
    );
    // The ephemeral server and its directory are gone.
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    // The record: drill.json in the state dir (the healthcheck reads it), a report in the store.
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(setup.path("state/drill.json")).unwrap())
            .unwrap();
    assert_eq!(rec["success"], true);
    assert!(
        setup
            .store_files()
            .iter()
            .any(|f| f.starts_with("main/drills/drill_")),
        "{:?}",
        setup.store_files()
    );
    assert_eq!(
        hook.wait_event("drill_succeeded", Duration::from_secs(5))["status"],
        "success"
    );

    // A failing drill alerts too: the newest backup's data object is damaged in the store.
    let data = setup.only_backup();
    let good = std::fs::read(&data).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n / 3] ^= 0x04;
    std::fs::write(&data, &bad).unwrap();
    let o = Command::new(restore_bin())
        .args(&args)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let failed = hook.wait_event("drill_failed", Duration::from_secs(5));
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("checksum mismatch"),
        "{failed}"
    );
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(setup.path("state/drill.json")).unwrap())
            .unwrap();
    assert_eq!(rec["success"], false);
    std::fs::write(&data, &good).unwrap();
    ok(
        &Command::new(restore_bin())
            .args(&args)
            .env("TMPDIR", &tmp)
            .output()
            .unwrap(),
        "drill after repair",
    );

    // Another agent (its own state dir, no drill.json) learns of the drill from the store.
    setup.agent_extra = "drill_max_age = \"35d\"\n".into();
    std::fs::remove_file(setup.path("state/drill.json")).unwrap();
    let hc = setup.agent(&src, &["healthcheck"]);
    assert_eq!(
        hc.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&hc.stdout)
    );
    for f in setup
        .store_files()
        .iter()
        .filter(|f| f.contains("/drills/"))
    {
        std::fs::remove_file(setup.store().join(f)).unwrap();
    }
    let hc = setup.agent(&src, &["healthcheck"]);
    assert_eq!(
        hc.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&hc.stdout)
    );
    assert!(String::from_utf8_lossy(&hc.stdout).contains("no restore drill on record"));
    setup.agent_extra.clear();

    // The same drill into a given scratch server, which must not hold the databases.
    dst.sql(&format!("CREATE DATABASE `{db}`"));
    let mut scratch = vec!["--config".to_string(), cfg.display().to_string()];
    scratch.extend(scratch_args(&dst, &setup.path("scratch.pw")));
    let (o, r) = drill(&scratch);
    assert_eq!(o.status.code(), Some(1), "{r:#}");
    assert!(
        r["error"].as_str().unwrap().contains("already holds"),
        "{r:#}"
    );
    dst.drop_db(&db);
    let (o, r) = drill(&scratch);
    assert_eq!(o.status.code(), Some(0), "{r:#} {}", stderr(&o));
    assert_eq!(r["tables_compared"], 22);
    assert!(
        !dst.databases().contains(&db),
        "the drill cleans the scratch server"
    );
    // Never the production server.
    let mut prod = scratch.clone();
    prod[3] = format!("mysql://{ADMIN_USER}@127.0.0.1:{}/", src.port);
    let (o, r) = drill(&prod);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        r["error"].as_str().unwrap().contains("production server"),
        "{r:#}"
    );
    src.drop_db(&db);
}

/// The SQL of a backup, verified and decrypted by `restore --decrypt`.
fn plaintext(data: &Path, dir: &Path) -> String {
    let out = dir.join("plain.sql");
    let mut args = vec![
        "--decrypt".to_string(),
        data.display().to_string(),
        "-o".into(),
        out.display().to_string(),
    ];
    args.extend(key_args());
    ok(&restore(&args), "restore --decrypt");
    std::fs::read_to_string(&out).unwrap()
}

/// Seals SQL exactly as the agent does (gzip, signed by the agent key, encrypted to the
/// DPO), with a .sha256 file: a valid backup whose content is whatever we say.
fn seal(sql: &str, dir: &Path, n: usize) -> PathBuf {
    let d = dir.join(format!("case{n}"));
    std::fs::create_dir_all(&d).unwrap();
    // Named after the backup the dump says it is (its signed identity line), as the
    // agent names it: a file under another backup's name is refused for that alone.
    let id_line = sql
        .lines()
        .find_map(|l| l.strip_prefix("-- Backup identity: "))
        .expect("the dump's identity line");
    let id: serde_json::Value = serde_json::from_str(id_line).unwrap();
    let name = &format!("{}.sql.gz.gpg", id["backup_id"].as_str().unwrap());
    let keys = Arc::new(agent_sealing_keys());
    let mut out = Vec::new();
    {
        let sealer = keys.seal(&mut out).unwrap();
        let mut gz = flate2::write::GzEncoder::new(sealer, flate2::Compression::new(6));
        gz.write_all(sql.as_bytes()).unwrap();
        gz.finish().unwrap().finish().unwrap();
    }
    let path = d.join(name);
    std::fs::write(&path, &out).unwrap();
    let sum = backup_core::checksum::hash_stream(&out[..]).unwrap();
    std::fs::write(
        d.join(format!("{name}.sha256")),
        backup_core::checksum::sha256_line(&sum.sha256, name),
    )
    .unwrap();
    path
}

#[test]
fn validly_signed_dumps_that_disagree_with_their_trailer_fail_the_drill() {
    let src = source();
    let dst = target();
    let db = unique("tamper");
    src.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    src.sql_db(
        &db,
        "CREATE TABLE t (id INT PRIMARY KEY, a INT, b VARCHAR(10)); INSERT INTO t VALUES (1,10,'x'),(2,20,'y');\
         CREATE TABLE k (a INT); INSERT INTO k VALUES (7),(7),(7);\
         CREATE TABLE ty (id INT PRIMARY KEY, i BIGINT, d DECIMAL(6,2), f DOUBLE, s VARCHAR(10), bn VARBINARY(4), dt DATETIME(3), \
           e ENUM('a','b','c'), j JSON, bt BIT(8), y YEAR, l1 VARCHAR(5) CHARACTER SET latin1);\
         INSERT INTO ty VALUES (1, 12, 1.50, 2.5, 'hello', 'ab', '2024-05-06 07:08:09.123', 'a', '{\"k\": 1}', 2, 2001, 'zz')",
    );
    let setup = Setup::new(&src, &db);
    ok(&setup.agent(&src, &["backup"]), "backup");
    let sql = plaintext(&setup.only_backup(), setup.dir.path());
    let scratch = scratch_args(&dst, &setup.path("scratch.pw"));
    dst.drop_db(&db);

    // The untouched SQL, re-sealed, passes: the checks below fail for the change alone.
    let mut args = scratch.clone();
    args.extend([
        "--backup".to_string(),
        seal(&sql, setup.dir.path(), 0).display().to_string(),
    ]);
    let (o, r) = drill(&args);
    assert_eq!(o.status.code(), Some(0), "{r:#} {}", stderr(&o));

    let ty_row = sql
        .lines()
        .find(|l| l.starts_with("INSERT INTO `ty`"))
        .unwrap()
        .to_string();
    let flip = |from: &str, to: &str| {
        assert_eq!(from.len(), to.len());
        let diff: u32 = from
            .bytes()
            .zip(to.bytes())
            .map(|(a, b)| (a ^ b).count_ones())
            .sum();
        assert_eq!(diff, 1, "{from} -> {to} must flip exactly one bit");
        let new_row = ty_row.replacen(from, to, 1);
        assert_ne!(new_row, ty_row, "{from} not found in {ty_row}");
        sql.replacen(&ty_row, &new_row, 1)
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "one value changed",
            sql.replacen("(1,10,'x')", "(1,11,'x')", 1),
            "table ",
        ),
        (
            "values swapped between rows",
            sql.replacen("(1,10,'x'),(2,20,'y')", "(1,20,'x'),(2,10,'y')", 1),
            ".t: content",
        ),
        (
            "duplicate row dropped",
            sql.replacen("(7),(7),(7)", "(7),(7)", 1),
            ".k: 2 rows restored, 3 dumped",
        ),
        ("bit flip BIGINT", flip("(1,12,", "(1,13,"), ".ty: content"),
        ("bit flip DECIMAL", flip("1.50", "1.51"), ".ty: content"),
        ("bit flip DOUBLE", flip("2.5,", "2.4,"), ".ty: content"),
        (
            "bit flip VARCHAR",
            flip("'hello'", "'hellm'"),
            ".ty: content",
        ),
        (
            "bit flip VARBINARY",
            flip("_binary 'ab'", "_binary 'ac'"),
            ".ty: content",
        ),
        (
            "bit flip DATETIME",
            flip("07:08:09.123", "07:08:09.122"),
            ".ty: content",
        ),
        ("bit flip ENUM", flip(",'a',", ",'c',"), ".ty: content"),
        (
            "bit flip JSON",
            flip("\"k\": 1", "\"k\": 0"),
            ".ty: content",
        ),
        ("bit flip BIT", flip(",0x02,", ",0x03,"), ".ty: content"),
        ("bit flip YEAR", flip(",2001,", ",2000,"), ".ty: content"),
        ("bit flip latin1", flip(",'zz')", ",'z{')"), ".ty: content"),
        (
            "column definition changed",
            sql.replacen(
                "`b` varchar(10) DEFAULT NULL",
                "`b` varchar(11) DEFAULT NULL",
                1,
            ),
            ".t: definition",
        ),
    ];
    for (i, (what, text, expect)) in cases.iter().enumerate() {
        assert_ne!(text, &sql, "{what}: the change did not apply");
        let mut args = scratch.clone();
        args.extend([
            "--backup".to_string(),
            seal(text, setup.dir.path(), i + 1).display().to_string(),
        ]);
        let (o, r) = drill(&args);
        assert_eq!(o.status.code(), Some(1), "{what}: the drill passed: {r:#}");
        let m = r["mismatches"].to_string();
        assert!(m.contains(expect), "{what}: expected {expect:?} in {m}");
        assert!(
            !dst.databases().contains(&db),
            "{what}: the scratch server was not cleaned"
        );
    }
    src.drop_db(&db);
}

#[test]
fn bad_files_fail_the_drill_before_any_server_is_touched() {
    let src = source();
    let dst = target();
    let db = unique("drillbad");
    src.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    src.sql_db(&db, "CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t SELECT seq, SHA2(seq, 256) FROM seq_1_to_2000");
    let setup = Setup::new(&src, &db);
    ok(&setup.agent(&src, &["backup"]), "backup");
    let good = std::fs::read(setup.only_backup()).unwrap();
    let scratch = scratch_args(&dst, &setup.path("scratch.pw"));
    let before = dst.databases();
    let name = "mariadb_2026-01-01_000000.sql.gz.gpg";
    let mut flipped = good.clone();
    let n = flipped.len();
    flipped[n / 2] ^= 0x10;
    for (label, bytes, resum, expect) in [
        ("flipped", flipped.clone(), false, "sha256"),
        ("flipped-resummed", flipped, true, "failed verification"),
        (
            "truncated",
            good[..n - 100].to_vec(),
            true,
            "failed verification",
        ),
    ] {
        let d = setup.path(label);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), &bytes).unwrap();
        let digest = if resum {
            backup_core::checksum::hash_stream(&bytes[..])
                .unwrap()
                .sha256
        } else {
            backup_core::checksum::hash_stream(&good[..])
                .unwrap()
                .sha256
        };
        std::fs::write(
            d.join(format!("{name}.sha256")),
            backup_core::checksum::sha256_line(&digest, name),
        )
        .unwrap();
        let mut args = vec!["--backup".into(), d.join(name).display().to_string()];
        args.extend(scratch.iter().cloned());
        let (o, r) = drill(&args);
        assert_eq!(o.status.code(), Some(1), "{label}: {r:#}");
        assert!(
            r["error"].as_str().unwrap_or("").contains(expect)
                || r["checks"].to_string().contains(expect),
            "{label}: {r:#}"
        );
        assert_eq!(r["success"], false);
        assert_eq!(
            dst.databases(),
            before,
            "{label}: the scratch server changed"
        );
    }
    src.drop_db(&db);
}

#[test]
fn an_interrupted_drill_leaves_no_scratch_server() {
    let src = source();
    let db = unique("drillkill");
    src.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    src.sql_db(&db, "CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t SELECT seq, REPEAT(SHA2(seq, 256), 4) FROM seq_1_to_300000");
    let setup = Setup::new(&src, &db);
    ok(&setup.agent(&src, &["backup"]), "backup");
    let tmp = setup.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut args = vec![
        "--verify".to_string(),
        "--backup".into(),
        setup.only_backup().display().to_string(),
    ];
    args.extend(key_args());
    let child = Command::new(restore_bin())
        .args(&args)
        .env("TMPDIR", &tmp)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the scratch server runs and the replay has begun.
    let t0 = Instant::now();
    let dir = loop {
        let found = std::fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("mysqld.sock").exists());
        if let Some(d) = found {
            break d;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the scratch server never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // The replay has begun once the table's file is in the scratch datadir; its rows
    // (tens of MB) are still being loaded when the signal comes. A fixed wait was too
    // long on a fast machine: the drill had finished.
    let table = dir.join("data").join(&db).join("t.ibd");
    while !table.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the replay never began"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("terminated; the scratch server was removed"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.exists(), "{} is still there", dir.display());
    let ps = Command::new("pgrep")
        .args(["-f", &dir.display().to_string()])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "a scratch mariadbd still runs: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
    src.drop_db(&db);
}
