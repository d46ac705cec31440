//! The daemon as the tests run it: started with a config, its healthcheck, its HTTP
//! endpoints, waiting and stopping.

use std::io::Read;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::*;

pub fn start_daemon(setup: &Setup, src: &Server, args: &[&str]) -> Child {
    let cfg = setup.config(src);
    // Logs go to standard error: daemon.log; standard output (nothing) to daemon.out.
    let log = std::fs::File::create(setup.path("daemon.log")).unwrap();
    Command::new(agent_bin())
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .args(args)
        .env("BACKUP_AGENT_LOG_FORMAT", "json")
        .stderr(log)
        .stdout(std::fs::File::create(setup.path("daemon.out")).unwrap())
        .spawn()
        .unwrap()
}

pub fn healthcheck(setup: &Setup, src: &Server) -> (i32, String) {
    let cfg = setup.config(src);
    let t0 = Instant::now();
    let o = Command::new(agent_bin())
        .args(["--config", cfg.to_str().unwrap(), "healthcheck"])
        .output()
        .unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "healthcheck took {:?}",
        t0.elapsed()
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(out.lines().count(), 1, "one line: {out:?}");
    (o.status.code().unwrap(), out)
}

pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("GET {path} on 127.0.0.1:{port}: {e}"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let code = r.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = r
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Parses Prometheus text into (name{labels}, value).
pub fn metrics(port: u16) -> Vec<(String, f64)> {
    let (code, body) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (
                k.to_string(),
                v.parse::<f64>()
                    .unwrap_or_else(|_| panic!("bad sample {l}")),
            )
        })
        .collect()
}

pub fn metric(m: &[(String, f64)], key: &str) -> f64 {
    m.iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no {key} in {m:?}"))
        .1
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn sigterm(child: &Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
}
