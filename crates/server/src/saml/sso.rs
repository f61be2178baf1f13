//! Sign-in to an app: SP-initiated (an HTTP-Redirect AuthnRequest, its signature, freshness
//! and replay checked) and IdP-initiated (from the portal), both answered by the signed
//! Response posted to the app's ACS URL.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use directory::{App, User, UserStatus};
use store::SamlSettingsRecord;

use super::assertion;
use super::metadata::{app_and_settings, base_url, entity_id};
use super::pages::{error_page, message, suspended_page};
use super::session::{current_user, field, form, to_login};
use crate::{AppState, Error};

fn bad_request(text: &str) -> Response {
    message(StatusCode::BAD_REQUEST, "The sign-in request is invalid", text)
}

pub(super) async fn sso(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(app_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let (app, settings) = match app_and_settings(&state, &app_id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let s = &settings.settings;
    let raw = raw.unwrap_or_default();
    if raw.len() > saml::request::MAX_PARAM + 8 * 1024 {
        return bad_request(&saml::RequestError::TooLarge.to_string());
    }
    // The values used are taken from the same raw parameters the signature is checked over.
    let query = match saml::request::parse_redirect_query(&raw) {
        Ok(q) => q,
        Err(e) => return bad_request(&e.to_string()),
    };
    let relay_state = query.relay_state.clone();
    if relay_state.as_ref().is_some_and(|r| r.len() > 1024) {
        return bad_request("The RelayState is longer than 1024 bytes.");
    }
    if let Some(cert) = &s.sp_certificate {
        let (Some(sig_alg), Some(sig), Some(signed)) = (&query.sig_alg, &query.signature, &query.signed_part) else {
            return bad_request(&format!(
                "{} requires signed requests, and this one is not signed (no SigAlg and Signature).",
                app.name
            ));
        };
        use base64::Engine;
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig.trim()) else {
            return bad_request("The request's Signature is not valid base64.");
        };
        let checked = saml::keys::public_key_of_cert(cert)
            .map_err(|e| e.to_string())
            .and_then(|key| saml::sign::verify_redirect(signed, sig_alg, &sig, &key));
        if let Err(why) = checked {
            return bad_request(&format!("The request's signature was refused: {why}."));
        }
    }
    let xml = match saml::request::decode_redirect(&query.saml_request) {
        Ok(x) => x,
        Err(e) => return bad_request(&e.to_string()),
    };
    let req = match saml::request::parse(&xml) {
        Ok(r) => r,
        Err(e) => return bad_request(&e.to_string()),
    };
    if let Err(e) = saml::request::check_fresh(&req, directory::now()) {
        return bad_request(&e.to_string());
    }
    if req.issuer != s.sp_entity_id {
        return bad_request(&format!(
            "The request comes from {}, which is not {}'s service provider entity ID.",
            req.issuer, app.name
        ));
    }
    if let Some(binding) = &req.protocol_binding {
        if binding != saml::ns::BINDING_POST {
            return bad_request(&format!("Only the HTTP-POST binding is supported for the response, not {binding}."));
        }
    }
    let acs = match (&req.acs_url, req.acs_index) {
        (Some(url), _) => match s.acs_urls.iter().find(|u| *u == url) {
            Some(u) => u.clone(),
            None => {
                return bad_request(&format!(
                    "The AssertionConsumerServiceURL {url} is not one of {}'s ACS URLs; the response is not sent.",
                    app.name
                ))
            }
        },
        (None, Some(i)) => match s.acs_urls.get(i as usize) {
            Some(u) => u.clone(),
            None => return bad_request(&format!("{} has no ACS URL with index {i}.", app.name)),
        },
        (None, None) => s.acs_urls.first().cloned().unwrap_or_default(),
    };
    let me = match current_user(&state, &headers).await {
        Ok(Some(me)) => me,
        Ok(None) if req.is_passive => {
            return message(
                StatusCode::FORBIDDEN,
                "Sign-in needed",
                "You are not signed in, and the app asked not to be asked to.",
            )
        }
        Ok(None) => return to_login(&format!("/saml/{}/sso?{raw}", app.id)),
        Err(e) => return error_page(e),
    };
    // Each request is answered once: a replayed one (same ID, within its freshness window) is refused.
    let expires =
        req.issue_instant + chrono::Duration::seconds(saml::request::MAX_AGE_SECONDS + saml::request::MAX_SKEW_SECONDS);
    match state.service.store().remember_saml_request(app.id, &req.id, expires, directory::now()).await {
        Ok(true) => {}
        Ok(false) => {
            return bad_request(&format!(
                "This sign-in request ({}) was already answered; go back to {} and sign in again.",
                req.id, app.name
            ))
        }
        Err(e) => return error_page(e.into()),
    }
    respond(&state, &app, &settings, me.user, acs, Some(req.id), relay_state).await
}

pub(super) async fn idp_initiated(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(app_id): Path<String>,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let me = match current_user(&state, &headers).await {
        Ok(Some(me)) => me,
        Ok(None) => return to_login("/"),
        Err(e) => return error_page(e),
    };
    if !field(&f, "csrf").is_some_and(|t| crate::console::same(t, &me.session.csrf_token)) {
        return message(StatusCode::FORBIDDEN, "Forbidden", "This form has expired. Reload the page and try again.");
    }
    let (app, settings) = match app_and_settings(&state, &app_id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let relay = field(&f, "relay_state").map(str::to_owned).filter(|r| !r.is_empty() && r.len() <= 1024);
    let acs = settings.settings.acs_urls.first().cloned().unwrap_or_default();
    respond(&state, &app, &settings, me.user, acs, None, relay).await
}

/// Checks that `user` may sign in to `app` and answers with the auto-submitting form that
/// posts the signed Response to `acs`.
#[allow(clippy::too_many_arguments)]
async fn respond(
    state: &AppState,
    app: &App,
    settings: &SamlSettingsRecord,
    user: User,
    acs: String,
    in_response_to: Option<String>,
    relay_state: Option<String>,
) -> Response {
    let s = &settings.settings;
    if user.status == UserStatus::Suspended {
        return suspended_page();
    }
    let (granted, roles) = match state.service.grant_of(user.id, app.id).await {
        Ok(g) => g,
        Err(e) => return error_page(e),
    };
    let no_access = |why: &str| message(StatusCode::FORBIDDEN, "No access to this app", why);
    if !granted {
        return no_access(&format!(
            "You ({}) have no role that grants {}. Ask your administrator for access.",
            user.username, app.name
        ));
    }
    let (name_id, attributes, doc) = match assertion::for_user(&user, &roles, app, s) {
        Ok(x) => x,
        Err(assertion::Refusal::OutOfScope) => {
            return no_access(&format!("{}'s rules exclude your account, so you cannot sign in to it.", app.name))
        }
        Err(assertion::Refusal::NoNameId(attr)) => {
            return no_access(&format!(
                "Your account has no {attr}, which {} uses to identify you. Ask your administrator to fill it in.",
                app.name
            ))
        }
    };
    // One person, one NameID: an address another person has too would sign one into the
    // other's account at an app keyed on the NameID.
    if s.name_id_attribute == "email" {
        match state.service.nameid_shared(app, &user, &name_id).await {
            Ok(None) => {}
            Ok(Some(others)) => {
                return message(
                    StatusCode::CONFLICT,
                    "Sign-in refused: your e-mail address is not yours alone",
                    &format!(
                        "{} identifies people by their e-mail address ({name_id}), and {others} other account(s) in \
                         the directory have the same address, so {} could not tell you apart. No sign-in was sent. \
                         Ask your administrator to give each person their own address.",
                        app.name, app.name
                    ),
                )
            }
            Err(e) => return error_page(e),
        }
    }
    let keys = match state.service.idp_keys().await {
        Ok(k) => k,
        Err(e) => return error_page(e),
    };
    let Some(active) = keys.iter().find(|k| k.state == store::KeyState::Active) else {
        return error_page(Error::Internal("no active SAML key".into()));
    };
    let now = directory::now();
    let input = saml::ResponseInput {
        issuer: entity_id(&base_url(state), app.id),
        destination: acs.clone(),
        in_response_to,
        audience: s.sp_entity_id.clone(),
        name_id,
        name_id_format: s.name_id_format.clone(),
        attributes,
        now,
        lifetime: chrono::Duration::seconds(i64::from(s.assertion_lifetime_seconds)),
        authn_instant: now,
        session_index: saml::new_id(),
        sign_response: s.sign_response,
        sign_assertion: s.sign_assertion,
    };
    let xml = match saml::response::build(&input, &active.key) {
        Ok(x) => x,
        Err(e) => return error_page(Error::internal(e)),
    };
    if let Err(e) = state.service.record_sign_in(app.id, &user, s.jit_only, &doc).await {
        return error_page(e);
    }
    let nonce = crate::console::random_token();
    let page = saml::response::post_form(&acs, &xml, relay_state.as_deref(), &nonce);
    let origin = url::Url::parse(&acs).map(|u| u.origin().ascii_serialization()).unwrap_or_else(|_| "'none'".into());
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; form-action {origin}; frame-ancestors 'none'; base-uri 'none'"
    );
    let mut resp = Html(page).into_response();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp
}
