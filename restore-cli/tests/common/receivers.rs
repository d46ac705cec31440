//! Real receivers for alerts: an HTTP server on loopback (in the test) and the aiosmtpd
//! SMTP sink (scripts/smtp_sink.py in the test-services venv).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Ok,
    Fail500,
    Hang,
}

#[derive(Clone, Debug)]
pub struct Request {
    pub path: String,
    pub headers: Vec<String>,
    pub body: String,
}

/// An HTTP receiver that records every request and answers as its mode says.
pub struct Receiver {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<Request>>>,
    pub mode: Arc<Mutex<Mode>>,
}

impl Receiver {
    pub fn start(mode: Mode) -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(Mutex::new(mode));
        let (r2, m2) = (requests.clone(), mode.clone());
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let (r3, m3) = (r2.clone(), m2.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let mut headers = Vec::new();
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        let h = h.trim_end().to_string();
                        if h.is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        headers.push(h);
                    }
                    let mut body = vec![0u8; len];
                    reader.read_exact(&mut body).unwrap();
                    r3.lock().unwrap().push(Request {
                        path,
                        headers,
                        body: String::from_utf8_lossy(&body).into_owned(),
                    });
                    let mode = *m3.lock().unwrap();
                    let mut c = conn;
                    match mode {
                        Mode::Ok => {
                            let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
                        }
                        Mode::Fail500 => {
                            let _ = c.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                        }
                        Mode::Hang => std::thread::sleep(Duration::from_secs(120)),
                    }
                });
            }
        });
        Receiver {
            port,
            requests,
            mode,
        }
    }

    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null))
            .collect()
    }

    pub fn events(&self) -> Vec<String> {
        self.bodies()
            .iter()
            .map(|b| b["event"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// Waits until a request with this event arrived.
    pub fn wait_event(&self, event: &str, timeout: Duration) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            if let Some(b) = self.bodies().into_iter().find(|b| b["event"] == event) {
                return b;
            }
            assert!(
                t0.elapsed() < timeout,
                "no {event} webhook within {timeout:?}; got {:?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The aiosmtpd sink, as a child process.
pub struct SmtpSink {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

pub fn python() -> PathBuf {
    let dir = std::env::var("BA_TEST_DIR").unwrap_or_else(|_| "/var/tmp/backup-agent-test".into());
    let p = Path::new(&dir).join("venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing; run scripts/test-services.sh up (it creates the venv with aiosmtpd)",
        p.display()
    );
    p
}

impl SmtpSink {
    pub fn start(dir: &Path, tls: Option<(&Path, &Path)>, auth: Option<(&str, &Path)>) -> SmtpSink {
        let port = free_port();
        let script = super::repo_root().join("scripts/smtp_sink.py");
        let mut c = Command::new(python());
        c.arg(script)
            .args(["--port", &port.to_string(), "--dir"])
            .arg(dir);
        if let Some((cert, key)) = tls {
            c.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        if let Some((user, pwf)) = auth {
            c.args(["--user", user, "--password-file"]).arg(pwf);
        }
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the SMTP sink did not start");
        SmtpSink {
            port,
            dir: dir.to_path_buf(),
            child,
        }
    }

    pub fn mails(&self) -> Vec<String> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v.iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    pub fn wait_mail(&self, subject: &str, timeout: Duration) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(m) = self
                .mails()
                .into_iter()
                .find(|m| m.contains(&format!("Subject: {subject}")))
            {
                return m;
            }
            assert!(
                t0.elapsed() < timeout,
                "no mail with subject {subject:?} within {timeout:?}; got {} mails",
                self.mails().len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway CA and a server certificate for 127.0.0.1 and localhost signed by it, made
/// with openssl. Returns (CA certificate, server certificate, server key).
pub fn test_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    let run = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=backup-agent test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
    ]);
    std::fs::write(
        p("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}
