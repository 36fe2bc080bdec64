//! Test-only validators: every record snapmon writes, checked against the official schemas
//! vendored beside this crate (ECS 9.4.0 `ecs_flat`, OCSF 1.1.0), not against our own idea
//! of them. Unit tests (snapmon) and the end-to-end harness (snapmon-e2e) both use it.
//!
//! Each validator returns every violation it finds as one readable line naming the field.
//! [`record`] has typed views of the ECS records, for tests that read records back.

pub mod ecs;
pub mod ocsf;
pub mod record;

/// The JSON type of a value, for messages.
pub(crate) fn kind(v: &serde_json::Value) -> &'static str {
    use serde_json::Value::*;
    match v {
        Null => "null",
        Bool(_) => "boolean",
        Number(n) if n.is_f64() => "float",
        Number(_) => "integer",
        String(_) => "string",
        Array(_) => "array",
        Object(_) => "object",
    }
}

/// An object key a mapping can hold: a lower-case identifier. Anything else (a sink name such
/// as `file:/var/log/x`, a path, a user-supplied name) is data used as a key, and makes an
/// Elasticsearch mapping or a columnar store grow with the data.
pub(crate) fn key_shape_ok(k: &str) -> bool {
    let mut c = k.chars();
    matches!(c.next(), Some('a'..='z' | '_')) && c.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

/// Strip the tamper-evident chain member (`,"snapmon.chain":{…}}` at the end of a file sink's
/// line): it is the log's envelope, not part of the record (docs/output.md).
pub fn without_chain(line: &str) -> String {
    match line.rfind(",\"snapmon.chain\":") {
        Some(i) => format!("{}}}", &line[..i]),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_shapes() {
        for ok in ["hooks", "run_ns", "_x", "t1"] {
            assert!(super::key_shape_ok(ok), "{ok}");
        }
        for bad in [
            "file:/var/log",
            "Hooks",
            "1x",
            "",
            "a.b",
            "a-b",
            "sys enter",
        ] {
            assert!(!super::key_shape_ok(bad), "{bad}");
        }
        assert_eq!(
            super::without_chain(r#"{"a":1,"snapmon.chain":{"seq":1}}"#),
            r#"{"a":1}"#
        );
    }
}
