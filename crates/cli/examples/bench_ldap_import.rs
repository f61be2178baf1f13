//! Benchmark: importing a large directory from a real OpenLDAP server.
//!
//! `cargo run --release -p provisioner-cli --example bench_ldap_import -- [PEOPLE] [sqlite|postgres]`
//! (defaults 100000 and sqlite). Loads PEOPLE inetOrgPerson entries into a throwaway slapd
//! with `slapadd` (offline, fast), starts it, then runs a full sync of a source into a fresh
//! store (the embedded SQLite file, or a fresh PostgreSQL database from the test kit), then a
//! second full sync (nothing changed). Prints the time of each and the process's peak
//! resident memory (VmHWM); asserts only that every entry was imported.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark: a step that fails ends the run with its message"
)]

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use directory::{Actor, SourceFlavor, SourceInput, SourceKind, SyncMode, SyncState};
use server::AppState;
use testkit::Slapd;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let people: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let backend = args.next().unwrap_or_else(|| "sqlite".into());

    let dir = tempfile::tempdir().expect("tempdir");
    let ldif_path = dir.path().join("people.ldif");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&ldif_path).expect("ldif"));
        for i in 0..people {
            let uid = format!("user{i:06}");
            writeln!(
                f,
                "dn: uid={uid},{people_ou}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: Person {i}\ngivenName: Person\n\
                 sn: Number {i}\nmail: {uid}@example.com\ntitle: Title {}\ndepartmentNumber: D{}\n\
                 entryUUID: {}\ncreatorsName: cn=admin,dc=example,dc=com\ncreateTimestamp: 20250101000000Z\n\
                 modifiersName: cn=admin,dc=example,dc=com\nmodifyTimestamp: 20250101000000Z\nentryCSN: 20250101000000.000000Z#000000#000#000000\n",
                i % 50,
                i % 20,
                uuid::Uuid::new_v4(),
                people_ou = Slapd::PEOPLE,
            )
            .expect("write");
        }
    }
    let t = Instant::now();
    let slapd = Slapd::start_with_bulk(Some(&ldif_path));
    println!("slapadd + start of slapd with {people} people: {:.1} s", t.elapsed().as_secs_f64());

    let (store, _db): (Arc<dyn store::Store>, _) = match backend.as_str() {
        "postgres" => {
            let db = testkit::postgres::TestDatabase::create().await;
            let s = store::PostgresStore::connect(&db.url, store::PostgresOptions::default()).await.expect("pg");
            (Arc::new(s), Some(db))
        }
        _ => (Arc::new(store::SqliteStore::open(&dir.path().join("bench.db")).await.expect("store")), None),
    };
    let keyring = store::secrets::Keyring::from_base64(&[store::secrets::Keyring::generate_key()]).expect("keyring");
    let state = AppState::new(store, Arc::new(keyring), engine::EngineConfig::default());
    let mut input = SourceInput {
        name: "bench".into(),
        kind: SourceKind::Ldap,
        flavor: SourceFlavor::Openldap,
        url: slapd.url.clone(),
        starttls: false,
        bind_dn: Slapd::READER_DN.into(),
        bind_password: Some(Slapd::READER_PASSWORD.into()),
        base_dn: Slapd::PEOPLE.into(),
        user_filter: None,
        attributes: Some([("department".to_owned(), "departmentNumber".to_owned())].into()),
        groups: vec![],
        schedule: Some(0),
        disabled: None,
        guard_percent: None,
        enabled: None,
    };
    input.bind_password = Some(Slapd::READER_PASSWORD.into());
    let source = state.service.create_source(&Actor::cli(), input).await.expect("source");
    let syncer = state.service.sources().clone();

    let t = Instant::now();
    let first = syncer.sync_now(source.id, Some(SyncMode::Full), &Actor::cli()).await.expect("sync");
    let first_secs = t.elapsed().as_secs_f64();
    assert_eq!(first.state, SyncState::Succeeded, "{first:#?}");
    assert_eq!(first.counts.created as usize, people, "{first:#?}");
    println!(
        "first full sync ({backend}): {people} entries read, {} created in {first_secs:.1} s ({:.0} people/s)",
        first.counts.created,
        people as f64 / first_secs
    );
    let t = Instant::now();
    let second = syncer.sync_now(source.id, Some(SyncMode::Full), &Actor::cli()).await.expect("sync");
    let second_secs = t.elapsed().as_secs_f64();
    assert_eq!(second.counts.unchanged as usize, people, "{second:#?}");
    println!("second full sync (nothing changed): {second_secs:.1} s ({:.0} entries/s)", people as f64 / second_secs);
    println!("peak resident memory of this process (VmHWM): {:.0} MiB", peak_rss_mib());
}
