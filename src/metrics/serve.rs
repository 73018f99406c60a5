//! The scrape endpoint: a small Pingora app answering `GET /metrics` on `server.metrics_listen`.

use std::sync::Arc;

use async_trait::async_trait;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;

use super::Metrics;

/// Answers `GET /metrics` with [`Metrics::render`]; every other path is a 404.
pub struct MetricsApp(pub Arc<Metrics>);

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let (status, kind, body) = match session.req_header().uri.path() {
            "/metrics" => (
                StatusCode::OK,
                prometheus::TEXT_FORMAT,
                self.0.render().into_bytes(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                b"metrics are at /metrics\n".to_vec(),
            ),
        };
        let mut response = Response::new(Vec::new());
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        *response.body_mut() = body;
        response
    }
}

/// A Pingora service answering scrapes on `addr` (`server.metrics_listen`), on one thread of its own.
pub fn service(metrics: Arc<Metrics>, addr: &str) -> Service<HttpServer<MetricsApp>> {
    let mut service = Service::new(
        "metrics".to_string(),
        HttpServer::new_app(MetricsApp(metrics)),
    );
    service.add_tcp(addr);
    service.threads = Some(1);
    service
}
