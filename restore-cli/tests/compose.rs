//! compose/: both datacenters' files validate with Debian's docker-compose, the Swarm
//! stack with `docker stack config`, and deploy/kubernetes/ with kubernetes-validate (the
//! offline schema validator, in the test venv). The agent configs they mount run against
//! the Galera test cluster in tests/galera.rs
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

/// Networks, ports and bootstrap: the database network is internal, the agent and the
/// nodes also reach the other site (and the agent S3, webhook, SMTP) over "wan", the
/// metrics port is published, the first node can bootstrap the cluster.
#[test]
fn compose_networks_ports_and_bootstrap() {
    for (f, nodes) in [("compose/dc1.yml", 2), ("compose/dc2.yml", 1)] {
        let o = Command::new("docker-compose")
            .arg("-f")
            .arg(repo_root().join(f))
            .arg("config")
            .env("DC1_HOST", "10.1.0.5")
            .env("DC2_HOST", "10.2.0.5")
            .env("GALERA_NEW_CLUSTER", "--wsrep-new-cluster")
            .output()
            .expect("docker-compose");
        assert!(o.status.success(), "{f}: {}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        let v: serde_json::Value = serde_yaml_ng::from_str(&out).unwrap();
        let nets = &v["networks"];
        assert_eq!(nets["db"]["internal"], true, "{f}: {nets}");
        assert_ne!(nets["wan"]["internal"], true, "{f}: {nets}");
        let agent = &v["services"]["backup-agent"];
        let agent_nets: Vec<String> = match &agent["networks"] {
            serde_json::Value::Object(m) => m.keys().cloned().collect(),
            other => panic!("{f}: {other}"),
        };
        assert!(
            agent_nets.contains(&"db".to_string()) && agent_nets.contains(&"wan".to_string()),
            "{f}: {agent_nets:?}"
        );
        // docker-compose v1 prints "HOST:9105:9105/tcp", v2 an object with target 9105.
        let port = agent["ports"][0].to_string();
        assert!(
            port.contains(":9105") || port.contains("\"target\":9105"),
            "{f}: {port}"
        );
        let galera: Vec<(&String, &serde_json::Value)> = v["services"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(n, _)| n.starts_with("galera"))
            .collect();
        assert_eq!(galera.len(), nodes, "{f}");
        for (name, g) in &galera {
            let cmd = g["command"].to_string();
            assert!(
                cmd.contains("10.1.0.5") && cmd.contains("10.2.0.5"),
                "{f} {name}: {cmd}"
            );
            assert!(cmd.contains("--wsrep-node-address="), "{f} {name}: {cmd}");
            let published: Vec<String> = g["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["target"].to_string())
                .collect();
            assert!(
                published.len() >= 4,
                "{f} {name}: cluster ports {published:?}"
            );
        }
        let boot = galera
            .iter()
            .filter(|(_, g)| g["command"].to_string().contains("--wsrep-new-cluster"))
            .count();
        assert_eq!(
            boot,
            if f.ends_with("dc1.yml") { 1 } else { 0 },
            "{f}: exactly the first node bootstraps"
        );
        assert!(!out.contains("arrives with the drill issue"));
    }
}

/// The Swarm stack: `docker stack config` accepts it (no profiles), secrets are external,
/// the drill is a one-off job and the only service with the DPO's secret key.
#[test]
fn the_swarm_stack_validates() {
    let f = repo_root().join("compose/swarm/backup-agent.yml");
    let o = Command::new("docker")
        .args(["stack", "config", "-c"])
        .arg(&f)
        .env("SITE", "dc2")
        .output()
        .expect("the docker CLI (docker stack config validates offline)");
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_yaml_ng::from_slice(&o.stdout).unwrap();
    let services = v["services"].as_object().unwrap();
    for (name, s) in services {
        let secrets = s["secrets"].to_string();
        assert_eq!(
            secrets.contains("dpo_secret_key"),
            name == "drill",
            "{name}: {secrets}"
        );
    }
    assert_eq!(v["services"]["drill"]["deploy"]["mode"], "replicated-job");
    for (name, s) in v["secrets"].as_object().unwrap() {
        assert_eq!(s["external"], true, "secret {name} must be external");
    }
    assert_eq!(
        v["secrets"]["agent_signing_key"]["name"],
        "agent_signing_key_dc2"
    );
    assert_eq!(v["services"]["backup-agent"]["ports"][0]["published"], 9105);
    assert!(v["services"]["backup-agent"]["healthcheck"]["test"]
        .to_string()
        .contains("backup-agent healthcheck"));
}

/// deploy/kubernetes: every manifest passes the offline Kubernetes schema validator
/// (strict: no unknown field), the kustomization lists them all, the drill CronJob alone
/// mounts the DPO key, the agent is probed on /healthz and scraped on its metrics port.
#[test]
fn the_kubernetes_manifests_validate() {
    let dir = repo_root().join("deploy/kubernetes");
    let python = env_file()["BA_PYTHON"].clone();
    let validator = std::path::Path::new(&python).with_file_name("kubernetes-validate");
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    for f in &files {
        assert!(
            kustomization.contains(&format!("  - {f}\n")),
            "kustomization.yaml lacks {f}"
        );
        let o = Command::new(&validator)
            .args(["--strict", "-k", "1.30.0"])
            .arg(dir.join(f))
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; scripts/test-services.sh installs kubernetes-validate",
                    validator.display()
                )
            });
        assert!(
            o.status.success(),
            "{f}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            stderr(&o)
        );
    }
    let agent = std::fs::read_to_string(dir.join("agent.yaml")).unwrap();
    let drill = std::fs::read_to_string(dir.join("drill.yaml")).unwrap();
    assert!(!agent.contains("dpo") && drill.contains("secretName: backup-drill-dpo-key"));
    assert!(agent.contains("path: /healthz") && drill.contains("kind: CronJob"));
    let service = std::fs::read_to_string(dir.join("service.yaml")).unwrap();
    assert!(service.contains("prometheus.io/scrape: \"true\""));
}
