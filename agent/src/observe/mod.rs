//! What the agent tells its supervisors: the health verdict (healthcheck, `/healthz`,
//! the stale alert) and the Prometheus metrics.

pub mod health;
pub mod metrics;
