//! The connector error: what went wrong, whether to retry, what to tell the admin.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Coarse classification of a connector failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Credentials refused (401/403, token endpoint refusal).
    Authentication,
    /// A unique value is already taken (409).
    Conflict,
    /// The resource does not exist (404 where it was expected).
    NotFound,
    /// The target rejected the data (400) or the caller passed bad input.
    InvalidRequest,
    /// Concurrent modification (412).
    PreconditionFailed,
    /// Too many requests (429).
    RateLimited,
    /// 5xx, network failure, timeout: the target is (temporarily) unavailable.
    Unavailable,
    /// The target does not support the operation (e.g. 501).
    Unsupported,
    /// The target answered with something unusable.
    InvalidResponse,
    /// The connector's settings are unusable.
    Configuration,
}

/// An error of a [`crate::Connector`] call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ConnectorError {
    pub kind: ErrorKind,
    /// Whether retrying later may succeed.
    pub retryable: bool,
    /// What happened (no secrets).
    pub reason: String,
    /// A short admin-facing sentence saying what to do.
    pub recommended_action: String,
    /// HTTP status behind the error, when there is one.
    pub status: Option<u16>,
    /// How long the target asked us to wait, when it said.
    pub retry_after: Option<Duration>,
}

impl ConnectorError {
    pub fn new(
        kind: ErrorKind,
        retryable: bool,
        reason: impl Into<String>,
        recommended_action: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            retryable,
            reason: reason.into(),
            recommended_action: recommended_action.into(),
            status: None,
            retry_after: None,
        }
    }

    pub fn invalid_response(reason: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::InvalidResponse,
            false,
            reason,
            "The app's answer is not valid SCIM: check that the base URL points at its SCIM endpoint.",
        )
    }

    pub fn not_found(reason: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::NotFound,
            false,
            reason,
            "The account no longer exists in the app: unlink it or let provisioning recreate it.",
        )
    }

    pub fn invalid_request(reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, false, reason, "Check the attribute mappings for this app.")
    }
}

impl From<scim::ScimError> for ConnectorError {
    fn from(e: scim::ScimError) -> Self {
        use scim::ScimError as S;
        let kind = match &e {
            S::InvalidAuthentication { .. } => ErrorKind::Authentication,
            S::Conflict { .. } => ErrorKind::Conflict,
            S::NotFound { .. } => ErrorKind::NotFound,
            S::BadRequest { .. } | S::InvalidInput(_) => ErrorKind::InvalidRequest,
            S::PreconditionFailed { .. } => ErrorKind::PreconditionFailed,
            S::RateLimited { .. } | S::Held { .. } => ErrorKind::RateLimited,
            S::Server { status: 501, .. } => ErrorKind::Unsupported,
            S::Server { .. } | S::Network(_) | S::Timeout => ErrorKind::Unavailable,
            S::UnexpectedStatus { .. } | S::InvalidResponse(_) => ErrorKind::InvalidResponse,
            S::Config(_) | S::Redirected { .. } | S::TargetRefused(_) => ErrorKind::Configuration,
        };
        let retry_after = match &e {
            S::RateLimited { retry_after } => *retry_after,
            S::Held { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        Self {
            kind,
            // A 412 means "re-read and try again": the engine retries with fresh data.
            retryable: e.is_retryable() || kind == ErrorKind::PreconditionFailed,
            reason: e.to_string(),
            recommended_action: e.recommended_action().to_string(),
            status: e.status(),
            retry_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_scim_error() {
        let e: ConnectorError = scim::ScimError::InvalidAuthentication { status: 401, detail: None }.into();
        assert_eq!(e.kind, ErrorKind::Authentication);
        assert!(!e.retryable);
        assert!(e.reason.contains("Invalid authentication"));
        assert_eq!(e.recommended_action, "Re-enter the app's credentials and test the connection.");
        assert_eq!(e.status, Some(401));

        let e: ConnectorError = scim::ScimError::RateLimited { retry_after: Some(Duration::from_secs(3)) }.into();
        assert!(e.retryable);
        assert_eq!(e.kind, ErrorKind::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));

        let e: ConnectorError =
            scim::ScimError::Held { reason: "the rate budget".into(), retry_after: Duration::from_secs(4) }.into();
        assert_eq!((e.kind, e.retryable, e.retry_after), (ErrorKind::RateLimited, true, Some(Duration::from_secs(4))));

        let e: ConnectorError = scim::ScimError::Timeout.into();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.retryable);

        let e: ConnectorError = scim::ScimError::Conflict { scim_type: Some("uniqueness".into()), detail: None }.into();
        assert_eq!((e.kind, e.retryable), (ErrorKind::Conflict, false));
        assert_eq!(e.to_string(), "Conflict (uniqueness)");
    }
}
