//! Configuration: one TOML file, parsed into raw structs that reject unknown keys, then
//! validated into the types the program uses.
//!
//! Secrets are never values in this file: every secret is a `*_file` key naming a file
//! (Docker secrets under /run/secrets), or a `*_FILE` environment variable. A plain secret
//! value, in the file or in the environment, is an error that says which `_file` twin to use.

use std::fmt;
use std::path::{Path, PathBuf};

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

mod raw;
pub mod split;
#[cfg(test)]
mod tests;
mod validate;

use raw::RawConfig;
use validate::{key_near, line_col, Validator};

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
    /// The sources to back up. A split source (`split = "database"`) stands here for
    /// its units until [`Config::expanded`] replaces it by them.
    pub sources: Vec<SourceConfig>,
    /// The split sources of an expanded configuration (their units are in `sources`).
    pub splits: Vec<SourceConfig>,
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
    /// Connections the agent may hold to one server at once, over all its backups (a
    /// backup holds one, a Galera backup up to three: dump, lease, desync).
    pub max_connections_per_server: usize,
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
    pub format: WebhookFormat,
}

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// The agent's own JSON payload (status, message, event, source, host, ...).
    Json,
    /// Alertmanager's webhook payload (version 4), which Grafana OnCall's Alertmanager
    /// integration and Alertmanager-style receivers take without templates.
    Alertmanager,
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
    "binlog_gap",
    "binlog_lag",
    "binlog_failed",
    "database_dropped",
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
    /// Connections that read one large table at once, in key ranges, in one snapshot.
    pub dump_connections: usize,
    /// Tables whose estimated size is at least this are read over `dump_connections`.
    pub parallel_table_size: u64,
    pub user: String,
    pub password_file: ConfigPath,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub users_and_grants: bool,
    /// `tenant_certificates`: database -> the tenant's certificate, for a source that
    /// dumps that database alone. Its backups are encrypted to it as well as to the DPO.
    pub tenant_certificates: Vec<(String, ConfigPath)>,
    pub prefix: String,
    pub connect_timeout_secs: u64,
    pub schedule: ScheduleSpec,
    pub max_age: std::time::Duration,
    /// Binary log archiving (point-in-time recovery), when enabled.
    pub binlog: Option<BinlogConfig>,
    /// `split = "database"`: one backup per selected database (see [`split`]).
    pub split: Option<split::Split>,
    /// Set on the units of a split source.
    pub unit_of: Option<split::UnitOf>,
}

/// `[source.binlog]`: the daemon streams the source's binary log into sealed segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogConfig {
    /// A segment is stored at the latest this long after its first transaction: the RPO.
    pub segment_max_age: std::time::Duration,
    /// A segment is cut (between transactions) once it holds this many bytes; it is
    /// sealed in memory, so this bounds the archiver's memory.
    pub segment_max_size: u64,
    /// Archiving further behind than this is CRITICAL and alerts.
    pub max_lag: std::time::Duration,
    /// Retention keeps every segment a kept backup needs to reach any point this far back.
    pub pitr_window: std::time::Duration,
}

pub const DEFAULT_SEGMENT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);
pub const DEFAULT_SEGMENT_MAX_SIZE: u64 = 64 << 20;
pub const DEFAULT_PITR_WINDOW: std::time::Duration = std::time::Duration::from_secs(7 * 86400);
pub const DEFAULT_BINLOG_MAX_LAG: std::time::Duration = std::time::Duration::from_secs(300);

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

/// The gzip level when the configuration names none: libdeflate's 5 takes 6% off a
/// backup's wall time on 2 cores against 6 for 0.15% more output (docs/benchmarks.md);
/// below 5 the output grows by 8% for no speed (the server's share bounds the wall time).
pub const DEFAULT_COMPRESSION_LEVEL: u32 = 5;

/// Connections that read a large table at once. Two: on 2 cores the server's thread and
/// the dumper's thread are the backup's serial chain, and a second connection gives each a
/// second thread (measured in docs/benchmarks.md).
pub const DEFAULT_DUMP_CONNECTIONS: usize = 2;

/// Tables at least this large (the server's estimate) are read over several connections;
/// smaller ones cost more in round trips than they gain.
pub const DEFAULT_PARALLEL_TABLE_SIZE: u64 = 64 << 20;

#[derive(Debug, Clone)]
pub struct EncryptionConfig {
    pub dpo_certificates: Vec<ConfigPath>,
    pub signing_key_file: ConfigPath,
    pub signing_key_passphrase_file: Option<ConfigPath>,
    /// Other agents writing to the same stores, whose signed manifests are trusted.
    pub peer_certificates: Vec<ConfigPath>,
    /// gzip level 1-9 (default [`DEFAULT_COMPRESSION_LEVEL`]).
    pub compression_level: u32,
    /// Threads compressing a dump (1: one gzip stream, as before).
    pub compression_threads: u32,
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
    /// The system databases and the Galera lease database: never part of a dump, whatever
    /// the selection.
    pub fn never_dumped(&self, db: &str) -> bool {
        SYSTEM_DATABASES.iter().any(|s| s.eq_ignore_ascii_case(db))
            || self
                .galera
                .as_ref()
                .is_some_and(|g| g.lease && g.lease_database.eq_ignore_ascii_case(db))
    }

    /// Whether a database is selected for dumping by this source.
    pub fn selects(&self, db: &str) -> bool {
        if self.never_dumped(db) {
            return false;
        }
        if !self.include.is_empty() && !self.include.iter().any(|i| split::glob_match(i, db)) {
            return false;
        }
        !self.exclude.iter().any(|e| split::glob_match(e, db))
    }

    /// Connections a backup of this source may hold to its server at once: the dump's,
    /// and for a Galera source the lease's and the desync's.
    /// Fewer readers when `max_connections_per_server` leaves no room for them: n readers
    /// hold the backup's own connections, n - 1 more, and one for the commit lock.
    pub fn fit_dump_connections(&mut self, per_server: usize) {
        let most = per_server
            .saturating_sub(self.connections_per_backup())
            .max(1);
        self.dump_connections = self.dump_connections.clamp(1, most);
    }

    /// The connections a backup of this source holds throughout: the dump's and, for
    /// Galera, the lease's and the desync's. The dump's helpers (`dump_connections`) come
    /// on top, only while the budget has them free.
    pub fn connections_per_backup(&self) -> usize {
        1 + self
            .galera
            .as_ref()
            .map_or(0, |g| usize::from(g.lease) + usize::from(g.desync))
    }

    /// The server a source's connections count against (its nodes, in order).
    pub fn server_key(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.endpoint.to_string())
            .collect::<Vec<_>>()
            .join(",")
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
        let (raw, mut problems) = parse_all(file, text);
        let Some(raw) = raw else {
            return Err(ConfigError { problems });
        };
        let validated = Validator {
            file,
            text,
            env,
            schedule_check,
            problems: Vec::new(),
        }
        .validate(raw);
        match validated {
            Ok(c) if problems.is_empty() => Ok(c),
            Ok(_) => Err(ConfigError { problems }),
            Err(e) => {
                // The rest of the file's problems, less those about keys already reported
                // (a line set aside for its own error is missing to the validator).
                let keys: Vec<String> = problems.iter().map(|p| last_key(&p.key)).collect();
                problems.extend(
                    e.problems
                        .into_iter()
                        .filter(|p| !keys.contains(&last_key(&p.key))),
                );
                problems.sort_by_key(|p| p.position);
                Err(ConfigError { problems })
            }
        }
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

    /// The sources a command acts on: all of them, or the one named. On an expanded
    /// configuration a split source's name selects its units; a unit the configuration
    /// does not hold yet is added first with [`Config::add_unit`].
    pub fn source(&self, name: Option<&str>) -> Result<Vec<&SourceConfig>, String> {
        let Some(n) = name else {
            return Ok(self.sources.iter().collect());
        };
        if let Some(s) = self.sources.iter().find(|s| s.name == n) {
            return Ok(vec![s]);
        }
        if self.splits.iter().any(|s| s.name == n) {
            return Ok(self
                .sources
                .iter()
                .filter(|s| s.unit_of.as_ref().is_some_and(|u| u.parent == n))
                .collect());
        }
        let names: Vec<&str> = self
            .splits
            .iter()
            .chain(self.sources.iter())
            .map(|s| s.name.as_str())
            .collect();
        Err(format!(
            "no source named {n:?} in {}; configured sources: {}",
            self.file.display(),
            names.join(", ")
        ))
    }

    /// Adds the unit `<split source>/<database>` to the sources, known to the state or
    /// not (a restore machine has no state), when `name` names one that is missing.
    /// Errors when the split source exists but does not select that database.
    pub fn add_unit(&mut self, name: &str) -> Result<(), String> {
        if self.sources.iter().any(|s| s.name == name) {
            return Ok(());
        }
        let Some((parent, db)) = name.split_once('/') else {
            return Ok(());
        };
        let Some(p) = self.split_source(parent) else {
            return Ok(());
        };
        if !p.selects(db) {
            return Err(format!(
                "database {db:?} is not selected by source {parent:?} (its databases.include and exclude in {})",
                self.file.display()
            ));
        }
        let unit = p.unit(db, None);
        self.sources.push(unit);
        Ok(())
    }
}

/// Parses the file, reporting every error it can: after an error, the lines it points at
/// are set aside (commented out) and parsing goes on, so that one run names every
/// misspelt key and wrong value. Returns what parsed with the erroneous lines set aside
/// (None when nothing could be parsed), and the problems.
fn parse_all(file: &Path, text: &str) -> (Option<RawConfig>, Vec<ConfigProblem>) {
    let mut work = text.to_string();
    let mut problems: Vec<ConfigProblem> = Vec::new();
    for round in 0..64 {
        // A syntax error ends the parse: what follows it cannot be read reliably. After
        // lines were set aside, a syntax error is of our making: stop with what was found.
        if round > 0 && work.parse::<toml::Table>().is_err() {
            return (None, problems);
        }
        let e = match toml::from_str::<RawConfig>(&work) {
            Ok(raw) => return (Some(raw), problems),
            Err(e) => e,
        };
        // toml's message repeats the source excerpt; keep its first line, which names
        // the key ("unknown field `x`, expected one of ...").
        let message = with_suggestion(e.message().trim());
        let key = key_near(&work, e.span());
        // A line set aside for a wrong value comes back as a missing field: said already.
        let said = problems
            .iter()
            .any(|p| message.starts_with(&format!("missing field `{}`", last_key(&p.key))));
        if !said {
            problems.push(ConfigProblem {
                file: file.to_path_buf(),
                position: e.span().map(|s| line_col(&work, s.start)),
                key,
                message,
            });
        }
        if work.parse::<toml::Table>().is_err() {
            break;
        }
        let Some(next) = e.span().and_then(|s| set_aside(&work, s)) else {
            break;
        };
        work = next;
    }
    (None, problems)
}

/// The text with the lines covering `span` commented out (same line numbers), or None
/// when that changes nothing.
fn set_aside(text: &str, span: std::ops::Range<usize>) -> Option<String> {
    let start = text[..span.start.min(text.len())]
        .rfind('\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    let end = span.end.max(span.start + 1).min(text.len());
    let mut out = String::with_capacity(text.len() + 8);
    let mut changed = false;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let line_end = pos + line.len();
        if line_end > start && pos < end && !line.trim_start().starts_with('#') {
            out.push('#');
            changed = true;
        }
        out.push_str(line);
        pos = line_end;
    }
    changed.then_some(out)
}

/// The last component of a problem's key (`source[0].port` -> `port`).
fn last_key(key: &str) -> String {
    key.rsplit('.')
        .next()
        .unwrap_or(key)
        .split('[')
        .next()
        .unwrap_or(key)
        .trim()
        .to_string()
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

/// serde's "unknown field `x`, expected one of `a`, `b`" with "; did you mean `a`?" when a
/// known key is a likely misspelling of the unknown one.
fn with_suggestion(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return message.to_string();
    };
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (edit_distance(unknown, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min();
    match best {
        Some((_, k)) => format!("{message}; did you mean `{k}`?"),
        None => message.to_string(),
    }
}

/// Levenshtein distance (keys are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
