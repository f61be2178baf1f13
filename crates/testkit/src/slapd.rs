//! Test helper: a throwaway OpenLDAP server (Debian's `slapd`) on 127.0.0.1.
//!
//! Each [`Slapd`] has its own configuration file and data folder in a temporary folder,
//! the core, cosine, nis and inetOrgPerson schemas, the memberof overlay (so people carry
//! `memberOf` for the groups they are in), a size limit of 100 entries for searches without
//! paging (so that only paged searches read a whole directory), and is seeded with the
//! suffix `dc=example,dc=com`, `ou=people`, `ou=groups` and a read-only service account
//! [`Slapd::READER_DN`]. It listens on a free port and is killed (its folder removed) when
//! dropped. `scripts/test` installs `slapd` and `ldap-utils`; anything that prevents
//! starting it panics: these tests never skip.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Slapd {
    /// `ldap://127.0.0.1:<port>`
    pub url: String,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn bin(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: install Debian's slapd and ldap-utils (scripts/test does)");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind an ephemeral port")
}

const BASE_LDIF: &str = "dn: dc=example,dc=com
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,dc=example,dc=com
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=example,dc=com
objectClass: organizationalUnit
ou: groups

dn: cn=reader,dc=example,dc=com
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: reader
userPassword: reader-secret
";

impl Slapd {
    pub const SUFFIX: &'static str = "dc=example,dc=com";
    pub const PEOPLE: &'static str = "ou=people,dc=example,dc=com";
    pub const GROUPS: &'static str = "ou=groups,dc=example,dc=com";
    pub const ADMIN_DN: &'static str = "cn=admin,dc=example,dc=com";
    pub const ADMIN_PASSWORD: &'static str = "admin-secret";
    /// A service account that may read everything (but passwords).
    pub const READER_DN: &'static str = "cn=reader,dc=example,dc=com";
    pub const READER_PASSWORD: &'static str = "reader-secret";

    /// A server seeded with the base entries only.
    pub fn start() -> Self {
        Self::start_with_bulk(None)
    }

    /// A server whose database is loaded offline with `slapadd` from `bulk_ldif` (fast, for
    /// large directories) besides the base entries. The memberof overlay does not run for
    /// entries loaded this way.
    pub fn start_with_bulk(bulk_ldif: Option<&Path>) -> Self {
        let dir = tempfile::Builder::new().prefix("provisioner-slapd-").tempdir().expect("create a temporary folder");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("create the data folder");
        let conf = dir.path().join("slapd.conf");
        let d = dir.path().display();
        let config = format!(
            "include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
sizelimit size.soft=100 size.hard=100 size.prtotal=unlimited
database mdb
maxsize 4294967296
suffix \"{suffix}\"
rootdn \"{admin}\"
rootpw {admin_pw}
directory {d}/data
index objectClass eq
index entryUUID eq
index uid eq
index modifyTimestamp eq
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE
access to attrs=userPassword by self write by anonymous auth by * none
access to * by * read
",
            suffix = Self::SUFFIX,
            admin = Self::ADMIN_DN,
            admin_pw = Self::ADMIN_PASSWORD,
        );
        std::fs::write(&conf, config).expect("write slapd.conf");
        let base = dir.path().join("base.ldif");
        std::fs::write(&base, BASE_LDIF).expect("write base.ldif");
        for ldif in std::iter::once(base.as_path()).chain(bulk_ldif) {
            let out = Command::new(bin("slapadd"))
                .arg("-q")
                .arg("-f")
                .arg(&conf)
                .arg("-l")
                .arg(ldif)
                .output()
                .expect("run slapadd");
            assert!(out.status.success(), "slapadd failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = dir.path().join("slapd.log");
            let log_file = std::fs::File::create(&log).expect("create the slapd log");
            let mut child = Command::new(bin("slapd"))
                .args(["-d", "0", "-f"])
                .arg(&conf)
                .arg("-h")
                .arg(format!("ldap://127.0.0.1:{port}/"))
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("clone the log handle"))
                .stderr(log_file)
                .spawn()
                .expect("spawn slapd");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    last_log = std::fs::read_to_string(&log).unwrap_or_default();
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self { url: format!("ldap://127.0.0.1:{port}"), port, dir, child: Some(child) };
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
        panic!("slapd could not be started; last log:\n{last_log}");
    }

    fn tool(&self, name: &str, args: &[&str], ldif: &str) {
        let mut child = Command::new(bin(name))
            .args(["-x", "-H", &self.url, "-D", Self::ADMIN_DN, "-w", Self::ADMIN_PASSWORD])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
        child.stdin.take().expect("stdin").write_all(ldif.as_bytes()).expect("write the LDIF");
        let out = child.wait_with_output().expect("wait for the LDAP tool");
        assert!(out.status.success(), "{name} failed: {}\n{ldif}", String::from_utf8_lossy(&out.stderr));
    }

    /// Adds entries (LDIF) as the admin, with `ldapadd` (the memberof overlay runs).
    pub fn add(&self, ldif: &str) {
        self.tool("ldapadd", &[], ldif);
    }

    /// Applies an LDIF of changes (`changetype: modify`, `modrdn`, `delete`) with `ldapmodify`.
    pub fn modify(&self, ldif: &str) {
        self.tool("ldapmodify", &[], ldif);
    }

    /// An inetOrgPerson under `ou=people`: `uid`, names, mail, and a password `<uid>-pw`.
    pub fn person_ldif(uid: &str, given: &str, sn: &str, extra: &[(&str, &str)]) -> String {
        let mut s = format!(
            "dn: uid={uid},{people}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {given} {sn}\ngivenName: {given}\nsn: {sn}\n\
             mail: {uid}@example.com\nuserPassword: {uid}-pw\n",
            people = Self::PEOPLE
        );
        for (k, v) in extra {
            s.push_str(&format!("{k}: {v}\n"));
        }
        s.push('\n');
        s
    }

    /// The DN of a person added with [`Slapd::person_ldif`].
    pub fn person_dn(uid: &str) -> String {
        format!("uid={uid},{}", Self::PEOPLE)
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = &self.dir;
    }
}
