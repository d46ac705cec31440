//! Faults and attacks against the restore path (issue 11), against the real servers and
//! binaries: what a tamperer with write access to the backup file, or a hostile input,
//! can make `restore` do.

mod common;
use common::*;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A backup file rewritten in place (same inode) between the verification pass and the
/// replay, here with the bytes of another validly signed backup, restores nothing: the
/// replay reads only blocks identical to those verified.
#[test]
fn a_file_changed_in_place_after_verification_restores_nothing() {
    let src = source();
    let dst = target();
    let db = unique("inplace");
    src.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    src.sql_db(
        &db,
        "CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t SELECT seq, 'first' FROM seq_1_to_2000",
    );
    let setup = Setup::new(&src, &db);
    ok(
        &setup.agent(&src, &["backup", "--now", "2026-03-01T02:00:00Z"]),
        "backup A",
    );
    src.sql_db(
        &db,
        "UPDATE t SET v = 'second'; INSERT INTO t VALUES (9999, 'only in B')",
    );
    ok(
        &setup.agent(&src, &["backup", "--now", "2026-03-02T02:00:00Z"]),
        "backup B",
    );
    let a = setup
        .store()
        .join("main/mariadb_2026-03-01_020000.sql.gz.gpg");
    let b = setup
        .store()
        .join("main/mariadb_2026-03-02_020000.sql.gz.gpg");
    let b_bytes = std::fs::read(&b).unwrap();
    dst.drop_db(&db);

    let pause = setup.path("pause");
    let child = Command::new(restore_bin())
        .args(into_args(&dst, &a, &setup.path("target.password")))
        .env("BACKUP_RESTORE_TEST_PAUSE", &pause)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !pause.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "restore never reached the end of its verification pass"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Verified: now rewrite A in place with B's bytes (B is validly signed too).
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&a)
        .unwrap();
    f.write_all(&b_bytes).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::remove_file(&pause).unwrap();
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("changed after it was verified"),
        "the error names the cause: {err}"
    );
    assert!(
        !dst.databases().contains(&db),
        "nothing of the rewritten file reached the server: {err}"
    );
    // What was written in is a good backup in its own right: unchecked, it would have
    // been restored in A's place.
    ok(
        &restore(&into_args(&dst, &b, &setup.path("target.password"))),
        "restore of B itself",
    );
    assert_eq!(dst.sql_db(&db, "SELECT COUNT(*) FROM t").trim(), "2001");
    src.drop_db(&db);
    dst.drop_db(&db);
}
