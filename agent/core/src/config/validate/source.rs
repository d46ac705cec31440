//! `[[source]]`: names, nodes, credentials, databases, schedule.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;

use super::super::raw::{RawBinlog, RawGalera, RawNode, RawSource};
use super::super::*;
use super::Validator;

/// What one source's validation must know of the others.
struct Seen {
    names: BTreeSet<String>,
    prefixes: BTreeSet<String>,
    n_sources: usize,
    env_password_file: Option<String>,
}

impl Validator<'_> {
    pub(super) fn sources(&mut self, raw: Vec<RawSource>) -> Vec<SourceConfig> {
        let mut seen = Seen {
            names: BTreeSet::new(),
            prefixes: BTreeSet::new(),
            n_sources: raw.len(),
            env_password_file: self.env.var(ENV_DB_PASSWORD_FILE),
        };
        let out: Vec<SourceConfig> = raw
            .into_iter()
            .enumerate()
            .map(|(i, s)| self.source(i, s, &mut seen))
            .collect();
        // A split source's units live under `<prefix>/<database>`: no other source's
        // prefix may lie there.
        for (i, s) in out.iter().enumerate() {
            for p in out.iter().filter(|p| p.split.is_some() && p.name != s.name) {
                if s.prefix.starts_with(&format!("{}/", p.prefix)) {
                    self.problem(
                        format!("source[{i}].prefix"),
                        None,
                        format!(
                            "prefix {:?} lies under {:?}, where split source {:?} keeps one directory per database; give it a prefix of its own",
                            s.prefix, p.prefix, p.name
                        ),
                    );
                }
            }
        }
        out
    }

    fn source(&mut self, i: usize, s: RawSource, seen: &mut Seen) -> SourceConfig {
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
        if !seen.names.insert(name.clone()) {
            self.problem(
                k("name"),
                Some(name_span.clone()),
                format!("duplicate source name {name:?}"),
            );
        }
        if let Some(pw) = &s.password {
            self.problem(k("password"), Some(pw.span()), "passwords are not accepted in the configuration; put the password in a file and set password_file");
        }
        let nodes = self.nodes(i, s.nodes, s.host, s.port, s.socket, name_span.clone());
        let galera = s.galera.map(|g| self.galera(i, g));
        if nodes.len() > 1 && galera.is_none() {
            self.problem(k("nodes"), Some(name_span.clone()), "several nodes are the nodes of a Galera cluster: add a [source.galera] table (it may be empty)");
        }
        let rate_limit = s.rate_limit.and_then(|r| {
            let span = r.span();
            match parse_size(r.get_ref()) {
                Some(x) if x >= 64 * 1024 => Some(x),
                _ => {
                    self.problem(
                        k("rate_limit"),
                        Some(span),
                        format!(
                            "{:?} is not a rate of at least 64KiB per second; write e.g. \"20MiB\"",
                            r.get_ref()
                        ),
                    );
                    None
                }
            }
        });
        let dump_connections = match s.dump_connections {
            None => DEFAULT_DUMP_CONNECTIONS,
            Some(n) if (1..=16).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.problem(
                    k("dump_connections"),
                    Some(n.span()),
                    format!(
                        "{} is not a number of connections from 1 to 16; 2 suits a server with 2 cores",
                        n.get_ref()
                    ),
                );
                DEFAULT_DUMP_CONNECTIONS
            }
        };
        let parallel_table_size = match s.parallel_table_size {
            None => DEFAULT_PARALLEL_TABLE_SIZE,
            Some(r) => match parse_size(r.get_ref()) {
                Some(x) => x,
                None => {
                    self.problem(
                        k("parallel_table_size"),
                        Some(r.span()),
                        format!("{:?} is not a size; write e.g. \"64MiB\"", r.get_ref()),
                    );
                    DEFAULT_PARALLEL_TABLE_SIZE
                }
            },
        };
        let password_file = match (s.password_file, &seen.env_password_file) {
            (Some(p), _) => self.path(k("password_file"), p),
            (None, Some(envp)) if seen.n_sources == 1 => ConfigPath {
                path: PathBuf::from(envp),
                key: format!("environment {ENV_DB_PASSWORD_FILE}"),
                position: None,
            },
            (None, _) => {
                self.problem(
                    k("password_file"),
                    Some(name_span.clone()),
                    format!(
                        "missing password_file (or {ENV_DB_PASSWORD_FILE} with a single source)"
                    ),
                );
                ConfigPath {
                    path: PathBuf::new(),
                    key: k("password_file"),
                    position: None,
                }
            }
        };
        let prefix = self.prefix(&k, s.prefix, &name);
        if !seen.prefixes.insert(prefix.clone()) {
            self.problem(
                k("prefix"),
                Some(name_span.clone()),
                format!("prefix {prefix:?} is used by another source; each source needs its own"),
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
        let schedule = self.schedule(&k, s.schedule, s.timezone);
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
        let split = match &s.split {
            None => None,
            Some(v) if v.get_ref() == "database" => Some(split::Split::Database),
            Some(v) => {
                self.problem(
                    k("split"),
                    Some(v.span()),
                    format!("{:?} is not a way to split a source; the one there is: split = \"database\" (one backup per database)", v.get_ref()),
                );
                None
            }
        };
        let mut tenant_certificates = Vec::new();
        for (db, path) in s.tenant_certificates {
            let key = k(&format!("tenant_certificates.{db}"));
            let span = path.span();
            let selected = |d: &str| {
                let inc = include.is_empty() || include.iter().any(|i| split::glob_match(i, d));
                inc && !exclude.iter().any(|e| split::glob_match(e, d))
            };
            let alone = match split {
                // Each database is its own backup: the key opens that database's only.
                Some(_) => selected(&db),
                None => include.len() == 1 && include[0] == db,
            };
            if !alone {
                let message = match split {
                    Some(_) => format!("database {db:?} is not selected by this source's databases.include and exclude, so no backup of it would be encrypted to this certificate; fix the name or the selection"),
                    None => format!("a tenant's certificate applies only to a source that dumps that database alone: set databases = {{ include = [{db:?}] }} for this source, or split = \"database\" (one backup per database), so that the tenant's key opens nothing but its own backups"),
                };
                self.problem(key.clone(), Some(span), message);
                continue;
            }
            tenant_certificates.push((db, self.path(key, path)));
        }
        let binlog_span = s.split.as_ref().map(|v| v.span());
        let binlog = s.binlog.and_then(|b| self.binlog(i, b));
        if let (Some(_), Some(_)) = (&split, &binlog) {
            self.problem(
                k("binlog"),
                binlog_span,
                "binary log archiving is per server, and a split source backs up each database on its own: archive the binary log in a source without split (its backups start the point-in-time chain)",
            );
        }
        SourceConfig {
            split,
            unit_of: None,
            binlog,
            name,
            nodes,
            galera,
            rate_limit,
            dump_connections,
            parallel_table_size,
            user,
            password_file,
            include,
            exclude,
            users_and_grants: s.users_and_grants.unwrap_or(true),
            tenant_certificates,
            prefix,
            connect_timeout_secs: s.connect_timeout_secs.unwrap_or(10),
            schedule,
            max_age,
        }
    }

    /// A source's servers: `nodes = [...]` or one host/port/socket.
    fn nodes(
        &mut self,
        i: usize,
        nodes: Option<Spanned<Vec<RawNode>>>,
        host: Option<String>,
        port: Option<u16>,
        socket: Option<PathBuf>,
        name_span: Range<usize>,
    ) -> Vec<NodeConfig> {
        let k = |f: &str| format!("source[{i}].{f}");
        match nodes {
            Some(list) => {
                let span = list.span();
                if host.is_some() || socket.is_some() || port.is_some() {
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
                    host,
                    port,
                    socket,
                    name_span.clone(),
                );
                vec![NodeConfig {
                    name: endpoint.to_string(),
                    endpoint,
                    site: None,
                }]
            }
        }
    }

    fn prefix(
        &mut self,
        k: &dyn Fn(&str) -> String,
        prefix: Option<Spanned<String>>,
        name: &str,
    ) -> String {
        match prefix {
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
            None => name.to_string(),
        }
    }

    fn schedule(
        &mut self,
        k: &dyn Fn(&str) -> String,
        schedule: Option<Spanned<String>>,
        timezone_raw: Option<Spanned<String>>,
    ) -> ScheduleSpec {
        let timezone = timezone_raw
            .as_ref()
            .map(|t| t.get_ref().clone())
            .unwrap_or_else(|| DEFAULT_TIMEZONE.into());
        match schedule {
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
                                timezone_raw.as_ref().map(|t| t.span()).unwrap_or(span),
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
        }
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

    fn binlog(&mut self, i: usize, b: RawBinlog) -> Option<BinlogConfig> {
        let k = |f: &str| format!("source[{i}].binlog.{f}");
        let segment_max_age = b
            .segment_max_age
            .and_then(|d| self.duration(&k("segment_max_age"), d))
            .unwrap_or(DEFAULT_SEGMENT_MAX_AGE);
        let segment_max_size = match b.segment_max_size {
            None => DEFAULT_SEGMENT_MAX_SIZE,
            Some(sz) => match parse_size(sz.get_ref()) {
                Some(x) if (4 << 10..=1 << 30).contains(&x) => x,
                _ => {
                    self.problem(
                        k("segment_max_size"),
                        Some(sz.span()),
                        format!(
                            "{:?} is not a size from 4KiB to 1GiB; write e.g. \"64MiB\" (a segment is sealed in memory)",
                            sz.get_ref()
                        ),
                    );
                    DEFAULT_SEGMENT_MAX_SIZE
                }
            },
        };
        let max_lag = b
            .max_lag
            .and_then(|d| self.duration(&k("max_lag"), d))
            .unwrap_or(DEFAULT_BINLOG_MAX_LAG);
        if max_lag <= segment_max_age {
            self.problem(
                k("max_lag"),
                None,
                format!(
                    "max_lag ({}) must be longer than segment_max_age ({}): a segment may stay open that long",
                    humantime::format_duration(max_lag),
                    humantime::format_duration(segment_max_age)
                ),
            );
        }
        let pitr_window = b
            .pitr_window
            .and_then(|d| self.duration(&k("pitr_window"), d))
            .unwrap_or(DEFAULT_PITR_WINDOW);
        b.enabled.unwrap_or(true).then_some(BinlogConfig {
            segment_max_age,
            segment_max_size,
            max_lag,
            pitr_window,
        })
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
}
