//! Which node to dump: every node probed in parallel, the eligible ones ranked.

use std::sync::Arc;
use std::time::Duration;

use crate::source::dump::{self, name_values, DumpError};
use backup_core::config::{NodeConfig, SourceConfig};
use backup_core::secret::Secret;

/// What a node said about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub wsrep_on: bool,
    pub ready: bool,
    pub connected: bool,
    pub cluster_status: String,
    pub local_state: String,
    pub cluster_state_uuid: String,
    pub conf_id: i64,
    pub cluster_size: i64,
    pub last_committed: i64,
    pub recv_queue: i64,
    pub threads_running: i64,
}

/// One node's probe result.
#[derive(Debug, Clone)]
pub struct Probe {
    pub node: NodeConfig,
    pub status: Result<NodeStatus, ProbeError>,
}

/// Why a node did not answer its probe.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Failed(Arc<DumpError>),
    #[error("no answer within {secs}s (stopped or overloaded?)")]
    NoAnswer { secs: u64 },
}

/// Why a reachable (or unreachable) node may not be dumped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ineligible {
    #[error("unreachable")]
    Unreachable,
    #[error("not in the Primary component (wsrep_cluster_status={status})")]
    NotPrimary { status: String },
    #[error("not connected to the cluster (wsrep_connected=OFF)")]
    NotConnected,
    #[error("not ready (wsrep_ready=OFF)")]
    NotReady,
    #[error("Donor/Desynced: a state transfer donor or desynced by someone else")]
    DesyncedElsewhere,
    #[error("state {state}, not Synced")]
    NotSynced { state: String },
    #[error("stale: it reports cluster configuration {conf_id} while another node is in {newest} (it was cut off and has not noticed yet)")]
    Stale { conf_id: i64, newest: i64 },
}

impl Probe {
    /// One line for messages: name, address, site, what it said.
    pub fn describe(&self, verdict: &Result<(), Ineligible>) -> String {
        let site = self.node.site.as_deref().unwrap_or("no site");
        let head = format!("{} ({}, {site})", self.node.name, self.node.endpoint);
        let said = match &self.status {
            Err(e) => return format!("{head}: unreachable: {e}"),
            Ok(s) if !s.wsrep_on => "standalone server (wsrep_on=OFF)".to_string(),
            Ok(s) => format!(
                "{}, {}, ready={}, connected={}, cluster size {}, configuration {}, seqno {}",
                s.local_state,
                s.cluster_status,
                on_off(s.ready),
                on_off(s.connected),
                s.cluster_size,
                s.conf_id,
                s.last_committed
            ),
        };
        match verdict {
            Ok(()) => format!("{head}: {said}"),
            Err(why) => format!("{head}: {said} -> not eligible: {why}"),
        }
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "ON"
    } else {
        "OFF"
    }
}

/// Asks one node for its state.
pub async fn probe(src: &SourceConfig, node: &NodeConfig, password: &Secret) -> Probe {
    let t = Duration::from_secs(src.connect_timeout_secs.max(1));
    let status = match tokio::time::timeout(t, probe_inner(src, node, password)).await {
        Ok(r) => r.map_err(|e| ProbeError::Failed(Arc::new(e))),
        Err(_) => Err(ProbeError::NoAnswer { secs: t.as_secs() }),
    };
    Probe {
        node: node.clone(),
        status,
    }
}

async fn probe_inner(
    src: &SourceConfig,
    node: &NodeConfig,
    password: &Secret,
) -> Result<NodeStatus, DumpError> {
    let mut conn = dump::connect(src, &node.endpoint, password).await?;
    let vars = name_values(
        &mut conn,
        "SHOW GLOBAL VARIABLES WHERE Variable_name = 'wsrep_on'",
        "reading wsrep_on",
    )
    .await?;
    let wsrep_on = vars.get("wsrep_on").map(String::as_str) == Some("ON");
    let st = name_values(
        &mut conn,
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_connected', \
         'wsrep_cluster_status', 'wsrep_local_state_comment', 'wsrep_cluster_state_uuid', \
         'wsrep_cluster_conf_id', 'wsrep_cluster_size', 'wsrep_last_committed', \
         'wsrep_local_recv_queue', 'Threads_running')",
        "reading the node's wsrep status",
    )
    .await?;
    let _ = conn.disconnect().await;
    let get = |n: &str| st.get(&n.to_ascii_lowercase()).cloned().unwrap_or_default();
    let num = |n: &str| get(n).parse::<i64>().unwrap_or(-1);
    Ok(NodeStatus {
        wsrep_on,
        ready: get("wsrep_ready") == "ON",
        connected: get("wsrep_connected") == "ON",
        cluster_status: get("wsrep_cluster_status"),
        local_state: get("wsrep_local_state_comment"),
        cluster_state_uuid: get("wsrep_cluster_state_uuid"),
        conf_id: num("wsrep_cluster_conf_id"),
        cluster_size: num("wsrep_cluster_size"),
        last_committed: num("wsrep_last_committed"),
        recv_queue: num("wsrep_local_recv_queue").max(0),
        threads_running: num("Threads_running").max(0),
    })
}

/// Asks every node at once.
pub async fn probe_all(src: &SourceConfig, password: &Secret) -> Vec<Probe> {
    let futs = src.nodes.iter().map(|n| probe(src, n, password));
    futures_util::future::join_all(futs).await
}

/// Why the backup found no node to dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoEligibleNode {
    /// No reachable node is in a Primary component: the cluster lost quorum.
    pub quorum_lost: bool,
    /// One line per node.
    pub nodes: Vec<String>,
}

impl std::fmt::Display for NoEligibleNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.quorum_lost {
            write!(f, "no node is in a Primary component: the cluster has lost quorum (or every node is down), so nobody can take a consistent dump until it is restored; this is not something another agent can take over (a Galera arbitrator, garbd, on a third site keeps quorum when one datacenter is lost). Nodes: ")?;
        } else {
            write!(f, "no node is eligible for a dump. Nodes: ")?;
        }
        write!(f, "{}", self.nodes.join("; "))
    }
}

/// Why each node is or is not eligible (pure).
pub fn eligibility(probes: &[Probe], own_desync: &[String]) -> Vec<Result<(), Ineligible>> {
    let newest_conf = probes
        .iter()
        .filter_map(|p| p.status.as_ref().ok())
        .filter(|s| s.wsrep_on && s.cluster_status == "Primary")
        .map(|s| s.conf_id)
        .max();
    probes
        .iter()
        .map(|p| {
            let s = p.status.as_ref().map_err(|_| Ineligible::Unreachable)?;
            if !s.wsrep_on {
                return Ok(());
            }
            if s.cluster_status != "Primary" {
                return Err(Ineligible::NotPrimary {
                    status: s.cluster_status.clone(),
                });
            }
            if !s.connected {
                return Err(Ineligible::NotConnected);
            }
            if !s.ready {
                return Err(Ineligible::NotReady);
            }
            let ours = own_desync.iter().any(|n| n == &p.node.name);
            match s.local_state.as_str() {
                "Synced" => {}
                "Donor/Desynced" if ours => {}
                "Donor/Desynced" => return Err(Ineligible::DesyncedElsewhere),
                other => {
                    return Err(Ineligible::NotSynced {
                        state: other.to_string(),
                    })
                }
            }
            if let Some(n) = newest_conf {
                if s.conf_id < n {
                    return Err(Ineligible::Stale {
                        conf_id: s.conf_id,
                        newest: n,
                    });
                }
            }
            Ok(())
        })
        .collect()
}

/// Picks the node to dump: eligible, own site first, then least loaded, then config order.
pub fn choose(
    probes: &[Probe],
    own_site: &str,
    own_desync: &[String],
) -> Result<usize, NoEligibleNode> {
    let verdicts = eligibility(probes, own_desync);
    let best = (0..probes.len())
        .filter(|&i| verdicts[i].is_ok())
        .min_by_key(|&i| {
            let s = probes[i].status.as_ref().expect("eligible means reachable");
            let other_site = probes[i].node.site.as_deref() != Some(own_site);
            (other_site, s.recv_queue, s.threads_running, i)
        });
    best.ok_or_else(|| NoEligibleNode {
        quorum_lost: !probes.iter().any(|p| {
            p.status
                .as_ref()
                .is_ok_and(|s| !s.wsrep_on || s.cluster_status == "Primary")
        }),
        nodes: probes
            .iter()
            .zip(&verdicts)
            .map(|(p, v)| p.describe(v))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use backup_core::config::Endpoint;

    fn node(name: &str, site: &str) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            endpoint: Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 1,
            },
            site: Some(site.into()),
        }
    }

    fn synced(conf: i64, queue: i64) -> NodeStatus {
        NodeStatus {
            wsrep_on: true,
            ready: true,
            connected: true,
            cluster_status: "Primary".into(),
            local_state: "Synced".into(),
            cluster_state_uuid: "u".into(),
            conf_id: conf,
            cluster_size: 3,
            last_committed: 10,
            recv_queue: queue,
            threads_running: 1,
        }
    }

    fn probes(list: Vec<(NodeConfig, Result<NodeStatus, ProbeError>)>) -> Vec<Probe> {
        list.into_iter()
            .map(|(node, status)| Probe { node, status })
            .collect()
    }

    #[test]
    fn prefers_own_site_then_least_loaded() {
        let p = probes(vec![
            (node("a", "dc1"), Ok(synced(4, 5))),
            (node("b", "dc1"), Ok(synced(4, 0))),
            (node("c", "dc2"), Ok(synced(4, 0))),
        ]);
        assert_eq!(choose(&p, "dc1", &[]), Ok(1));
        assert_eq!(choose(&p, "dc2", &[]), Ok(2));
        assert_eq!(choose(&p, "dc9", &[]), Ok(1));
    }

    #[test]
    fn skips_desynced_stale_and_non_primary() {
        let mut desynced = synced(4, 0);
        desynced.local_state = "Donor/Desynced".into();
        let stale = synced(3, 0);
        let mut np = synced(5, 0);
        np.cluster_status = "non-Primary".into();
        let p = probes(vec![
            (node("a", "dc1"), Ok(desynced.clone())),
            (node("b", "dc1"), Ok(stale)),
            (node("c", "dc2"), Ok(synced(4, 9))),
            (node("d", "dc1"), Ok(np)),
            (node("e", "dc1"), Err(ProbeError::NoAnswer { secs: 1 })),
        ]);
        assert_eq!(choose(&p, "dc1", &[]), Ok(2));
        // A node this agent desynced itself stays eligible.
        assert_eq!(choose(&p, "dc1", &["a".into()]), Ok(0));
        let v = eligibility(&p, &[]);
        assert!(v[1].as_ref().unwrap_err().to_string().contains("stale"));
        assert!(matches!(
            v[1],
            Err(Ineligible::Stale {
                conf_id: 3,
                newest: 4
            })
        ));
        assert!(v[3].as_ref().unwrap_err().to_string().contains("Primary"));
        assert!(matches!(v[4], Err(Ineligible::Unreachable)));
    }

    #[test]
    fn quorum_loss_is_named_and_every_node_listed() {
        let mut np = synced(5, 0);
        np.cluster_status = "non-Primary".into();
        let p = probes(vec![
            (node("a", "dc1"), Ok(np)),
            (node("b", "dc1"), Err(ProbeError::NoAnswer { secs: 3 })),
        ]);
        let e = choose(&p, "dc1", &[]).unwrap_err();
        assert!(e.quorum_lost);
        let msg = e.to_string();
        assert!(
            msg.contains("lost quorum") && msg.contains("garbd"),
            "{msg}"
        );
        assert!(msg.contains("a (127.0.0.1:1, dc1)") && msg.contains("no answer within 3s"));
        // Primary but desynced by someone else: no quorum problem, still nothing eligible.
        let mut d = synced(4, 0);
        d.local_state = "Donor/Desynced".into();
        let p = probes(vec![(node("a", "dc1"), Ok(d))]);
        let e = choose(&p, "dc1", &[]).unwrap_err();
        assert!(!e.quorum_lost);
        assert!(e.to_string().contains("desynced by someone else"));
    }

    #[test]
    fn standalone_server_is_eligible() {
        let s = NodeStatus {
            wsrep_on: false,
            ..Default::default()
        };
        let p = probes(vec![(node("a", "dc1"), Ok(s))]);
        assert_eq!(choose(&p, "dc1", &[]), Ok(0));
    }
}
