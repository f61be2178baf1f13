//! Test helper: a fresh PostgreSQL database per test, dropped when the test ends.
//!
//! The server is found once per test process, in this order:
//!
//! 1. `PROVISIONER_TEST_DATABASE_URL` (any database on the server: it is used to create and
//!    drop the test databases);
//! 2. `postgres://postgres@127.0.0.1:5432/test`, if it answers and lets us create databases
//!    (the development and CI machines run one), unless `PROVISIONER_TEST_PG_THROWAWAY` is set;
//! 3. a throwaway cluster of our own: `initdb` into a temporary folder, started on 127.0.0.1
//!    on a free port with trust authentication (as the `postgres` user when we are root,
//!    since PostgreSQL refuses to run as root). A watchdog stops it and removes its folder
//!    when this process ends, however it ends (even by SIGKILL); folders left by earlier
//!    processes are removed at the next start. The binaries are found in
//!    `$PROVISIONER_TEST_PG_BIN`, else `/usr/lib/postgresql/<newest>/bin`, else on `PATH`
//!    (`scripts/test` installs Debian's `postgresql` when there is neither a server nor
//!    `initdb`).
//!
//! Each [`TestDatabase`] is a database named `prov_test_<pid>_<n>`, dropped (`WITH (FORCE)`)
//! when the value is dropped; databases left behind by a test process that was killed are
//! dropped by the next one (their pid is gone).
//!
//! Anything that prevents getting a database panics: these tests never skip.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, Row};
use tokio::sync::OnceCell;

/// The default server of development and CI machines.
const LOCAL_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const DB_PREFIX: &str = "prov_test_";
const CLUSTER_PREFIX: &str = "provisioner-pg-";

/// A database of its own for one test.
#[derive(Debug)]
pub struct TestDatabase {
    /// `postgres://...` of the new database.
    pub url: String,
    name: String,
    admin_url: String,
}

/// Where test databases are created: a URL of a database to connect to for `CREATE DATABASE`.
#[derive(Debug)]
struct Server {
    admin_url: String,
}

static SERVER: OnceCell<Server> = OnceCell::const_new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

impl TestDatabase {
    /// Creates a fresh, empty database.
    pub async fn create() -> TestDatabase {
        let server = SERVER.get_or_init(find_server).await;
        let name = format!("{DB_PREFIX}{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let mut conn = connect(&server.admin_url).await.unwrap_or_else(|e| panic!("cannot connect to PostgreSQL: {e}"));
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let _ = conn.close().await;
        let url = with_database(&server.admin_url, &name);
        TestDatabase { url, name, admin_url: server.admin_url.clone() }
    }

    /// The URL of another database on the same server (e.g. a closed port for failures).
    pub fn server_url(&self) -> &str {
        &self.admin_url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Synchronously, on a runtime of its own: the test's runtime may be shutting down.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut conn = connect(&admin_url).await.map_err(|e| e.to_string())?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = conn.close().await;
                Ok::<(), String>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: cannot drop test database {}: {e}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

async fn connect(url: &str) -> Result<PgConnection, sqlx::Error> {
    let opts = PgConnectOptions::from_str(url)?.disable_statement_logging();
    tokio::time::timeout(Duration::from_secs(10), opts.connect()).await.map_err(|_| sqlx::Error::PoolTimedOut)?
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // After the authority (`scheme://authority/`), everything up to `?` is the database.
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Whether we can create databases on the server at `url`.
async fn usable(url: &str) -> Result<(), String> {
    let mut conn = connect(url).await.map_err(|e| e.to_string())?;
    let row = sqlx::query("SELECT rolcreatedb OR rolsuper AS ok FROM pg_roles WHERE rolname = current_user")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let ok: bool = row.try_get("ok").map_err(|e| e.to_string())?;
    if is_local(url) {
        drop_stale_databases(&mut conn).await;
    }
    let _ = conn.close().await;
    if ok {
        Ok(())
    } else {
        Err("the user may not create databases".into())
    }
}

/// Whether the server runs on this machine (so that a test database's pid means something).
fn is_local(url: &str) -> bool {
    PgConnectOptions::from_str(url).map(|o| matches!(o.get_host(), "127.0.0.1" | "localhost" | "::1")).unwrap_or(false)
}

/// Drops the test databases of test processes that are gone (killed before their cleanup).
async fn drop_stale_databases(conn: &mut PgConnection) {
    let Ok(rows) =
        sqlx::query("SELECT datname FROM pg_database WHERE datname LIKE 'prov\\_test\\_%'").fetch_all(&mut *conn).await
    else {
        return;
    };
    for row in rows {
        let Ok(name) = row.try_get::<String, _>("datname") else { continue };
        let pid = name.trim_start_matches(DB_PREFIX).split('_').next().unwrap_or_default();
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&mut *conn).await;
        }
    }
}

async fn find_server() -> Server {
    if let Ok(url) = std::env::var("PROVISIONER_TEST_DATABASE_URL") {
        if let Err(e) = usable(&url).await {
            panic!("PROVISIONER_TEST_DATABASE_URL={url} cannot be used for tests: {e}");
        }
        return Server { admin_url: url };
    }
    if std::env::var_os("PROVISIONER_TEST_PG_THROWAWAY").is_none() {
        match usable(LOCAL_URL).await {
            Ok(()) => return Server { admin_url: LOCAL_URL.into() },
            Err(e) => eprintln!("note: no usable PostgreSQL at {LOCAL_URL} ({e}); starting a throwaway cluster"),
        }
    }
    let url = tokio::task::spawn_blocking(start_cluster)
        .await
        .unwrap_or_else(|e| panic!("starting a PostgreSQL cluster panicked: {e}"));
    // The server accepts connections once `pg_ctl -w` returns; give it a moment anyway.
    for _ in 0..50 {
        if usable(&url).await.is_ok() {
            return Server { admin_url: url };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the throwaway PostgreSQL cluster at {url} does not answer");
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// The folder with `initdb`, `pg_ctl` and `postgres`.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PROVISIONER_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
            return dir;
        }
    }
    panic!(
        "no PostgreSQL server answers at {LOCAL_URL} and no initdb was found; run scripts/test (it installs \
         Debian's postgresql) or set PROVISIONER_TEST_DATABASE_URL"
    );
}

/// A command run as the `postgres` user when we are root (PostgreSQL refuses root).
fn as_server_user(root: bool, program: &Path) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stops and removes clusters left by test processes that are gone.
fn remove_stale_clusters(bin: &Path, root: bool) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(CLUSTER_PREFIX) else { continue };
        if pid.parse::<u32>().is_err() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        let data = e.path().join("data");
        if data.exists() {
            let mut stop = as_server_user(root, &bin.join("pg_ctl"));
            stop.arg("-D").arg(&data).args(["-m", "immediate", "stop"]).stdout(Stdio::null()).stderr(Stdio::null());
            let _ = stop.status();
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind an ephemeral port")
}

/// Starts a cluster for this process; returns the URL of its `postgres` database.
fn start_cluster() -> String {
    let bin = bin_dir();
    let root = is_root();
    remove_stale_clusters(&bin, root);
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("{CLUSTER_PREFIX}{pid}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    if root {
        let mut chown = Command::new("chown");
        chown.args(["-R", "postgres:postgres"]).arg(&dir);
        run(chown, "chown postgres");
    }
    let data = dir.join("data");
    let mut initdb = as_server_user(root, &bin.join("initdb"));
    initdb.arg("-D").arg(&data).args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]);
    run(initdb, "initdb");

    let port = free_port();
    let mut start = as_server_user(root, &bin.join("pg_ctl"));
    start
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("server.log"))
        .arg("-o")
        .arg(format!(
            "-h 127.0.0.1 -p {port} -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=500",
            dir.display()
        ))
        .args(["-w", "-t", "60", "start"]);
    run(start, "pg_ctl start");

    // The watchdog: once this process is gone (however it ended), stop the server and remove
    // its folder.
    let script = format!(
        "while [ -d /proc/{pid} ]; do sleep 1; done; '{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; \
         rm -rf '{dir}'",
        pg_ctl = bin.join("pg_ctl").display(),
        data = data.display(),
        dir = dir.display(),
    );
    let mut watchdog = as_server_user(root, Path::new("sh"));
    watchdog.arg("-c").arg(script).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // Never waited for: it must outlive this process.
    #[allow(clippy::zombie_processes)]
    watchdog.spawn().unwrap_or_else(|e| panic!("cannot start the cluster's watchdog: {e}"));
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_of_a_url_is_replaced() {
        assert_eq!(with_database("postgres://u@h:1/test", "x"), "postgres://u@h:1/x");
        assert_eq!(with_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
        assert_eq!(with_database("postgres://u:p@h/db?sslmode=disable", "x"), "postgres://u:p@h/x?sslmode=disable");
    }
}
