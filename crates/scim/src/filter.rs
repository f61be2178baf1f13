//! SCIM filter building (RFC 7644 section 3.4.2.2).
//!
//! Only the pieces the provisioning engine needs are provided: equality filters
//! (one, or several joined by `or`) with correctly quoted string literals, and a validity check for
//! attribute paths. String literals in SCIM filters follow the JSON string
//! grammar (RFC 7159), so `"` and `\` are escaped with a backslash and control
//! characters use `\n`, `\t`, `\uXXXX` and friends.

/// Quote `value` as a SCIM filter string literal (a JSON string).
///
/// ```
/// assert_eq!(scim::filter::quote(r#"a"b\c"#), r#""a\"b\\c""#);
/// ```
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Build an equality filter `attr eq "value"`.
///
/// `attr` is used verbatim; check it with [`is_valid_attr_path`] first when it
/// does not come from trusted configuration.
///
/// ```
/// assert_eq!(scim::filter::eq("userName", r#"a"b\c"#), r#"userName eq "a\"b\\c""#);
/// ```
pub fn eq(attr: &str, value: &str) -> String {
    format!("{attr} eq {}", quote(value))
}

/// A filter matching any of the `(attribute, value)` pairs:
/// `externalId eq "1" or userName eq "ada"`.
pub fn any_eq(matches: &[(&str, &str)]) -> String {
    matches.iter().map(|(attr, value)| eq(attr, value)).collect::<Vec<_>>().join(" or ")
}

/// Whether `attr` is a syntactically valid SCIM attribute path
/// (`[URI ":"]ATTRNAME *1subAttr`, RFC 7644 figure 1), e.g. `userName`,
/// `name.givenName`, `emails.value` or
/// `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber`.
pub fn is_valid_attr_path(attr: &str) -> bool {
    if attr.is_empty() || attr.len() > 512 {
        return false;
    }
    // The attribute part is whatever follows the last ':' (URN prefix allowed).
    let (urn, rest) = match attr.rfind(':') {
        Some(i) => (Some(&attr[..i]), &attr[i + 1..]),
        None => (None, attr),
    };
    if let Some(urn) = urn {
        if !urn.starts_with("urn:")
            || !urn.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '-' | '_'))
        {
            return false;
        }
    }
    let mut parts = rest.split('.');
    let first_ok = parts.next().is_some_and(is_attr_name);
    let sub: Vec<&str> = parts.collect();
    first_ok && sub.len() <= 1 && sub.iter().all(|s| is_attr_name(s))
}

fn is_attr_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '$' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_eq_joins_with_or() {
        assert_eq!(any_eq(&[("externalId", "1"), ("userName", "a\"b")]), r#"externalId eq "1" or userName eq "a\"b""#);
        assert_eq!(any_eq(&[("userName", "x")]), r#"userName eq "x""#);
    }

    /// Parse `attr eq "literal"` back; the literal must be a JSON string.
    fn parse_eq(filter: &str) -> (String, String) {
        let (attr, lit) = filter.split_once(" eq ").expect("has eq");
        let value: String = serde_json::from_str(lit).expect("literal is a JSON string");
        (attr.to_string(), value)
    }

    #[test]
    fn plain_value() {
        assert_eq!(eq("userName", "bjensen"), r#"userName eq "bjensen""#);
    }

    #[test]
    fn quote_and_backslash() {
        assert_eq!(eq("userName", r#"a"b\c"#), r#"userName eq "a\"b\\c""#);
        assert_eq!(quote(r#"\"#), r#""\\""#);
        assert_eq!(quote(r#"""#), r#""\"""#);
        assert_eq!(quote(r#"\""#), r#""\\\"""#);
    }

    #[test]
    fn control_characters() {
        assert_eq!(quote("a\nb\tc\r"), r#""a\nb\tc\r""#);
        assert_eq!(quote("\u{0}\u{1f}\u{7f}"), r#""\u0000\u001f\u007f""#);
        assert_eq!(quote("\u{8}\u{c}"), r#""\b\f""#);
    }

    #[test]
    fn filter_syntax_inside_value_is_inert() {
        let f = eq("userName", r#"x" or userName pr or "y"#);
        assert_eq!(f, r#"userName eq "x\" or userName pr or \"y""#);
        assert_eq!(parse_eq(&f).1, r#"x" or userName pr or "y"#);
    }

    #[test]
    fn unicode_passes_through() {
        assert_eq!(quote("Zoë 山田 🦀"), "\"Zoë 山田 🦀\"");
    }

    #[test]
    fn round_trips_nasty_strings() {
        let nasty = [
            "",
            " ",
            "\"",
            "\\",
            "\\\\\"\"",
            "a\"b\\c",
            "trailing\\",
            "\"quoted\"",
            "line\nbreak",
            "tab\there",
            "nul\u{0}byte",
            "\u{1}\u{2}\u{3}\u{1b}[31m",
            "del\u{7f}",
            "unicode \u{2028}\u{2029} ü 😀",
            "ends with quote\"",
            "json {\"a\": [1, \"b\"]}",
            "%20+&=?#/",
            "o'brien",
            "' or 1=1 --",
            "a eq \"b\" and c eq \"d\"",
            "\\u0022",
        ];
        for s in nasty {
            let f = eq("userName", s);
            let (attr, back) = parse_eq(&f);
            assert_eq!(attr, "userName");
            assert_eq!(back, s, "round trip of {s:?} via {f}");
            // Agrees with serde_json's own encoding of the literal.
            let via_serde: String = serde_json::from_str(&serde_json::to_string(s).expect("ser")).expect("de");
            assert_eq!(via_serde, back);
        }
    }

    #[test]
    fn round_trips_every_ascii_and_some_unicode_char() {
        let all: String = (0u32..0x300).filter_map(char::from_u32).collect();
        let (_, back) = parse_eq(&eq("x", &all));
        assert_eq!(back, all);
    }

    #[test]
    fn attr_paths() {
        for ok in [
            "userName",
            "name.givenName",
            "emails.value",
            "externalId",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value",
            "x-custom_attr",
        ] {
            assert!(is_valid_attr_path(ok), "{ok}");
        }
        for bad in [
            "",
            "user name",
            "userName eq \"x\" or userName",
            "a.b.c",
            "1abc",
            "name.",
            ".name",
            "foo:bar",
            "userName)",
            "emails[type eq \"work\"]",
        ] {
            assert!(!is_valid_attr_path(bad), "{bad}");
        }
    }
}
