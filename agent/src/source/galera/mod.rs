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

mod desync;
mod lease;
mod node;

pub use desync::{clear_leftover_desync, stuck_desyncs, DesyncGuard, DesyncMarker};
pub use lease::{acquire, lease_ddl, Claim, Lease, MAX_ATTEMPTS};
pub use node::{choose, eligibility, probe, probe_all, NoEligibleNode, NodeStatus, Probe};
