//! The manifest: written last, it is what makes a backup exist. It holds no table names
//! and no row data; those stay inside the encrypted message. The agent signs it (a
//! detached signature object written just before it); see `catalog` for how it is read.

use serde::{Deserialize, Serialize};

/// Binlog coordinates of the dump's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinlogPosition {
    pub file: String,
    pub position: u64,
    pub gtid: Option<String>,
}

pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub backup_id: String,
    pub source: String,
    /// Server host name (the node that was dumped).
    pub host: String,
    pub server_version: String,
    pub started_at: String,
    pub finished_at: String,
    pub binlog: Option<BinlogPosition>,
    pub galera: Option<serde_json::Value>,
    pub databases: Vec<String>,
    pub data: DataObject,
    /// Encryption subkeys the message is encrypted to.
    pub dpo_recipients: Vec<String>,
    /// The tenant's encryption subkeys it is also encrypted to (`tenant_certificates`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenant_recipients: Vec<String>,
    /// Primary fingerprint of the agent certificate that signed the message.
    pub signer: String,
    pub tool_version: String,
    /// Largest SQL statement in the dump, in bytes: the minimum max_allowed_packet.
    pub largest_statement_bytes: u64,
    pub tables: u64,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DataObject {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub compression: String,
    pub encryption: String,
}

pub const SEGMENT_MANIFEST_VERSION: u32 = 1;

/// The manifest of a binary log segment (point-in-time recovery): which transactions it
/// holds, where they came from, and the chain it continues (`previous_gtid`: the GTID
/// position the segment starts after, i.e. the previous segment's last, or the position
/// archiving started from). No statement, table name or row: those stay sealed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SegmentManifest {
    pub format_version: u32,
    pub segment_id: String,
    pub source: String,
    /// The node the events were read from (its configured name and address).
    pub node: String,
    pub address: String,
    /// The `server_id` in the events' headers (the server that wrote them first).
    pub server_id: u32,
    pub previous_gtid: String,
    /// The GTID position after this segment: the next segment's `previous_gtid`.
    pub end_position: String,
    pub first_gtid: String,
    pub last_gtid: String,
    pub first_event_at: String,
    pub last_event_at: String,
    pub transactions: u64,
    /// Size of the binary log file inside (before compression).
    pub binlog_bytes: u64,
    pub data: DataObject,
    pub dpo_recipients: Vec<String>,
    pub signer: String,
    pub tool_version: String,
    pub archived_at: String,
    /// The agent that archived it (its `agent.name`): with several agents on a cluster,
    /// the others copy it to their own stores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// A manifest as stored and checked: its exact bytes, the agent's detached signature over
/// them, and the trusted certificate that made the signature. Copies between stores carry
/// these bytes unchanged (another site's agent cannot re-sign them, nor needs to).
#[derive(Debug, Clone, PartialEq)]
pub struct SignedManifest {
    pub manifest: Manifest,
    pub bytes: Vec<u8>,
    pub signature: Vec<u8>,
    pub signed_by: String,
}
