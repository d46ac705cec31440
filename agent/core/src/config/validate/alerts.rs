//! `[alerts]`: the webhook and mail channels, which events, how often.

use super::super::raw::{RawAlerts, RawWebhook};
use super::super::*;
use super::Validator;

impl Validator<'_> {
    pub(super) fn alerts(&mut self, ra: RawAlerts) -> AlertsConfig {
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
            let format = match w.format.as_ref().map(|f| f.get_ref().as_str()) {
                None | Some("json") => WebhookFormat::Json,
                Some("alertmanager") => WebhookFormat::Alertmanager,
                Some(other) => {
                    let span = w.format.as_ref().map(|f| f.span());
                    self.problem("alerts.webhook.format", span, format!("unknown format {other:?}; use \"json\" (the agent's own payload) or \"alertmanager\" (Grafana OnCall, Alertmanager receivers)"));
                    WebhookFormat::Json
                }
            };
            url_file.map(|url_file| WebhookConfig { url_file, bearer_token_file, timeout, retries: w.retries.unwrap_or(3), ca_file, format })
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
