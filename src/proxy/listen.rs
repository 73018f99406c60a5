//! Listening sockets bound by the gateway itself: a busy or forbidden address is an error at start, not
//! Pingora's 30 one-second retries followed by a panicked service thread in a process that stays up.
//!
//! Pingora binds a service's addresses when the service starts, unless its table of listening sockets
//! already has one for the address (how a graceful upgrade, `-u`, inherits them). [`Prebound`] puts our
//! own sockets in that table first: bound in `main` before the server runs (an error there is exit code 1
//! at once), or, when upgrading, bound at service start for any address the old process did not hand over.

use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::IntoRawFd;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;

/// Binds `addr` as Pingora would (SO_REUSEADDR, the first resolved address), once, without retrying.
pub fn bind(addr: &str) -> Result<TcpListener, String> {
    let sock_addr = addr
        .to_socket_addrs()
        .map_err(|e| format!("invalid listen address {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("invalid listen address {addr}: no address"))?;
    // std sets SO_REUSEADDR on Unix, as Pingora does: a port in TIME_WAIT is not "in use".
    let listener =
        TcpListener::bind(sock_addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    // Pingora hands the socket to tokio, which expects non-blocking sockets.
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    Ok(listener)
}

/// A Pingora service whose listening sockets are bound by us (see the module notes).
pub struct Prebound<S> {
    inner: S,
    bound: Vec<(String, TcpListener)>,
}

impl<S: Service> Prebound<S> {
    /// Binds every address of `inner` now, unless `upgrading` (the old process holds them; they are
    /// inherited, or bound when the service starts).
    pub fn new(inner: S, upgrading: bool) -> Result<Self, String> {
        let mut bound = Vec::new();
        if !upgrading {
            for addr in inner.listen_addresses().unwrap_or_default() {
                let listener = bind(&addr)?;
                bound.push((addr, listener));
            }
        }
        Ok(Prebound { inner, bound })
    }

    /// Puts a socket for each address in Pingora's table, so that Pingora never binds (and retries) itself.
    fn fill(&mut self, fds: &ListenFds) -> Result<(), String> {
        for addr in self.inner.listen_addresses().unwrap_or_default() {
            let ours = self
                .bound
                .iter()
                .position(|(a, _)| *a == addr)
                .map(|i| self.bound.swap_remove(i).1);
            if fds.lock().get(&addr).is_some() {
                // Inherited from the old process (`-u`): ours, if any, is closed.
                continue;
            }
            let listener = match ours {
                Some(l) => l,
                None => bind(&addr)?,
            };
            fds.lock().add(addr, listener.into_raw_fd());
        }
        Ok(())
    }
}

#[async_trait]
impl<S: Service> Service for Prebound<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        if let Some(table) = &fds {
            if let Err(e) = self.fill(table) {
                fatal(&e);
            }
        }
        self.inner
            .start_service(fds, shutdown, listeners_per_fd)
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(
        &self,
        global: &pingora::server::RuntimeOpts,
    ) -> Option<pingora::server::RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn on_startup_delay(&self, time_waited: Duration) {
        self.inner.on_startup_delay(time_waited)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

/// A service that cannot listen after the server started (only when upgrading, or when another process
/// took the port in the instant since `main` bound it): the process must not live on half deaf.
fn fatal(message: &str) -> ! {
    log::error!("{message}; exiting");
    log::logger().flush();
    eprintln!("gpt-api: {message}");
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn busy_address_is_an_error_naming_it() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let err = bind(&addr).unwrap_err();
        assert!(err.contains(&addr) && err.contains("in use"), "{err}");
    }

    #[test]
    fn bad_address_is_an_error() {
        assert!(bind("not an address").is_err());
    }
}
