//! Galera: which node to dump, desyncing it for the dump, and the cluster lease that lets
//! the agents of several datacenters produce exactly one backup per schedule slot.
//!
//! Node choice: every configured node is asked (in parallel, within the source's connect
//! timeout) for wsrep_ready, wsrep_connected, wsrep_cluster_status, wsrep_local_state_comment
//! and its cluster configuration. A node is eligible when it is ready, connected, in the
//! Primary component, Synced (or Donor/Desynced because this agent desynced it) and not
//! stale: a node that was frozen still reports its old configuration for a few seconds after
//! it wakes, so a node whose configuration id is behind another Primary node's is skipped.
//! Among the eligible, the agent's own site comes first, then the least loaded (receive
//! queue, then running threads), then the configured order.
//!
//! Desync: `SET GLOBAL wsrep_desync=ON` with the admin credential, after a marker file in
//! the state dir names the node; OFF on every exit path (the guard's drop does it when the
//! run is cancelled), and at the next start for markers a killed agent left behind.
//!
//! Lease: one row per (source, slot) in `<lease_database>.lease` on the cluster itself.
//! Claiming is an INSERT: of two concurrent claims on different nodes Galera certification
//! lets one commit (the other gets a deadlock or, once the winner replicated, a duplicate
//! key). The holder renews `expires_at` every third of the TTL and marks the row done or
//! failed at the end; another agent takes over a row whose holder stopped renewing (expired)
//! or failed, a bounded number of times. All times are the cluster's (UTC_TIMESTAMP).

use backup_core::secret::SecretError;

use crate::source::dump::DumpError;

mod desync;
mod lease;
mod node;

pub use desync::{clear_leftover_desync, desynced_here, stuck_desyncs, DesyncGuard, DesyncMarker};
pub use lease::{acquire, lease_ddl, Claim, Lease, ARCHIVER_SLOT, MAX_ATTEMPTS};
pub use node::{
    choose, eligibility, probe, probe_all, Ineligible, NoEligibleNode, NodeStatus, Probe,
    ProbeError,
};

/// What went wrong talking to a Galera cluster for a desync or the lease. Each variant
/// names what failed, where, and (where there is one) the fix.
#[derive(Debug, thiserror::Error)]
pub enum GaleraError {
    /// Connecting to a node failed.
    #[error(transparent)]
    Connect(Box<DumpError>),
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// A statement failed.
    #[error(transparent)]
    Server(Box<mysql_async::Error>),
    #[error(
        "source {source_name}: desync needs [source.galera] admin_user and admin_password_file"
    )]
    NoAdmin { source_name: String },
    #[error("{statement} on node {node} ({endpoint}) as {user:?} failed: {source}{hint}")]
    Desync {
        statement: String,
        node: String,
        endpoint: String,
        user: String,
        source: Box<mysql_async::Error>,
        /// What to grant, when the server said the account lacks a privilege.
        hint: &'static str,
    },
    #[error("cannot write the desync marker {path}: {source}")]
    Marker {
        path: String,
        source: std::io::Error,
    },
    /// Turning a desync off from the guard's drop did not finish.
    #[error("{0}")]
    Cleanup(&'static str),
    #[error("shutting down while waiting for the lease")]
    ShuttingDown,
    #[error("no node reachable")]
    Unreachable,
    #[error("no node in the Primary component accepts the lease: {tried}")]
    NoLeaseNode { tried: String },
    #[error("the lease table {table} does not exist and user {user:?} cannot create it ({source}); create it once as an administrator:\n{ddl};\nGRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO <the dump user>;")]
    LeaseTableMissing {
        table: String,
        user: String,
        ddl: String,
        source: Box<mysql_async::Error>,
    },
    #[error("user {user:?} may not use the lease table {table} ({source}); grant it: GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO <the dump user>")]
    LeaseDenied {
        user: String,
        table: String,
        source: Box<mysql_async::Error>,
    },
    #[error("lease table {table}: {source}")]
    LeaseTable {
        table: String,
        source: Box<mysql_async::Error>,
    },
    #[error("could not mark slot {slot} {state} in the lease table: {last}")]
    LeaseFinish {
        slot: String,
        state: &'static str,
        last: Box<GaleraError>,
    },
}

impl From<DumpError> for GaleraError {
    fn from(e: DumpError) -> Self {
        GaleraError::Connect(Box::new(e))
    }
}

impl From<mysql_async::Error> for GaleraError {
    fn from(e: mysql_async::Error) -> Self {
        GaleraError::Server(Box::new(e))
    }
}
