//! The 3-2-1 policy as a pure function: a backup's verdict from its verified copies.
//!
//! The live database is copy one; the policy counts backup copies only. A backup meets
//! the policy when it has at least `copies` verified copies on distinct stores, on at
//! least `media` distinct media kinds, at least `offsite` of them on stores whose site
//! differs from the agent's, and at least `immutable` of them under an object lock that
//! has not expired. A copy that failed its last verification counts as missing.

pub mod retention;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::PolicyConfig;

/// One copy of one backup, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyFact {
    pub store: String,
    pub media: String,
    pub site: String,
    pub verified: bool,
    pub lock_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub compliant: bool,
    pub verified_copies: u32,
    pub media: u32,
    pub offsite: u32,
    pub immutable: u32,
    /// What is missing, one line each; empty when compliant.
    pub reasons: Vec<String>,
}

pub fn evaluate(
    policy: &PolicyConfig,
    agent_site: &str,
    copies: &[CopyFact],
    now: DateTime<Utc>,
) -> Verdict {
    let mut stores: Vec<&CopyFact> = copies.iter().filter(|c| c.verified).collect();
    stores.sort_by(|a, b| a.store.cmp(&b.store));
    stores.dedup_by(|a, b| a.store == b.store);
    let verified = stores.len() as u32;
    let mut media: Vec<&str> = stores.iter().map(|c| c.media.as_str()).collect();
    media.sort();
    media.dedup();
    let offsite = stores.iter().filter(|c| c.site != agent_site).count() as u32;
    let immutable = stores
        .iter()
        .filter(|c| c.lock_until.is_some_and(|t| t > now))
        .count() as u32;
    let mut reasons = Vec::new();
    if verified < policy.copies {
        let names: Vec<&str> = stores.iter().map(|c| c.store.as_str()).collect();
        reasons.push(format!(
            "{verified} verified cop{} ({}), policy needs {}",
            if verified == 1 { "y" } else { "ies" },
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            },
            policy.copies
        ));
    }
    if (media.len() as u32) < policy.media {
        reasons.push(format!(
            "{} media kind{} ({}), policy needs {}",
            media.len(),
            if media.len() == 1 { "" } else { "s" },
            if media.is_empty() {
                "none".to_string()
            } else {
                media.join(", ")
            },
            policy.media
        ));
    }
    if offsite < policy.offsite {
        reasons.push(format!(
            "{offsite} offsite cop{} (site other than {agent_site}), policy needs {}",
            if offsite == 1 { "y" } else { "ies" },
            policy.offsite
        ));
    }
    if immutable < policy.immutable {
        reasons.push(format!(
            "{immutable} immutable (object-locked) cop{}, policy needs {}",
            if immutable == 1 { "y" } else { "ies" },
            policy.immutable
        ));
    }
    for c in copies.iter().filter(|c| !c.verified) {
        reasons.push(format!("copy on {} is not verified", c.store));
    }
    let compliant = verified >= policy.copies
        && media.len() as u32 >= policy.media
        && offsite >= policy.offsite
        && immutable >= policy.immutable;
    Verdict {
        compliant,
        verified_copies: verified,
        media: media.len() as u32,
        offsite,
        immutable,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-21T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn copy(store: &str, media: &str, site: &str, verified: bool, locked: bool) -> CopyFact {
        CopyFact {
            store: store.into(),
            media: media.into(),
            site: site.into(),
            verified,
            lock_until: locked.then(|| now() + chrono::Duration::days(30)),
        }
    }

    #[test]
    fn verdicts() {
        let p = PolicyConfig::default();
        let local = copy("local", "disk", "dc1", true, false);
        let s3 = copy("s3-dc2", "object-storage", "dc2", true, false);
        // All stores fine.
        let v = evaluate(&p, "dc1", &[local.clone(), s3.clone()], now());
        assert!(v.compliant, "{v:?}");
        assert!(v.reasons.is_empty());
        // Offsite down: only the local copy.
        let v = evaluate(&p, "dc1", std::slice::from_ref(&local), now());
        assert!(!v.compliant);
        assert!(v.reasons.iter().any(|r| r.contains("offsite")), "{v:?}");
        assert!(
            v.reasons
                .iter()
                .any(|r| r.contains("1 verified copy (local)")),
            "{v:?}"
        );
        // Only one media kind.
        let nas = copy("nas-dc2", "disk", "dc2", true, false);
        let v = evaluate(&p, "dc1", &[local.clone(), nas], now());
        assert!(!v.compliant);
        assert_eq!(
            v.reasons,
            vec!["1 media kind (disk), policy needs 2".to_string()]
        );
        // Lock missing when required; an expired lock does not count.
        let p1 = PolicyConfig {
            immutable: 1,
            ..PolicyConfig::default()
        };
        let v = evaluate(&p1, "dc1", &[local.clone(), s3.clone()], now());
        assert!(!v.compliant);
        assert!(v.reasons[0].contains("immutable"), "{v:?}");
        let mut expired = copy("s3-dc2", "object-storage", "dc2", true, true);
        expired.lock_until = Some(now() - chrono::Duration::seconds(1));
        assert!(!evaluate(&p1, "dc1", &[local.clone(), expired], now()).compliant);
        let locked = copy("s3-dc2", "object-storage", "dc2", true, true);
        assert!(evaluate(&p1, "dc1", &[local.clone(), locked], now()).compliant);
        // A copy that failed verification counts as missing.
        let bad = copy("s3-dc2", "object-storage", "dc2", false, false);
        let v = evaluate(&p, "dc1", &[local, bad], now());
        assert!(!v.compliant);
        assert!(
            v.reasons
                .iter()
                .any(|r| r == "copy on s3-dc2 is not verified"),
            "{v:?}"
        );
    }
}
