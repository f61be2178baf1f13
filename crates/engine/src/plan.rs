//! Planning: pure functions from directory data and account records to operations.
//!
//! Level-triggered: for each (user, app) the planner derives what the app *should* have
//! ([`intent`]), compares it with what was last applied ([`decide`]), and turns the
//! difference into at most one operation, collapsing into the operation already waiting
//! for the pair ([`plan_pair`]). Planning twice from the same state plans nothing new.
//!
//! Pure: no storage, no clock, no I/O. What it reads and decides are the directory's planning
//! types ([`directory::plan`]); loading them and writing the plan belong to the runner.

use directory::{
    Account, Action, App, DeprovisionAction, EventStatus, Ownership, PairState, PlanItem, RoleRef, User, UserStatus,
};
use serde_json::Value;

use crate::mapping::{evaluate_for_plan, get_path, is_active, set_path};

/// What the app should have for a user.
#[derive(Debug, Clone, PartialEq)]
pub enum Intent {
    /// An account with these values (active or suspended); `create_only` paths keep what
    /// the account was created with.
    Present { resource: Value, create_only: Vec<String> },
    /// No account.
    Absent,
    /// Whatever is there: provisioning is off, or the app's settings say "do nothing".
    Leave,
    /// The account cannot be computed (a required value is empty): why.
    Invalid(String),
}

fn deprovision(action: DeprovisionAction, user: Option<&User>, roles: &[RoleRef], app: &App) -> Intent {
    match (action, user) {
        (DeprovisionAction::Delete, _) => Intent::Absent,
        (DeprovisionAction::Suspend, Some(u)) => {
            let e = evaluate_for_plan(u, roles, app, false);
            Intent::Present { resource: e.resource, create_only: e.create_only }
        }
        // A user who no longer exists at all cannot be described: leave the account.
        (DeprovisionAction::Suspend, None) | (DeprovisionAction::None, _) => Intent::Leave,
    }
}

/// What `app` should have for `user` (`None`: no such user), given the user's roles and
/// whether one of them grants the app.
pub fn intent(user: Option<&User>, roles: &[RoleRef], app: &App, granted: bool) -> Intent {
    intent_recorded(user, roles, app, granted, None).0
}

/// How a user left: `suspended` (suspended here), `deleted` (deleted here), or `left` (lost
/// the app, or scoped out by a rule).
const SUSPENDED: &str = "suspended";
const DELETED: &str = "deleted";
const LEFT: &str = "left";

fn parse_action(s: &str) -> Option<DeprovisionAction> {
    match s {
        "delete" => Some(DeprovisionAction::Delete),
        "suspend" => Some(DeprovisionAction::Suspend),
        "none" => Some(DeprovisionAction::None),
        _ => None,
    }
}

fn action_str(a: DeprovisionAction) -> &'static str {
    match a {
        DeprovisionAction::Delete => "delete",
        DeprovisionAction::Suspend => "suspend",
        DeprovisionAction::None => "none",
    }
}

/// [`intent`] with settings applied forward: `recorded` is how the user left and what the
/// settings said then (`left:none`...). A user who left the same way keeps what was decided
/// then; one who leaves now (or another way) gets today's setting. Answers the departure to
/// record (`None`: the user has not left; the recorded one when provisioning is off).
pub fn intent_recorded(
    user: Option<&User>,
    roles: &[RoleRef],
    app: &App,
    granted: bool,
    recorded: Option<&str>,
) -> (Intent, Option<String>) {
    let settings = &app.provisioning;
    if !settings.enabled {
        return (Intent::Leave, recorded.map(str::to_owned));
    }
    let leave = |kind: &str, current: DeprovisionAction, u: Option<&User>| {
        let action = recorded
            .and_then(|r| r.strip_prefix(kind).and_then(|rest| rest.strip_prefix(':')))
            .and_then(parse_action)
            .unwrap_or(current);
        (deprovision(action, u, roles, app), Some(format!("{kind}:{}", action_str(action))))
    };
    match user {
        None => leave(DELETED, settings.on_delete, None),
        Some(u) if u.status == UserStatus::Deleted => leave(DELETED, settings.on_delete, Some(u)),
        Some(u) if !granted => leave(LEFT, settings.on_delete, Some(u)),
        Some(u) if u.status == UserStatus::Suspended => leave(SUSPENDED, settings.on_suspend, Some(u)),
        Some(u) => {
            let e = evaluate_for_plan(u, roles, app, true);
            if !e.in_scope {
                // Scoped out by a rule: as if the user had lost the app.
                return leave(LEFT, settings.on_delete, Some(u));
            }
            if !e.missing_required.is_empty() {
                return (
                    Intent::Invalid(format!(
                        "Required values are empty for {}: {}; nothing was sent to the app.",
                        app.name,
                        e.missing_required.join(", ")
                    )),
                    None,
                );
            }
            (Intent::Present { resource: e.resource, create_only: e.create_only }, None)
        }
    }
}

/// `resource` with each create-only attribute as it was applied (or absent).
fn keep_created(resource: &Value, last: Option<&Value>, create_only: &[String]) -> Value {
    let mut out = resource.clone();
    for p in create_only.iter().filter_map(|p| crate::mapping::parse_path(p)) {
        let kept = last.and_then(|l| get_path(l, &p)).cloned();
        set_path(&mut out, &p, kept);
    }
    out
}

fn managed(account: Option<&Account>) -> Option<&Account> {
    account.filter(|a| a.remote_id.is_some() && a.ownership.is_some_and(Ownership::is_managed))
}

/// The operation that brings the account from what was last applied to the intent, if any.
/// Accounts the engine neither created nor was given by an admin are never touched.
pub fn decide(intent: &Intent, account: Option<&Account>) -> Option<(Action, Option<Value>)> {
    if let Some(a) = account {
        if a.ownership == Some(Ownership::Foreign) || a.status == EventStatus::Unknown {
            return None;
        }
    }
    match (intent, managed(account)) {
        (Intent::Leave | Intent::Invalid(_), _) => None,
        (Intent::Present { resource, .. }, None) => {
            is_active(resource).then(|| (Action::Create, Some(resource.clone())))
        }
        (Intent::Absent, None) => None,
        (Intent::Present { resource, create_only }, Some(a)) => {
            let desired = keep_created(resource, a.last_applied.as_ref(), create_only);
            if a.last_applied.as_ref() == Some(&desired) {
                return None;
            }
            let was_active = a.last_applied.as_ref().is_none_or(is_active);
            let action = if !is_active(&desired) && was_active { Action::Suspend } else { Action::Update };
            Some((action, Some(desired)))
        }
        (Intent::Absent, Some(_)) => Some((Action::Delete, None)),
    }
}

/// Whether the app wants an admin to approve this action first.
pub fn needs_approval(app: &App, action: Action) -> bool {
    let a = &app.provisioning.approval;
    match action {
        Action::Create => a.create,
        Action::Update => a.update,
        Action::Suspend | Action::Delete => a.delete,
    }
}

/// Everything the planner writes for one pair: the departure to record, when it changed (on a
/// managed account), and the operation decision ([`plan_pair`]).
pub fn plan_items(s: &PairState) -> impl Iterator<Item = PlanItem> {
    departure_item(s).into_iter().chain(forget_item(s)).chain(plan_pair(s))
}

/// When the account no longer wants what an admin rejected (the desired account changed),
/// the rejection is forgotten: should it come back later, it is queued again.
fn forget_item(s: &PairState) -> Option<PlanItem> {
    let account = s.account.as_ref().filter(|a| a.rejected.is_some())?;
    let app = s.app.as_ref()?;
    if s.running.is_some() || !app.provisioning.enabled {
        return None;
    }
    let recorded = managed(Some(account)).and_then(|a| a.departure.as_deref());
    let (want, _) = intent_recorded(s.user.as_deref(), &s.roles, app, s.granted, recorded);
    if matches!(want, Intent::Invalid(_)) {
        return None;
    }
    let still =
        decide(&want, Some(account)).is_some_and(|(action, desired)| was_rejected(Some(account), action, &desired));
    (!still).then_some(PlanItem::Forget { user_id: s.user_id, app_id: s.app_id })
}

fn departure_item(s: &PairState) -> Option<PlanItem> {
    let app = s.app.as_ref()?;
    if s.running.is_some() {
        return None;
    }
    let Some(account) = managed(s.account.as_ref()) else {
        // No account left to protect: forget how the user left.
        return s.account.as_ref().filter(|a| a.departure.is_some()).map(|_| PlanItem::Depart {
            user_id: s.user_id,
            app_id: s.app_id,
            departure: None,
        });
    };
    let (_, departure) = intent_recorded(s.user.as_deref(), &s.roles, app, s.granted, account.departure.as_deref());
    (departure != account.departure).then_some(PlanItem::Depart { user_id: s.user_id, app_id: s.app_id, departure })
}

/// Whether an admin rejected exactly this operation for the account last.
fn was_rejected(account: Option<&Account>, action: Action, desired: &Option<Value>) -> bool {
    account.and_then(|a| a.rejected.as_ref()).is_some_and(|r| {
        r.get("action").and_then(Value::as_str) == Some(action.as_str())
            && r.get("desired").unwrap_or(&Value::Null) == desired.as_ref().unwrap_or(&Value::Null)
    })
}

/// The planner's decision for one pair.
pub fn plan_pair(s: &PairState) -> Option<PlanItem> {
    let Some(app) = &s.app else {
        return s.waiting.as_ref().map(|w| PlanItem::Cancel { op: w.event.id, reason: "The app was deleted.".into() });
    };
    if let Some(run) = &s.running {
        // What the running operation leaves behind is not known yet: plan again after it.
        return Some(PlanItem::Replan { op: run.event.id });
    }
    let recorded = managed(s.account.as_ref()).and_then(|a| a.departure.as_deref());
    let (want, _) = intent_recorded(s.user.as_deref(), &s.roles, app, s.granted, recorded);
    if let Intent::Invalid(reason) = &want {
        if let Some(w) = &s.waiting {
            return Some(PlanItem::Cancel { op: w.event.id, reason: reason.clone() });
        }
        // Reported once: not again while the account's last event already failed.
        if s.account.as_ref().is_some_and(|a| a.status == EventStatus::Failed) {
            return None;
        }
        let action = if managed(s.account.as_ref()).is_some() { Action::Update } else { Action::Create };
        return Some(PlanItem::Fail { user_id: s.user_id, app_id: s.app_id, action, reason: reason.clone() });
    }
    // Rejections stick: what an admin rejected is not queued again until it changes.
    let decision = decide(&want, s.account.as_ref())
        .filter(|(action, desired)| !was_rejected(s.account.as_ref(), *action, desired));
    match (decision, &s.waiting) {
        (None, None) => None,
        (None, Some(w)) => {
            Some(PlanItem::Cancel { op: w.event.id, reason: "No longer needed: a newer change superseded it.".into() })
        }
        (Some((action, desired)), Some(w)) => {
            let needs_approval = needs_approval(app, action);
            let was_held = w.event.status == EventStatus::Held;
            // A held deprovision stays held until an admin decides.
            let held = was_held && matches!(action, Action::Suspend | Action::Delete);
            let same = w.event.action == action
                && w.desired == desired
                && (held || (!was_held && (w.state == directory::OpState::AwaitingApproval) == needs_approval));
            (!same).then_some(PlanItem::Replace { op: w.event.id, action, desired, needs_approval, held, cause: None })
        }
        (Some((action, desired)), None) => Some(PlanItem::Enqueue {
            user_id: s.user_id,
            app_id: s.app_id,
            action,
            desired,
            needs_approval: needs_approval(app, action),
            held: false,
            cause: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::default_resource;
    use directory::{AppInput, Event, OpState, Operation, UserInput, UserSource};
    use proptest::prelude::*;
    use serde_json::json;
    use uuid::Uuid;

    fn app(enabled: bool, on_suspend: DeprovisionAction, on_delete: DeprovisionAction, approve: bool) -> App {
        let input: AppInput = serde_json::from_value(json!({"name": "Wiki",
            "connection": {"base_url": "https://wiki.example.com/scim/v2", "auth": {"type": "bearer", "token": "t"}}}))
        .unwrap();
        let (v, _) = input.validate(None).unwrap();
        let mut a = App::new(v, directory::now());
        a.provisioning.enabled = enabled;
        a.provisioning.on_suspend = on_suspend;
        a.provisioning.on_delete = on_delete;
        a.provisioning.approval.create = approve;
        a.provisioning.approval.delete = approve;
        a
    }

    fn user(status: UserStatus, title: &str) -> User {
        let input = UserInput { username: "ada".into(), title: Some(title.into()), ..Default::default() };
        let mut u = User::new(input, UserSource::Local, directory::now());
        u.status = status;
        u
    }

    fn account(remote: bool, ownership: Option<Ownership>, status: EventStatus, last: Option<Value>) -> Account {
        Account {
            app_id: Uuid::nil(),
            user_id: Uuid::nil(),
            username: "ada".into(),
            remote_id: remote.then(|| "r-1".to_owned()),
            ownership,
            status,
            last_applied: last,
            last_event_id: None,
            updated_at: directory::now(),
            departure: None,
            rejected: None,
        }
    }

    fn op(action: Action, desired: Option<Value>, state: OpState) -> Operation {
        let now = directory::now();
        Operation {
            event: Event {
                id: Uuid::now_v7(),
                app_id: Uuid::nil(),
                app_name: "Wiki".into(),
                user_id: Uuid::nil(),
                username: "ada".into(),
                action,
                status: action.working_status(),
                reason: None,
                recommended_action: None,
                attempts: 0,
                resolved_by: None,
                created_at: now,
                updated_at: now,
                cause: None,
            },
            state,
            desired,
            next_run_at: now,
            lease_owner: None,
            lease_expires_at: None,
        }
    }

    use DeprovisionAction::{Delete, None as Nothing, Suspend};

    #[test]
    fn role_grant_creates_and_change_updates() {
        let a = app(true, Suspend, Delete, false);
        let u = user(UserStatus::Active, "Engineer");
        let want = intent(Some(&u), &[], &a, true);
        let Intent::Present { resource: r, .. } = &want else { panic!() };
        assert_eq!(decide(&want, None), Some((Action::Create, Some(r.clone()))));
        let acc = account(true, Some(Ownership::Created), EventStatus::Provisioned, Some(r.clone()));
        assert_eq!(decide(&want, Some(&acc)), None, "in sync: nothing to do");
        let promoted = user(UserStatus::Active, "CTO");
        let promoted = User { id: u.id, ..promoted };
        let (action, desired) = decide(&intent(Some(&promoted), &[], &a, true), Some(&acc)).unwrap();
        assert_eq!(action, Action::Update);
        assert_eq!(desired.unwrap()["title"], "CTO");
    }

    #[test]
    fn suspension_and_deprovisioning_follow_the_settings() {
        let u = user(UserStatus::Suspended, "Engineer");
        let active = default_resource(&User { status: UserStatus::Active, ..u.clone() }, true);
        let acc = account(true, Some(Ownership::Created), EventStatus::Provisioned, Some(active));
        let (action, desired) =
            decide(&intent(Some(&u), &[], &app(true, Suspend, Delete, false), true), Some(&acc)).unwrap();
        assert_eq!((action, desired.unwrap()["active"].clone()), (Action::Suspend, json!(false)));
        assert_eq!(
            decide(&intent(Some(&u), &[], &app(true, Delete, Delete, false), true), Some(&acc)),
            Some((Action::Delete, None))
        );
        assert_eq!(decide(&intent(Some(&u), &[], &app(true, Nothing, Delete, false), true), Some(&acc)), None);
        // Losing the role follows on_delete.
        let active_user = User { status: UserStatus::Active, ..u.clone() };
        assert_eq!(
            decide(&intent(Some(&active_user), &[], &app(true, Suspend, Delete, false), false), Some(&acc)),
            Some((Action::Delete, None))
        );
        let (action, _) =
            decide(&intent(Some(&active_user), &[], &app(true, Delete, Suspend, false), false), Some(&acc)).unwrap();
        assert_eq!(action, Action::Suspend);
        assert_eq!(
            decide(&intent(Some(&active_user), &[], &app(true, Delete, Nothing, false), false), Some(&acc)),
            None
        );
        // Reactivation is an update.
        let suspended =
            account(true, Some(Ownership::Created), EventStatus::Suspended, Some(default_resource(&u, false)));
        let (action, desired) =
            decide(&intent(Some(&active_user), &[], &app(true, Suspend, Delete, false), true), Some(&suspended))
                .unwrap();
        assert_eq!((action, desired.unwrap()["active"].clone()), (Action::Update, json!(true)));
    }

    #[test]
    fn foreign_and_unknown_accounts_are_never_touched() {
        let u = user(UserStatus::Active, "Engineer");
        for acc in [
            account(true, Some(Ownership::Foreign), EventStatus::Unknown, None),
            account(false, None, EventStatus::Unknown, None),
        ] {
            for granted in [true, false] {
                assert_eq!(
                    decide(&intent(Some(&u), &[], &app(true, Delete, Delete, false), granted), Some(&acc)),
                    None
                );
            }
        }
    }

    #[test]
    fn collapsing_and_cancelling_waiting_operations() {
        let a = app(true, Suspend, Delete, true);
        let u = user(UserStatus::Active, "Engineer");
        let r = default_resource(&u, true);
        let mut s = PairState {
            user_id: u.id,
            app_id: a.id,
            user: Some(std::sync::Arc::new(u.clone())),
            app: Some(std::sync::Arc::new(a.clone())),
            granted: true,
            roles: vec![],
            account: None,
            running: None,
            waiting: None,
        };
        let Some(PlanItem::Enqueue { action: Action::Create, needs_approval: true, .. }) = plan_pair(&s) else {
            panic!("{:?}", plan_pair(&s))
        };
        s.waiting = Some(op(Action::Create, Some(r.clone()), OpState::AwaitingApproval));
        assert_eq!(plan_pair(&s), None, "the pending operation already does it");
        let promoted = User { title: Some("CTO".into()), ..u.clone() };
        s.user = Some(std::sync::Arc::new(promoted));
        assert!(matches!(plan_pair(&s), Some(PlanItem::Replace { action: Action::Create, needs_approval: true, .. })));
        s.granted = false;
        assert!(matches!(plan_pair(&s), Some(PlanItem::Cancel { .. })), "no account needed any more");
        s.running = Some(op(Action::Create, Some(r), OpState::Running));
        assert!(matches!(plan_pair(&s), Some(PlanItem::Replan { .. })));
        s.app = None;
        assert!(matches!(plan_pair(&s), Some(PlanItem::Cancel { .. })));
    }

    #[test]
    fn disabled_app_plans_nothing() {
        let u = user(UserStatus::Active, "x");
        assert_eq!(intent(Some(&u), &[], &app(false, Delete, Delete, false), true), Intent::Leave);
    }

    fn dep() -> impl Strategy<Value = DeprovisionAction> {
        prop_oneof![Just(Delete), Just(Suspend), Just(Nothing)]
    }

    fn status() -> impl Strategy<Value = Option<UserStatus>> {
        prop_oneof![
            Just(None),
            Just(Some(UserStatus::Active)),
            Just(Some(UserStatus::Suspended)),
            Just(Some(UserStatus::Deleted))
        ]
    }

    fn ownership() -> impl Strategy<Value = Option<Ownership>> {
        prop_oneof![
            Just(None),
            Just(Some(Ownership::Created)),
            Just(Some(Ownership::Linked)),
            Just(Some(Ownership::Foreign))
        ]
    }

    /// Simulates a successful run of `action` on the account record.
    fn apply(action: Action, desired: Option<Value>, acc: Option<Account>) -> Account {
        let mut a = acc.unwrap_or_else(|| account(false, None, EventStatus::Provisioning, None));
        match action {
            Action::Create => {
                a.remote_id = Some("new".into());
                a.ownership = Some(Ownership::Created);
                a.last_applied = desired;
            }
            Action::Update | Action::Suspend => a.last_applied = desired,
            Action::Delete => {
                a.remote_id = None;
                a.ownership = None;
                a.last_applied = None;
            }
        }
        a.status = action.done_status();
        a
    }

    proptest! {
        #[test]
        fn planning_converges_and_respects_ownership(
            enabled in any::<bool>(), on_suspend in dep(), on_delete in dep(), granted in any::<bool>(),
            st in status(), has_account in any::<bool>(), remote in any::<bool>(), own in ownership(),
            stale in any::<bool>(), title in "[a-zA-Z ]{0,12}",
        ) {
            let a = app(enabled, on_suspend, on_delete, false);
            let u = st.map(|s| user(s, &title));
            let want = intent(u.as_ref(), &[], &a, granted);
            let last = u.as_ref().map(|u| default_resource(u, !stale));
            let acc = has_account.then(|| account(remote, own, EventStatus::Provisioned, last));
            let decision = decide(&want, acc.as_ref());
            if let Some((action, desired)) = decision.clone() {
                // Never touch what we do not own; never create a disabled account; nothing when disabled.
                prop_assert!(enabled);
                let managed = acc.as_ref().is_some_and(|x| x.remote_id.is_some() && x.ownership.is_some_and(Ownership::is_managed));
                match action {
                    Action::Create => {
                        prop_assert!(!managed);
                        prop_assert!(acc.as_ref().is_none_or(|x| x.ownership != Some(Ownership::Foreign)));
                        prop_assert!(desired.as_ref().is_some_and(is_active));
                    }
                    _ => prop_assert!(managed),
                }
                // After it succeeds, planning again from the new state does nothing.
                let after = apply(action, desired, acc.clone());
                prop_assert_eq!(decide(&want, Some(&after)), None);
            }
            // Planning is a function of its inputs.
            prop_assert_eq!(decide(&want, acc.as_ref()), decision);
        }
    }
}
