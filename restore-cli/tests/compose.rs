//! compose/: both datacenters' files validate with Debian's docker-compose, and the agent
//! config they mount is the one this test runs a real backup with (secret paths, state and
//! store dirs and the server address mapped to this machine; nothing else changed).

mod common;
use common::*;

use std::process::Command;

#[test]
fn compose_files_validate() {
    for f in ["compose/dc1.yml", "compose/dc2.yml"] {
        let o = Command::new("docker-compose")
            .arg("-f")
            .arg(repo_root().join(f))
            .args(["config", "-q"])
            .output();
        let o = o.expect("docker-compose is missing; scripts/test-services.sh installs it");
        assert!(o.status.success(), "{f}: {}", stderr(&o));
    }
    let dc1 = std::fs::read_to_string(repo_root().join("compose/dc1.yml")).unwrap();
    assert!(
        !dc1.contains(":latest") && dc1.contains("image: mariadb:10.11."),
        "images are pinned"
    );
    // Only the drill service gets the DPO secret key.
    let agent_part = &dc1[dc1.find("  backup-agent:").unwrap()..dc1.find("  drill:").unwrap()];
    assert!(
        !agent_part.contains("dpo_secret_key"),
        "the sidecar must not have the DPO key"
    );
    let drill_part = &dc1[dc1.find("  drill:").unwrap()..];
    assert!(drill_part.contains("profiles: [drill]") && drill_part.contains("dpo_secret_key"));
    let docker = std::fs::read_to_string(repo_root().join("compose/Dockerfile")).unwrap();
    assert!(
        docker.contains("USER backup") && docker.contains("backup-agent healthcheck || exit 1")
    );
}

#[test]
fn the_compose_agent_config_runs_a_backup() {
    let src = source();
    let db = unique("compose");
    src.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    src.sql_db(
        &db,
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1),(2),(3)",
    );
    let setup = Setup::new(&src, &db);
    let d = setup.dir.path();
    for sub in ["secrets", "etc", "state", "backups"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::write(d.join("secrets/db_backup_password"), &setup.dump_password).unwrap();
    std::fs::copy(
        testdata("agent.sec.asc"),
        d.join("secrets/agent_signing_key"),
    )
    .unwrap();
    std::fs::copy(testdata("dpo.pub.asc"), d.join("etc/dpo.asc")).unwrap();
    std::fs::write(d.join("secrets/webhook_url"), "http://127.0.0.1:9/unused").unwrap();
    std::fs::write(d.join("secrets/smtp_password"), "unused").unwrap();
    // The offsite store of dc1 (dc2's object store, with object lock) is a moto bucket.
    let vault = common::s3::moto(
        &d.join("secrets"),
        &unique("dc2vault").replace('_', "-"),
        true,
        false,
    );
    std::fs::copy(&vault.key_id_file, d.join("secrets/s3_dc2_access_key_id")).unwrap();
    std::fs::copy(
        &vault.secret_file,
        d.join("secrets/s3_dc2_secret_access_key"),
    )
    .unwrap();
    let text = std::fs::read_to_string(repo_root().join("compose/config/agent-dc1.toml")).unwrap();
    let mapped = text
        .replace(
            "\"https://s3.dc2.example.org\"",
            &format!("{:?}", vault.url),
        )
        .replace("\"mariadb-backups\"", &format!("{:?}", vault.bucket))
        .replace("region = \"dc2\"", "region = \"us-east-1\"")
        .replace("/run/secrets/", &format!("{}/secrets/", d.display()))
        .replace("/etc/backup-agent/", &format!("{}/etc/", d.display()))
        .replace(
            "\"/var/lib/backup-agent\"",
            &format!("{:?}", d.join("state")),
        )
        .replace(
            "\"/var/backups/mariadb\"",
            &format!("{:?}", d.join("backups")),
        )
        .replace(
            "host = \"galera1\"\nport = 3306",
            &format!("host = \"127.0.0.1\"\nport = {}", src.port),
        )
        .replace(
            "user = \"backup\"",
            &format!(
                "user = \"{}\"\ndatabases = {{ include = [\"{db}\"] }}",
                setup.dump_user
            ),
        );
    let cfg = d.join("agent-dc1.toml");
    std::fs::write(&cfg, mapped).unwrap();
    let run = |args: &[&str]| {
        Command::new(agent_bin())
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&["check-config"]);
    ok(&o, "check-config of the compose config");
    let o = run(&["backup"]);
    ok(&o, "backup with the compose config");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("policy: compliant"),
        "local + locked offsite meets 2 copies, 2 media, 1 offsite, 1 immutable: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(
        vault.keys("galera/").len(),
        3,
        "the offsite copy is in dc2's bucket"
    );
    let o = run(&["healthcheck"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "no drill yet (drill_max_age is set): {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("no restore drill on record"));
    src.drop_db(&db);
}
