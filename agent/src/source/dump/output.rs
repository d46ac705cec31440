//! Where the dump's SQL goes: buffered, handed to the sealing stage in chunks over a
//! bounded channel, optionally rate limited.

use tokio::sync::mpsc;

use super::DumpError;

/// Buffers SQL text and hands it to the compression stage in chunks over a bounded
/// channel: when that stage is slower, the dump waits instead of filling memory.
pub struct SqlOutput {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
    /// Bytes per second at most, and when the next bytes may go.
    rate: Option<(u64, tokio::time::Instant)>,
}

/// The most bytes one message on the channel carries.
pub const CHUNK: usize = 256 * 1024;

impl SqlOutput {
    pub fn new(tx: mpsc::Sender<Vec<u8>>) -> Self {
        SqlOutput {
            tx,
            buf: Vec::with_capacity(CHUNK),
            rate: None,
        }
    }

    /// Limits the dump to `bytes_per_sec` of SQL: the reader waits when it is ahead.
    pub fn with_rate_limit(mut self, bytes_per_sec: Option<u64>) -> Self {
        self.rate = bytes_per_sec.map(|r| (r.max(1), tokio::time::Instant::now()));
        self
    }

    async fn pace(&mut self, n: usize) {
        if let Some((rate, next)) = &mut self.rate {
            *next = pace_after(*next, tokio::time::Instant::now(), n as u64, *rate);
            tokio::time::sleep_until(*next).await;
        }
    }

    pub async fn write(&mut self, mut b: &[u8]) -> Result<(), DumpError> {
        // Chunks of CHUNK bytes at most (a long INSERT goes in pieces): the channel then
        // holds a bounded number of bytes, not as many whole statements.
        while !b.is_empty() {
            if self.buf.is_empty() && b.len() >= CHUNK {
                let (chunk, rest) = b.split_at(CHUNK);
                self.pace(CHUNK).await;
                self.tx
                    .send(chunk.to_vec())
                    .await
                    .map_err(|_| DumpError::OutputClosed)?;
                b = rest;
                continue;
            }
            let n = (CHUNK - self.buf.len()).min(b.len());
            self.buf.extend_from_slice(&b[..n]);
            b = &b[n..];
            if self.buf.len() >= CHUNK {
                self.flush().await?;
            }
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), DumpError> {
        if !self.buf.is_empty() {
            self.pace(self.buf.len()).await;
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            self.tx
                .send(chunk)
                .await
                .map_err(|_| DumpError::OutputClosed)?;
        }
        Ok(())
    }
}

/// When `n` more bytes at `rate` bytes/s may have gone, given that the previous ones were
/// due at `next`. Time lost behind (a slow consumer, a frozen process) is credited for one
/// second at most, so the dump never bursts above its limit to catch up.
fn pace_after(
    next: tokio::time::Instant,
    now: tokio::time::Instant,
    n: u64,
    rate: u64,
) -> tokio::time::Instant {
    let credit = std::time::Duration::from_secs(1);
    let from = next.max(now.checked_sub(credit).unwrap_or(now));
    from + std::time::Duration::from_secs_f64(n as f64 / rate.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_paces_and_never_bursts_to_catch_up() {
        use std::time::Duration;
        let t0 = tokio::time::Instant::now();
        // On pace: 100 KiB at 100 KiB/s are due one second after the previous bytes.
        let next = pace_after(t0, t0, 102_400, 102_400);
        assert_eq!(next - t0, Duration::from_secs(1));
        let next = pace_after(next, t0 + Duration::from_millis(300), 51_200, 102_400);
        assert_eq!(next - t0, Duration::from_millis(1500));
        // Ten seconds behind (the process was frozen): only one second is credited, so
        // the next ten seconds' worth of bytes take nine seconds, not zero.
        let now = t0 + Duration::from_secs(20);
        let mut next = pace_after(next, now, 102_400, 102_400);
        assert_eq!(next, now);
        for _ in 0..9 {
            next = pace_after(next, now, 102_400, 102_400);
        }
        assert_eq!(next - now, Duration::from_secs(9));
    }
}
