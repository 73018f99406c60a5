//! `server.admin_listen` and `server.admin_key`: where the admin page is served, and the key it asks for.

use std::net::SocketAddr;

use super::auth::AuthSettings;
use super::compile::{Errors, Section};
use super::ConfigError;
use crate::secret::Secret;

/// The admin page's listener and key, validated. Present only when `server.admin_listen` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// `host:port`, as written (validated to parse as a socket address). Read at startup only.
    pub listen: String,
    /// `None`: the page is open to whoever reaches the listener (only allowed on a loopback address).
    pub key: Option<Secret>,
}

impl AdminSettings {
    /// Whether the listener only takes connections from this machine.
    pub fn is_loopback(&self) -> bool {
        is_loopback(&self.listen)
    }
}

fn is_loopback(listen: &str) -> bool {
    listen
        .parse::<SocketAddr>()
        .is_ok_and(|addr| addr.ip().is_loopback())
}

/// `server.admin_listen` (an address of its own) and `server.admin_key` (required off loopback).
pub(super) fn compile_admin(
    s: &mut Section,
    listen: Option<String>,
    key: Option<String>,
    taken: &[(&str, Option<&str>)],
) -> Option<AdminSettings> {
    let key = key.map(Secret::new);
    if key.as_ref().is_some_and(Secret::is_empty) {
        s.report(
            "admin_key",
            "must not be empty (remove it to run without a key)",
        );
    }
    let Some(addr) = listen else {
        if key.is_some() {
            s.report("admin_key", "needs server.admin_listen");
        }
        return None;
    };
    let Ok(parsed) = addr.parse::<SocketAddr>() else {
        let message = format!("expected an address such as 127.0.0.1:9200, not {addr:?}");
        s.report("admin_listen", message);
        return None;
    };
    for (name, other) in taken {
        if other.and_then(|o| o.parse::<SocketAddr>().ok()) == Some(parsed) {
            s.report("admin_listen", format!("must differ from server.{name}"));
            return None;
        }
    }
    if key.is_none() && !parsed.ip().is_loopback() {
        s.report(
            "admin_key",
            format!("required when admin_listen ({addr}) is not a loopback address"),
        );
        return None;
    }
    Some(AdminSettings { listen: addr, key })
}

/// An admin key equal to a gateway key would let every caller of that key into the admin page.
pub(super) fn report_shared_key(
    admin: Option<&AdminSettings>,
    auth: Option<&AuthSettings>,
    errors: &mut Errors,
) {
    let Some(admin_key) = admin.and_then(|a| a.key.as_ref()) else {
        return;
    };
    let keys = auth.map_or(&[][..], |a| &a.keys[..]);
    if let Some(i) = keys.iter().position(|k| k.key == *admin_key) {
        let message = format!("must differ from every gateway key (it equals auth.keys[{i}].key)");
        errors.push(ConfigError::new("server.admin_key", message));
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn compile(text: &str) -> Result<Config, Vec<String>> {
        let env = |name: &str| (name == "ADMIN_KEY").then(|| "adm-secret".to_string());
        Config::parse(text, &env).map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn off_when_absent_and_open_on_loopback() {
        assert_eq!(compile("openai_clients: []\n").unwrap().server.admin, None);
        let config =
            compile("openai_clients: []\nserver: {admin_listen: '127.0.0.1:9200'}\n").unwrap();
        let admin = config.server.admin.unwrap();
        assert_eq!(admin.listen, "127.0.0.1:9200");
        assert_eq!(admin.key, None);
        assert!(admin.is_loopback());
        let config = compile("openai_clients: []\nserver: {admin_listen: '[::1]:9200'}\n").unwrap();
        assert!(config.server.admin.unwrap().is_loopback());
    }

    #[test]
    fn a_key_is_required_off_loopback_and_never_printed() {
        assert_eq!(
            compile("openai_clients: []\nserver: {admin_listen: '0.0.0.0:9200'}\n").unwrap_err(),
            ["server.admin_key: required when admin_listen (0.0.0.0:9200) is not a loopback address"]
        );
        let text =
            "openai_clients: []\nserver: {admin_listen: '0.0.0.0:9200', admin_key: '${ADMIN_KEY}'}\n";
        let admin = compile(text).unwrap().server.admin.unwrap();
        assert!(!admin.is_loopback());
        assert_eq!(admin.key.as_ref().map(|k| k.expose()), Some("adm-secret"));
        assert!(!format!("{admin:?}").contains("adm-secret"));
    }

    #[test]
    fn bad_values_are_reported_at_their_paths() {
        let errors =
            |server: &str| compile(&format!("openai_clients: []\nserver: {server}\n")).unwrap_err();
        assert_eq!(
            errors("{admin_listen: localhost}"),
            ["server.admin_listen: expected an address such as 127.0.0.1:9200, not \"localhost\""]
        );
        assert_eq!(
            errors("{listen: '127.0.0.1:8000', admin_listen: '127.0.0.1:8000'}"),
            ["server.admin_listen: must differ from server.listen"]
        );
        assert_eq!(
            errors("{metrics_listen: '127.0.0.1:9100', admin_listen: '127.0.0.1:9100'}"),
            ["server.admin_listen: must differ from server.metrics_listen"]
        );
        assert_eq!(
            errors("{admin_key: k}"),
            ["server.admin_key: needs server.admin_listen"]
        );
        assert_eq!(
            errors("{admin_listen: '127.0.0.1:9200', admin_key: ''}"),
            ["server.admin_key: must not be empty (remove it to run without a key)"]
        );
        assert_eq!(
            errors("{admin_listen: 9200}"),
            ["server.admin_listen: expected a string"]
        );
    }

    #[test]
    fn a_gateway_key_is_never_an_admin_key() {
        let text = "openai_clients: []\nserver: {admin_listen: '127.0.0.1:9200', admin_key: '${ADMIN_KEY}'}\n\
                    auth: {keys: [{name: a, key: other}, {name: b, key: adm-secret}]}\n";
        let errors = compile(text).unwrap_err();
        assert_eq!(
            errors,
            ["server.admin_key: must differ from every gateway key (it equals auth.keys[1].key)"]
        );
        assert!(!errors[0].contains("adm-secret"));
    }
}
