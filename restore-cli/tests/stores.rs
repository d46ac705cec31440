//! Stores on local disk and S3 (moto and Garage, real servers): verified copies on every
//! store, the 3-2-1 verdict, corruption found by the scrub and repaired, S3 refusing
//! mid-upload, corrupted uploads caught, Object Lock, and a month of retention.

mod common;
use common::s3::*;
use common::*;

use std::process::{Command, Output};

fn db_with(src: &Server, name: &str, kib: usize) -> String {
    let db = unique(name);
    src.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    // Random bytes do not compress: the sealed object is about as large as the data, so
    // a few MiB make a multipart upload of 5 MiB parts.
    src.sql_db(
        &db,
        &format!(
            "CREATE TABLE t (id INT PRIMARY KEY, b BLOB); \
             INSERT INTO t SELECT seq, RANDOM_BYTES(1024) FROM seq_1_to_{kib}"
        ),
    );
    db
}

fn list_json(setup: &Setup, src: &Server) -> serde_json::Value {
    let o = setup.agent(src, &["list", "--json"]);
    ok(&o, "list --json");
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Per backup: id, (store, status) per copy, compliant.
type Row = (String, Vec<(String, String)>, bool);

fn statuses(v: &serde_json::Value) -> Vec<Row> {
    v[0]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().to_string(),
                b["copies"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| {
                        (
                            c["store"].as_str().unwrap().to_string(),
                            c["status"].as_str().unwrap().to_string(),
                        )
                    })
                    .collect(),
                b["verdict"]["compliant"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

#[test]
fn every_store_gets_a_verified_copy_and_the_drill_fetches_from_s3() {
    let src = source();
    let db = db_with(&src, "stores", 7 * 1024);
    let mut setup = Setup::new(&src, &db);
    let g = garage();
    let m = moto(
        setup.dir.path(),
        &unique("bucket").replace('_', "-"),
        false,
        false,
    );
    let prefix = unique("t");
    setup.stores = format!(
        "{}{}",
        g.store_toml("garage", "dc2", &prefix, &g.url, ""),
        m.store_toml(
            "moto",
            "dc3",
            &prefix,
            &m.url,
            "checksum = \"crc32\"\nverify = \"head\""
        ),
    );
    setup.policy = "[policy]\ncopies = 3\nmedia = 2\noffsite = 2\n".into();
    let o = setup.agent(&src, &["backup"]);
    ok(&o, "backup to local, Garage and moto");
    assert!(String::from_utf8_lossy(&o.stdout).contains("policy: compliant"));
    let v = list_json(&setup, &src);
    let s = statuses(&v);
    assert_eq!(s.len(), 1, "{v}");
    let mut copies = s[0].1.clone();
    copies.sort();
    assert_eq!(
        copies,
        vec![
            ("garage".to_string(), "verified".to_string()),
            ("local".into(), "verified".into()),
            ("moto".into(), "verified".into())
        ]
    );
    assert!(s[0].2, "compliant: {v}");
    // The same four objects on both servers, under the store's prefix, and byte-equal to
    // the local copy; no upload left pending.
    let local = setup.only_backup();
    let name = local.file_name().unwrap().to_str().unwrap().to_string();
    for srv in [&g, &m] {
        let keys = srv.keys(&format!("{prefix}/"));
        assert_eq!(keys.len(), 4, "{}: {keys:?}", srv.kind);
        assert_eq!(
            srv.get(&format!("{prefix}/main/{name}")),
            std::fs::read(&local).unwrap(),
            "{}",
            srv.kind
        );
        assert!(srv.uploads(&format!("{prefix}/")).is_empty());
    }
    // restore --list sees every store; the drill fetches from S3 (Garage) and passes.
    let cfg = setup.config(&src);
    let o = restore(&[
        "--config",
        cfg.to_str().unwrap(),
        "--list",
        "--json",
        "--agent-cert",
        testdata("agent.pub.asc").to_str().unwrap(),
    ]);
    ok(&o, "restore --list");
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3, "{rows}");
    let tmp = setup.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let o = Command::new(restore_bin())
        .args(["--verify", "--json", "--store", "garage", "--config"])
        .arg(&cfg)
        .args(["--dpo-key"])
        .arg(testdata("dpo.sec.asc"))
        .arg("--agent-cert")
        .arg(testdata("agent.pub.asc"))
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    ok(&o, "drill from Garage");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["store"], "garage", "{r}");
    assert_eq!(r["success"], true, "{r}");
    // The download is gone with the drill.
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");

    // restore --into with --config: "latest" from moto, and the same backup by id from
    // Garage; the download is gone afterwards.
    let dst = target();
    let id = name.trim_end_matches(".sql.gz.gpg").to_string();
    std::fs::write(setup.path("target.password"), &dst.password).unwrap();
    for (store, which) in [("moto", "latest"), ("garage", id.as_str())] {
        dst.drop_db(&db);
        let o = Command::new(restore_bin())
            .args([
                "--into",
                &format!("mysql://{ADMIN_USER}@127.0.0.1:{}/", dst.port),
            ])
            .args([
                "--config",
                cfg.to_str().unwrap(),
                "--store",
                store,
                "--backup",
                which,
            ])
            .arg("--password-file")
            .arg(setup.path("target.password"))
            .arg("--dpo-key")
            .arg(testdata("dpo.sec.asc"))
            .arg("--agent-cert")
            .arg(testdata("agent.pub.asc"))
            .env("TMPDIR", &tmp)
            .output()
            .unwrap();
        ok(&o, &format!("restore --into --backup {which} from {store}"));
        assert!(
            stderr(&o).contains(&format!("restored {db}")),
            "{}",
            stderr(&o)
        );
        assert_same(&fingerprint(&src, &db), &fingerprint(&dst, &db));
        let left: Vec<_> = std::fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "left in TMPDIR: {left:?}");
    }
    dst.drop_db(&db);
    src.drop_db(&db);
}

#[test]
fn corruption_in_place_is_found_by_the_scrub_and_repaired() {
    let src = source();
    let db = db_with(&src, "scrub", 64);
    let mut setup = Setup::new(&src, &db);
    let g = garage();
    let prefix = unique("t");
    setup.stores = g.store_toml("garage", "dc2", &prefix, &g.url, "");
    setup.policy = "[policy]\ncopies = 2\nmedia = 2\noffsite = 1\n".into();
    ok(&setup.agent(&src, &["backup"]), "backup");
    let local = setup.only_backup();
    let name = local.file_name().unwrap().to_str().unwrap().to_string();

    // 1. Flip a byte of the local copy, in place (same size).
    let mut bytes = std::fs::read(&local).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&local, &bytes).unwrap();
    let o = setup.agent(&src, &["scrub", "--all"]);
    assert_eq!(
        code(&o),
        Some(3),
        "scrub finds it: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("FAILED") && out.contains("local"), "{out}");
    let s = statuses(&list_json(&setup, &src));
    assert!(s[0].1.contains(&("local".into(), "failed".into())), "{s:?}");
    assert!(!s[0].2, "the policy turns degraded: {s:?}");
    let o = setup.agent(&src, &["repair"]);
    ok(&o, "repair");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("copied"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let s = statuses(&list_json(&setup, &src));
    assert!(
        s[0].1.contains(&("local".into(), "verified".into())),
        "{s:?}"
    );
    assert!(s[0].2);
    let good = std::fs::read(&local).unwrap();
    assert_ne!(good, bytes);

    // 2. Replace the S3 copy through the API (same size, other content).
    let key = format!("{prefix}/main/{name}");
    let mut other = good.clone();
    other[10] ^= 0xff;
    g.put(&key, other);
    let o = setup.agent(&src, &["scrub", "--all"]);
    assert_eq!(code(&o), Some(3), "{}", String::from_utf8_lossy(&o.stdout));
    let s = statuses(&list_json(&setup, &src));
    assert!(
        s[0].1.contains(&("garage".into(), "failed".into())),
        "{s:?}"
    );
    ok(&setup.agent(&src, &["repair"]), "repair from local");
    assert_eq!(g.get(&key), good, "the S3 copy is good again");
    let s = statuses(&list_json(&setup, &src));
    assert!(s[0].2, "{s:?}");
    src.drop_db(&db);
}

/// One source with `kib` KiB of random data, the local store and one S3 store of `kind`
/// (garage or a fresh moto bucket) reached through a fault proxy; policy 2/2/1.
struct Proxied {
    src: Server,
    db: String,
    setup: Setup,
    srv: S3Server,
    proxy: Proxy,
    prefix: String,
}

fn proxied(kind: &str, name: &str, kib: usize, extra: &str) -> Proxied {
    let src = source();
    let db = db_with(&src, name, kib);
    let mut setup = Setup::new(&src, &db);
    let srv = match kind {
        "garage" => garage(),
        _ => moto(
            setup.dir.path(),
            &unique("bucket").replace('_', "-"),
            false,
            false,
        ),
    };
    let proxy = Proxy::start(&srv.url);
    let prefix = unique("t");
    setup.stores = srv.store_toml("s3", "dc2", &prefix, &proxy.url, extra);
    setup.policy = "[policy]\ncopies = 2\nmedia = 2\noffsite = 1\n".into();
    Proxied {
        src,
        db,
        setup,
        srv,
        proxy,
        prefix,
    }
}

/// S3 refusing mid-upload (after the first part, every part upload is cut off, for the
/// whole run): no object and no pending upload remain (the abort goes through), the local
/// copy is intact and verified, the run says degraded (exit 3); the next run repairs.
fn refusing_mid_upload(kind: &str) {
    let Proxied {
        src,
        db,
        setup,
        srv,
        proxy,
        prefix,
    } = proxied(kind, "refuse", 12 * 1024, "timeout = \"20s\"");
    let cfg = setup.config(&src);
    let child = Command::new(agent_bin())
        .arg("--config")
        .arg(&cfg)
        .arg("backup")
        .env("TMPDIR", setup.path("state"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while proxy.sent.load(std::sync::atomic::Ordering::SeqCst) < 5 << 20 {
        assert!(t0.elapsed().as_secs() < 120, "the upload never started");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    proxy.set(REFUSE_PARTS);
    let o = child.wait_with_output().unwrap();
    proxy.set(PASS);
    let err = stderr(&o);
    assert_eq!(code(&o), Some(3), "stored locally but degraded: {err}");
    assert!(
        err.contains("store s3 failed") && err.contains("policy degraded"),
        "{err}"
    );
    assert!(
        srv.keys(&format!("{prefix}/")).is_empty(),
        "no object on S3"
    );
    assert!(
        srv.uploads(&format!("{prefix}/")).is_empty(),
        "no pending upload on S3"
    );
    setup.only_backup();
    let s = statuses(&list_json(&setup, &src));
    assert_eq!(s[0].1, vec![("local".to_string(), "verified".to_string())]);
    assert!(!s[0].2);
    // No deletion on a store that failed in the last run.
    let o = setup.agent(&src, &["prune"]);
    ok(&o, "prune after the failed run");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("skipped store s3: failed in the last run"),
        "{out}"
    );
    // The next run repairs (here: an explicit repair; a backup run does the same).
    ok(&setup.agent(&src, &["repair"]), "repair after S3 is back");
    let s = statuses(&list_json(&setup, &src));
    assert!(s[0].2, "{s:?}");
    assert_eq!(srv.keys(&format!("{prefix}/")).len(), 4);
    src.drop_db(&db);
}

#[test]
fn s3_refusing_mid_upload_garage() {
    refusing_mid_upload("garage");
}

#[test]
fn s3_refusing_mid_upload_moto() {
    refusing_mid_upload("moto");
}

/// A byte flipped on the wire: Garage rejects the part (checksum), moto accepts it and
/// our read-back catches it. Either way no bad copy stays and the local one is intact.
fn corrupted_upload(kind: &str) {
    let Proxied {
        src,
        db,
        setup,
        srv,
        proxy,
        prefix,
    } = proxied(kind, "flip", 7 * 1024, "");
    // Flip a byte about 1 MiB into the traffic: inside the first part's body.
    proxy.flip_after(1 << 20);
    let o = setup.agent(&src, &["backup"]);
    let err = stderr(&o);
    assert!(
        err.contains("store s3 failed"),
        "the failure is reported: {err}"
    );
    match kind {
        "garage" => assert!(
            err.contains("InvalidDigest")
                || err.to_lowercase().contains("checksum")
                || err.contains("Signature"),
            "Garage rejected the part: {err}"
        ),
        _ => assert!(
            err.contains("differs from the manifest"),
            "read-back caught it: {err}"
        ),
    }
    // The bad copy was removed and the same run repaired it from the verified local copy:
    // what is on S3 now is byte-equal to the local copy.
    assert_eq!(code(&o), Some(0), "repaired within the run: {err}");
    let local = setup.only_backup();
    let name = local.file_name().unwrap().to_str().unwrap().to_string();
    assert_eq!(
        srv.get(&format!("{prefix}/main/{name}")),
        std::fs::read(&local).unwrap()
    );
    assert!(srv.uploads(&format!("{prefix}/")).is_empty());
    let s = statuses(&list_json(&setup, &src));
    assert!(s[0].2, "{s:?}");
    src.drop_db(&db);
}

#[test]
fn corrupted_upload_is_rejected_by_garage() {
    corrupted_upload("garage");
}

#[test]
fn corrupted_upload_is_caught_by_read_back_on_moto() {
    corrupted_upload("moto");
}

#[test]
fn object_lock_on_moto_counts_as_immutable_and_blocks_deletion() {
    let src = source();
    let db = db_with(&src, "lock", 16);
    let mut setup = Setup::new(&src, &db);
    let locked = moto(
        setup.dir.path(),
        &unique("locked").replace('_', "-"),
        true,
        false,
    );
    let prefix = unique("t");
    setup.stores = format!(
        "{}[store.retention]\nkeep_last = 1\n",
        locked.store_toml(
            "vault",
            "dc2",
            &prefix,
            &locked.url,
            "object_lock_mode = \"governance\"\nobject_lock_days = 2",
        )
    );
    setup.policy = "[policy]\ncopies = 2\nmedia = 2\noffsite = 1\nimmutable = 1\n".into();
    let o = setup.agent(&src, &["backup", "--now", "2026-11-01T02:00:00Z"]);
    ok(&o, "backup with object lock");
    let v = list_json(&setup, &src);
    let lock = v[0]["backups"][0]["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["store"] == "vault")
        .unwrap()["lock_until"]
        .clone();
    assert!(lock.is_string(), "lock until shown: {v}");
    assert_eq!(v[0]["backups"][0]["verdict"]["compliant"], true, "{v}");
    ok(
        &setup.agent(&src, &["backup", "--now", "2026-11-02T02:00:00Z"]),
        "second backup",
    );
    // Retention drops the older backup, but its copy is locked: kept, with the reason.
    let o = setup.agent(&src, &["prune", "--now", "2026-11-03T02:00:00Z"]);
    ok(&o, "prune");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("locked until"), "{out}");
    assert_eq!(
        locked.keys(&format!("{prefix}/")).len(),
        8,
        "nothing deleted under lock: {out}"
    );
    // The same store without lock needs: policy immutable = 1 is not met.
    setup.stores = locked.store_toml("vault", "dc2", &prefix, &locked.url, "");
    let o = setup.agent(&src, &["backup", "--now", "2026-11-04T02:00:00Z"]);
    assert_eq!(code(&o), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("immutable"), "{}", stderr(&o));
    src.drop_db(&db);
}

#[test]
fn a_month_of_daily_backups_through_local_and_versioned_s3_and_retention() {
    let src = source();
    let db = db_with(&src, "month", 4);
    let mut setup = Setup::new(&src, &db);
    let bucket = moto(
        setup.dir.path(),
        &unique("month").replace('_', "-"),
        false,
        true,
    );
    let prefix = unique("t");
    let rules = "[store.retention]\nkeep_daily = 7\nkeep_weekly = 3\n";
    setup.stores = format!(
        "{}{rules}",
        bucket.store_toml("s3", "dc2", &prefix, &bucket.url, "")
    );
    setup.policy = "[policy]\ncopies = 1\nmedia = 1\noffsite = 0\ndebris_grace = \"1s\"\n".into();
    // Our debris, past the (1 s) grace: a pending upload, data without a manifest, a temp
    // file of a writer that is gone. Foreign debris: a pending upload of another name.
    let (c, b, p) = (bucket.client(), bucket.bucket.clone(), prefix.clone());
    block(async move {
        for k in [
            format!("{p}/main/mariadb_2026-10-01_020000.sql.gz.gpg"),
            format!("{p}/main/someone-elses.bin"),
        ] {
            c.create_multipart_upload()
                .bucket(&b)
                .key(k)
                .send()
                .await
                .unwrap();
        }
    });
    bucket.put(
        &format!("{prefix}/main/mariadb_2026-10-02_020000.sql.gz.gpg"),
        b"data of a backup that never got its manifest".to_vec(),
    );
    std::fs::create_dir_all(setup.store().join("main")).unwrap();
    std::fs::write(
        setup
            .store()
            .join("main/.tmp-mariadb_2026-10-03_020000.sql.gz.gpg.999999999"),
        "temp file of a dead writer",
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    // Foreign objects: in the bucket (same prefix, other names; another prefix) and in
    // the directory.
    bucket.put(&format!("{prefix}/main/notes.txt"), b"keep me".to_vec());
    bucket.put(
        &format!("{prefix}/main/mariadb_backup.sql.gz"),
        b"an old script's file".to_vec(),
    );
    bucket.put(
        &format!("{prefix}-other/main/mariadb_2026-10-01_020000.manifest.json"),
        b"{}".to_vec(),
    );
    std::fs::create_dir_all(setup.store().join("main")).unwrap();
    std::fs::write(setup.store().join("main/README"), "not ours").unwrap();
    for day in 1..=30 {
        let now = format!("2026-11-{day:02}T02:00:00Z");
        let o = setup.agent(&src, &["backup", "--now", &now]);
        ok(&o, &format!("backup of day {day}"));
        let o = setup.agent(&src, &["prune", "--now", &now]);
        ok(&o, &format!("prune of day {day}"));
    }
    // Expected on S3 after 2026-11-30: the last 7 days (24..30), plus the newest of
    // 3 ISO weeks: week 48 (23-29 Nov: the 29th, already in), week 47 (16-22: the 22nd),
    // week 46 (9-15: the 15th)... weeks are counted over distinct weeks walking back
    // from the newest: 30 Nov is week 49 (Mon 30), 29 is week 48, then week 47 -> 22nd.
    let ids: Vec<String> = bucket
        .keys(&format!("{prefix}/main/mariadb_2026"))
        .into_iter()
        .filter(|k| k.ends_with(".manifest.json"))
        .collect();
    let days: Vec<u32> = ids
        .iter()
        .map(|k| {
            let id = k.rsplit('/').next().unwrap();
            id[16..18].parse().unwrap()
        })
        .collect();
    assert_eq!(days, vec![22, 24, 25, 26, 27, 28, 29, 30], "{ids:?}");
    // Versioned bucket: deletion by version id leaves no version and no delete marker.
    let versions = bucket.versions(&format!("{prefix}/main/mariadb_2026-11-01"));
    assert!(versions.is_empty(), "{versions:?}");
    // Foreign objects untouched.
    let keys = bucket.keys(&format!("{prefix}/main/"));
    assert!(keys.contains(&format!("{prefix}/main/notes.txt")));
    assert!(keys.contains(&format!("{prefix}/main/mariadb_backup.sql.gz")));
    assert_eq!(bucket.keys(&format!("{prefix}-other/")).len(), 1);
    assert!(setup.store().join("main/README").exists());
    // Every deletion is in the audit log, manifest before data.
    let audit = std::fs::read_to_string(setup.path("state/audit.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first = lines
        .iter()
        .position(|l| {
            l["object"]
                .as_str()
                .unwrap()
                .ends_with("mariadb_2026-11-01_020000.manifest.json")
        })
        .expect("the day-1 manifest deletion is audited");
    let data = lines
        .iter()
        .position(|l| {
            l["object"]
                .as_str()
                .unwrap()
                .ends_with("mariadb_2026-11-01_020000.sql.gz.gpg")
        })
        .expect("the day-1 data deletion is audited");
    assert!(first < data);
    assert!(lines
        .iter()
        .all(|l| (l["store"] == "s3" || l["store"] == "local") && l["rule"].is_string()));
    // Our debris is gone (and audited); the foreign pending upload stays.
    assert_eq!(
        bucket.uploads(&format!("{prefix}/")),
        vec![format!("{prefix}/main/someone-elses.bin")]
    );
    assert!(!keys.contains(&format!(
        "{prefix}/main/mariadb_2026-10-02_020000.sql.gz.gpg"
    )));
    assert!(!setup
        .store()
        .join("main/.tmp-mariadb_2026-10-03_020000.sql.gz.gpg.999999999")
        .exists());
    assert!(
        lines
            .iter()
            .any(|l| l["rule"].as_str().unwrap().starts_with("debris")),
        "debris removal is audited"
    );
    // Prune --dry-run prints the plan with the rule for each backup, deleting nothing.
    let o = setup.agent(
        &src,
        &["prune", "--dry-run", "--now", "2026-12-01T02:00:00Z"],
    );
    ok(&o, "dry run");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("daily 1/7") && out.contains("weekly"), "{out}");
    assert!(out.contains("not ours; left alone"), "{out}");
    assert_eq!(
        bucket
            .keys(&format!("{prefix}/main/mariadb_2026"))
            .iter()
            .filter(|k| k.ends_with(".manifest.json"))
            .count(),
        8
    );
    // The local store has no retention rule: it keeps all 30.
    assert_eq!(statuses(&list_json(&setup, &src)).len(), 30);
    src.drop_db(&db);
}

/// An S3 endpoint over TLS with a private CA (`ca_file`), credentials from the AWS chain
/// (a shared credentials file, no key files in the config) and checksum = "off": the
/// backup verifies there; without `ca_file` the certificate is refused.
#[test]
fn tls_with_a_private_ca_default_chain_credentials_and_no_checksums() {
    let src = source();
    let db = db_with(&src, "tls", 64);
    let mut setup = Setup::new(&src, &db);
    let certs = setup.path("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (ca, cert, key) = common::receivers::test_cert(&certs);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let moto_bin = env_file()["BA_MOTO_SERVER"].clone();
    let mut server = Command::new(moto_bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string(), "-c"])
        .arg(&cert)
        .arg("-k")
        .arg(&key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("https://localhost:{port}");
    let curl = |args: &[&str]| {
        Command::new("curl")
            .args(["-fsS", "--cacert"])
            .arg(&ca)
            .args(args)
            .output()
            .unwrap()
    };
    let t0 = std::time::Instant::now();
    while !curl(&[&format!("{url}/")]).status.success() {
        assert!(t0.elapsed().as_secs() < 30, "moto over TLS did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // moto does not check signatures: an unsigned PUT creates the bucket.
    ok(
        &curl(&["-X", "PUT", &format!("{url}/tls-bucket")]),
        "create bucket",
    );
    let creds = setup.path("aws-credentials");
    std::fs::write(
        &creds,
        "[default]\naws_access_key_id = testing\naws_secret_access_key = testing-secret\n",
    )
    .unwrap();
    let store = |ca_line: &str| {
        format!(
            "\n[[store]]\nname = \"tls\"\nkind = \"s3\"\nsite = \"dc2\"\nendpoint = \"{url}\"\nbucket = \"tls-bucket\"\npath_style = true\nchecksum = \"off\"\n{ca_line}\n"
        )
    };
    setup.policy = "[policy]\ncopies = 2\nmedia = 2\noffsite = 1\n".into();
    let run_args = |setup: &Setup, args: &[&str]| {
        let cfg = setup.config(&src);
        let mut c = Command::new(agent_bin());
        c.arg("--config").arg(cfg).args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") {
                c.env_remove(k);
            }
        }
        c.env("AWS_SHARED_CREDENTIALS_FILE", &creds)
            .env("AWS_CONFIG_FILE", setup.path("no-aws-config"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("TMPDIR", setup.path("state"))
            .output()
            .unwrap()
    };
    let run = |setup: &Setup| run_args(setup, &["backup"]);
    // Without the CA: the server's certificate is not trusted; the local copy stands.
    setup.stores = store("");
    let o = run(&setup);
    let err = stderr(&o);
    assert_eq!(code(&o), Some(3), "{err}");
    assert!(err.contains("store tls failed"), "{err}");
    // With it: verified copy over TLS, credentials from the shared file.
    setup.stores = store(&format!("ca_file = {ca:?}"));
    std::thread::sleep(std::time::Duration::from_secs(1)); // a new backup id
    let o = run(&setup);
    ok(&o, "backup over TLS with the private CA");
    let o = run_args(&setup, &["list", "--json"]);
    ok(&o, "list");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = statuses(&v);
    let last = s.last().unwrap();
    assert!(last.1.contains(&("tls".into(), "verified".into())), "{v}");
    assert!(last.2, "{v}");
    let _ = server.kill();
    let _ = server.wait();
    src.drop_db(&db);
}

/// Two writers of one name (another run or agent between the existence check and the
/// upload): the first to finish wins; the second is refused as "already exists" (S3
/// If-None-Match) and the object keeps the first's bytes. Single PUT and multipart, on
/// Garage and moto.
#[test]
fn s3_never_overwrites_an_object_written_meanwhile() {
    use backup_core::config::{Config, ProcessEnv};
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let servers = [
        ("garage", garage()),
        (
            "moto",
            moto(dir.path(), &unique("race").replace('_', "-"), false, false),
        ),
    ];
    for (label, s) in servers {
        let prefix = unique("race");
        let text = s.store_toml("s3", "dc2", &prefix, &s.url, "");
        let cfg = Config::parse(std::path::Path::new("race.toml"), &text, &ProcessEnv)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let store = backup_core::store::open_store(&cfg.stores[0]).unwrap();
        for (size, what) in [(5usize, "single PUT"), (6 << 20, "multipart")] {
            let key = format!("main/race-{size}.bin");
            let first = vec![b'1'; size];
            let second = vec![b'2'; size];
            let mut a = store.create_with(&key, None).unwrap();
            let mut b = store.create_with(&key, None).unwrap();
            a.write_all(&first).unwrap();
            b.write_all(&second).unwrap();
            a.commit()
                .unwrap_or_else(|e| panic!("{label} {what}: the first writer: {e}"));
            let e = b
                .commit()
                .expect_err(&format!("{label} {what}: the second writer overwrote"));
            assert!(
                e.to_string().contains("already exists"),
                "{label} {what}: {e}"
            );
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut store.open(&key).unwrap(), &mut got).unwrap();
            assert!(
                got == first,
                "{label} {what}: the object holds the second writer's bytes"
            );
            assert!(
                s.uploads(&format!("{prefix}/")).is_empty(),
                "{label} {what}: an upload was left"
            );
        }
    }
}
