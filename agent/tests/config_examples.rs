//! Every example in config/ parses and validates, and has what a backup needs.

use std::path::PathBuf;

use backup_core::config::Env;

struct NoEnv;
impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

#[test]
fn every_example_config_parses() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let text = std::fs::read_to_string(&p).unwrap();
            let cfg = backup_agent::config::parse(&p, &text, &NoEnv)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            cfg.require_backup_parts()
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 2, "expected the example configs in {}", dir.display());
}

/// The configuration inside the Kubernetes ConfigMap (deploy/kubernetes/config.yaml)
/// parses and validates too.
#[test]
fn the_kubernetes_configmap_config_parses() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/config.yaml");
    let yaml = std::fs::read_to_string(&p).unwrap();
    let start =
        yaml.find("  config.toml: |\n").expect("config.toml key") + "  config.toml: |\n".len();
    let text: String = yaml[start..]
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(text.contains("[[source]]"), "{text}");
    let cfg = backup_agent::config::parse(&p, &text, &NoEnv)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    cfg.require_backup_parts()
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}
