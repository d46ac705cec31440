//! Progress of the long steps: shown on a terminal (a pseudo-terminal from `script`),
//! never when standard error is not one.

mod common;
use common::*;

#[test]
fn long_steps_show_progress_on_a_terminal_only() {
    let src = source();
    let db = unique("prog");
    src.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    src.sql_db(
        &db,
        "CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t SELECT seq, SHA2(seq, 512) FROM seq_1_to_2000",
    );
    let setup = Setup::new(&src, &db);
    ok(&setup.agent(&src, &["backup"]), "backup");
    let data = setup.only_backup();

    // Not a terminal: results only.
    let o = restore_decrypt(
        &data,
        &testdata("dpo.sec.asc"),
        &testdata("agent.pub.asc"),
        &setup.path("plain1.sql"),
    );
    ok(&o, "restore --decrypt");
    let quiet = stderr(&o);
    assert!(
        !quiet.contains("verifying:") && !quiet.contains('\r'),
        "{quiet}"
    );

    // On a terminal: each step's line, ending at 100%.
    let cmd = format!(
        "{} --decrypt {} --dpo-key {} --agent-cert {} --output {}",
        restore_bin().display(),
        data.display(),
        testdata("dpo.sec.asc").display(),
        testdata("agent.pub.asc").display(),
        setup.path("plain2.sql").display()
    );
    let o = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{tty}");
    for step in ["restore: checking the checksum: ", "restore: verifying: "] {
        let line = tty
            .split(['\r', '\n'])
            .rfind(|l| l.starts_with(step))
            .unwrap_or_else(|| panic!("no {step:?} line in:\n{tty}"));
        assert!(line.contains("(100%)"), "{line}");
    }
    assert_eq!(
        std::fs::read(setup.path("plain1.sql")).unwrap(),
        std::fs::read(setup.path("plain2.sql")).unwrap()
    );
    src.drop_db(&db);
}
