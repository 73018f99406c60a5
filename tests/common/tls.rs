//! TLS helpers: a self-signed `localhost` certificate made with the `openssl` CLI, a rustls acceptor, a Pingora server conf.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// A self-signed certificate for `localhost` (SAN `DNS:localhost`, `IP:127.0.0.1`) and its key, in a tempdir.
pub struct SelfSigned {
    pub dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl SelfSigned {
    /// Runs `openssl req -x509` (valid one day). `basicConstraints=CA:FALSE` overrides openssl's default `CA:TRUE`,
    /// which webpki (rustls) rejects for a server certificate (`CaUsedAsEndEntity`) even when it is the trust anchor.
    /// The `O=` keeps the issuer name apart from Debian's `ssl-cert-snakeoil.pem` (`CN=localhost`, found among the
    /// system roots in `/etc/ssl/certs`), so an untrusted handshake fails as `UnknownIssuer`, not as a bad signature.
    pub fn localhost() -> SelfSigned {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args([
                "-days",
                "1",
                "-subj",
                "/CN=localhost/O=gpt-api integration tests",
            ])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run the openssl CLI (needed by the TLS tests): {e}")
            });
        assert!(
            out.status.success(),
            "openssl req failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        SelfSigned { dir, cert, key }
    }

    /// A rustls server (ring provider, TLS 1.2 and 1.3, HTTP/1.1 only) presenting this certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .expect("open cert.pem")
            .collect::<Result<_, _>>()
            .expect("parse cert.pem");
        let key = PrivateKeyDer::from_pem_file(&self.key).expect("parse key.pem");
        let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }
}

/// Writes a Pingora server conf (`-c`) into `dir`: 2 threads, pid file and upgrade socket inside `dir`,
/// and `ca_file` when given (without it Pingora trusts the system roots).
pub fn server_conf(dir: &Path, ca_file: Option<&Path>) -> PathBuf {
    let mut yaml = format!(
        "---\nversion: 1\nthreads: 2\npid_file: {}\nupgrade_sock: {}\n",
        dir.join("gpt-api.pid").display(),
        dir.join("gpt-api_upgrade.sock").display()
    );
    if let Some(ca) = ca_file {
        yaml.push_str(&format!("ca_file: {}\n", ca.display()));
    }
    let path = dir.join(if ca_file.is_some() {
        "server-ca.yaml"
    } else {
        "server-noca.yaml"
    });
    std::fs::write(&path, yaml).expect("write server conf");
    path
}
