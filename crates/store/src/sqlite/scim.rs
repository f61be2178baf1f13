//! How SQLite spells what differs in the SQL of a SCIM filter (see [`FilterDialect`]): ids are
//! stored as text, text compares by code point already, JSON is read with `json_extract`.

use sqlx::Sqlite;

use crate::scim::CompareOp;
use crate::sql::scim_filter::{FilterDialect, JsonRead};
use crate::sql::Query;

impl FilterDialect for Sqlite {
    const BY_CODE_POINT: &'static str = "";

    fn id_text(col: &str) -> String {
        col.to_owned()
    }

    fn text_match(op: CompareOp) -> (&'static str, &'static str) {
        match op {
            CompareOp::Sw => ("substr(", ", 1, length(?)) = ?"),
            CompareOp::Ew => ("substr(", ", -length(?)) = ?"),
            _ => ("instr(", ", ?) > 0"),
        }
    }

    fn json(q: &mut Query, name: &str, read: JsonRead) {
        q.push(match read {
            JsonRead::Text | JsonRead::Number | JsonRead::Bool => "json_extract(users.attributes, ?)",
            JsonRead::Length => "json_array_length(users.attributes, ?)",
            JsonRead::Elements => "json_each(users.attributes, ?) je",
        })
        .add(format!("$.{name}"));
    }

    fn profile_text(member: &str) -> String {
        format!("json_extract(users.profile, '$.{member}')")
    }

    fn profile_elements(member: &str) -> String {
        format!("json_each(users.profile, '$.{member}') rel")
    }

    fn element_text(member: &str) -> String {
        format!("json_extract(rel.value, '$.{member}')")
    }

    fn element_flag(member: &str) -> String {
        format!("COALESCE(json_extract(rel.value, '$.{member}'), 0)")
    }
}
