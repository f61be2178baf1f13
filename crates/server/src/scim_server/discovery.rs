//! `/ServiceProviderConfig`, `/ResourceTypes` and `/Schemas` (RFC 7644 section 4).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use scim::server::schema::{all_schemas, service_provider_config as spc_document};
use scim::server::ScimError;

use super::{
    base_url, custom_schema, group_resource_schema, list_response, scim_json, user_resource_schema, ScimResult,
    ScimState, MAX_RESULTS,
};

pub(crate) async fn service_provider_config(headers: HeaderMap) -> ScimResult {
    Ok(scim_json(
        StatusCode::OK,
        &spc_document(&base_url(&headers), MAX_RESULTS, super::bulk::MAX_OPERATIONS as u32, super::bulk::MAX_PAYLOAD),
    ))
}

async fn resource_type_docs(state: &ScimState, headers: &HeaderMap) -> ScimResult<Vec<serde_json::Value>> {
    let defs = state.store().list_attribute_defs().await?;
    let base = base_url(headers);
    Ok(vec![user_resource_schema(&defs).resource_type_json(&base), group_resource_schema().resource_type_json(&base)])
}

pub(crate) async fn resource_types(State(state): State<ScimState>, headers: HeaderMap) -> ScimResult {
    let docs = resource_type_docs(&state, &headers).await?;
    Ok(scim_json(StatusCode::OK, &list_response(docs.len() as u64, 1, docs)))
}

pub(crate) async fn resource_type(
    State(state): State<ScimState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ScimResult {
    let docs = resource_type_docs(&state, &headers).await?;
    let doc = docs
        .into_iter()
        .find(|d| d["id"].as_str().is_some_and(|id| id == name))
        .ok_or_else(|| ScimError::not_found(format!("no resource type {name}")))?;
    Ok(scim_json(StatusCode::OK, &doc))
}

async fn schema_docs(state: &ScimState, headers: &HeaderMap) -> ScimResult<Vec<serde_json::Value>> {
    let defs = state.store().list_attribute_defs().await?;
    let base = base_url(headers);
    let mut schemas = all_schemas(&custom_schema(&defs));
    if defs.is_empty() {
        schemas.retain(|s| s.id != super::CUSTOM_SCHEMA);
    }
    Ok(schemas.iter().map(|s| s.to_json(&base)).collect())
}

pub(crate) async fn schemas(State(state): State<ScimState>, headers: HeaderMap) -> ScimResult {
    let docs = schema_docs(&state, &headers).await?;
    Ok(scim_json(StatusCode::OK, &list_response(docs.len() as u64, 1, docs)))
}

pub(crate) async fn schema(State(state): State<ScimState>, headers: HeaderMap, Path(id): Path<String>) -> ScimResult {
    let doc = schema_docs(&state, &headers)
        .await?
        .into_iter()
        .find(|d| d["id"].as_str().is_some_and(|s| s == id))
        .ok_or_else(|| ScimError::not_found(format!("no schema {id}")))?;
    Ok(scim_json(StatusCode::OK, &doc))
}
