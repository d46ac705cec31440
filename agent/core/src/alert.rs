//! Alerts: events go to a webhook (JSON, as the existing receivers expect) and by mail.
//! A channel that fails does not stop the other; failures are logged and counted in the
//! state (and so in `/metrics`). A condition (failing, stale) alerts once, then again
//! after the repeat interval while it lasts, and "recovered" when it clears.
//! Secrets (webhook URL, bearer token, SMTP password) are read from their files at send
//! time and never appear in a log line, an error or an alert body.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{AlertsConfig, MailConfig, MailTls, WebhookConfig, WebhookFormat};
use crate::secret::{read_secret_file, SecretError};
use crate::state::{AlertMark, StateStore};

/// One alert.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// "success" or "error", as in the existing payload.
    pub status: &'static str,
    pub message: String,
    pub timestamp: String,
    pub event: String,
    pub source: String,
    pub host: String,
    pub backup: Option<String>,
    pub details: serde_json::Value,
    /// For "recovered": the event of the condition that cleared (also in `details`).
    #[serde(skip)]
    pub clears: Option<String>,
    /// For "recovered": when the condition began.
    #[serde(skip)]
    pub since: Option<DateTime<Utc>>,
}

impl Alert {
    pub fn new(event: &str, source: &str, ok: bool, message: String) -> Alert {
        Alert {
            status: if ok { "success" } else { "error" },
            message,
            timestamp: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            event: event.into(),
            source: source.into(),
            host: crate::os::hostname(),
            backup: None,
            details: serde_json::json!({}),
            clears: None,
            since: None,
        }
    }

    /// The Alertmanager webhook payload (version 4) for this alert: `firing` for a
    /// problem, `resolved` for "recovered" (with the labels of the condition it clears,
    /// so a receiver resolves exactly that incident), `firing` with severity `info` for
    /// the opt-in success events. The fingerprint is stable per source and condition.
    pub fn alertmanager(&self) -> serde_json::Value {
        let resolved = self.event == "recovered";
        let alertname = match (&self.clears, resolved) {
            (Some(c), true) => c.clone(),
            _ => self.event.clone(),
        };
        let severity = match (self.status, resolved) {
            (_, true) | ("error", _) => "critical",
            _ => "info",
        };
        let labels = serde_json::json!({
            "alertname": alertname,
            "source": self.source,
            "severity": severity,
            "service": "backup-agent",
            "host": self.host,
        });
        let fingerprint = {
            use sha2::Digest;
            let h = sha2::Sha256::digest(format!("backup-agent\0{}\0{alertname}", self.source));
            hex::encode(&h[..8])
        };
        let starts = match (resolved, self.since) {
            (true, Some(t)) => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            _ => self.timestamp.clone(),
        };
        let ends = if resolved {
            self.timestamp.clone()
        } else {
            "0001-01-01T00:00:00Z".to_string()
        };
        let mut annotations = serde_json::json!({
            "summary": format!("{}: {}", self.source, alertname),
            "description": self.message,
        });
        if let Some(b) = &self.backup {
            annotations["backup"] = serde_json::Value::String(b.clone());
        }
        let status = if resolved { "resolved" } else { "firing" };
        serde_json::json!({
            "version": "4",
            "groupKey": format!("{{}}:{{alertname=\"{alertname}\", source=\"{}\"}}", self.source),
            "truncatedAlerts": 0,
            "status": status,
            "receiver": "backup-agent",
            "groupLabels": {"alertname": alertname, "source": self.source},
            "commonLabels": labels,
            "commonAnnotations": annotations,
            "externalURL": "",
            "alerts": [{
                "status": status,
                "labels": labels,
                "annotations": annotations,
                "startsAt": starts,
                "endsAt": ends,
                "generatorURL": "",
                "fingerprint": fingerprint,
            }],
        })
    }

    pub fn subject(&self) -> String {
        format!("[ALERT][Backup MariaDB] {}: {}", self.source, self.event)
    }

    fn mail_body(&self) -> String {
        let mut b = format!(
            "{}\n\nevent:     {}\nsource:    {}\nhost:      {}\nstatus:    {}\ntime:      {}\n",
            self.message, self.event, self.source, self.host, self.status, self.timestamp
        );
        if let Some(id) = &self.backup {
            b.push_str(&format!("backup:    {id}\n"));
        }
        if self.details.as_object().is_some_and(|o| !o.is_empty()) {
            b.push_str(&format!("details:   {}\n", self.details));
        }
        b
    }
}

/// What happened to one alert on each channel.
#[derive(Debug, Default)]
pub struct Delivery {
    pub webhook: Option<Result<(), AlertError>>,
    pub mail: Option<Result<(), AlertError>>,
}

/// Why a channel did not deliver an alert. No variant carries the webhook URL or a
/// secret.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("{key}: {path}: {source}")]
    CaFile {
        key: String,
        path: String,
        source: std::io::Error,
    },
    #[error("{key}: not a PEM certificate: {source}")]
    CaPem { key: String, source: reqwest::Error },
    #[error("webhook client: {0}")]
    Client(reqwest::Error),
    /// `last` says what the receiver (or the connection) did at the last attempt.
    #[error("webhook delivery failed after {attempts} attempt(s): {last}")]
    Webhook { attempts: u32, last: String },
    #[error("mail from {from:?}: {source}")]
    MailFrom {
        from: String,
        source: lettre::address::AddressError,
    },
    #[error("mail to {to:?}: {source}")]
    MailTo {
        to: String,
        source: lettre::address::AddressError,
    },
    #[error("building the mail: {0}")]
    MailBuild(lettre::error::Error),
    #[error("{key}: {source}")]
    MailCa {
        key: String,
        source: lettre::transport::smtp::Error,
    },
    #[error("TLS setup for {host}: {source}")]
    Tls {
        host: String,
        source: lettre::transport::smtp::Error,
    },
    #[error("mail via {host}:{port} failed: {source}")]
    Send {
        host: String,
        port: u16,
        source: lettre::transport::smtp::Error,
    },
}

pub struct Alerter {
    cfg: AlertsConfig,
    state: StateStore,
}

/// What a condition's new observation asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Send,
    Recovered,
    Nothing,
}

/// Pure rate limiting of a condition.
pub fn step(mark: &mut AlertMark, active: bool, now: DateTime<Utc>, repeat: Duration) -> Step {
    if active {
        if mark.active_since.is_none() {
            mark.active_since = Some(now);
        }
        let due = mark
            .last_sent
            .is_none_or(|t| (now - t).to_std().unwrap_or_default() >= repeat);
        if due {
            mark.last_sent = Some(now);
            Step::Send
        } else {
            Step::Nothing
        }
    } else if mark.active_since.is_some() {
        let was_sent = mark.last_sent.is_some();
        *mark = AlertMark::default();
        if was_sent {
            Step::Recovered
        } else {
            Step::Nothing
        }
    } else {
        Step::Nothing
    }
}

impl Alerter {
    pub fn new(cfg: AlertsConfig, state: StateStore) -> Alerter {
        Alerter { cfg, state }
    }

    fn wants(&self, event: &str) -> bool {
        self.cfg.events.iter().any(|e| e == event)
    }

    /// Sends an alert on every channel, if its event is enabled.
    pub async fn send(&self, a: &Alert) -> Delivery {
        if !self.wants(&a.event) {
            return Delivery::default();
        }
        let (w, m) = tokio::join!(
            async {
                match &self.cfg.webhook {
                    Some(w) => Some(send_webhook(w, a).await),
                    None => None,
                }
            },
            async {
                match &self.cfg.mail {
                    Some(m) => Some(send_mail(m, a).await),
                    None => None,
                }
            }
        );
        for (channel, r) in [("webhook", &w), ("mail", &m)] {
            match r {
                Some(Err(e)) => {
                    tracing::error!(event = "alert_failed", channel, alert = %a.event, source = %a.source, error = %e);
                    let _ = self
                        .state
                        .update(|s| *s.alert_failures.entry(channel.into()).or_default() += 1);
                }
                Some(Ok(())) => {
                    tracing::info!(event = "alert_sent", channel, alert = %a.event, source = %a.source)
                }
                None => {}
            }
        }
        Delivery {
            webhook: w,
            mail: m,
        }
    }

    /// Marks a condition as cleared (sends "recovered" if it had alerted).
    pub async fn clear(&self, key: &str, source: &str) {
        self.condition(
            key,
            false,
            || Alert::new("", source, true, String::new()),
            source,
        )
        .await;
    }

    /// Observes a condition (`key` like "main/failed"): alerts when it starts and then
    /// every repeat interval, and sends "recovered" when it clears after having alerted.
    pub async fn condition(
        &self,
        key: &str,
        active: bool,
        alert: impl FnOnce() -> Alert,
        source: &str,
    ) {
        let now = Utc::now();
        let repeat = self.cfg.repeat_interval;
        let built = active.then(alert);
        let event = built.as_ref().map(|a| a.event.clone());
        let (action, cleared, since) = self
            .state
            .update(|s| {
                let mark = s.alerts.entry(key.to_string()).or_default();
                let (cleared, since) = (mark.event.clone(), mark.active_since);
                let st = step(mark, active, now, repeat);
                if st == Step::Send {
                    mark.event = event.clone();
                }
                (st, cleared, since)
            })
            .unwrap_or((Step::Nothing, None, None));
        match action {
            Step::Send => {
                if let Some(a) = built {
                    self.send(&a).await;
                }
            }
            Step::Recovered => {
                let what = cleared
                    .clone()
                    .unwrap_or_else(|| key.rsplit('/').next().unwrap_or(key).to_string());
                let mut a = Alert::new(
                    "recovered",
                    source,
                    true,
                    format!("source {source}: recovered ({what} condition cleared)"),
                );
                a.details = serde_json::json!({
                    "clears": what,
                    "since": since.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                });
                a.clears = Some(what);
                a.since = since;
                self.send(&a).await;
            }
            Step::Nothing => {}
        }
    }
}

async fn send_webhook(w: &WebhookConfig, a: &Alert) -> Result<(), AlertError> {
    let url = read_secret_file(&w.url_file.path, &w.url_file.key)?;
    let token = match &w.bearer_token_file {
        Some(t) => Some(read_secret_file(&t.path, &t.key)?),
        None => None,
    };
    let mut b = reqwest::Client::builder()
        .timeout(w.timeout)
        .connect_timeout(w.timeout);
    if let Some(ca) = &w.ca_file {
        let pem = std::fs::read(&ca.path).map_err(|source| AlertError::CaFile {
            key: ca.key.clone(),
            path: ca.path.display().to_string(),
            source,
        })?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|source| AlertError::CaPem {
            key: ca.key.clone(),
            source,
        })?;
        b = b.add_root_certificate(cert);
    }
    let client = b.build().map_err(|e| AlertError::Client(e.without_url()))?;
    let mut last = String::new();
    for attempt in 0..=w.retries {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * (1 << (attempt - 1).min(6)))).await;
        }
        let mut req = match w.format {
            WebhookFormat::Json => client.post(url.expose()).json(a),
            WebhookFormat::Alertmanager => client.post(url.expose()).json(&a.alertmanager()),
        };
        if let Some(t) = &token {
            req = req.bearer_auth(t.expose());
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("receiver answered HTTP {}", r.status()),
            // Never print the URL: it is a secret.
            Err(e) => last = e.without_url().to_string(),
        }
    }
    Err(AlertError::Webhook {
        attempts: w.retries + 1,
        last,
    })
}

async fn send_mail(m: &MailConfig, a: &Alert) -> Result<(), AlertError> {
    use lettre::message::{header::ContentType, Mailbox};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let from: Mailbox = m.from.parse().map_err(|source| AlertError::MailFrom {
        from: m.from.clone(),
        source,
    })?;
    let mut msg = Message::builder()
        .from(from)
        .subject(a.subject())
        .header(ContentType::TEXT_PLAIN);
    for to in &m.to {
        msg = msg.to(to.parse().map_err(|source| AlertError::MailTo {
            to: to.clone(),
            source,
        })?);
    }
    let msg = msg.body(a.mail_body()).map_err(AlertError::MailBuild)?;
    let tls = || -> Result<TlsParameters, AlertError> {
        let mut p = TlsParameters::builder(m.host.clone());
        if let Some(ca) = &m.ca_file {
            let pem = std::fs::read(&ca.path).map_err(|source| AlertError::CaFile {
                key: ca.key.clone(),
                path: ca.path.display().to_string(),
                source,
            })?;
            p = p.add_root_certificate(Certificate::from_pem(&pem).map_err(|source| {
                AlertError::MailCa {
                    key: ca.key.clone(),
                    source,
                }
            })?);
        }
        p.build_rustls().map_err(|source| AlertError::Tls {
            host: m.host.clone(),
            source,
        })
    };
    let mut t = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(m.host.clone())
        .port(m.port)
        .timeout(Some(m.timeout));
    t = match m.tls {
        MailTls::StartTls => t.tls(Tls::Required(tls()?)),
        MailTls::Implicit => t.tls(Tls::Wrapper(tls()?)),
        MailTls::None => t,
    };
    if let (Some(user), Some(pf)) = (&m.user, &m.password_file) {
        let pw = read_secret_file(&pf.path, &pf.key)?;
        t = t.credentials(Credentials::new(user.clone(), pw.expose().to_string()));
    }
    t.build()
        .send(msg)
        .await
        .map(|_| ())
        .map_err(|source| AlertError::Send {
            host: m.host.clone(),
            port: m.port,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_condition_alerts_once_then_after_the_interval_then_recovers() {
        let mut m = AlertMark::default();
        let h = Duration::from_secs(3600);
        assert_eq!(
            step(&mut m, true, at("2026-01-01T00:00:00Z"), h),
            Step::Send
        );
        assert_eq!(
            step(&mut m, true, at("2026-01-01T00:10:00Z"), h),
            Step::Nothing
        );
        assert_eq!(
            step(&mut m, true, at("2026-01-01T00:59:59Z"), h),
            Step::Nothing
        );
        assert_eq!(
            step(&mut m, true, at("2026-01-01T01:00:00Z"), h),
            Step::Send
        );
        assert_eq!(
            step(&mut m, false, at("2026-01-01T01:05:00Z"), h),
            Step::Recovered
        );
        assert_eq!(
            step(&mut m, false, at("2026-01-01T01:06:00Z"), h),
            Step::Nothing
        );
        assert_eq!(m, AlertMark::default());
    }

    #[test]
    fn subject_and_payload_shape() {
        let mut a = Alert::new("backup_failed", "main", false, "boom".into());
        a.backup = Some("mariadb_x".into());
        assert_eq!(a.subject(), "[ALERT][Backup MariaDB] main: backup_failed");
        let v = serde_json::to_value(&a).unwrap();
        for k in [
            "status",
            "message",
            "timestamp",
            "event",
            "source",
            "host",
            "backup",
            "details",
        ] {
            assert!(v.get(k).is_some(), "{k} missing in {v}");
        }
        assert_eq!(v["status"], "error");
    }
}
