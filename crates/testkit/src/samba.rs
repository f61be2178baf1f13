//! Test helper: a real Active Directory domain controller (Debian's `samba`) on 127.0.0.1.
//!
//! Provisioning a domain takes a while (tens of seconds), so one domain controller serves a
//! whole test process: [`Samba::shared`] provisions it on first use (`samba-tool domain
//! provision --server-role=dc --dns-backend=NONE --use-rfc2307` into a temporary folder),
//! writes its own `smb.conf` (only the LDAP service, bound to 127.0.0.1, simple binds
//! allowed over plain LDAP with `ldap server require strong auth = no`) and starts
//! `samba -i -M single`. Samba's LDAP port is not configurable: port 389 of 127.0.0.1 must be
//! free. A watchdog stops the server and removes its folder when the test process ends,
//! however it ends. Tests keep apart by working in an OU of their own ([`Samba::new_ou`]).
//! People are added, disabled, enabled and renamed with `samba-tool`.
//! Anything that prevents starting it panics: these tests never skip.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Samba {
    /// `ldap://127.0.0.1`
    pub url: String,
    /// e.g. `DC=corp,DC=example,DC=com`
    pub base_dn: String,
    /// The domain admin, for simple binds.
    pub admin_dn: String,
    pub admin_password: String,
    conf: PathBuf,
    dir: PathBuf,
}

static SHARED: OnceLock<Samba> = OnceLock::new();

const REALM: &str = "CORP.EXAMPLE.COM";
const DOMAIN: &str = "CORP";
const ADMIN_PASSWORD: &str = "Adm1n-Passw0rd!";

fn bin(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: install Debian's samba (scripts/test does)");
}

fn ldap_answers() -> bool {
    TcpStream::connect_timeout(&"127.0.0.1:389".parse().expect("address"), Duration::from_millis(500)).is_ok()
}

impl Samba {
    /// The domain controller of this test process, started on first use.
    pub fn shared() -> &'static Samba {
        SHARED.get_or_init(Self::provision_and_start)
    }

    fn provision_and_start() -> Samba {
        assert!(
            !ldap_answers(),
            "port 389 of 127.0.0.1 is taken (another samba or slapd?): the AD tests need it for their own domain controller"
        );
        let dir = std::env::temp_dir().join(format!("provisioner-samba-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the samba folder");
        let out = Command::new(bin("samba-tool"))
            .args(["domain", "provision"])
            .arg(format!("--realm={REALM}"))
            .arg(format!("--domain={DOMAIN}"))
            .args(["--server-role=dc", "--dns-backend=NONE", "--use-rfc2307", "--host-name=dc1"])
            .arg(format!("--targetdir={}", dir.display()))
            .arg(format!("--adminpass={ADMIN_PASSWORD}"))
            .args(["--option=ldap server require strong auth = no", "--option=interfaces = 127.0.0.1"])
            .args(["--option=bind interfaces only = yes"])
            .output()
            .expect("run samba-tool domain provision");
        assert!(
            out.status.success(),
            "samba-tool domain provision failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let d = dir.display();
        let conf = dir.join("etc").join("smb.conf");
        std::fs::write(
            &conf,
            format!(
                "[global]
\tnetbios name = DC1
\trealm = {REALM}
\tworkgroup = {DOMAIN}
\tserver role = active directory domain controller
\tserver services = ldap
\tinterfaces = 127.0.0.1
\tbind interfaces only = yes
\tldap server require strong auth = no
\tprivate dir = {d}/private
\tstate directory = {d}/state
\tcache directory = {d}/cache
\tlock directory = {d}/lock
\tpid directory = {d}/run
\tbinddns dir = {d}/bind-dns
\tlog file = {d}/log.%m
\tidmap_ldb:use rfc2307 = yes
"
            ),
        )
        .expect("write smb.conf");
        for sub in ["cache", "lock", "run"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create a samba folder");
        }
        let log = std::fs::File::create(dir.join("samba.out")).expect("create the samba log");
        let mut child = Command::new(bin("samba"))
            .args(["-i", "-M", "single", "-s"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn samba");
        // The watchdog: once this process is gone, stop samba and remove its folder.
        let script = format!(
            "while [ -d /proc/{me} ]; do sleep 1; done; kill {samba} 2>/dev/null; sleep 2; kill -9 {samba} 2>/dev/null; \
             rm -rf '{d}'",
            me = std::process::id(),
            samba = child.id(),
        );
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start samba's watchdog");
        let deadline = Instant::now() + Duration::from_secs(90);
        while !ldap_answers() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "samba exited ({status}):\n{}",
                    std::fs::read_to_string(dir.join("samba.out")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "samba did not answer on 127.0.0.1:389 within 90 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        // Never waited for: the watchdog ends it.
        std::mem::forget(child);
        let base_dn = REALM.split('.').map(|p| format!("DC={}", p.to_lowercase())).collect::<Vec<_>>().join(",");
        Samba {
            url: "ldap://127.0.0.1".into(),
            admin_dn: format!("CN=Administrator,CN=Users,{base_dn}"),
            base_dn,
            admin_password: ADMIN_PASSWORD.into(),
            conf,
            dir,
        }
    }

    /// Runs `samba-tool <args> -s <conf>` and returns its output; panics when it fails.
    pub fn tool(&self, args: &[&str]) -> String {
        let out = Command::new(bin("samba-tool"))
            .args(args)
            .arg("-s")
            .arg(&self.conf)
            .output()
            .unwrap_or_else(|e| panic!("cannot run samba-tool: {e}"));
        assert!(
            out.status.success(),
            "samba-tool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates a new OU (unique in this domain) and returns its DN.
    pub fn new_ou(&self, prefix: &str) -> String {
        let name = crate::unique(prefix).replace('-', "");
        self.tool(&["ou", "add", &format!("OU={name}")]);
        format!("OU={name},{}", self.base_dn)
    }

    /// Adds a person to an OU (the OU's DN as returned by [`Samba::new_ou`]).
    pub fn add_user(&self, ou: &str, sam: &str, given: &str, surname: &str, title: &str) {
        let ou_rel = ou.strip_suffix(&format!(",{}", self.base_dn)).unwrap_or(ou);
        self.tool(&[
            "user",
            "add",
            sam,
            "Us3r-Passw0rd!",
            &format!("--given-name={given}"),
            &format!("--surname={surname}"),
            &format!("--mail-address={sam}@corp.example.com"),
            &format!("--job-title={title}"),
            &format!("--userou={ou_rel}"),
        ]);
    }

    /// The password every person added by [`Samba::add_user`] has.
    pub const USER_PASSWORD: &'static str = "Us3r-Passw0rd!";

    /// Adds a group to an OU and returns its DN.
    pub fn add_group(&self, ou: &str, name: &str) -> String {
        let ou_rel = ou.strip_suffix(&format!(",{}", self.base_dn)).unwrap_or(ou);
        self.tool(&["group", "add", name, &format!("--groupou={ou_rel}")]);
        format!("CN={name},{ou}")
    }

    pub fn add_members(&self, group: &str, members: &[&str]) {
        self.tool(&["group", "addmembers", group, &members.join(",")]);
    }

    pub fn folder(&self) -> &Path {
        &self.dir
    }
}
