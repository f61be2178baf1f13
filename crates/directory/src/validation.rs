use serde::Serialize;
use utoipa::ToSchema;

/// A problem with one field of a request, named by its JSON path (e.g. `attributes.cost_center`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// All the problems found while validating one input.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("invalid input: {}", summary(.0))]
pub struct ValidationErrors(pub Vec<FieldError>);

fn summary(errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("{}: {}", e.field, e.reason)).collect::<Vec<_>>().join("; ")
}

impl ValidationErrors {
    pub fn single(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self(vec![FieldError::new(field, reason)])
    }

    pub fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError::new(field, reason));
    }

    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

/// Checks a required, single-line text value: trimmed, non-empty, bounded, no control characters.
pub(crate) fn check_text(errors: &mut ValidationErrors, field: &str, value: &str, max: usize) {
    if value.is_empty() {
        errors.push(field, "must not be empty");
    } else if value.chars().count() > max {
        errors.push(field, format!("must be at most {max} characters"));
    } else if value.chars().any(char::is_control) {
        errors.push(field, "must not contain control characters");
    }
}

pub(crate) fn check_opt_text(errors: &mut ValidationErrors, field: &str, value: &Option<String>, max: usize) {
    if let Some(v) = value {
        check_text(errors, field, v, max);
    }
}

/// Characters that change how text is displayed without being seen: bidirectional controls
/// (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C) and zero-width characters
/// (U+200B-U+200D, U+2060, U+FEFF). Refused in usernames and e-mail addresses, where they
/// would let two different values look the same.
pub fn is_invisible(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
        || matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}')
}

/// The first invisible character of `s` (see [`is_invisible`]), as `U+XXXX`.
pub fn first_invisible(s: &str) -> Option<String> {
    s.chars().find(|c| is_invisible(*c)).map(|c| format!("U+{:04X}", c as u32))
}

/// Unicode NFKC normalisation: compatibility forms (full-width letters, ligatures, ...) become
/// their plain equivalents.
pub fn nfkc(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    s.nfkc().collect()
}

/// Where a URL sends what goes to it: its scheme, host and port (the scheme's default port
/// when none is written). `None` when the value is not a URL with a host.
pub fn url_target(value: &str) -> Option<(String, String, u16)> {
    let u = url::Url::parse(value.trim()).ok()?;
    let host = match u.host()? {
        url::Host::Domain(d) => d.to_ascii_lowercase(),
        url::Host::Ipv4(a) => a.to_string(),
        url::Host::Ipv6(a) => a.to_string(),
    };
    if host.is_empty() {
        return None;
    }
    let port = u.port_or_known_default().or(match u.scheme() {
        "ldap" => Some(389),
        "ldaps" => Some(636),
        _ => None,
    })?;
    Some((u.scheme().to_owned(), host, port))
}

/// Whether two URLs reach the same scheme, host and port, so that a secret kept for one may
/// be sent to the other. Values that are not URLs with a host are never the same target.
pub fn same_target(a: &str, b: &str) -> bool {
    match (url_target(a), url_target(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Checks the host part of a URL as written, before any parser repairs it: URL parsers read
/// `http:///etc/passwd` as `http://etc/passwd` and `http:\\host` as `http://host`.
/// Returns whether the value passed.
pub(crate) fn check_written_host(errors: &mut ValidationErrors, field: &str, value: &str) -> bool {
    if value.contains('\\') {
        errors.push(field, "must not contain backslashes");
        return false;
    }
    let authority = value.split_once(':').and_then(|(_, rest)| rest.strip_prefix("//"));
    match authority {
        Some(a) if !a.is_empty() && !a.starts_with(['/', '?', '#', '@', ':']) => true,
        _ => {
            errors.push(field, "must name a host: scheme://host[:port]/path");
            false
        }
    }
}

/// A deliberately simple e-mail check: one `@`, a non-empty local part, a dotted domain, no spaces.
pub fn is_valid_email(email: &str) -> bool {
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control() || is_invisible(c)) {
        return false;
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !local.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_targets_are_scheme_host_and_port() {
        assert!(same_target("https://a.example.com/scim/v2", "https://A.example.com:443/other"));
        assert!(same_target("ldap://dc1.example.com", "ldap://dc1.example.com:389/dc=x"));
        assert!(same_target("http://2852039166/", "http://169.254.169.254:80/"));
        assert!(!same_target("https://a.example.com", "http://a.example.com"), "scheme");
        assert!(!same_target("https://a.example.com", "https://b.example.com"), "host");
        assert!(!same_target("https://a.example.com", "https://a.example.com:8443"), "port");
        assert!(!same_target("ldap://dc1", "ldaps://dc1"), "scheme (and port)");
        assert!(!same_target("not a url", "not a url"));
        assert_eq!(url_target("ldaps://[::1]"), Some(("ldaps".into(), "::1".into(), 636)));
    }

    #[test]
    fn a_written_url_must_name_a_host() {
        for ok in ["http://h", "https://h.example.com:8443/x", "ldap://[::1]:389", "http://user@h"] {
            let mut e = ValidationErrors::default();
            assert!(check_written_host(&mut e, "url", ok), "{ok}");
        }
        for bad in [
            "http:///etc/passwd",
            "http:/h",
            "http:h",
            "http://",
            "http://?x",
            "http:\\\\h",
            "http://h\\@g",
            "file:///etc/passwd",
            "x",
        ] {
            let mut e = ValidationErrors::default();
            assert!(!check_written_host(&mut e, "url", bad), "{bad}");
            assert_eq!(e.0[0].field, "url");
        }
    }

    #[test]
    fn emails() {
        assert!(is_valid_email("ada@example.com"));
        assert!(is_valid_email("a.b+c@sub.example.co.uk"));
        assert!(!is_valid_email("ada\u{200B}@example.com"), "zero-width");
        assert!(!is_valid_email("ada\u{202E}@example.com"), "bidi");
        for bad in
            ["", "ada", "ada@", "@example.com", "ada@example", "a da@example.com", "a@b@c.com", "a@.com", "a@b..com"]
        {
            assert!(!is_valid_email(bad), "{bad} accepted");
        }
    }
}
