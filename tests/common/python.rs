//! The Python clients' interpreters: virtualenvs under `target/` with pinned packages (`openai` for the SDK
//! tests, `anthropic` for the Messages API's, `selenium` for the admin page's browser tests), each made once per checkout.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

/// The OpenAI SDK version the tests run against.
const OPENAI: &str = "openai==3.60.0";
/// The Anthropic SDK version the Messages API tests run against.
const ANTHROPIC: &str = "anthropic==2.17.0";
/// Longest wait for another test process that is making the virtualenv.
const SETUP_TIMEOUT: Duration = Duration::from_secs(600);
/// A lock older than this was left by a process that died while making the virtualenv.
const STALE_LOCK: Duration = Duration::from_secs(900);

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// `target/py-venv/bin/python`, with `openai` installed; made on first use.
pub fn python() -> PathBuf {
    python_with("py-venv", OPENAI)
}

/// `target/py-venv-anthropic/bin/python`, with `anthropic` installed; made on first use.
pub fn anthropic_python() -> PathBuf {
    python_with("py-venv-anthropic", ANTHROPIC)
}

/// `target/<name>/bin/python`, with `requirement` installed; made on first use. Test processes run in parallel:
/// one makes it under a lock directory (created atomically), the others wait for its ready marker.
pub fn python_with(name: &str, requirement: &str) -> PathBuf {
    let venv = target_dir().join(name);
    let ready = venv.join(format!(".ready-{requirement}"));
    let bin = venv.join("bin/python");
    let lock = target_dir().join(format!("{name}.lock"));
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        if ready.exists() {
            return bin;
        }
        std::fs::create_dir_all(target_dir()).expect("create target/");
        match std::fs::create_dir(&lock) {
            Ok(()) => {
                let made = make(&venv, &bin, requirement);
                let _ = std::fs::remove_dir(&lock);
                if let Err(why) = made {
                    panic!(
                        "cannot set up the Python test client in {}: {why}",
                        venv.display()
                    );
                }
                std::fs::write(&ready, b"").expect("write the ready marker");
                return bin;
            }
            Err(_) => {
                let age = std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok());
                if age.is_some_and(|a| a > STALE_LOCK) {
                    let _ = std::fs::remove_dir(&lock);
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {}",
                    lock.display()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn make(venv: &Path, bin: &Path, requirement: &str) -> Result<(), String> {
    run(Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(venv))
    .map_err(|e| {
        format!("{e} (the tests need python3 with the venv module: apt-get install python3-venv)")
    })?;
    run(Command::new(bin).args([
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        requirement,
    ]))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{cmd:?} exited {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}
