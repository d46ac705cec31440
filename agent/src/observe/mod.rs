//! What the agent tells its supervisors: the health verdict (healthcheck, `/healthz`,
//! the stale alert), the Prometheus metrics, and the HTTP endpoints that serve both.

pub mod health;
pub mod http;
pub mod metrics;
pub mod warnings;
