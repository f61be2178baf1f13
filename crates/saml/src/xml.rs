//! XML elements written directly in exclusive canonical form (Exclusive XML
//! Canonicalization 1.0, without comments).
//!
//! Every element has a prefix bound to a namespace; attributes are unqualified. An element
//! declares its prefix when no ancestor *in the output* already declared it with the same
//! value: exactly the namespace nodes exclusive c14n renders (a prefix is "visibly utilized"
//! only by the element that bears it, since attributes carry none). Attributes are sorted by
//! name, elements are never self-closed, and text and attribute values use the canonical
//! escapes. So [`El::canonical`] of an element is its exclusive canonical form as a
//! document subset of its own, and the document we send contains each element in that form.

use std::collections::BTreeMap;

/// An element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct El {
    pub prefix: &'static str,
    pub ns: &'static str,
    pub local: &'static str,
    attrs: BTreeMap<&'static str, String>,
    pub children: Vec<Node>,
}

/// Content of an element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    El(El),
    Text(String),
}

impl El {
    pub fn new(prefix: &'static str, ns: &'static str, local: &'static str) -> Self {
        Self { prefix, ns, local, attrs: BTreeMap::new(), children: Vec::new() }
    }

    /// Sets an (unqualified) attribute.
    #[must_use]
    pub fn attr(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.attrs.insert(name, value.into());
        self
    }

    #[must_use]
    pub fn child(mut self, child: El) -> Self {
        self.children.push(Node::El(child));
        self
    }

    #[must_use]
    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.children.push(Node::Text(text.into()));
        self
    }

    /// Inserts a child element at `index` (clamped to the number of children).
    pub fn insert(&mut self, index: usize, child: El) {
        let at = index.min(self.children.len());
        self.children.insert(at, Node::El(child));
    }

    /// The exclusive canonical form of this element as a document subset of its own.
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, &BTreeMap::new());
        out
    }

    fn write(&self, out: &mut String, in_force: &BTreeMap<&'static str, &'static str>) {
        out.push('<');
        out.push_str(self.prefix);
        out.push(':');
        out.push_str(self.local);
        let mut scope;
        let scope_ref = if in_force.get(self.prefix) == Some(&self.ns) {
            in_force
        } else {
            out.push_str(" xmlns:");
            out.push_str(self.prefix);
            out.push_str("=\"");
            escape_attr(out, self.ns);
            out.push('"');
            scope = in_force.clone();
            scope.insert(self.prefix, self.ns);
            &scope
        };
        for (name, value) in &self.attrs {
            out.push(' ');
            out.push_str(name);
            out.push_str("=\"");
            escape_attr(out, value);
            out.push('"');
        }
        out.push('>');
        for child in &self.children {
            match child {
                Node::El(e) => e.write(out, scope_ref),
                Node::Text(t) => escape_text(out, t),
            }
        }
        out.push_str("</");
        out.push_str(self.prefix);
        out.push(':');
        out.push_str(self.local);
        out.push('>');
    }
}

/// Whether XML 1.0 allows the character at all.
fn allowed(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// Text content, canonical escapes (`&`, `<`, `>`, CR); characters XML forbids are dropped.
pub fn escape_text(out: &mut String, s: &str) {
    for c in s.chars().filter(|c| allowed(*c)) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

/// An attribute value, canonical escapes (`&`, `<`, `"`, TAB, LF, CR).
pub fn escape_attr(out: &mut String, s: &str) {
    for c in s.chars().filter(|c| allowed(*c)) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

/// HTML-safe escaping for values put into an HTML attribute (the auto-submitting form).
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "urn:a";
    const B: &str = "urn:b";

    #[test]
    fn namespaces_are_declared_where_used_and_not_in_force() {
        let doc = El::new("a", A, "Root")
            .attr("z", "1")
            .attr("b", "2")
            .child(El::new("b", B, "One").child(El::new("b", B, "Two").text("x<y&z>\r")))
            .child(El::new("b", B, "Three"))
            .child(El::new("a", A, "Four").attr("v", "q\"<>&\t\n"));
        assert_eq!(
            doc.canonical(),
            "<a:Root xmlns:a=\"urn:a\" b=\"2\" z=\"1\"><b:One xmlns:b=\"urn:b\"><b:Two>x&lt;y&amp;z&gt;&#xD;</b:Two>\
             </b:One><b:Three xmlns:b=\"urn:b\"></b:Three><a:Four v=\"q&quot;&lt;>&amp;&#x9;&#xA;\"></a:Four></a:Root>"
        );
    }

    #[test]
    fn forbidden_characters_are_dropped() {
        let e = El::new("a", A, "T").text("a\u{1}b\u{FFFE}c");
        assert_eq!(e.canonical(), "<a:T xmlns:a=\"urn:a\">abc</a:T>");
    }
}
