//! Detached OpenPGP signatures over manifests: the agent signs each manifest it writes,
//! and everyone who reads one (the agent's own list, repair and scrub, `restore`, the
//! drill) accepts it only with a good signature by a certificate the reader trusts (its
//! own key's, its configured peers', the pinned ones of `restore`), never one the store
//! names. Only verification lives here; signing needs the agent's secret key and stays
//! with the agent.

use std::path::Path;

use sequoia_openpgp as openpgp;

use openpgp::cert::prelude::*;
use openpgp::parse::stream::{
    DetachedVerifierBuilder, MessageLayer, MessageStructure, VerificationHelper,
};
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::KeyHandle;

/// A detached signature larger than this is not one of ours (they are a few hundred bytes).
pub const MAX_SIGNATURE_BYTES: u64 = 64 << 10;

static POLICY: std::sync::LazyLock<StandardPolicy<'static>> =
    std::sync::LazyLock::new(StandardPolicy::new);

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no trusted agent certificate to check it against")]
    NoTrust,
    #[error("the signature does not parse ({0})")]
    Malformed(String),
    #[error("no good signature by a trusted agent key (trusted: {trusted}){found}")]
    Untrusted { trusted: String, found: String },
}

/// Certificates whose signatures are accepted (public parts only).
#[derive(Clone, Default)]
pub struct Trust {
    certs: Vec<Cert>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Trust({})", self.fingerprints().join(", "))
    }
}

impl Trust {
    pub fn new(certs: Vec<Cert>) -> Trust {
        Trust {
            certs: certs
                .into_iter()
                .map(|c| c.strip_secret_key_material())
                .collect(),
        }
    }

    /// Reads every certificate (or secret key, whose public part is used) in a file. The
    /// error does not repeat the path.
    pub fn read_file(path: &Path) -> Result<Vec<Cert>, String> {
        let certs: Vec<Cert> = CertParser::from_file(path)
            .and_then(|p| p.collect::<openpgp::Result<Vec<_>>>())
            .map_err(|e| format!("cannot read an OpenPGP certificate ({e})"))?;
        if certs.is_empty() {
            return Err("the file holds no certificate".into());
        }
        Ok(certs)
    }

    pub fn add(&mut self, certs: Vec<Cert>) {
        for c in certs {
            let c = c.strip_secret_key_material();
            if !self
                .certs
                .iter()
                .any(|k| k.fingerprint() == c.fingerprint())
            {
                self.certs.push(c);
            }
        }
    }

    pub fn fingerprints(&self) -> Vec<String> {
        self.certs
            .iter()
            .map(|c| c.fingerprint().to_hex())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// Checks a detached signature over `data`; returns the primary fingerprint of the
    /// trusted certificate that made it.
    pub fn verify_detached(&self, data: &[u8], signature: &[u8]) -> Result<String, SignatureError> {
        if self.certs.is_empty() {
            return Err(SignatureError::NoTrust);
        }
        let helper = Checker {
            trust: self,
            signer: None,
            problems: Vec::new(),
        };
        let mut v = DetachedVerifierBuilder::from_bytes(signature)
            .map_err(|e| SignatureError::Malformed(e.to_string()))?
            .with_policy(&*POLICY, None, helper)
            .map_err(|e| SignatureError::Malformed(e.to_string()))?;
        let checked = v.verify_bytes(data);
        let helper = v.into_helper();
        match (checked, helper.signer) {
            (Ok(()), Some(fp)) => Ok(fp),
            (r, _) => {
                let mut found = helper.problems;
                if let Err(e) = r {
                    if found.is_empty() {
                        found.push(e.to_string());
                    }
                }
                Err(SignatureError::Untrusted {
                    trusted: self.fingerprints().join(", "),
                    found: if found.is_empty() {
                        String::new()
                    } else {
                        format!("; found: {}", found.join("; "))
                    },
                })
            }
        }
    }
}

struct Checker<'a> {
    trust: &'a Trust,
    signer: Option<String>,
    problems: Vec<String>,
}

impl VerificationHelper for Checker<'_> {
    fn get_certs(&mut self, _ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(self.trust.certs.clone())
    }

    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        for layer in structure.into_iter() {
            if let MessageLayer::SignatureGroup { results } = layer {
                for r in results {
                    match r {
                        Ok(good) => {
                            let fp = good.ka.cert().fingerprint().to_hex();
                            if self.trust.fingerprints().contains(&fp) {
                                self.signer = Some(fp);
                            } else {
                                self.problems
                                    .push(format!("signature by untrusted key {fp}"));
                            }
                        }
                        Err(e) => self.problems.push(e.to_string()),
                    }
                }
            }
        }
        if self.signer.is_some() {
            Ok(())
        } else {
            Err(openpgp::Error::BadSignature("no good signature by a trusted key".into()).into())
        }
    }
}
