//! A real PostgreSQL for one test: `initdb` in a temp dir, started on a free loopback port (fsync off, small
//! buffers, its socket in the temp dir), stopped (`pg_ctl stop -m immediate`) on drop; `stop`/`start` for
//! outages. Installs the `postgresql` package under a file lock when no `initdb` is found. As root, the server
//! runs as the `postgres` user (initdb and pg_ctl refuse root), its temp dir given to that user.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tokio_postgres::{Client, NoTls};

use super::free_port;

/// The shared lock of the apt install: tests run in parallel processes.
const APT_LOCK: &str = "/tmp/gpt-api-apt.lock";

/// A running (or stopped) PostgreSQL server, removed with its data when dropped.
pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    pub port: u16,
    /// Run `initdb`/`pg_ctl` as the `postgres` user (we are root).
    as_postgres: bool,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// A fresh server, started and accepting connections (about a second).
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        let as_postgres = std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        if as_postgres {
            give_to_postgres(dir.path());
        }
        let data = dir.path().join("data");
        let mut pg = Postgres {
            bin,
            log: dir.path().join("postgres.log"),
            data,
            port: 0,
            as_postgres,
            dir,
        };
        let initdb = pg.bin.join("initdb");
        let data = pg.data.to_str().unwrap().to_owned();
        let args = [
            "-D",
            &data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ];
        let out = pg.run(&initdb, &args);
        assert!(
            out.status.success(),
            "initdb failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for _ in 0..3 {
            pg.port = free_port();
            if pg.try_start() {
                return pg;
            }
        }
        panic!("PostgreSQL did not start:\n{}", pg.log());
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (trust authentication, no password).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server again on the same port (after [`Postgres::stop`]).
    pub fn start_again(&self) {
        assert!(
            self.try_start(),
            "PostgreSQL did not start again:\n{}",
            self.log()
        );
    }

    /// Stops the server at once, as a crash would (`-m immediate`).
    pub fn stop(&self) {
        let data = self.data.to_str().unwrap();
        let pg_ctl = self.bin.join("pg_ctl");
        let out = self.run(&pg_ctl, &["-D", data, "-m", "immediate", "-w", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A connection to the `postgres` database.
    pub async fn client(&self) -> Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url()));
        tokio::spawn(connection);
        client
    }

    fn try_start(&self) -> bool {
        let socket_dir = self.dir.path().to_str().unwrap();
        let options = format!(
            "-F -p {} -k {socket_dir} -c listen_addresses=127.0.0.1 -c shared_buffers=16MB \
             -c max_connections=40 -c max_wal_size=256MB",
            self.port
        );
        let data = self.data.to_str().unwrap();
        let log = self.log.to_str().unwrap();
        let pg_ctl = self.bin.join("pg_ctl");
        let out = self.run(
            &pg_ctl,
            &[
                "-D", data, "-l", log, "-w", "-t", "30", "-o", &options, "start",
            ],
        );
        out.status.success()
    }

    fn run(&self, program: &Path, args: &[&str]) -> Output {
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        command
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- postgres log -----\n{}\n-----", self.log());
        }
        let data = self.data.to_str().unwrap_or_default().to_owned();
        let pg_ctl = self.bin.join("pg_ctl");
        // Stopped already (an outage test) is fine: pg_ctl says so and nothing runs.
        let _ = self.run(&pg_ctl, &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

/// The RequestId of every row of the shared `records` table and how many rows each has (none before it exists).
pub async fn shipped(db: &Client) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    let Ok(rows) = db
        .query("SELECT \"RequestId\"::text FROM records", &[])
        .await
    else {
        return ids;
    };
    for row in rows {
        *ids.entry(row.get::<_, String>(0)).or_default() += 1;
    }
    ids
}

/// The rows of the shared `records` table (0 before it exists).
pub async fn shipped_count(db: &Client) -> usize {
    match db.query_one("SELECT count(*) FROM records", &[]).await {
        Ok(row) => usize::try_from(row.get::<_, i64>(0)).unwrap(),
        Err(_) => 0,
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`; installs PostgreSQL when there is none.
fn bin_dir() -> PathBuf {
    if let Some(bin) = find_bin() {
        return bin;
    }
    let script = "ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && \
                  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }";
    let out = Command::new("flock")
        .args([APT_LOCK, "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("run flock");
    assert!(
        out.status.success(),
        "installing postgresql failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    find_bin().expect("no initdb under /usr/lib/postgresql/*/bin after installing postgresql")
}

fn find_bin() -> Option<PathBuf> {
    let entries = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    let mut versions: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Hands `dir` to the `postgres` user, which runs the server.
fn give_to_postgres(dir: &Path) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            out.status.success(),
            "no postgres user: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a numeric id")
    };
    std::os::unix::fs::chown(dir, Some(id("-u")), Some(id("-g")))
        .expect("chown the temp dir to postgres");
}
