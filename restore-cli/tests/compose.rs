//! compose/: both datacenters' files validate with Debian's docker-compose. The agent
//! configs they mount run against the Galera test cluster in tests/galera.rs
//! (`the_compose_configs_of_both_sites_share_slots_through_the_lease`).

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
