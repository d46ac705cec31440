//! backup-agent on bad input: every problem named with its key and place, exit codes from
//! the contract, and no artifact (not even a temp file) after a failed backup.

mod common;
use common::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use openpgp::cert::CertBuilder;
use openpgp::serialize::SerializeInto;
use sequoia_openpgp as openpgp;

fn small_db(src: &Server) -> String {
    let db = unique("af");
    src.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    src.sql_db(&db, "CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t SELECT seq, REPEAT(SHA2(seq, 256), 8) FROM seq_1_to_5000");
    db
}

fn assert_failed_cleanly(setup: &Setup, o: &std::process::Output, expect: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected exit 1: {err}");
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    assert!(
        setup.store_files().is_empty(),
        "a failed backup left {:?}",
        setup.store_files()
    );
}

#[test]
fn check_config_reports_every_problem_with_key_and_line() {
    let src = source();
    let db = small_db(&src);
    let mut setup = Setup::new(&src, &db);
    ok(
        &setup.agent(&src, &["check-config"]),
        "check-config of a good config",
    );

    // Four problems at once: unreadable password file, a secret key offered as the DPO
    // certificate, a public certificate offered as the signing key, a missing store dir.
    setup.dpo_certs = vec![testdata("dpo.sec.asc")];
    setup.signing_key = testdata("agent.pub.asc");
    let cfg = setup.config(&src);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("{:?}", setup.path("db.password")),
        "\"/nonexistent/db.password\"",
    );
    let text = text.replace(&format!("{:?}", setup.store()), "\"/nonexistent/store\"");
    std::fs::write(&cfg, &text).unwrap();
    let o = Command::new(agent_bin())
        .args(["--config", cfg.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(2), "{out}");
    let problems: Vec<&str> = out.lines().filter(|l| l.starts_with("problem: ")).collect();
    assert_eq!(problems.len(), 4, "{out}");
    for (key, what) in [
        ("source[0].password_file", "/nonexistent/db.password"),
        ("encryption.dpo_certificates[0]", "SECRET key material"),
        ("encryption.signing_key_file", "not a secret key"),
        ("store[0].path", "does not exist"),
    ] {
        let line = problems
            .iter()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("no problem for {key}: {out}"));
        assert!(line.contains(what), "{line}");
        // file:line:col: key: message
        assert!(line.contains(&format!("{}:", cfg.display())), "{line}");
    }

    // An unknown key is an error naming the key and its line; exit 2.
    std::fs::write(&cfg, text.replace("[agent]\n", "[agent]\nsitee = \"x\"\n")).unwrap();
    let o = Command::new(agent_bin())
        .args(["--config", cfg.to_str().unwrap(), "backup"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("sitee")
            && stderr(&o).contains(":2:")
            && stderr(&o).contains("did you mean `site`?"),
        "{}",
        stderr(&o)
    );
    src.drop_db(&db);
}

fn write_cert(setup: &Setup, name: &str, cert: &openpgp::Cert) -> std::path::PathBuf {
    let p = setup.path(name);
    std::fs::write(&p, cert.armored().to_vec().unwrap()).unwrap();
    p
}

#[test]
fn unusable_dpo_certificates_are_refused() {
    let src = source();
    let db = small_db(&src);
    let mut setup = Setup::new(&src, &db);
    let now = SystemTime::now();
    let (expired, _) = CertBuilder::new()
        .add_userid("expired dpo")
        .add_storage_encryption_subkey()
        .set_creation_time(now - Duration::from_secs(30 * 86400))
        .set_validity_period(Duration::from_secs(86400))
        .generate()
        .unwrap();
    let (sign_only, _) = CertBuilder::new()
        .add_userid("sign-only")
        .add_signing_subkey()
        .generate()
        .unwrap();
    let expired = write_cert(&setup, "expired.asc", &expired);
    let sign_only = write_cert(&setup, "sign-only.asc", &sign_only);
    for (cert, expect) in [
        (expired, "expired"),
        (sign_only, "no usable encryption subkey"),
        (testdata("dpo.sec.asc"), "SECRET key material"),
        (setup.path("missing.asc"), "cannot read"),
    ] {
        setup.dpo_certs = vec![testdata("dpo.pub.asc"), cert];
        let o = setup.agent(&src, &["backup"]);
        assert_failed_cleanly(&setup, &o, expect);
        let o = setup.agent(&src, &["check-config"]);
        assert_eq!(o.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&o.stdout).contains(expect));
    }
    src.drop_db(&db);
}

#[test]
fn unreachable_server_and_wrong_password_leave_nothing() {
    let src = source();
    let db = small_db(&src);
    let mut setup = Setup::new(&src, &db);
    setup.dump_password = "not-the-password".into();
    let o = setup.agent(&src, &["backup"]);
    assert_failed_cleanly(&setup, &o, "cannot connect to MariaDB at 127.0.0.1:");
    assert!(!stderr(&o).contains("not-the-password"));

    let closed = Server {
        port: 1,
        password: String::new(),
    };
    let setup = Setup::new(&src, &db);
    let o = setup.agent(&closed, &["backup"]);
    assert_failed_cleanly(&setup, &o, "cannot connect to MariaDB at 127.0.0.1:1");

    // A database in the include list that does not exist is named.
    let setup = Setup::new(&src, "no_such_database_here");
    let o = setup.agent(&src, &["backup"]);
    assert_failed_cleanly(&setup, &o, "no_such_database_here");
    src.drop_db(&db);
}

#[test]
fn dump_killed_mid_table_leaves_no_artifact() {
    let src = source();
    let db = unique("kill");
    src.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    src.sql_db(&db, "CREATE TABLE big (id INT PRIMARY KEY, v TEXT) ENGINE=InnoDB; INSERT INTO big SELECT seq, REPEAT(SHA2(seq, 256), 8) FROM seq_1_to_400000");
    let setup = Setup::new(&src, &db);
    let cfg = setup.config(&src);
    let child = Command::new(agent_bin())
        .args(["--config", cfg.to_str().unwrap(), "backup"])
        .env("TMPDIR", setup.path("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the dump reads the big table, then kill its connection from another session.
    let t0 = Instant::now();
    let killed = loop {
        let id = src.sql(&format!(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER='{}' AND INFO LIKE 'SELECT %big%'",
            setup.dump_user
        ));
        if let Some(id) = id.lines().next() {
            src.sql(&format!("KILL {id}"));
            break true;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let o = child.wait_with_output().unwrap();
    assert!(killed, "never saw the dump's query: {}", stderr(&o));
    assert_failed_cleanly(&setup, &o, &format!("reading rows of {db}.big"));
    assert!(
        stderr(&o).contains("the connection to the server was lost")
            && stderr(&o).contains("error log"),
        "says what happened and what to do: {}",
        stderr(&o)
    );
    src.drop_db(&db);
}

#[test]
fn full_disk_leaves_no_artifact() {
    let src = source();
    let db = small_db(&src);
    let setup = Setup::new(&src, &db);
    // A 64 KiB file system as the store: the backup (~400 KiB) cannot fit.
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(setup.store())
        .status()
        .unwrap();
    assert!(
        st.success(),
        "mounting a small tmpfs needs root (the test runs as root in CI)"
    );
    let o = setup.agent(&src, &["backup"]);
    let files = setup.store_files();
    let _ = Command::new("umount").arg(setup.store()).status();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    // Where: the file being written, and what to do.
    assert!(
        err.contains(&format!("writing {}/main/", setup.store().display()))
            && err.contains("free space"),
        "{err}"
    );
    assert!(files.is_empty(), "{files:?}");
    src.drop_db(&db);
}
