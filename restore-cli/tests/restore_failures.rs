//! Nothing reaches the server from a file that fails any check: flipped byte, truncated
//! file, missing or wrong checksum, a renamed or substituted backup (objects renamed,
//! manifest edited, unsigned or re-signed by another key, data renamed alone), wrong DPO
//! key, a signature by another key, no signature, a missing completion line. Each gives a clear error, exit 1,
//! and the target server is untouched. The bad messages are built with the real `gpg`.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

const NAME: &str = "mariadb_2026-01-01_000000.sql.gz.gpg";

struct Case {
    dir: PathBuf,
}

impl Case {
    fn new(root: &Path, label: &str) -> Case {
        let dir = root.join(label);
        std::fs::create_dir_all(&dir).unwrap();
        Case { dir }
    }
    fn data(&self) -> PathBuf {
        self.dir.join(NAME)
    }
    fn write(&self, bytes: &[u8]) -> &Self {
        std::fs::write(self.data(), bytes).unwrap();
        self
    }
    /// Writes a correct .sha256 for whatever the data file now holds, with sha256sum.
    fn sum(&self) -> &Self {
        write_sha256(&self.data());
        self
    }
}

fn gzip(input: &[u8], out: &Path) {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let o = child.wait_with_output().unwrap();
    ok(&o, "gzip");
    std::fs::write(out, o.stdout).unwrap();
}

#[test]
fn tampered_or_foreign_files_restore_nothing() {
    let src = source();
    let dst = target();
    let db = unique("bad");
    src.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    src.sql_db(&db, "CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t SELECT seq, REPEAT(SHA2(seq, 256), 20) FROM seq_1_to_3000");
    let setup = Setup::new(&src, &db);
    ok(&setup.agent(&src, &["backup"]), "backup");
    let good = setup.only_backup();
    let good_bytes = std::fs::read(&good).unwrap();
    dst.drop_db(&db);

    // The verified plaintext (gzip) of the good backup, to build bad messages from.
    let plain_gz = setup.path("plain.sql.gz");
    ok(
        &restore(&[
            "--decrypt",
            good.to_str().unwrap(),
            "-o",
            plain_gz.to_str().unwrap(),
            "--dpo-key",
            testdata("dpo.sec.asc").to_str().unwrap(),
            "--agent-cert",
            testdata("agent.pub.asc").to_str().unwrap(),
        ]),
        "restore --decrypt",
    );
    let sql = {
        let o = Command::new("gunzip")
            .arg("-c")
            .arg(&plain_gz)
            .output()
            .unwrap();
        ok(&o, "gunzip");
        o.stdout
    };

    let g = Gpg::new();
    g.import(&testdata("dpo.pub.asc"));
    g.import(&testdata("agent.sec.asc"));
    g.gen_key("intruder@test.invalid", "ed25519", None, "0");
    let root = setup.path("cases");
    let mut cases: Vec<(Case, String, Vec<String>)> = Vec::new();

    let mut flipped = good_bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    let c = Case::new(&root, "flipped");
    c.write(&flipped);
    std::fs::copy(
        format!("{}.sha256", good.display()),
        c.dir.join(format!("{NAME}.sha256")),
    )
    .unwrap();
    // The .sha256 names the original file name; write one for this name with the good hash.
    let good_hash = std::fs::read_to_string(format!("{}.sha256", good.display())).unwrap();
    std::fs::write(
        c.dir.join(format!("{NAME}.sha256")),
        format!("{}  {NAME}\n", &good_hash[..64]),
    )
    .unwrap();
    cases.push((c, "checksum mismatch".into(), vec![]));

    let c = Case::new(&root, "flipped-resummed");
    c.write(&flipped).sum();
    cases.push((c, "failed verification".into(), vec![]));

    let c = Case::new(&root, "truncated");
    c.write(&good_bytes[..good_bytes.len() / 2]).sum();
    cases.push((c, "failed verification".into(), vec![]));

    let c = Case::new(&root, "truncated-tail");
    c.write(&good_bytes[..good_bytes.len() - 40]).sum();
    cases.push((c, "failed verification".into(), vec![]));

    let c = Case::new(&root, "no-sha256");
    c.write(&good_bytes);
    cases.push((c, "checksum file".into(), vec![]));

    // Substitution (issue 11, item 2): the good backup's objects under another backup's
    // name, its manifest edited (old signature kept, none, or re-signed by another key),
    // or the data alone renamed with a fresh .sha256.
    let good_id = good
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace(".sql.gz.gpg", "");
    let manifest_path = |dir: &Path, id: &str| dir.join(format!("{id}.manifest.json"));
    let sig_path = |dir: &Path, id: &str| dir.join(format!("{id}.manifest.json.sig"));
    let good_dir = good.parent().unwrap();
    let good_manifest = std::fs::read(manifest_path(good_dir, &good_id)).unwrap();
    let good_sig = std::fs::read(sig_path(good_dir, &good_id)).unwrap();
    let this_id = NAME.replace(".sql.gz.gpg", "");
    let mut m: serde_json::Value = serde_json::from_slice(&good_manifest).unwrap();
    m["backup_id"] = serde_json::json!(this_id);
    m["data"]["name"] = serde_json::json!(NAME);
    m["largest_statement_bytes"] = serde_json::json!(1u64 << 40);
    let edited = serde_json::to_vec_pretty(&m).unwrap();

    let c = Case::new(&root, "renamed");
    c.write(&good_bytes).sum();
    std::fs::write(manifest_path(&c.dir, &this_id), &good_manifest).unwrap();
    std::fs::write(sig_path(&c.dir, &this_id), &good_sig).unwrap();
    cases.push((c, format!("it is the manifest of backup {good_id}"), vec![]));

    let c = Case::new(&root, "manifest-edited");
    c.write(&good_bytes).sum();
    std::fs::write(manifest_path(&c.dir, &this_id), &edited).unwrap();
    std::fs::write(sig_path(&c.dir, &this_id), &good_sig).unwrap();
    cases.push((c, "bad signature".into(), vec![]));

    let c = Case::new(&root, "manifest-unsigned");
    c.write(&good_bytes).sum();
    std::fs::write(manifest_path(&c.dir, &this_id), &edited).unwrap();
    cases.push((c, "has no signature beside it".into(), vec![]));

    let c = Case::new(&root, "manifest-resigned");
    c.write(&good_bytes).sum();
    std::fs::write(manifest_path(&c.dir, &this_id), &edited).unwrap();
    ok(
        &g.run(&[
            "--local-user",
            "intruder@test.invalid",
            "--armor",
            "--output",
            sig_path(&c.dir, &this_id).to_str().unwrap(),
            "--detach-sign",
            manifest_path(&c.dir, &this_id).to_str().unwrap(),
        ]),
        "gpg --detach-sign",
    );
    cases.push((c, "bad signature".into(), vec![]));

    let c = Case::new(&root, "renamed-data-only");
    c.write(&good_bytes).sum();
    cases.push((
        c,
        format!("the file is named {this_id}, but the dump inside is backup {good_id}"),
        vec![],
    ));

    let c = Case::new(&root, "other-signer");
    gpg_seal(&g, &plain_gz, Some("intruder@test.invalid"), &c.data());
    c.sum();
    cases.push((
        c,
        "no good signature from a trusted agent key".into(),
        vec![],
    ));

    let c = Case::new(&root, "unsigned");
    gpg_seal(&g, &plain_gz, None, &c.data());
    c.sum();
    cases.push((
        c,
        "no good signature from a trusted agent key".into(),
        vec![],
    ));

    // Validly signed by the agent key, but the SQL lacks its completion line.
    let cut = sql.trim_ascii_end();
    let cut = &cut[..cut.iter().rposition(|&b| b == b'\n').unwrap() + 1];
    assert!(!String::from_utf8_lossy(cut).contains("-- Dump completed"));
    let gz = setup.path("incomplete.sql.gz");
    gzip(cut, &gz);
    let c = Case::new(&root, "no-completion");
    gpg_seal(&g, &gz, Some("agent@backup-agent.invalid"), &c.data());
    c.sum();
    cases.push((c, "no completion line".into(), vec![]));

    // Validly signed and complete, but cut inside a statement.
    let half = &sql[..sql.len() / 2];
    let gz = setup.path("half.sql.gz");
    gzip(half, &gz);
    let c = Case::new(&root, "cut-statement");
    gpg_seal(&g, &gz, Some("agent@backup-agent.invalid"), &c.data());
    c.sum();
    cases.push((c, "failed verification".into(), vec![]));

    // The good file, but the wrong DPO key.
    let wrong = Gpg::new();
    wrong.gen_key("other-dpo@test.invalid", "ed25519", None, "0");
    let wrong_key = setup.path("wrong-dpo.sec.asc");
    wrong.export_secret("other-dpo@test.invalid", None, &wrong_key);
    let c = Case::new(&root, "wrong-dpo");
    c.write(&good_bytes).sum();
    cases.push((
        c,
        "cannot decrypt".into(),
        vec!["--dpo-key".into(), wrong_key.display().to_string()],
    ));

    // The good file with a pinned fingerprint that is not the signer.
    let c = Case::new(&root, "wrong-pin");
    c.write(&good_bytes).sum();
    let intruder_pub = setup.path("intruder.pub.asc");
    g.export_public("intruder@test.invalid", &intruder_pub);
    cases.push((
        c,
        "no good signature from a trusted agent key".into(),
        vec![
            "--agent-cert".into(),
            intruder_pub.display().to_string(),
            "--agent-fingerprint".into(),
            g.fingerprint("intruder@test.invalid"),
        ],
    ));

    // Other tests create databases on the same target at the same time: the check is
    // that this backup's database never appears there.
    assert!(!dst.databases().contains(&db));
    for (case, expect, extra) in &cases {
        let mut args = into_args(&dst, &case.data(), &setup.path("target.password"));
        // Later flags override: replace --dpo-key / the trusted certificate where given.
        if let Some(i) = extra.iter().position(|a| a == "--dpo-key") {
            let k = args.iter().position(|a| a == "--dpo-key").unwrap();
            args[k + 1] = extra[i + 1].clone();
        }
        if extra.iter().any(|a| a == "--agent-cert") {
            let k = args.iter().position(|a| a == "--agent-cert").unwrap();
            args.drain(k..k + 2);
            args.extend(extra.iter().cloned());
        }
        let o = restore(&args);
        let err = stderr(&o);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{}: expected exit 1, got {:?}: {err}",
            case.dir.display(),
            o.status.code()
        );
        assert!(
            err.contains(expect.as_str()),
            "{}: expected {expect:?} in: {err}",
            case.dir.display()
        );
        assert_eq!(
            err.lines()
                .filter(|l| l.starts_with("restore: ")
                    && !l.starts_with("restore: checksum ok")
                    && !l.starts_with("restore: manifest ok")
                    && !l.starts_with("restore: verified:"))
                .count(),
            1,
            "one error line: {err}"
        );
        assert!(
            !dst.databases().contains(&db),
            "{}: the target changed",
            case.dir.display()
        );

        // --decrypt writes nothing either.
        let out = case.dir.join("out.sql");
        let mut dargs: Vec<String> = vec![
            "--decrypt".into(),
            case.data().display().to_string(),
            "-o".into(),
            out.display().to_string(),
        ];
        dargs.extend(args.iter().skip_while(|a| *a != "--dpo-key").cloned());
        let o = restore(&dargs);
        assert_eq!(
            o.status.code(),
            Some(1),
            "--decrypt {}: {}",
            case.dir.display(),
            stderr(&o)
        );
        let leftovers: Vec<_> = std::fs::read_dir(&case.dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("out.sql"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "{}: --decrypt left {leftovers:?}",
            case.dir.display()
        );
    }

    // And the good file still restores (the checks are not simply always failing).
    let o = restore(&into_args(&dst, &good, &setup.path("target.password")));
    ok(&o, "restore of the good file");
    assert_eq!(dst.sql_db(&db, "SELECT COUNT(*) FROM t").trim(), "3000");
    src.drop_db(&db);
    dst.drop_db(&db);
}
