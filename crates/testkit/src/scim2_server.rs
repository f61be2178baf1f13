//! Test helper: a real SCIM server (PyPI `scim2-server`) for integration tests.
//!
//! Shared by every test suite that needs a SCIM target.
//!
//! - If `PROVISIONER_TEST_SCIM_URL` is set, tests use that server (with
//!   `PROVISIONER_TEST_SCIM_TOKEN` as its bearer token, if any).
//! - Otherwise each [`Scim2Server::start`] spawns `scim2-server` from the venv
//!   (`$SCIM2_SERVER_BIN`, else `$SCIM2_VENV/bin/scim2-server`, else
//!   `<workspace>/.venv/scim2/bin/scim2-server`, installing it with
//!   `scripts/scim2-server.sh install` when missing) on a free port, waits
//!   until it answers and kills it on drop.
//!
//! Anything that prevents starting the server panics: these tests never skip.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Scim2Server {
    /// e.g. `http://127.0.0.1:34567/v2`
    pub base_url: String,
    /// The bearer token the server accepts, if it requires one.
    pub token: Option<String>,
    /// Whether this is a server of our own (fresh, empty) or an external one.
    pub owned: bool,
    child: Option<Child>,
    log: Option<PathBuf>,
}

static INSTALL: Mutex<()> = Mutex::new(());

fn workspace_root() -> PathBuf {
    // crates/<name> -> workspace root
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("..")
}

fn server_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("SCIM2_SERVER_BIN") {
        return PathBuf::from(bin);
    }
    let venv =
        std::env::var("SCIM2_VENV").map(PathBuf::from).unwrap_or_else(|_| workspace_root().join(".venv").join("scim2"));
    let bin = venv.join("bin").join("scim2-server");
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if !bin.exists() {
        let script = workspace_root().join("scripts").join("scim2-server.sh");
        let status = Command::new("bash")
            .arg(&script)
            .arg("install")
            .env("SCIM2_VENV", &venv)
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            status.success(),
            "`{} install` failed ({status}); scim2-server is required for these tests",
            script.display()
        );
    }
    assert!(bin.exists(), "scim2-server not found at {} even after installing", bin.display());
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind an ephemeral port")
}

/// Any HTTP status line on `GET /v2/ServiceProviderConfig` means it is up.
fn answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v2/ServiceProviderConfig HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    matches!(s.read(&mut buf), Ok(n) if n >= 8 && buf.starts_with(b"HTTP/"))
}

impl Scim2Server {
    /// A server requiring `token` (or accepting anything when `None`).
    /// With `PROVISIONER_TEST_SCIM_URL` set, the external server is used and
    /// `token` is ignored in favour of `PROVISIONER_TEST_SCIM_TOKEN`.
    pub fn start(token: Option<&str>) -> Self {
        if let Ok(url) = std::env::var("PROVISIONER_TEST_SCIM_URL") {
            if !url.is_empty() {
                return Self {
                    base_url: url.trim_end_matches('/').to_string(),
                    token: std::env::var("PROVISIONER_TEST_SCIM_TOKEN").ok().filter(|t| !t.is_empty()),
                    owned: false,
                    child: None,
                    log: None,
                };
            }
        }
        Self::spawn(token)
    }

    /// Always spawn a server of our own, even with an external one configured.
    pub fn spawn(token: Option<&str>) -> Self {
        let bin = server_bin();
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = std::env::temp_dir().join(format!("scim2-server-{}-{port}.log", std::process::id()));
            let log_file = std::fs::File::create(&log).expect("create the server log file");
            let log_err = log_file.try_clone().expect("clone the log file handle");
            let mut cmd = Command::new(&bin);
            // Log lines reach the file as they are written (tests count requests in it).
            cmd.env("PYTHONUNBUFFERED", "1");
            cmd.args(["--hostname", "127.0.0.1", "--port", &port.to_string()]);
            if let Some(t) = token {
                cmd.args(["--bearer-token", t]);
            }
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(log_file)
                .stderr(log_err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin.display()));
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    last_log = std::fs::read_to_string(&log).unwrap_or_default();
                    break; // exited (port taken?): try another port
                }
                if answers(port) {
                    return Self {
                        base_url: format!("http://127.0.0.1:{port}/v2"),
                        token: token.map(str::to_string),
                        owned: true,
                        child: Some(child),
                        log: Some(log),
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_log = std::fs::read_to_string(&log).unwrap_or_default();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("scim2-server could not be started; last log:\n{last_log}");
    }
}

impl Scim2Server {
    /// How many requests the server logged whose request line starts with `method path`
    /// (e.g. `("POST", "/v2/Users")`); 0 for an external server.
    pub fn requests(&self, method: &str, path: &str) -> usize {
        let Some(log) = &self.log else { return 0 };
        let needle = format!("\"{method} {path}");
        std::fs::read_to_string(log).map(|t| t.lines().filter(|l| l.contains(&needle)).count()).unwrap_or(0)
    }
}

impl Drop for Scim2Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(log) = self.log.take() {
            let _ = std::fs::remove_file(log);
        }
    }
}

/// A name unique within this test run (for resources on a shared server).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    // Random per call (std's randomly keyed hasher), so that runs sharing a server differ.
    let salt = {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new().build_hasher().finish() as u32
    };
    format!("{prefix}-{}-{salt}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}
