//! From the raw file to the configuration the program uses: every check that needs no
//! I/O, every problem collected with its key and line (not just the first).

use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;

use super::raw::*;
use super::*;

mod alerts;
mod source;
mod store;

pub(super) struct Validator<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
    pub(super) env: &'a dyn Env,
    pub(super) schedule_check: Option<ScheduleCheck>,
    pub(super) problems: Vec<ConfigProblem>,
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

    pub(super) fn validate(mut self, raw: RawConfig) -> Result<Config, ConfigError> {
        self.refused_env();
        let agent = self.agent(raw.agent.unwrap_or_default());
        let mut sources = self.sources(raw.source);
        for s in &mut sources {
            s.fit_dump_connections(agent.max_connections_per_server);
        }
        let encryption = raw.encryption.map(|e| self.encryption(e));
        let stores = self.stores(raw.store, &agent);
        let policy = self.policy(raw.policy.unwrap_or_default());
        let restore = self.restore(raw.restore.unwrap_or_default());
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
            splits: Vec::new(),
            encryption,
            stores,
            policy,
            restore,
        })
    }

    /// Secrets given as environment values instead of files.
    fn refused_env(&mut self) {
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
    }

    fn agent(&mut self, ra: RawAgent) -> AgentConfig {
        let max_concurrent_backups = match ra.max_concurrent_backups {
            Some(0) => {
                self.problem(
                    "agent.max_concurrent_backups",
                    None,
                    "must be at least 1 (0 would never run a backup)",
                );
                1
            }
            Some(n) => n,
            None => 1,
        };
        let max_connections_per_server = match ra.max_connections_per_server {
            Some(0) => {
                self.problem(
                    "agent.max_connections_per_server",
                    None,
                    "must be at least 1 (0 would never run a backup)",
                );
                1
            }
            Some(n) => n,
            None => 4,
        };
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
        AgentConfig {
            name: agent_name,
            site,
            state_dir: ra
                .state_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/backup-agent")),
            http_bind: ra.http_bind.unwrap_or_else(|| "127.0.0.1:9105".into()),
            max_concurrent_backups,
            max_connections_per_server,
            dpo_expiry_warning_days: ra.dpo_expiry_warning_days.unwrap_or(30),
            drill_max_age,
            check_interval,
        }
    }

    fn encryption(&mut self, e: RawEncryption) -> EncryptionConfig {
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
                DEFAULT_COMPRESSION_LEVEL
            }
            Some(l) => l.into_inner(),
            None => DEFAULT_COMPRESSION_LEVEL,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let threads = match e.compression_threads {
            Some(t) if !(1..=64).contains(t.get_ref()) => {
                self.problem(
                    "encryption.compression_threads",
                    Some(t.span()),
                    "must be between 1 and 64",
                );
                cores
            }
            Some(t) => t.into_inner(),
            None => cores,
        };
        let peers = e
            .peer_certificates
            .into_iter()
            .enumerate()
            .map(|(i, p)| self.path(format!("encryption.peer_certificates[{i}]"), p))
            .collect();
        EncryptionConfig {
            dpo_certificates: certs,
            peer_certificates: peers,
            signing_key_file: self.path("encryption.signing_key_file".into(), e.signing_key_file),
            signing_key_passphrase_file: e
                .signing_key_passphrase_file
                .map(|p| self.path("encryption.signing_key_passphrase_file".into(), p)),
            compression_level: level,
            compression_threads: threads,
        }
    }

    fn policy(&mut self, rp: RawPolicy) -> PolicyConfig {
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
        policy
    }

    fn restore(&mut self, rr: RawRestore) -> RestoreConfig {
        RestoreConfig {
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
        }
    }

    fn duration(&mut self, key: &str, d: Spanned<String>) -> Option<std::time::Duration> {
        let span = d.span();
        match humantime::parse_duration(d.get_ref()) {
            Ok(x) if !x.is_zero() => Some(x),
            Ok(_) => {
                self.problem(
                    key,
                    Some(span),
                    format!(
                        "{:?} is zero; it must be longer, e.g. \"90s\", \"15m\", \"26h\"",
                        d.get_ref()
                    ),
                );
                None
            }
            Err(_) => {
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
}

pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
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
pub(super) fn key_near(text: &str, span: Option<Range<usize>>) -> String {
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
