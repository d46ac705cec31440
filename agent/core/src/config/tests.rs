//! Validation of whole configuration texts.
use super::*;
use std::collections::HashMap;

struct MapEnv(HashMap<String, String>);
impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}
fn env(pairs: &[(&str, &str)]) -> MapEnv {
    MapEnv(
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    )
}

const GOOD: &str = r#"
[agent]
site = "dc1"

[[source]]
name = "main"
host = "127.0.0.1"
port = 3306
user = "backup"
password_file = "/run/secrets/db"
databases = { exclude = ["scratch"] }

[encryption]
dpo_certificates = ["/etc/dpo.asc"]
signing_key_file = "/run/secrets/agent.key"

[[store]]
name = "local"
kind = "local"
path = "/var/backups"
"#;

/// The dump's readers fit in `max_connections_per_server` beside the backup's other
/// connections, counting the lock connection that more than one reader needs.
#[test]
fn dump_connections_fit_the_connection_budget() {
    let fit = |text: &str| {
        let c = Config::parse(Path::new("c.toml"), text, &env(&[])).unwrap();
        (
            c.sources[0].dump_connections,
            c.sources[0].connections_per_backup(),
        )
    };
    assert_eq!(
        fit(GOOD),
        (2, 1),
        "default: two readers, one held throughout"
    );
    let with = |agent: &str, source: &str| {
        GOOD.replace("site = \"dc1\"", &format!("site = \"dc1\"\n{agent}"))
            .replace("port = 3306", &format!("port = 3306\n{source}"))
    };
    assert_eq!(fit(&with("max_connections_per_server = 2", "")), (1, 1));
    assert_eq!(fit(&with("max_connections_per_server = 3", "")), (2, 1));
    assert_eq!(fit(&with("", "dump_connections = 3")), (3, 1));
    assert_eq!(fit(&with("", "dump_connections = 8")), (3, 1));
    assert_eq!(fit(&with("", "dump_connections = 1")), (1, 1));
    let galera = cluster("[source.galera]\n");
    let c = Config::parse(Path::new("c.toml"), &galera, &env(&[])).unwrap();
    assert!(
        c.sources[0].connections_per_backup() <= 4,
        "{:?}",
        c.sources[0].connections_per_backup()
    );
}

#[test]
fn good_config_parses() {
    let c = Config::parse(Path::new("c.toml"), GOOD, &env(&[])).unwrap();
    assert_eq!(c.sources[0].prefix, "main");
    assert_eq!(
        c.sources[0].nodes[0].endpoint,
        Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port: 3306
        }
    );
    assert!(c.sources[0].selects("app"));
    assert!(!c.sources[0].selects("scratch"));
    assert!(!c.sources[0].selects("mysql"));
    assert!(!c.sources[0].selects("INFORMATION_SCHEMA"));
    assert_eq!(c.stores[0].site, "dc1");
    assert_eq!(c.sources[0].password_file.position, Some((10, 17)));
    c.require_backup_parts().unwrap();
}

const CLUSTER: &str = "nodes = [{ name = \"db1\", host = \"10.0.1.1\", site = \"dc1\" }, { host = \"10.0.2.1\", port = 3307, site = \"dc2\" }, { socket = \"/run/db3.sock\" }]";

fn cluster(galera: &str) -> String {
    GOOD.replace("host = \"127.0.0.1\"\nport = 3306", CLUSTER)
        .replace("[encryption]", &format!("{galera}\n[encryption]"))
}

#[test]
fn galera_nodes_and_options() {
    let text = cluster("[source.galera]\ndesync = true\nadmin_user = \"adm\"\nadmin_password_file = \"/run/secrets/adm\"\nlease_ttl = \"90s\"\n");
    let c = Config::parse(Path::new("c.toml"), &text, &env(&[])).unwrap();
    let s = &c.sources[0];
    assert_eq!(s.nodes.len(), 3);
    assert_eq!(s.nodes[0].name, "db1");
    assert_eq!(s.nodes[1].name, "10.0.2.1:3307");
    assert_eq!(s.nodes[1].site.as_deref(), Some("dc2"));
    assert_eq!(
        s.nodes[2].endpoint,
        Endpoint::Socket("/run/db3.sock".into())
    );
    let g = s.galera.as_ref().unwrap();
    assert!(g.desync && g.lease);
    assert_eq!(g.lease_database, "backup_agent");
    assert_eq!(g.lease_ttl, std::time::Duration::from_secs(90));
    assert_eq!(g.dump_retries, 3);
    // The lease database is never dumped.
    assert!(!s.selects("backup_agent") && s.selects("app"));
    assert!(c.agent.name.starts_with("dc1@"), "{}", c.agent.name);
}

#[test]
fn galera_mistakes_are_named() {
    let cases = [
        (cluster(""), "source[0].nodes", "[source.galera]"),
        (
            cluster("[source.galera]\ndesync = true\n"),
            "source[0].galera.desync",
            "SUPER",
        ),
        (
            cluster("[source.galera]\nadmin_password = \"x\"\n"),
            "source[0].galera.admin_password",
            "admin_password_file",
        ),
        (
            cluster("[source.galera]\nlease_ttl = \"1s\"\n"),
            "source[0].galera.lease_ttl",
            "at least 3s",
        ),
        (
            cluster("[source.galera]\nlease_database = \"a-b\"\n"),
            "source[0].galera.lease_database",
            "letters",
        ),
        (
            GOOD.replace("port = 3306", &format!("port = 3306\n{CLUSTER}")),
            "source[0].nodes",
            "not both",
        ),
        (
            cluster("[source.galera]\n")
                .replace("exclude = [\"scratch\"]", "include = [\"backup_agent\"]"),
            "source[0].databases.include",
            "lease database",
        ),
        (
            GOOD.replace("port = 3306", "port = 3306\nrate_limit = \"1k\""),
            "source[0].rate_limit",
            "64KiB",
        ),
        (
            GOOD.replace("port = 3306", "port = 3306\ndump_connections = 0"),
            "source[0].dump_connections",
            "from 1 to 16",
        ),
        (
            GOOD.replace("port = 3306", "port = 3306\nparallel_table_size = \"big\""),
            "source[0].parallel_table_size",
            "not a size",
        ),
    ];
    for (text, key, says) in cases {
        let e = Config::parse(Path::new("c.toml"), &text, &env(&[])).unwrap_err();
        assert!(
            e.problems
                .iter()
                .any(|p| p.key == key && p.message.contains(says)),
            "{key}: {e}"
        );
        assert!(!e.to_string().contains("\"x\""));
    }
}

#[test]
fn unknown_key_names_key_and_line() {
    let text = GOOD.replace("user = \"backup\"", "user = \"backup\"\nuserr = 1");
    let e = Config::parse(Path::new("c.toml"), &text, &env(&[])).unwrap_err();
    let p = &e.problems[0];
    assert_eq!(p.position.unwrap().0, 10, "{e}");
    assert!(p.message.contains("userr"), "{e}");
}

#[test]
fn plain_password_is_refused_with_the_twin_named() {
    let text = GOOD.replace(
        "password_file = \"/run/secrets/db\"",
        "password = \"hunter2\"",
    );
    let e = Config::parse(Path::new("c.toml"), &text, &env(&[])).unwrap_err();
    let all = e.to_string();
    assert!(
        all.contains("source[0].password") && all.contains("password_file"),
        "{all}"
    );
    assert!(!all.contains("hunter2"), "secret value leaked: {all}");
}

#[test]
fn env_secret_and_twin() {
    let e = Config::parse(
        Path::new("c.toml"),
        GOOD,
        &env(&[
            ("BACKUP_DB_PASSWORD", "x"),
            ("BACKUP_DB_PASSWORD_FILE", "/f"),
        ]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("both set"), "{e}");
    let e = Config::parse(
        Path::new("c.toml"),
        GOOD,
        &env(&[("BACKUP_DB_PASSWORD", "x")]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("BACKUP_DB_PASSWORD_FILE"), "{e}");
}

#[test]
fn env_password_file_fills_a_single_source() {
    let text = GOOD.replace("password_file = \"/run/secrets/db\"\n", "");
    let c = Config::parse(
        Path::new("c.toml"),
        &text,
        &env(&[("BACKUP_DB_PASSWORD_FILE", "/s/pw")]),
    )
    .unwrap();
    assert_eq!(c.sources[0].password_file.path, PathBuf::from("/s/pw"));
    let e = Config::parse(Path::new("c.toml"), &text, &env(&[])).unwrap_err();
    assert!(e.to_string().contains("missing password_file"), "{e}");
}

#[test]
fn every_problem_is_reported() {
    let text = GOOD
        .replace("kind = \"local\"", "kind = \"tape\"")
        .replace("host = \"127.0.0.1\"\n", "")
        .replace(
            "databases = { exclude = [\"scratch\"] }",
            "databases = { include = [\"mysql\"] }",
        );
    let e = Config::parse(Path::new("c.toml"), &text, &env(&[])).unwrap_err();
    assert_eq!(e.problems.len(), 3, "{e}");
    assert!(e.problems.iter().all(|p| p.position.is_some()), "{e}");
}

#[test]
fn s3_store_policy_and_retention() {
    let text = format!(
        r#"{GOOD}
[[store]]
name = "offsite"
kind = "s3"
site = "dc2"
endpoint = "http://127.0.0.1:9000"
bucket = "backups"
region = "garage"
path_style = true
key_prefix = "/fire/"
access_key_id_file = "/run/secrets/s3id"
secret_access_key_file = "/run/secrets/s3key"
checksum = "off"
part_size = "8MiB"
object_lock_mode = "compliance"
object_lock_days = 30
verify = "head"
[store.retention]
keep_daily = 7
keep_within = "2d"

[policy]
copies = 2
immutable = 1
"#
    );
    let c = Config::parse(Path::new("c.toml"), &text, &env(&[])).unwrap();
    let st = &c.stores[1];
    assert_eq!(
        (st.media.as_str(), st.site.as_str()),
        ("object-storage", "dc2")
    );
    assert_eq!(st.verify, VerifyMode::Head);
    assert_eq!(st.retention.keep_daily, 7);
    assert_eq!(st.retention.keep_within, Some(chrono::Duration::days(2)));
    let StoreKind::S3(s3) = &st.kind else {
        panic!()
    };
    assert_eq!(s3.key_prefix, "fire/");
    assert_eq!(s3.part_size, 8 << 20);
    assert_eq!(s3.checksum, ChecksumMode::Off);
    assert_eq!(
        s3.object_lock,
        Some(ObjectLock {
            mode: LockMode::Compliance,
            days: 30
        })
    );
    assert_eq!(
        (
            c.policy.copies,
            c.policy.media,
            c.policy.offsite,
            c.policy.immutable
        ),
        (2, 2, 1, 1)
    );
    assert!(c.stores[0].retention.is_empty());

    // Plain keys, half a key pair, a part too small, a lock without days: all named.
    let bad = text
        .replace(
            "access_key_id_file = \"/run/secrets/s3id\"",
            "access_key_id = \"AKIAEXAMPLE\"",
        )
        .replace("part_size = \"8MiB\"", "part_size = \"1MiB\"")
        .replace("object_lock_days = 30", "");
    let e = Config::parse(Path::new("c.toml"), &bad, &env(&[])).unwrap_err();
    let all = e.to_string();
    assert!(all.contains("store[1].access_key_id:"), "{all}");
    assert!(all.contains("store[1].part_size"), "{all}");
    assert!(all.contains("object_lock_days"), "{all}");
    assert!(!all.contains("AKIAEXAMPLE"), "{all}");
    // A static secret in the environment is refused when the default chain is used.
    let chain = text
        .replace("access_key_id_file = \"/run/secrets/s3id\"\n", "")
        .replace("secret_access_key_file = \"/run/secrets/s3key\"\n", "");
    let c = Config::parse(Path::new("c.toml"), &chain, &env(&[])).unwrap();
    let StoreKind::S3(s3) = &c.stores[1].kind else {
        panic!()
    };
    assert!(matches!(s3.credentials, S3Credentials::DefaultChain));
    let e = Config::parse(
        Path::new("c.toml"),
        &chain,
        &env(&[("AWS_SECRET_ACCESS_KEY", "x")]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("AWS_SHARED_CREDENTIALS_FILE"), "{e}");
}

#[test]
fn sizes() {
    assert_eq!(parse_size("16MiB"), Some(16 << 20));
    assert_eq!(parse_size("5 GiB"), Some(5 << 30));
    assert_eq!(parse_size("1024"), Some(1024));
    assert_eq!(parse_size("16MB"), None);
    assert_eq!(parse_size("MiB"), None);
}

#[test]
fn missing_sections_for_backup() {
    let c = Config::parse(Path::new("c.toml"), "[agent]\nsite = \"x\"\n", &env(&[])).unwrap();
    let e = c.require_backup_parts().unwrap_err();
    assert_eq!(e.problems.len(), 3);
}

#[test]
fn a_zero_duration_is_named_as_zero() {
    let text = GOOD.replace("port = 3306", "port = 3306\nmax_age = \"0s\"");
    let e = Config::parse(Path::new("c.toml"), &text, &env(&[])).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("max_age") && s.contains("is zero"), "{s}");
}

#[test]
fn a_misspelt_key_gets_a_suggestion() {
    let text = GOOD.replace("site = \"dc1\"", "sitee = \"dc1\"");
    let e = Config::parse(Path::new("c.toml"), &text, &env(&[])).unwrap_err();
    assert!(e.to_string().contains("did you mean `site`?"), "{e}");
    let text = GOOD.replace("site = \"dc1\"", "zzzzzz = \"dc1\"");
    let e = Config::parse(Path::new("c.toml"), &text, &env(&[])).unwrap_err();
    assert!(!e.to_string().contains("did you mean"), "{e}");
    assert_eq!(edit_distance("password_fle", "password_file"), 1);
}

/// Every problem in one run (issue 11, item 7): misspelt keys in two sections, a value of
/// the wrong type, and a validation problem elsewhere, each with its line; a syntax error
/// is reported alone with its line.
#[test]
fn every_problem_of_a_file_is_reported_at_once() {
    let text = GOOD
        .replace("site = \"dc1\"", "sitee = \"dc1\"")
        .replace("port = 3306", "port = \"3306x\"")
        .replace("user = \"backup\"", "user = \"backup\"\nmax_age = \"0s\"")
        .replace("kind = \"local\"", "kind = \"local\"\npaht = \"/x\"");
    let e = Config::parse(Path::new("c.toml"), &text, &env(&[])).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("did you mean `site`?"), "{s}");
    assert!(s.contains("did you mean `path`?"), "{s}");
    assert!(s.contains("port"), "{s}");
    assert!(s.contains("max_age") && s.contains("is zero"), "{s}");
    assert_eq!(e.problems.len(), 4, "{s}");
    let lines: Vec<usize> = e
        .problems
        .iter()
        .filter_map(|p| p.position.map(|p| p.0))
        .collect();
    assert_eq!(lines, vec![3, 8, 10, 21], "{s}");
    // A syntax error: one problem, at its line; nothing invented after it.
    let text = GOOD.replace("port = 3306", "port = [3306");
    let e = Config::parse(Path::new("c.toml"), &text, &env(&[])).unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    // (the parser notices the unclosed array on the next line)
    assert_eq!(e.problems[0].position.map(|p| p.0), Some(9), "{e}");
}

fn with_source_lines(lines: &str) -> String {
    GOOD.replace(
        "databases = { exclude = [\"scratch\"] }",
        &format!(
            "databases = {{ include = [\"client_*\"], exclude = [\"client_test\"] }}\n{lines}"
        ),
    )
}

#[test]
fn a_split_source_expands_into_one_unit_per_database() {
    let text = with_source_lines(
        "split = \"database\"\n[source.tenant_certificates]\n\"client_7\" = \"/etc/client7.asc\"\n",
    );
    let c = Config::parse(Path::new("c.toml"), &text, &env(&[])).unwrap();
    let s = &c.sources[0];
    assert_eq!(s.split, Some(split::Split::Database));
    assert!(s.selects("client_1") && !s.selects("client_test") && !s.selects("other"));
    let now = chrono::Utc::now();
    let mut known = std::collections::BTreeMap::new();
    let mut st = crate::state::SplitState::default();
    let ch = st.record(&["client_1".into(), "client_7".into()], now);
    assert_eq!(ch.found, ["client_1", "client_7"]);
    let ch = st.record(&["client_7".into()], now);
    assert_eq!(
        (ch.found.len(), ch.dropped.clone()),
        (0, vec!["client_1".to_string()])
    );
    // Reported once.
    assert!(st.record(&["client_7".into()], now).dropped.is_empty());
    known.insert("main".to_string(), st);
    let e = c.expanded(&known);
    let names: Vec<&str> = e.sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["main/client_1", "main/client_7"]);
    let u7 = &e.sources[1];
    assert_eq!(u7.prefix, "main/client_7");
    assert_eq!(u7.include, ["client_7"]);
    assert_eq!(u7.tenant_certificates.len(), 1);
    assert!(e.sources[0].tenant_certificates.is_empty());
    assert!(e.sources[0].unit_of.as_ref().unwrap().dropped.is_some());
    // Expanding twice changes nothing; the split source's name selects its units.
    assert_eq!(e.expanded(&known).sources.len(), 2);
    assert_eq!(e.source(Some("main")).unwrap().len(), 2);
    // A unit the state does not know is made from its name; an unselected one refused.
    let mut c2 = c.clone();
    c2.add_unit("main/client_9").unwrap();
    assert_eq!(
        c2.source(Some("main/client_9")).unwrap()[0].prefix,
        "main/client_9"
    );
    assert!(c2.add_unit("main/client_test").is_err());
}

#[test]
fn split_problems_are_named() {
    let bad = |lines: &str, key: &str, says: &str| {
        let e =
            Config::parse(Path::new("c.toml"), &with_source_lines(lines), &env(&[])).unwrap_err();
        assert!(
            e.problems
                .iter()
                .any(|p| p.key == key && p.message.contains(says)),
            "{e}"
        );
    };
    bad(
        "split = \"table\"\n",
        "source[0].split",
        "split = \"database\"",
    );
    bad(
        "split = \"database\"\n[source.binlog]\n",
        "source[0].binlog",
        "source without split",
    );
    bad(
        "split = \"database\"\n[source.tenant_certificates]\n\"other\" = \"/k.asc\"\n",
        "source[0].tenant_certificates.other",
        "not selected",
    );
    let two = format!(
        "{}\n[[source]]\nname = \"b\"\nhost = \"h\"\nuser = \"u\"\npassword_file = \"/p\"\nprefix = \"main/x\"\n",
        with_source_lines("split = \"database\"\n")
    );
    let e = Config::parse(Path::new("c.toml"), &two, &env(&[])).unwrap_err();
    assert!(
        e.problems
            .iter()
            .any(|p| p.key == "source[1].prefix" && p.message.contains("split source")),
        "{e}"
    );
}
