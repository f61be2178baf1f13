//! An app's mapping screens, one file each: Entitlements ([`entitlements`]: Refresh with live
//! progress, the imported values), Parameters ([`parameters`]: the mapping editor), Rules
//! ([`rules`]: the ordered rule editor with "Preview"), and a user's "Explain" view of one app
//! account ([`explain`]). What the editors share is in [`editor`] (commands, focus, field
//! errors, the source of a value) and [`preview`] (the plan of a change as shown).
//!
//! The editors are plain forms: "Add", "Remove", "Move up / down" are submit buttons that
//! re-render the editor with the unsaved state carried in its fields; "Preview" shows the
//! plan of the change (nothing is written); "Save" stores it with the app version the editor
//! was opened at, so a concurrent change is reported instead of overwritten.

mod editor;
mod entitlements;
mod explain;
mod parameters;
mod preview;
mod rules;

use axum::routing::{get, post};
use axum::Router;

use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/apps/{id}/entitlements", get(entitlements::entitlements_tab))
        .route("/apps/{id}/entitlements/refresh", post(entitlements::refresh))
        .route("/apps/{id}/parameters", get(parameters::parameters_tab).post(parameters::post_parameters))
        .route("/apps/{id}/rules", get(rules::rules_tab).post(rules::post_rules))
        .route("/users/{id}/applications/{app}/explain", get(explain::explain))
}
