//! Directory sources against real directory servers: a throwaway OpenLDAP (`slapd`) and a
//! real Active Directory domain controller (`samba`), with a real SCIM app downstream.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::{Samba, Slapd};

use crate::engine::World;
use crate::support::{Backend, TestServer};

/// Starts a sync and waits until it is no longer running; returns its final record.
pub(crate) async fn sync(s: &TestServer, source: &str, mode: &str) -> Value {
    let started = s.post(&format!("/api/v1/sources/{source}/sync?mode={mode}"), json!({})).await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{started:#?}");
    assert_eq!(started.body["state"], "running");
    wait_sync(s, source, started.body["id"].as_str().unwrap()).await
}

async fn wait_sync(s: &TestServer, source: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let a = s.get(&format!("/api/v1/sources/{source}/syncs/{id}")).await;
        assert_eq!(a.status, StatusCode::OK, "{a:#?}");
        if a.body["state"] != "running" {
            return a.body;
        }
        assert!(Instant::now() < deadline, "sync still running: {:#}", a.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn user_named(s: &TestServer, username: &str) -> Value {
    let a = s.get(&format!("/api/v1/users?q={username}&limit=500")).await;
    a.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == username)
        .cloned()
        .unwrap_or_else(|| panic!("no user {username}"))
}

async fn users_of(s: &TestServer, status: &str) -> usize {
    let mut n = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => format!("/api/v1/users?status={status}&limit=500"),
            Some(c) => format!("/api/v1/users?status={status}&limit=500&cursor={c}"),
        };
        let a = s.get(&path).await;
        n += a.body["items"].as_array().unwrap().len();
        match a.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return n,
        }
    }
}

pub(crate) fn openldap_source(slapd: &Slapd, extra: Value) -> Value {
    let mut body = json!({
        "name": "Corp LDAP",
        "kind": "ldap",
        "flavor": "openldap",
        "url": slapd.url,
        "bind_dn": Slapd::READER_DN,
        "bind_password": Slapd::READER_PASSWORD,
        "base_dn": Slapd::PEOPLE,
        "attributes": {"title": "title", "department": "departmentNumber"},
        "disabled": {"attribute": "employeeType", "value": "disabled"},
        "schedule": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

pub(crate) async fn create_source(s: &TestServer, body: Value) -> String {
    let a = s.post("/api/v1/sources", body).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:#?}");
    assert!(a.body.get("bind_password").is_none(), "the password is never shown");
    a.body["id"].as_str().unwrap().to_owned()
}

/// 150 people (more than the server's 100-entry limit for unpaged searches), two of them in
/// a group mapped to a role; the guard; the read-only sourced fields.
async fn openldap_full_import_groups_guard_and_read_only_fields(backend: Backend) {
    let slapd = Slapd::start();
    let mut ldif = String::new();
    for i in 0..150 {
        ldif.push_str(&Slapd::person_ldif(&format!("p{i:03}"), "Person", &format!("Number{i}"), &[("title", "Clerk")]));
    }
    ldif.push_str(&format!(
        "dn: cn=eng,{}\nobjectClass: groupOfNames\ncn: eng\nmember: {}\nmember: {}\n\n",
        Slapd::GROUPS,
        Slapd::person_dn("p001"),
        Slapd::person_dn("p002")
    ));
    slapd.add(&ldif);
    let s = TestServer::start_on(backend).await;
    let role = s.post("/api/v1/roles", json!({"name": "Engineers"})).await.body["id"].as_str().unwrap().to_owned();
    let source = create_source(
        &s,
        openldap_source(
            &slapd,
            json!({"groups": [{"group_dn": format!("CN=Eng,{}", Slapd::GROUPS), "role_id": role}]}),
        ),
    )
    .await;

    let done = sync(&s, &source, "full").await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["counts"]["entries_read"], 150, "paged search reads past the size limit");
    assert_eq!(done["counts"]["created"], 150);
    assert_eq!(done["counts"]["memberships_changed"], 2);
    assert_eq!(users_of(&s, "active").await, 150);
    let p001 = user_named(&s, "p001").await;
    assert_eq!(
        (p001["source"].as_str(), p001["email"].as_str(), p001["title"].as_str(), p001["last_name"].as_str()),
        (Some("ldap"), Some("p001@example.com"), Some("Clerk"), Some("Number1"))
    );
    let members = s.get(&format!("/api/v1/users?role={role}")).await.body["items"].as_array().unwrap().len();
    assert_eq!(members, 2, "members of the LDAP group got the role");
    let id = p001["id"].as_str().unwrap();
    let link = s.get(&format!("/api/v1/users/{id}/source")).await;
    assert_eq!(link.status, StatusCode::OK, "{link:#?}");
    assert_eq!(link.body["dn"], Slapd::person_dn("p001"));
    assert_eq!(link.body["source_id"], source.as_str());

    // Sourced fields are read-only here; the others are not.
    let refused = s.patch(&format!("/api/v1/users/{id}"), json!({"email": "other@example.com"})).await;
    assert!(refused.problem_field(409, "email").contains("Corp LDAP"), "{refused:#?}");
    assert_eq!(s.get(&format!("/api/v1/users/{id}")).await.body["email"], "p001@example.com");
    let ok = s.patch(&format!("/api/v1/users/{id}"), json!({"phone": "+1 555 0100"})).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:#?}");

    // A second full sync changes nothing.
    let again = sync(&s, &source, "full").await;
    assert_eq!((again["counts"]["created"].as_u64(), again["counts"]["updated"].as_u64()), (Some(0), Some(0)));
    assert_eq!(again["counts"]["unchanged"], 150);

    // 40 of 150 gone (27%, over the 20% guard): the sync stops and suspends nobody.
    let mut gone = String::new();
    for i in 100..140 {
        gone.push_str(&format!("dn: {}\nchangetype: delete\n\n", Slapd::person_dn(&format!("p{i:03}"))));
    }
    slapd.modify(&gone);
    let held = sync(&s, &source, "full").await;
    assert_eq!(held["state"], "awaiting_confirmation", "{held:#}");
    assert_eq!(held["pending_suspensions"], 40);
    assert!(held["message"].as_str().unwrap().contains("20%"), "{held:#}");
    assert_eq!(users_of(&s, "active").await, 150);
    // While it waits, no other sync starts.
    let busy = s.post(&format!("/api/v1/sources/{source}/sync"), json!({})).await;
    busy.problem(409);
    let held_id = held["id"].as_str().unwrap();
    let confirmed = s.post(&format!("/api/v1/sources/{source}/syncs/{held_id}/confirm"), json!({})).await;
    assert_eq!(confirmed.status, StatusCode::ACCEPTED, "{confirmed:#?}");
    let done = wait_sync(&s, &source, held_id).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["counts"]["suspended"], 40);
    assert_eq!(users_of(&s, "suspended").await, 40);
    assert_eq!(user_named(&s, "p120").await["status"], "suspended");
    // Confirming twice is refused.
    s.post(&format!("/api/v1/sources/{source}/syncs/{held_id}/confirm"), json!({})).await.problem(409);
}

/// A person's changes flow to a SCIM app; a rename is an update of the same person; disabled
/// in the directory -> suspended here -> suspended in the app; enabled -> back.
async fn openldap_changes_flow_to_the_app(backend: Backend) {
    let slapd = Slapd::start();
    slapd.add(&format!(
        "{}{}dn: cn=staff,{}\nobjectClass: groupOfNames\ncn: staff\nmember: {}\nmember: {}\n\n",
        Slapd::person_ldif("ada", "Ada", "Lovelace", &[("title", "Analyst")]),
        Slapd::person_ldif("bob", "Bob", "Boss", &[("title", "Manager")]),
        Slapd::GROUPS,
        Slapd::person_dn("ada"),
        Slapd::person_dn("bob"),
    ));
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nadd: manager\nmanager: {}\n\n",
        Slapd::person_dn("ada"),
        Slapd::person_dn("bob")
    ));
    let w = World::new_on(backend, json!({"enabled": true, "on_suspend": "suspend", "on_delete": "delete"})).await;
    let source = create_source(
        &w.s,
        openldap_source(&slapd, json!({"guard_percent": 100, "groups": [{"group_dn": format!("cn=staff,{}", Slapd::GROUPS), "role_id": w.role}]})),
    )
    .await;
    let done = sync(&w.s, &source, "full").await;
    assert_eq!((done["state"].as_str(), done["counts"]["created"].as_u64()), (Some("succeeded"), Some(2)), "{done:#}");
    let ada = user_named(&w.s, "ada").await;
    let bob = user_named(&w.s, "bob").await;
    assert_eq!(ada["manager_id"], bob["id"], "the manager DN became the manager");
    let ada_id = ada["id"].as_str().unwrap().to_owned();
    w.settled(&ada_id, "provisioned").await;
    assert_eq!(w.in_app("ada").await[0]["title"], "Analyst");

    // An attribute changes in the directory; an incremental sync brings it, and the app follows.
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: title\ntitle: Chief Analyst\n\n",
        Slapd::person_dn("ada")
    ));
    let inc = sync(&w.s, &source, "incremental").await;
    assert_eq!((inc["mode"].as_str(), inc["counts"]["updated"].as_u64()), (Some("incremental"), Some(1)), "{inc:#}");
    assert!(inc["counts"]["entries_read"].as_u64().unwrap() <= 2);
    w.event_until(&ada_id, |e| e["action"] == "update" && e["status"] == "provisioned").await;
    assert_eq!(w.in_app("ada").await[0]["title"], "Chief Analyst");

    // A rename: the same person (same entryUUID), updated, not recreated. The title's update
    // event is the newest until the rename's own arrives, so the wait names a newer event.
    let title_event = w.event_until(&ada_id, |e| !e.is_null()).await["id"].clone();
    slapd.modify(&format!(
        "dn: {}\nchangetype: modrdn\nnewrdn: uid=ada.king\ndeleteoldrdn: 1\n\n",
        Slapd::person_dn("ada")
    ));
    let renamed = sync(&w.s, &source, "full").await;
    assert_eq!((renamed["counts"]["created"].as_u64(), renamed["counts"]["updated"].as_u64()), (Some(0), Some(1)));
    assert_eq!(renamed["counts"]["suspended"], 0);
    let again = w.s.get(&format!("/api/v1/users/{ada_id}")).await.body;
    assert_eq!((again["username"].as_str(), again["status"].as_str()), (Some("ada.king"), Some("active")));
    assert_eq!(w.s.get(&format!("/api/v1/users/{ada_id}/source")).await.body["dn"], Slapd::person_dn("ada.king"));
    w.event_until(&ada_id, |e| e["id"] != title_event && e["action"] == "update" && e["status"] == "provisioned").await;
    assert_eq!(w.in_app("ada.king").await.len(), 1);

    // Disabled in the directory: suspended here, then in the app.
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nadd: employeeType\nemployeeType: disabled\n\n",
        Slapd::person_dn("ada.king")
    ));
    let off = sync(&w.s, &source, "incremental").await;
    assert_eq!(off["counts"]["suspended"], 1, "{off:#}");
    assert_eq!(w.s.get(&format!("/api/v1/users/{ada_id}")).await.body["status"], "suspended");
    w.event_until(&ada_id, |e| e["action"] == "suspend" && e["status"] == "suspended").await;
    assert_eq!(w.in_app("ada.king").await[0]["active"], false);

    // Enabled again: reactivated here and in the app.
    slapd.modify(&format!("dn: {}\nchangetype: modify\ndelete: employeeType\n\n", Slapd::person_dn("ada.king")));
    let on = sync(&w.s, &source, "incremental").await;
    assert_eq!(on["counts"]["reactivated"], 1, "{on:#}");
    assert_eq!(w.s.get(&format!("/api/v1/users/{ada_id}")).await.body["status"], "active");
    w.event_until(&ada_id, |e| e["action"] == "update" && e["status"] == "provisioned").await;
    assert_eq!(w.in_app("ada.king").await[0]["active"], true);
}

/// An unreachable directory, or one that refuses the bind, fails the sync with a clear
/// reason and suspends nobody.
async fn a_failing_directory_suspends_nobody(backend: Backend) {
    let slapd = Slapd::start();
    slapd.add(&(Slapd::person_ldif("ada", "Ada", "L", &[]) + &Slapd::person_ldif("bob", "Bob", "B", &[])));
    let s = TestServer::start_on(backend).await;
    let source = create_source(&s, openldap_source(&slapd, json!({}))).await;
    assert_eq!(sync(&s, &source, "full").await["counts"]["created"], 2);

    // A wrong password: refused bind.
    let p = s.patch(&format!("/api/v1/sources/{source}"), json!({"bind_password": "wrong"})).await;
    assert_eq!(p.status, StatusCode::OK, "{p:#?}");
    let failed = sync(&s, &source, "full").await;
    assert_eq!(failed["state"], "failed");
    let msg = failed["message"].as_str().unwrap();
    assert!(msg.contains("refused the bind") && msg.contains("nobody was suspended"), "{msg}");
    let test = s.post(&format!("/api/v1/sources/{source}/test"), json!({})).await;
    test.problem(502);

    // The server is gone.
    s.patch(&format!("/api/v1/sources/{source}"), json!({"bind_password": Slapd::READER_PASSWORD})).await;
    drop(slapd);
    let failed = sync(&s, &source, "full").await;
    assert_eq!(failed["state"], "failed");
    assert!(failed["message"].as_str().unwrap().contains("cannot reach the directory"), "{failed:#}");
    assert_eq!(failed["counts"]["suspended"], 0);
    assert_eq!(users_of(&s, "active").await, 2);
}

/// Bad settings are refused field by field and change nothing; the password is stored
/// encrypted.
async fn bad_sources_are_refused(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let bad = s
        .post(
            "/api/v1/sources",
            json!({"name": "x", "flavor": "openldap", "url": "http://nope", "bind_dn": "admin", "base_dn": "dc=x",
                   "user_filter": "uid=*", "attributes": {"shoe_size": "shoe"},
                   "groups": [{"group_dn": "cn=g,dc=x", "role_id": uuid::Uuid::now_v7()}]}),
        )
        .await;
    for field in ["url", "bind_dn", "bind_password", "user_filter", "attributes.shoe_size", "groups[0].role_id"] {
        bad.problem_field(422, field);
    }
    assert!(s.get("/api/v1/sources").await.body["items"].as_array().unwrap().is_empty());
    let unknown_flavor = s.post("/api/v1/sources", json!({"name": "x", "flavor": "novell"})).await;
    unknown_flavor.problem(422);
    let id = create_source(
        &s,
        json!({"name": "AD", "flavor": "active_directory", "url": "ldaps://dc.example.com", "bind_dn": "CN=svc,DC=example,DC=com",
               "bind_password": "very-secret-pw", "base_dn": "DC=example,DC=com"}),
    )
    .await;
    let got = s.get(&format!("/api/v1/sources/{id}")).await.body;
    assert_eq!(got["attributes"]["username"], "sAMAccountName");
    assert_eq!((got["schedule"].as_u64(), got["guard_percent"].as_u64()), (Some(5), Some(20)));
    let ct = s.state.service.store().get_source_password(uuid::Uuid::parse_str(&id).unwrap()).await.unwrap().unwrap();
    assert!(!ct.contains("very-secret-pw"));
    let dup = s
        .post(
            "/api/v1/sources",
            json!({"name": "ad", "flavor": "openldap", "url": "ldap://h", "bind_dn": "cn=a",
        "bind_password": "p", "base_dn": "dc=a"}),
        )
        .await;
    dup.problem_field(409, "name");
    assert_eq!(s.delete(&format!("/api/v1/sources/{id}")).await.status, StatusCode::NO_CONTENT);
    s.get(&format!("/api/v1/sources/{id}")).await.problem(404);
}

fn ad_source(samba: &Samba, ou: &str, extra: Value) -> Value {
    let mut body = json!({
        "name": format!("AD {ou}"),
        "flavor": "active_directory",
        "url": samba.url,
        "bind_dn": samba.admin_dn,
        "bind_password": samba.admin_password,
        "base_dn": ou,
        "schedule": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Active Directory: import with a group, an attribute change and a rename flowing to the
/// app, `samba-tool user disable` -> suspended here and in the app (then deleted with
/// on_suspend = delete), enable -> back, and the guard.
async fn active_directory_end_to_end(backend: Backend) {
    let samba = Samba::shared();
    let tag = testkit::unique("t").replace('-', "");
    let tag = &tag[tag.len() - 8..];
    let ou = samba.new_ou("Staff");
    let (alice, carol, dave) = (format!("alice{tag}"), format!("carol{tag}"), format!("dave{tag}"));
    samba.add_user(&ou, &alice, "Alice", "Doe", "Engineer");
    samba.add_user(&ou, &carol, "Carol", "Roe", "Designer");
    samba.add_user(&ou, &dave, "Dave", "Poe", "Writer");
    let group = format!("Eng{tag}");
    samba.add_group(&ou, &group);
    samba.add_members(&group, &[&alice, &carol]);
    let w = World::new_on(backend, json!({"enabled": true, "on_suspend": "suspend", "on_delete": "delete"})).await;
    let source = create_source(
        &w.s,
        ad_source(
            samba,
            &ou,
            json!({"guard_percent": 40, "groups": [{"group_dn": format!("CN={group},{ou}"), "role_id": w.role}]}),
        ),
    )
    .await;
    let done = sync(&w.s, &source, "full").await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["counts"]["created"], 3, "{done:#}");
    let a = user_named(&w.s, &alice).await;
    assert_eq!((a["first_name"].as_str(), a["title"].as_str()), (Some("Alice"), Some("Engineer")));
    assert_eq!(a["email"], format!("{alice}@corp.example.com"));
    let alice_id = a["id"].as_str().unwrap().to_owned();
    let carol_id = user_named(&w.s, &carol).await["id"].as_str().unwrap().to_owned();
    let link = w.s.get(&format!("/api/v1/users/{alice_id}/source")).await.body;
    assert_eq!(link["dn"], format!("CN=Alice Doe,{ou}"));
    assert_eq!(link["stable_id"].as_str().unwrap().len(), 36, "objectGUID as a GUID string");
    // Group -> role -> the app.
    w.settled(&alice_id, "provisioned").await;
    w.settled(&carol_id, "provisioned").await;
    assert_eq!(w.account(user_named(&w.s, &dave).await["id"].as_str().unwrap()).await, Value::Null);

    // An attribute change and a rename in AD flow to the app, as updates of the same person.
    samba.tool(&["user", "rename", &alice, &format!("--samaccountname=al{tag}"), "--surname=Smith"]);
    let changed = sync(&w.s, &source, "incremental").await;
    assert_eq!(
        (changed["counts"]["updated"].as_u64(), changed["counts"]["created"].as_u64()),
        (Some(1), Some(0)),
        "{changed:#}"
    );
    let renamed = w.s.get(&format!("/api/v1/users/{alice_id}")).await.body;
    assert_eq!(
        (renamed["username"].as_str(), renamed["last_name"].as_str()),
        (Some(format!("al{tag}").as_str()), Some("Smith"))
    );
    w.event_until(&alice_id, |e| e["action"] == "update" && e["status"] == "provisioned").await;
    assert_eq!(w.in_app(&format!("al{tag}")).await[0]["name"]["familyName"], "Smith");

    // Disabled in AD: suspended here and in the app.
    samba.tool(&["user", "disable", &format!("al{tag}")]);
    let off = sync(&w.s, &source, "incremental").await;
    assert_eq!(off["counts"]["suspended"], 1, "{off:#}");
    w.event_until(&alice_id, |e| e["action"] == "suspend" && e["status"] == "suspended").await;
    assert_eq!(w.in_app(&format!("al{tag}")).await[0]["active"], false);
    // Enabled again: reactivated and reprovisioned.
    samba.tool(&["user", "enable", &format!("al{tag}")]);
    let on = sync(&w.s, &source, "incremental").await;
    assert_eq!(on["counts"]["reactivated"], 1, "{on:#}");
    w.event_until(&alice_id, |e| e["action"] == "update" && e["status"] == "provisioned").await;
    assert_eq!(w.in_app(&format!("al{tag}")).await[0]["active"], true);

    // With on_suspend = delete, disabling deletes the app account.
    w.s.patch(&format!("/api/v1/apps/{}", w.app), json!({"provisioning": {"on_suspend": "delete"}})).await;
    samba.tool(&["user", "disable", &carol]);
    let off = sync(&w.s, &source, "full").await;
    assert_eq!(off["counts"]["suspended"], 1, "{off:#}");
    w.event_until(&carol_id, |e| e["action"] == "delete" && e["status"] == "deleted").await;
    assert!(w.in_app(&carol).await.is_empty());

    // The guard: 2 more of 3 users (67%, over 40%) wait for a confirmation.
    samba.tool(&["user", "disable", &format!("al{tag}")]);
    samba.tool(&["user", "disable", &dave]);
    let held = sync(&w.s, &source, "full").await;
    assert_eq!(
        (held["state"].as_str(), held["pending_suspensions"].as_u64()),
        (Some("awaiting_confirmation"), Some(2)),
        "{held:#}"
    );
    assert_eq!(w.s.get(&format!("/api/v1/users/{alice_id}")).await.body["status"], "active");
    let id = held["id"].as_str().unwrap();
    assert_eq!(
        w.s.post(&format!("/api/v1/sources/{source}/syncs/{id}/confirm"), json!({})).await.status,
        StatusCode::ACCEPTED
    );
    let done = wait_sync(&w.s, &source, id).await;
    assert_eq!(
        (done["state"].as_str(), done["counts"]["suspended"].as_u64()),
        (Some("succeeded"), Some(2)),
        "{done:#}"
    );
    assert_eq!(w.s.get(&format!("/api/v1/users/{alice_id}")).await.body["status"], "suspended");
}

/// Password checks against the directory, for sign-in: right, wrong, disabled.
async fn passwords_are_verified_against_the_directory(backend: Backend) {
    let slapd = Slapd::start();
    slapd.add(
        &(Slapd::person_ldif("ada", "Ada", "L", &[])
            + &Slapd::person_ldif("eve", "Eve", "E", &[("employeeType", "disabled")])),
    );
    let s = TestServer::start_on(backend).await;
    let source = create_source(&s, openldap_source(&slapd, json!({}))).await;
    sync(&s, &source, "full").await;
    let ada = user_named(&s, "ada").await;
    let (src, link) = s
        .state
        .service
        .source_link_of_user(uuid::Uuid::parse_str(ada["id"].as_str().unwrap()).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(link.dn, Slapd::person_dn("ada"));
    let pw = s.state.service.sources().password(src.id).await.unwrap();
    let verify = |dn: String, password: &'static str| {
        let src = src.clone();
        let pw = pw.clone();
        async move { connectors::ldap::verify_password(&src, &pw, &dn, password, &Default::default()).await.unwrap() }
    };
    assert!(verify(link.dn.clone(), "ada-pw").await);
    assert!(!verify(link.dn.clone(), "wrong").await);
    assert!(!verify(link.dn.clone(), "").await);
    assert!(!verify(Slapd::person_dn("eve"), "eve-pw").await, "disabled people cannot sign in");
    assert!(!verify(Slapd::person_dn("nobody"), "x").await);
}

/// A sync writes through the service layer, under the rules of every writer of users: a
/// manager the directory names that would make a cycle, or the person themself, is left out
/// with a note (the API refuses both too), an update left with nothing to change is not
/// written, and the audit entries are those of any writer, by the source.
async fn a_syncs_writes_meet_the_rules_of_every_writer(backend: Backend) {
    let slapd = Slapd::start();
    let (ada, bob, carol) = (Slapd::person_dn("ada"), Slapd::person_dn("bob"), Slapd::person_dn("carol"));
    slapd.add(
        &(Slapd::person_ldif("ada", "Ada", "L", &[("manager", &bob)])
            + &Slapd::person_ldif("bob", "Bob", "B", &[("manager", &ada)])
            + &Slapd::person_ldif("carol", "Carol", "C", &[("manager", &carol)])),
    );
    let s = TestServer::start_on(backend).await;
    let source = create_source(&s, openldap_source(&slapd, json!({}))).await;
    let first = sync(&s, &source, "full").await;
    assert_eq!(
        (first["state"].as_str(), first["counts"]["created"].as_u64()),
        (Some("succeeded"), Some(3)),
        "{first:#}"
    );
    let errors = first["errors"].to_string();
    assert!(errors.contains("manager_id would make a cycle"), "{first:#}");
    // One of the two managers stands (whichever came first); the other would close the cycle.
    let (a, b) = (user_named(&s, "ada").await, user_named(&s, "bob").await);
    let pair = (a["manager_id"].clone(), b["manager_id"].clone());
    assert!(pair == (b["id"].clone(), Value::Null) || pair == (Value::Null, a["id"].clone()), "{pair:?}");
    assert!(user_named(&s, "carol").await["manager_id"].is_null());

    // Read again, the entries plan the same managers: left out again, and nothing is written.
    let second = sync(&s, &source, "full").await;
    let counts = &second["counts"];
    assert_eq!((counts["updated"].as_u64(), counts["unchanged"].as_u64()), (Some(0), Some(3)), "{second:#}");
    let errors = second["errors"].to_string();
    assert!(errors.contains(&format!("{carol}: manager_id a user cannot be their own manager (left out)")), "{errors}");
    assert!(errors.contains("manager_id would make a cycle"), "{errors}");
    let carol_user = user_named(&s, "carol").await;
    assert_eq!((carol_user["manager_id"].clone(), carol_user["version"].as_i64()), (Value::Null, Some(1)));

    // The same audit entry as an admin's create, by the source.
    let admins = s.user("dan").await;
    let entry = |id: Value| {
        let s = &s;
        async move {
            let a = s.get(&format!("/api/v1/audit?target_type=user&target_id={}", id.as_str().unwrap())).await;
            a.body["items"].as_array().unwrap().last().unwrap().clone()
        }
    };
    let (by_source, by_admin) = (entry(carol_user["id"].clone()).await, entry(admins["id"].clone()).await);
    assert_eq!((by_source["action"].as_str(), by_admin["action"].as_str()), (Some("user.create"), Some("user.create")));
    assert_eq!(by_source["actor"], json!({"kind": "source", "name": "Corp LDAP"}));
    let keys = |e: &Value| e["after"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&by_source), keys(&by_admin));
}

crate::on_both_backends!(
    openldap_full_import_groups_guard_and_read_only_fields,
    openldap_changes_flow_to_the_app,
    a_failing_directory_suspends_nobody,
    bad_sources_are_refused,
    active_directory_end_to_end,
    a_syncs_writes_meet_the_rules_of_every_writer,
);

#[tokio::test]
async fn passwords_are_verified_against_the_directory_sqlite() {
    passwords_are_verified_against_the_directory(Backend::Sqlite).await;
}

/// `provisioner source list / sync`: results in one line each, readable errors, non-zero exits.
#[tokio::test]
async fn the_cli_lists_and_syncs_sources() {
    let slapd = Slapd::start();
    slapd.add(&(Slapd::person_ldif("ada", "Ada", "L", &[]) + &Slapd::person_ldif("bob", "Bob", "B", &[])));
    let dir = tempfile::tempdir().unwrap();
    {
        let store = store::SqliteStore::open(&dir.path().join("provisioner.db")).await.unwrap();
        let keyring = store::secrets::Keyring::load_or_create(&dir.path().join("secret.key")).unwrap();
        let state = server::AppState::new(
            std::sync::Arc::new(store.clone()),
            std::sync::Arc::new(keyring),
            engine::EngineConfig::default(),
        );
        let input: directory::SourceInput = serde_json::from_value(openldap_source(&slapd, json!({}))).unwrap();
        state.service.create_source(&directory::Actor::cli(), input).await.unwrap();
        store.close().await;
    }
    let run = |args: &[&str]| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_provisioner"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PROVISIONER_")) {
            c.env_remove(k);
        }
        c.env("PROVISIONER_DATA_DIR", dir.path()).env("RUST_LOG", "error").args(args);
        async move { c.output().await.unwrap() }
    };
    let out = run(&["source", "list"]).await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Corp LDAP") && text.contains("never synced"), "{text}");

    let out = run(&["source", "sync", "corp ldap"]).await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("full sync succeeded") && text.contains("2 created"), "{text}");

    let out = run(&["source", "sync", "nosuch"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("no directory source") && err.trim().lines().count() == 1, "{err}");

    drop(slapd);
    let out = run(&["source", "sync", "Corp LDAP"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("cannot reach the directory") && err.contains("nobody was suspended"), "{err}");
}
