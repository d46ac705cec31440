//! `[[store]]`: local directories and S3 buckets, verification, retention.

use std::collections::BTreeSet;
use std::ops::Range;

use super::super::raw::RawStore;
use super::super::*;
use super::Validator;

impl Validator<'_> {
    pub(super) fn stores(&mut self, raw: Vec<RawStore>, agent: &AgentConfig) -> Vec<StoreConfig> {
        let mut names = BTreeSet::new();
        raw.into_iter()
            .enumerate()
            .filter_map(|(i, s)| self.store(i, s, &mut names, agent))
            .collect()
    }

    fn store(
        &mut self,
        i: usize,
        mut s: RawStore,
        names: &mut BTreeSet<String>,
        agent: &AgentConfig,
    ) -> Option<StoreConfig> {
        let k = |f: &str| format!("store[{i}].{f}");
        let name_span = s.name.span();
        let name = s.name.get_ref().clone();
        if !names.insert(name.clone()) {
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
                    return None;
                }
            },
            "s3" => match self.s3_store(&k, name_span.clone(), &mut s) {
                Some(c) => StoreKind::S3(Box::new(c)),
                None => return None,
            },
            other => {
                self.problem(
                    k("kind"),
                    Some(kind_span),
                    format!("unknown store kind {other:?}; expected \"local\" or \"s3\""),
                );
                return None;
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
            Some(v) => {
                match v.get_ref().as_str() {
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
                }
            }
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
        Some(StoreConfig {
            name,
            kind,
            media: s.media.unwrap_or_else(|| default_media.into()),
            site: s.site.unwrap_or_else(|| agent.site.clone()),
            verify,
            retention,
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
        let credentials = self.s3_credentials(k, s);
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
        let object_lock = self.object_lock(k, s);
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

    /// Key files, or the AWS default chain (never static secrets from the environment).
    fn s3_credentials(&mut self, k: &dyn Fn(&str) -> String, s: &mut RawStore) -> S3Credentials {
        let env_id = self.env.var(ENV_S3_KEY_ID_FILE);
        let env_secret = self.env.var(ENV_S3_SECRET_FILE);
        match (s.access_key_id_file.take(), s.secret_access_key_file.take()) {
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
        }
    }

    fn object_lock(&mut self, k: &dyn Fn(&str) -> String, s: &mut RawStore) -> Option<ObjectLock> {
        match (s.object_lock_mode.take(), s.object_lock_days.take()) {
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
        }
    }
}
