//! How PostgreSQL spells what differs in the SQL of a SCIM filter (see [`FilterDialect`]): ids
//! are `uuid` (compared as text), text compares by code point only under `COLLATE "C"`, and
//! JSON is read with `->>`/`->` and the `jsonb` functions.

use sqlx::Postgres;

use crate::scim::CompareOp;
use crate::sql::scim_filter::{FilterDialect, JsonRead};
use crate::sql::Query;

impl FilterDialect for Postgres {
    const BY_CODE_POINT: &'static str = " COLLATE \"C\"";

    fn id_text(col: &str) -> String {
        format!("{col}::text")
    }

    fn text_match(op: CompareOp) -> (&'static str, &'static str) {
        match op {
            CompareOp::Sw => ("left(", ", length(?)) = ?"),
            CompareOp::Ew => ("right(", ", length(?)) = ?"),
            _ => ("strpos(", ", ?) > 0"),
        }
    }

    fn json(q: &mut Query, name: &str, read: JsonRead) {
        q.push(match read {
            JsonRead::Text => "(users.attributes ->> ?)",
            JsonRead::Number => "(users.attributes ->> ?)::float8",
            JsonRead::Bool => "(users.attributes ->> ?)::boolean",
            JsonRead::Length => "jsonb_array_length(users.attributes -> ?)",
            JsonRead::Elements => {
                "jsonb_array_elements_text(COALESCE(users.attributes -> ?, '[]'::jsonb)) AS je(value)"
            }
        })
        .add(name);
    }

    fn profile_text(member: &str) -> String {
        format!("(users.profile ->> '{member}')")
    }

    fn profile_elements(member: &str) -> String {
        format!("jsonb_array_elements(COALESCE(users.profile -> '{member}', '[]'::jsonb)) AS rel(value)")
    }

    fn element_text(member: &str) -> String {
        format!("(rel.value ->> '{member}')")
    }

    fn element_flag(member: &str) -> String {
        format!("COALESCE((rel.value ->> '{member}')::boolean, FALSE)")
    }
}
