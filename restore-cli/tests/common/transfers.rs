//! Writers that move money between accounts in transactions while a backup runs: a dump
//! that is one snapshot keeps the total exact (and, with the transfer log, every balance).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::ADMIN_USER;

/// One writer: a connection to `port` (the admin account), database `db`, table
/// `accounts (id, balance)`.
#[derive(Clone)]
pub struct Mover {
    pub port: u16,
    pub password: String,
    pub db: String,
    /// The accounts money leaves: `first..first + count`.
    pub from: (u64, u64),
    /// The accounts money goes to.
    pub to: (u64, u64),
    /// Also logs each transfer in `transfers (src, dst, amount)`, in the same transaction.
    pub log: bool,
}

/// Running writers; stopped by `stop` (or when dropped).
pub struct Transfers {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Transfers {
    pub fn start(movers: Vec<Mover>) -> Transfers {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let threads = movers
            .into_iter()
            .map(|m| {
                let (stop, done) = (stop.clone(), done.clone());
                std::thread::spawn(move || run(m, &stop, &done))
            })
            .collect();
        Transfers {
            stop,
            done,
            threads,
        }
    }

    /// Transfers committed so far.
    pub fn committed(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits until `n` transfers have committed (fails the test after `timeout`).
    pub fn wait_for(&self, n: u64, timeout: Duration) {
        let t0 = Instant::now();
        while self.committed() < n {
            assert!(
                t0.elapsed() < timeout,
                "the writers committed only {} transfers in {timeout:?}",
                self.committed()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the writers and waits for them; returns the transfers committed in all.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.committed()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Transfers {
    fn drop(&mut self) {
        self.halt();
    }
}

fn run(m: Mover, stop: &AtomicBool, done: &AtomicU64) {
    use mysql_async::prelude::*;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(m.port)
            .user(Some(ADMIN_USER))
            .pass(Some(m.password.clone()))
            .db_name(Some(m.db.clone()));
        let mut conn = mysql_async::Conn::new(opts).await.unwrap();
        let mut i: u64 = m.port as u64;
        while !stop.load(Ordering::SeqCst) {
            i = i
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (a, b, x) = (
                (i >> 20) % m.from.1 + m.from.0,
                (i >> 40) % m.to.1 + m.to.0,
                (i >> 8) % 97 + 1,
            );
            if a == b {
                continue;
            }
            let r: Result<(), mysql_async::Error> = async {
                let mut tx = conn.start_transaction(Default::default()).await?;
                tx.exec_drop(
                    "UPDATE accounts SET balance = balance - ? WHERE id = ?",
                    (x, a),
                )
                .await?;
                tx.exec_drop(
                    "UPDATE accounts SET balance = balance + ? WHERE id = ?",
                    (x, b),
                )
                .await?;
                if m.log {
                    tx.exec_drop(
                        "INSERT INTO transfers (src, dst, amount) VALUES (?, ?, ?)",
                        (a, b, x),
                    )
                    .await?;
                }
                tx.commit().await
            }
            .await;
            if r.is_ok() {
                done.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
}
