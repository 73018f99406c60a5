//! Per-request state carried through Pingora's phases.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::config::Client;
use crate::error::GatewayError;
use crate::request::RequestInfo;

use super::Runtime;

/// Everything one request needs after `request_filter`: the config it started with, its body and route.
pub struct RequestCtx {
    pub started: Instant,
    /// The config snapshot this request uses from start to end (reloads do not affect it).
    pub runtime: Option<Arc<Runtime>>,
    /// The complete request body, as received.
    pub body: Bytes,
    pub info: Option<RequestInfo>,
    /// Clients to try, in order; `attempt` indexes the current one.
    pub candidates: Vec<Arc<Client>>,
    pub attempt: usize,
    /// The full body still has to be handed to the current upstream attempt.
    pub body_pending: bool,
    /// The error the gateway answered with, for the log.
    pub error: Option<GatewayError>,
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            started: Instant::now(),
            runtime: None,
            body: Bytes::new(),
            info: None,
            candidates: Vec::new(),
            attempt: 0,
            body_pending: false,
            error: None,
        }
    }

    /// The client of the current attempt, once routed.
    pub fn client(&self) -> Option<&Arc<Client>> {
        self.candidates.get(self.attempt)
    }

    pub fn model(&self) -> &str {
        self.info.as_ref().map_or("", |i| i.model.as_str())
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
