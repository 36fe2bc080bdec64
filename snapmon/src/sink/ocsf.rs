//! Sink stage, OCSF 1.1 mapping (`--schema ocsf` / `format = "ocsf"`): file operations and
//! alerts as File System Activity (class 1001), process lifecycle as Process Activity (1007),
//! agent start/stop as Application Lifecycle (6002), loss metrics as Base Event (0).
//!
//! | OCSF field | from |
//! |---|---|
//! | `class_uid`, `category_uid` | 1001/1 file, 1007/1 process, 6002/6 agent state, 0/0 metric |
//! | `activity_id` | 1001: 1 create (`create`, `mkdir`, `link`, `symlink`), 3 update (all writes, truncate, fallocate, mmap, open_truncate), 4 delete (`unlink`, `rmdir`), 5 rename, 6 set attributes (`utimes`), 7 set security (`chmod`, `chown`), 14 open (`open_write`), 99 other (`ioctl`); 1007: 1 launch (`fork`, `exec`), 2 terminate (`exit`); 6002: 3 start, 4 stop, 99 other |
//! | `type_uid` | `class_uid * 100 + activity_id` |
//! | `time` | milliseconds since the epoch (`snapmon` keeps nanoseconds in `unmapped.timestamp_ns`) |
//! | `severity_id`, `severity` | alerts: 2 low, 3 medium, 4 high, 5 critical, 1 informational; events 1 |
//! | `message` | the alert sentence |
//! | `actor.process` | `pid`, `tid`, `name`, `cmd_line`, `uid`, `file{path,name,type_id:1}`, `user{uid}`, `parent_process{pid,name,file}` |
//! | `file` | `path`, `name`, `parent_folder`, `type_id` (1 regular, 2 folder for mkdir/rmdir, 0 unknown), `size`, `uid` (`DEV:INODE`) |
//! | `file_result` | rename/link destination |
//! | `device` | `hostname`, `type_id` 0 |
//! | `metadata` | `product{name:"snapmon",vendor_name:"snapmon",version}`, `version` "1.1.0", `sequence`, `log_name` |
//! | `unmapped` | the `snapmon` object of the ECS record (write, classification, lineage, ioctl, raw path hex …) plus `rule` for alerts |

use serde_json::{json, Map, Value};

use crate::{
    event::{Bytes, Event, FileInfo},
    record::{Record, Severity},
};

pub const OCSF_VERSION: &str = "1.1.0";

/// (class_uid, category_uid, activity_id, activity_name) for an event action.
pub fn activity(e: &Event) -> (u32, u32, u32, &'static str) {
    if e.category == "process" {
        return match e.action {
            "exit" => (1007, 1, 2, "Terminate"),
            _ => (1007, 1, 1, "Launch"),
        };
    }
    let (id, name) = match e.action {
        "create" | "mkdir" | "link" | "symlink" => (1, "Create"),
        "unlink" | "rmdir" => (4, "Delete"),
        "rename" => (5, "Rename"),
        "utimes" => (6, "Set Attributes"),
        "chmod" | "chown" => (7, "Set Security"),
        "open_write" => (14, "Open"),
        "ioctl" => (99, "Other"),
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

fn file_obj(f: &FileInfo, type_id: u32) -> Value {
    let mut o = Map::new();
    o.insert("type_id".into(), json!(type_id));
    if let Some(p) = &f.path {
        o.insert("path".into(), json!(p.display()));
        let path = p.as_path();
        if let Some(n) = path.file_name() {
            o.insert(
                "name".into(),
                json!(Bytes(n.as_encoded_bytes().to_vec()).display()),
            );
        }
        if let Some(d) = path.parent() {
            o.insert("parent_folder".into(), json!(Bytes::from_path(d).display()));
        }
    }
    if let Some(s) = f.size {
        o.insert("size".into(), json!(s));
    }
    if f.ino != 0 {
        o.insert(
            "uid".into(),
            json!(format!("{}:{}", crate::watch::dev_display(f.dev), f.ino)),
        );
    }
    Value::Object(o)
}

fn event_obj(e: &Event, host: &str, ecs: &Value) -> Map<String, Value> {
    let (class, cat, act, act_name) = activity(e);
    let (class_name, cat_name) = match class {
        1007 => ("Process Activity", "System Activity"),
        _ => ("File System Activity", "System Activity"),
    };
    let p = &e.process;
    let mut process = json!({
        "pid": p.pid,
        "tid": p.tid,
        "name": p.name,
        "uid": p.entity_id,
        "cmd_line": p.args.iter().map(|a| a.display()).collect::<Vec<_>>().join(" "),
        "file": {"path": p.executable.display(), "name": p.executable.as_path().file_name().map(|n| Bytes(n.as_encoded_bytes().to_vec()).display()).unwrap_or_default(), "type_id": 1},
        "user": {"uid": p.uid.to_string()},
    });
    if let Some(par) = &p.parent {
        process["parent_process"] = json!({"pid": par.pid, "name": par.name, "uid": par.entity_id, "file": {"path": par.executable, "type_id": 1}});
    } else if p.ppid != 0 {
        process["parent_process"] = json!({"pid": p.ppid});
    }
    let mut o = Map::new();
    o.insert("class_uid".into(), json!(class));
    o.insert("class_name".into(), json!(class_name));
    o.insert("category_uid".into(), json!(cat));
    o.insert("category_name".into(), json!(cat_name));
    o.insert("activity_id".into(), json!(act));
    o.insert("activity_name".into(), json!(act_name));
    o.insert("type_uid".into(), json!(class * 100 + act));
    o.insert(
        "type_name".into(),
        json!(format!("{class_name}: {act_name}")),
    );
    o.insert("time".into(), json!((e.ts_unix_ns / 1_000_000) as i64));
    o.insert("severity_id".into(), json!(1));
    o.insert("severity".into(), json!("Informational"));
    // We see the call on entry: its outcome is not known.
    o.insert("status_id".into(), json!(0));
    o.insert("actor".into(), json!({"process": process}));
    if let Some(f) = &e.file {
        let type_id = match e.action {
            "mkdir" | "rmdir" => 2,
            _ if f.path.is_some() || f.ino != 0 => 1,
            _ => 0,
        };
        o.insert("file".into(), file_obj(f, type_id));
    }
    if let Some(t) = &e.target {
        o.insert("file_result".into(), file_obj(t, 1));
    }
    o.insert("device".into(), json!({"hostname": host, "type_id": 0}));
    o.insert("metadata".into(), metadata(Some(e.seq)));
    let mut unmapped = ecs.get("snapmon").cloned().unwrap_or_else(|| json!({}));
    unmapped["timestamp_ns"] = json!(e.ts_unix_ns.to_string());
    unmapped["action"] = json!(e.action);
    o.insert("unmapped".into(), unmapped);
    o
}

fn metadata(seq: Option<u64>) -> Value {
    let mut m = json!({
        "product": {"name": "snapmon", "vendor_name": "snapmon", "version": env!("CARGO_PKG_VERSION")},
        "version": OCSF_VERSION,
        "log_name": "snapmon",
    });
    if let Some(s) = seq {
        m["sequence"] = json!(s);
    }
    m
}

/// The OCSF object for one record.
pub fn to_value(r: &Record, host: &str) -> Value {
    let ecs = super::json::to_value(r, host);
    match r {
        Record::Event(e) => Value::Object(event_obj(e, host, &ecs)),
        Record::Alert(a) => {
            let mut o = event_obj(&a.event, host, &ecs);
            let sid = severity_id(a.severity);
            o.insert("severity_id".into(), json!(sid));
            o.insert("severity".into(), json!(severity_name(sid)));
            o.insert("message".into(), json!(a.message));
            if let Some(u) = o.get_mut("unmapped") {
                u["rule"] = json!({"id": a.rule_id, "name": a.rule_name, "technique": a.technique});
                u["kind"] = json!("alert");
            }
            Value::Object(o)
        }
        Record::State(s) => {
            let (act, name) = match s.action {
                "started" => (3, "Start"),
                "stopped" => (4, "Stop"),
                _ => (99, "Other"),
            };
            json!({
                "class_uid": 6002, "class_name": "Application Lifecycle",
                "category_uid": 6, "category_name": "Application Activity",
                "activity_id": act, "activity_name": name, "type_uid": 6002 * 100 + act,
                "time": (super::json::now_unix_ns() / 1_000_000) as i64,
                "severity_id": 1, "severity": "Informational",
                "app": {"name": "snapmon", "version": env!("CARGO_PKG_VERSION")},
                "device": {"hostname": host, "type_id": 0},
                "metadata": metadata(None),
                "unmapped": {"action": s.action, "state": s.detail},
            })
        }
        Record::Metric(m) => json!({
            "class_uid": 0, "class_name": "Base Event",
            "category_uid": 0, "category_name": "Uncategorized",
            "activity_id": 99, "activity_name": "Other", "type_uid": 99,
            "time": (super::json::now_unix_ns() / 1_000_000) as i64,
            "severity_id": if m.action == "lost" { 3 } else { 1 },
            "message": format!("snapmon {}", m.action),
            "device": {"hostname": host, "type_id": 0},
            "metadata": metadata(None),
            "unmapped": {"action": m.action, "metric": m.detail},
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::fixtures;

    #[test]
    fn alert_maps_to_file_system_activity_update() {
        let v = to_value(&fixtures::alert(7, Severity::High), "host1");
        assert_eq!(v["class_uid"], 1001);
        assert_eq!(v["category_uid"], 1);
        assert_eq!(v["activity_id"], 3);
        assert_eq!(v["type_uid"], 100103);
        assert_eq!(v["type_name"], "File System Activity: Update");
        assert_eq!(v["time"], 1_795_887_000_130i64);
        assert_eq!(v["severity_id"], 4);
        assert_eq!(v["severity"], "High");
        assert_eq!(v["actor"]["process"]["pid"], 4242);
        assert_eq!(v["actor"]["process"]["name"], "python3");
        assert_eq!(v["actor"]["process"]["file"]["path"], "/usr/bin/python3.11");
        assert_eq!(v["actor"]["process"]["parent_process"]["pid"], 4000);
        assert_eq!(v["actor"]["process"]["parent_process"]["name"], "bash");
        assert_eq!(v["file"]["path"], "/var/lib/libvirt/images/vm1.qcow2");
        assert_eq!(v["file"]["name"], "vm1.qcow2");
        assert_eq!(v["file"]["type_id"], 1);
        assert_eq!(v["metadata"]["product"]["name"], "snapmon");
        assert_eq!(v["metadata"]["version"], OCSF_VERSION);
        assert_eq!(v["metadata"]["sequence"], 7);
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
            e.action = action;
            let v = to_value(&Record::Event(e.clone()), "h");
            assert_eq!(v["activity_id"], id, "{action}");
            assert_eq!(v["type_uid"], 100100 + id, "{action}");
            assert_eq!(v["severity_id"], 1);
        }
        e.action = "rename";
        e.file.as_mut().unwrap().path = Some(Bytes(b"/s/a\xff\x1b".to_vec()));
        e.target = Some(FileInfo {
            path: Some(Bytes(b"/s/b".to_vec())),
            ..Default::default()
        });
        let v = to_value(&Record::Event(e.clone()), "h");
        assert_eq!(v["file"]["path"], "/s/a\\xff\\x1b");
        assert_eq!(v["unmapped"]["file_path_hex"], "2f732f61ff1b");
        assert_eq!(v["file_result"]["path"], "/s/b");
        e.category = "process";
        e.action = "exit";
        let v = to_value(&Record::Event(e), "h");
        assert_eq!(
            (v["class_uid"].as_u64(), v["activity_id"].as_u64()),
            (Some(1007), Some(2))
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
