//! Errors of the SCIM client, classified for the provisioning engine.

use std::time::Duration;

/// An error of a SCIM call. Variants are classified so the engine can decide
/// whether to retry ([`ScimError::is_retryable`]) and what to tell the admin
/// ([`ScimError::recommended_action`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScimError {
    /// 401 or 403 from the target (or from the OAuth2 token endpoint).
    #[error("Invalid authentication (HTTP {status}){}", fmt_detail(.detail))]
    InvalidAuthentication { status: u16, detail: Option<String> },
    /// 409: typically `scimType` = `uniqueness`.
    #[error("Conflict{}{}", fmt_scim_type(.scim_type), fmt_detail(.detail))]
    Conflict { scim_type: Option<String>, detail: Option<String> },
    /// 404 where the resource was expected to exist.
    #[error("Not found{}", fmt_detail(.detail))]
    NotFound { detail: Option<String> },
    /// 400: the target rejected the request.
    #[error("Bad request{}{}", fmt_scim_type(.scim_type), fmt_detail(.detail))]
    BadRequest { scim_type: Option<String>, detail: Option<String> },
    /// 412: an `If-Match` precondition failed.
    #[error("Precondition failed{}", fmt_detail(.detail))]
    PreconditionFailed { detail: Option<String> },
    /// 429 after the retries were exhausted.
    #[error("Rate limited by the target{}", match .retry_after { Some(d) => format!(" (retry after {}s)", d.as_secs()), None => String::new() })]
    RateLimited { retry_after: Option<Duration> },
    /// The request was not sent: the app's rate budget or a pause it asked for holds it back
    /// longer than a request waits (see [`crate::Pacer`]); try again after `retry_after`.
    #[error("Held back: {reason} (retry after {}s)", .retry_after.as_secs())]
    Held { reason: String, retry_after: Duration },
    /// 5xx (after the retries were exhausted, for the retryable ones).
    #[error("Server error (HTTP {status}){}", fmt_detail(.detail))]
    Server { status: u16, detail: Option<String> },
    /// Any other unexpected HTTP status (e.g. 405, 413, 415).
    #[error("Unexpected HTTP status {status}{}", fmt_detail(.detail))]
    UnexpectedStatus { status: u16, detail: Option<String> },
    /// The app (or its token endpoint) answered with a redirect. Redirects are never
    /// followed: the credential is sent only to the configured URL.
    #[error("The {who} redirected (HTTP {status}{}): redirects are not followed, and the credential was not sent there", match .location { Some(l) => format!(" to {l}"), None => String::new() })]
    Redirected { status: u16, location: Option<String>, who: String },
    /// The outbound target policy refuses the address (link-local, multicast...).
    #[error("{0}")]
    TargetRefused(String),
    /// Connection refused/reset, DNS, TLS...
    #[error("Network error: {0}")]
    Network(String),
    /// The request did not complete within the configured timeout.
    #[error("Timed out waiting for the target")]
    Timeout,
    /// The target answered with something that is not valid SCIM.
    #[error("Invalid response from the target: {0}")]
    InvalidResponse(String),
    /// The caller passed something unusable (e.g. a malformed attribute path).
    #[error("Invalid input: {0}")]
    InvalidInput(String),
    /// The client configuration is unusable (e.g. malformed base URL).
    #[error("Invalid configuration: {0}")]
    Config(String),
}

fn fmt_detail(d: &Option<String>) -> String {
    match d {
        Some(d) if !d.is_empty() => format!(": {d}"),
        _ => String::new(),
    }
}

fn fmt_scim_type(t: &Option<String>) -> String {
    match t {
        Some(t) if !t.is_empty() => format!(" ({t})"),
        _ => String::new(),
    }
}

impl ScimError {
    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ScimError::RateLimited { .. } | ScimError::Held { .. } | ScimError::Network(_) | ScimError::Timeout => true,
            ScimError::Server { status, .. } => is_retryable_status(*status),
            ScimError::InvalidAuthentication { .. }
            | ScimError::Conflict { .. }
            | ScimError::NotFound { .. }
            | ScimError::BadRequest { .. }
            | ScimError::PreconditionFailed { .. }
            | ScimError::UnexpectedStatus { .. }
            | ScimError::InvalidResponse(_)
            | ScimError::InvalidInput(_)
            | ScimError::Redirected { .. }
            | ScimError::TargetRefused(_)
            | ScimError::Config(_) => false,
        }
    }

    /// The HTTP status behind this error, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            ScimError::InvalidAuthentication { status, .. }
            | ScimError::Redirected { status, .. }
            | ScimError::Server { status, .. }
            | ScimError::UnexpectedStatus { status, .. } => Some(*status),
            ScimError::Conflict { .. } => Some(409),
            ScimError::NotFound { .. } => Some(404),
            ScimError::BadRequest { .. } => Some(400),
            ScimError::PreconditionFailed { .. } => Some(412),
            ScimError::RateLimited { .. } => Some(429),
            _ => None,
        }
    }

    /// A short admin-facing sentence saying what to do about this error.
    pub fn recommended_action(&self) -> &'static str {
        match self {
            ScimError::InvalidAuthentication { .. } => {
                "Re-enter the app's credentials and test the connection."
            }
            ScimError::Conflict { .. } => {
                "An account with the same unique value already exists in the app: link the existing account or change the attribute mapping."
            }
            ScimError::NotFound { .. } => {
                "The account no longer exists in the app: unlink it or let provisioning recreate it."
            }
            ScimError::BadRequest { .. } => {
                "The app rejected the data: check the attribute mappings and required attributes for this app."
            }
            ScimError::PreconditionFailed { .. } => {
                "The account changed in the app meanwhile: the update will be retried with fresh data."
            }
            ScimError::RateLimited { .. } => {
                "The app is rate limiting requests: lower the app's concurrency or wait; provisioning will retry."
            }
            ScimError::Held { .. } => {
                "Nothing to do: the request waits for the app's rate budget or the pause the app asked for; provisioning will retry."
            }
            ScimError::Server { status: 501, .. } => {
                "The app does not implement this SCIM operation: adjust the app's settings or contact its vendor."
            }
            ScimError::Server { .. } => {
                "The app reported an internal error: provisioning will retry; contact the app's vendor if it persists."
            }
            ScimError::UnexpectedStatus { .. } => {
                "The app gave an unexpected answer: check that the base URL points at its SCIM endpoint."
            }
            ScimError::Network(_) => {
                "Check the app's base URL and that the app is reachable from the provisioning server."
            }
            ScimError::Timeout => {
                "The app did not answer in time: provisioning will retry; raise the timeout if it persists."
            }
            ScimError::InvalidResponse(_) => {
                "The app's answer is not valid SCIM: check that the base URL points at its SCIM endpoint (often ending in /scim/v2)."
            }
            ScimError::InvalidInput(_) => {
                "Check the app's matching attribute and mappings."
            }
            ScimError::Config(_) => "Fix the app's connection settings (base URL, token URL).",
            ScimError::Redirected { .. } => {
                "Set the URL the app redirects to as its URL (often https:// instead of http://, or a trailing path), re-entering the credential."
            }
            ScimError::TargetRefused(_) => {
                "Correct the app's URL; if the address is really meant, allow its range with --allow-target."
            }
        }
    }
}

/// Statuses worth retrying: 408, 429 and every 5xx except 501 and 505.
pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429) || (500..600).contains(&status) && !matches!(status, 501 | 505)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_classification() {
        let e = ScimError::InvalidAuthentication { status: 401, detail: Some("bad token".into()) };
        assert!(e.to_string().contains("Invalid authentication"));
        assert!(!e.is_retryable());
        assert_eq!(e.recommended_action(), "Re-enter the app's credentials and test the connection.");
        let e = ScimError::Conflict { scim_type: Some("uniqueness".into()), detail: None };
        assert_eq!(e.to_string(), "Conflict (uniqueness)");
        assert!(!e.is_retryable());
        assert!(ScimError::Timeout.is_retryable());
        assert!(ScimError::Network("reset".into()).is_retryable());
        assert!(ScimError::RateLimited { retry_after: None }.is_retryable());
        let held = ScimError::Held { reason: "the rate budget".into(), retry_after: Duration::from_secs(3) };
        assert!(held.is_retryable() && held.status().is_none());
        assert_eq!(held.to_string(), "Held back: the rate budget (retry after 3s)");
        assert!(ScimError::Server { status: 503, detail: None }.is_retryable());
        assert!(!ScimError::Server { status: 501, detail: None }.is_retryable());
        assert!(!ScimError::BadRequest { scim_type: None, detail: None }.is_retryable());
        for s in [400, 401, 403, 404, 409, 412, 501] {
            assert!(!is_retryable_status(s), "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable_status(s), "{s}");
        }
    }
}
