//! An app's Parameters tab: the mapping editor (app attribute by app attribute, where each
//! value comes from), with "Preview", "Save" and "Reset to the default mapping".

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use directory::{App, FieldError, Parameter};
use uuid::Uuid;

use super::editor::{
    attribute_choices, attribute_names, changed_message, leftovers, list_op, outcome, take, tested, Command, Focus,
    Outcome, SourceForm,
};
use super::preview::{preview_view, PreviewView};
use crate::console::apps;
use crate::console::auth::Session;
use crate::console::view::{self, FormData, Layout};
use crate::console::Result;
use crate::AppState;

#[derive(Debug, Clone, Default)]
struct ParamForm {
    app_attribute: String,
    source: SourceForm,
    only_on_create: bool,
    required: bool,
    e_app_attribute: Option<String>,
    e_other: Option<String>,
    focus: Focus,
}

impl ParamForm {
    fn of(p: &Parameter) -> Self {
        Self {
            app_attribute: p.app_attribute.clone(),
            source: SourceForm::of(&p.source),
            only_on_create: p.only_on_create,
            required: p.required,
            ..Default::default()
        }
    }

    fn read(form: &FormData, i: usize) -> Self {
        let at = format!("p{i}");
        Self {
            app_attribute: form.text(&format!("{at}.app_attribute")),
            source: SourceForm::read(form, &format!("{at}.source")),
            only_on_create: form.checked(&format!("{at}.only_on_create")),
            required: form.checked(&format!("{at}.required")),
            ..Default::default()
        }
    }

    fn new_row() -> Self {
        Self { source: SourceForm { kind: "attribute".into(), ..Default::default() }, ..Default::default() }
    }
}

#[derive(Template)]
#[template(path = "app_parameters.html")]
struct ParametersPage {
    layout: Layout,
    app: App,
    tab: &'static str,
    status: apps::AppStatus,
    version: i64,
    default_in_effect: bool,
    rows: Vec<ParamForm>,
    errors: Vec<String>,
    changed: Option<String>,
    preview: Option<PreviewView>,
}

async fn parameters_page(
    state: &AppState,
    session: &Session,
    headers: &HeaderMap,
    app: App,
    version: i64,
    mut rows: Vec<ParamForm>,
) -> Result<ParametersPage> {
    let names = attribute_names(state).await?;
    for r in &mut rows {
        r.source.attributes = attribute_choices(&names, &r.source.attribute);
    }
    let layout = Layout::new(session, headers, "apps", format!("{} · Parameters", app.name));
    Ok(ParametersPage {
        layout,
        tab: "parameters",
        status: apps::app_status(state, app.id, tested(state, app.id).await?).await?,
        version,
        default_in_effect: app.parameters.is_none(),
        rows,
        errors: vec![],
        changed: None,
        preview: None,
        app,
    })
}

pub(super) async fn parameters_tab(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Response> {
    let (params, version) = state.service.parameters(id).await?;
    let app = state.service.get_app(id).await?;
    let rows = params.iter().map(ParamForm::of).collect();
    view::page(&parameters_page(&state, &session, &headers, app, version, rows).await?, StatusCode::OK)
}

fn to_parameters(rows: &[ParamForm], errors: &mut Vec<FieldError>) -> Vec<Parameter> {
    rows.iter()
        .enumerate()
        .map(|(i, r)| Parameter {
            app_attribute: r.app_attribute.clone(),
            source: r.source.to_source(&format!("parameters[{i}].source"), errors),
            only_on_create: r.only_on_create,
            required: r.required,
        })
        .collect()
}

pub(super) async fn post_parameters(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Response> {
    let form = FormData::parse(&body);
    let app = state.service.get_app(id).await?;
    let version = form.get("version").and_then(|v| v.parse::<i64>().ok()).unwrap_or(app.version);
    let mut rows: Vec<ParamForm> = (0..500)
        .take_while(|i| form.get(&format!("p{i}.app_attribute")).is_some())
        .map(|i| ParamForm::read(&form, i))
        .collect();
    let cmd = Command::parse(form.get("op").unwrap_or("preview"));
    if cmd.what == "param" {
        if let Some((i, focus)) = list_op(&mut rows, &cmd.verb, cmd.i, ParamForm::new_row) {
            rows[i].focus = focus;
        }
        let page = parameters_page(&state, &session, &headers, app, version, rows).await?;
        return view::page(&page, StatusCode::OK);
    }
    if cmd.what == "reset" {
        return match state.service.reset_parameters(&session.actor(), id, Some(version)).await {
            Ok(_) => Ok(view::see_other_with(
                &format!("/console/apps/{id}/parameters"),
                "ok",
                "The default mapping applies again. Every user the app concerns is re-evaluated.",
            )),
            Err(e) => match outcome(e)? {
                Outcome::Changed(current) => {
                    let mut page = parameters_page(&state, &session, &headers, app, version, rows).await?;
                    page.changed = Some(changed_message(current, "Parameters"));
                    view::page(&page, StatusCode::PRECONDITION_FAILED)
                }
                Outcome::Errors(e) => {
                    let mut page = parameters_page(&state, &session, &headers, app, version, rows).await?;
                    page.errors = leftovers(e);
                    view::page(&page, StatusCode::UNPROCESSABLE_ENTITY)
                }
            },
        };
    }
    let mut local = Vec::new();
    let params = to_parameters(&rows, &mut local);
    let saving = cmd.what == "save";
    let result = if !local.is_empty() {
        Err(Outcome::Errors(local))
    } else if saving {
        match state.service.put_mapping(&session.actor(), id, Some(params.clone()), None, Some(version)).await {
            Ok(_) => {
                return Ok(view::see_other_with(
                    &format!("/console/apps/{id}/parameters"),
                    "ok",
                    "Parameters saved. Every user the app concerns is re-evaluated; only real differences are sent to the app.",
                ))
            }
            Err(e) => Err(outcome(e)?),
        }
    } else {
        match state.service.plan_preview(id, Some(params), None, None).await {
            Ok(p) => Ok(preview_view(p)),
            Err(e) => Err(outcome(e)?),
        }
    };
    let mut status = StatusCode::OK;
    let (mut preview, mut errors, mut changed) = (None, vec![], None);
    match result {
        Ok(p) => preview = Some(p),
        Err(Outcome::Errors(e)) => {
            status = StatusCode::UNPROCESSABLE_ENTITY;
            errors = e;
        }
        Err(Outcome::Changed(current)) => {
            status = StatusCode::PRECONDITION_FAILED;
            changed = Some(changed_message(current, "Parameters"));
        }
    }
    for (i, r) in rows.iter_mut().enumerate() {
        let at = format!("parameters[{i}]");
        r.e_app_attribute = take(&mut errors, &format!("{at}.app_attribute"), true, "App attribute");
        r.source.take_errors(&mut errors, &format!("{at}.source"));
        r.e_other = take(&mut errors, &at, true, "Parameter");
    }
    let mut page = parameters_page(&state, &session, &headers, app, version, rows).await?;
    page.errors = leftovers(errors);
    page.changed = changed;
    page.preview = preview;
    view::page(&page, status)
}

view::pages!(ParametersPage);
