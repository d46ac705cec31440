//! The S3 client: building it from the configuration (endpoint, region, path style,
//! credentials, TLS), running SDK calls from blocking code, and its error messages.

use std::sync::mpsc as std_mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use base64::Engine;
use chrono::{DateTime, Utc};

use crate::config::{ChecksumMode, S3Config, S3Credentials};
use crate::secret::read_secret_file;
use crate::store::StoreError;

use super::*;

pub(super) fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-io")
            .enable_all()
            .build()
            .expect("the S3 runtime starts")
    })
}

/// Runs a future on the S3 runtime and waits for it (from any thread).
pub(super) fn run<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std_mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().expect("the S3 task reports back")
}

/// One line for an SDK error: the S3 error code and message, or the HTTP status, or the
/// chain of causes (connection refused, timeout, TLS...), each by its Display, never the
/// SDK's debug structure; with what to check when the cause is a common one.
pub(super) fn sdk_message<E, R>(e: &SdkError<E, R>) -> String
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug + HttpStatus,
{
    let status = status_of(e);
    let said = match e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            match (err.code(), err.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_string(),
                _ => match status {
                    Some(s) => format!("the server answered HTTP {s}"),
                    None => causes(e),
                },
            }
        }
        SdkError::TimeoutError(_) => "no answer in time (timeout)".to_string(),
        _ => causes(e),
    };
    let code = match e {
        SdkError::ServiceError(se) => se.err().code(),
        _ => None,
    };
    match hint(status, code, &said) {
        Some(h) => format!("{said}; {h}"),
        None => said,
    }
}

/// The error and its causes, by Display, joined; repeated parts said once.
fn causes(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cur {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = c.source();
    }
    parts.join(": ")
}

/// What to check, for the causes operators meet.
fn hint(status: Option<u16>, code: Option<&str>, said: &str) -> Option<&'static str> {
    match (status, code) {
        (Some(403), _)
        | (_, Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch")) => Some(
            "access denied: check the store's access key id and secret (and the bucket policy)",
        ),
        (_, Some("NoSuchBucket")) => Some("check the bucket name and that it exists"),
        (Some(404), _) if code.is_none() => None,
        (Some(s), _) if s >= 500 => Some("the S3 server failed; check its health and logs"),
        _ if said.contains("Connection refused") => Some(
            "nothing listens at the endpoint: check the endpoint URL and that the S3 server runs",
        ),
        _ if said.contains("dns error") || said.contains("failed to lookup") => {
            Some("the endpoint's host name does not resolve: check the endpoint URL")
        }
        _ if said.contains("certificate") => {
            Some("TLS: check the endpoint's certificate, or give the store's ca_file")
        }
        _ => None,
    }
}

/// An S3 call that failed, as the server or the connection described it: the S3 error
/// code (e.g. `AccessDenied`) and HTTP status when the server answered, and one line of
/// text (never the SDK's debug structure).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct S3Failure {
    pub code: Option<String>,
    pub status: Option<u16>,
    pub message: String,
}

impl S3Failure {
    /// From an SDK error.
    pub(super) fn of<E, R>(e: &SdkError<E, R>) -> S3Failure
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
        R: std::fmt::Debug + HttpStatus,
    {
        let code = match e {
            SdkError::ServiceError(se) => se.err().code().map(String::from),
            _ => None,
        };
        S3Failure {
            code,
            status: status_of(e),
            message: sdk_message(e),
        }
    }

    /// A failure found on our side (no server answer to report).
    pub(super) fn msg(message: impl Into<String>) -> S3Failure {
        S3Failure {
            code: None,
            status: None,
            message: message.into(),
        }
    }

    /// The same failure, its message prefixed with `what`.
    pub(super) fn context(self, what: &str) -> S3Failure {
        S3Failure {
            message: format!("{what}: {}", self.message),
            ..self
        }
    }
}

pub(super) fn status_of<E, R>(e: &SdkError<E, R>) -> Option<u16>
where
    R: HttpStatus,
{
    e.raw_response().map(|r| r.status_code())
}

/// The HTTP status of a raw response (the SDK's response type).
pub(super) trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

pub(super) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(super) fn to_chrono(t: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

impl S3Store {
    pub fn new(name: &str, cfg: &S3Config) -> Result<S3Store, StoreError> {
        let err = |message: String| StoreError::Remote {
            store: name.into(),
            action: "configuring",
            key: format!("bucket {}", cfg.bucket),
            message,
        };
        let creds = match &cfg.credentials {
            S3Credentials::Files {
                access_key_id_file,
                secret_access_key_file,
            } => {
                let id = read_secret_file(&access_key_id_file.path, &access_key_id_file.key)
                    .map_err(|e| err(e.to_string()))?;
                let secret =
                    read_secret_file(&secret_access_key_file.path, &secret_access_key_file.key)
                        .map_err(|e| err(e.to_string()))?;
                Some(aws_sdk_s3::config::Credentials::new(
                    id.expose().trim(),
                    secret.expose().trim(),
                    None,
                    None,
                    "backup-agent-files",
                ))
            }
            S3Credentials::DefaultChain => None,
        };
        let http_client = match &cfg.ca_file {
            Some(ca) => {
                let pem = std::fs::read(&ca.path).map_err(|e| {
                    err(format!(
                        "{} ({}): cannot read CA file: {e}",
                        ca.key,
                        ca.path.display()
                    ))
                })?;
                use aws_smithy_http_client::tls;
                let ctx = tls::TlsContext::builder()
                    .with_trust_store(tls::TrustStore::default().with_pem_certificate(pem))
                    .build()
                    .map_err(|e| err(format!("{}: {e}", ca.key)))?;
                Some(
                    aws_smithy_http_client::Builder::new()
                        .tls_provider(tls::Provider::Rustls(
                            tls::rustls_provider::CryptoMode::Ring,
                        ))
                        .tls_context(ctx)
                        .build_https(),
                )
            }
            None => None,
        };
        let region = cfg.region.clone();
        let timeout = cfg.timeout;
        let sdk = run(async move {
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new(region))
                .timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(10))
                        .operation_attempt_timeout(timeout)
                        .build(),
                )
                .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3));
            loader = match creds {
                Some(c) => loader.credentials_provider(c),
                None => {
                    use aws_config::meta::credentials::CredentialsProviderChain;
                    // The default chain minus environment variables: no static secret
                    // from the environment (CONTRACT: secrets come from files).
                    let chain = CredentialsProviderChain::first_try(
                        "Profile",
                        aws_config::profile::ProfileFileCredentialsProvider::builder().build(),
                    )
                    .or_else(
                        "WebIdentityToken",
                        aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder()
                            .build(),
                    )
                    .or_else(
                        "EcsContainer",
                        aws_config::ecs::EcsCredentialsProvider::builder().build(),
                    )
                    .or_else(
                        "Ec2InstanceMetadata",
                        aws_config::imds::credentials::ImdsCredentialsProvider::builder().build(),
                    );
                    loader.credentials_provider(chain)
                }
            };
            if let Some(h) = http_client {
                loader = loader.http_client(h);
            }
            loader.load().await
        });
        let mut b = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(cfg.path_style);
        if let Some(ep) = &cfg.endpoint {
            b = b.endpoint_url(ep);
        }
        if cfg.checksum != ChecksumMode::Crc32 {
            // Our own SHA-256 (or none): the SDK adds its CRC only where an operation
            // requires a checksum.
            b = b
                .request_checksum_calculation(
                    aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                )
                .response_checksum_validation(
                    aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
                );
        }
        Ok(S3Store {
            name: name.into(),
            endpoint: cfg.endpoint.clone().unwrap_or_else(|| "AWS S3".to_string()),
            bucket: cfg.bucket.clone(),
            key_prefix: cfg.key_prefix.clone(),
            part_size: cfg.part_size as usize,
            parts_in_flight: cfg.parts_in_flight,
            checksum: cfg.checksum,
            lock: cfg.object_lock,
            client: Client::from_conf(b.build()),
        })
    }

    pub(super) fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.key_prefix)
    }

    pub(super) fn remote(
        &self,
        action: &'static str,
        key: &str,
        failure: impl std::fmt::Display,
    ) -> StoreError {
        let message = format!("{failure} (endpoint {})", self.endpoint);
        StoreError::Remote {
            store: self.name.clone(),
            action,
            key: key.into(),
            message,
        }
    }
}
