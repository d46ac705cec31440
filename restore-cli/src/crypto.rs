//! Decryption and signature checking: the only place in the project that handles the DPO's
//! secret key. A message is accepted only if it is encrypted (SEIPD with MDC, or AEAD),
//! decrypts with the DPO key, and carries a good signature by one of the trusted agent
//! certificates, which come from the operator's configuration (pinned fingerprints), never
//! from the file itself.

use std::io::{self, IsTerminal, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use openpgp::cert::prelude::*;
use openpgp::crypto::{KeyPair, Password, SessionKey};
use openpgp::packet::{PKESK, SKESK};
use openpgp::parse::stream::{
    DecryptionHelper, DecryptorBuilder, MessageLayer, MessageStructure, VerificationHelper,
};
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::types::SymmetricAlgorithm;
use openpgp::{Fingerprint, KeyHandle};
use sequoia_openpgp as openpgp;

use backup_core::secret::read_secret_file;

/// The DPO's unlocked decryption keys.
#[derive(Clone)]
pub struct DpoKey {
    pub fingerprint: String,
    pairs: Vec<KeyPair>,
}

/// Loads the DPO secret key; unlocks it with the passphrase file or, on a terminal, a prompt.
pub fn load_dpo_key(path: &Path, passphrase_file: Option<&Path>) -> Result<DpoKey> {
    let policy = StandardPolicy::new();
    let cert = Cert::from_file(path)
        .with_context(|| format!("DPO key {}: cannot read an OpenPGP key", path.display()))?;
    if !cert.is_tsk() {
        bail!("DPO key {}: this is a public certificate; restore needs the DPO's secret key (gpg --export-secret-keys)", path.display());
    }
    let vc = cert.with_policy(&policy, None).with_context(|| {
        format!(
            "DPO key {}: not valid under the standard policy",
            path.display()
        )
    })?;
    // Expired keys still decrypt old backups, so no alive() filter here.
    let mut keys = Vec::new();
    for ka in vc.keys().supported().secret() {
        let flags = ka
            .key_flags()
            .unwrap_or_else(openpgp::types::KeyFlags::empty);
        if flags.for_storage_encryption() || flags.for_transport_encryption() {
            keys.push(ka.key().clone());
        }
    }
    if keys.is_empty() {
        bail!(
            "DPO key {} ({}): no secret encryption subkey in this file",
            path.display(),
            cert.fingerprint()
        );
    }
    let mut password: Option<Password> = None;
    let mut pairs = Vec::new();
    for key in keys {
        let key = if key.has_unencrypted_secret() {
            key
        } else {
            if password.is_none() {
                password = Some(match passphrase_file {
                    Some(f) => Password::from(read_secret_file(f, "DPO passphrase file")?.expose()),
                    None if io::stdin().is_terminal() => {
                        let p = rpassword::prompt_password(format!("Passphrase for DPO key {}: ", cert.fingerprint()))?;
                        Password::from(p)
                    }
                    None => bail!(
                        "DPO key {} is passphrase-protected; give --dpo-passphrase-file (or restore.dpo_passphrase_file), or run on a terminal to be asked",
                        cert.fingerprint()
                    ),
                });
            }
            key.decrypt_secret(password.as_ref().expect("set above"))
                .map_err(|_| anyhow!("DPO key {}: wrong passphrase", cert.fingerprint()))?
        };
        pairs.push(key.into_keypair().context("unusable DPO key")?);
    }
    Ok(DpoKey {
        fingerprint: cert.fingerprint().to_hex(),
        pairs,
    })
}

/// Agent certificates whose signatures are accepted.
#[derive(Clone)]
pub struct TrustedSigners {
    certs: Vec<Cert>,
}

impl TrustedSigners {
    /// Loads agent certificates; if `pins` is non-empty, only certificates whose primary
    /// fingerprint is pinned are trusted, and every pin must be matched by a certificate.
    pub fn load(files: &[&Path], pins: &[String]) -> Result<TrustedSigners> {
        let mut certs = Vec::new();
        for f in files {
            // A file may hold several certificates (both datacenters' agents, say).
            let parsed: Vec<Cert> = CertParser::from_file(f)
                .and_then(|p| p.collect::<openpgp::Result<Vec<_>>>())
                .with_context(|| format!("agent certificate {}: cannot read", f.display()))?;
            if parsed.is_empty() {
                bail!(
                    "agent certificate {}: the file holds no certificate",
                    f.display()
                );
            }
            certs.extend(parsed);
        }
        if certs.is_empty() {
            bail!("no trusted agent certificate: give --agent-cert FILE (or restore.agent_certificates in the config) so the signature can be checked");
        }
        if !pins.is_empty() {
            for p in pins {
                if !certs.iter().any(|c| c.fingerprint().to_hex() == *p) {
                    bail!(
                        "pinned agent fingerprint {p} matches none of the given agent certificates"
                    );
                }
            }
            certs.retain(|c| pins.contains(&c.fingerprint().to_hex()));
        }
        Ok(TrustedSigners { certs })
    }

    /// The same certificates, for checking the detached signatures of manifests.
    pub fn trust(&self) -> backup_core::signature::Trust {
        backup_core::signature::Trust::new(self.certs.clone())
    }

    pub fn fingerprints(&self) -> Vec<String> {
        self.certs
            .iter()
            .map(|c| c.fingerprint().to_hex())
            .collect()
    }
}

/// What the message proved about itself once read to the end.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub encrypted_to: Vec<String>,
    pub decrypted_with: Option<String>,
    pub sym_algo: Option<String>,
    pub aead: bool,
    pub signer: Option<String>,
    pub checked: bool,
}

struct Helper {
    dpo: Arc<Mutex<Vec<KeyPair>>>,
    trusted: TrustedSigners,
    outcome: Arc<Mutex<Outcome>>,
}

impl VerificationHelper for Helper {
    fn get_certs(&mut self, _ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(self.trusted.certs.clone())
    }

    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        let mut encrypted = false;
        let mut signer = None;
        let mut errors = Vec::new();
        for layer in structure.into_iter() {
            match layer {
                MessageLayer::Encryption {
                    sym_algo,
                    aead_algo,
                } => {
                    encrypted = true;
                    let mut o = self.outcome.lock().expect("lock");
                    o.sym_algo = Some(sym_algo.to_string());
                    o.aead = aead_algo.is_some();
                }
                MessageLayer::Compression { .. } => {}
                MessageLayer::SignatureGroup { results } => {
                    for r in results {
                        match r {
                            Ok(good) => {
                                let fp = good.ka.cert().fingerprint().to_hex();
                                if self.trusted.fingerprints().contains(&fp) {
                                    signer = Some(fp);
                                } else {
                                    errors.push(format!("signature by untrusted key {fp}"));
                                }
                            }
                            Err(e) => errors.push(e.to_string()),
                        }
                    }
                }
            }
        }
        if !encrypted {
            return Err(anyhow!(
                "the message is not encrypted; a backup is always encrypted to the DPO"
            ));
        }
        match signer {
            Some(fp) => {
                let mut o = self.outcome.lock().expect("lock");
                o.signer = Some(fp);
                o.checked = true;
                Ok(())
            }
            None => Err(anyhow!(
                "no good signature from a trusted agent key (trusted: {}){}{}",
                self.trusted.fingerprints().join(", "),
                if errors.is_empty() {
                    "; the message carries no signature"
                } else {
                    "; found: "
                },
                errors.join("; ")
            )),
        }
    }
}

impl DecryptionHelper for Helper {
    fn decrypt(
        &mut self,
        pkesks: &[PKESK],
        _skesks: &[SKESK],
        sym_algo: Option<SymmetricAlgorithm>,
        decrypt: &mut dyn FnMut(Option<SymmetricAlgorithm>, &SessionKey) -> bool,
    ) -> openpgp::Result<Option<Cert>> {
        let recipients: Vec<String> = pkesks
            .iter()
            .map(|p| {
                p.recipient()
                    .map(|r| r.to_hex())
                    .unwrap_or_else(|| "anonymous".into())
            })
            .collect();
        self.outcome.lock().expect("lock").encrypted_to = recipients.clone();
        let mut pairs = self.dpo.lock().expect("lock");
        for pkesk in pkesks {
            for kp in pairs.iter_mut() {
                let kh = kp.public().key_handle();
                let fp: Fingerprint = kp.public().fingerprint();
                if let Some(r) = pkesk.recipient() {
                    if !r.aliases(&kh) {
                        continue;
                    }
                }
                if let Some((algo, sk)) = pkesk.decrypt(kp, sym_algo) {
                    if decrypt(algo, &sk) {
                        self.outcome.lock().expect("lock").decrypted_with = Some(fp.to_hex());
                        return Ok(None);
                    }
                }
            }
        }
        Err(anyhow!(
            "the DPO key cannot decrypt this message: it is encrypted to {}, and the given key has none of these subkeys (wrong DPO key?)",
            recipients.join(", ")
        ))
    }
}

/// A reader of the decrypted literal data. Reading it to the end checks the MDC and the
/// signature; an error at any point means the message must not be used.
pub struct Opened {
    inner: openpgp::parse::stream::Decryptor<'static, Helper>,
    outcome: Arc<Mutex<Outcome>>,
}

static POLICY: std::sync::LazyLock<StandardPolicy<'static>> =
    std::sync::LazyLock::new(StandardPolicy::new);

pub fn open<R: Read + Send + Sync + 'static>(
    r: R,
    dpo: &DpoKey,
    trusted: &TrustedSigners,
) -> Result<Opened> {
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let helper = Helper {
        dpo: Arc::new(Mutex::new(dpo.pairs.clone())),
        trusted: trusted.clone(),
        outcome: outcome.clone(),
    };
    // A small buffer: sequoia would otherwise hold 25 MiB back until it has seen the
    // signature. Nothing acts on pass-1 data, and pass 2 runs only after pass 1 proved the
    // whole message, so releasing data early is safe here and keeps memory flat.
    let d = DecryptorBuilder::from_reader(r)
        .map_err(|e| anyhow!("not an OpenPGP message: {e}"))?
        .buffer_size(256 * 1024)
        .with_policy(&*POLICY, None, helper)
        .map_err(|e| anyhow!("{e:#}"))?;
    Ok(Opened { inner: d, outcome })
}

impl Opened {
    /// After the end of the data: the outcome, or an error if the message was not fully
    /// processed and checked.
    pub fn finish(mut self) -> Result<Outcome> {
        let mut rest = Vec::new();
        self.inner
            .read_to_end(&mut rest)
            .map_err(|e| anyhow!("{e}"))?;
        if !rest.is_empty() {
            bail!("data continues after the end of the gzip stream");
        }
        if !self.inner.message_processed() {
            bail!("the OpenPGP message is incomplete");
        }
        let o = self.outcome.lock().expect("lock").clone();
        if !o.checked {
            bail!("the signature was not checked");
        }
        Ok(o)
    }
}

impl Read for Opened {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}
