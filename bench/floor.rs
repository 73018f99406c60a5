//! The floor under gpt-api: a bare Pingora 0.9 proxy to one backend, with none of the gateway's work, so
//! `bench/instructions.sh` can say how much of a request's cost is Pingora's and how much is ours.
//!
//! `cargo run --release --example bench-floor -- LISTEN BACKEND` (both `host:port`), one worker thread without
//! work stealing, like gpt-api's.

use async_trait::async_trait;
use pingora::prelude::HttpPeer;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;

/// The gateway's allocator, so the two are compared like for like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Floor(std::net::SocketAddr);

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(backend)) = (args.next(), args.next()) else {
        eprintln!("usage: bench-floor LISTEN BACKEND");
        std::process::exit(2);
    };
    let Ok(backend) = backend.parse() else {
        eprintln!("BACKEND must be an ip:port");
        std::process::exit(2);
    };
    let Some(mut conf) = ServerConf::new() else {
        eprintln!("cannot build a server conf");
        std::process::exit(1);
    };
    conf.threads = 1;
    conf.work_stealing = false;
    conf.grace_period_seconds = Some(0);
    conf.graceful_shutdown_timeout_seconds = Some(1);
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, Floor(backend));
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}
