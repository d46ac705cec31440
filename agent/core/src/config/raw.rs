//! The configuration file as written: TOML into structs that reject unknown keys, with
//! the spans that let validation name the key and line of every problem.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) agent: Option<RawAgent>,
    #[serde(default)]
    pub(crate) source: Vec<RawSource>,
    pub(crate) encryption: Option<RawEncryption>,
    #[serde(default)]
    pub(crate) store: Vec<RawStore>,
    pub(crate) policy: Option<RawPolicy>,
    pub(crate) restore: Option<RawRestore>,
    pub(crate) alerts: Option<RawAlerts>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAgent {
    pub(crate) site: Option<String>,
    /// This agent's name in the cluster lease (default "<site>@<hostname>").
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) http_bind: Option<String>,
    /// How many backups may run at once (over all sources).
    pub(crate) max_concurrent_backups: Option<usize>,
    /// How many connections the agent may hold to one server at once (default 4).
    pub(crate) max_connections_per_server: Option<usize>,
    /// The healthcheck turns CRITICAL when a DPO certificate expires within this many days.
    pub(crate) dpo_expiry_warning_days: Option<u32>,
    /// The healthcheck turns CRITICAL when the last restore drill is older than this.
    pub(crate) drill_max_age: Option<Spanned<String>>,
    /// How often the daemon checks freshness (and so notices a dead schedule).
    pub(crate) check_interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSource {
    pub(crate) name: Spanned<String>,
    pub(crate) host: Option<String>,
    pub(crate) port: Option<u16>,
    pub(crate) socket: Option<PathBuf>,
    /// Several nodes of one cluster, each with its site (instead of host/port/socket).
    pub(crate) nodes: Option<Spanned<Vec<RawNode>>>,
    /// Galera options: desync during the dump, the cluster lease, retries.
    pub(crate) galera: Option<RawGalera>,
    /// Upper bound on the dump's read rate, in bytes of SQL per second (e.g. "50MiB").
    pub(crate) rate_limit: Option<Spanned<String>>,
    /// Connections reading a large table at once (1: one connection for everything).
    pub(crate) dump_connections: Option<Spanned<i64>>,
    /// Tables at least this large (estimated, e.g. "64MiB") are read over several connections.
    pub(crate) parallel_table_size: Option<Spanned<String>>,
    pub(crate) user: Spanned<String>,
    pub(crate) password_file: Option<Spanned<PathBuf>>,
    /// Present only so that a plain password gets a helpful error instead of "unknown key".
    pub(crate) password: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub(crate) databases: RawDatabases,
    /// Dump users and grants as CREATE USER / GRANT statements.
    pub(crate) users_and_grants: Option<bool>,
    /// Per database, a tenant's own certificate: backups of that database alone are also
    /// encrypted to it, besides the DPO.
    #[serde(default)]
    pub(crate) tenant_certificates: std::collections::BTreeMap<String, Spanned<PathBuf>>,
    /// Store prefix for this source's backups; defaults to the source name.
    pub(crate) prefix: Option<Spanned<String>>,
    /// Connection and read timeout towards the server, in seconds.
    pub(crate) connect_timeout_secs: Option<u64>,
    /// Cron schedule: 5 fields (minute hour day month weekday) or 6 with seconds first.
    pub(crate) schedule: Option<Spanned<String>>,
    /// IANA time zone the schedule is read in (default UTC).
    pub(crate) timezone: Option<Spanned<String>>,
    /// The newest complete backup may be at most this old (e.g. "26h").
    pub(crate) max_age: Option<Spanned<String>>,
    /// Point-in-time recovery: stream the binary log to the stores.
    pub(crate) binlog: Option<RawBinlog>,
    /// "database": one backup per selected database, found anew at every run.
    pub(crate) split: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBinlog {
    /// Archive the binary log (default true when the table is present).
    pub(crate) enabled: Option<bool>,
    /// A segment is stored at the latest this long after its first transaction ("1m").
    pub(crate) segment_max_age: Option<Spanned<String>>,
    /// A segment is cut once it holds this many bytes ("64MiB").
    pub(crate) segment_max_size: Option<Spanned<String>>,
    /// Alert and report CRITICAL when the archive is further behind than this ("5m").
    pub(crate) max_lag: Option<Spanned<String>>,
    /// Keep the segments a restore needs to reach any point this far back ("7d").
    pub(crate) pitr_window: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    pub(crate) name: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) port: Option<u16>,
    pub(crate) socket: Option<PathBuf>,
    pub(crate) site: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGalera {
    /// Set wsrep_desync=ON on the dumped node for the dump (needs the admin credential).
    pub(crate) desync: Option<bool>,
    pub(crate) admin_user: Option<Spanned<String>>,
    pub(crate) admin_password_file: Option<Spanned<PathBuf>>,
    pub(crate) admin_password: Option<Spanned<toml::Value>>,
    /// Coordinate with the other agents of this cluster through a lease table (default on).
    pub(crate) lease: Option<bool>,
    /// Database of the lease table (never dumped).
    pub(crate) lease_database: Option<Spanned<String>>,
    /// How long a claim holds without renewal (renewed every third of it).
    pub(crate) lease_ttl: Option<Spanned<String>>,
    /// How often a dump aborted by replicated DDL (deadlock 1213) is retried.
    pub(crate) dump_retries: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDatabases {
    #[serde(default)]
    pub(crate) include: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) exclude: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEncryption {
    pub(crate) dpo_certificates: Spanned<Vec<Spanned<PathBuf>>>,
    pub(crate) signing_key_file: Spanned<PathBuf>,
    pub(crate) signing_key_passphrase_file: Option<Spanned<PathBuf>>,
    /// Certificates of the other agents that write to the same stores (the other site of
    /// a cluster): their manifests are accepted as this agent's own.
    #[serde(default)]
    pub(crate) peer_certificates: Vec<Spanned<PathBuf>>,
    /// gzip level 1..=9 (default 6).
    pub(crate) compression_level: Option<Spanned<u32>>,
    /// Threads compressing a dump (independent gzip members of ~1 MiB, in order);
    /// default: the cores the agent may use.
    pub(crate) compression_threads: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub(crate) name: Spanned<String>,
    pub(crate) kind: Spanned<String>,
    pub(crate) path: Option<Spanned<PathBuf>>,
    pub(crate) media: Option<String>,
    pub(crate) site: Option<String>,
    /// "read-back" (default: re-read and hash every copy) or "head" (size and stored sha256).
    pub(crate) verify: Option<Spanned<String>>,
    pub(crate) retention: Option<RawRetention>,
    // S3
    pub(crate) endpoint: Option<Spanned<String>>,
    pub(crate) bucket: Option<Spanned<String>>,
    pub(crate) region: Option<String>,
    pub(crate) path_style: Option<bool>,
    /// Key prefix inside the bucket (before each source's prefix).
    pub(crate) key_prefix: Option<Spanned<String>>,
    pub(crate) access_key_id_file: Option<Spanned<PathBuf>>,
    pub(crate) secret_access_key_file: Option<Spanned<PathBuf>>,
    pub(crate) access_key_id: Option<Spanned<toml::Value>>,
    pub(crate) secret_access_key: Option<Spanned<toml::Value>>,
    pub(crate) ca_file: Option<Spanned<PathBuf>>,
    /// "sha256" (default), "crc32" (the SDK's default CRC checksums) or "off".
    pub(crate) checksum: Option<Spanned<String>>,
    pub(crate) part_size: Option<Spanned<String>>,
    pub(crate) parts_in_flight: Option<Spanned<usize>>,
    pub(crate) object_lock_mode: Option<Spanned<String>>,
    pub(crate) object_lock_days: Option<Spanned<u32>>,
    pub(crate) timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetention {
    pub(crate) keep_last: Option<u32>,
    pub(crate) keep_hourly: Option<u32>,
    pub(crate) keep_daily: Option<u32>,
    pub(crate) keep_weekly: Option<u32>,
    pub(crate) keep_monthly: Option<u32>,
    pub(crate) keep_yearly: Option<u32>,
    pub(crate) keep_within: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub(crate) copies: Option<u32>,
    pub(crate) media: Option<u32>,
    pub(crate) offsite: Option<u32>,
    pub(crate) immutable: Option<u32>,
    /// A newest backup that stays non-compliant longer than this alerts (default 2h).
    pub(crate) grace: Option<Spanned<String>>,
    /// Every stored copy is re-read within this period (default 7d), a share each day.
    pub(crate) scrub_period: Option<Spanned<String>>,
    /// Our own debris (temp files, aborted uploads, data without manifest) is removed
    /// once older than this (default 24h).
    pub(crate) debris_grace: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlerts {
    /// Events that alert; default: every event but backup_succeeded.
    pub(crate) events: Option<Vec<Spanned<String>>>,
    /// A condition that persists alerts again after this long (default 6h).
    pub(crate) repeat_interval: Option<Spanned<String>>,
    pub(crate) webhook: Option<RawWebhook>,
    pub(crate) mail: Option<RawMail>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhook {
    pub(crate) url_file: Option<Spanned<PathBuf>>,
    pub(crate) url: Option<Spanned<toml::Value>>,
    pub(crate) bearer_token_file: Option<Spanned<PathBuf>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) retries: Option<u32>,
    /// Extra CA certificate (PEM) to trust, for an internal receiver.
    pub(crate) ca_file: Option<Spanned<PathBuf>>,
    /// "json" (the agent's own payload, default) or "alertmanager".
    pub(crate) format: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMail {
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
    /// "starttls" (default), "tls" (implicit, port 465) or "none" (only to loopback).
    pub(crate) tls: Option<Spanned<String>>,
    pub(crate) user: Option<String>,
    pub(crate) password_file: Option<Spanned<PathBuf>>,
    pub(crate) password: Option<Spanned<toml::Value>>,
    pub(crate) from: String,
    pub(crate) to: Vec<String>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) ca_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRestore {
    pub(crate) dpo_secret_key_file: Option<Spanned<PathBuf>>,
    pub(crate) dpo_passphrase_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub(crate) agent_certificates: Vec<Spanned<PathBuf>>,
    /// Pinned fingerprints: a signature counts only if made by one of these keys.
    #[serde(default)]
    pub(crate) agent_fingerprints: Vec<Spanned<String>>,
    pub(crate) target_password_file: Option<Spanned<PathBuf>>,
}
