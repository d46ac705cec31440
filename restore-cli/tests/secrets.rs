//! No plaintext and no secret leaves its place: a canary in a table and canaries in the
//! secret files (database password, signing-key passphrase) never appear in the state
//! dir, TMPDIR, the store, the logs or the agent's command line, after a good run and
//! after failing runs.

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Stdio};

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn scan_dir(dir: &Path, needles: &[&str], skip: &[&Path], found: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if skip.iter().any(|s| *s == p) {
            continue;
        }
        if p.is_dir() {
            scan_dir(&p, needles, skip, found);
        } else if let Ok(b) = std::fs::read(&p) {
            for n in needles {
                if contains(&b, n) {
                    found.push(format!("{n} in {}", p.display()));
                }
            }
        }
    }
}

/// Runs the agent, sampling /proc/PID/cmdline while it runs.
fn run_watched(setup: &Setup, src: &Server) -> (std::process::Output, Vec<u8>) {
    let cfg = setup.config(src);
    let mut child = Command::new(agent_bin())
        .args(["--config", cfg.to_str().unwrap(), "backup"])
        .env("TMPDIR", setup.path("tmp"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap_or_default();
    let _ = child.try_wait();
    (child.wait_with_output().unwrap(), cmdline)
}

#[test]
fn canaries_never_leak() {
    let src = source();
    let db = unique("canary");
    let data_canary = format!("CANARY-DATA-{}", unique("d"));
    let pw_canary = format!("CANARY-DBPW-{}", unique("p"));
    let pass_canary = format!("CANARY-PASS-{}", unique("k"));
    src.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    src.sql_db(&db, &format!("CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, '{data_canary}'); INSERT INTO t SELECT seq + 1, SHA2(seq, 256) FROM seq_1_to_2000"));

    // An agent key protected by a passphrase canary.
    let g = Gpg::new();
    g.gen_key(
        "agent-canary@test.invalid",
        "ed25519",
        Some(&pass_canary),
        "0",
    );
    let mut setup = Setup::new(&src, &db);
    std::fs::create_dir_all(setup.path("tmp")).unwrap();
    setup.dump_password = pw_canary.clone();
    src.dump_user(&setup.dump_user, &pw_canary);
    let key = setup.path("agent-canary.sec.asc");
    g.export_secret("agent-canary@test.invalid", Some(&pass_canary), &key);
    setup.signing_key = key;
    setup.signing_passphrase = Some(pass_canary.clone());

    let mut logs: Vec<u8> = Vec::new();
    let mut cmdlines: Vec<u8> = Vec::new();
    let (o, cmd) = run_watched(&setup, &src);
    ok(&o, "backup with canaries");
    logs.extend(&o.stdout);
    logs.extend(&o.stderr);
    cmdlines.extend(cmd);
    assert_eq!(setup.store_files().len(), 4);

    // The backup really holds the canary (so the scan below could find it in plaintext).
    let g2 = Gpg::new();
    g2.import(&testdata("dpo.sec.asc"));
    let agent_pub = setup.path("agent-canary.pub.asc");
    g.export_public("agent-canary@test.invalid", &agent_pub);
    g2.import(&agent_pub);
    let dec = g2
        .cmd()
        .arg("--decrypt")
        .arg(setup.only_backup())
        .output()
        .unwrap();
    ok(&dec, "gpg --decrypt");
    let sql = Command::new("gunzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&dec.stdout)?;
            c.wait_with_output()
        });
    assert!(
        contains(&sql.unwrap().stdout, &data_canary),
        "the canary row is in the backup"
    );

    // Failing runs: a KILLed connection is hard to time here, so: a wrong passphrase, a
    // wrong database password, an unreachable server.
    std::fs::write(setup.path("agent.pass"), "CANARY-WRONG-PASSPHRASE").unwrap();
    let wrong_pass = setup
        .signing_passphrase
        .replace("CANARY-WRONG-PASSPHRASE".into());
    let (o, cmd) = {
        // config() rewrites agent.pass from signing_passphrase.
        run_watched(&setup, &src)
    };
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("wrong passphrase"), "{}", stderr(&o));
    logs.extend(&o.stdout);
    logs.extend(&o.stderr);
    cmdlines.extend(cmd);
    setup.signing_passphrase = wrong_pass;

    setup.dump_password = format!("{pw_canary}-WRONG");
    let (o, cmd) = run_watched(&setup, &src);
    assert_eq!(o.status.code(), Some(1));
    logs.extend(&o.stdout);
    logs.extend(&o.stderr);
    cmdlines.extend(cmd);
    setup.dump_password = pw_canary.clone();

    let (o, cmd) = run_watched(
        &setup,
        &Server {
            port: 1,
            password: String::new(),
        },
    );
    assert_eq!(o.status.code(), Some(1));
    logs.extend(&o.stdout);
    logs.extend(&o.stderr);
    cmdlines.extend(cmd);

    let needles = [
        data_canary.as_str(),
        pw_canary.as_str(),
        pass_canary.as_str(),
        "CANARY-WRONG-PASSPHRASE",
    ];
    for n in &needles {
        assert!(
            !contains(&logs, n),
            "{n} appeared in the logs:\n{}",
            String::from_utf8_lossy(&logs)
        );
        assert!(!contains(&cmdlines, n), "{n} appeared on a command line");
    }
    let mut found = Vec::new();
    // Everything the agent wrote: state dir, TMPDIR, store. The secret files themselves
    // (and the config naming them) are the only places the secrets may be.
    for d in ["state", "tmp", "store"] {
        scan_dir(&setup.path(d), &needles, &[], &mut found);
    }
    assert!(found.is_empty(), "{found:?}");
    let tmp_left: Vec<_> = std::fs::read_dir(setup.path("tmp"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        tmp_left.is_empty(),
        "the agent left files in TMPDIR: {tmp_left:?}"
    );
    src.drop_db(&db);
}
