//! OCSF validator: a record against the vendored OCSF 1.1.0 schema (`ocsf/ocsf-1.1.0.json`,
//! classes and objects with `extends`, `$include` and profiles resolved by the OCSF compiler).
//!
//! Per record: the class by `class_uid`; `category_uid` and `type_uid` consistent with it;
//! `metadata.profiles` a subset of the class's profiles. Per attribute, recursively through
//! every object: known to its class/object; contributed by a profile only if that profile is
//! declared; the right type (base types, their ranges and lengths, arrays, objects); enum
//! values listed, and an enum's caption sibling (`severity`, `activity_name` …) equal to the
//! caption unless the value is 99 (Other); not deprecated. Required attributes (of declared
//! profiles too) and object constraints (`at_least_one`, `just_one`) hold.

use std::{collections::HashSet, sync::OnceLock};

use serde_json::{Map, Value};

pub const VERSION: &str = "1.1.0";

pub fn schema() -> &'static Value {
    static S: OnceLock<Value> = OnceLock::new();
    S.get_or_init(|| {
        serde_json::from_str(include_str!("../ocsf/ocsf-1.1.0.json")).expect("vendored OCSF")
    })
}

/// Validate one record; `Err` lists every violation.
pub fn validate(v: &Value) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    check(v, &mut errs);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

/// Validate one line as a file sink writes it (the chain member stripped).
pub fn validate_line(line: &str) -> Result<(), Vec<String>> {
    let v: Value = serde_json::from_str(&crate::without_chain(line))
        .map_err(|e| vec![format!("not JSON: {e}")])?;
    validate(&v)
}

fn check(v: &Value, errs: &mut Vec<String>) {
    let s = schema();
    let Some(uid) = v["class_uid"].as_u64() else {
        errs.push("class_uid: missing or not an integer".into());
        return;
    };
    let class = if uid == 0 {
        Some(&s["base_event"])
    } else {
        s["classes"]
            .as_object()
            .and_then(|c| c.values().find(|c| c["uid"].as_u64() == Some(uid)))
    };
    let Some(class) = class else {
        errs.push(format!("class_uid {uid}: no such class in OCSF {VERSION}"));
        return;
    };
    let name = class["name"].as_str().unwrap_or("?");
    if v["category_uid"].as_u64() != class["category_uid"].as_u64().or(Some(0)) {
        errs.push(format!(
            "category_uid: {} is not {name}'s category {}",
            v["category_uid"], class["category_uid"]
        ));
    }
    if let Some(act) = v["activity_id"].as_u64() {
        if v["type_uid"].as_u64() != Some(uid * 100 + act) {
            errs.push(format!(
                "type_uid: {} is not class_uid × 100 + activity_id = {}",
                v["type_uid"],
                uid * 100 + act
            ));
        }
    }
    let class_profiles: Vec<&str> = class["profiles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut profiles = HashSet::new();
    for p in v["metadata"]["profiles"].as_array().into_iter().flatten() {
        match p.as_str() {
            Some(p) if class_profiles.contains(&p) => {
                profiles.insert(p.to_string());
            }
            _ => errs.push(format!(
                "metadata.profiles: {p} is not a profile of {name} ({class_profiles:?})"
            )),
        }
    }
    let Some(o) = v.as_object() else {
        errs.push("record is not an object".into());
        return;
    };
    attributes(name, "", o, class, &profiles, errs);
}

/// The attributes of an object or class instance `o` against its definition `def`.
fn attributes(
    what: &str,
    path: &str,
    o: &Map<String, Value>,
    def: &Value,
    profiles: &HashSet<String>,
    errs: &mut Vec<String>,
) {
    let s = schema();
    let attrs = def["attributes"].as_object();
    let at = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    for (k, v) in o {
        let Some(a) = attrs.and_then(|a| a.get(k)) else {
            errs.push(format!("{}: not an attribute of {what}", at(k)));
            continue;
        };
        if let Some(p) = a["profile"].as_str() {
            if !profiles.contains(p) {
                errs.push(format!(
                    "{}: comes with the {p} profile, which metadata.profiles does not declare",
                    at(k)
                ));
            }
        }
        if a.get("@deprecated").is_some() {
            errs.push(format!("{}: deprecated in OCSF {VERSION}", at(k)));
        }
        if a["is_array"] == true {
            match v.as_array() {
                Some(items) => {
                    for (i, x) in items.iter().enumerate() {
                        typed(&format!("{}[{i}]", at(k)), x, a, profiles, errs);
                    }
                }
                None => errs.push(format!("{}: must be an array", at(k))),
            }
        } else {
            typed(&at(k), v, a, profiles, errs);
        }
        // An enum's caption sibling says the same as the number (except for Other).
        if let (Some(sib), Some(id)) = (a["sibling"].as_str(), v.as_u64()) {
            if let (Some(text), Some(cap)) = (
                o.get(sib).and_then(Value::as_str),
                a["enum"][id.to_string()]["caption"].as_str(),
            ) {
                if id != 99 && text != cap {
                    errs.push(format!(
                        "{}: {text:?} is not the caption of {k} {id} ({cap:?})",
                        at(sib)
                    ));
                }
            }
        }
    }
    for (k, a) in attrs.into_iter().flatten() {
        let needed = a["requirement"] == "required"
            && a["profile"].as_str().is_none_or(|p| profiles.contains(p));
        if needed && !o.contains_key(k) {
            errs.push(format!("{}: required by {what}, missing", at(k)));
        }
    }
    let present = |k: &Value| k.as_str().is_some_and(|k| o.contains_key(k));
    if let Some(c) = def["constraints"]["at_least_one"].as_array() {
        if !c.iter().any(present) {
            errs.push(format!(
                "{}: {what} needs at least one of {c:?}",
                if path.is_empty() { "record" } else { path }
            ));
        }
    }
    if let Some(c) = def["constraints"]["just_one"].as_array() {
        if c.iter().filter(|k| present(k)).count() != 1 {
            errs.push(format!("{path}: {what} needs exactly one of {c:?}"));
        }
    }
    let _ = s;
}

/// One value against an attribute's type.
fn typed(path: &str, v: &Value, a: &Value, profiles: &HashSet<String>, errs: &mut Vec<String>) {
    let s = schema();
    let ty = a["type"].as_str().unwrap_or("");
    if ty == "object_t" {
        let ot = a["object_type"].as_str().unwrap_or("object");
        let Some(o) = v.as_object() else {
            errs.push(format!(
                "{path}: {} where a {ot} object is expected",
                crate::kind(v)
            ));
            return;
        };
        // `object`: an unmapped bag of anything.
        if ot == "object" {
            return;
        }
        let def = &s["objects"][ot];
        if def.is_null() {
            errs.push(format!("{path}: unknown object type {ot}"));
            return;
        }
        if def.get("@deprecated").is_some() {
            errs.push(format!(
                "{path}: object {ot} is deprecated in OCSF {VERSION}"
            ));
        }
        attributes(ot, path, o, def, profiles, errs);
        return;
    }
    if let Some(e) = a["enum"].as_object() {
        let key = match v {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            _ => String::new(),
        };
        if !e.contains_key(&key) {
            errs.push(format!(
                "{path}: {v} is not one of {:?}",
                e.keys().collect::<Vec<_>>()
            ));
        }
    }
    // A named type (port_t, file_name_t …) narrows a base type.
    let t = &s["types"][ty];
    let base = t["type"].as_str().unwrap_or(ty);
    let ok = match (base, v) {
        ("boolean_t", Value::Bool(_)) => true,
        ("integer_t", Value::Number(n)) => n.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
        ("long_t" | "timestamp_t", Value::Number(n)) => n.is_i64() || n.is_u64(),
        ("float_t", Value::Number(_)) => true,
        ("string_t" | "datetime_t", Value::String(_)) => true,
        ("json_t", _) => true,
        _ => false,
    };
    if !ok {
        errs.push(format!("{path}: {} is not a valid {ty}", crate::kind(v)));
        return;
    }
    if let (Some([lo, hi]), Some(n)) = (
        t["range"]
            .as_array()
            .map(|r| r.as_slice())
            .and_then(|r| <&[Value; 2]>::try_from(r).ok()),
        v.as_i64(),
    ) {
        if lo.as_i64().is_some_and(|lo| n < lo) || hi.as_i64().is_some_and(|hi| n > hi) {
            errs.push(format!("{path}: {n} is outside {ty}'s range"));
        }
    }
    if let (Some(max), Some(sv)) = (t["max_len"].as_u64(), v.as_str()) {
        if sv.len() as u64 > max {
            errs.push(format!("{path}: longer than {ty}'s {max} bytes"));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    fn app() -> serde_json::Value {
        json!({"class_uid": 6002, "category_uid": 6, "activity_id": 3, "type_uid": 600203,
               "activity_name": "Start", "severity_id": 1, "severity": "Informational",
               "time": 1, "metadata": {"version": "1.1.0", "product": {"name": "snapmon", "vendor_name": "snapmon"}},
               "app": {"name": "snapmon", "vendor_name": "snapmon"}})
    }

    fn errs(v: impl std::borrow::Borrow<serde_json::Value>) -> Vec<String> {
        super::validate(v.borrow()).err().unwrap_or_default()
    }

    #[test]
    fn a_valid_record_passes() {
        assert_eq!(errs(app()), Vec::<String>::new());
    }

    #[test]
    fn each_kind_of_violation_is_caught() {
        let mut v = app();
        v["app"] = json!({"name": "snapmon"});
        assert_eq!(errs(v), ["app.vendor_name: required by product, missing"]);
        let mut v = app();
        v.as_object_mut().unwrap().remove("class_uid");
        assert_eq!(errs(v), ["class_uid: missing or not an integer"]);
        let mut v = app();
        v["type_uid"] = json!(600204);
        assert!(errs(v)[0].starts_with("type_uid"));
        let mut v = app();
        v["severity"] = json!("Info");
        assert!(errs(&v)[0].contains("not the caption"), "{:?}", errs(&v));
        let mut v = app();
        v["activity_id"] = json!(7);
        v["type_uid"] = json!(600207);
        assert!(errs(&v)[0].contains("is not one of"), "{:?}", errs(&v));
        let mut v = app();
        v["device"] = json!({"hostname": "h", "type_id": 0});
        assert!(errs(&v)[0].contains("host profile"), "{:?}", errs(&v));
        v["metadata"]["profiles"] = json!(["host"]);
        assert_eq!(errs(v.clone()), Vec::<String>::new());
        v["device"] = json!({"type_id": 0});
        assert!(errs(v)[0].contains("at least one of"), "{:?}", errs(app()));
        let mut v = app();
        v["frob"] = json!(1);
        assert_eq!(errs(v), ["frob: not an attribute of application_lifecycle"]);
        let mut v = app();
        v["time"] = json!("now");
        assert!(errs(v)[0].contains("not a valid timestamp_t"));
    }
}
