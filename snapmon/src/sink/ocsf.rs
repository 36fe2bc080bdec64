//! Sink stage, OCSF 1.1.0 mapping (`--schema ocsf` / `format = "ocsf"`): file operations as
//! File System Activity (1001), process lifecycle as Process Activity (1007), alerts as
//! Detection Findings (2004), agent state as Application Lifecycle (6002), metrics and the
//! chain's own records as Base Event (0). Every record validates against the vendored OCSF
//! 1.1.0 schema (`schema/ocsf`): required attributes, types, enums and their captions,
//! object constraints, and `metadata.profiles` declaring every profile used (`host`).
//!
//! | OCSF field | from |
//! |---|---|
//! | `class_uid`, `category_uid` | 1001/1 file, 1007/1 process, 2004/2 alert, 6002/6 agent state, 0/0 metric and chain |
//! | `activity_id` | 1001: 1 create (`create`, `mkdir`, `link`, `symlink`), 3 update (writes, truncate, fallocate, mmap, open_truncate), 4 delete (`unlink`, `rmdir`), 5 rename, 6 set attributes (`utimes`), 7 set security (`chmod`, `chown`), 14 open (`open_write`), 99 other (`ioctl`, `blinded`); 1007: 1 launch (`fork`, `exec`), 2 terminate (`exit`); 2004: 1 create; 6002: 3 start, 4 stop, 99 other (`activity_name` = the record: `hooks`, `stores` …); 0: 99 |
//! | `type_uid`, `type_name` | `class_uid * 100 + activity_id`, its caption |
//! | `time` | milliseconds since the epoch (nanoseconds in `unmapped.timestamp_ns`) |
//! | `severity_id`, `severity` | alerts: 1 informational, 2 low, 3 medium, 4 high, 5 critical; events and state 1; `lost` 3 |
//! | `status_id` | events 0 Unknown (seen on entry, outcome unknown); findings 1 New |
//! | `actor.process` | `pid`, `tid`, `name`, `uid` (entity id), `cmd_line`, `lineage`, `file{path,name,type_id:1}`, `user{uid}`, `parent_process{pid,name,uid,file}` |
//! | `actor.invoked_by` | `snapmon`, alone, on a record no process made (`loop_detached`) |
//! | `process` (1007) | the process the activity is about; `actor.process` its parent |
//! | `file` | `path`, `name` (required: last component, else `DEV:INODE`), `parent_folder`, `type_id` (2 folder, 7 symbolic link, else 0 unknown), `size`, `uid` (`DEV:INODE`) |
//! | `file_result` | rename/link destination |
//! | `finding_info` (2004) | `uid`, `title` (rule name), `desc` (the sentence), `analytic{type_id:1 Rule, uid: rule id, name}`, `attacks[{tactic, technique, sub_technique}]`, `related_events[{uid: the evidence event's metadata.uid, type_uid}]` |
//! | `evidences` (2004) | `[{actor{process}, file}]` of the event that completed the rule |
//! | `device` | `hostname`, `name`, `uid` (`/etc/machine-id`), `type_id` 0 (not in Base Event: `unmapped.host` there) |
//! | `app` (6002), `metadata.product` | `name` `snapmon`, `vendor_name` `snapmon`, `version`, `uid` (the agent id) |
//! | `metadata` | `version` `1.1.0`, `profiles` `["host"]`, `uid` (the event sequence; `sequence` is 32-bit in OCSF), `log_name` |
//! | `unmapped` | the ECS record's `snapmon` object (write, classification, ioctl, lineage, raw path hex), `action`, `sequence`, and for alerts `rule{id,name,technique}`; state/metric/chain records: `action`, `dataset`, `state`/`metric` payload |

use crate::event::Action;

use serde_json::{json, Map, Value};

use crate::{
    event::{Bytes, Category, Event, FileInfo, ProcessInfo},
    record::{Alert, Record, Severity},
};

pub const OCSF_VERSION: &str = "1.1.0";

/// Profiles every endpoint record declares: `host` (its `device` and `actor`).
const PROFILES: &[&str] = &["host"];

/// (class_uid, category_uid, activity_id, activity_name) for an event action.
pub fn activity(e: &Event) -> (u32, u32, u32, &'static str) {
    if e.category == Category::Process {
        return match e.action {
            Action::Exit => (1007, 1, 2, "Terminate"),
            _ => (1007, 1, 1, "Launch"),
        };
    }
    let (id, name) = match e.action {
        Action::Create | Action::Mkdir | Action::Link | Action::Symlink => (1, "Create"),
        Action::Unlink | Action::Rmdir => (4, "Delete"),
        Action::Rename => (5, "Rename"),
        Action::Utimes => (6, "Set Attributes"),
        Action::Chmod | Action::Chown => (7, "Set Security"),
        Action::OpenWrite => (14, "Open"),
        Action::Ioctl | Action::Blinded | Action::IoUringRegisterFiles | Action::LoopDetached => {
            (99, "Other")
        }
        _ => (3, "Update"),
    };
    (1001, 1, id, name)
}

fn severity_id(s: Severity) -> u32 {
    match s {
        Severity::Info => 1,
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
    }
}

fn severity_name(id: u32) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        5 => "Critical",
        _ => "Unknown",
    }
}

/// OCSF file `type_id`: 2 folder, 7 symbolic link, 1 regular for an executable, else 0
/// (unknown: a watched path may be an image file or a block device).
fn file_type_id(e: Option<&Event>) -> u32 {
    match e.and_then(super::json::file_type) {
        Some("dir") => 2,
        Some("symlink") => 7,
        _ => 0,
    }
}

fn file_obj(f: &FileInfo, type_id: u32) -> Value {
    let mut o = Map::new();
    o.insert("type_id".into(), json!(type_id));
    let uid = (f.ino != 0).then(|| format!("{}:{}", crate::paths::dev_display(f.dev), f.ino));
    let mut name = None;
    if let Some(p) = &f.path {
        o.insert("path".into(), json!(p.display()));
        let path = p.as_path();
        name = path
            .file_name()
            .map(|n| Bytes(n.as_encoded_bytes().to_vec()).display());
        if let Some(d) = path.parent() {
            o.insert("parent_folder".into(), json!(Bytes::from_path(d).display()));
        }
    }
    // `name` is required: the last path component, else the identity, else the path itself.
    let name = name
        .or_else(|| uid.clone())
        .or_else(|| f.path.as_ref().map(|p| p.display()))
        .unwrap_or_else(|| "unknown".into());
    o.insert("name".into(), json!(name));
    if let Some(s) = f.size {
        o.insert("size".into(), json!(s));
    }
    if let Some(u) = uid {
        o.insert("uid".into(), json!(u));
    }
    Value::Object(o)
}

fn exe_obj(path: &str) -> Value {
    let name = std::path::Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string());
    json!({"path": path, "name": name, "type_id": 1})
}

/// `actor.invoked_by` of a record no process made (`Event::no_actor`): the agent saw it
/// itself. OCSF 1.1's actor needs one of process, user, session or invoked_by; a made-up
/// process (pid 0, uid 0) would name root.
pub const NO_ACTOR_INVOKED_BY: &str = "snapmon";

/// The event's `actor`: its process, or for the agent's own observation `invoked_by` alone.
fn actor_obj(e: &Event) -> Value {
    if e.no_actor {
        json!({"invoked_by": NO_ACTOR_INVOKED_BY})
    } else {
        json!({"process": process_obj(&e.process)})
    }
}

fn process_obj(p: &ProcessInfo) -> Value {
    let exe = p.executable.display();
    let mut process = json!({
        "pid": p.pid,
        "tid": p.tid,
        "name": p.name,
        "cmd_line": p.args.iter().map(|a| a.display()).collect::<Vec<_>>().join(" "),
        "user": {"uid": p.uid.to_string()},
        "lineage": std::iter::once(p.name.as_str()).chain(p.ancestors.iter().map(|a| a.name.as_str())).collect::<Vec<_>>(),
    });
    if !p.entity_id.is_empty() {
        process["uid"] = json!(p.entity_id);
    }
    if !exe.is_empty() {
        process["file"] = exe_obj(&exe);
    }
    if let Some(par) = &p.parent {
        let mut pp = json!({"pid": par.pid, "name": par.name});
        if !par.entity_id.is_empty() {
            pp["uid"] = json!(par.entity_id);
        }
        if !par.executable.is_empty() {
            pp["file"] = exe_obj(&par.executable);
        }
        process["parent_process"] = pp;
    } else if p.ppid != 0 {
        process["parent_process"] = json!({"pid": p.ppid});
    }
    process
}

fn device(host: &str) -> Value {
    let mut d = json!({"hostname": host, "name": host, "type_id": 0});
    if let Some(id) = &super::identity::get().host_id {
        d["uid"] = json!(id);
    }
    d
}

fn metadata(uid: Option<String>, profiles: &[&str]) -> Value {
    let mut m = json!({
        "product": {"name": super::identity::AGENT_TYPE, "vendor_name": "snapmon", "version": super::identity::AGENT_VERSION},
        "version": OCSF_VERSION,
        "log_name": "snapmon",
        "profiles": profiles,
    });
    if let Some(a) = &super::identity::get().agent_id {
        m["product"]["uid"] = json!(a);
    }
    // `sequence` is a 32-bit integer in OCSF 1.1; ours is 64-bit, so it is the uid.
    if let Some(u) = uid {
        m["uid"] = json!(u);
    }
    m
}

/// Class, category, activity and type members.
fn classify(o: &mut Map<String, Value>, class: (u32, &str), cat: (u32, &str), act: (u32, &str)) {
    o.insert("class_uid".into(), json!(class.0));
    o.insert("class_name".into(), json!(class.1));
    o.insert("category_uid".into(), json!(cat.0));
    o.insert("category_name".into(), json!(cat.1));
    o.insert("activity_id".into(), json!(act.0));
    o.insert("activity_name".into(), json!(act.1));
    o.insert(
        "type_uid".into(),
        json!(class.0 as u64 * 100 + act.0 as u64),
    );
    // The type's caption; a data-specific activity name is only `activity_name`.
    let act_caption = if act.0 == 99 { "Other" } else { act.1 };
    o.insert(
        "type_name".into(),
        json!(format!("{}: {act_caption}", class.1)),
    );
}

fn event_obj(e: &Event, host: &str, ecs: &Value) -> Map<String, Value> {
    let (class, cat, act, act_name) = activity(e);
    let class_name = match class {
        1007 => "Process Activity",
        _ => "File System Activity",
    };
    let mut o = Map::new();
    classify(
        &mut o,
        (class, class_name),
        (cat, "System Activity"),
        (act, act_name),
    );
    o.insert("time".into(), json!((e.ts_unix_ns / 1_000_000) as i64));
    o.insert("severity_id".into(), json!(1));
    o.insert("severity".into(), json!("Informational"));
    // We see the call on entry: its outcome is not known.
    o.insert("status_id".into(), json!(0));
    o.insert("status".into(), json!("Unknown"));
    if class == 1007 {
        // The process the activity is about, and who did it (its parent, as far as known).
        o.insert("process".into(), process_obj(&e.process));
        let actor = match e.process.parent.as_ref() {
            Some(par) => {
                let mut pp = json!({"pid": par.pid, "name": par.name});
                if !par.entity_id.is_empty() {
                    pp["uid"] = json!(par.entity_id);
                }
                json!({"process": pp})
            }
            None if e.process.ppid != 0 => json!({"process": {"pid": e.process.ppid}}),
            None => json!({"user": {"uid": e.process.uid.to_string()}}),
        };
        o.insert("actor".into(), actor);
    } else {
        o.insert("actor".into(), actor_obj(e));
        let f = e.file.clone().unwrap_or_default();
        o.insert("file".into(), file_obj(&f, file_type_id(Some(e))));
        if let Some(t) = &e.target {
            o.insert("file_result".into(), file_obj(t, 0));
        }
    }
    o.insert("device".into(), device(host));
    o.insert(
        "metadata".into(),
        metadata(Some(e.seq.to_string()), PROFILES),
    );
    let mut unmapped = ecs.get("snapmon").cloned().unwrap_or_else(|| json!({}));
    unmapped["timestamp_ns"] = json!(e.ts_unix_ns.to_string());
    unmapped["action"] = json!(e.action);
    unmapped["sequence"] = json!(e.seq);
    o.insert("unmapped".into(), unmapped);
    o
}

/// An alert as a Detection Finding (2004): the rule as the analytic, ATT&CK tactics,
/// techniques and sub-techniques in `finding_info.attacks`, the evidence event referenced
/// (`related_events`, by its `metadata.uid`) and its actor and file embedded (`evidences`).
fn finding(a: &Alert, host: &str, ecs: &Value) -> Value {
    let e = &a.event;
    let mut o = Map::new();
    classify(
        &mut o,
        (2004, "Detection Finding"),
        (2, "Findings"),
        (1, "Create"),
    );
    o.insert("time".into(), json!((e.ts_unix_ns / 1_000_000) as i64));
    let sid = severity_id(a.severity);
    o.insert("severity_id".into(), json!(sid));
    o.insert("severity".into(), json!(severity_name(sid)));
    o.insert("status_id".into(), json!(1));
    o.insert("status".into(), json!("New"));
    o.insert("message".into(), json!(a.message));
    let attacks: Vec<Value> = a
        .technique
        .iter()
        .map(|id| match crate::attack::lookup(id) {
            Some(t) => {
                let (tid, tname) = t.technique();
                let mut at = json!({
                    "tactic": {"uid": t.tactic_id, "name": t.tactic_name, "src_url": crate::attack::tactic_url(t.tactic_id)},
                    "technique": {"uid": tid, "name": tname, "src_url": crate::attack::technique_url(tid)},
                });
                if t.is_sub() {
                    at["sub_technique"] = json!({"uid": t.id, "name": t.name, "src_url": crate::attack::technique_url(t.id)});
                }
                at
            }
            None => json!({"technique": {"uid": id}}),
        })
        .collect();
    let (class, _, act, act_name) = activity(e);
    let evidence_type = if class == 1007 {
        "Process Activity"
    } else {
        "File System Activity"
    };
    let mut related = vec![
        json!({"uid": e.seq.to_string(), "type_uid": class as u64 * 100 + act as u64,
                                  "type": format!("{evidence_type}: {act_name}")}),
    ];
    related.extend(a.related_seq.iter().map(|s| json!({"uid": s.to_string()})));
    let agent = super::identity::get()
        .agent_id
        .clone()
        .unwrap_or_else(|| host.to_string());
    o.insert(
        "finding_info".into(),
        json!({
            "uid": format!("{agent}:{}:{}", e.seq, a.rule_id),
            "title": a.rule_name,
            "desc": a.message,
            "analytic": {"type_id": 1, "type": "Rule", "uid": a.rule_id, "name": a.rule_name},
            "attacks": attacks,
            "related_events": related,
        }),
    );
    let mut evidence = json!({"actor": actor_obj(e)});
    if let Some(f) = &e.file {
        evidence["file"] = file_obj(f, file_type_id(Some(e)));
    }
    o.insert("evidences".into(), json!([evidence]));
    o.insert("actor".into(), actor_obj(e));
    o.insert("device".into(), device(host));
    o.insert(
        "metadata".into(),
        metadata(Some(format!("{}:{}", e.seq, a.rule_id)), PROFILES),
    );
    let mut unmapped = ecs.get("snapmon").cloned().unwrap_or_else(|| json!({}));
    unmapped["timestamp_ns"] = json!(e.ts_unix_ns.to_string());
    unmapped["action"] = json!(e.action);
    unmapped["sequence"] = json!(e.seq);
    unmapped["rule"] = json!({"id": a.rule_id, "name": a.rule_name, "technique": a.technique});
    o.insert("unmapped".into(), unmapped);
    Value::Object(o)
}

/// An agent state record as Application Lifecycle (6002): Start, Stop, or Other with the
/// record's action as the activity name.
fn lifecycle(action: &str, detail: &Value, host: &str) -> Value {
    let (id, name) = match action {
        "started" => (3, "Start"),
        "stopped" => (4, "Stop"),
        other => (99, other),
    };
    let mut o = Map::new();
    classify(
        &mut o,
        (6002, "Application Lifecycle"),
        (6, "Application Activity"),
        (id, name),
    );
    o.insert(
        "time".into(),
        json!((crate::clock::now_unix_ns() / 1_000_000) as i64),
    );
    o.insert("severity_id".into(), json!(1));
    o.insert("severity".into(), json!("Informational"));
    o.insert("message".into(), json!(format!("snapmon {action}")));
    let mut app = json!({"name": super::identity::AGENT_TYPE, "vendor_name": "snapmon", "version": super::identity::AGENT_VERSION});
    if let Some(a) = &super::identity::get().agent_id {
        app["uid"] = json!(a);
    }
    o.insert("app".into(), app);
    o.insert("device".into(), device(host));
    o.insert("metadata".into(), metadata(None, PROFILES));
    o.insert(
        "unmapped".into(),
        json!({"action": action, "state": detail}),
    );
    Value::Object(o)
}

/// A metric or chain record as a Base Event (0): it describes the agent's own output, which
/// no OCSF 1.1 class covers. Base Event has no `device`: the host is in `unmapped.host`.
pub fn base_event(
    action: &str,
    dataset: &str,
    member: &str,
    detail: &Value,
    severity: u32,
    host: &str,
) -> Value {
    let mut o = Map::new();
    classify(
        &mut o,
        (0, "Base Event"),
        (0, "Uncategorized"),
        (99, action),
    );
    o.insert(
        "time".into(),
        json!((crate::clock::now_unix_ns() / 1_000_000) as i64),
    );
    o.insert("severity_id".into(), json!(severity));
    o.insert("severity".into(), json!(severity_name(severity)));
    o.insert("message".into(), json!(format!("snapmon {action}")));
    o.insert("metadata".into(), metadata(None, &[]));
    o.insert(
        "unmapped".into(),
        json!({"action": action, "dataset": dataset, member: detail, "host": device(host)}),
    );
    Value::Object(o)
}

/// The OCSF object for one record.
pub fn to_value(r: &Record, host: &str) -> Value {
    let ecs = super::json::to_value(r, host);
    match r {
        Record::Event(e) => Value::Object(event_obj(e, host, &ecs)),
        Record::Alert(a) => finding(a, host, &ecs),
        Record::State(s) => lifecycle(s.action, &s.detail, host),
        Record::Metric(m) => base_event(
            m.action,
            "snapmon.agent",
            "metric",
            &m.detail,
            if m.action == "lost" { 3 } else { 1 },
            host,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::fixtures;

    #[test]
    fn alert_maps_to_detection_finding() {
        let v = to_value(&fixtures::alert(7, Severity::High), "host1");
        assert_eq!(v["class_uid"], 2004);
        assert_eq!(v["category_uid"], 2);
        assert_eq!(v["activity_id"], 1);
        assert_eq!(v["type_uid"], 200401);
        assert_eq!(v["type_name"], "Detection Finding: Create");
        assert_eq!(v["time"], 1_795_887_000_130i64);
        assert_eq!(v["severity_id"], 4);
        assert_eq!(v["severity"], "High");
        assert_eq!(v["actor"]["process"]["pid"], 4242);
        assert_eq!(v["actor"]["process"]["name"], "python3");
        assert_eq!(v["actor"]["process"]["file"]["path"], "/usr/bin/python3.11");
        assert_eq!(v["actor"]["process"]["parent_process"]["pid"], 4000);
        assert_eq!(v["actor"]["process"]["parent_process"]["name"], "bash");
        assert_eq!(
            v["evidences"][0]["file"]["path"],
            "/var/lib/libvirt/images/vm1.qcow2"
        );
        assert_eq!(v["evidences"][0]["file"]["name"], "vm1.qcow2");
        assert_eq!(v["metadata"]["product"]["name"], "snapmon");
        assert_eq!(v["metadata"]["product"]["vendor_name"], "snapmon");
        assert_eq!(v["metadata"]["version"], OCSF_VERSION);
        assert_eq!(v["metadata"]["profiles"], json!(["host"]));
        assert_eq!(v["finding_info"]["related_events"][0]["uid"], "7");
        assert_eq!(v["device"]["hostname"], "host1");
        assert_eq!(v["unmapped"]["rule"]["id"], "SM001");
        assert_eq!(
            v["unmapped"]["classification"]["regions"][0],
            "header.nb_snapshots"
        );
        assert_eq!(v["unmapped"]["write"]["offset"], 60);
        assert!(v["message"].as_str().unwrap().contains("nb_snapshots"));
    }

    #[test]
    fn activities_by_action_and_lossless_paths() {
        let mut e = fixtures::event(1);
        for (action, id) in [
            ("create", 1),
            ("unlink", 4),
            ("rmdir", 4),
            ("rename", 5),
            ("utimes", 6),
            ("chmod", 7),
            ("open_write", 14),
            ("ioctl", 99),
            ("punch_hole", 3),
            ("truncate", 3),
        ] {
            e.action = action.parse().unwrap();
            let v = to_value(&Record::Event(e.clone()), "h");
            assert_eq!(v["activity_id"], id, "{action}");
            assert_eq!(v["type_uid"], 100100 + id, "{action}");
            assert_eq!(v["severity_id"], 1);
        }
        e.action = Action::Rename;
        e.file.as_mut().unwrap().path = Some(Bytes(b"/s/a\xff\x1b".to_vec()));
        e.target = Some(FileInfo {
            path: Some(Bytes(b"/s/b".to_vec())),
            ..Default::default()
        });
        let v = to_value(&Record::Event(e.clone()), "h");
        assert_eq!(v["file"]["path"], "/s/a\\xff\\x1b");
        assert_eq!(v["unmapped"]["file_path_hex"], "2f732f61ff1b");
        assert_eq!(v["file_result"]["path"], "/s/b");
        e.action = Action::Symlink;
        let v = to_value(&Record::Event(e.clone()), "h");
        assert_eq!(v["file"]["type_id"], 7, "a symlink is not a regular file");
        e.action = Action::Mkdir;
        assert_eq!(
            to_value(&Record::Event(e.clone()), "h")["file"]["type_id"],
            2
        );
        e.category = Category::Process;
        e.action = Action::Exit;
        let v = to_value(&Record::Event(e), "h");
        assert_eq!(
            (v["class_uid"].as_u64(), v["activity_id"].as_u64()),
            (Some(1007), Some(2))
        );
        assert_eq!(
            v["process"]["pid"], 4242,
            "Process Activity names its process"
        );
        let v = to_value(
            &Record::State(crate::record::StateRecord {
                action: "started",
                detail: json!({}),
            }),
            "h",
        );
        assert_eq!(
            (v["class_uid"].as_u64(), v["type_uid"].as_u64()),
            (Some(6002), Some(600203))
        );
    }
}
