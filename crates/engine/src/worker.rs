//! Carrying out one operation against an app, idempotently.
//!
//! A create first looks the account up: by `externalId` (our user id), which recognises an
//! account this engine created before a crash kept it from recording so; then by
//! `userName`, which finds accounts created by someone else - those are left untouched and
//! reported `unknown` until an admin links them ("Rematch login").

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use connectors::{Connector, ConnectorError, ErrorKind, RemoteAccount};
use directory::{Account, AccountWrite, Action, EventStatus, Operation, Outcome, Ownership};
use rand::Rng;
use serde_json::Value;

use crate::mapping::{app_view, groups_of};

/// After this many attempts a retryable failure is reported as failed.
pub const MAX_ATTEMPTS: i64 = 8;

/// What to record after running an operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Execution {
    Finished(Outcome),
    /// A temporary failure: run it again at `at`.
    RetryAt {
        at: DateTime<Utc>,
        reason: String,
    },
}

fn done(status: EventStatus, account: AccountWrite) -> Outcome {
    Outcome { status, reason: None, recommended_action: None, account, replan: false }
}

pub(crate) fn failed(reason: String, recommended_action: String) -> Outcome {
    Outcome {
        status: EventStatus::Failed,
        reason: Some(reason),
        recommended_action: Some(recommended_action),
        account: AccountWrite::Keep,
        replan: false,
    }
}

/// The wait before retry number `attempt` (1-based): exponential with full jitter, from 2 s
/// up to 5 min, or what the app asked for with Retry-After.
pub fn backoff(attempt: i64, retry_after: Option<Duration>) -> Duration {
    if let Some(d) = retry_after {
        return d.min(Duration::from_secs(3600));
    }
    let exp = 2u64.saturating_pow(attempt.clamp(1, 20) as u32 - 1);
    let cap = (2_000u64.saturating_mul(exp)).min(300_000);
    Duration::from_millis(rand::thread_rng().gen_range(cap / 2..=cap))
}

/// The admin-facing reason of a connector failure, naming the app.
pub(crate) fn describe(app_name: &str, e: &ConnectorError) -> String {
    match e.kind {
        ErrorKind::Authentication => {
            let detail =
                e.reason.strip_prefix("Invalid authentication").unwrap_or(&e.reason).trim_start_matches([' ', ':']);
            format!("{}: {app_name} refused the credentials {detail}", crate::quarantine::REFUSED).trim_end().to_owned()
        }
        _ => format!("{app_name}: {}", e.reason),
    }
}

/// Turns a connector failure into a retry or a failure, with the admin-facing reason.
pub(crate) fn on_error(op: &Operation, app_name: &str, e: ConnectorError) -> Execution {
    // A 429 slows the app down; it never fails the operation (nor counts toward quarantine).
    let rate_limited = e.kind == ErrorKind::RateLimited;
    if e.retryable && (op.event.attempts < MAX_ATTEMPTS || rate_limited) {
        let wait = backoff(op.event.attempts, e.retry_after);
        let at = directory::now() + chrono::Duration::from_std(wait).unwrap_or_else(|_| chrono::Duration::seconds(60));
        return Execution::RetryAt {
            at,
            reason: format!("{}: {} (attempt {}; retrying)", app_name, e.reason, op.event.attempts),
        };
    }
    Execution::Finished(failed(describe(app_name, &e), e.recommended_action))
}

fn external_id_of(resource: &Value) -> Option<&str> {
    resource.get("externalId").and_then(Value::as_str)
}

/// An account found in the app for this user: ours (its externalId is our user id) or
/// someone else's with the same userName. The first attempt looks up by userName (which
/// finds our own accounts too, as they carry the user's userName); a retry, which may
/// follow an attempt that reached the app before a crash or a timeout, also matches our
/// externalId, in the same request.
async fn lookup(
    connector: &dyn Connector,
    user_id: &str,
    username: &str,
    retry: bool,
) -> Result<Option<(RemoteAccount, bool)>, ConnectorError> {
    let found = if retry {
        connector.find_account_any(&[("externalId", user_id), ("userName", username)]).await?
    } else {
        connector.find_account("userName", username).await?
    };
    Ok(pick(found, user_id, username))
}

/// Of the accounts found for a user, ours (its externalId is our user id, `true`) or else one
/// with the same userName (someone else's, `false`).
fn pick(found: Vec<RemoteAccount>, user_id: &str, username: &str) -> Option<(RemoteAccount, bool)> {
    if let Some(i) = found.iter().position(|a| external_id_of(&a.resource) == Some(user_id)) {
        return found.into_iter().nth(i).map(|a| (a, true));
    }
    found.into_iter().find(|a| same_name(a, username)).map(|a| (a, false))
}

/// Whether the account's userName is `username` (ignoring case, as SCIM compares userNames).
pub(crate) fn same_name(account: &RemoteAccount, username: &str) -> bool {
    account.resource.get("userName").and_then(Value::as_str).is_some_and(|n| n.eq_ignore_ascii_case(username))
}

fn unknown(app_name: &str, username: &str, found: RemoteAccount) -> Outcome {
    Outcome {
        status: EventStatus::Unknown,
        reason: Some(format!(
            "{app_name} already has an account with userName \"{username}\" (id {}) that Provisioner did not create; it was left untouched.",
            found.id
        )),
        recommended_action: Some("Rematch login: link the user to that account if it is theirs, then provisioning manages it.".into()),
        account: AccountWrite::Set { remote_id: Some(found.id), ownership: Some(Ownership::Foreign), last_applied: None },
        replan: false,
    }
}

async fn adopt(connector: &dyn Connector, found: RemoteAccount, desired: &Value) -> Result<Outcome, ConnectorError> {
    connector.update_account(&found.id, &app_view(desired), None).await?;
    Ok(done(
        EventStatus::Provisioned,
        AccountWrite::Set {
            remote_id: Some(found.id),
            ownership: Some(Ownership::Created),
            last_applied: Some(desired.clone()),
        },
    ))
}

async fn create(
    op: &Operation,
    app_name: &str,
    desired: &Value,
    connector: &dyn Connector,
    lookup_first: bool,
    looked_up: Option<Vec<RemoteAccount>>,
) -> Result<Outcome, ConnectorError> {
    let user_id = op.event.user_id.to_string();
    let username = desired.get("userName").and_then(Value::as_str).unwrap_or(&op.event.username).to_owned();
    let retry = op.event.attempts > 1;
    // A retry may follow an attempt that reached the app: it always looks up first. A first
    // attempt may skip it when the app refuses taken userNames (then the 409 below looks up),
    // or use what a lookup of its whole batch found just now.
    if retry || lookup_first {
        let found = match looked_up {
            Some(found) if !retry => pick(found, &user_id, &username),
            _ => lookup(connector, &user_id, &username, retry).await?,
        };
        match found {
            Some((found, true)) => return adopt(connector, found, desired).await,
            Some((found, false)) => return Ok(unknown(app_name, &username, found)),
            None => {}
        }
    }
    match connector.create_account(&app_view(desired)).await {
        Ok(created) => Ok(done(
            EventStatus::Provisioned,
            AccountWrite::Set {
                remote_id: Some(created.id),
                ownership: Some(Ownership::Created),
                last_applied: Some(desired.clone()),
            },
        )),
        // Someone created it between our lookup and our POST (or our own earlier attempt did).
        Err(e) if e.kind == ErrorKind::Conflict => match lookup(connector, &user_id, &username, true).await? {
            Some((found, true)) => adopt(connector, found, desired).await,
            Some((found, false)) => Ok(unknown(app_name, &username, found)),
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

async fn update(
    op: &Operation,
    app_name: &str,
    desired: &Value,
    account: &Account,
    remote_id: &str,
    connector: &dyn Connector,
) -> Result<Outcome, ConnectorError> {
    let previous = account.last_applied.as_ref().map(app_view);
    match connector.update_account(remote_id, &app_view(desired), previous.as_ref()).await {
        Ok(_) => Ok(done(
            op.event.action.done_status(),
            AccountWrite::Set {
                remote_id: Some(remote_id.to_owned()),
                ownership: account.ownership,
                last_applied: Some(desired.clone()),
            },
        )),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(Outcome {
            status: EventStatus::Failed,
            reason: Some(format!("The account no longer exists in {app_name}; it will be created again.")),
            recommended_action: Some("Nothing to do: provisioning recreates the account.".into()),
            account: AccountWrite::Set { remote_id: None, ownership: None, last_applied: None },
            replan: true,
        }),
        Err(e) => Err(e),
    }
}

/// Brings the account's group memberships from `previous` to `desired` (group names in
/// [`crate::mapping::GROUPS_KEY`]), with PATCH add/remove on each group; `ids` maps lower-cased group names to
/// their ids in the app.
async fn sync_groups(
    connector: &dyn Connector,
    remote: &str,
    previous: Option<&Value>,
    desired: Option<&Value>,
    ids: &HashMap<String, String>,
) -> Result<(), ConnectorError> {
    let before = previous.map(groups_of).unwrap_or_default();
    let after = desired.map(groups_of).unwrap_or_default();
    let member = [remote.to_owned()];
    for g in after.difference(&before) {
        if let Some(id) = ids.get(&g.to_lowercase()) {
            connector.add_group_members(id, &member).await?;
        }
    }
    for g in before.difference(&after) {
        if let Some(id) = ids.get(&g.to_lowercase()) {
            connector.remove_group_members(id, &member).await?;
        }
    }
    Ok(())
}

/// Runs `op` against the app. `account` is the pair's account record; `group_ids` maps the
/// (lower-cased) names of the groups involved to their ids in the app; `looked_up`, for a
/// create, the accounts with the user's userName that a lookup of the whole batch found just
/// before (`None`: look up here).
pub async fn execute(
    op: &Operation,
    app: &directory::App,
    account: Option<&Account>,
    connector: &dyn Connector,
    group_ids: &HashMap<String, String>,
    looked_up: Option<Vec<RemoteAccount>>,
) -> Execution {
    let app_name = app.name.as_str();
    let managed_remote = account
        .filter(|a| a.ownership.is_some_and(Ownership::is_managed))
        .and_then(|a| a.remote_id.as_deref().map(|r| (a, r)));
    let previous = managed_remote.and_then(|(a, _)| a.last_applied.as_ref());
    let result = match (op.event.action, &op.desired, managed_remote) {
        (Action::Create, Some(desired), _) => {
            create(op, app_name, desired, connector, app.provisioning.lookup_before_create, looked_up).await
        }
        (Action::Update | Action::Suspend, Some(desired), Some((acc, remote))) => {
            update(op, app_name, desired, acc, remote, connector).await
        }
        (Action::Delete, _, Some((_, remote))) => async {
            sync_groups(connector, remote, previous, None, group_ids).await?;
            connector.delete_account(remote).await
        }
        .await
        .map(|()| {
            done(EventStatus::Deleted, AccountWrite::Set { remote_id: None, ownership: None, last_applied: None })
        }),
        // Nothing left to delete.
        (Action::Delete, _, None) => Ok(done(EventStatus::Deleted, AccountWrite::Keep)),
        (Action::Update | Action::Suspend, _, None) => Ok(Outcome {
            replan: true,
            ..failed(
                format!("There is no account in {app_name} to change."),
                "Nothing to do: provisioning plans the account again.".into(),
            )
        }),
        (_, None, _) => Ok(failed("The operation carries no values.".into(), "Retry the event.".into())),
    };
    // The account is as desired: now its group memberships.
    let result = match result {
        Ok(outcome) if op.event.action != Action::Delete => {
            let synced = match &outcome.account {
                AccountWrite::Set { remote_id: Some(remote), ownership: Some(o), .. } if o.is_managed() => {
                    // A create (or an adopted account) has no memberships we know of yet.
                    let before = if op.event.action == Action::Create { None } else { previous };
                    sync_groups(connector, remote, before, op.desired.as_ref(), group_ids).await
                }
                _ => Ok(()),
            };
            synced.map(|()| outcome)
        }
        other => other,
    };
    match result {
        Ok(outcome) => Execution::Finished(outcome),
        Err(e) => on_error(op, app_name, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        assert!(backoff(1, None) <= Duration::from_secs(2));
        assert!(backoff(5, None) >= Duration::from_secs(16));
        assert!(backoff(50, None) <= Duration::from_secs(300));
        assert_eq!(backoff(1, Some(Duration::from_secs(7))), Duration::from_secs(7));
    }
}
