//! Errors of the service layer, and the one place they become HTTP responses
//! (`application/problem+json`, RFC 9457).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use directory::{FieldError, ValidationErrors};
use serde::Serialize;
use store::StoreError;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is well-formed but some fields are wrong.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    /// The body is not JSON at all.
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    /// A query parameter, header or path segment is wrong.
    #[error("{field}: {reason}")]
    BadRequest { field: String, reason: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A unique field already holds the value.
    #[error("{field} {reason}")]
    Conflict { field: String, reason: String },
    /// A field a directory source fills was to be changed here (by an admin or a SCIM client).
    #[error("{field} {}", source_owned_reason(directory_source))]
    SourceOwned { field: String, directory_source: String },
    /// `If-Match` named an older version.
    #[error("the resource has changed: current version is {current}")]
    PreconditionFailed { current: i64 },
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The request body stopped arriving, or trickled (see [`crate::listener`]).
    #[error("{0}")]
    RequestTimeout(String),
    #[error("missing or invalid API token")]
    Unauthorized,
    #[error("this method is not allowed on this resource")]
    MethodNotAllowed,
    #[error("the database is unavailable")]
    Unavailable(String),
    /// The app answered with an error; the message names the app and what to do.
    #[error("{reason}. {recommended_action}")]
    App { reason: String, recommended_action: String },
    /// The request is valid but the resource is not in a state that allows it.
    #[error("{0}")]
    InvalidState(String),
    /// A record cannot be removed while others use it: `uses` names each (as `errors`).
    #[error("{what} is in use: {}", uses.iter().map(|u| u.reason.as_str()).collect::<Vec<_>>().join("; "))]
    InUse { what: String, uses: Vec<FieldError> },
    /// Something that should not happen; details are logged, not returned.
    #[error("internal error")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a field a directory source fills cannot be changed here.
pub fn source_owned_reason(directory_source: &str) -> String {
    format!("comes from the directory source {directory_source:?} and is read-only here; change it in the directory")
}

impl Error {
    pub fn bad_request(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::BadRequest { field: field.into(), reason: reason.into() }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }

    /// What a log line says about the error: for an internal error or an unavailable database,
    /// the whole cause (down to the driver's error), which the response does not show.
    pub fn detail(&self) -> String {
        match self {
            Self::Internal(m) | Self::Unavailable(m) => m.clone(),
            other => other.to_string(),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound("resource"),
            StoreError::Duplicate { field: "email" } => Self::Conflict {
                field: "email".into(),
                reason: "is already the e-mail address of another user; each person needs their own (it is their \
                         SAML NameID)"
                    .into(),
            },
            StoreError::Duplicate { field } => {
                Self::Conflict { field: field.to_owned(), reason: "is already taken".into() }
            }
            StoreError::VersionConflict { current } => Self::PreconditionFailed { current },
            StoreError::MissingReference { field } => {
                Self::Invalid(ValidationErrors::single(field, "refers to a record that does not exist"))
            }
            StoreError::InvalidCursor => Self::bad_request("cursor", "is not a cursor this service returned"),
            StoreError::Unavailable(m) => Self::Unavailable(m),
            e @ StoreError::Unreachable(_) => Self::Unavailable(e.chain()),
            StoreError::InvalidState(m) => Self::InvalidState(m),
            StoreError::Backend(m) => Self::Internal(m),
            // The whole chain, down to the driver's error, reaches the log line.
            e @ StoreError::Database(_) => Self::Internal(e.chain()),
        }
    }
}

impl From<engine::EngineError> for Error {
    fn from(e: engine::EngineError) -> Self {
        match e {
            engine::EngineError::Store(s) => s.into(),
            engine::EngineError::NotFound(what) => Self::NotFound(what),
            engine::EngineError::App { reason, recommended_action, .. } => Self::App { reason, recommended_action },
            engine::EngineError::Credential(m) => Self::Internal(m),
            engine::EngineError::Directory(reason) => Self::App {
                reason,
                recommended_action: "Check the source's URL, bind DN and password, and that the directory is up."
                    .into(),
            },
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The fields at fault, each with the reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Error {
    fn parts(&self) -> (StatusCode, &'static str, Vec<FieldError>) {
        match self {
            Self::Invalid(v) => (StatusCode::UNPROCESSABLE_ENTITY, "validation", v.0.clone()),
            Self::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed-json", vec![]),
            Self::BadRequest { field, reason } => {
                (StatusCode::BAD_REQUEST, "bad-request", vec![FieldError::new(field, reason)])
            }
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", vec![]),
            Self::Conflict { field, reason } => {
                (StatusCode::CONFLICT, "conflict", vec![FieldError::new(field, reason)])
            }
            Self::SourceOwned { field, directory_source } => {
                (StatusCode::CONFLICT, "conflict", vec![FieldError::new(field, source_owned_reason(directory_source))])
            }
            Self::PreconditionFailed { .. } => (StatusCode::PRECONDITION_FAILED, "precondition-failed", vec![]),
            Self::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", vec![]),
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", vec![]),
            Self::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request-timeout", vec![]),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", vec![]),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", vec![]),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", vec![]),
            Self::App { .. } => (StatusCode::BAD_GATEWAY, "app-error", vec![]),
            Self::InvalidState(_) => (StatusCode::CONFLICT, "invalid-state", vec![]),
            Self::InUse { uses, .. } => (StatusCode::CONFLICT, "in-use", uses.clone()),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", vec![]),
        }
    }

    pub fn problem(&self) -> Problem {
        let (status, kind, errors) = self.parts();
        Problem {
            kind: format!("urn:provisioner:problem:{kind}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            errors,
        }
    }
}

pub const PROBLEM_JSON: &str = "application/problem+json";

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(m) => tracing::error!(error = %m, "internal error"),
            Self::Unavailable(m) => tracing::warn!(error = %m, "database unavailable"),
            _ => {}
        }
        let problem = self.problem();
        let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if matches!(self, Self::Unauthorized) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Self::PreconditionFailed { current } = self {
            if let Ok(v) = HeaderValue::from_str(&crate::extract::etag(current)) {
                resp.headers_mut().insert(header::ETAG, v);
            }
        }
        resp
    }
}
