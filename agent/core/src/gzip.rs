//! Gzip members that say how long they are, and a reader that inflates them on several
//! threads.
//!
//! The agent compresses a dump as consecutive gzip members of ~1 MiB of SQL each
//! (RFC 1952: `gunzip` reads them as one stream). Each member carries its own length in
//! its header, in an extra subfield (`FEXTRA`, subfield id `BA`, 4 bytes: the whole
//! member's length in bytes, little-endian), like BGZF does. A reader can then cut the
//! stream into members without inflating it and inflate several at once, in order.
//! `gunzip`, GnuPG and every other gzip reader skip the subfield.
//!
//! [`ParallelGunzip`] trusts nothing in those fields: it gives exactly the bytes `gunzip`
//! would, or an error. A member that does not end exactly at the length its header says,
//! or whose CRC or size trailer is wrong, is an error; memory stays bounded whatever a
//! header claims (a member claiming more than [`MAX_SIZED_MEMBER`], and everything from
//! the first member without the subfield on, is inflated as one stream, as `gunzip`
//! does).

use std::collections::VecDeque;
use std::io::{self, Chain, Cursor, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

/// The members a reader inflates in parallel are at most this long (compressed) and
/// inflate to at most this much; a larger one is read as a stream.
pub const MAX_SIZED_MEMBER: usize = 32 << 20;

const HEADER_LEN: usize = 10;
const EXTRA_LEN: usize = 8; // subfield id (2), length (2), value (4)
const TRAILER_LEN: usize = 8;
const FEXTRA: u8 = 0x04;

/// Writes gzip members that carry their length, compressed by libdeflate (faster than
/// zlib at the same level, and smaller). One per thread: it keeps its working memory.
pub struct MemberCompressor {
    c: libdeflater::Compressor,
}

impl MemberCompressor {
    /// `level`: 1 (fastest) to 12 (smallest).
    pub fn new(level: u32) -> io::Result<MemberCompressor> {
        let lvl = i32::try_from(level)
            .ok()
            .and_then(|l| libdeflater::CompressionLvl::new(l).ok())
            .ok_or_else(|| io::Error::other(format!("gzip level {level} is not 1-12")))?;
        Ok(MemberCompressor {
            c: libdeflater::Compressor::new(lvl),
        })
    }

    /// One member of `data` into `out` (cleared first; its allocation is reused).
    pub fn member(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let prefix = HEADER_LEN + 2 + EXTRA_LEN;
        let bound = self.c.deflate_compress_bound(data.len());
        out.clear();
        out.resize(prefix + bound, 0);
        out[..HEADER_LEN].copy_from_slice(&[0x1f, 0x8b, 8, FEXTRA, 0, 0, 0, 0, 0, 255]);
        out[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&(EXTRA_LEN as u16).to_le_bytes());
        out[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(b"BA");
        out[HEADER_LEN + 4..HEADER_LEN + 6].copy_from_slice(&4u16.to_le_bytes());
        let n = self
            .c
            .deflate_compress(data, &mut out[prefix..])
            .map_err(|e| io::Error::other(format!("compressing: {e}")))?;
        out.truncate(prefix + n);
        out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        let len = u32::try_from(out.len())
            .map_err(|_| io::Error::other("a gzip member longer than 4 GiB"))?;
        out[prefix - 4..prefix].copy_from_slice(&len.to_le_bytes());
        Ok(())
    }
}

/// One gzip member of `data`, its length in its header.
pub fn sized_member(data: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    MemberCompressor::new(level)?.member(data, &mut out)?;
    Ok(out)
}

type Job = (Vec<u8>, SyncSender<io::Result<Vec<u8>>>);

/// Inflates one whole member (`bytes`), which must be exactly one member that inflates to
/// exactly `size` bytes. Its header is the sized one (`FEXTRA` alone, checked when it was
/// read); the deflate data must end exactly at the trailer, whose CRC-32 (computed with
/// the CPU's carry-less multiply, not byte tables) and size must match.
fn inflate_member(bytes: &[u8], size: usize) -> io::Result<Vec<u8>> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a gzip member {what} (corrupt or crafted stream)"),
        )
    };
    let lie = || bad("does not match the length in its header");
    let xlen = u16::from_le_bytes([bytes[HEADER_LEN], bytes[HEADER_LEN + 1]]) as usize;
    let start = HEADER_LEN + 2 + xlen;
    let end = bytes
        .len()
        .checked_sub(TRAILER_LEN)
        .filter(|&e| e >= start)
        .ok_or_else(lie)?;
    let data = &bytes[start..end];
    // One byte of room more than the trailer says: a member that inflates to more fills it.
    let mut out = Vec::with_capacity(size + 1);
    let mut d = flate2::Decompress::new(false);
    let status = d
        .decompress_vec(data, &mut out, flate2::FlushDecompress::Finish)
        .map_err(|e| bad(&format!("does not inflate: {e}")))?;
    if status != flate2::Status::StreamEnd || d.total_in() != data.len() as u64 || out.len() != size
    {
        return Err(lie());
    }
    let crc = u32::from_le_bytes(bytes[end..end + 4].try_into().expect("4 bytes"));
    if crc32fast::hash(&out) != crc {
        return Err(bad("fails its CRC-32"));
    }
    Ok(out)
}

/// Reads a gzip stream of one or more members, inflating sized members on `threads`
/// threads (in order) and anything else as a stream, like `MultiGzDecoder`.
pub struct ParallelGunzip<R: Read> {
    inner: Option<R>,
    jobs: Option<SyncSender<Job>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    queue: VecDeque<(Receiver<io::Result<Vec<u8>>>, usize)>,
    queued_bytes: usize,
    max_queue: usize,
    out: Vec<u8>,
    pos: usize,
    members: u64,
    /// After the first member without the length subfield: the rest as one stream.
    stream: Option<flate2::read::MultiGzDecoder<Chain<Cursor<Vec<u8>>, R>>>,
    done: bool,
}

impl<R: Read> ParallelGunzip<R> {
    pub fn new(inner: R, threads: usize) -> Self {
        let threads = threads.max(1);
        let (tx, rx) = sync_channel::<Job>(threads);
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..threads)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || loop {
                    let job = rx.lock().map(|r| r.recv());
                    let Ok(Ok((bytes, back))) = job else { return };
                    let size = trailer_size(&bytes);
                    let _ = back.send(inflate_member(&bytes, size));
                })
            })
            .collect();
        ParallelGunzip {
            inner: Some(inner),
            jobs: Some(tx),
            workers,
            queue: VecDeque::new(),
            queued_bytes: 0,
            max_queue: 2 * threads,
            out: Vec::new(),
            pos: 0,
            members: 0,
            stream: None,
            done: false,
        }
    }

    /// The compressed stream, after the last member was read.
    pub fn into_inner(mut self) -> R {
        if let Some(s) = self.stream.take() {
            return s.into_inner().into_inner().1;
        }
        self.inner.take().expect("the inner reader is here")
    }

    /// Reads the next member's header; queues it when it is sized, else switches to
    /// streaming. Returns false at the end of the stream.
    fn next_member(&mut self) -> io::Result<bool> {
        let inner = self.inner.as_mut().expect("not streaming");
        let mut head = vec![0u8; HEADER_LEN];
        let n = read_full(inner, &mut head)?;
        if n == 0 {
            return Ok(false);
        }
        head.truncate(n);
        let sized = n == HEADER_LEN && head[..3] == [0x1f, 0x8b, 8] && head[3] == FEXTRA;
        let mut size = None;
        if sized {
            let mut xlen = [0u8; 2];
            let m = read_full(inner, &mut xlen)?;
            head.extend_from_slice(&xlen[..m]);
            if m == 2 {
                let xlen = u16::from_le_bytes(xlen) as usize;
                let mut extra = vec![0u8; xlen];
                let m = read_full(inner, &mut extra)?;
                head.extend_from_slice(&extra[..m]);
                if m == xlen {
                    size = member_length(&extra);
                }
            }
        }
        let fits = size.filter(|&s| s >= head.len() + TRAILER_LEN && s <= MAX_SIZED_MEMBER);
        let Some(total) = fits else {
            // Not one of ours, or too large to hold: the rest as a stream.
            let inner = self.inner.take().expect("not streaming");
            self.stream = Some(flate2::read::MultiGzDecoder::new(
                Cursor::new(head).chain(inner),
            ));
            return Ok(true);
        };
        let mut bytes = head;
        let have = bytes.len();
        bytes.resize(total, 0);
        let m = read_full(inner, &mut bytes[have..])?;
        if m != total - have {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the gzip stream ends inside a member (truncated)",
            ));
        }
        let size = trailer_size(&bytes);
        if size > MAX_SIZED_MEMBER {
            let inner = self.inner.take().expect("not streaming");
            self.stream = Some(flate2::read::MultiGzDecoder::new(
                Cursor::new(bytes).chain(inner),
            ));
            return Ok(true);
        }
        let (back_tx, back_rx) = sync_channel(1);
        self.jobs
            .as_ref()
            .expect("workers running")
            .send((bytes, back_tx))
            .map_err(|_| io::Error::other("the inflating threads stopped"))?;
        self.queue.push_back((back_rx, size));
        self.queued_bytes += size;
        self.members += 1;
        Ok(true)
    }

    /// Fills `out` with the next inflated member; false at the end.
    fn refill(&mut self) -> io::Result<bool> {
        while self.stream.is_none()
            && !self.done
            && self.queue.len() < self.max_queue
            && (self.queue.is_empty() || self.queued_bytes < MAX_SIZED_MEMBER)
        {
            if !self.next_member()? {
                self.done = true;
            }
        }
        if let Some((rx, size)) = self.queue.pop_front() {
            self.queued_bytes -= size;
            self.out = rx
                .recv()
                .map_err(|_| io::Error::other("an inflating thread died"))??;
            self.pos = 0;
            return Ok(true);
        }
        Ok(false)
    }
}

impl<R: Read> Read for ParallelGunzip<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.out.len() {
                let n = buf.len().min(self.out.len() - self.pos);
                buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.refill()? {
                continue;
            }
            if let Some(s) = self.stream.as_mut() {
                return s.read(buf);
            }
            return Ok(0);
        }
    }
}

impl<R: Read> Drop for ParallelGunzip<R> {
    fn drop(&mut self) {
        self.jobs.take();
        self.queue.clear();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The `BA` subfield's member length, if the extra field has it.
fn member_length(mut extra: &[u8]) -> Option<usize> {
    while extra.len() >= 4 {
        let id = &extra[..2];
        let len = u16::from_le_bytes([extra[2], extra[3]]) as usize;
        let body = extra.get(4..4 + len)?;
        if id == b"BA" && len == 4 {
            return Some(u32::from_le_bytes(body.try_into().ok()?) as usize);
        }
        extra = &extra[4 + len..];
    }
    None
}

/// The inflated size a whole member's trailer states (ISIZE).
fn trailer_size(member: &[u8]) -> usize {
    let t = &member[member.len() - 4..];
    u32::from_le_bytes([t[0], t[1], t[2], t[3]]) as usize
}

/// Reads until `buf` is full or the end; returns how much was read.
pub fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| {
                "INSERT INTO t VALUES (1,'Zürich');\n".as_bytes()[i % 36] ^ ((i / 977) as u8 & 3)
            })
            .collect()
    }

    fn gunzip_all(b: &[u8], threads: usize) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        ParallelGunzip::new(b, threads).read_to_end(&mut v)?;
        Ok(v)
    }

    #[test]
    fn sized_members_read_as_one_stream_by_every_reader() {
        let data = sample(5 << 20);
        let mut z = Vec::new();
        for c in data.chunks(1 << 20) {
            z.extend_from_slice(&sized_member(c, 6).unwrap());
        }
        // flate2's reader (like gunzip) skips the subfield.
        let mut plain = Vec::new();
        flate2::read::MultiGzDecoder::new(&z[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, data);
        for threads in [1, 2, 5] {
            assert_eq!(gunzip_all(&z, threads).unwrap(), data);
        }
        // Members without the subfield, before or after sized ones, read as a stream.
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        gz.write_all(b"-- plain member\n").unwrap();
        let plain_member = gz.finish().unwrap();
        let mut mixed = sized_member(b"-- first\n", 6).unwrap();
        mixed.extend_from_slice(&plain_member);
        mixed.extend_from_slice(&z);
        let mut want = b"-- first\n-- plain member\n".to_vec();
        want.extend_from_slice(&data);
        assert_eq!(gunzip_all(&mixed, 2).unwrap(), want);
        // An empty input is an empty stream; an empty member is a member.
        assert!(gunzip_all(b"", 2).unwrap().is_empty());
        assert!(gunzip_all(&sized_member(b"", 6).unwrap(), 2)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn lying_or_broken_members_are_errors() {
        let a = sized_member(&sample(300_000), 6).unwrap();
        let b = sized_member(&sample(200_000), 6).unwrap();
        let mut good = a.clone();
        good.extend_from_slice(&b);
        assert!(gunzip_all(&good, 2).is_ok());
        // The length field points inside the member, or past it: an error, or (when the
        // lie sends the reader to the stream path) exactly what gunzip reads.
        let mut standard = Vec::new();
        flate2::read::MultiGzDecoder::new(&good[..])
            .read_to_end(&mut standard)
            .unwrap();
        for delta in [-1i64, -4, 1, 100] {
            let mut bad = a.clone();
            let len = (a.len() as i64 + delta) as u32;
            bad[16..20].copy_from_slice(&len.to_le_bytes());
            bad.extend_from_slice(&b);
            if let Ok(v) = gunzip_all(&bad, 2) {
                assert!(
                    v == standard,
                    "length off by {delta}: other bytes than gunzip's"
                );
            }
        }
        // A length that spans two members (its trailer then looks plausible) is an error.
        let mut spans = good.clone();
        spans[16..20].copy_from_slice(&(good.len() as u32).to_le_bytes());
        assert!(
            gunzip_all(&spans, 2).is_err(),
            "a length spanning two members"
        );
        // A flipped byte in the deflate data, the CRC, the size trailer.
        for at in [a.len() / 2, a.len() - 6, a.len() - 2] {
            let mut bad = good.clone();
            bad[at] ^= 0x55;
            assert!(gunzip_all(&bad, 2).is_err(), "byte {at} flipped");
        }
        // Truncated anywhere.
        for cut in [5, 15, a.len() - 1, a.len() + 30] {
            assert!(gunzip_all(&good[..cut], 2).is_err(), "cut at {cut}");
        }
        // A header claiming a huge member is streamed (as gunzip reads it), never allocated.
        let mut huge = a.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(gunzip_all(&huge, 2).unwrap(), sample(300_000));
        // A trailer claiming a huge inflated size is streamed, not preallocated.
        let mut big = a.clone();
        let n = big.len();
        big[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(gunzip_all(&big, 2).is_err());
    }
}
