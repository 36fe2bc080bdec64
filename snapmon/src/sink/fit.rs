//! Fit a rendered record into a byte budget (a syslog daemon's message limit) without ever
//! cutting it into invalid JSON: long strings are shortened with an explicit `…[+N bytes]`
//! marker, then the largest arrays are halved and the largest members dropped, and the record
//! says so in `snapmon.truncated` (`unmapped.truncated` in OCSF): `{original_bytes, fields}`.
//!
//! Types never change (a string stays a string, an array an array), so an Elasticsearch
//! mapping built from whole records takes the shrunk ones too. The identity of the record
//! (`@timestamp`, `event.kind`/`action`/`id`, `host`, OCSF `class_uid`, `metadata` …) is kept.

use serde_json::{json, Value};

/// Strings at most this long are left whole.
const SHORT: usize = 80;
/// Paths named in `fields`, at most.
const MAX_FIELDS: usize = 32;

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Idx(usize),
}

fn show(path: &[Seg]) -> String {
    let mut s = String::new();
    for p in path {
        match p {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Idx(_) => s.push_str("[]"),
        }
    }
    s
}

/// Members that identify the record: never dropped (long strings among them are still cut).
fn protected(path: &str) -> bool {
    const KEEP: &[&str] = &[
        "@timestamp",
        "event.kind",
        "event.action",
        "event.id",
        "event.dataset",
        "event.module",
        "event.sequence",
        "host.hostname",
        "rule.id",
        "message",
        "snapmon.schema_version",
        "snapmon.truncated",
        "unmapped.truncated",
        "class_uid",
        "category_uid",
        "activity_id",
        "type_uid",
        "severity_id",
        "time",
        "metadata.uid",
        "metadata.version",
        "metadata.product",
    ];
    KEEP.iter()
        .any(|k| *k == path || k.strip_prefix(path).is_some_and(|r| r.starts_with('.')))
}

fn size(v: &Value) -> usize {
    serde_json::to_vec(v).map_or(0, |b| b.len())
}

fn get_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut cur = v;
    for p in path {
        cur = match p {
            Seg::Key(k) => cur.get_mut(k.as_str())?,
            Seg::Idx(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

/// The longest string over `SHORT`, and the largest droppable member or array element.
fn candidates(
    v: &Value,
    path: &mut Vec<Seg>,
    longest: &mut Option<(usize, Vec<Seg>)>,
    largest: &mut Option<(usize, Vec<Seg>)>,
) {
    match v {
        Value::String(s) if s.len() > SHORT && longest.as_ref().is_none_or(|l| s.len() > l.0) => {
            *longest = Some((s.len(), path.clone()));
        }
        Value::Object(m) => {
            for (k, c) in m {
                path.push(Seg::Key(k.clone()));
                let p = show(path);
                if !protected(&p) {
                    let n = size(c);
                    if largest.as_ref().is_none_or(|l| n > l.0) {
                        *largest = Some((n, path.clone()));
                    }
                }
                candidates(c, path, longest, largest);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                path.push(Seg::Idx(i));
                candidates(c, path, longest, largest);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Make one cut of about `excess` bytes; false when nothing is left to cut.
fn cut_once(v: &mut Value, excess: usize, fields: &mut Vec<String>) -> bool {
    let (mut longest, mut largest) = (None, None);
    candidates(v, &mut Vec::new(), &mut longest, &mut largest);
    let mut note = |path: &[Seg]| {
        let p = show(path);
        if !fields.contains(&p) && fields.len() < MAX_FIELDS {
            fields.push(p);
        }
    };
    if let Some((len, path)) = longest {
        if let Some(Value::String(s)) = get_mut(v, &path) {
            // Room for the marker; never below SHORT/2 so the text still says something.
            let mut keep = len.saturating_sub(excess + 20).max(SHORT / 2);
            while !s.is_char_boundary(keep) {
                keep -= 1;
            }
            let dropped = len - keep;
            s.truncate(keep);
            s.push_str(&format!("…[+{dropped} bytes]"));
            note(&path);
            return true;
        }
    }
    let Some((_, path)) = largest else {
        return false;
    };
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    // An array is halved (its first entries kept) rather than dropped whole.
    if let Some(Value::Array(a)) = get_mut(v, &path) {
        if a.len() > 1 {
            a.truncate(a.len() / 2);
            note(&path);
            return true;
        }
    }
    note(&path);
    match (get_mut(v, parent), last) {
        (Some(Value::Object(m)), Seg::Key(k)) => m.remove(k).is_some(),
        (Some(Value::Array(a)), Seg::Idx(i)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

/// Where the marker goes: `snapmon.truncated` (ECS) or `unmapped.truncated` (OCSF).
fn mark(v: &mut Value, original: usize, fields: &[String]) {
    let t = json!({"original_bytes": original, "fields": fields});
    let ns = if v.get("class_uid").is_some() {
        "unmapped"
    } else {
        "snapmon"
    };
    if !v.get(ns).is_some_and(Value::is_object) {
        v[ns] = json!({});
    }
    v[ns]["truncated"] = t;
}

/// `body` (one JSON record) in at most `budget` bytes, as valid JSON. Text that is not a JSON
/// object is cut on a character boundary with the same marker.
pub fn fit(body: Vec<u8>, budget: usize) -> Vec<u8> {
    if body.len() <= budget {
        return body;
    }
    let original = body.len();
    let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
        return fit_text(body, budget);
    };
    if !v.is_object() {
        return fit_text(body, budget);
    }
    let mut fields = Vec::new();
    for _ in 0..10_000 {
        let mut t = v.clone();
        mark(&mut t, original, &fields);
        let out = serde_json::to_vec(&t).unwrap_or_default();
        if out.len() <= budget {
            return out;
        }
        if !cut_once(&mut v, out.len() - budget, &mut fields) {
            break;
        }
    }
    // Nothing left to cut: the record's identity alone.
    let mut min = json!({
        "@timestamp": v["@timestamp"],
        "event": {"kind": v["event"]["kind"], "action": v["event"]["action"], "id": v["event"]["id"]},
    });
    mark(&mut min, original, &["*".to_string()]);
    let out = serde_json::to_vec(&min).unwrap_or_default();
    if out.len() <= budget {
        out
    } else {
        b"{}".to_vec()
    }
}

/// Plain text cut on a character boundary, with the marker.
pub fn fit_text(mut body: Vec<u8>, budget: usize) -> Vec<u8> {
    if body.len() <= budget {
        return body;
    }
    let marker = format!("…[+{} bytes]", body.len());
    let mut keep = budget.saturating_sub(marker.len());
    while keep > 0 && (body[keep] & 0xC0) == 0x80 {
        keep -= 1;
    }
    body.truncate(keep);
    body.extend_from_slice(marker.as_bytes());
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big_state() -> Value {
        let hooks: Vec<Value> = (0..60)
            .map(|i| json!({"program": format!("sys_enter_{i}"), "attached_to": "tracepoint/syscalls/x", "covers": "writes to watched files"}))
            .collect();
        json!({
            "@timestamp": "2026-12-04T17:00:00.000000000Z",
            "event": {"kind": "state", "action": "started", "id": "abc-1", "module": "snapmon", "dataset": "snapmon.agent"},
            "host": {"hostname": "h"},
            "snapmon": {"schema_version": 1, "state": {"hooks": hooks, "notes": ["x".repeat(3000)], "policy": "/etc/snapmon/policy.toml"}},
        })
    }

    #[test]
    fn every_budget_gives_valid_json_that_says_what_was_cut() {
        let v = big_state();
        let body = serde_json::to_vec(&v).unwrap();
        assert!(body.len() > 9000);
        for budget in [700, 1024, 2048, 4000, 8192] {
            let out = fit(body.clone(), budget);
            assert!(out.len() <= budget, "{budget}: {}", out.len());
            let got: Value = serde_json::from_slice(&out).expect("valid JSON");
            assert_eq!(got["event"]["action"], "started", "{budget}");
            assert_eq!(got["event"]["id"], "abc-1", "{budget}");
            let t = &got["snapmon"]["truncated"];
            assert_eq!(t["original_bytes"], body.len(), "{budget}: {got}");
            assert!(!t["fields"].as_array().unwrap().is_empty(), "{budget}");
            // Types kept: hooks is still an array of objects when present.
            if let Some(h) = got["snapmon"]["state"]["hooks"].as_array() {
                assert!(h.iter().all(Value::is_object));
            }
        }
        // The long note was cut with a marker before anything was dropped.
        let out: Value = serde_json::from_slice(&fit(body.clone(), 8192)).unwrap();
        let note = out["snapmon"]["state"]["notes"][0].as_str().unwrap();
        assert!(note.ends_with("bytes]") && note.contains("…[+"), "{note}");
        assert_eq!(
            out["snapmon"]["state"]["policy"],
            "/etc/snapmon/policy.toml"
        );
        // Small enough already: untouched, byte for byte.
        assert_eq!(fit(body.clone(), body.len()), body);
    }

    #[test]
    fn multibyte_text_is_cut_on_a_character_boundary() {
        let v = json!({"event": {"kind": "alert", "action": "x"}, "message": "é".repeat(2000)});
        let out = fit(serde_json::to_vec(&v).unwrap(), 1200);
        assert!(out.len() <= 1200);
        let got: Value = serde_json::from_slice(&out).unwrap();
        assert!(got["message"].as_str().unwrap().starts_with("éé"));
        let t = fit_text("é".repeat(1000).into_bytes(), 101);
        assert!(t.len() <= 101);
        assert!(String::from_utf8(t).is_ok());
    }

    #[test]
    fn ocsf_records_are_marked_in_unmapped() {
        let v = json!({"class_uid": 1001, "metadata": {"uid": "r-1", "version": "1.1.0"}, "unmapped": {"blob": "y".repeat(5000)}});
        let got: Value =
            serde_json::from_slice(&fit(serde_json::to_vec(&v).unwrap(), 2000)).unwrap();
        assert_eq!(got["class_uid"], 1001);
        assert_eq!(got["metadata"]["uid"], "r-1");
        assert!(
            got["unmapped"]["truncated"]["original_bytes"]
                .as_u64()
                .unwrap()
                > 5000
        );
    }
}
