//! The end users' portal at `/`: the apps they may sign in to (IdP-initiated sign-in).

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use directory::UserStatus;
use uuid::Uuid;

use super::pages::{error_page, suspended_page};
use super::session::{current_user, to_login};
use crate::{AppState, Error};

struct PortalApp {
    id: Uuid,
    name: String,
}

#[derive(Template)]
#[template(path = "idp_portal.html")]
struct PortalPage {
    username: String,
    csrf: String,
    apps: Vec<PortalApp>,
}

pub(super) async fn portal(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let me = match current_user(&state, &headers).await {
        Ok(Some(me)) => me,
        Ok(None) => return to_login("/"),
        Err(e) => return error_page(e),
    };
    if me.user.status == UserStatus::Suspended {
        return suspended_page();
    }
    let apps = match state.service.saml_apps_of_user(me.user.id).await {
        Ok(a) => a,
        Err(e) => return error_page(e),
    };
    let page = PortalPage {
        username: me.user.username,
        csrf: me.session.csrf_token,
        apps: apps.into_iter().map(|(a, _)| PortalApp { id: a.id, name: a.name }).collect(),
    };
    match page.render() {
        Ok(body) => Html(body).into_response(),
        Err(e) => error_page(Error::internal(e)),
    }
}
