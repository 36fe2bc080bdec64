//! ECS validator: a record against the vendored ECS 9.4.0 field definitions (`ecs/ecs_flat.json`)
//! plus snapmon's own declared custom field set (`ecs/snapmon_fields.json`).
//!
//! It fails on: a field that is neither ECS nor a declared `snapmon.*` field; a value of the
//! wrong type; a value outside an allowed-values list (and an `event.type` no listed
//! `event.category` expects); a missing required field (`@timestamp`, `ecs.version`); an
//! object key that is not an identifier (data used as a key).

use std::{
    collections::{HashMap, HashSet},
    sync::OnceLock,
};

use serde_json::Value;

#[derive(Debug)]
struct Field {
    ty: String,
    array: bool,
    allowed: Option<Vec<String>>,
}

/// The field definitions: ECS plus snapmon's custom set.
#[derive(Debug)]
pub struct Ecs {
    fields: HashMap<String, Field>,
    /// Every proper prefix of a field name: where an object may appear.
    objects: HashSet<String>,
    required: Vec<String>,
    /// `event.category` value → the `event.type` values it expects.
    expected_types: HashMap<String, Vec<String>>,
    /// `ecs.version` the definitions are from.
    pub version: String,
}

fn load(json: &str, into: &mut Ecs, custom: bool) {
    let m: serde_json::Map<String, Value> =
        serde_json::from_str(json).expect("vendored field definitions parse");
    for (name, d) in m {
        if custom {
            assert!(
                name.starts_with("snapmon."),
                "custom field {name} must be under snapmon."
            );
        }
        let ty = d["type"].as_str().expect("field type").to_string();
        let array = d["normalize"]
            .as_array()
            .is_some_and(|n| n.iter().any(|x| x == "array"));
        let allowed = d["allowed_values"].as_array().map(|a| {
            a.iter()
                .filter_map(|x| x["name"].as_str().map(String::from))
                .collect()
        });
        if name == "event.category" {
            for a in d["allowed_values"].as_array().into_iter().flatten() {
                let types = a["expected_event_types"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect();
                into.expected_types
                    .insert(a["name"].as_str().unwrap_or("").to_string(), types);
            }
        }
        if d["required"] == true {
            into.required.push(name.clone());
        }
        let mut p = name.as_str();
        while let Some(i) = p.rfind('.') {
            p = &p[..i];
            into.objects.insert(p.to_string());
        }
        into.fields.insert(name, Field { ty, array, allowed });
    }
}

/// The definitions, parsed once per process.
pub fn ecs() -> &'static Ecs {
    static E: OnceLock<Ecs> = OnceLock::new();
    E.get_or_init(|| {
        let mut e = Ecs {
            fields: HashMap::new(),
            objects: HashSet::new(),
            required: Vec::new(),
            expected_types: HashMap::new(),
            version: "9.4.0".into(),
        };
        load(include_str!("../ecs/ecs_flat.json"), &mut e, false);
        load(include_str!("../ecs/snapmon_fields.json"), &mut e, true);
        e
    })
}

/// Validate one record; `Err` lists every violation.
pub fn validate(v: &Value) -> Result<(), Vec<String>> {
    ecs().validate(v)
}

/// Validate one line as a file sink writes it (the chain member stripped).
pub fn validate_line(line: &str) -> Result<(), Vec<String>> {
    let v: Value = serde_json::from_str(&crate::without_chain(line))
        .map_err(|e| vec![format!("not JSON: {e}")])?;
    validate(&v)
}

impl Ecs {
    pub fn validate(&self, v: &Value) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        let Some(o) = v.as_object() else {
            return Err(vec![format!("record is {}, not an object", crate::kind(v))]);
        };
        let mut seen = HashMap::new();
        self.walk("", o, &mut seen, &mut errs);
        for r in &self.required {
            if !seen.contains_key(r.as_str()) {
                errs.push(format!("{r}: required field missing"));
            }
        }
        if let (Some(cats), Some(types)) = (seen.get("event.category"), seen.get("event.type")) {
            for t in strings(types) {
                let ok = strings(cats).iter().any(|c| {
                    self.expected_types
                        .get(c.as_str())
                        .is_some_and(|e| e.contains(&t))
                });
                if !ok {
                    errs.push(format!(
                        "event.type {t:?} is not expected for event.category {:?}",
                        strings(cats)
                    ));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    fn walk<'v>(
        &self,
        prefix: &str,
        o: &'v serde_json::Map<String, Value>,
        seen: &mut HashMap<String, &'v Value>,
        errs: &mut Vec<String>,
    ) {
        for (k, v) in o {
            // A dotted key (`snapmon.chain`) is the same as the nested object.
            if !(k.split('.').all(crate::key_shape_ok) || prefix.is_empty() && k == "@timestamp") {
                errs.push(format!(
                    "{prefix}{}{k:?}: object key is not an identifier (data used as a key?)",
                    if prefix.is_empty() { "" } else { "." }
                ));
                continue;
            }
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            self.value(&path, v, seen, errs);
        }
    }

    fn value<'v>(
        &self,
        path: &str,
        v: &'v Value,
        seen: &mut HashMap<String, &'v Value>,
        errs: &mut Vec<String>,
    ) {
        if let Some(f) = self.fields.get(path) {
            seen.insert(path.to_string(), v);
            match f.ty.as_str() {
                // Arrays of objects, each with the declared sub-fields.
                "nested" | "object" if self.objects.contains(path) => {
                    for x in elements(v) {
                        match x.as_object() {
                            Some(o) => self.walk(path, o, seen, errs),
                            None => errs.push(format!(
                                "{path}: {} where objects are expected",
                                crate::kind(x)
                            )),
                        }
                    }
                }
                // Free-form (ECS `flattened`, or an `object` with no declared members):
                // one field in a mapping, whatever its keys; still no data as keys.
                "flattened" | "object" => keys_ok(path, v, errs),
                _ => {
                    if f.array && !v.is_array() {
                        errs.push(format!("{path}: must be an array (ECS normalize: array)"));
                    }
                    for x in elements(v) {
                        if let Err(e) = leaf(&f.ty, x) {
                            errs.push(format!("{path}: {e}"));
                        } else if let (Some(allowed), Some(s)) = (&f.allowed, x.as_str()) {
                            if !allowed.iter().any(|a| a == s) {
                                errs.push(format!("{path}: {s:?} is not one of {allowed:?}"));
                            }
                        }
                    }
                }
            }
        } else if self.objects.contains(path) {
            match v.as_object() {
                Some(o) => self.walk(path, o, seen, errs),
                None => errs.push(format!(
                    "{path}: {} where an object is expected",
                    crate::kind(v)
                )),
            }
        } else if path.starts_with("snapmon.") || path == "snapmon" {
            errs.push(format!(
                "{path}: not a declared snapmon field (add it to snapmon_fields.json and docs)"
            ));
        } else {
            errs.push(format!("{path}: not an ECS field"));
        }
    }
}

/// The values of a field: an array's elements (arrays of arrays flatten, as in Elasticsearch).
fn elements(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().flat_map(elements).collect(),
        v => vec![v],
    }
}

fn strings(v: &Value) -> Vec<String> {
    elements(v)
        .into_iter()
        .filter_map(|x| x.as_str().map(String::from))
        .collect()
}

fn keys_ok(path: &str, v: &Value, errs: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                if !crate::key_shape_ok(k) {
                    errs.push(format!(
                        "{path}.{k:?}: object key is not an identifier (data used as a key?)"
                    ));
                }
                keys_ok(&format!("{path}.{k}"), x, errs);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| keys_ok(path, x, errs)),
        _ => {}
    }
}

/// One value against an ECS leaf type (null is "not set" in Elasticsearch).
fn leaf(ty: &str, v: &Value) -> Result<(), String> {
    let ok = match (ty, v) {
        (_, Value::Null) => true,
        (
            "keyword" | "constant_keyword" | "wildcard" | "match_only_text" | "text" | "ip",
            Value::String(_),
        ) => true,
        ("long" | "integer" | "short" | "byte" | "unsigned_long", Value::Number(n)) => {
            n.is_i64() || n.is_u64()
        }
        ("float" | "double" | "half_float" | "scaled_float", Value::Number(_)) => true,
        ("boolean", Value::Bool(_)) => true,
        ("date", Value::String(s)) => rfc3339(s),
        ("geo_point", Value::Object(_)) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{} is not a valid {ty}", short(v)))
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}… ({})", &s[..s.floor_char_boundary(60)], crate::kind(v))
    } else {
        format!("{s} ({})", crate::kind(v))
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
fn rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let d = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let date_time = b.len() >= 20
        && (0..4).all(d)
        && b[4] == b'-'
        && d(5)
        && d(6)
        && b[7] == b'-'
        && d(8)
        && d(9)
        && b[10] == b'T'
        && d(11)
        && d(12)
        && b[13] == b':'
        && d(14)
        && d(15)
        && b[16] == b':'
        && d(17)
        && d(18);
    if !date_time {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &r[n..];
    }
    rest == "Z"
        || (rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    fn errs(v: impl std::borrow::Borrow<serde_json::Value>) -> Vec<String> {
        super::validate(v.borrow()).err().unwrap_or_default()
    }

    fn base() -> serde_json::Value {
        json!({"@timestamp": "2026-11-28T17:30:00.123456789Z", "ecs": {"version": "9.4.0"},
               "event": {"kind": "event", "category": ["file"], "type": ["change"]},
               "host": {"name": "h"}})
    }

    #[test]
    fn a_valid_record_passes() {
        assert_eq!(errs(base()), Vec::<String>::new());
    }

    #[test]
    fn each_kind_of_violation_is_caught() {
        let mut v = base();
        v["ecs"] = json!({});
        assert_eq!(errs(v), ["ecs.version: required field missing"]);
        let mut v = base();
        v["file"] = json!({"frobnicate": 1});
        assert_eq!(errs(v), ["file.frobnicate: not an ECS field"]);
        let mut v = base();
        v["process"] = json!({"pid": "7"});
        assert!(errs(v)[0].starts_with("process.pid: \"7\" (string) is not a valid long"));
        let mut v = base();
        v["event"]["kind"] = json!("alarm");
        assert!(errs(v)[0].starts_with("event.kind: \"alarm\" is not one of"));
        let mut v = base();
        v["event"]["type"] = json!(["denied"]);
        assert!(errs(v)[0].contains("not expected for event.category"));
        let mut v = base();
        v["event"]["category"] = json!("file");
        assert!(errs(v)[0].contains("must be an array"));
        let mut v = base();
        v["snapmon"] = json!({"metric": {"sinks": {"file:/var/log/x": {"written": 1}}}});
        assert!(errs(&v)[0].contains("not an identifier"), "{:?}", errs(&v));
        let mut v = base();
        v["snapmon"] = json!({"undeclared": 1});
        assert!(errs(v)[0].contains("not a declared snapmon field"));
        let mut v = base();
        v["@timestamp"] = json!("yesterday");
        assert!(errs(v)[0].contains("not a valid date"));
    }

    #[test]
    fn dates() {
        for ok in ["2026-01-02T03:04:05Z", "2026-01-02T03:04:05.1+02:00"] {
            assert!(super::rfc3339(ok), "{ok}");
        }
        for bad in [
            "2026-01-02 03:04:05Z",
            "2026-01-02T03:04:05",
            "2026-01-02T03:04:05.Z",
        ] {
            assert!(!super::rfc3339(bad), "{bad}");
        }
    }
}
