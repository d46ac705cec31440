//! The S3 servers of the test services (moto and Garage), an SDK client to look at and
//! tamper with what the agent stored, and a TCP proxy that injects faults.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use aws_sdk_s3::Client;

use super::env_file;

#[derive(Clone, Debug)]
pub struct S3Server {
    pub kind: &'static str,
    pub url: String,
    pub region: String,
    pub bucket: String,
    pub key_id_file: PathBuf,
    pub secret_file: PathBuf,
}

fn need(key: &str) -> String {
    env_file().get(key).cloned().unwrap_or_else(|| {
        panic!("{key} is not in the test services' env file; run scripts/test-services.sh up")
    })
}

/// The shared Garage (bucket "backups"); tests isolate themselves with a key prefix.
pub fn garage() -> S3Server {
    S3Server {
        kind: "garage",
        url: need("BA_GARAGE_URL"),
        region: "garage".into(),
        bucket: need("BA_GARAGE_BUCKET"),
        key_id_file: need("BA_GARAGE_KEY_ID_FILE").into(),
        secret_file: need("BA_GARAGE_SECRET_FILE").into(),
    }
}

/// The shared moto server with a fresh bucket (optionally versioned / with object lock).
pub fn moto(dir: &std::path::Path, bucket: &str, lock: bool, versioned: bool) -> S3Server {
    moto_at(&need("BA_MOTO_URL"), dir, bucket, lock, versioned)
}

pub fn moto_at(
    url: &str,
    dir: &std::path::Path,
    bucket: &str,
    lock: bool,
    versioned: bool,
) -> S3Server {
    let key_id_file = dir.join("moto-key-id");
    let secret_file = dir.join("moto-secret");
    std::fs::write(&key_id_file, "testing").unwrap();
    std::fs::write(&secret_file, "testing-secret").unwrap();
    let s = S3Server {
        kind: "moto",
        url: url.into(),
        region: "us-east-1".into(),
        bucket: bucket.into(),
        key_id_file,
        secret_file,
    };
    let c = s.client();
    let b = bucket.to_string();
    block(async move {
        c.create_bucket()
            .bucket(&b)
            .object_lock_enabled_for_bucket(lock)
            .send()
            .await
            .expect("create bucket on moto");
        if versioned && !lock {
            c.put_bucket_versioning()
                .bucket(&b)
                .versioning_configuration(
                    aws_sdk_s3::types::VersioningConfiguration::builder()
                        .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                        .build(),
                )
                .send()
                .await
                .expect("versioning on moto");
        }
    });
    s
}

pub fn block<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(f)
}

impl S3Server {
    pub fn client(&self) -> Client {
        self.client_at(&self.url)
    }

    pub fn client_at(&self, url: &str) -> Client {
        let id = std::fs::read_to_string(&self.key_id_file).unwrap();
        let secret = std::fs::read_to_string(&self.secret_file).unwrap();
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(self.region.clone()))
            .endpoint_url(url)
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                id.trim(),
                secret.trim(),
                None,
                None,
                "test",
            ))
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .build();
        Client::from_conf(conf)
    }

    /// A [[store]] table for this server, under `key_prefix`, reached at `url`.
    pub fn store_toml(
        &self,
        name: &str,
        site: &str,
        key_prefix: &str,
        url: &str,
        extra: &str,
    ) -> String {
        format!(
            r#"
[[store]]
name = "{name}"
kind = "s3"
site = "{site}"
endpoint = "{url}"
bucket = "{bucket}"
region = "{region}"
path_style = true
key_prefix = "{key_prefix}"
access_key_id_file = {id:?}
secret_access_key_file = {secret:?}
part_size = "5MiB"
{extra}
"#,
            bucket = self.bucket,
            region = self.region,
            id = self.key_id_file,
            secret = self.secret_file,
        )
    }

    /// Keys under a prefix (recursive).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let (c, b, p) = (self.client(), self.bucket.clone(), prefix.to_string());
        block(async move {
            let mut v = Vec::new();
            let mut token = None;
            loop {
                let o = c
                    .list_objects_v2()
                    .bucket(&b)
                    .prefix(&p)
                    .set_continuation_token(token)
                    .send()
                    .await
                    .expect("list");
                v.extend(
                    o.contents()
                        .iter()
                        .filter_map(|x| x.key().map(String::from)),
                );
                match o.next_continuation_token() {
                    Some(t) if o.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            v.sort();
            v
        })
    }

    /// Pending multipart uploads under a prefix.
    pub fn uploads(&self, prefix: &str) -> Vec<String> {
        let (c, b, p) = (self.client(), self.bucket.clone(), prefix.to_string());
        block(async move {
            let o = c
                .list_multipart_uploads()
                .bucket(&b)
                .prefix(&p)
                .send()
                .await
                .expect("list uploads");
            o.uploads()
                .iter()
                .filter_map(|u| u.key().map(String::from))
                .collect()
        })
    }

    /// Every version and delete marker under a prefix.
    pub fn versions(&self, prefix: &str) -> Vec<String> {
        let (c, b, p) = (self.client(), self.bucket.clone(), prefix.to_string());
        block(async move {
            let o = c
                .list_object_versions()
                .bucket(&b)
                .prefix(&p)
                .send()
                .await
                .expect("list versions");
            let mut v: Vec<String> = o
                .versions()
                .iter()
                .filter_map(|x| x.key().map(|k| format!("{k} version")))
                .collect();
            v.extend(
                o.delete_markers()
                    .iter()
                    .filter_map(|x| x.key().map(|k| format!("{k} delete-marker"))),
            );
            v
        })
    }

    pub fn put(&self, key: &str, data: Vec<u8>) {
        let (c, b, k) = (self.client(), self.bucket.clone(), key.to_string());
        block(async move {
            c.put_object()
                .bucket(&b)
                .key(&k)
                .body(data.into())
                .send()
                .await
                .expect("put");
        });
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        let (c, b, k) = (self.client(), self.bucket.clone(), key.to_string());
        block(async move {
            let o = c.get_object().bucket(&b).key(&k).send().await.expect("get");
            o.body.collect().await.expect("body").into_bytes().to_vec()
        })
    }
}

/// A TCP proxy in front of an S3 server, for faults: pass, refuse (every connection is
/// cut, new ones closed at once), or flip one byte of the client->server stream at a
/// given offset of the total traffic.
pub struct Proxy {
    pub url: String,
    mode: Arc<AtomicU8>,
    flip_at: Arc<AtomicU64>,
    pub sent: Arc<AtomicU64>,
    _rt: tokio::runtime::Runtime,
}

pub const PASS: u8 = 0;
pub const REFUSE: u8 = 1;
pub const FLIP: u8 = 2;
/// Cut every connection that carries an UploadPart request (PUT ...?partNumber=...);
/// everything else (create, complete, abort, list) passes.
pub const REFUSE_PARTS: u8 = 3;

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let up = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let mode = Arc::new(AtomicU8::new(PASS));
        let flip_at = Arc::new(AtomicU64::new(u64::MAX));
        let sent = Arc::new(AtomicU64::new(0));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (m, f, s) = (mode.clone(), flip_at.clone(), sent.clone());
        rt.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if m.load(Ordering::SeqCst) == REFUSE {
                    drop(client);
                    continue;
                }
                let (m, f, s, up) = (m.clone(), f.clone(), s.clone(), up.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&up).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let m2 = m.clone();
                    let down = tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 65536];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if m2.load(Ordering::SeqCst) == REFUSE {
                                break;
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = cw.shutdown().await;
                    });
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if m.load(Ordering::SeqCst) == REFUSE {
                            break;
                        }
                        if m.load(Ordering::SeqCst) == REFUSE_PARTS
                            && buf[..n].windows(11).any(|w| w == b"partNumber=")
                        {
                            break;
                        }
                        let start = s.fetch_add(n as u64, Ordering::SeqCst);
                        if m.load(Ordering::SeqCst) == FLIP {
                            let at = f.load(Ordering::SeqCst);
                            if at >= start && at < start + n as u64 {
                                buf[(at - start) as usize] ^= 0x01;
                                m.store(PASS, Ordering::SeqCst);
                            }
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                    down.abort();
                });
            }
        });
        Proxy {
            url: format!("http://127.0.0.1:{port}"),
            mode,
            flip_at,
            sent,
            _rt: rt,
        }
    }

    pub fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// Flips one bit of the byte `offset` bytes from now in the client->server stream.
    pub fn flip_after(&self, offset: u64) {
        self.flip_at
            .store(self.sent.load(Ordering::SeqCst) + offset, Ordering::SeqCst);
        self.set(FLIP);
    }
}
