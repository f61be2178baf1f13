//! Reading every resource of an app, and checking that what it sent is what was asked for.
//!
//! A page is checked against its request: the `startIndex` it echoes, its `itemsPerPage`
//! against the rows it holds, ids repeated across pages, `totalResults` changing during the
//! scan, and more (or, at the end, fewer) rows than `totalResults`. A scan that contradicts
//! itself is not used: the next strategy the app supports is tried (`GET` paging, then
//! `POST /.search` with the same paging), and when none is consistent the caller gets no
//! resources, only the contradictions, and must not act.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::RemoteAccount;

/// How a listing was read, and what contradicted itself on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadReport {
    /// The strategy whose answers were consistent (`"GET paging"`, `"POST /.search paging"`),
    /// or `None` when none was.
    pub strategy: Option<String>,
    /// The strategies tried, in order.
    pub tried: Vec<String>,
    /// Each contradiction found, naming the strategy, e.g. `GET paging: asked for
    /// startIndex=21, the app answered startIndex=1`.
    pub contradictions: Vec<String>,
    /// Pages (requests) read, over every strategy.
    pub pages: u32,
}

impl ReadReport {
    /// The admin-facing reason when no strategy was consistent.
    pub fn failure_reason(&self, app_name: &str, what: &str) -> String {
        format!(
            "{app_name} answered the listing of its {what} inconsistently with every way tried ({}): {}. Nothing was changed.",
            self.tried.join(", "),
            self.contradictions.join("; ")
        )
    }

    /// What to do about it.
    pub fn recommended_action(&self) -> String {
        "Ask the app's vendor to fix its SCIM paging (startIndex/count, RFC 7644 section 3.4.2.4) or to offer \
         POST /.search or cursor pagination; until then this app cannot be read in full safely."
            .to_owned()
    }
}

/// A full listing: `items` are usable only when `report.strategy` is set.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub items: Vec<RemoteAccount>,
    pub report: ReadReport,
}

impl Scan {
    pub fn consistent(&self) -> bool {
        self.report.strategy.is_some()
    }
}

/// The most pages one scan reads.
pub(crate) const MAX_PAGES: u32 = 100_000;

/// Checks page after page of one index-paged scan.
#[derive(Debug, Default)]
pub(crate) struct PageCheck {
    seen: HashMap<String, String>,
    total: Option<u64>,
    pub items: Vec<RemoteAccount>,
}

/// What to do after a page.
pub(crate) enum Next {
    /// Ask for the page starting here.
    Page(u64),
    Done,
}

impl PageCheck {
    /// The checks every page passes, whatever the paging: `at` names the page.
    fn absorb(
        &mut self,
        at: &str,
        items_per_page: Option<u64>,
        total: Option<u64>,
        rows: Vec<RemoteAccount>,
    ) -> Result<(), String> {
        let n = rows.len() as u64;
        if let Some(ipp) = items_per_page {
            if ipp != n {
                return Err(format!("at {at} the app said itemsPerPage={ipp} but sent {n} resources"));
            }
        }
        if let Some(t) = total {
            match self.total {
                Some(before) if before != t => {
                    return Err(format!("totalResults changed from {before} to {t} during the scan"));
                }
                _ => self.total = Some(t),
            }
        }
        for r in rows {
            if let Some(first) = self.seen.insert(r.id.clone(), at.to_owned()) {
                return Err(format!("resource {} came again on the page at {at} after the page at {first}", r.id));
            }
            self.items.push(r);
        }
        let have = self.items.len() as u64;
        if let Some(t) = self.total {
            if have > t {
                return Err(format!("the pages held more resources ({have}) than totalResults={t}"));
            }
        }
        Ok(())
    }

    /// Takes a page of a cursor scan; `last` when it had no `nextCursor`.
    pub fn take_cursor(
        &mut self,
        page: u32,
        items_per_page: Option<u64>,
        total: Option<u64>,
        rows: Vec<RemoteAccount>,
        last: bool,
    ) -> Result<Next, String> {
        self.absorb(&format!("cursor page {page}"), items_per_page, total, rows)?;
        if !last {
            return Ok(Next::Page(self.items.len() as u64 + 1));
        }
        let have = self.items.len() as u64;
        match self.total {
            Some(t) if have < t => Err(format!("the app said totalResults={t} but its pages held {have} resources")),
            _ => Ok(Next::Done),
        }
    }

    /// Takes the page answered to `startIndex=start&count=count`; `Err` names a contradiction.
    pub fn take(
        &mut self,
        start: u64,
        count: u32,
        echoed_start: Option<u64>,
        items_per_page: Option<u64>,
        total: Option<u64>,
        rows: Vec<RemoteAccount>,
    ) -> Result<Next, String> {
        let n = rows.len() as u64;
        if let Some(echo) = echoed_start {
            if echo != start {
                return Err(format!("asked for startIndex={start}, the app answered startIndex={echo}"));
            }
        }
        self.absorb(&format!("startIndex={start}"), items_per_page, total, rows)?;
        let have = self.items.len() as u64;
        let next = start + n;
        let done = match self.total {
            _ if n == 0 => true,
            Some(t) => next > t,
            None => n < u64::from(count),
        };
        if !done {
            return Ok(Next::Page(next));
        }
        if let Some(t) = self.total {
            if have < t {
                return Err(format!("the app said totalResults={t} but its pages held {have} resources"));
            }
        }
        Ok(Next::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows(ids: std::ops::Range<u32>) -> Vec<RemoteAccount> {
        ids.map(|i| RemoteAccount { id: i.to_string(), resource: json!({"id": i.to_string()}) }).collect()
    }

    #[test]
    fn consistent_pages_end_at_the_total() {
        let mut c = PageCheck::default();
        assert!(matches!(c.take(1, 10, Some(1), Some(10), Some(25), rows(0..10)), Ok(Next::Page(11))));
        assert!(matches!(c.take(11, 10, Some(11), Some(10), Some(25), rows(10..20)), Ok(Next::Page(21))));
        assert!(matches!(c.take(21, 10, None, None, Some(25), rows(20..25)), Ok(Next::Done)));
        assert_eq!(c.items.len(), 25);
    }

    #[test]
    fn each_contradiction_is_named() {
        let mut c = PageCheck::default();
        assert!(c.take(1, 10, Some(1), Some(10), Some(25), rows(0..10)).is_ok());
        let e = c.take(11, 10, Some(1), Some(10), Some(25), rows(0..10)).err().unwrap();
        assert_eq!(e, "asked for startIndex=11, the app answered startIndex=1");
        let mut c = PageCheck::default();
        assert!(c.take(1, 10, None, None, Some(25), rows(0..10)).is_ok());
        let e = c.take(11, 10, None, None, Some(25), rows(5..15)).err().unwrap();
        assert!(e.contains("resource 5 came again"), "{e}");
        let mut c = PageCheck::default();
        assert!(c.take(1, 10, None, None, Some(25), rows(0..10)).is_ok());
        let e = c.take(11, 10, None, None, Some(26), rows(10..20)).err().unwrap();
        assert_eq!(e, "totalResults changed from 25 to 26 during the scan");
        let mut c = PageCheck::default();
        let e = c.take(1, 10, None, Some(3), Some(25), rows(0..10)).err().unwrap();
        assert!(e.contains("itemsPerPage=3 but sent 10"), "{e}");
        let mut c = PageCheck::default();
        let e = c.take(1, 10, None, None, Some(5), rows(0..10)).err().unwrap();
        assert!(e.contains("more resources (10) than totalResults=5"), "{e}");
        // A 0-based app skips the first resource: the pages hold one fewer than it says.
        let mut c = PageCheck::default();
        assert!(c.take(1, 10, Some(1), None, Some(12), rows(1..11)).is_ok());
        assert!(matches!(c.take(11, 10, Some(11), None, Some(12), rows(11..12)), Ok(Next::Page(12))));
        let e = c.take(12, 10, Some(12), None, Some(12), rows(0..0)).err().unwrap();
        assert_eq!(e, "the app said totalResults=12 but its pages held 11 resources");
    }
}
