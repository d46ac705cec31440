//! The HTTP endpoints: `/healthz` (the healthcheck's verdict and code) and `/metrics`.

use std::sync::Arc;

use backup_core::config::Config;

use crate::observe::health;

/// Serves `/healthz` and `/metrics` until the listener fails.
pub async fn serve_http(listener: tokio::net::TcpListener, cfg: Arc<Config>) {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let c1 = cfg.clone();
    let c2 = cfg.clone();
    let app = axum::Router::new()
        .route(
            "/healthz",
            get(move || {
                let cfg = c1.clone();
                async move {
                    let (v, _, _) = tokio::task::spawn_blocking(move || health::check(&cfg))
                        .await
                        .expect("healthcheck task");
                    let code = if v.code == health::OK {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (code, format!("{}\n", v.line))
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let cfg = c2.clone();
                async move {
                    let body = tokio::task::spawn_blocking(move || {
                        let (v, facts, state) = health::check(&cfg);
                        crate::observe::metrics::render(&state, &facts, v.code)
                    })
                    .await
                    .expect("metrics task");
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(event = "http_failed", error = %e);
    }
}
