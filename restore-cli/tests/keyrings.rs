//! Certificate files that hold several certificates: two DPOs exported together (every
//! encryption subkey of each is a recipient), and both agents' certificates in one file.

mod common;
use common::*;

#[test]
fn keyring_files_for_dpo_and_agent_certificates() {
    let src = source();
    let db = unique("ring");
    src.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    src.sql_db(
        &db,
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1),(2)",
    );
    let g = Gpg::new();
    g.gen_key("second-dpo@test.invalid", "ed25519", None, "0");
    g.gen_key("other-agent@test.invalid", "ed25519", None, "0");
    let mut setup = Setup::new(&src, &db);
    let second_pub = setup.path("second.pub.asc");
    g.export_public("second-dpo@test.invalid", &second_pub);
    let ring = setup.path("dpos.asc");
    let both = [
        std::fs::read(testdata("dpo.pub.asc")).unwrap(),
        std::fs::read(&second_pub).unwrap(),
    ]
    .concat();
    std::fs::write(&ring, both).unwrap();
    setup.dpo_certs = vec![ring];
    let o = setup.agent(&src, &["check-config"]);
    ok(&o, "check-config");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .matches("ok: DPO certificate")
            .count(),
        2
    );
    ok(&setup.agent(&src, &["backup"]), "backup");
    let data = setup.only_backup();
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            data.to_string_lossy()
                .replace(".sql.gz.gpg", ".manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(m["dpo_recipients"].as_array().unwrap().len(), 2, "{m}");

    // Either DPO decrypts; the agent certificates come from one keyring file.
    let second_sec = setup.path("second.sec.asc");
    g.export_secret("second-dpo@test.invalid", None, &second_sec);
    let agents = setup.path("agents.asc");
    let other_pub = setup.path("other-agent.pub.asc");
    g.export_public("other-agent@test.invalid", &other_pub);
    std::fs::write(
        &agents,
        [
            std::fs::read(&other_pub).unwrap(),
            std::fs::read(testdata("agent.pub.asc")).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    for key in [testdata("dpo.sec.asc"), second_sec] {
        let out = setup.path("out.sql");
        let o = restore_decrypt(&data, &key, &agents, &out);
        ok(&o, "restore --decrypt with a keyring of agent certificates");
        assert!(std::fs::read_to_string(&out)
            .unwrap()
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("-- Dump completed"));
    }
    src.drop_db(&db);
}
