//! Cutting the stream into segments: each a valid binary log file holding whole
//! transactions only, so that a segment replays on its own after the previous one.

use super::{kind, RawEvent};

pub use backup_core::binlog::{GtidPos, MAGIC};

/// A finished segment: a binary log file and what its manifest says of it.
#[derive(Debug, Clone)]
pub struct Segment {
    pub bytes: Vec<u8>,
    pub first_gtid: Option<String>,
    pub last_gtid: Option<String>,
    /// Event times (seconds since the epoch) of the first and last transaction.
    pub first_time: Option<u32>,
    pub last_time: Option<u32>,
    pub transactions: u64,
    pub server_id: Option<u32>,
    /// The GTID position the segment starts after, and the one it ends at.
    pub previous_position: String,
    pub end_position: String,
}

/// Whether `e` ends the transaction it belongs to (`standalone`: one statement, DDL).
fn ends_transaction(e: &RawEvent, standalone: bool) -> bool {
    e.kind == kind::XID
        || (e.kind == kind::QUERY && (standalone || e.query_text().is_some_and(|q| q == b"COMMIT")))
}

/// Builds a segment from the stream's events. It holds the current format description
/// event; a new one (the server moved to its next binary log) means the caller should
/// cut first (see [`SegmentBuilder::push`]).
#[derive(Debug, Default)]
pub struct SegmentBuilder {
    fde: Option<Vec<u8>>,
    buf: Vec<u8>,
    first_gtid: Option<String>,
    last_gtid: Option<String>,
    first_time: Option<u32>,
    last_time: Option<u32>,
    transactions: u64,
    server_id: Option<u32>,
    /// Inside a transaction (a GTID event seen, its end not yet).
    open: Option<bool>,
    /// Only this GTID domain is archived (a Galera cluster's `wsrep_gtid_domain_id`):
    /// transactions of other domains are a node's own, not the cluster's, and are left out.
    domain: Option<u32>,
    /// Inside a transaction that is left out (its end not seen yet).
    skipping: Option<bool>,
    /// The position at this segment's start, and after its last transaction.
    start: GtidPos,
    position: GtidPos,
}

impl SegmentBuilder {
    /// A builder whose first segment continues the stream after `start`.
    pub fn new(start: GtidPos) -> SegmentBuilder {
        SegmentBuilder {
            position: start.clone(),
            start,
            ..SegmentBuilder::default()
        }
    }

    /// Archives only the transactions of GTID domain `d` (None: every domain).
    pub fn only_domain(mut self, d: Option<u32>) -> SegmentBuilder {
        self.domain = d;
        self
    }

    /// Whether `e` is a GTID event of a domain this builder leaves out.
    fn foreign(&self, e: &RawEvent) -> bool {
        match (self.domain, &e.gtid) {
            (Some(d), Some((g, _))) => {
                backup_core::binlog::Gtid::parse(g).is_some_and(|g| g.domain != d)
            }
            _ => false,
        }
    }

    /// The position after the last transaction pushed.
    pub fn position(&self) -> &GtidPos {
        &self.position
    }

    /// Whether the segment holds no transaction yet.
    pub fn is_empty(&self) -> bool {
        self.transactions == 0
    }

    /// Whether the last event ended a transaction (a cut here keeps transactions whole).
    pub fn at_boundary(&self) -> bool {
        self.open.is_none() && self.skipping.is_none()
    }

    /// Bytes so far (the file's size if finished now).
    pub fn len(&self) -> usize {
        MAGIC.len() + self.fde.as_ref().map_or(0, Vec::len) + self.buf.len()
    }

    /// Adds an event. Returns true when the event is a new format description (the
    /// server's next binary log) while this segment already holds transactions: the
    /// caller finishes this segment and pushes the event again into the next one.
    pub fn push(&mut self, e: &RawEvent) -> bool {
        if e.artificial || e.kind == kind::ROTATE || e.kind == kind::HEARTBEAT {
            return false;
        }
        if e.kind == kind::FORMAT_DESCRIPTION {
            if self.transactions > 0 || self.open.is_some() {
                return true;
            }
            self.fde = Some(e.bytes.clone());
            self.buf.clear();
            return false;
        }
        if self.fde.is_none() {
            // Nothing is readable without the format description event.
            return false;
        }
        if self.foreign(e) {
            self.skipping = e.gtid.as_ref().map(|(_, standalone)| *standalone);
            return false;
        }
        if let Some(standalone) = self.skipping {
            if ends_transaction(e, standalone) {
                self.skipping = None;
            }
            return false;
        }
        if let Some((gtid, standalone)) = &e.gtid {
            if self.first_gtid.is_none() {
                self.first_gtid = Some(gtid.clone());
                self.first_time = Some(e.timestamp);
            }
            self.last_gtid = Some(gtid.clone());
            self.last_time = Some(e.timestamp);
            self.server_id.get_or_insert(e.server_id);
            self.transactions += 1;
            self.position.advance(gtid);
            self.open = Some(*standalone);
        } else if let Some(standalone) = self.open {
            if ends_transaction(e, standalone) {
                self.open = None;
            }
        }
        self.buf.extend_from_slice(&e.bytes);
        false
    }

    /// Continuity: in each domain, the next transaction must be the one after the
    /// position. For a GTID event that jumps ahead (the server no longer had the ones
    /// between: purged), the position just before it and a description of what is
    /// missing.
    pub fn jump(&self, e: &RawEvent) -> Option<(GtidPos, String)> {
        if self.foreign(e) {
            return None;
        }
        let g = e
            .gtid
            .as_ref()
            .and_then(|(g, _)| backup_core::binlog::Gtid::parse(g))?;
        let have = self.position.seq(g.domain)?;
        if g.seq <= have + 1 {
            return None;
        }
        let mut resumed = self.position.clone();
        resumed.advance_to(backup_core::binlog::Gtid {
            seq: g.seq - 1,
            ..g
        });
        Some((
            resumed,
            format!(
                "the server's binary log goes from {have} to {g} in domain {}: transactions {}..{} are missing (purged before they were archived)",
                g.domain,
                have + 1,
                g.seq - 1
            ),
        ))
    }

    /// Starts the next segment after `pos` instead of after the last transaction (a gap:
    /// the chain is cut here). Only between segments (nothing pushed since `finish`).
    pub fn restart_at(&mut self, pos: GtidPos) {
        debug_assert!(self.transactions == 0 && self.open.is_none());
        self.start = pos.clone();
        self.position = pos;
    }

    /// The finished segment (None when it holds no transaction); the builder starts the
    /// next segment with the same format description event.
    pub fn finish(&mut self) -> Option<Segment> {
        if self.transactions == 0 {
            return None;
        }
        let fde = self
            .fde
            .clone()
            .expect("a segment with transactions has an FDE");
        // The events' buffer becomes the file (magic and FDE put in front, in place when
        // its capacity allows): no second copy of a segment in memory.
        let mut bytes = std::mem::take(&mut self.buf);
        bytes.splice(0..0, MAGIC.iter().chain(fde.iter()).copied());
        let seg = Segment {
            bytes,
            first_gtid: self.first_gtid.take(),
            last_gtid: self.last_gtid.take(),
            first_time: self.first_time.take(),
            last_time: self.last_time.take(),
            transactions: std::mem::take(&mut self.transactions),
            server_id: self.server_id.take(),
            previous_position: self.start.to_string(),
            end_position: self.position.to_string(),
        };
        self.start = self.position.clone();
        Some(seg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: u8, gtid: Option<&str>, standalone: bool) -> RawEvent {
        RawEvent {
            bytes: vec![kind; 23],
            kind,
            timestamp: 1_700_000_000,
            server_id: 101,
            log_pos: 0,
            artificial: false,
            gtid: gtid.map(|g| (g.to_string(), standalone)),
        }
    }

    #[test]
    fn a_galera_archive_keeps_the_clusters_domain_only() {
        let start = GtidPos::parse("1-101-5,12-101-1").unwrap();
        let mut b = SegmentBuilder::new(start).only_domain(Some(1));
        assert!(!b.push(&ev(kind::FORMAT_DESCRIPTION, None, false)));
        // A node's own transaction (domain 12: e.g. FLUSH, or a write with wsrep off):
        // left out whole, and its numbers are no jump.
        let local = ev(kind::GTID, Some("12-101-7"), false);
        assert!(b.jump(&local).is_none());
        b.push(&local);
        assert!(!b.at_boundary());
        b.push(&ev(30, None, false));
        b.push(&ev(kind::XID, None, false));
        assert!(b.at_boundary() && b.is_empty());
        // The cluster's transactions are kept, and checked for continuity.
        let next = ev(kind::GTID, Some("1-101-6"), false);
        assert!(b.jump(&next).is_none());
        b.push(&next);
        b.push(&ev(30, None, false));
        b.push(&ev(kind::XID, None, false));
        assert!(b.jump(&ev(kind::GTID, Some("1-101-9"), false)).is_some());
        let seg = b.finish().unwrap();
        assert_eq!(seg.transactions, 1);
        assert_eq!(seg.end_position, "1-101-6,12-101-1");
        // The magic, the FDE and the 3 events of the cluster's transaction.
        assert_eq!(seg.bytes.len(), 4 + 23 * 4);
    }
}
