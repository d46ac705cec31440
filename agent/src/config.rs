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
    restore: Option<RawRestore>,
    alerts: Option<RawAlerts>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    site: Option<String>,
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
    pub restore: RestoreConfig,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub site: String,
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
    "recovered",
];

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub endpoint: Endpoint,
    pub user: String,
    pub password_file: ConfigPath,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub users_and_grants: bool,
    pub prefix: String,
    pub connect_timeout_secs: u64,
    pub schedule: crate::schedule::Schedule,
    pub max_age: std::time::Duration,
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
}

#[derive(Debug, Clone)]
pub enum StoreKind {
    Local { path: ConfigPath },
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
    /// Whether a database is selected for dumping by this source.
    pub fn selects(&self, db: &str) -> bool {
        if SYSTEM_DATABASES.iter().any(|s| s.eq_ignore_ascii_case(db)) {
            return false;
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
];

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
    /// Reads and validates a configuration file (no I/O beyond reading the file itself).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
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
        Config::parse(path, &text, &ProcessEnv)
    }

    /// Parses and validates configuration text; `file` is used in messages only.
    pub fn parse(file: &Path, text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
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
        let agent = AgentConfig {
            site: ra.site.unwrap_or_else(|| "default".into()),
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
            let endpoint = match (s.host, s.socket) {
                (Some(_), Some(_)) => {
                    self.problem(
                        k("socket"),
                        Some(name_span.clone()),
                        "give either host (and port) or socket, not both",
                    );
                    Endpoint::Tcp {
                        host: String::new(),
                        port: 0,
                    }
                }
                (Some(host), None) => Endpoint::Tcp {
                    host,
                    port: s.port.unwrap_or(3306),
                },
                (None, Some(sock)) => Endpoint::Socket(sock),
                (None, None) => {
                    self.problem(
                        k("host"),
                        Some(name_span.clone()),
                        "no server address: set host (and port) or socket",
                    );
                    Endpoint::Tcp {
                        host: String::new(),
                        port: 0,
                    }
                }
            };
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
            let schedule = match s.schedule {
                Some(sp) => {
                    let span = sp.span();
                    let tz = s
                        .timezone
                        .as_ref()
                        .map(|t| t.get_ref().clone())
                        .unwrap_or_else(|| "UTC".into());
                    match crate::schedule::Schedule::parse(sp.get_ref(), &tz) {
                        Ok(x) => x,
                        Err(e) => {
                            let (key, span) = if e.contains("time zone") {
                                (
                                    k("timezone"),
                                    s.timezone.as_ref().map(|t| t.span()).unwrap_or(span),
                                )
                            } else {
                                (k("schedule"), span)
                            };
                            self.problem(key, Some(span), e);
                            crate::schedule::Schedule::default_daily()
                        }
                    }
                }
                None => crate::schedule::Schedule::default_daily(),
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
            sources.push(SourceConfig {
                name,
                endpoint,
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
        for (i, s) in raw.store.into_iter().enumerate() {
            let k = |f: &str| format!("store[{i}].{f}");
            let name_span = s.name.span();
            let name = s.name.into_inner();
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
                other => {
                    self.problem(
                        k("kind"),
                        Some(kind_span),
                        format!("unknown store kind {other:?}; expected \"local\""),
                    );
                    continue;
                }
            };
            stores.push(StoreConfig {
                name,
                kind,
                media: s.media.unwrap_or_else(|| "disk".into()),
                site: s.site.unwrap_or_else(|| agent.site.clone()),
            });
        }

        if stores.len() > 1 {
            // Copies on several stores, verified and repaired, come with the stores work;
            // until then a second store would silently get nothing.
            self.problem(
                "store[1]",
                None,
                "only one [[store]] is supported in this version (backups would not reach the others); configure a single store",
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
            restore,
        })
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
            c.sources[0].endpoint,
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
    fn a_second_store_is_refused_until_replication_exists() {
        let text = format!(
            "{GOOD}\n[[store]]\nname = \"offsite\"\nkind = \"local\"\npath = \"/mnt/offsite\"\n"
        );
        let e = Config::parse(Path::new("c.toml"), &text, &env(&[])).unwrap_err();
        assert!(e.to_string().contains("only one [[store]]"), "{e}");
    }

    #[test]
    fn missing_sections_for_backup() {
        let c = Config::parse(Path::new("c.toml"), "[agent]\nsite = \"x\"\n", &env(&[])).unwrap();
        let e = c.require_backup_parts().unwrap_err();
        assert_eq!(e.problems.len(), 3);
    }
}
