//! The `/metrics` endpoint: HTTP/1.1 (hyper) on a TCP listener, `GET /metrics` only.
//!
//! Whoever can reach the port can read the metrics (node ids, work types, counts), so bind
//! it to loopback or a management network. A client cannot hold the node's resources: at
//! most [`MAX_CONNECTIONS`] at once, each closed after [`CONNECTION_TIMEOUT`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::{CONTENT_TYPE, MeshFigures, Metrics};
use crate::mesh::driver::MeshHandle;

/// Scrapers served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;

/// Longest one connection may stay open, request and response included.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {source}")]
pub struct ServeError {
    addr: String,
    source: std::io::Error,
}

/// A running `/metrics` endpoint; stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    /// The bound address (port 0 resolved).
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` (`host:port`) and serves `metrics` at `/metrics`, with routes and known
/// nodes read from `mesh` at each scrape.
///
/// # Errors
/// [`ServeError`] when the address cannot be bound.
pub async fn serve(
    addr: &str,
    metrics: Metrics,
    mesh: MeshHandle,
) -> Result<MetricsServer, ServeError> {
    let error = |source| ServeError {
        addr: addr.to_owned(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    let task = tokio::spawn(accept_loop(listener, metrics, mesh));
    Ok(MetricsServer { addr: bound, task })
}

async fn accept_loop(listener: TcpListener, metrics: Metrics, mesh: MeshHandle) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, mesh) = (metrics.clone(), mesh.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (metrics, mesh) = (metrics.clone(), mesh.clone());
                async move { Ok::<_, Infallible>(respond(&req, &metrics, &mesh).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}

async fn respond(
    req: &Request<Incoming>,
    metrics: &Metrics,
    mesh: &MeshHandle,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, text: String, content_type: &str| {
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        if let Ok(value) = content_type.parse() {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "metrics are at /metrics\n".into(),
            "text/plain",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET /metrics\n".into(),
            "text/plain",
        );
    }
    let figures = match mesh.status().await {
        Ok(status) => MeshFigures {
            routes: status.routes.len(),
            known_nodes: status.adverts.len(),
            adverts: status.advert_counts,
        },
        Err(_) => MeshFigures::default(),
    };
    reply(StatusCode::OK, metrics.encode(&figures), CONTENT_TYPE)
}
