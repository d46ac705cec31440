//! Configuration: one TOML file, parsed into raw structs that reject unknown keys, then
//! validated into the types the program uses.
//!
//! Secrets are never values in this file: every secret is a `*_file` key naming a file
//! (Docker secrets under /run/secrets), or a `*_FILE` environment variable. A plain secret
//! value, in the file or in the environment, is an error that says which `_file` twin to use.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// Where the daemon and the CLI look when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/backup-agent/config.toml";

/// Databases never dumped, whatever the configuration says.
pub const SYSTEM_DATABASES: &[&str] = &["information_schema", "performance_schema", "sys", "mysql"];

/// A configuration problem: what is wrong, at which key, where in which file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub position: Option<(usize, usize)>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file.display(),
                line,
                col,
                self.key,
                self.message
            ),
            None => write!(f, "{}: {}: {}", self.file.display(), self.key, self.message),
        }
    }
}

/// All problems found in one configuration file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{} problem{} in configuration",
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Raw TOML shape.

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    agent: Option<RawAgent>,
    #[serde(default)]
    source: Vec<RawSource>,
    encryption: Option<RawEncryption>,
    #[serde(default)]
    store: Vec<RawStore>,
    policy: Option<RawPolicy>,
    restore: Option<RawRestore>,
    alerts: Option<RawAlerts>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    site: Option<String>,
    /// This agent's name in the cluster lease (default "<site>@<hostname>").
    name: Option<Spanned<String>>,
    state_dir: Option<PathBuf>,
    http_bind: Option<String>,
    /// How many backups may run at once (over all sources).
    max_concurrent_backups: Option<usize>,
    /// The healthcheck turns CRITICAL when a DPO certificate expires within this many days.
    dpo_expiry_warning_days: Option<u32>,
    /// The healthcheck turns CRITICAL when the last restore drill is older than this.
    drill_max_age: Option<Spanned<String>>,
    /// How often the daemon checks freshness (and so notices a dead schedule).
    check_interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: Spanned<String>,
    host: Option<String>,
    port: Option<u16>,
    socket: Option<PathBuf>,
    /// Several nodes of one cluster, each with its site (instead of host/port/socket).
    nodes: Option<Spanned<Vec<RawNode>>>,
    /// Galera options: desync during the dump, the cluster lease, retries.
    galera: Option<RawGalera>,
    /// Upper bound on the dump's read rate, in bytes of SQL per second (e.g. "50MiB").
    rate_limit: Option<Spanned<String>>,
    user: Spanned<String>,
    password_file: Option<Spanned<PathBuf>>,
    /// Present only so that a plain password gets a helpful error instead of "unknown key".
    password: Option<Spanned<toml::Value>>,
    #[serde(default)]
    databases: RawDatabases,
    /// Dump users and grants as CREATE USER / GRANT statements.
    users_and_grants: Option<bool>,
    /// Store prefix for this source's backups; defaults to the source name.
    prefix: Option<Spanned<String>>,
    /// Connection and read timeout towards the server, in seconds.
    connect_timeout_secs: Option<u64>,
    /// Cron schedule: 5 fields (minute hour day month weekday) or 6 with seconds first.
    schedule: Option<Spanned<String>>,
    /// IANA time zone the schedule is read in (default UTC).
    timezone: Option<Spanned<String>>,
    /// The newest complete backup may be at most this old (e.g. "26h").
    max_age: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    socket: Option<PathBuf>,
    site: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGalera {
    /// Set wsrep_desync=ON on the dumped node for the dump (needs the admin credential).
    desync: Option<bool>,
    admin_user: Option<Spanned<String>>,
    admin_password_file: Option<Spanned<PathBuf>>,
    admin_password: Option<Spanned<toml::Value>>,
    /// Coordinate with the other agents of this cluster through a lease table (default on).
    lease: Option<bool>,
    /// Database of the lease table (never dumped).
    lease_database: Option<Spanned<String>>,
    /// How long a claim holds without renewal (renewed every third of it).
    lease_ttl: Option<Spanned<String>>,
    /// How often a dump aborted by replicated DDL (deadlock 1213) is retried.
    dump_retries: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDatabases {
    #[serde(default)]
    include: Vec<Spanned<String>>,
    #[serde(default)]
    exclude: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEncryption {
    dpo_certificates: Spanned<Vec<Spanned<PathBuf>>>,
    signing_key_file: Spanned<PathBuf>,
    signing_key_passphrase_file: Option<Spanned<PathBuf>>,
    /// gzip level 1..=9 (default 6).
    compression_level: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    name: Spanned<String>,
    kind: Spanned<String>,
    path: Option<Spanned<PathBuf>>,
    media: Option<String>,
    site: Option<String>,
    /// "read-back" (default: re-read and hash every copy) or "head" (size and stored sha256).
    verify: Option<Spanned<String>>,
    retention: Option<RawRetention>,
    // S3
    endpoint: Option<Spanned<String>>,
    bucket: Option<Spanned<String>>,
    region: Option<String>,
    path_style: Option<bool>,
    /// Key prefix inside the bucket (before each source's prefix).
    key_prefix: Option<Spanned<String>>,
    access_key_id_file: Option<Spanned<PathBuf>>,
    secret_access_key_file: Option<Spanned<PathBuf>>,
    access_key_id: Option<Spanned<toml::Value>>,
    secret_access_key: Option<Spanned<toml::Value>>,
    ca_file: Option<Spanned<PathBuf>>,
    /// "sha256" (default), "crc32" (the SDK's default CRC checksums) or "off".
    checksum: Option<Spanned<String>>,
    part_size: Option<Spanned<String>>,
    parts_in_flight: Option<Spanned<usize>>,
    object_lock_mode: Option<Spanned<String>>,
    object_lock_days: Option<Spanned<u32>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep_last: Option<u32>,
    keep_hourly: Option<u32>,
    keep_daily: Option<u32>,
    keep_weekly: Option<u32>,
    keep_monthly: Option<u32>,
    keep_yearly: Option<u32>,
    keep_within: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    copies: Option<u32>,
    media: Option<u32>,
    offsite: Option<u32>,
    immutable: Option<u32>,
    /// A newest backup that stays non-compliant longer than this alerts (default 2h).
    grace: Option<Spanned<String>>,
    /// Every stored copy is re-read within this period (default 7d), a share each day.
    scrub_period: Option<Spanned<String>>,
    /// Our own debris (temp files, aborted uploads, data without manifest) is removed
    /// once older than this (default 24h).
    debris_grace: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    /// Events that alert; default: every event but backup_succeeded.
    events: Option<Vec<Spanned<String>>>,
    /// A condition that persists alerts again after this long (default 6h).
    repeat_interval: Option<Spanned<String>>,
    webhook: Option<RawWebhook>,
    mail: Option<RawMail>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url_file: Option<Spanned<PathBuf>>,
    url: Option<Spanned<toml::Value>>,
    bearer_token_file: Option<Spanned<PathBuf>>,
    timeout: Option<Spanned<String>>,
    retries: Option<u32>,
    /// Extra CA certificate (PEM) to trust, for an internal receiver.
    ca_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMail {
    host: String,
    port: Option<u16>,
    /// "starttls" (default), "tls" (implicit, port 465) or "none" (only to loopback).
    tls: Option<Spanned<String>>,
    user: Option<String>,
    password_file: Option<Spanned<PathBuf>>,
    password: Option<Spanned<toml::Value>>,
    from: String,
    to: Vec<String>,
    timeout: Option<Spanned<String>>,
    ca_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRestore {
    dpo_secret_key_file: Option<Spanned<PathBuf>>,
    dpo_passphrase_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    agent_certificates: Vec<Spanned<PathBuf>>,
    /// Pinned fingerprints: a signature counts only if made by one of these keys.
    #[serde(default)]
    agent_fingerprints: Vec<Spanned<String>>,
    target_password_file: Option<Spanned<PathBuf>>,
}

// ---------------------------------------------------------------------------------------
// Validated configuration.

/// A path read from the configuration, with the key and place it came from so that later
/// I/O problems (unreadable file, bad certificate) can name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPath {
    pub path: PathBuf,
    pub key: String,
    pub position: Option<(usize, usize)>,
}

impl ConfigPath {
    pub fn problem(&self, file: &Path, message: impl Into<String>) -> ConfigProblem {
        ConfigProblem {
            file: file.to_path_buf(),
            position: self.position,
            key: self.key.clone(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, for messages.
    pub file: PathBuf,
    pub agent: AgentConfig,
    pub alerts: AlertsConfig,
    pub sources: Vec<SourceConfig>,
    pub encryption: Option<EncryptionConfig>,
    pub stores: Vec<StoreConfig>,
    pub policy: PolicyConfig,
    pub restore: RestoreConfig,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub site: String,
    /// This agent's name in the cluster lease.
    pub name: String,
    pub state_dir: PathBuf,
    pub http_bind: String,
    pub max_concurrent_backups: usize,
    pub dpo_expiry_warning_days: u32,
    pub drill_max_age: Option<std::time::Duration>,
    pub check_interval: std::time::Duration,
}

/// Alert channels and rules.
#[derive(Debug, Clone, Default)]
pub struct AlertsConfig {
    pub events: Vec<String>,
    pub repeat_interval: std::time::Duration,
    pub webhook: Option<WebhookConfig>,
    pub mail: Option<MailConfig>,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url_file: ConfigPath,
    pub bearer_token_file: Option<ConfigPath>,
    pub timeout: std::time::Duration,
    pub retries: u32,
    pub ca_file: Option<ConfigPath>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailTls {
    StartTls,
    Implicit,
    None,
}

#[derive(Debug, Clone)]
pub struct MailConfig {
    pub host: String,
    pub port: u16,
    pub tls: MailTls,
    pub user: Option<String>,
    pub password_file: Option<ConfigPath>,
    pub from: String,
    pub to: Vec<String>,
    pub timeout: std::time::Duration,
    pub ca_file: Option<ConfigPath>,
}

/// Every event the agent can alert on.
pub const ALL_EVENTS: &[&str] = &[
    "backup_failed",
    "backup_succeeded",
    "backup_stale",
    "policy_degraded",
    "drill_failed",
    "drill_succeeded",
    "desync_stuck",
    "recovered",
];

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    /// The servers this source may be dumped from (one, or the nodes of a cluster).
    pub nodes: Vec<NodeConfig>,
    pub galera: Option<GaleraConfig>,
    /// Bytes of SQL per second the dump may read at most.
    pub rate_limit: Option<u64>,
    pub user: String,
    pub password_file: ConfigPath,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub users_and_grants: bool,
    pub prefix: String,
    pub connect_timeout_secs: u64,
    pub schedule: ScheduleSpec,
    pub max_age: std::time::Duration,
}

/// A source's cron schedule as written: `expr` (5 fields, or 6 with seconds first) read in
/// the IANA time zone `timezone`. Its meaning is the daemon's; a loader given a
/// [`ScheduleCheck`] has checked that it parses and fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSpec {
    pub expr: String,
    pub timezone: String,
}

/// 02:00 every day, in the source's time zone (UTC unless set).
pub const DEFAULT_SCHEDULE: &str = "0 2 * * *";
pub const DEFAULT_TIMEZONE: &str = "UTC";

/// Checks a schedule (expression, time zone). The cron parser belongs to the daemon, so
/// the loader takes it as a parameter and reports its problems with key and line.
pub type ScheduleCheck = fn(expr: &str, timezone: &str) -> Result<(), ScheduleProblem>;

/// Why a schedule was refused, and whether the time zone is to blame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleProblem {
    pub time_zone: bool,
    pub message: String,
}

/// One server of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub name: String,
    pub endpoint: Endpoint,
    /// The datacenter it runs in (None: unknown, never preferred).
    pub site: Option<String>,
}

/// Galera options of a source.
#[derive(Debug, Clone)]
pub struct GaleraConfig {
    pub desync: bool,
    pub admin_user: Option<String>,
    pub admin_password_file: Option<ConfigPath>,
    pub lease: bool,
    pub lease_database: String,
    pub lease_ttl: std::time::Duration,
    pub dump_retries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Socket(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
            Endpoint::Socket(p) => write!(f, "socket {}", p.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EncryptionConfig {
    pub dpo_certificates: Vec<ConfigPath>,
    pub signing_key_file: ConfigPath,
    pub signing_key_passphrase_file: Option<ConfigPath>,
    pub compression_level: u32,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub name: String,
    pub kind: StoreKind,
    pub media: String,
    pub site: String,
    pub verify: VerifyMode,
    pub retention: crate::policy::retention::Rules,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyMode {
    /// Read the whole copy back and hash it.
    ReadBack,
    /// Check the size and the sha256 the store keeps in the object's metadata.
    Head,
}

#[derive(Debug, Clone)]
pub enum StoreKind {
    Local { path: ConfigPath },
    S3(Box<S3Config>),
}

#[derive(Debug, Clone)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    pub path_style: bool,
    /// Prefix inside the bucket, empty or ending in '/'.
    pub key_prefix: String,
    pub credentials: S3Credentials,
    pub ca_file: Option<ConfigPath>,
    pub checksum: ChecksumMode,
    pub part_size: u64,
    pub parts_in_flight: usize,
    pub object_lock: Option<ObjectLock>,
    pub timeout: std::time::Duration,
}

#[derive(Debug, Clone)]
pub enum S3Credentials {
    /// Access key id and secret from files.
    Files {
        access_key_id_file: ConfigPath,
        secret_access_key_file: ConfigPath,
    },
    /// The AWS chain without static secrets in the environment: a shared credentials or
    /// config file (AWS_SHARED_CREDENTIALS_FILE, AWS_PROFILE), web identity, container
    /// (ECS) and instance (IMDS) roles.
    DefaultChain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumMode {
    /// SHA-256 checksum on every request body (parts, small objects).
    Sha256,
    /// The SDK's default (CRC32) checksums.
    Crc32,
    /// No checksums unless the operation requires one (for servers that reject them).
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Governance,
    Compliance,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    pub mode: LockMode,
    pub days: u32,
}

/// S3 limits a multipart upload to this many parts.
pub const S3_MAX_PARTS: u64 = 10_000;

/// The 3-2-1 policy: minimums over the verified copies of each backup.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub copies: u32,
    pub media: u32,
    pub offsite: u32,
    pub immutable: u32,
    pub grace: std::time::Duration,
    pub scrub_period: std::time::Duration,
    pub debris_grace: std::time::Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            copies: 2,
            media: 2,
            offsite: 1,
            immutable: 0,
            grace: std::time::Duration::from_secs(2 * 3600),
            scrub_period: std::time::Duration::from_secs(7 * 86400),
            debris_grace: std::time::Duration::from_secs(86400),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RestoreConfig {
    pub dpo_secret_key_file: Option<ConfigPath>,
    pub dpo_passphrase_file: Option<ConfigPath>,
    pub agent_certificates: Vec<ConfigPath>,
    pub agent_fingerprints: Vec<String>,
    pub target_password_file: Option<ConfigPath>,
}

impl SourceConfig {
    /// Whether a database is selected for dumping by this source. The agent's own lease
    /// database is never dumped.
    pub fn selects(&self, db: &str) -> bool {
        if SYSTEM_DATABASES.iter().any(|s| s.eq_ignore_ascii_case(db)) {
            return false;
        }
        if let Some(g) = &self.galera {
            if g.lease && g.lease_database.eq_ignore_ascii_case(db) {
                return false;
            }
        }
        if !self.include.is_empty() && !self.include.iter().any(|i| i == db) {
            return false;
        }
        !self.exclude.iter().any(|e| e == db)
    }
}

/// Environment variables that name secret files, as in the shell setup this replaces.
/// `BACKUP_DB_PASSWORD_FILE` supplies the password file of a source that has none.
pub const ENV_DB_PASSWORD_FILE: &str = "BACKUP_DB_PASSWORD_FILE";
/// Plain secret variables that are refused, each with its `_FILE` twin.
const REFUSED_SECRET_ENV: &[(&str, &str)] = &[
    ("BACKUP_DB_PASSWORD", "BACKUP_DB_PASSWORD_FILE"),
    ("BACKUP_WEBHOOK_URL", "BACKUP_WEBHOOK_URL_FILE"),
    ("BACKUP_WEBHOOK_TOKEN", "BACKUP_WEBHOOK_TOKEN_FILE"),
    ("BACKUP_SMTP_PASSWORD", "BACKUP_SMTP_PASSWORD_FILE"),
    (
        "BACKUP_S3_SECRET_ACCESS_KEY",
        "BACKUP_S3_SECRET_ACCESS_KEY_FILE",
    ),
];
/// Supplies secret_access_key_file (and BACKUP_S3_ACCESS_KEY_ID_FILE the key id) of S3
/// stores that have none, when set.
pub const ENV_S3_SECRET_FILE: &str = "BACKUP_S3_SECRET_ACCESS_KEY_FILE";
pub const ENV_S3_KEY_ID_FILE: &str = "BACKUP_S3_ACCESS_KEY_ID_FILE";

/// Reads what the environment may contribute; passed in so that validation stays pure.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    }
}

impl Config {
    /// Reads and validates a configuration file (no I/O beyond reading the file itself),
    /// without checking schedules (see [`Config::load_with`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, None)
    }

    /// Reads and validates a configuration file, checking schedules with `schedule_check`.
    pub fn load_with(
        path: &Path,
        schedule_check: Option<ScheduleCheck>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![ConfigProblem {
                file: path.to_path_buf(),
                position: None,
                key: "(file)".into(),
                message: format!(
                    "cannot read configuration file: {e}; pass --config PATH or create {}",
                    path.display()
                ),
            }],
        })?;
        Config::parse_with(path, &text, &ProcessEnv, schedule_check)
    }

    /// Parses and validates configuration text without checking schedules; `file` is
    /// used in messages only.
    pub fn parse(file: &Path, text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        Config::parse_with(file, text, env, None)
    }

    /// Parses and validates configuration text, checking schedules with `schedule_check`.
    pub fn parse_with(
        file: &Path,
        text: &str,
        env: &dyn Env,
        schedule_check: Option<ScheduleCheck>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let position = e.span().map(|s| line_col(text, s.start));
            // toml's message repeats the source excerpt; keep its first line, which names
            // the key ("unknown field `x`, expected one of ...").
            let message = e.message().trim().to_string();
            ConfigError {
                problems: vec![ConfigProblem {
                    file: file.to_path_buf(),
                    position,
                    key: key_near(text, e.span()),
                    message,
                }],
            }
        })?;
        Validator {
            file,
            text,
            env,
            schedule_check,
            problems: Vec::new(),
        }
        .validate(raw)
    }

    /// The configuration a `backup-agent` command needs: at least one source, encryption
    /// and one store.
    pub fn require_backup_parts(&self) -> Result<&EncryptionConfig, ConfigError> {
        let mut problems = Vec::new();
        let mut need = |key: &str, msg: &str| {
            problems.push(ConfigProblem {
                file: self.file.clone(),
                position: None,
                key: key.into(),
                message: msg.into(),
            })
        };
        if self.sources.is_empty() {
            need("source", "no [[source]] configured; add one with name, host or socket, user and password_file");
        }
        if self.encryption.is_none() {
            need(
                "encryption",
                "no [encryption] section; add dpo_certificates and signing_key_file",
            );
        }
        if self.stores.is_empty() {
            need(
                "store",
                "no [[store]] configured; add one, e.g. kind = \"local\" with a path",
            );
        }
        match (&self.encryption, problems.is_empty()) {
            (Some(e), true) => Ok(e),
            _ => Err(ConfigError { problems }),
        }
    }

    pub fn source(&self, name: Option<&str>) -> Result<Vec<&SourceConfig>, String> {
        match name {
            None => Ok(self.sources.iter().collect()),
            Some(n) => self
                .sources
                .iter()
                .find(|s| s.name == n)
                .map(|s| vec![s])
                .ok_or_else(|| {
                    let names: Vec<_> = self.sources.iter().map(|s| s.name.as_str()).collect();
                    format!(
                        "no source named {n:?} in {}; configured sources: {}",
                        self.file.display(),
                        names.join(", ")
                    )
                }),
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// "16MiB", "64 MiB", "1GiB", "5242880": a byte count.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mul: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mul)
}

/// The key at a parse error's place, for the message's key column.
fn key_near(text: &str, span: Option<Range<usize>>) -> String {
    let Some(span) = span else {
        return "(file)".into();
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[start..]
        .find('\n')
        .map(|i| start + i)
        .unwrap_or(text.len());
    let line = text[line_start..line_end].trim();
    match line.split_once('=') {
        Some((k, _)) => k.trim().to_string(),
        None => line.to_string(),
    }
}

struct Validator<'a> {
    file: &'a Path,
    text: &'a str,
    env: &'a dyn Env,
    schedule_check: Option<ScheduleCheck>,
    problems: Vec<ConfigProblem>,
}

impl Validator<'_> {
    fn pos(&self, span: Range<usize>) -> Option<(usize, usize)> {
        Some(line_col(self.text, span.start))
    }

    fn problem(
        &mut self,
        key: impl Into<String>,
        span: Option<Range<usize>>,
        msg: impl Into<String>,
    ) {
        let position = span.and_then(|s| self.pos(s));
        self.problems.push(ConfigProblem {
            file: self.file.to_path_buf(),
            position,
            key: key.into(),
            message: msg.into(),
        });
    }

    fn path(&self, key: String, p: Spanned<PathBuf>) -> ConfigPath {
        let position = self.pos(p.span());
        ConfigPath {
            path: p.into_inner(),
            key,
            position,
        }
    }

    fn validate(mut self, raw: RawConfig) -> Result<Config, ConfigError> {
        for (plain, twin) in REFUSED_SECRET_ENV {
            if self.env.var(plain).is_some() {
                let both = self.env.var(twin).is_some();
                self.problem(
                    format!("environment {plain}"),
                    None,
                    if both {
                        format!("{plain} and {twin} are both set; unset {plain}")
                    } else {
                        format!("secrets are not taken from environment values; put it in a file and set {twin}")
                    },
                );
            }
        }

        let ra = raw.agent.unwrap_or_default();
        let drill_max_age = ra
            .drill_max_age
            .and_then(|d| self.duration("agent.drill_max_age", d));
        let check_interval = ra
            .check_interval
            .and_then(|d| self.duration("agent.check_interval", d))
            .unwrap_or(std::time::Duration::from_secs(60));
        let site = ra.site.unwrap_or_else(|| "default".into());
        let agent_name = match ra.name {
            Some(n) => {
                let span = n.span();
                let n = n.into_inner();
                if n.is_empty() || n.len() > 200 {
                    self.problem("agent.name", Some(span), "must be 1 to 200 characters");
                }
                n
            }
            None => format!("{site}@{}", crate::os::hostname()),
        };
        let agent = AgentConfig {
            name: agent_name,
            site,
            state_dir: ra
                .state_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/backup-agent")),
            http_bind: ra.http_bind.unwrap_or_else(|| "127.0.0.1:9105".into()),
            max_concurrent_backups: ra.max_concurrent_backups.unwrap_or(1).max(1),
            dpo_expiry_warning_days: ra.dpo_expiry_warning_days.unwrap_or(30),
            drill_max_age,
            check_interval,
        };

        let env_pw = self.env.var(ENV_DB_PASSWORD_FILE);
        let mut sources = Vec::new();
        let mut names = BTreeSet::new();
        let mut prefixes = BTreeSet::new();
        let n_sources = raw.source.len();
        for (i, s) in raw.source.into_iter().enumerate() {
            let k = |f: &str| format!("source[{i}].{f}");
            let name_span = s.name.span();
            let name = s.name.into_inner();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                self.problem(
                    k("name"),
                    Some(name_span.clone()),
                    "must be non-empty and use only letters, digits, '-', '_' and '.'",
                );
            }
            if !names.insert(name.clone()) {
                self.problem(
                    k("name"),
                    Some(name_span.clone()),
                    format!("duplicate source name {name:?}"),
                );
            }
            if let Some(pw) = &s.password {
                self.problem(k("password"), Some(pw.span()), "passwords are not accepted in the configuration; put the password in a file and set password_file");
            }
            let nodes = match s.nodes {
                Some(list) => {
                    let span = list.span();
                    if s.host.is_some() || s.socket.is_some() || s.port.is_some() {
                        self.problem(
                            k("nodes"),
                            Some(span.clone()),
                            "give either nodes or host/port/socket, not both",
                        );
                    }
                    if list.get_ref().is_empty() {
                        self.problem(
                            k("nodes"),
                            Some(span.clone()),
                            "must list at least one node",
                        );
                    }
                    let mut out: Vec<NodeConfig> = Vec::new();
                    for (j, n) in list.into_inner().into_iter().enumerate() {
                        let nk = format!("source[{i}].nodes[{j}]");
                        let endpoint = self.endpoint(&nk, n.host, n.port, n.socket, span.clone());
                        let name = n.name.unwrap_or_else(|| endpoint.to_string());
                        if out.iter().any(|o| o.name == name) {
                            self.problem(
                                format!("{nk}.name"),
                                Some(span.clone()),
                                format!("duplicate node name {name:?}"),
                            );
                        }
                        out.push(NodeConfig {
                            name,
                            endpoint,
                            site: n.site,
                        });
                    }
                    out
                }
                None => {
                    let endpoint = self.endpoint(
                        &format!("source[{i}]"),
                        s.host,
                        s.port,
                        s.socket,
                        name_span.clone(),
                    );
                    vec![NodeConfig {
                        name: endpoint.to_string(),
                        endpoint,
                        site: None,
                    }]
                }
            };
            let galera = s.galera.map(|g| self.galera(i, g));
            if nodes.len() > 1 && galera.is_none() {
                self.problem(k("nodes"), Some(name_span.clone()), "several nodes are the nodes of a Galera cluster: add a [source.galera] table (it may be empty)");
            }
            let rate_limit = s.rate_limit.and_then(|r| {
                let span = r.span();
                match parse_size(r.get_ref()) {
                    Some(x) if x >= 64 * 1024 => Some(x),
                    _ => {
                        self.problem(k("rate_limit"), Some(span), format!("{:?} is not a rate of at least 64KiB per second; write e.g. \"20MiB\"", r.get_ref()));
                        None
                    }
                }
            });
            let password_file = match (s.password_file, &env_pw) {
                (Some(p), _) => self.path(k("password_file"), p),
                (None, Some(envp)) if n_sources == 1 => ConfigPath {
                    path: PathBuf::from(envp),
                    key: format!("environment {ENV_DB_PASSWORD_FILE}"),
                    position: None,
                },
                (None, _) => {
                    self.problem(k("password_file"), Some(name_span.clone()), format!("missing password_file (or {ENV_DB_PASSWORD_FILE} with a single source)"));
                    ConfigPath {
                        path: PathBuf::new(),
                        key: k("password_file"),
                        position: None,
                    }
                }
            };
            let prefix = match s.prefix {
                Some(p) => {
                    let span = p.span();
                    let p = p.into_inner();
                    if p.is_empty()
                        || p.starts_with('/')
                        || p.split('/').any(|c| c == ".." || c.is_empty())
                    {
                        self.problem(
                            k("prefix"),
                            Some(span),
                            "must be a relative path without '..' or empty parts",
                        );
                    }
                    p
                }
                None => name.clone(),
            };
            if !prefixes.insert(prefix.clone()) {
                self.problem(
                    k("prefix"),
                    Some(name_span.clone()),
                    format!(
                        "prefix {prefix:?} is used by another source; each source needs its own"
                    ),
                );
            }
            let include: Vec<String> = s
                .databases
                .include
                .into_iter()
                .map(|d| d.into_inner())
                .collect();
            let exclude: Vec<String> = s
                .databases
                .exclude
                .into_iter()
                .map(|d| d.into_inner())
                .collect();
            for d in &include {
                if SYSTEM_DATABASES.iter().any(|x| x.eq_ignore_ascii_case(d)) {
                    self.problem(k("databases.include"), Some(name_span.clone()), format!("{d:?} is a system database and is never dumped (users and grants are dumped as statements instead)"));
                }
            }
            let timezone = s
                .timezone
                .as_ref()
                .map(|t| t.get_ref().clone())
                .unwrap_or_else(|| DEFAULT_TIMEZONE.into());
            let schedule = match s.schedule {
                Some(sp) => {
                    let span = sp.span();
                    let spec = ScheduleSpec {
                        expr: sp.into_inner(),
                        timezone,
                    };
                    if let Some(check) = self.schedule_check {
                        if let Err(e) = check(&spec.expr, &spec.timezone) {
                            let (key, span) = if e.time_zone {
                                (
                                    k("timezone"),
                                    s.timezone.as_ref().map(|t| t.span()).unwrap_or(span),
                                )
                            } else {
                                (k("schedule"), span)
                            };
                            self.problem(key, Some(span), e.message);
                        }
                    }
                    spec
                }
                None => ScheduleSpec {
                    expr: DEFAULT_SCHEDULE.into(),
                    timezone,
                },
            };
            let max_age = s
                .max_age
                .and_then(|d| self.duration(&k("max_age"), d))
                .unwrap_or(std::time::Duration::from_secs(26 * 3600));
            let user_span = s.user.span();
            let user = s.user.into_inner();
            if user.is_empty() {
                self.problem(k("user"), Some(user_span), "must not be empty");
            }
            if let Some(g) = &galera {
                if g.lease
                    && include
                        .iter()
                        .any(|d| d.eq_ignore_ascii_case(&g.lease_database))
                {
                    self.problem(
                        k("databases.include"),
                        Some(name_span.clone()),
                        format!(
                            "{:?} is the lease database of [source.galera] and is never dumped",
                            g.lease_database
                        ),
                    );
                }
            }
            sources.push(SourceConfig {
                name,
                nodes,
                galera,
                rate_limit,
                user,
                password_file,
                include,
                exclude,
                users_and_grants: s.users_and_grants.unwrap_or(true),
                prefix,
                connect_timeout_secs: s.connect_timeout_secs.unwrap_or(10),
                schedule,
                max_age,
            });
        }

        let encryption = raw.encryption.map(|e| {
            let certs_span = e.dpo_certificates.span();
            let certs: Vec<ConfigPath> = e
                .dpo_certificates
                .into_inner()
                .into_iter()
                .enumerate()
                .map(|(i, p)| self.path(format!("encryption.dpo_certificates[{i}]"), p))
                .collect();
            if certs.is_empty() {
                self.problem(
                    "encryption.dpo_certificates",
                    Some(certs_span),
                    "needs at least one DPO certificate file",
                );
            }
            let level = match e.compression_level {
                Some(l) if !(1..=9).contains(l.get_ref()) => {
                    self.problem(
                        "encryption.compression_level",
                        Some(l.span()),
                        "must be between 1 and 9",
                    );
                    6
                }
                Some(l) => l.into_inner(),
                None => 6,
            };
            EncryptionConfig {
                dpo_certificates: certs,
                signing_key_file: self
                    .path("encryption.signing_key_file".into(), e.signing_key_file),
                signing_key_passphrase_file: e
                    .signing_key_passphrase_file
                    .map(|p| self.path("encryption.signing_key_passphrase_file".into(), p)),
                compression_level: level,
            }
        });

        let mut stores = Vec::new();
        let mut store_names = BTreeSet::new();
        for (i, mut s) in raw.store.into_iter().enumerate() {
            let k = |f: &str| format!("store[{i}].{f}");
            let name_span = s.name.span();
            let name = s.name.get_ref().clone();
            if !store_names.insert(name.clone()) {
                self.problem(
                    k("name"),
                    Some(name_span.clone()),
                    format!("duplicate store name {name:?}"),
                );
            }
            let kind_span = s.kind.span();
            let kind = match s.kind.get_ref().as_str() {
                "local" => match s.path {
                    Some(p) => StoreKind::Local {
                        path: self.path(k("path"), p),
                    },
                    None => {
                        self.problem(
                            k("path"),
                            Some(name_span.clone()),
                            "a local store needs path",
                        );
                        continue;
                    }
                },
                "s3" => match self.s3_store(&k, name_span.clone(), &mut s) {
                    Some(c) => StoreKind::S3(Box::new(c)),
                    None => continue,
                },
                other => {
                    self.problem(
                        k("kind"),
                        Some(kind_span),
                        format!("unknown store kind {other:?}; expected \"local\" or \"s3\""),
                    );
                    continue;
                }
            };
            if matches!(kind, StoreKind::Local { .. }) {
                for (key, present) in [
                    ("endpoint", s.endpoint.is_some()),
                    ("bucket", s.bucket.is_some()),
                    ("object_lock_mode", s.object_lock_mode.is_some()),
                    ("access_key_id_file", s.access_key_id_file.is_some()),
                ] {
                    if present {
                        self.problem(
                            k(key),
                            Some(name_span.clone()),
                            format!("{key} applies to kind = \"s3\" stores only"),
                        );
                    }
                }
            }
            let verify = match s.verify {
                None => VerifyMode::ReadBack,
                Some(v) => match v.get_ref().as_str() {
                    "read-back" => VerifyMode::ReadBack,
                    "head" => VerifyMode::Head,
                    other => {
                        self.problem(
                            k("verify"),
                            Some(v.span()),
                            format!("unknown verification {other:?}; expected \"read-back\" or \"head\""),
                        );
                        VerifyMode::ReadBack
                    }
                },
            };
            let rr = s.retention.unwrap_or_default();
            let keep_within = rr
                .keep_within
                .and_then(|d| self.duration(&k("retention.keep_within"), d));
            let retention = crate::policy::retention::Rules {
                keep_last: rr.keep_last.unwrap_or(0),
                keep_hourly: rr.keep_hourly.unwrap_or(0),
                keep_daily: rr.keep_daily.unwrap_or(0),
                keep_weekly: rr.keep_weekly.unwrap_or(0),
                keep_monthly: rr.keep_monthly.unwrap_or(0),
                keep_yearly: rr.keep_yearly.unwrap_or(0),
                keep_within: keep_within.and_then(|d| chrono::Duration::from_std(d).ok()),
            };
            let default_media = match kind {
                StoreKind::Local { .. } => "disk",
                StoreKind::S3(_) => "object-storage",
            };
            stores.push(StoreConfig {
                name,
                kind,
                media: s.media.unwrap_or_else(|| default_media.into()),
                site: s.site.unwrap_or_else(|| agent.site.clone()),
                verify,
                retention,
            });
        }

        let rp = raw.policy.unwrap_or_default();
        let d = PolicyConfig::default();
        let policy = PolicyConfig {
            copies: rp.copies.unwrap_or(d.copies),
            media: rp.media.unwrap_or(d.media),
            offsite: rp.offsite.unwrap_or(d.offsite),
            immutable: rp.immutable.unwrap_or(d.immutable),
            grace: rp
                .grace
                .and_then(|x| self.duration("policy.grace", x))
                .unwrap_or(d.grace),
            scrub_period: rp
                .scrub_period
                .and_then(|x| self.duration("policy.scrub_period", x))
                .unwrap_or(d.scrub_period),
            debris_grace: rp
                .debris_grace
                .and_then(|x| self.duration("policy.debris_grace", x))
                .unwrap_or(d.debris_grace),
        };
        if policy.copies == 0 {
            self.problem(
                "policy.copies",
                None,
                "must be at least 1 (a backup without a verified copy is no backup)",
            );
        }
        let rr = raw.restore.unwrap_or_default();
        let restore = RestoreConfig {
            dpo_secret_key_file: rr
                .dpo_secret_key_file
                .map(|p| self.path("restore.dpo_secret_key_file".into(), p)),
            dpo_passphrase_file: rr
                .dpo_passphrase_file
                .map(|p| self.path("restore.dpo_passphrase_file".into(), p)),
            agent_certificates: rr
                .agent_certificates
                .into_iter()
                .enumerate()
                .map(|(i, p)| self.path(format!("restore.agent_certificates[{i}]"), p))
                .collect(),
            agent_fingerprints: rr
                .agent_fingerprints
                .into_iter()
                .filter_map(|f| {
                    let span = f.span();
                    let fp: String = f
                        .into_inner()
                        .chars()
                        .filter(|c| !c.is_whitespace())
                        .collect::<String>()
                        .to_uppercase();
                    if fp.len() < 40 || !fp.chars().all(|c| c.is_ascii_hexdigit()) {
                        self.problem(
                            "restore.agent_fingerprints",
                            Some(span),
                            "must be full hex fingerprints (40 or 64 hex digits)",
                        );
                        None
                    } else {
                        Some(fp)
                    }
                })
                .collect(),
            target_password_file: rr
                .target_password_file
                .map(|p| self.path("restore.target_password_file".into(), p)),
        };

        let alerts = self.alerts(raw.alerts.unwrap_or_default());

        if !self.problems.is_empty() {
            return Err(ConfigError {
                problems: self.problems,
            });
        }
        Ok(Config {
            file: self.file.to_path_buf(),
            agent,
            alerts,
            sources,
            encryption,
            stores,
            policy,
            restore,
        })
    }

    /// Validates the S3 part of a store; None when it cannot be used.
    fn s3_store(
        &mut self,
        k: &dyn Fn(&str) -> String,
        name_span: Range<usize>,
        s: &mut RawStore,
    ) -> Option<S3Config> {
        for (key, v) in [
            ("access_key_id", &s.access_key_id),
            ("secret_access_key", &s.secret_access_key),
        ] {
            if let Some(v) = v {
                self.problem(
                    k(key),
                    Some(v.span()),
                    format!("S3 keys are not accepted in the configuration; put it in a file and set {key}_file"),
                );
            }
        }
        let Some(bucket) = s.bucket.take() else {
            self.problem(k("bucket"), Some(name_span), "an s3 store needs bucket");
            return None;
        };
        let bucket = bucket.into_inner();
        let endpoint = match s.endpoint.take() {
            None => None,
            Some(e) => {
                let span = e.span();
                let e = e.into_inner();
                match url::Url::parse(&e) {
                    Ok(u) if u.scheme() == "https" || u.scheme() == "http" => Some(e),
                    _ => {
                        self.problem(
                            k("endpoint"),
                            Some(span),
                            format!("{e:?} is not an http(s) URL; write e.g. \"https://s3.example.org\""),
                        );
                        None
                    }
                }
            }
        };
        let key_prefix = match s.key_prefix.take() {
            None => String::new(),
            Some(p) => {
                let span = p.span();
                let p = p.into_inner().trim_matches('/').to_string();
                if p.split('/').any(|c| c == ".." || c.is_empty()) && !p.is_empty() {
                    self.problem(
                        k("key_prefix"),
                        Some(span),
                        "must not hold '..' or empty parts",
                    );
                }
                if p.is_empty() {
                    p
                } else {
                    format!("{p}/")
                }
            }
        };
        let env_id = self.env.var(ENV_S3_KEY_ID_FILE);
        let env_secret = self.env.var(ENV_S3_SECRET_FILE);
        let credentials = match (s.access_key_id_file.take(), s.secret_access_key_file.take()) {
            (Some(a), Some(b)) => S3Credentials::Files {
                access_key_id_file: self.path(k("access_key_id_file"), a),
                secret_access_key_file: self.path(k("secret_access_key_file"), b),
            },
            (None, None) => match (&env_id, &env_secret) {
                (Some(a), Some(b)) => S3Credentials::Files {
                    access_key_id_file: ConfigPath {
                        path: a.into(),
                        key: format!("environment {ENV_S3_KEY_ID_FILE}"),
                        position: None,
                    },
                    secret_access_key_file: ConfigPath {
                        path: b.into(),
                        key: format!("environment {ENV_S3_SECRET_FILE}"),
                        position: None,
                    },
                },
                _ => {
                    if self.env.var("AWS_SECRET_ACCESS_KEY").is_some() {
                        self.problem(
                            "environment AWS_SECRET_ACCESS_KEY",
                            None,
                            "static S3 secrets are not taken from environment values; set secret_access_key_file (or BACKUP_S3_SECRET_ACCESS_KEY_FILE), or use a shared credentials file (AWS_SHARED_CREDENTIALS_FILE)",
                        );
                    }
                    S3Credentials::DefaultChain
                }
            },
            (Some(a), None) | (None, Some(a)) => {
                self.problem(
                    k("access_key_id_file"),
                    Some(a.span()),
                    "give both access_key_id_file and secret_access_key_file, or neither (the AWS default chain: shared credentials file, web identity, instance role)",
                );
                S3Credentials::DefaultChain
            }
        };
        let checksum = match s.checksum.take() {
            None => ChecksumMode::Sha256,
            Some(c) => match c.get_ref().as_str() {
                "sha256" => ChecksumMode::Sha256,
                "crc32" => ChecksumMode::Crc32,
                "off" => ChecksumMode::Off,
                other => {
                    self.problem(
                        k("checksum"),
                        Some(c.span()),
                        format!("unknown checksum mode {other:?}; expected \"sha256\", \"crc32\" or \"off\""),
                    );
                    ChecksumMode::Sha256
                }
            },
        };
        let part_size = match s.part_size.take() {
            None => 16 << 20,
            Some(p) => match parse_size(p.get_ref()) {
                Some(n) if (5 << 20..=5 << 30).contains(&n) => n,
                _ => {
                    self.problem(
                        k("part_size"),
                        Some(p.span()),
                        format!("{:?} is not a part size between 5MiB and 5GiB; write e.g. \"16MiB\" (the largest backup is 10000 parts)", p.get_ref()),
                    );
                    16 << 20
                }
            },
        };
        let parts_in_flight = match s.parts_in_flight.take() {
            None => 2,
            Some(n) if (1..=16).contains(n.get_ref()) => n.into_inner(),
            Some(n) => {
                self.problem(
                    k("parts_in_flight"),
                    Some(n.span()),
                    "must be between 1 and 16",
                );
                2
            }
        };
        let object_lock = match (s.object_lock_mode.take(), s.object_lock_days.take()) {
            (None, None) => None,
            (Some(m), Some(d)) => {
                let mode = match m.get_ref().to_ascii_lowercase().as_str() {
                    "governance" => Some(LockMode::Governance),
                    "compliance" => Some(LockMode::Compliance),
                    other => {
                        self.problem(
                            k("object_lock_mode"),
                            Some(m.span()),
                            format!("unknown lock mode {other:?}; expected \"governance\" or \"compliance\""),
                        );
                        None
                    }
                };
                if *d.get_ref() == 0 {
                    self.problem(k("object_lock_days"), Some(d.span()), "must be at least 1");
                }
                mode.map(|mode| ObjectLock {
                    mode,
                    days: d.into_inner(),
                })
            }
            (Some(m), None) => {
                self.problem(
                    k("object_lock_days"),
                    Some(m.span()),
                    "object_lock_mode needs object_lock_days",
                );
                None
            }
            (None, Some(d)) => {
                self.problem(
                    k("object_lock_mode"),
                    Some(d.span()),
                    "object_lock_days needs object_lock_mode (\"governance\" or \"compliance\")",
                );
                None
            }
        };
        let timeout = s
            .timeout
            .take()
            .and_then(|d| self.duration(&k("timeout"), d))
            .unwrap_or(std::time::Duration::from_secs(120));
        let ca_file = s.ca_file.take().map(|p| self.path(k("ca_file"), p));
        Some(S3Config {
            endpoint,
            bucket,
            region: s.region.take().unwrap_or_else(|| "us-east-1".into()),
            path_style: s.path_style.unwrap_or(false),
            key_prefix,
            credentials,
            ca_file,
            checksum,
            part_size,
            parts_in_flight,
            object_lock,
            timeout,
        })
    }

    /// A server address: host (and port) or socket.
    fn endpoint(
        &mut self,
        key: &str,
        host: Option<String>,
        port: Option<u16>,
        socket: Option<PathBuf>,
        span: Range<usize>,
    ) -> Endpoint {
        match (host, socket) {
            (Some(_), Some(_)) => {
                self.problem(
                    format!("{key}.socket"),
                    Some(span),
                    "give either host (and port) or socket, not both",
                );
                Endpoint::Tcp {
                    host: String::new(),
                    port: 0,
                }
            }
            (Some(host), None) => Endpoint::Tcp {
                host,
                port: port.unwrap_or(3306),
            },
            (None, Some(sock)) => Endpoint::Socket(sock),
            (None, None) => {
                self.problem(
                    format!("{key}.host"),
                    Some(span),
                    "no server address: set host (and port) or socket",
                );
                Endpoint::Tcp {
                    host: String::new(),
                    port: 0,
                }
            }
        }
    }

    fn galera(&mut self, i: usize, g: RawGalera) -> GaleraConfig {
        let k = |f: &str| format!("source[{i}].galera.{f}");
        if let Some(pw) = &g.admin_password {
            self.problem(k("admin_password"), Some(pw.span()), "passwords are not accepted in the configuration; put it in a file and set admin_password_file");
        }
        let desync = g.desync.unwrap_or(false);
        let admin_user = g.admin_user.map(|u| u.into_inner());
        let admin_password_file = g
            .admin_password_file
            .map(|p| self.path(k("admin_password_file"), p));
        if admin_user.is_some() != admin_password_file.is_some() {
            self.problem(
                k("admin_user"),
                None,
                "the admin credential needs both admin_user and admin_password_file",
            );
        }
        if desync && admin_user.is_none() {
            self.problem(k("desync"), None, "desync = true needs admin_user and admin_password_file: setting wsrep_desync needs SUPER, which the dump account should not have");
        }
        let lease_database = match g.lease_database {
            Some(d) => {
                let span = d.span();
                let d = d.into_inner();
                if d.is_empty()
                    || d.len() > 64
                    || !d.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    self.problem(
                        k("lease_database"),
                        Some(span),
                        "must be 1 to 64 letters, digits or '_'",
                    );
                }
                d
            }
            None => "backup_agent".into(),
        };
        let lease_ttl = g
            .lease_ttl
            .and_then(|d| self.duration(&k("lease_ttl"), d))
            .unwrap_or(std::time::Duration::from_secs(300));
        if lease_ttl < std::time::Duration::from_secs(3) {
            self.problem(
                k("lease_ttl"),
                None,
                "must be at least 3s (it is renewed every third of it)",
            );
        }
        GaleraConfig {
            desync,
            admin_user,
            admin_password_file,
            lease: g.lease.unwrap_or(true),
            lease_database,
            lease_ttl,
            dump_retries: g.dump_retries.unwrap_or(3),
        }
    }

    fn duration(&mut self, key: &str, d: Spanned<String>) -> Option<std::time::Duration> {
        let span = d.span();
        match humantime::parse_duration(d.get_ref()) {
            Ok(x) if !x.is_zero() => Some(x),
            _ => {
                self.problem(
                    key,
                    Some(span),
                    format!(
                        "{:?} is not a duration; write e.g. \"90s\", \"15m\", \"26h\", \"35d\"",
                        d.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn file_or_env(
        &mut self,
        key: &str,
        file: Option<Spanned<PathBuf>>,
        env_name: &str,
    ) -> Option<ConfigPath> {
        match (file, self.env.var(env_name)) {
            (Some(p), _) => Some(self.path(key.into(), p)),
            (None, Some(e)) => Some(ConfigPath {
                path: PathBuf::from(e),
                key: format!("environment {env_name}"),
                position: None,
            }),
            (None, None) => None,
        }
    }

    fn alerts(&mut self, ra: RawAlerts) -> AlertsConfig {
        let events = match ra.events {
            None => ALL_EVENTS
                .iter()
                .filter(|e| **e != "backup_succeeded")
                .map(|e| e.to_string())
                .collect(),
            Some(list) => list
                .into_iter()
                .filter_map(|e| {
                    if ALL_EVENTS.contains(&e.get_ref().as_str()) {
                        Some(e.into_inner())
                    } else {
                        self.problem(
                            "alerts.events",
                            Some(e.span()),
                            format!(
                                "unknown event {:?}; known: {}",
                                e.get_ref(),
                                ALL_EVENTS.join(", ")
                            ),
                        );
                        None
                    }
                })
                .collect(),
        };
        let repeat_interval = ra
            .repeat_interval
            .and_then(|d| self.duration("alerts.repeat_interval", d))
            .unwrap_or(std::time::Duration::from_secs(6 * 3600));
        let raw_webhook = match ra.webhook {
            Some(w) => Some(w),
            None if self.env.var("BACKUP_WEBHOOK_URL_FILE").is_some() => {
                Some(RawWebhook::default())
            }
            None => None,
        };
        let webhook = raw_webhook.and_then(|w| {
            if let Some(u) = &w.url {
                self.problem("alerts.webhook.url", Some(u.span()), "the webhook URL is a secret (it often holds a token); put it in a file and set url_file");
            }
            let url_file = self.file_or_env("alerts.webhook.url_file", w.url_file, "BACKUP_WEBHOOK_URL_FILE");
            if url_file.is_none() {
                self.problem("alerts.webhook.url_file", None, "a webhook needs url_file (or BACKUP_WEBHOOK_URL_FILE)");
            }
            let timeout = w.timeout.and_then(|d| self.duration("alerts.webhook.timeout", d)).unwrap_or(std::time::Duration::from_secs(10));
            let bearer_token_file = self.file_or_env("alerts.webhook.bearer_token_file", w.bearer_token_file, "BACKUP_WEBHOOK_TOKEN_FILE");
            let ca_file = w.ca_file.map(|p| self.path("alerts.webhook.ca_file".into(), p));
            url_file.map(|url_file| WebhookConfig { url_file, bearer_token_file, timeout, retries: w.retries.unwrap_or(3), ca_file })
        });
        let mail = ra.mail.map(|m| {
            if let Some(p) = &m.password {
                self.problem("alerts.mail.password", Some(p.span()), "passwords are not accepted in the configuration; put it in a file and set password_file");
            }
            let tls_span = m.tls.as_ref().map(|t| t.span());
            let tls = match m.tls.as_ref().map(|t| t.get_ref().as_str()) {
                None | Some("starttls") => MailTls::StartTls,
                Some("tls") => MailTls::Implicit,
                Some("none") => MailTls::None,
                Some(other) => {
                    self.problem("alerts.mail.tls", tls_span.clone(), format!("unknown tls mode {other:?}; use \"starttls\", \"tls\" or \"none\""));
                    MailTls::StartTls
                }
            };
            if tls == MailTls::None && !matches!(m.host.as_str(), "127.0.0.1" | "::1" | "localhost") {
                self.problem("alerts.mail.tls", tls_span, "tls = \"none\" is only allowed to a relay on loopback (127.0.0.1, ::1, localhost)");
            }
            if m.to.is_empty() {
                self.problem("alerts.mail.to", None, "needs at least one recipient");
            }
            let password_file = self.file_or_env("alerts.mail.password_file", m.password_file, "BACKUP_SMTP_PASSWORD_FILE");
            if m.user.is_some() != password_file.is_some() {
                self.problem("alerts.mail.user", None, "SMTP AUTH needs both user and password_file (or neither)");
            }
            let timeout = m.timeout.and_then(|d| self.duration("alerts.mail.timeout", d)).unwrap_or(std::time::Duration::from_secs(20));
            let ca_file = m.ca_file.map(|p| self.path("alerts.mail.ca_file".into(), p));
            MailConfig {
                port: m.port.unwrap_or(match tls {
                    MailTls::Implicit => 465,
                    MailTls::StartTls => 587,
                    MailTls::None => 25,
                }),
                host: m.host,
                tls,
                user: m.user,
                password_file,
                from: m.from,
                to: m.to,
                timeout,
                ca_file,
            }
        });
        AlertsConfig {
            events,
            repeat_interval,
            webhook,
            mail,
        }
    }
}

#[cfg(test)]
mod tests {
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
}
