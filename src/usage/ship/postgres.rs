//! The PostgreSQL end: `usage.postgres_url` parsed once into a [`Target`] (its TLS from `sslmode`, a name that
//! shows no password), and a [`Session`] on it that creates the shared table and its partitions and inserts
//! batches.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::batch::Batch;
use super::schema::{self, TABLE};
use super::tls::{self, Verify};
use crate::config::mask_userinfo;
use crate::usage::Month;

/// How long a connection attempt may take, unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one statement may take before the server counts as unavailable.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why PostgreSQL could not be used. Messages name the target (never its password) and PostgreSQL's error
/// code and message (never its DETAIL, which can quote a row).
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("usage.postgres_url {shown}: {reason}")]
    Url { shown: String, reason: String },
    #[error("usage.postgres_url {shown}: {source}")]
    Tls {
        shown: String,
        source: tls::TlsError,
    },
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("{target}: {reason}")]
    Query {
        target: String,
        reason: String,
        /// PostgreSQL's SQLSTATE, when the server answered with an error.
        code: Option<String>,
    },
    #[error("{target}: no answer within {0:?}", STATEMENT_TIMEOUT)]
    Timeout { target: String },
}

impl PostgresError {
    /// The server refused the data itself (SQLSTATE class 22, data exception, or 23, integrity constraint):
    /// sending it again will not help.
    pub fn refuses_data(&self) -> bool {
        match self {
            PostgresError::Query {
                code: Some(code), ..
            } => code.starts_with("22") || code.starts_with("23"),
            _ => false,
        }
    }

    /// The table does not exist (SQLSTATE 42P01): nothing was shipped there yet.
    pub fn no_table(&self) -> bool {
        matches!(self, PostgresError::Query { code: Some(code), .. } if code == "42P01")
    }
}

/// A PostgreSQL database to ship to (or read from).
pub struct Target {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    shown: String,
    key: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("shown", &self.shown)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// A `postgres://` URL as libpq reads it; `sslmode` (disable, allow, prefer (default), require, verify-ca,
    /// verify-full) and `sslrootcert` (a PEM file, or `system`) are handled here, the rest by tokio-postgres.
    pub fn parse(url: &str) -> Result<Target, PostgresError> {
        let (rest, ssl) = split_ssl(url);
        let shown_url = || mask_userinfo(url.split('?').next().unwrap_or_default()).into_owned();
        let url_error = |reason: String| PostgresError::Url {
            shown: shown_url(),
            reason,
        };
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e: tokio_postgres::Error| url_error(e.to_string()))?;
        let (mode, verify) = match (ssl.mode.as_deref(), &ssl.root_cert) {
            (Some("disable"), _) => (SslMode::Disable, Verify::Nothing),
            (None | Some("allow" | "prefer"), _) => (SslMode::Prefer, Verify::Nothing),
            (Some("require"), None) => (SslMode::Require, Verify::Nothing),
            (Some("require" | "verify-ca"), _) => (SslMode::Require, Verify::Chain),
            (Some("verify-full"), _) => (SslMode::Require, Verify::Full),
            (Some(other), _) => return Err(url_error(format!("unknown sslmode {other:?}"))),
        };
        config.ssl_mode(mode);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("gpt-api");
        }
        // The roots are read only when a check needs them (`verify-*`), once.
        let tls = tls::connector(verify, ssl.root_cert.as_deref()).map_err(|source| {
            PostgresError::Tls {
                shown: shown_url(),
                source,
            }
        })?;
        let key = key(&config);
        let shown = match config.get_user() {
            Some(user) => format!("postgres://{user}@{key}"),
            None => format!("postgres://{key}"),
        };
        Ok(Target {
            config,
            tls,
            shown,
            key,
        })
    }

    /// `postgres://user@host:port/database`: for log lines and errors.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// `host:port/database`: what the monthly files' progress is kept under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// A connection, its I/O driven by a task on the current runtime.
    pub async fn connect(&self) -> Result<Client, PostgresError> {
        let connecting = self.config.connect(self.tls.clone());
        let (client, connection) = connecting.await.map_err(|e| PostgresError::Connect {
            target: self.shown.clone(),
            reason: describe(&e),
        })?;
        let target = self.shown.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                log::debug!(
                    "usage shipping: connection to {target} ended: {}",
                    describe(&e)
                );
            }
        });
        Ok(client)
    }

    /// A statement's outcome as a [`PostgresError`], bounded by [`STATEMENT_TIMEOUT`].
    pub async fn run<T>(
        &self,
        statement: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, PostgresError> {
        match tokio::time::timeout(STATEMENT_TIMEOUT, statement).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(PostgresError::Query {
                target: self.shown.clone(),
                reason: describe(&e),
                code: e.code().map(|c| c.code().to_owned()),
            }),
            Err(_) => Err(PostgresError::Timeout {
                target: self.shown.clone(),
            }),
        }
    }
}

/// `sslmode` and `sslrootcert` of a URL's query.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ssl {
    pub mode: Option<String>,
    pub root_cert: Option<PathBuf>,
}

/// The URL without `sslmode` and `sslrootcert` (which tokio-postgres reads differently or not at all), and them.
pub fn split_ssl(url: &str) -> (String, Ssl) {
    let mut ssl = Ssl::default();
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), ssl);
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let decoded = url::form_urlencoded::parse(pair.as_bytes()).next();
        match decoded {
            Some((k, v)) if k == "sslmode" => ssl.mode = Some(v.into_owned()),
            Some((k, v)) if k == "sslrootcert" => {
                ssl.root_cert = Some(PathBuf::from(v.into_owned()))
            }
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, ssl)
}

/// `host:port[,host:port...]/database` of a parsed URL (the database defaults to the user's name, as in libpq).
fn key(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{}:{port}", dir.display()),
            }
        })
        .collect();
    let database = config.get_dbname().or(config.get_user()).unwrap_or("");
    format!("{}/{database}", hosts.join(","))
}

/// An error without what PostgreSQL's DETAIL and HINT may quote of a row.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// A connection that ships batches: the table is there, the INSERT prepared, the partitions it made known.
pub struct Session {
    client: Client,
    insert: Statement,
    partitions: HashSet<Month>,
}

impl Session {
    /// Connects, creates the table if absent (and adds the columns an older version's table lacks), and the
    /// partitions of this month and the next.
    pub async fn open(
        target: &Target,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Session, PostgresError> {
        let mut client = target.connect().await?;
        ensure_table(target, &mut client).await?;
        let insert = target.run(client.prepare(&schema::insert())).await?;
        let mut session = Session {
            client,
            insert,
            partitions: HashSet::new(),
        };
        let this = schema::utc_month(&now);
        session
            .ensure_partitions(target, [this, schema::next_month(this)])
            .await?;
        Ok(session)
    }

    /// The connection has ended (the server went away): a new session is needed.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Inserts `batch` in one statement (its own transaction); rows already there are skipped. Returns the
    /// rows inserted.
    pub async fn insert(&mut self, target: &Target, batch: &Batch) -> Result<u64, PostgresError> {
        // This month's and the next one's too: a session lives for months, and the next month's rows should
        // find their partition made ahead of time.
        let this = schema::utc_month(&chrono::Utc::now());
        let months = [this, schema::next_month(this)];
        self.ensure_partitions(target, batch.months().iter().copied().chain(months))
            .await?;
        let params = batch.params();
        target.run(self.client.execute(&self.insert, &params)).await
    }

    /// Forgets which partitions exist (one may have been dropped); they are checked again before the next insert.
    pub fn forget_partitions(&mut self) {
        self.partitions.clear();
    }

    /// Creates the partitions of `months` that this session has not seen yet and that do not exist.
    async fn ensure_partitions(
        &mut self,
        target: &Target,
        months: impl IntoIterator<Item = Month>,
    ) -> Result<(), PostgresError> {
        let mut missing = Vec::new();
        for month in months {
            if self.partitions.contains(&month) {
                continue;
            }
            let name = schema::partition_name(month);
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&name];
            let found = self
                .client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &params);
            if target.run(found).await?.get::<_, bool>(0) {
                self.partitions.insert(month);
            } else {
                missing.push(month);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let transaction = target.run(self.client.transaction()).await?;
        target
            .run(transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::DDL_LOCK]))
            .await?;
        for month in &missing {
            target
                .run(transaction.batch_execute(&schema::create_partition(*month)))
                .await?;
        }
        target.run(transaction.commit()).await?;
        self.partitions.extend(missing);
        Ok(())
    }
}

/// The table, created if absent, under the advisory lock so that nodes starting together do not race.
async fn ensure_table(target: &Target, client: &mut Client) -> Result<(), PostgresError> {
    let transaction = target.run(client.transaction()).await?;
    target
        .run(transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::DDL_LOCK]))
        .await?;
    target
        .run(transaction.batch_execute(&schema::create_table()))
        .await?;
    let rows = target
        .run(transaction.query(schema::EXISTING_COLUMNS, &[&TABLE]))
        .await?;
    let existing: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    for column in schema::columns() {
        if !existing.iter().any(|name| name == column.name) {
            target
                .run(transaction.batch_execute(&schema::add_column(column)))
                .await?;
        }
    }
    target.run(transaction.commit()).await
}
