//! Progress of the long steps on a terminal (download, checksum, verification; the
//! replay has its own line with tables): one line on standard error, redrawn at most
//! once a second, with bytes, percent, rate and time left. Nothing is printed when
//! standard error is not a terminal (logs, cron, CI), so scripts see only the results.
//!
//! One step runs at a time: [`Step::start`] begins it, the readers of the file count
//! what they read with [`add`] (from any thread), and dropping the step ends its line.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Current {
    label: String,
    total: u64,
    started: Instant,
    last: Instant,
}

static CURRENT: Mutex<Option<Current>> = Mutex::new(None);
static DONE: AtomicU64 = AtomicU64::new(0);

/// A step shown with progress while it lives.
pub struct Step {
    on: bool,
}

impl Step {
    /// Starts showing `label` over `total` bytes (0: unknown), if standard error is a
    /// terminal.
    pub fn start(label: &str, total: u64) -> Step {
        let on = std::io::stderr().is_terminal();
        if on {
            DONE.store(0, Ordering::Relaxed);
            let now = Instant::now();
            *CURRENT.lock().expect("progress lock") = Some(Current {
                label: label.to_string(),
                total,
                started: now,
                // The first bytes draw the line at once.
                last: now.checked_sub(Duration::from_secs(1)).unwrap_or(now),
            });
        }
        Step { on }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if !self.on {
            return;
        }
        if let Some(c) = CURRENT.lock().expect("progress lock").take() {
            // The step's last state, then a new line.
            let done = DONE.load(Ordering::Relaxed);
            eprintln!(
                "\r{}   ",
                line(&c.label, done, c.total, c.started.elapsed())
            );
        }
    }
}

/// Counts `n` more bytes of the current step (nothing when no step is shown).
pub fn add(n: u64) {
    let done = DONE.fetch_add(n, Ordering::Relaxed) + n;
    let Ok(mut g) = CURRENT.try_lock() else {
        return;
    };
    let Some(c) = g.as_mut() else { return };
    if c.last.elapsed() < Duration::from_secs(1) {
        return;
    }
    c.last = Instant::now();
    eprint!(
        "\r{}   ",
        line(&c.label, done, c.total, c.started.elapsed())
    );
}

/// `restore: verifying: 512 MiB / 1.9 GiB (26%), 85 MiB/s, 17s left`.
fn line(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = done as f64 / secs;
    let size = backup_core::format::human_size;
    if total == 0 {
        return format!("restore: {label}: {}, {}/s", size(done), size(rate as u64));
    }
    let left = if rate > 0.0 {
        total.saturating_sub(done) as f64 / rate
    } else {
        0.0
    };
    format!(
        "restore: {label}: {} / {} ({:.0}%), {}/s, {:.0}s left",
        size(done),
        size(total),
        100.0 * done as f64 / total.max(1) as f64,
        size(rate as u64),
        left
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_how_far_and_how_long() {
        let l = line("verifying", 512 << 20, 2048 << 20, Duration::from_secs(4));
        assert!(l.starts_with("restore: verifying: 512"), "{l}");
        assert!(l.contains("(25%)") && l.ends_with("12s left"), "{l}");
        let l = line("downloading", 3 << 20, 0, Duration::from_secs(1));
        assert!(l.starts_with("restore: downloading: 3"), "{l}");
    }
}
