//! OpenPGP on the agent's side: checking the DPO's public certificates and the agent's
//! signing key, and sealing a stream (sign, then encrypt). This is the only module of the
//! agent that uses sequoia-openpgp, and it has no decryption code: the agent cannot read
//! its own backups.
//!
//! Output is what GnuPG 2.2 reads: SEIPD version 1 with MDC, AES-256, v4 PKESKs, one-pass
//! signature inside the encryption, binary literal data.

use std::io::{self, Write};
use std::time::SystemTime;

use openpgp::cert::prelude::*;
use openpgp::crypto::{KeyPair, Password};
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Armorer, Encryptor, LiteralWriter, Message, Recipient, Signer};
use openpgp::types::{DataFormat, Features, HashAlgorithm, SymmetricAlgorithm};
use sequoia_openpgp as openpgp;

use backup_core::config::{ConfigPath, EncryptionConfig};
use backup_core::secret::read_secret_file;
use backup_core::signature::Trust;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("{key}: {path}: {message}")]
    Key {
        key: String,
        path: String,
        message: String,
    },
    #[error("OpenPGP encryption failed: {0}")]
    Seal(String),
}

fn key_err(cp: &ConfigPath, message: impl Into<String>) -> CryptoError {
    CryptoError::Key {
        key: cp.key.clone(),
        path: cp.path.display().to_string(),
        message: message.into(),
    }
}

/// Facts about a usable DPO certificate.
#[derive(Debug, Clone)]
pub struct DpoCertInfo {
    pub fingerprint: String,
    /// Fingerprints of the encryption subkeys a message is encrypted to.
    pub encryption_subkeys: Vec<String>,
    /// When the certificate (or its last encryption subkey) stops being usable.
    pub expires_at: Option<SystemTime>,
    pub user_ids: Vec<String>,
}

/// Reads and checks a DPO certificate file, which may hold several certificates (a
/// keyring, e.g. two DPOs exported together): each must be public only, valid under the
/// standard policy now, not expired or revoked, with at least one encryption subkey, v4
/// (GnuPG 2.2 reads v4).
pub fn check_dpo_certificates(cp: &ConfigPath) -> Result<Vec<(Cert, DpoCertInfo)>, CryptoError> {
    let read_err = |e: anyhow::Error| {
        key_err(cp, format!("cannot read an OpenPGP certificate: {e}; export it with `gpg --export --armor FINGERPRINT`"))
    };
    let certs: Vec<Cert> = CertParser::from_file(&cp.path)
        .map_err(read_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    if certs.is_empty() {
        return Err(key_err(cp, "the file holds no OpenPGP certificate; export it with `gpg --export --armor FINGERPRINT`"));
    }
    certs.into_iter().map(|c| check_one(cp, c)).collect()
}

fn check_one(cp: &ConfigPath, cert: Cert) -> Result<(Cert, DpoCertInfo), CryptoError> {
    let policy = StandardPolicy::new();
    if cert.is_tsk() {
        return Err(key_err(
            cp,
            "this file holds SECRET key material; the agent must only have public certificates \
             (export it with `gpg --export --armor`, and keep the secret key away from this host)",
        ));
    }
    if cert.primary_key().key().version() != 4 {
        return Err(key_err(
            cp,
            "only version 4 certificates are accepted, because GnuPG 2.2 cannot decrypt to v6 keys",
        ));
    }
    let vc = cert.with_policy(&policy, None).map_err(|e| {
        key_err(
            cp,
            format!("certificate {} is not valid: {e}", cert.fingerprint()),
        )
    })?;
    if let Err(e) = vc.alive() {
        return Err(key_err(cp, format!("certificate {} has expired or is not yet valid ({e}); ask the DPO for a renewed certificate", cert.fingerprint())));
    }
    if let openpgp::types::RevocationStatus::Revoked(_) = vc.revocation_status() {
        return Err(key_err(
            cp,
            format!("certificate {} is revoked", cert.fingerprint()),
        ));
    }
    let subkeys: Vec<_> = vc
        .keys()
        .supported()
        .alive()
        .revoked(false)
        .for_storage_encryption()
        .for_transport_encryption()
        .collect();
    let subkeys = if subkeys.is_empty() {
        vc.keys()
            .supported()
            .alive()
            .revoked(false)
            .for_storage_encryption()
            .collect::<Vec<_>>()
    } else {
        subkeys
    };
    if subkeys.is_empty() {
        return Err(key_err(
            cp,
            format!("certificate {} has no usable encryption subkey (none alive, unrevoked and flagged for encryption)", cert.fingerprint()),
        ));
    }
    let cert_exp = vc.primary_key().key_expiration_time();
    let sub_exp = subkeys
        .iter()
        .map(|k| k.key_expiration_time())
        .max_by(|a, b| match (a, b) {
            (None, None) => std::cmp::Ordering::Equal,
            (None, _) => std::cmp::Ordering::Greater,
            (_, None) => std::cmp::Ordering::Less,
            (Some(a), Some(b)) => a.cmp(b),
        });
    let expires_at = match (cert_exp, sub_exp.flatten()) {
        (None, x) | (x, None) => x,
        (Some(a), Some(b)) => Some(a.min(b)),
    };
    let info = DpoCertInfo {
        fingerprint: cert.fingerprint().to_hex(),
        encryption_subkeys: subkeys
            .iter()
            .map(|k| k.key().fingerprint().to_hex())
            .collect(),
        expires_at,
        user_ids: vc
            .userids()
            .map(|u| String::from_utf8_lossy(u.userid().value()).into_owned())
            .collect(),
    };
    Ok((cert, info))
}

/// The agent's signing key, unlocked and ready to sign.
pub struct SigningKey {
    pair: KeyPair,
    cert_fingerprint: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.cert_fingerprint)
    }
}

impl SigningKey {
    pub fn fingerprint(&self) -> &str {
        &self.cert_fingerprint
    }
}

/// Reads the agent's secret key and unlocks its signing-capable key.
pub fn load_signing_key(
    cp: &ConfigPath,
    passphrase: Option<&ConfigPath>,
) -> Result<SigningKey, CryptoError> {
    let policy = StandardPolicy::new();
    let cert = Cert::from_file(&cp.path)
        .map_err(|e| key_err(cp, format!("cannot read an OpenPGP secret key: {e}")))?;
    if !cert.is_tsk() {
        return Err(key_err(
            cp,
            "this is a public certificate, not a secret key; the agent signs with its own secret key \
             (export it with `gpg --export-secret-keys --armor`)",
        ));
    }
    let vc = cert
        .with_policy(&policy, None)
        .map_err(|e| key_err(cp, format!("key {} is not valid: {e}", cert.fingerprint())))?;
    if let Err(e) = vc.alive() {
        return Err(key_err(
            cp,
            format!(
                "key {} has expired ({e}); make a new agent key",
                cert.fingerprint()
            ),
        ));
    }
    let ka = vc
        .keys()
        .supported()
        .alive()
        .revoked(false)
        .for_signing()
        .secret()
        .next()
        .ok_or_else(|| {
            key_err(
                cp,
                format!(
                    "key {} has no usable secret signing key",
                    cert.fingerprint()
                ),
            )
        })?;
    let mut key = ka.key().clone();
    if !key.has_unencrypted_secret() {
        let pp = passphrase.ok_or_else(|| {
            key_err(cp, "the signing key is passphrase-protected; set encryption.signing_key_passphrase_file")
        })?;
        let secret = read_secret_file(&pp.path, &pp.key).map_err(|e| CryptoError::Key {
            key: pp.key.clone(),
            path: pp.path.display().to_string(),
            message: e.to_string(),
        })?;
        let password = Password::from(secret.expose());
        key = key
            .decrypt_secret(&password)
            .map_err(|_| key_err(cp, "cannot unlock the signing key: wrong passphrase"))?;
    }
    let pair = key
        .into_keypair()
        .map_err(|e| key_err(cp, format!("unusable signing key: {e}")))?;
    Ok(SigningKey {
        pair,
        cert_fingerprint: cert.fingerprint().to_hex(),
    })
}

/// Everything needed to seal backups: the DPO certificates, the tenants' certificates
/// (per source) and the agent's key.
pub struct SealingKeys {
    dpo: Vec<Cert>,
    pub dpo_info: Vec<DpoCertInfo>,
    /// Per source with `tenant_certificates`: the tenant's certificates (a source dumps the
    /// tenant's database alone, see the config's validation).
    tenants: std::collections::HashMap<String, (Vec<Cert>, Vec<DpoCertInfo>)>,
    signer: SigningKey,
}

impl SealingKeys {
    pub fn load(enc: &EncryptionConfig) -> Result<SealingKeys, CryptoError> {
        let mut dpo = Vec::new();
        let mut dpo_info = Vec::new();
        for cp in &enc.dpo_certificates {
            for (c, i) in check_dpo_certificates(cp)? {
                dpo.push(c);
                dpo_info.push(i);
            }
        }
        let signer = load_signing_key(
            &enc.signing_key_file,
            enc.signing_key_passphrase_file.as_ref(),
        )?;
        Ok(SealingKeys {
            dpo,
            dpo_info,
            tenants: Default::default(),
            signer,
        })
    }

    /// Adds the tenants' certificates of `sources` (checked like the DPO's: public only,
    /// valid, with an encryption subkey).
    pub fn with_tenants(
        mut self,
        sources: &[backup_core::config::SourceConfig],
    ) -> Result<SealingKeys, CryptoError> {
        for src in sources {
            for (db, cp) in &src.tenant_certificates {
                let e = self.tenants.entry(src.name_for(db)).or_default();
                for (c, i) in check_dpo_certificates(cp)? {
                    e.0.push(c);
                    e.1.push(i);
                }
            }
        }
        Ok(self)
    }

    /// Fingerprints of the tenant encryption subkeys a backup of `source` is also
    /// encrypted to.
    pub fn tenant_fingerprints(&self, source: &str) -> Vec<String> {
        self.tenants
            .get(source)
            .map(|(_, info)| {
                info.iter()
                    .flat_map(|i| i.encryption_subkeys.iter().cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn signer_fingerprint(&self) -> &str {
        self.signer.fingerprint()
    }

    /// A detached, ASCII-armoured signature over `data` by the agent's key (`gpg --verify
    /// SIG DATA` checks it).
    pub fn sign_detached(&self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let err = |e: anyhow::Error| CryptoError::Seal(format!("signing the manifest: {e}"));
        let mut out = Vec::new();
        let message = Message::new(&mut out);
        let message = Armorer::new(message)
            .kind(openpgp::armor::Kind::Signature)
            .build()
            .map_err(err)?;
        let mut signer = Signer::new(message, self.signer.pair.clone())
            .map_err(err)?
            .detached()
            .build()
            .map_err(err)?;
        signer
            .write_all(data)
            .map_err(|e| err(anyhow::Error::from(e)))?;
        signer.finalize().map_err(err)?;
        Ok(out)
    }

    /// Fingerprints of all encryption subkeys a message is encrypted to.
    pub fn recipient_fingerprints(&self) -> Vec<String> {
        self.dpo_info
            .iter()
            .flat_map(|i| i.encryption_subkeys.iter().cloned())
            .collect()
    }

    /// Starts a sealed message written to `sink`, encrypted to the DPO only (binary log
    /// segments: the server's log holds every tenant's transactions).
    pub fn seal<'a, W: Write + Send + Sync + 'a>(
        &'a self,
        sink: W,
    ) -> Result<Sealer<'a>, CryptoError> {
        self.seal_for(sink, None)
    }

    /// Starts a sealed message written to `sink`: whatever is written to the returned
    /// writer is signed, encrypted (to the DPO, and to the tenant of `source` if it has
    /// one), and becomes binary literal data.
    pub fn seal_for<'a, W: Write + Send + Sync + 'a>(
        &'a self,
        sink: W,
        source: Option<&str>,
    ) -> Result<Sealer<'a>, CryptoError> {
        let policy = StandardPolicy::new();
        let seal_err = |e: anyhow::Error| CryptoError::Seal(e.to_string());
        let tenant: &[Cert] = source
            .and_then(|s| self.tenants.get(s))
            .map_or(&[], |(c, _)| c.as_slice());
        let certs: Vec<&Cert> = self.dpo.iter().chain(tenant.iter()).collect();
        let mut recipients = Vec::new();
        for &cert in &certs {
            let vc = cert.with_policy(&policy, None).map_err(seal_err)?;
            for ka in vc
                .keys()
                .supported()
                .alive()
                .revoked(false)
                .for_storage_encryption()
            {
                recipients.push(ka.key().fingerprint());
            }
            for ka in vc
                .keys()
                .supported()
                .alive()
                .revoked(false)
                .for_transport_encryption()
            {
                let f = ka.key().fingerprint();
                if !recipients.contains(&f) {
                    recipients.push(f);
                }
            }
        }
        // Build the recipient list from the certificates' keys, marking every recipient as
        // SEIPDv1-only so that sequoia never picks SEIPDv2/AEAD, which GnuPG 2.2 cannot read.
        let mut rcpts: Vec<Recipient> = Vec::new();
        for &cert in &certs {
            for ka in cert.keys() {
                if recipients.contains(&ka.key().fingerprint()) {
                    let features = Features::empty().set_seipdv1();
                    rcpts.push(Recipient::new(
                        features,
                        openpgp::KeyHandle::from(ka.key().keyid()),
                        ka.key(),
                    ));
                }
            }
        }
        if rcpts.is_empty() {
            return Err(CryptoError::Seal(
                "no DPO encryption subkey is usable".into(),
            ));
        }
        let message = Message::new(sink);
        let message = Encryptor::for_recipients(message, rcpts)
            .symmetric_algo(SymmetricAlgorithm::AES256)
            .build()
            .map_err(seal_err)?;
        // SHA-256: as strong here as SHA-512, and several times faster where the CPU has
        // SHA instructions (the whole dump is hashed, here and by every reader).
        let message = Signer::new(message, self.signer.pair.clone())
            .map_err(seal_err)?
            .hash_algo(HashAlgorithm::SHA256)
            .map_err(seal_err)?
            .build()
            .map_err(seal_err)?;
        let message = LiteralWriter::new(message)
            .format(DataFormat::Binary)
            .build()
            .map_err(seal_err)?;
        Ok(Sealer { inner: message })
    }
}

/// The writing end of a sealed message. Dropping it without [`Sealer::finish`] leaves an
/// incomplete message (no signature, no MDC), which no reader accepts.
pub struct Sealer<'a> {
    inner: Message<'a>,
}

impl Sealer<'_> {
    /// Writes the signature and the MDC and closes the message.
    pub fn finish(self) -> Result<(), CryptoError> {
        self.inner
            .finalize()
            .map_err(|e| CryptoError::Seal(e.to_string()))
    }
}

impl Write for Sealer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The certificates whose manifest signatures this agent accepts: its own key's and the
/// configured peers' (`encryption.peer_certificates`: the other agents writing to the same
/// stores). Only public parts are read; no passphrase is needed.
pub fn manifest_trust(enc: Option<&EncryptionConfig>) -> Result<Trust, CryptoError> {
    let enc = enc.ok_or_else(|| CryptoError::Key {
        key: "encryption".into(),
        path: "the configuration".into(),
        message: "no [encryption] section, so no key to check manifest signatures with".into(),
    })?;
    let mut trust = Trust::default();
    for cp in std::iter::once(&enc.signing_key_file).chain(enc.peer_certificates.iter()) {
        trust.add(Trust::read_file(&cp.path).map_err(|m| CryptoError::Key {
            key: cp.key.clone(),
            path: cp.path.display().to_string(),
            message: m,
        })?);
    }
    Ok(trust)
}
