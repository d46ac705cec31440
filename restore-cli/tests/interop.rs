//! The DPO can restore with stock tools only: GnuPG 2.2 decrypts the artifact for DPO keys
//! it made itself (RSA-4096 with a passphrase, ed25519/cv25519 without, two recipients at
//! once) and reports a good signature from the agent key; the message is SEIPD v1 with
//! MDC and AES-256, no AEAD; gunzip reads it; the stock `mariadb` client loads it with the
//! same table checksums; `sha256sum -c` accepts the .sha256 file; `gpg --verify` accepts
//! the manifest's detached signature.

mod common;
use common::*;

use std::process::Command;

const AGENT_FPR: &str = "A26C0D64503A3992441EA6A53B4CA49F4957F4E1";

#[test]
fn stock_gpg_gunzip_mariadb_and_sha256sum_read_the_backup() {
    let src = source();
    let dst = target();
    let db = unique("interop");
    load_schema(&src, &db);

    // Two DPO recipients, made by gpg, each in its own keyring (two people).
    let rsa = Gpg::new();
    let rsa_pass = "correct horse battery staple";
    rsa.gen_key("dpo-rsa@test.invalid", "rsa4096", Some(rsa_pass), "0");
    let ed = Gpg::new();
    ed.gen_key("dpo-ed@test.invalid", "ed25519", None, "0");

    let mut setup = Setup::new(&src, &db);
    let rsa_pub = setup.path("dpo-rsa.asc");
    let ed_pub = setup.path("dpo-ed.asc");
    rsa.export_public("dpo-rsa@test.invalid", &rsa_pub);
    ed.export_public("dpo-ed@test.invalid", &ed_pub);
    setup.dpo_certs = vec![rsa_pub, ed_pub];
    ok(&setup.agent(&src, &["backup"]), "backup");
    let data = setup.only_backup();

    // sha256sum -c in the store directory.
    let o = Command::new("sha256sum")
        .arg("-c")
        .arg(format!(
            "{}.sha256",
            data.file_name().unwrap().to_string_lossy()
        ))
        .current_dir(data.parent().unwrap())
        .output()
        .unwrap();
    ok(&o, "sha256sum -c");

    // gpg --verify checks the manifest's detached signature: the agent's key signed it.
    let manifest = data
        .to_string_lossy()
        .replace(".sql.gz.gpg", ".manifest.json");
    ed.import(&testdata("agent.pub.asc"));
    let o = ed
        .cmd()
        .args(["--status-fd", "2", "--verify"])
        .arg(format!("{manifest}.sig"))
        .arg(&manifest)
        .output()
        .unwrap();
    let status = stderr(&o);
    assert!(o.status.success(), "gpg --verify: {status}");
    assert!(
        status.contains(&format!("[GNUPG:] VALIDSIG {AGENT_FPR}")),
        "{status}"
    );

    let pass_file = setup.path("rsa.pass");
    std::fs::write(&pass_file, rsa_pass).unwrap();
    for (g, extra) in [
        (
            &rsa,
            vec![
                "--pinentry-mode",
                "loopback",
                "--passphrase-file",
                pass_file.to_str().unwrap(),
            ],
        ),
        (&ed, vec![]),
    ] {
        g.import(&testdata("agent.pub.asc"));
        let out = setup.path("decrypted.sql.gz");
        let _ = std::fs::remove_file(&out);
        let o = g
            .cmd()
            .args(&extra)
            .args(["--status-fd", "2", "--output"])
            .arg(&out)
            .arg("--decrypt")
            .arg(&data)
            .output()
            .unwrap();
        let status = stderr(&o);
        assert!(o.status.success(), "gpg --decrypt: {status}");
        assert!(status.contains("[GNUPG:] GOODSIG"), "{status}");
        assert!(
            status.contains(&format!("[GNUPG:] VALIDSIG {AGENT_FPR}")),
            "{status}"
        );
        // DECRYPTION_INFO <mdc_method> <sym_algo> [<aead_algo>]: MDC (2), AES-256 (9), no AEAD.
        let info = status
            .lines()
            .find(|l| l.starts_with("[GNUPG:] DECRYPTION_INFO"))
            .expect("DECRYPTION_INFO");
        let f: Vec<&str> = info.split_whitespace().collect();
        assert_eq!((f[2], f[3]), ("2", "9"), "{info}");
        assert!(f.get(4).is_none_or(|a| *a == "0"), "AEAD used: {info}");
        assert!(status.contains("[GNUPG:] DECRYPTION_OKAY"), "{status}");

        let o = g
            .cmd()
            .args(&extra)
            .arg("--list-packets")
            .arg(&data)
            .output()
            .unwrap();
        let packets = String::from_utf8_lossy(&o.stdout);
        assert!(
            packets.contains(":encrypted data packet:") && packets.contains("mdc_method: 2"),
            "{packets}"
        );
        assert!(!packets.to_lowercase().contains("aead"), "{packets}");
        assert!(
            packets.contains(":onepass_sig packet:") && packets.contains(":literal data packet:"),
            "{packets}"
        );

        // gunzip reads it; first line is the sandbox guard, last the completion line.
        let o = Command::new("gunzip").arg("-c").arg(&out).output().unwrap();
        ok(&o, "gunzip");
        let sql = o.stdout;
        assert!(sql.starts_with(b"/*M!999999\\- enable the sandbox mode */\n"));
        let text = String::from_utf8_lossy(&sql[sql.len() - 200..]).into_owned();
        assert!(
            text.trim_end()
                .lines()
                .last()
                .unwrap()
                .starts_with("-- Dump completed "),
            "{text}"
        );
        let sql_file = setup.path("dump.sql");
        std::fs::write(&sql_file, &sql).unwrap();

        // The stock client loads it into the other server: same checksums and objects.
        dst.drop_db(&db);
        let o = dst.load_file(None, &sql_file);
        ok(&o, "mariadb < dump.sql");
        assert_same(&fingerprint(&src, &db), &fingerprint(&dst, &db));
    }

    // Our restore also reads the RSA recipient's copy with a passphrase-protected key.
    let rsa_sec = setup.path("dpo-rsa.sec.asc");
    rsa.export_secret("dpo-rsa@test.invalid", Some(rsa_pass), &rsa_sec);
    let sql_out = setup.path("restored.sql");
    let o = restore(&[
        "--decrypt",
        data.to_str().unwrap(),
        "-o",
        sql_out.to_str().unwrap(),
        "--dpo-key",
        rsa_sec.to_str().unwrap(),
        "--dpo-passphrase-file",
        pass_file.to_str().unwrap(),
        "--agent-cert",
        testdata("agent.pub.asc").to_str().unwrap(),
        "--agent-fingerprint",
        AGENT_FPR,
    ]);
    ok(&o, "restore --decrypt with a passphrase-protected RSA key");
    assert_eq!(
        std::fs::read(&sql_out).unwrap(),
        std::fs::read(setup.path("dump.sql")).unwrap()
    );
    // A wrong passphrase is a clear error.
    std::fs::write(&pass_file, "wrong").unwrap();
    let o = restore(&[
        "--decrypt",
        data.to_str().unwrap(),
        "-o",
        setup.path("x.sql").to_str().unwrap(),
        "--dpo-key",
        rsa_sec.to_str().unwrap(),
        "--dpo-passphrase-file",
        pass_file.to_str().unwrap(),
        "--agent-cert",
        testdata("agent.pub.asc").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("wrong passphrase"), "{}", stderr(&o));
    assert!(!setup.path("x.sql").exists());

    src.drop_db(&db);
    dst.drop_db(&db);
}

/// The awk filter docs/dpo-restore.md gives for a restore with stock tools that leaves
/// the accounts out (as `restore` does without --accounts): the database loads, no
/// account of the backup is created on the target.
#[test]
fn the_documented_stock_filter_leaves_the_accounts_out() {
    let src = source();
    let dst = target();
    let db = unique("stockacc");
    let user = unique("stocku");
    src.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    src.sql_db(
        &db,
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1),(2)",
    );
    src.sql(&format!(
        "CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'; GRANT SELECT ON `{db}`.* TO '{user}'@'%'"
    ));
    let setup = Setup::new(&src, &db);
    ok(&setup.agent(&src, &["backup"]), "backup");
    let sql = setup.path("dump.sql");
    ok(
        &restore_decrypt(
            &setup.only_backup(),
            &testdata("dpo.sec.asc"),
            &testdata("agent.pub.asc"),
            &sql,
        ),
        "restore --decrypt",
    );
    let text = std::fs::read(&sql).unwrap();
    assert!(String::from_utf8_lossy(&text).contains(&format!("CREATE USER IF NOT EXISTS `{user}`")));
    // The awk program exactly as the document gives it.
    let doc = std::fs::read_to_string(repo_root().join("docs/dpo-restore.md")).unwrap();
    let line = doc
        .lines()
        .find(|l| l.contains("| awk '"))
        .expect("docs/dpo-restore.md gives the awk filter");
    let program = line
        .split("awk '")
        .nth(1)
        .unwrap()
        .split("' |")
        .next()
        .unwrap();
    let filtered = setup.path("filtered.sql");
    let o = Command::new("awk")
        .arg(program)
        .arg(&sql)
        .stdout(std::fs::File::create(&filtered).unwrap())
        .output()
        .unwrap();
    ok(&o, "awk");
    let f = String::from_utf8_lossy(&std::fs::read(&filtered).unwrap()).into_owned();
    assert!(!f.contains("CREATE USER") && !f.contains("GRANT "), "{f}");
    dst.drop_db(&db);
    dst.sql(&format!("DROP USER IF EXISTS '{user}'@'%'"));
    ok(&dst.load_file(None, &filtered), "mariadb < filtered");
    assert_eq!(dst.sql_db(&db, "SELECT COUNT(*) FROM t").trim(), "2");
    assert_eq!(
        dst.sql(&format!(
            "SELECT COUNT(*) FROM mysql.user WHERE User = '{user}'"
        ))
        .trim(),
        "0"
    );
    src.sql(&format!("DROP USER '{user}'@'%'"));
    src.drop_db(&db);
    dst.drop_db(&db);
}
