//! HTTPS at the edge: the listener's certificate, served through a resolver so that it can be replaced live.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};

use crate::config::TlsPaths;
use crate::proxy::watch::fingerprint;

/// Why a certificate could not be loaded; the running one (if any) stays.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{field} {path}: {message}")]
    File {
        field: &'static str,
        path: String,
        message: String,
    },
    #[error("certificate {cert} and key {key}: {message}")]
    Pair {
        cert: String,
        key: String,
        message: String,
    },
}

/// One certificate chain and key as read from disk.
struct Loaded {
    key: Arc<CertifiedKey>,
    paths: TlsPaths,
    fingerprint: u64,
}

/// The listener's certificate. rustls asks it for the certificate at every handshake, so a reload swaps it for
/// new connections while established ones keep theirs.
pub struct CertStore {
    current: ArcSwap<Loaded>,
    /// Fingerprint of file contents last rejected, so a broken pair is reported once rather than at every poll.
    rejected: AtomicU64,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("paths", &self.current.load().paths)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }
}

impl CertStore {
    /// Reads and checks the certificate chain and key (the key must match the leaf certificate).
    pub fn load(paths: &TlsPaths) -> Result<CertStore, TlsError> {
        let (fingerprint, key) = read_pair(paths)?;
        Ok(CertStore {
            current: ArcSwap::from_pointee(Loaded {
                key,
                paths: paths.clone(),
                fingerprint,
            }),
            rejected: AtomicU64::new(0),
        })
    }

    /// Re-reads the files at `paths` (which may differ from the current ones); swaps the certificate when
    /// their contents changed (or always, with `force`) and they are valid. Returns whether it was swapped.
    /// Handshakes already done keep their certificate. An unchanged broken pair returns `Ok(false)` once reported.
    pub fn reload(&self, paths: &TlsPaths, force: bool) -> Result<bool, TlsError> {
        let print = fingerprint(&read(paths)?);
        let current = self.current.load();
        let same_files = current.paths == *paths && current.fingerprint == print;
        if !force && (same_files || self.rejected.load(Ordering::Relaxed) == print) {
            return Ok(false);
        }
        match read_pair(paths) {
            Ok((fingerprint, key)) => {
                self.current.store(Arc::new(Loaded {
                    key,
                    paths: paths.clone(),
                    fingerprint,
                }));
                Ok(true)
            }
            Err(e) => {
                self.rejected.store(print, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Listener settings presenting this store's certificate, offering HTTP/2 and HTTP/1.1 through ALPN.
    pub fn settings(self: &Arc<Self>) -> Result<TlsSettings, String> {
        let paths = self.current.load().paths.clone();
        // The paths are not read by Pingora: the resolver replaces them.
        let mut settings = TlsSettings::intermediate(
            &paths.cert_path.to_string_lossy(),
            &paths.key_path.to_string_lossy(),
        )
        .map_err(|e| format!("TLS listener settings: {e}"))?;
        settings.set_cert_resolver(self.clone());
        settings.enable_h2();
        Ok(settings)
    }
}

/// Both files' bytes, for the change fingerprint.
fn read(paths: &TlsPaths) -> Result<Vec<u8>, TlsError> {
    let mut bytes = read_file("cert_path", &paths.cert_path)?;
    bytes.extend(read_file("key_path", &paths.key_path)?);
    Ok(bytes)
}

fn read_file(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        field,
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Parses the PEM files into a signing key for rustls, checking that the key belongs to the leaf certificate.
fn read_pair(paths: &TlsPaths) -> Result<(u64, Arc<CertifiedKey>), TlsError> {
    let print = fingerprint(&read(paths)?);
    let cert = paths.cert_path.to_string_lossy();
    let key = paths.key_path.to_string_lossy();
    let pair_error = |message: String| TlsError::Pair {
        cert: cert.to_string(),
        key: key.to_string(),
        message,
    };
    let loaded = pingora::tls::load_certs_and_key_files(&cert, &key)
        .map_err(|e| pair_error(format!("not valid PEM: {e}")))?;
    let Some((chain, private_key)) = loaded else {
        return Err(pair_error(
            "expected at least one CERTIFICATE block in cert_path and a PRIVATE KEY block \
             (PKCS#8, PKCS#1 or SEC1) in key_path"
                .into(),
        ));
    };
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| pair_error("no rustls crypto provider installed".into()))?;
    let certified = CertifiedKey::from_der(chain, private_key, provider)
        .map_err(|e| pair_error(e.to_string()))?;
    Ok((print, Arc::new(certified)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn paths(dir: &Path) -> TlsPaths {
        TlsPaths {
            cert_path: dir.join("cert.pem"),
            key_path: dir.join("key.pem"),
        }
    }

    /// A self-signed certificate and key written by the `openssl` CLI (CI installs it).
    fn self_signed(dir: &Path, name: &str) -> TlsPaths {
        let p = TlsPaths {
            cert_path: dir.join(format!("{name}.crt")),
            key_path: dir.join(format!("{name}.key")),
        };
        let out = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
            .arg(&p.key_path)
            .arg("-out")
            .arg(&p.cert_path)
            .output()
            .expect("the openssl CLI");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        p
    }

    #[test]
    fn reload_swaps_on_change_and_reports_a_broken_pair_once() {
        let dir = tempfile::tempdir().unwrap();
        let live = self_signed(dir.path(), "live");
        let other = self_signed(dir.path(), "other");
        let store = CertStore::load(&live).unwrap();
        assert!(!store.reload(&live, false).unwrap(), "unchanged files");
        assert!(store.reload(&live, true).unwrap(), "forced");
        // A new certificate with the old key: refused once, then ignored until the files change again.
        std::fs::copy(&other.cert_path, &live.cert_path).unwrap();
        let err = store.reload(&live, false).unwrap_err().to_string();
        assert!(err.contains("KeyMismatch"), "{err}");
        assert!(!store.reload(&live, false).unwrap(), "reported once");
        std::fs::copy(&other.key_path, &live.key_path).unwrap();
        assert!(
            store.reload(&live, false).unwrap(),
            "the matching key completes the pair"
        );
        // Other paths (a config reload) are read even when their contents equal the current ones.
        assert!(store.reload(&other, false).unwrap());
        assert_eq!(store.current.load().paths, other);
    }

    #[test]
    fn missing_and_invalid_files_are_reported_by_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        let err = CertStore::load(&p).unwrap_err().to_string();
        assert!(err.starts_with("cert_path "), "{err}");
        assert!(err.contains("cert.pem"), "{err}");
        std::fs::write(&p.cert_path, "not pem").unwrap();
        std::fs::write(&p.key_path, "not pem either").unwrap();
        let err = CertStore::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("expected at least one CERTIFICATE block"),
            "{err}"
        );
    }
}
