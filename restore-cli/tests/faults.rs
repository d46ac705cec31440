//! Faults and attacks against the restore path (issue 11), against the real servers and
//! binaries: what a tamperer with write access to the backup file, or a hostile input,
//! can make `restore` do.

mod common;
use common::s3::garage;
use common::*;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `restore ARGS` with the test pause at `pause` and returns once it has verified
/// the backup and waits there (it goes on when `pause` is removed).
fn restore_paused(
    args: &[String],
    pause: &std::path::Path,
    env: &[(&str, &std::path::Path)],
) -> std::process::Child {
    let mut c = Command::new(restore_bin());
    c.args(args).env("BACKUP_RESTORE_TEST_PAUSE", pause);
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !pause.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "restore never reached the end of its verification pass"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// A new database on the source, loaded with `sql` (if any); its name.
fn fresh_db(src: &Server, prefix: &str, sql: &str) -> String {
    let db = unique(prefix);
    src.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    if !sql.is_empty() {
        src.sql_db(&db, sql);
    }
    db
}

/// A backup file rewritten in place (same inode) between the verification pass and the
/// replay, here with the bytes of another validly signed backup, restores nothing: the
/// replay reads only blocks identical to those verified.
#[test]
fn a_file_changed_in_place_after_verification_restores_nothing() {
    let src = source();
    let dst = target();
    let db = fresh_db(&src, "inplace", "CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t SELECT seq, 'first' FROM seq_1_to_2000");
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
    let child = restore_paused(
        &into_args(&dst, &a, &setup.path("target.password")),
        &pause,
        &[],
    );
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

/// Peak RSS (KiB) of `restore ARGS`, measured by GNU time, with its output.
fn restore_rss(args: &[String]) -> (std::process::Output, u64) {
    let o = Command::new("/usr/bin/time")
        .args(["-f", "maxrss=%M"])
        .arg(restore_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("/usr/bin/time (Debian package time; scripts/test-services.sh installs it)");
    let err = stderr(&o);
    let kib = err
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("maxrss="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no maxrss in: {err}"));
    (o, kib)
}

/// Hostile messages (encrypted to the DPO, signed by a key nobody trusts) that expand to
/// one 256 MiB line, or to one 256 MiB statement of short lines (a gzip bomb): restore
/// refuses them with peak RSS under 128 MiB, for --into and for --decrypt.
#[test]
fn hostile_giant_statements_are_refused_in_bounded_memory() {
    use flate2::write::GzEncoder;
    let dst = target();
    let dir = tempfile::tempdir().unwrap();
    let g = Gpg::new();
    g.import(&testdata("dpo.pub.asc"));
    g.gen_key("intruder@test.invalid", "ed25519", None, "0");
    let before = dst.databases();
    for (label, head, chunk) in [
        ("line", &b"INSERT INTO t VALUES ('"[..], &b"A"[..]),
        ("lines", &b"SELECT '"[..], &b"A\n"[..]),
    ] {
        let case = dir.path().join(label);
        std::fs::create_dir_all(&case).unwrap();
        let gz_path = case.join("bomb.sql.gz");
        let mut gz = GzEncoder::new(
            std::fs::File::create(&gz_path).unwrap(),
            flate2::Compression::fast(),
        );
        gz.write_all(b"/*M!999999\\- enable the sandbox mode */\n")
            .unwrap();
        gz.write_all(head).unwrap();
        let block = chunk.repeat((1 << 20) / chunk.len());
        for _ in 0..256 {
            gz.write_all(&block).unwrap();
        }
        gz.write_all(b"');\n-- Dump completed 2026-01-01T00:00:00Z\n")
            .unwrap();
        gz.finish().unwrap();
        let data = case.join(NAME);
        gpg_seal(&g, &gz_path, Some("intruder@test.invalid"), &data);
        std::fs::remove_file(&gz_path).unwrap();
        write_sha256(&data);

        let (o, kib) = restore_rss(&into_args(&dst, &data, &case.join("pw")));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{label} --into: {err}");
        assert!(
            err.contains("longer than"),
            "{label} --into names the cause: {err}"
        );
        assert!(
            kib < 128 * 1024,
            "{label} --into peaked at {kib} KiB: {err}"
        );
        assert_eq!(dst.databases(), before, "{label}: the target changed");

        let out = case.join("out.sql");
        let mut args: Vec<String> = vec![
            "--decrypt".into(),
            data.display().to_string(),
            "-o".into(),
            out.display().to_string(),
        ];
        args.extend(
            into_args(&dst, &data, &case.join("pw"))
                .into_iter()
                .skip_while(|a| a != "--dpo-key"),
        );
        let (o, kib) = restore_rss(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{label} --decrypt: {err}");
        assert!(
            kib < 128 * 1024,
            "{label} --decrypt peaked at {kib} KiB: {err}"
        );
        assert!(!out.exists(), "{label}: --decrypt wrote {}", out.display());
    }
}

/// Runs `argv` as the unprivileged user `nobody`.
fn as_nobody(argv: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Another local user can neither reach the drill's scratch server (its directory is 0700,
/// its root account has a password only the drill holds, it listens on no TCP port) nor
/// read what `restore --decrypt` writes (0600 whatever the umask, never through a planted
/// link).
#[test]
fn another_local_user_reaches_neither_the_drill_server_nor_decrypted_sql() {
    assert!(
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")),
        "this test acts as another user and needs root (scripts/test.sh runs as root)"
    );
    let src = source();
    let db = fresh_db(
        &src,
        "private",
        "CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'secret')",
    );
    let setup = Setup::new(&src, &db);
    ok(&setup.agent(&src, &["backup"]), "backup");
    let data = setup.only_backup();
    // A scratch base every user may traverse, as /var/tmp is.
    let base = tempfile::Builder::new()
        .prefix("ba-drill")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(
        base.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let pause = setup.path("pause");
    let mut args = vec![
        "--verify".to_string(),
        "--backup".into(),
        data.display().to_string(),
    ];
    args.extend([
        "--dpo-key".into(),
        testdata("dpo.sec.asc").display().to_string(),
        "--agent-cert".into(),
        testdata("agent.pub.asc").display().to_string(),
    ]);
    let child = restore_paused(&args, &pause, &[("TMPDIR", base.path())]);
    let dir = std::fs::read_dir(base.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("restore-drill-")
        })
        .expect("the drill's scratch directory");
    let meta = std::fs::metadata(&dir).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o700,
        "{}",
        dir.display()
    );
    let mysql_uid = Command::new("id").args(["-u", "mysql"]).output().unwrap();
    assert_eq!(
        meta.uid().to_string(),
        String::from_utf8_lossy(&mysql_uid.stdout).trim(),
        "owned by mysql, which runs the server"
    );
    let sock = dir.join("mysqld.sock");
    let sock_arg = format!("--socket={}", sock.display());
    let select = [
        "mariadb",
        "--no-defaults",
        &sock_arg,
        "-uroot",
        "-N",
        "-e",
        "SELECT 1",
    ];
    let o = as_nobody(&select);
    assert!(
        !o.status.success(),
        "nobody reached the scratch server: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    // Even with the socket in reach (root), the root account is locked by a password.
    let o = Command::new(select[0]).args(&select[1..]).output().unwrap();
    assert!(
        !o.status.success(),
        "passwordless root login to the scratch server worked"
    );
    assert!(stderr(&o).contains("Access denied"), "{}", stderr(&o));
    let pid = std::fs::read_to_string(dir.join("mysqld.pid")).unwrap();
    let ss = Command::new("ss").args(["-ltnpH"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&ss.stdout).contains(&format!("pid={},", pid.trim())),
        "the scratch server listens on TCP"
    );
    std::fs::remove_file(&pause).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "the drill: {}", stderr(&o));

    // --decrypt under umask 000: the SQL file is 0600; a planted link is refused.
    let out = setup.path("plain.sql");
    let mut dargs = vec![
        "--decrypt".to_string(),
        data.display().to_string(),
        "-o".into(),
        out.display().to_string(),
    ];
    dargs.extend(args[3..].iter().cloned());
    let run = |dargs: &[String]| {
        Command::new("sh")
            .arg("-c")
            .arg("umask 000; exec \"$@\"")
            .arg("sh")
            .arg(restore_bin())
            .args(dargs)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    ok(&run(&dargs), "restore --decrypt");
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "decrypted SQL is readable by others");
    assert!(std::fs::read_to_string(&out).unwrap().contains("secret"));
    let o = as_nobody(&["cat", out.to_str().unwrap()]);
    assert!(!o.status.success());
    let victim = setup.path("victim");
    std::fs::write(&victim, "untouched").unwrap();
    let planted = setup.path("planted.sql");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    dargs[3] = planted.display().to_string();
    let o = run(&dargs);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    src.drop_db(&db);
}

/// An emptied, truncated or garbled state file is named as the problem (healthcheck
/// CRITICAL, `list` refuses), then set aside by the next backup, which succeeds; `scrub
/// --all` re-verifies what the lost ledger knew.
#[test]
fn a_corrupt_state_file_is_named_and_rebuilt_not_taken_for_emptiness() {
    let src = source();
    let db = fresh_db(
        &src,
        "state",
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1)",
    );
    let setup = Setup::new(&src, &db);
    let state = setup.path("state/state.json");
    for (day, garbage) in [
        (2, &b""[..]),
        (3, b"{\"sources\": {\"main\": {\"last_su"),
        (4, b"\x7fELF not json at all"),
    ] {
        // Recent (the healthcheck reads the real clock), one minute apart (ids are seconds).
        let base = chrono::Utc::now() - chrono::Duration::hours(1);
        let now = |k: u32| {
            (base + chrono::Duration::minutes(i64::from(k)))
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string()
        };
        ok(
            &setup.agent(&src, &["backup", "--now", &now(day * 2)]),
            "backup before the damage",
        );
        std::fs::write(&state, garbage).unwrap();
        let o = setup.agent(&src, &["healthcheck"]);
        let line = String::from_utf8_lossy(&o.stdout).into_owned();
        assert_eq!(o.status.code(), Some(1), "healthcheck: {line}");
        assert!(
            line.contains(&state.display().to_string()) && line.contains("scrub --all"),
            "names the file and the fix: {line}"
        );
        let o = setup.agent(&src, &["list"]);
        assert_eq!(o.status.code(), Some(1), "list: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&state.display().to_string()),
            "{}",
            stderr(&o)
        );
        let o = setup.agent(&src, &["backup", "--now", &now(day * 2 + 1)]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "backup after the damage: {}",
            stderr(&o)
        );
        assert!(
            stderr(&o).contains("state_corrupt"),
            "logged: {}",
            stderr(&o)
        );
        ok(
            &setup.agent(&src, &["healthcheck"]),
            "healthcheck after the rebuild",
        );
        ok(&setup.agent(&src, &["scrub", "--all"]), "scrub --all");
        let o = setup.agent(&src, &["list", "--json"]);
        ok(&o, "list after scrub");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        for b in v[0]["backups"].as_array().unwrap() {
            for c in b["copies"].as_array().unwrap() {
                assert_eq!(c["status"], "verified", "{b}");
            }
        }
    }
    let aside = std::fs::read_dir(setup.path("state"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.json.corrupt-")
        })
        .count();
    assert_eq!(aside, 3, "each damaged file is kept aside for a look");
    src.drop_db(&db);
}

/// A copy whose data object changed size is a failed copy (scrub exits 3 and names it,
/// list shows it failed, repair replaces it), never one that drops out of the count; and
/// `scrub --all` exits 3 while the newest backup does not meet the policy.
#[test]
fn scrub_fails_a_resized_copy_and_an_unmet_policy() {
    let src = source();
    let db = fresh_db(
        &src,
        "scrub",
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1), (2)",
    );
    let mut setup = Setup::new(&src, &db);
    let second = setup.path("second");
    std::fs::create_dir_all(&second).unwrap();
    setup.stores = format!(
        "[[store]]\nname = \"second\"\nkind = \"local\"\npath = {second:?}\nmedia = \"disk\"\n"
    );
    setup.policy = "[policy]\ncopies = 2\nmedia = 1\noffsite = 0\n".into();
    ok(&setup.agent(&src, &["backup"]), "backup to two stores");
    ok(
        &setup.agent(&src, &["scrub", "--all"]),
        "scrub of two good copies",
    );
    let data = std::fs::read_dir(second.join("main"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".sql.gz.gpg"))
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&data)
        .unwrap();
    f.write_all(b"x").unwrap();
    drop(f);
    let o = setup.agent(&src, &["scrub", "--all"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(3), "{out}{}", stderr(&o));
    assert!(out.contains("FAILED") && out.contains("second"), "{out}");
    // The same as JSON.
    let o = setup.agent(&src, &["scrub", "--all", "--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["source"], "main", "{v}");
    assert_eq!(v[0]["checked"], 2, "{v}");
    let failed = v[0]["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{v}");
    assert!(failed[0].as_str().unwrap().contains("second"), "{v}");
    let o = setup.agent(&src, &["list", "--json"]);
    ok(&o, "list");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let copies = v[0]["backups"][0]["copies"].as_array().unwrap().clone();
    let second_copy = copies
        .iter()
        .find(|c| c["store"] == "second")
        .expect("listed");
    assert_eq!(second_copy["status"], "failed", "{copies:?}");
    ok(&setup.agent(&src, &["repair"]), "repair");
    ok(
        &setup.agent(&src, &["scrub", "--all"]),
        "scrub after repair",
    );
    // A policy the stores cannot meet: every copy is fine, the verdict is not.
    setup.policy = "[policy]\ncopies = 3\nmedia = 1\noffsite = 0\n".into();
    let o = setup.agent(&src, &["scrub", "--all"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(3), "{out}{}", stderr(&o));
    assert!(out.contains("NOT compliant"), "{out}");
    src.drop_db(&db);
}

/// The objects of backup `id` in a source's directory of a local store, by suffix.
fn objects(dir: &std::path::Path, id: &str) -> Vec<(String, std::path::PathBuf)> {
    [
        ".sql.gz.gpg",
        ".sql.gz.gpg.sha256",
        ".manifest.json.sig",
        ".manifest.json",
    ]
    .iter()
    .map(|s| (s.to_string(), dir.join(format!("{id}{s}"))))
    .collect()
}

/// A tamperer with write access to one store (issue 11, item 2): backup A's objects put
/// under backup B's names, and A's manifest edited under its old signature. Scrub fails
/// both copies (never skips them), `list` shows them failed, the drill and `restore`
/// refuse them naming the substitution, and repair replaces them from the good store.
#[test]
fn a_substituted_backup_or_edited_manifest_fails_scrub_restore_and_the_drill() {
    let src = source();
    let dst = target();
    let db = fresh_db(
        &src,
        "subst",
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1), (2)",
    );
    let mut setup = Setup::new(&src, &db);
    let second = setup.path("second");
    std::fs::create_dir_all(&second).unwrap();
    setup.stores = format!(
        "[[store]]\nname = \"second\"\nkind = \"local\"\npath = {second:?}\nmedia = \"disk\"\n"
    );
    setup.policy = "[policy]\ncopies = 2\nmedia = 1\noffsite = 0\n".into();
    setup.tail = format!(
        "[restore]\ndpo_secret_key_file = {:?}\nagent_certificates = [{:?}]\n",
        testdata("dpo.sec.asc"),
        testdata("agent.pub.asc")
    );
    let (a, b) = ("mariadb_2026-04-01_020000", "mariadb_2026-04-02_020000");
    ok(
        &setup.agent(&src, &["backup", "--now", "2026-04-01T02:00:00Z"]),
        "backup A",
    );
    src.sql_db(&db, "INSERT INTO t VALUES (3)");
    ok(
        &setup.agent(&src, &["backup", "--now", "2026-04-02T02:00:00Z"]),
        "backup B",
    );
    ok(
        &setup.agent(&src, &["scrub", "--all"]),
        "scrub of good copies",
    );

    // On "second": B's objects replaced by A's (each renamed), A's manifest edited.
    let dir = second.join("main");
    for ((_, from), (_, to)) in objects(&dir, a).iter().zip(objects(&dir, b).iter()) {
        std::fs::copy(from, to).unwrap();
    }
    // ... with a .sha256 that names B's file, as a careful tamperer writes it.
    write_sha256(&dir.join(format!("{b}.sql.gz.gpg")));
    let mpath = dir.join(format!("{a}.manifest.json"));
    let edited = std::fs::read_to_string(&mpath).unwrap().replacen(
        "\"largest_statement_bytes\": ",
        "\"largest_statement_bytes\": 9",
        1,
    );
    std::fs::write(&mpath, edited).unwrap();

    let o = setup.agent(&src, &["scrub", "--all"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{out}");
    let o = setup.agent(&src, &["list", "--json"]);
    ok(&o, "list");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let backups = v[0]["backups"].as_array().unwrap().clone();
    assert_eq!(backups.len(), 2, "{v:#}");
    for (row, what) in [
        (&backups[0], "bad signature"),
        (&backups[1], &*format!("it is the manifest of backup {a}")),
    ] {
        let copy = row["copies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["store"] == "second")
            .cloned()
            .unwrap_or_else(|| panic!("the copy on second is listed, not skipped: {row:#}"));
        assert_eq!(copy["status"], "failed", "{row:#}");
        assert!(
            copy["error"].as_str().unwrap_or("").contains(what),
            "{what}: {row:#}"
        );
    }

    // The drill on that store refuses B, naming the substitution, and touches no server.
    let cfg = setup.config(&src);
    let o = restore(&[
        "--config",
        cfg.to_str().unwrap(),
        "--verify",
        "--store",
        "second",
        "--backup",
        b,
    ]);
    assert_eq!(o.status.code(), Some(1), "drill: {}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("it is the manifest of backup {a}")),
        "{}",
        stderr(&o)
    );
    // restore --into of B's file on that store: refused before the first statement.
    let data = dir.join(format!("{b}.sql.gz.gpg"));
    let o = restore(&into_args(&dst, &data, &setup.path("target.password")));
    assert_eq!(o.status.code(), Some(1), "restore: {}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("it is the manifest of backup {a}")),
        "{}",
        stderr(&o)
    );
    assert!(!dst.databases().contains(&db));
    // The data alone under B's name (manifest and signature gone): the signed identity
    // inside the dump names A.
    std::fs::remove_file(dir.join(format!("{b}.manifest.json"))).unwrap();
    std::fs::remove_file(dir.join(format!("{b}.manifest.json.sig"))).unwrap();
    let o = restore(&into_args(&dst, &data, &setup.path("target.password")));
    assert_eq!(o.status.code(), Some(1), "restore: {}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "the file is named {b}, but the dump inside is backup {a}"
        )),
        "{}",
        stderr(&o)
    );
    assert!(!dst.databases().contains(&db));

    // B's real manifest and signature back beside A's data: scrub fails the copy (its
    // data is not what the manifest records); repair replaces the bad copies from the
    // good store; scrub is clean again.
    for s in [".manifest.json", ".manifest.json.sig"] {
        std::fs::copy(
            setup.store().join(format!("main/{b}{s}")),
            dir.join(format!("{b}{s}")),
        )
        .unwrap();
    }
    let o = setup.agent(&src, &["scrub", "--all"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    ok(&setup.agent(&src, &["repair"]), "repair");
    ok(
        &setup.agent(&src, &["scrub", "--all"]),
        "scrub after repair",
    );
    for id in [a, b] {
        for ((_, good), (_, copy)) in objects(&setup.store().join("main"), id)
            .iter()
            .zip(objects(&dir, id).iter())
        {
            assert_eq!(std::fs::read(good).unwrap(), std::fs::read(copy).unwrap());
        }
    }
    src.drop_db(&db);
}

/// Two backups started in the same second (issue 11, item 6): the second takes the next
/// free second as its id; neither overwrites nor refuses the other, and both stay.
#[test]
fn backups_started_in_the_same_second_get_distinct_ids_and_both_stay() {
    let src = source();
    let db = fresh_db(
        &src,
        "samesec",
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1)",
    );
    let setup = Setup::new(&src, &db);
    for run in ["first", "second"] {
        ok(
            &setup.agent(&src, &["backup", "--now", "2026-05-01T02:00:00Z"]),
            run,
        );
    }
    let o = setup.agent(&src, &["list", "--json"]);
    ok(&o, "list");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v[0]["backups"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["mariadb_2026-05-01_020000", "mariadb_2026-05-01_020001"],
        "{v:#}"
    );
    for r in rows {
        assert_eq!(r["copies"][0]["status"], "verified", "{r:#}");
    }
    assert_eq!(setup.store_files().len(), 8, "{:?}", setup.store_files());
    src.drop_db(&db);
}

/// Two backups of one source on one host at once: the second is refused at once with a
/// message naming the running one, and touches nothing; the first completes alone.
#[test]
fn a_second_backup_of_a_running_source_is_refused_and_touches_nothing() {
    let src = source();
    let db = fresh_db(&src, "busy", "CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t SELECT seq, REPEAT('x', 100) FROM seq_1_to_6000");
    let mut setup = Setup::new(&src, &db);
    // About 700 KB of SQL at 64 KiB/s: the first run takes ~10 s.
    setup.extra = "rate_limit = \"64KiB\"\n".into();
    let cfg = setup.config(&src);
    let first = Command::new(agent_bin())
        .args(["--config", cfg.to_str().unwrap(), "backup"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lock = setup.path("state/locks/main.lock");
    let t0 = Instant::now();
    while std::fs::read_to_string(&lock)
        .map(|s| s.is_empty())
        .unwrap_or(true)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the first run never took its lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let o = setup.agent(&src, &["backup"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("another backup of this source is running") && err.contains("pid"),
        "{err}"
    );
    let o = first.wait_with_output().unwrap();
    ok(&o, "the first backup");
    let data: Vec<String> = setup
        .store_files()
        .into_iter()
        .filter(|f| f.ends_with(".sql.gz.gpg"))
        .collect();
    assert_eq!(data.len(), 1, "{:?}", setup.store_files());
    // Once it is done, the source is free again.
    std::thread::sleep(Duration::from_millis(1100));
    ok(&setup.agent(&src, &["backup"]), "a later backup");
    src.drop_db(&db);
}

/// S3 failures read as one line naming the store, what failed, the endpoint and what to
/// check: a refused connection and a wrong secret (real Garage), never the SDK's debug
/// structure.
#[test]
fn s3_failures_say_what_failed_where_and_what_to_check() {
    let src = source();
    let db = fresh_db(
        &src,
        "s3msg",
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1)",
    );
    let env = env_file();
    let garage = env
        .get("BA_GARAGE_URL")
        .expect("BA_GARAGE_URL: run scripts/test-services.sh up");
    let key_id = env
        .get("BA_GARAGE_KEY_ID_FILE")
        .expect("BA_GARAGE_KEY_ID_FILE");
    let mut setup = Setup::new(&src, &db);
    let wrong = setup.path("wrong-secret");
    std::fs::write(&wrong, "not-the-secret\n").unwrap();
    let store = |name: &str, endpoint: &str| {
        format!(
            "[[store]]\nname = \"{name}\"\nkind = \"s3\"\nendpoint = \"{endpoint}\"\nbucket = \"backups\"\n\
             region = \"garage\"\npath_style = true\naccess_key_id_file = {key_id:?}\n\
             secret_access_key_file = {wrong:?}\nmedia = \"object\"\nsite = \"dc2\"\n"
        )
    };
    setup.stores = format!(
        "{}{}",
        store("refused", "http://127.0.0.1:9"),
        store("denied", garage)
    );
    let o = setup.agent(&src, &["backup"]);
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "the local copy meets the policy: {err}"
    );
    let line = |store: &str| {
        err.lines()
            .find(|l| l.starts_with(&format!("backup-agent: store {store} failed")))
            .unwrap_or_else(|| panic!("no line for {store}: {err}"))
            .to_string()
    };
    let refused = line("refused");
    assert!(refused.contains("Connection refused"), "{refused}");
    assert!(refused.contains("endpoint http://127.0.0.1:9"), "{refused}");
    assert!(refused.contains("check the endpoint URL"), "{refused}");
    let denied = line("denied");
    assert!(
        denied.contains("403") && denied.contains("access key"),
        "{denied}"
    );
    assert!(denied.contains(&format!("endpoint {garage}")), "{denied}");
    for l in [&refused, &denied] {
        for debug in [
            "DispatchFailure",
            "ServiceError",
            "StatusCode(",
            "ErrorMetadata",
            "{ ",
        ] {
            assert!(!l.contains(debug), "a debug structure in: {l}");
        }
    }
    src.drop_db(&db);
}

/// A local store whose directory is missing (an unmounted mount point) is refused by
/// `backup` with the message `check-config` gives, and never created on the root disk.
#[test]
fn a_missing_store_directory_is_refused_not_created() {
    let src = source();
    let db = fresh_db(&src, "nodir", "");
    let setup = Setup::new(&src, &db);
    std::fs::remove_dir(setup.store()).unwrap();
    let o = setup.agent(&src, &["backup"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let expected = format!(
        "store local: directory {} does not exist; create it, or mount the store there",
        setup.store().display()
    );
    assert!(err.contains(&expected), "{err}");
    assert!(
        !setup.store().exists(),
        "backup created the store directory"
    );
    let o = setup.agent(&src, &["check-config"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains(&expected), "{out}");
    src.drop_db(&db);
}

/// check-config fails what can never work: a policy the stores cannot meet (each
/// requirement named), and max_concurrent_backups = 0.
#[test]
fn check_config_fails_an_unmeetable_policy_and_zero_concurrency() {
    let src = source();
    let db = fresh_db(&src, "cfgchk", "");
    let mut setup = Setup::new(&src, &db);
    setup.policy = "[policy]\ncopies = 2\nmedia = 2\noffsite = 1\nimmutable = 1\n".into();
    let o = setup.agent(&src, &["check-config"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(2), "{out}");
    for what in [
        "policy asks for 2 verified copies, the configured stores can give 1",
        "policy asks for 2 media kinds",
        "policy asks for 1 offsite copies, the configured stores can give 0",
        "policy asks for 1 immutable copies",
    ] {
        assert!(out.contains(what), "{what:?} in: {out}");
    }
    setup.policy = "[policy]\ncopies = 1\nmedia = 1\noffsite = 0\n".into();
    ok(
        &setup.agent(&src, &["check-config"]),
        "a policy one store meets",
    );
    setup.agent_extra = "max_concurrent_backups = 0\n".into();
    let o = setup.agent(&src, &["check-config"]);
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert_eq!(o.status.code(), Some(2), "{all}");
    assert!(
        all.contains("max_concurrent_backups") && all.contains("at least 1"),
        "{all}"
    );
}

/// check-config logs in to the source as the dump user: a wrong password, a database in
/// databases.include that does not exist, and a missing privilege are each a problem
/// naming the source and node.
#[test]
fn check_config_logs_in_and_checks_databases_and_privileges() {
    let src = source();
    let db = fresh_db(&src, "login", "");
    let mut setup = Setup::new(&src, &db);
    ok(
        &setup.agent(&src, &["check-config"]),
        "check-config of a good source",
    );
    let run = |setup: &Setup| {
        let o = setup.agent(&src, &["check-config"]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert_eq!(o.status.code(), Some(2), "{out}");
        out
    };
    // The included database is gone.
    src.drop_db(&db);
    let out = run(&setup);
    assert!(
        out.contains("source main node") && out.contains(&format!("database {db:?}")),
        "{out}"
    );
    src.sql(&format!("CREATE DATABASE `{db}`"));
    // A dump user without SHOW VIEW and EVENT.
    for host in ["127.0.0.1", "localhost"] {
        src.sql(&format!(
            "REVOKE SHOW VIEW, EVENT ON *.* FROM '{}'@'{host}'",
            setup.dump_user
        ));
    }
    let out = run(&setup);
    assert!(out.contains("lacks SHOW VIEW, EVENT"), "{out}");
    // A wrong password.
    setup.dump_password = "wrong".into();
    let out = run(&setup);
    assert!(out.contains("cannot connect to MariaDB"), "{out}");
    src.drop_db(&db);
}

const NAME: &str = "mariadb_2026-01-01_000000.sql.gz.gpg";

/// The names in a store's listing of a source that are not part of a complete backup
/// (temp files, and objects of a backup whose four objects are not all there).
fn debris(names: &[String]) -> Vec<String> {
    const SUFFIXES: [&str; 4] = [
        ".sql.gz.gpg",
        ".sql.gz.gpg.sha256",
        ".manifest.json.sig",
        ".manifest.json",
    ];
    let complete = |id: &str| SUFFIXES.iter().all(|s| names.contains(&format!("{id}{s}")));
    names
        .iter()
        .filter(|n| {
            n.starts_with(".tmp-")
                || SUFFIXES
                    .iter()
                    .find_map(|s| n.strip_suffix(s))
                    .is_some_and(|id| !complete(id))
        })
        .cloned()
        .collect()
}

/// SIGKILL of a backup to a local store and Garage at 12 points of its run (issue 11):
/// no partial backup is ever visible (every manifest in a store has its data, `.sha256`
/// and signature, and `list` shows no failed copy); the debris the dead run left (temp
/// files, pending uploads, objects without a manifest) is removed by the next run at once
/// (its ids are in the source's journal, and the source's lock proves the writer dead),
/// not after the 24 h grace period; a copy published before the kill stays and is repaired
/// to the other store.
#[test]
fn a_backup_killed_at_any_of_12_points_leaves_nothing_visible_and_the_next_run_cleans_up() {
    let src = source();
    let db = fresh_db(
        &src,
        "kill",
        "CREATE TABLE t (id INT PRIMARY KEY, v TEXT); \
         INSERT INTO t SELECT seq, CONCAT(SHA2(seq, 256), SHA2(seq + 1, 512)) FROM seq_1_to_60000",
    );
    let mut setup = Setup::new(&src, &db);
    let g = garage();
    let prefix = unique("kill");
    setup.stores = g.store_toml("garage", "dc1", &prefix, &g.url, "");
    setup.policy = "[policy]\ncopies = 2\nmedia = 1\noffsite = 0\n".into();
    // About 12 MB of SQL (7 MB sealed: a multipart upload to Garage) at 4 MiB/s.
    setup.extra = "rate_limit = \"4MiB\"\n".into();
    let cfg = setup.config(&src);
    let local_names = || -> Vec<String> {
        std::fs::read_dir(setup.store().join("main"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let garage_names = || -> Vec<String> {
        g.keys(&format!("{prefix}/main/"))
            .iter()
            .map(|k| k.rsplit('/').next().unwrap().to_string())
            .collect()
    };
    let points = [
        "locked",
        "opened",
        "mid-dump",
        "dumped",
        "committed:local",
        "committed:garage",
        "verified:local",
        "published-sig:local",
        "published:local",
        "verified:garage",
        "published-sha256:garage",
        "stored",
    ];
    for (i, point) in points.iter().enumerate() {
        let now = format!("2026-06-{:02}T02:00:00Z", i + 1);
        let mut cmd = Command::new(agent_bin());
        cmd.arg("--config")
            .arg(&cfg)
            .args(["backup", "--now", &now])
            .env("TMPDIR", setup.path("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let status = if *point == "mid-dump" {
            let mut child = cmd.spawn().unwrap();
            let journal = setup.path("state/locks/main.run");
            let t0 = Instant::now();
            while !journal.exists() {
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "the run never started"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(Duration::from_millis(2000));
            child.kill().unwrap();
            child.wait().unwrap()
        } else {
            cmd.env("BACKUP_AGENT_TEST_KILL_AT", point)
                .status()
                .unwrap()
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "{point}: the run was not killed: {status:?}"
        );

        // Nothing partial is visible: every manifest has all its objects; list agrees.
        for (store, names) in [("local", local_names()), ("garage", garage_names())] {
            for n in names.iter().filter(|n| n.ends_with(".manifest.json")) {
                let id = n.strip_suffix(".manifest.json").unwrap();
                for s in [".sql.gz.gpg", ".sql.gz.gpg.sha256", ".manifest.json.sig"] {
                    assert!(
                        names.contains(&format!("{id}{s}")),
                        "{point}: {store} shows {n} without {id}{s}: {names:?}"
                    );
                }
            }
        }
        let o = setup.agent(&src, &["list", "--json"]);
        ok(&o, &format!("{point}: list"));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v[0]["notes"], serde_json::json!([]), "{point}: {v:#}");
        for b in v[0]["backups"].as_array().unwrap() {
            for c in b["copies"].as_array().unwrap() {
                assert_ne!(c["status"], "failed", "{point}: {b:#}");
            }
        }
        if (1..=10).contains(&i) {
            assert!(
                !debris(&local_names()).is_empty()
                    || !debris(&garage_names()).is_empty()
                    || !g.uploads(&format!("{prefix}/")).is_empty(),
                "{point}: the killed run left nothing to clean up (the kill came too late?)"
            );
        }

        // The next run removes the dead run's debris at once and completes.
        ok(
            &setup.agent(&src, &["backup"]),
            &format!("{point}: the next run"),
        );
        assert_eq!(
            debris(&local_names()),
            Vec::<String>::new(),
            "{point}: local"
        );
        assert_eq!(
            debris(&garage_names()),
            Vec::<String>::new(),
            "{point}: garage"
        );
        assert_eq!(
            g.uploads(&format!("{prefix}/")),
            Vec::<String>::new(),
            "{point}: pending uploads"
        );
        assert!(
            !setup.path("state/locks/main.run").exists(),
            "{point}: journal left"
        );
    }
    src.drop_db(&db);
}
