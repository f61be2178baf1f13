//! A directory-source sync's planning vocabulary: what the planner reads about the users
//! already linked to a source's entries ([`LinkedUser`]), what it decides for one page of
//! entries ([`SourceBatch`], written in one transaction), what a write of it left out
//! ([`SkippedWrite`]), and how DNs are compared ([`dn_key`]). Pure data, no I/O: the engine
//! plans batches, the service layer writes them through the store.

use uuid::Uuid;

use crate::{SourceLink, User};

/// What a sync writes for one page of directory entries, in one transaction. Every user
/// write comes with its audit entry and change-feed row.
#[derive(Debug, Clone, Default)]
pub struct SourceBatch {
    /// New users (source `ldap`) and their links.
    pub creates: Vec<(User, SourceLink)>,
    /// Users to replace (`user.version` already moved on from `expected_version`), with
    /// their link (new DN, suspended-by-source flag). Suspensions and reactivations are
    /// updates of the status.
    pub updates: Vec<SourceUpdate>,
    /// Role memberships to add: (role, user).
    pub role_adds: Vec<(Uuid, Uuid)>,
    /// Role memberships to remove: (role, user).
    pub role_removes: Vec<(Uuid, Uuid)>,
}

#[derive(Debug, Clone)]
pub struct SourceUpdate {
    pub user: User,
    pub expected_version: i64,
    pub link: SourceLink,
}

/// A user write of a batch that was not made, and why (e.g. the username is taken by a user
/// of another source). The rest of the batch is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedWrite {
    pub user_id: Uuid,
    pub stable_id: String,
    pub reason: String,
}

/// A link with the linked user's current state.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkedUser {
    pub link: SourceLink,
    pub user: User,
}

/// The lower-cased DN without spaces around separators: how DNs are compared.
pub fn dn_key(dn: &str) -> String {
    let mut out = String::with_capacity(dn.len());
    for part in dn.split(',') {
        if !out.is_empty() {
            out.push(',');
        }
        let part = part.trim();
        match part.split_once('=') {
            Some((k, v)) => {
                out.push_str(&k.trim().to_lowercase());
                out.push('=');
                out.push_str(&v.trim().to_lowercase());
            }
            None => out.push_str(&part.to_lowercase()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn dns_compare_without_case_or_spaces() {
        assert_eq!(super::dn_key("CN=Ada Lovelace, OU=People ,DC=Example"), "cn=ada lovelace,ou=people,dc=example");
    }
}
