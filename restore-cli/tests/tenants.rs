//! Tenants on one server: a backup of some databases carries only the accounts that hold
//! privileges on them, with only those grants; `restore` creates accounts only when asked
//! (`--accounts`) and never changes an existing one without `--force`.

mod common;
use common::*;

use std::path::Path;

/// The SQL of a backup, verified and decrypted by `restore --decrypt`.
fn plaintext(data: &Path, dir: &Path) -> String {
    let out = dir.join("plain.sql");
    let o = restore_decrypt(
        data,
        &testdata("dpo.sec.asc"),
        &testdata("agent.pub.asc"),
        &out,
    );
    ok(&o, "restore --decrypt");
    std::fs::read_to_string(&out).unwrap()
}

/// SHOW GRANTS of an account, sorted.
fn grants(s: &Server, account: &str) -> Vec<String> {
    let mut g: Vec<String> = s
        .sql(&format!("SHOW GRANTS FOR {account}"))
        .lines()
        .map(String::from)
        .collect();
    g.sort();
    g
}

fn password_hash(s: &Server, user: &str) -> String {
    s.sql(&format!(
        "SELECT authentication_string FROM mysql.global_priv JOIN mysql.user USING (User, Host) WHERE User = '{user}'"
    ))
    .trim()
    .to_string()
}

#[test]
fn a_tenant_backup_holds_only_its_own_accounts_and_restores_them_on_request() {
    let src = source();
    let dst = target();
    let (t1, t2) = (unique("tenant_a"), unique("tenant_b"));
    let (u1, u2, r1) = (unique("ua"), unique("ub"), unique("ra"));
    let (glob, rep, dba) = (unique("glob"), unique("rep"), unique("dba"));
    for d in [&t1, &t2] {
        src.drop_db(d);
        src.sql(&format!("CREATE DATABASE `{d}`"));
        src.sql_db(
            d,
            "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10)); INSERT INTO t VALUES (1,'a'); \
             CREATE PROCEDURE p() SELECT 1",
        );
    }
    let common_prefix: String = t1.chars().take(6).collect();
    src.sql(&format!(
        "CREATE USER '{u1}'@'%' IDENTIFIED BY 'pw-a'; GRANT ALL ON `{t1}`.* TO '{u1}'@'%'; \
         GRANT SELECT (v) ON `{t1}`.t TO '{u1}'@'%'; GRANT EXECUTE ON PROCEDURE `{t1}`.p TO '{u1}'@'%'; \
         CREATE ROLE '{r1}'; GRANT SELECT ON `{t1}`.* TO '{r1}'; GRANT '{r1}' TO '{u1}'@'%'; \
         SET DEFAULT ROLE '{r1}' FOR '{u1}'@'%'; \
         CREATE USER '{u2}'@'%' IDENTIFIED BY 'pw-b'; GRANT ALL ON `{t2}`.* TO '{u2}'@'%'; \
         GRANT PROCESS ON *.* TO '{u2}'@'%'; \
         CREATE USER '{glob}'@'%' IDENTIFIED BY 'pw-g'; GRANT SELECT ON *.* TO '{glob}'@'%'; \
         CREATE USER '{rep}'@'%' IDENTIFIED BY 'pw-r'; GRANT SELECT ON `{common_prefix}%`.* TO '{rep}'@'%'; \
         CREATE USER '{dba}'@'%' IDENTIFIED BY 'pw-d'; GRANT ALL ON *.* TO '{dba}'@'%'; \
         CREATE DEFINER='{dba}'@'%' VIEW `{t1}`.v AS SELECT id FROM `{t1}`.t"
    ));

    let backup_of = |db: &str| {
        let setup = Setup::new(&src, db);
        ok(&setup.agent(&src, &["backup"]), "backup");
        let data = setup.only_backup();
        let sql = plaintext(&data, setup.dir.path());
        (setup, data, sql)
    };
    let (s1, data1, sql1) = backup_of(&t1);
    let (_s2, _data2, sql2) = backup_of(&t2);

    let hash = |u: &str| password_hash(&src, u);
    // Tenant A's backup: its account (with its password hash), its role and their grants
    // on its database; nothing of tenant B, the global account, the pattern account, the
    // backup's own account, and no global or PROXY grant.
    for present in [&u1, &r1, &hash(&u1), &format!("DEFINER=`{dba}`@`%`")] {
        assert!(
            sql1.contains(present.as_str()),
            "{present} missing:\n{sql1}"
        );
    }
    // The test's admin account created the role and holds it WITH ADMIN OPTION: not a
    // tenant's account either (it is only the procedure's DEFINER).
    for line in sql1.lines() {
        assert!(
            !line.contains(ADMIN_USER) || line.starts_with("CREATE DEFINER="),
            "{line}"
        );
    }
    for absent in [
        &u2,
        &glob,
        &rep,
        &s1.dump_user,
        &t2,
        &hash(&u2),
        &hash(&glob),
        &hash(&dba),
        &format!("`{dba}`@`%` IDENTIFIED"),
        &format!("TO `{dba}`"),
    ] {
        assert!(
            !sql1.contains(absent.as_str()),
            "{absent} in A's backup:\n{sql1}"
        );
    }
    assert!(
        !sql1.contains("ON *.*") && !sql1.contains("PROXY"),
        "{sql1}"
    );
    assert!(
        sql1.contains(&format!("SET DEFAULT ROLE `{r1}` FOR `{u1}`@`%`")),
        "{sql1}"
    );
    // Tenant B's: its account, without its global privilege; nothing of A.
    assert!(sql2.contains(&u2) && sql2.contains(&hash(&u2)), "{sql2}");
    for absent in [&u1, &r1, &glob, &rep, &t1, &hash(&u1)] {
        assert!(
            !sql2.contains(absent.as_str()),
            "{absent} in B's backup:\n{sql2}"
        );
    }
    assert!(
        !sql2.contains("PROCESS") && !sql2.contains("ON *.*"),
        "{sql2}"
    );

    // Restore without --accounts: the database, no account, and it says so.
    dst.drop_db(&t1);
    let args = into_args(&dst, &data1, &s1.path("target.password"));
    let o = restore(&args);
    ok(&o, "restore --into");
    assert!(
        stderr(&o).contains("not restoring the backup's 2 account(s)")
            && stderr(&o).contains("pass --accounts"),
        "{}",
        stderr(&o)
    );
    let exists = |s: &Server, u: &str| {
        s.sql(&format!(
            "SELECT COUNT(*) FROM mysql.user WHERE User = '{u}'"
        ))
        .trim()
            == "1"
    };
    assert!(!exists(&dst, &u1) && !exists(&dst, &r1));
    // The view's definer (a DBA, not the tenant's) is not in the backup, nor on the
    // target: the restore says so before it replays.
    assert!(
        stderr(&o).contains("defined by 1 account(s) that")
            && stderr(&o).contains(&format!("`{dba}`@`%`")),
        "{}",
        stderr(&o)
    );
    // (The server shows a view whose definer is missing in another form: create the DBA
    // on the target, as its operator would, before comparing.)
    dst.sql(&format!(
        "CREATE USER '{dba}'@'%' IDENTIFIED BY 'pw-d'; GRANT ALL ON *.* TO '{dba}'@'%'"
    ));
    assert_same(&fingerprint(&src, &t1), &fingerprint(&dst, &t1));

    // With --accounts: exactly tenant A's account and role come back.
    dst.drop_db(&t1);
    let mut with_accounts = args.clone();
    with_accounts.push("--accounts".into());
    let o = restore(&with_accounts);
    ok(&o, "restore --into --accounts");
    let a = format!("'{u1}'@'%'");
    assert_eq!(grants(&src, &a), grants(&dst, &a));
    assert_eq!(
        grants(&src, &format!("'{r1}'")),
        grants(&dst, &format!("'{r1}'"))
    );
    assert_eq!(
        src.sql(&format!("SHOW CREATE USER {a}")),
        dst.sql(&format!("SHOW CREATE USER {a}"))
    );
    for other in [&u2, &glob, &rep] {
        assert!(!exists(&dst, other), "{other} was created");
    }

    // An existing account is left as it is, grants included, unless --force.
    dst.drop_db(&t1);
    dst.sql(&format!(
        "ALTER USER {a} IDENTIFIED BY 'changed-on-target'; REVOKE SELECT (v) ON `{t1}`.t FROM {a}"
    ));
    let changed = (dst.sql(&format!("SHOW CREATE USER {a}")), grants(&dst, &a));
    let o = restore(&with_accounts);
    ok(&o, "restore --into --accounts over an existing account");
    assert!(
        stderr(&o).contains("leaving 2 existing account(s)") && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        changed,
        (dst.sql(&format!("SHOW CREATE USER {a}")), grants(&dst, &a))
    );
    let mut forced = with_accounts.clone();
    forced.push("--force".into());
    let o = restore(&forced);
    ok(&o, "restore --into --accounts --force");
    assert!(
        stderr(&o).contains("giving 2 existing account(s)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        src.sql(&format!("SHOW CREATE USER {a}")),
        dst.sql(&format!("SHOW CREATE USER {a}"))
    );
    assert_eq!(grants(&src, &a), grants(&dst, &a));

    // --accounts restores every database's grants: refused with --database.
    let mut one_db = with_accounts.clone();
    one_db.extend(["--database".to_string(), t1.clone()]);
    let o = restore(&one_db);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot be combined with --database"),
        "{}",
        stderr(&o)
    );

    for d in [&t1, &t2] {
        src.drop_db(d);
        dst.drop_db(d);
    }
    for s in [&src, &dst] {
        s.sql(&format!(
            "DROP USER IF EXISTS '{u1}'@'%', '{u2}'@'%', '{glob}'@'%', '{rep}'@'%', '{dba}'@'%'; DROP ROLE IF EXISTS '{r1}'"
        ));
    }
}

/// `restore --decrypt` of `data` with the secret key `key`.
fn decrypt_with(data: &Path, key: &Path, out: &Path) -> std::process::Output {
    restore_decrypt(data, key, &testdata("agent.pub.asc"), out)
}

#[test]
fn a_tenant_certificate_opens_its_own_backups_and_nothing_else() {
    let src = source();
    let dst = target();
    let gpg = Gpg::new();
    let (t1, t2) = (unique("tenant_c"), unique("tenant_d"));
    let mut setups = Vec::new();
    for (i, d) in [&t1, &t2].into_iter().enumerate() {
        src.drop_db(d);
        src.sql(&format!("CREATE DATABASE `{d}`"));
        src.sql_db(d, "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20)); INSERT INTO t VALUES (1,'only mine')");
        let email = format!("client{i}@tenant.test");
        gpg.gen_key(&email, "ed25519", None, "1y");
        let mut setup = Setup::new(&src, d);
        gpg.export_public(&email, &setup.path("tenant.pub.asc"));
        gpg.export_secret(&email, None, &setup.path("tenant.sec.asc"));
        setup.extra = format!(
            "[source.tenant_certificates]\n{d:?} = {:?}\n",
            setup.path("tenant.pub.asc")
        );
        let o = setup.agent(&src, &["check-config", "--json"]);
        ok(&o, "check-config --json");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            (v["valid"].as_bool(), v["problems"].as_array().map(Vec::len)),
            (Some(true), Some(0)),
            "{v}"
        );
        let o = setup.agent(&src, &["check-config"]);
        ok(&o, "check-config");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(&format!(
                "backups of {d} are also encrypted to tenant certificate {}",
                gpg.fingerprint(&email)
            )) || stderr(&o).contains(&format!(
                "backups of {d} are also encrypted to tenant certificate {}",
                gpg.fingerprint(&email)
            )),
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            stderr(&o)
        );
        ok(&setup.agent(&src, &["backup"]), "backup");
        setups.push(setup);
    }
    let (a, b) = (&setups[0], &setups[1]);
    let (data_a, data_b) = (a.only_backup(), b.only_backup());

    // The manifest names the tenant's subkey beside the DPO's.
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            data_a
                .to_string_lossy()
                .replace(".sql.gz.gpg", ".manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(m["tenant_recipients"].as_array().unwrap().len(), 1, "{m}");
    assert_eq!(m["dpo_recipients"].as_array().unwrap().len(), 1, "{m}");

    // Tenant A's key opens A's backup (restore --decrypt and --into, and plain gpg)...
    let out = a.path("a.sql");
    ok(
        &decrypt_with(&data_a, &a.path("tenant.sec.asc"), &out),
        "tenant A decrypts A",
    );
    assert!(std::fs::read_to_string(&out).unwrap().contains("only mine"));
    gpg.import(&testdata("agent.pub.asc"));
    let g = gpg.run(&[
        "--decrypt",
        "--output",
        a.path("a.gz").to_str().unwrap(),
        data_a.to_str().unwrap(),
    ]);
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    dst.drop_db(&t1);
    let mut args = into_args(&dst, &data_a, &a.path("target.password"));
    let k = args.iter().position(|x| x == "--dpo-key").unwrap();
    args[k + 1] = a.path("tenant.sec.asc").display().to_string();
    ok(&restore(&args), "restore --into with the tenant's key");
    assert_same(&fingerprint(&src, &t1), &fingerprint(&dst, &t1));
    // ... the DPO's key still does ...
    ok(
        &decrypt_with(&data_a, &testdata("dpo.sec.asc"), &out),
        "DPO decrypts A",
    );
    // ... and it opens nothing of tenant B: refused, nothing written.
    let out_b = a.path("b.sql");
    let o = decrypt_with(&data_b, &a.path("tenant.sec.asc"), &out_b);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!out_b.exists());
    let e = stderr(&o);
    let last = e.lines().last().unwrap();
    assert!(
        last.contains("the given key has none of these subkeys")
            && last.contains("nothing was restored"),
        "{e}"
    );

    // The certificate of a tenant on a source that dumps more than its database is refused.
    let mut wide = Setup::new(&src, &format!("{t1}\", \"{t2}"));
    wide.extra = format!(
        "[source.tenant_certificates]\n{t1:?} = {:?}\n",
        a.path("tenant.pub.asc")
    );
    let o = wide.agent(&src, &["check-config", "--json"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], false, "{v}");
    let p = &v["problems"][0];
    assert_eq!(
        p["key"],
        format!("source[0].tenant_certificates.{t1}"),
        "{v}"
    );
    assert!(p["line"].as_u64().unwrap() > 1, "{v}");
    let o = wide.agent(&src, &["check-config"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("tenant_certificates.{t1}"))
            && stderr(&o).contains("applies only to a source that dumps that database alone"),
        "{}",
        stderr(&o)
    );

    for d in [&t1, &t2] {
        src.drop_db(d);
        dst.drop_db(d);
    }
}

#[test]
fn backup_runs_sources_at_once_up_to_the_daemon_limit() {
    let src = source();
    let (d1, d2) = (unique("conc_a"), unique("conc_b"));
    for d in [&d1, &d2] {
        src.drop_db(d);
        src.sql(&format!("CREATE DATABASE `{d}`"));
        src.sql_db(
            d,
            "CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t SELECT seq, SHA2(seq, 512) FROM seq_1_to_3000",
        );
    }
    let mut setup = Setup::new(&src, &d1);
    // Slow enough (about 3 s each) that running one after the other would show.
    setup.extra = "rate_limit = \"128KiB\"\n".into();
    setup.agent_extra = "max_concurrent_backups = 2\n".into();
    setup.tail = format!(
        "[[source]]\nname = \"second\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\npassword_file = {:?}\ndatabases = {{ include = [\"{d2}\"] }}\nrate_limit = \"128KiB\"\n",
        src.port,
        setup.dump_user,
        setup.path("db.password")
    );
    let o = setup.agent(&src, &["backup"]);
    ok(&o, "backup of two sources");
    let out = String::from_utf8_lossy(&o.stdout);
    for s in ["main", "second"] {
        assert!(out.contains(&format!(" of source {s}: ")), "{out}");
    }
    // Both started before either finished.
    let log = stderr(&o);
    let lines: Vec<&str> = log.lines().collect();
    let at = |what: &str, source: &str| {
        lines
            .iter()
            .position(|l| l.contains(what) && l.contains(&format!("\"source\":\"{source}\"")))
            .unwrap_or_else(|| panic!("no {what} of {source} in:\n{log}"))
    };
    let first_done = at("backup_succeeded", "main").min(at("backup_succeeded", "second"));
    assert!(
        at("backup_started", "main") < first_done && at("backup_started", "second") < first_done,
        "{log}"
    );
    // With the default limit (1), one after the other; --json reports each source.
    setup.agent_extra = String::new();
    let o = setup.agent(&src, &["backup", "--json"]);
    ok(&o, "backup of two sources, one at a time");
    let reports: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut names: Vec<&str> = reports
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "ok", "{r}");
            assert!(r["backup"].as_str().unwrap().starts_with("mariadb_"), "{r}");
            assert_eq!(r["rows"], 3000, "{r}");
            assert_eq!(r["policy"]["compliant"], true, "{r}");
            r["source"].as_str().unwrap()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["main", "second"]);
    let log = stderr(&o);
    let (started, done) = (
        log_lines(&log, "backup_started"),
        log_lines(&log, "backup_succeeded"),
    );
    assert_eq!((started.len(), done.len()), (2, 2), "{log}");
    assert!(done[0] < started[1], "{log}");
    for d in [&d1, &d2] {
        src.drop_db(d);
    }
}

/// The `source` of each report of `backup --json`, sorted; every report must be "ok".
fn ok_sources(o: &std::process::Output) -> Vec<String> {
    let reports: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
    let mut v: Vec<String> = reports
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "ok", "{r}");
            r["source"].as_str().unwrap().to_string()
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_split_source_backs_up_each_database_on_its_own_found_anew_at_every_run() {
    let src = source();
    let p = unique("sp");
    let (a, b, c) = (format!("{p}_a"), format!("{p}_b"), format!("{p}_c.x"));
    let other = unique("spother");
    let ua = unique("sua");
    for d in [&a, &b, &c, &other] {
        src.drop_db(d);
    }
    for d in [&a, &b, &other] {
        src.sql(&format!("CREATE DATABASE `{d}`"));
        src.sql_db(
            d,
            &format!("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(40)); INSERT INTO t VALUES (1,'{d}')"),
        );
    }
    src.sql(&format!(
        "CREATE USER '{ua}'@'%' IDENTIFIED BY 'pw-a'; GRANT ALL ON `{a}`.* TO '{ua}'@'%'"
    ));
    let hook = receivers::Receiver::start(receivers::Mode::Ok);
    let mut setup = Setup::new(&src, &format!("{p}_*"));
    setup.extra = "split = \"database\"\n".into();
    setup.webhook_to(&hook);

    // First run: one backup per matching database, each under its own prefix.
    let o = setup.agent(&src, &["backup", "--json"]);
    ok(&o, "backup of a split source");
    assert_eq!(ok_sources(&o), [format!("main/{a}"), format!("main/{b}")]);
    let files = setup.store_files();
    for d in [&a, &b] {
        assert_eq!(
            files
                .iter()
                .filter(
                    |f| f.starts_with(&format!("main/{d}/mariadb_")) && f.ends_with(".sql.gz.gpg")
                )
                .count(),
            1,
            "{files:?}"
        );
    }
    assert!(
        !files.iter().any(|f| f.contains(&other))
            && !files.iter().any(|f| f.starts_with("main/mariadb_")),
        "{files:?}"
    );
    let data_of = |d: &str| {
        let files = setup.store_files();
        let f = files
            .iter()
            .rfind(|f| {
                f.starts_with(&format!("{}/mariadb_", split_dir(d))) && f.ends_with(".sql.gz.gpg")
            })
            .unwrap_or_else(|| panic!("no backup of {d} in {files:?}"))
            .clone();
        setup.store().join(f)
    };
    let sql_a = plaintext(&data_of(&a), setup.dir.path());
    assert!(
        sql_a.contains(&format!("'{a}'")) && sql_a.contains(&ua),
        "{sql_a}"
    );
    assert!(!sql_a.contains(&b) && !sql_a.contains(&other), "{sql_a}");
    let sql_b = plaintext(&data_of(&b), setup.dir.path());
    assert!(
        sql_b.contains(&format!("'{b}'")) && !sql_b.contains(&ua),
        "{sql_b}"
    );

    // Each database has its own freshness; list and restore find them by name.
    let o = setup.agent(&src, &["healthcheck", "--json"]);
    let h: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(h["status"], "OK", "{h}");
    let names: Vec<&str> = h["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"].as_str().unwrap())
        .collect();
    assert_eq!(names, [format!("main/{a}"), format!("main/{b}")], "{h}");
    let o = setup.agent(&src, &["list", "--source", "main", "--json"]);
    ok(&o, "list of a split source");
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(
        listed.contains(&format!("main/{a}")) && listed.contains(&format!("main/{b}")),
        "{listed}"
    );
    let o = restore(&[
        "--list".to_string(),
        "--config".to_string(),
        setup.path("config.toml").display().to_string(),
        "--source".to_string(),
        format!("main/{a}"),
        "--agent-cert".to_string(),
        testdata("agent.pub.asc").display().to_string(),
    ]);
    ok(&o, "restore --list of one database of a split source");
    let id_a = data_of(&a)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(".sql.gz.gpg")
        .to_string();
    let from_restore = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(from_restore.contains(&id_a), "{from_restore}");
    // One listing format: the same header, a row per backup that starts alike.
    let o = setup.agent(&src, &["list", "--source", &format!("main/{a}")]);
    ok(&o, "list of one database");
    let from_agent = String::from_utf8_lossy(&o.stdout).into_owned();
    let header = |t: &str| {
        t.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(header(&from_agent), header(&from_restore));
    assert!(
        from_agent.lines().next().unwrap().starts_with("SOURCE"),
        "{from_agent}"
    );
    for (out, copy) in [
        (&from_agent, "local: verified"),
        (&from_restore, "local: listed"),
    ] {
        let row = out.lines().nth(1).unwrap();
        assert!(
            row.starts_with(&format!("main/{a}  ")) && row.contains(&id_a) && row.contains(copy),
            "{out}"
        );
    }

    // A database appears, one is dropped: the new one is backed up, the dropped one
    // reported once and its backup kept; it no longer counts as stale.
    src.sql(&format!("CREATE DATABASE `{c}`"));
    src.sql_db(
        &c,
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (7)",
    );
    src.drop_db(&b);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let o = setup.agent(&src, &["backup", "--json"]);
    ok(&o, "second backup of a split source");
    assert_eq!(ok_sources(&o), [format!("main/{a}"), format!("main/{c}")]);
    assert!(
        setup
            .store_files()
            .iter()
            .any(|f| f.starts_with(&format!("main/{p}_c%2Ex/mariadb_"))),
        "{:?}",
        setup.store_files()
    );
    assert!(data_of(&b).exists());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(
        &setup.agent(&src, &["backup"]),
        "third backup of a split source",
    );
    let dropped: Vec<serde_json::Value> = hook
        .bodies()
        .into_iter()
        .filter(|x| x["event"] == "database_dropped")
        .collect();
    assert_eq!(dropped.len(), 1, "{:?}", hook.bodies());
    assert_eq!(dropped[0]["source"], format!("main/{b}"));
    let o = setup.agent(&src, &["healthcheck", "--verbose"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains(&format!("main/{b}: database dropped")),
        "{out}"
    );
    assert!(out.starts_with("OK: "), "{out}");
    let o = setup.agent(&src, &["list", "--json"]);
    ok(&o, "list after a drop");
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("main/{b}")));

    // The databases cannot be listed: the run fails as a whole, said by the exit code,
    // the report, the alert and the healthcheck; the next good run clears it.
    let good = setup.dump_password.clone();
    setup.dump_password = "wrong".into();
    let o = setup.agent(&src, &["backup", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (r[0]["source"].as_str(), r[0]["status"].as_str()),
        (Some("main"), Some("failed")),
        "{r}"
    );
    assert!(
        r[0]["error"]
            .as_str()
            .unwrap()
            .contains("cannot list the databases"),
        "{r}"
    );
    assert!(hook
        .bodies()
        .iter()
        .any(|x| x["event"] == "backup_failed" && x["source"] == "main"));
    setup.dump_password = good;
    let o = setup.agent(&src, &["healthcheck"]);
    let line = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "{line}");
    assert!(
        line.starts_with("CRITICAL: source main: cannot list the databases"),
        "{line}"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(&setup.agent(&src, &["backup"]), "backup after the fix");
    let o = setup.agent(&src, &["healthcheck"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(hook
        .bodies()
        .iter()
        .any(|x| x["event"] == "recovered" && x["source"] == "main"));
    src.sql(&format!("DROP USER '{ua}'@'%'"));
    for d in [&a, &c, &other] {
        src.drop_db(d);
    }
}

/// A database's directory under its split source's prefix (see `split::db_dir`).
fn split_dir(db: &str) -> String {
    format!("main/{}", backup_core::config::split::db_dir(db))
}

#[test]
fn the_connection_budget_bounds_backups_against_one_server() {
    let src = source();
    let p = unique("bud");
    let (a, b) = (format!("{p}_a"), format!("{p}_b"));
    src.fresh_dbs(&[&a, &b], "CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t SELECT seq, SHA2(seq, 512) FROM seq_1_to_1500");
    let mut setup = Setup::new(&src, &format!("{p}_*"));
    // About 1.5 s each: one after the other would show.
    setup.extra = "split = \"database\"\nrate_limit = \"128KiB\"\n".into();
    // Two backups may run at once, but one connection to the server: one after the other.
    let (started, done) = setup_run(
        &mut setup,
        &src,
        "max_concurrent_backups = 2\nmax_connections_per_server = 1\n",
    );
    assert!(
        done[0] < started[1],
        "serial expected: {started:?} {done:?}"
    );
    // With two connections, both start before either finishes.
    let (started, done) = setup_run(
        &mut setup,
        &src,
        "max_concurrent_backups = 2\nmax_connections_per_server = 2\n",
    );
    assert!(
        started[1] < done[0],
        "concurrent expected: {started:?} {done:?}"
    );
    for d in [&a, &b] {
        src.drop_db(d);
    }
}

/// Runs `backup` with these [agent] lines; the log lines at which each backup started
/// and finished.
fn setup_run(setup: &mut Setup, src: &Server, agent_extra: &str) -> (Vec<usize>, Vec<usize>) {
    setup.agent_extra = agent_extra.into();
    let o = setup.agent(src, &["backup"]);
    ok(&o, "backup");
    let log = stderr(&o);
    let (started, done) = (
        log_lines(&log, "\"backup_started\""),
        log_lines(&log, "\"backup_succeeded\""),
    );
    assert_eq!((started.len(), done.len()), (2, 2), "{log}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    (started, done)
}

/// On a split source, a tenant's certificate applies to that database's backups only:
/// the tenant's key opens its own and is refused on its neighbour's.
#[test]
fn a_tenant_certificate_on_a_split_source_opens_that_database_only() {
    let src = source();
    let p = unique("spt");
    let (a, b) = (format!("{p}_a"), format!("{p}_b"));
    src.fresh_dbs(
        &[&a, &b],
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1)",
    );
    let gpg = Gpg::new();
    let email = "split-tenant@tenant.test";
    gpg.gen_key(email, "ed25519", None, "1y");
    let mut setup = Setup::new(&src, &format!("{p}_*"));
    gpg.export_public(email, &setup.path("tenant.pub.asc"));
    gpg.export_secret(email, None, &setup.path("tenant.sec.asc"));
    setup.extra = format!(
        "split = \"database\"\n[source.tenant_certificates]\n{a:?} = {:?}\n",
        setup.path("tenant.pub.asc")
    );
    ok(&setup.agent(&src, &["backup"]), "backup");
    let files = setup.store_files();
    let data = |d: &str| {
        setup.store().join(
            files
                .iter()
                .find(|f| f.starts_with(&format!("main/{d}/")) && f.ends_with(".sql.gz.gpg"))
                .unwrap(),
        )
    };
    let manifest = |d: &str| -> serde_json::Value {
        let m = data(d)
            .to_string_lossy()
            .replace(".sql.gz.gpg", ".manifest.json");
        serde_json::from_str(&std::fs::read_to_string(m).unwrap()).unwrap()
    };
    assert_eq!(
        manifest(&a)["tenant_recipients"].as_array().unwrap().len(),
        1
    );
    assert!(manifest(&b)["tenant_recipients"]
        .as_array()
        .is_none_or(Vec::is_empty));
    let key = setup.path("tenant.sec.asc");
    let o = restore_decrypt(
        &data(&a),
        &key,
        &testdata("agent.pub.asc"),
        &setup.path("a.sql"),
    );
    ok(&o, "the tenant's key on its own database's backup");
    let o = restore_decrypt(
        &data(&b),
        &key,
        &testdata("agent.pub.asc"),
        &setup.path("b.sql"),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!setup.path("b.sql").exists());
    for d in [&a, &b] {
        src.drop_db(d);
    }
}

/// The numbers of the log lines that contain `what`.
fn log_lines(log: &str, what: &str) -> Vec<usize> {
    log.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(what))
        .map(|(i, _)| i)
        .collect()
}
