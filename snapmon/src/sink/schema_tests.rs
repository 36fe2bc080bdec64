//! Every record kind snapmon writes, in both JSON formats, against the official schemas
//! vendored in `schema/` (ECS 9.4.0 field definitions, OCSF 1.1.0): unknown fields, wrong
//! types, values outside allowed lists, missing required fields and data used as object keys
//! all fail here.

use crate::event::{Action, DetailKey, FallocMode};

use serde_json::{json, Value};

use crate::{
    event::{Bytes, FileInfo, IoctlRaw},
    record::{Alert, MetricRecord, Record, Severity, StateRecord},
    sink::{chain::Chain, fixtures, Format, SinkSet},
};

/// One of every record: events of every action family, process events, enforcement
/// decisions, ioctls, hostile paths, alerts naming every technique, every state record the
/// agent writes (start-up details, summary, stopped, reloads) and every metric record.
pub(crate) fn every_record() -> Vec<Record> {
    let mut out = Vec::new();
    let base = fixtures::event(1);
    for (action, ty) in [
        ("pwrite64", "change"),
        ("create", "creation"),
        ("mkdir", "creation"),
        ("rmdir", "deletion"),
        ("unlink", "deletion"),
        ("rename", "change"),
        ("link", "creation"),
        ("symlink", "creation"),
        ("chmod", "change"),
        ("utimes", "change"),
        ("open_write", "access"),
        ("truncate", "change"),
    ] {
        let mut e = base.clone();
        e.action = action.parse().unwrap();
        e.ecs_type = ty.parse().unwrap();
        if matches!(action, "rename" | "link") {
            e.target = Some(FileInfo {
                path: Some(Bytes(b"/var/lib/libvirt/images/.hidden\xff".to_vec())),
                ..Default::default()
            });
        }
        if action != "pwrite64" {
            e.write = None;
            e.classification = None;
        }
        out.push(Record::Event(e));
    }
    // Hostile bytes, no parent, a container, a cwd, truncated args, an unnamed file.
    let mut e = base.clone();
    e.action = Action::PunchHole;
    e.write.as_mut().unwrap().mode = vec![FallocMode::PunchHole, FallocMode::KeepSize];
    e.file.as_mut().unwrap().path = Some(Bytes(b"/s/\x1b[31m\xfe.qcow2".to_vec()));
    e.process.parent = None;
    e.process.container_id = Some("c0ffee".into());
    e.process.cwd = Some(Bytes(b"/root".to_vec()));
    e.process.args_truncated = true;
    e.process.systemd_unit = Some("backup.service".into());
    e.process.vm_name = Some("vm1".into());
    e.process.exe_dev = 8 << 20 | 1;
    e.process.exe_ino = 4242;
    e.process.vm_uuid = Some("6f1c…".into());
    std::sync::Arc::make_mut(&mut e.process.ancestors)[0].entity_id = "ent-4000".into();
    // Every detail key the agent writes: each must be a declared field.
    for k in <DetailKey as strum::IntoEnumIterator>::iter() {
        if !matches!(k, DetailKey::Unknown(_)) {
            e.detail.push((k, "1".into()));
        }
    }
    out.push(Record::Event(e.clone()));
    e.file = Some(FileInfo {
        dev: 8 << 20 | 1,
        ino: 99,
        ..Default::default()
    });
    out.push(Record::Event(e));
    // An ioctl with its decoded argument.
    let mut e = base.clone();
    e.action = Action::Ioctl;
    e.write = None;
    e.ioctl = Some(IoctlRaw {
        cmd: 0xc138fd04,
        arg: 0x7ffd0000,
        arg_data: vec![0; 8],
    });
    e.classification = Some(crate::classify::Classification {
        format: crate::classify::Format::Dm,
        ioctl_name: Some("DM_DEV_REMOVE vg-lv_snap".into()),
        ioctl: Some(
            json!({"cmd": 3241737476u32, "family": "dm", "name": "DM_DEV_REMOVE", "truncated": false,
                           "detail": {"kind": "dm", "name": "vg-lv_snap", "targets": []}}),
        ),
        snapshot_destructive: true,
        snapshot_create: true,
        changes: vec![crate::classify::Change::new("name", "", "vg-lv_snap")],
        regions: vec!["dm.remove".into()],
        facts: vec![("domain".into(), "vm1".into())],
        sample_entropy: Some(7.9),
    });
    out.push(Record::Event(e));
    // The agent's own word that a loop alias ended: no actor (process left at its default).
    let mut e = base.clone();
    e.action = Action::LoopDetached;
    e.ecs_type = crate::event::EventType::Info;
    e.write = None;
    e.classification = None;
    e.process = Default::default();
    e.no_actor = true;
    e.detail = vec![
        (DetailKey::LoopDevice, "/dev/loop0".into()),
        (DetailKey::LoopWatch, "ended".into()),
    ];
    out.push(Record::Event(e.clone()));
    // An alert judged on such a record: its finding has no actor either.
    out.push(Record::Alert(Box::new(no_actor_alert(e))));
    // Process lifecycle.
    for action in ["fork", "exec", "exit"] {
        let mut e = base.clone();
        e.category = crate::event::Category::Process;
        e.ecs_type = if action == "exit" { "end" } else { "start" }
            .parse()
            .unwrap();
        e.action = action.parse().unwrap();
        e.file = None;
        e.write = None;
        e.classification = None;
        out.push(Record::Event(e));
    }
    // Enforcement decisions.
    for (ty, outcome) in [("denied", "denied"), ("allowed", "would_deny")] {
        let mut e = base.clone();
        e.ecs_type = ty.parse().unwrap();
        e.action = if ty == "denied" {
            Action::DenyWrite
        } else {
            Action::WouldDenyWrite
        };
        e.backend = snapmon_common::Backend::Lsm;
        e.detail = vec![
            (DetailKey::Operation, "write".into()),
            (DetailKey::Outcome, outcome.into()),
            (DetailKey::Protected, "/var/lib/libvirt/images".into()),
            (DetailKey::ActorExeIdentity, "8:1:42".into()),
            (DetailKey::Aux, "0x2".into()),
        ];
        out.push(Record::Event(e));
    }
    // Alerts: every severity, every technique, related events.
    for (i, t) in crate::attack::TECHNIQUES.iter().enumerate() {
        let mut a = Alert {
            rule_id: "SM-Q001".into(),
            rule_name: "qcow2 metadata modified by a non-QEMU process".into(),
            severity: [
                Severity::Info,
                Severity::Low,
                Severity::Medium,
                Severity::High,
                Severity::Critical,
            ][i % 5],
            technique: vec![t.id.into(), "T1490".into()],
            message: "python3 (← bash ← sshd) set nb_snapshots 3→0 in vm1.qcow2".into(),
            event: base.clone(),
            related_seq: vec![],
        };
        if i == 0 {
            a.related_seq = vec![1, 2];
        }
        // A high or critical alert on an image is followed by its evidence (or why not).
        if i == 3 {
            let image = std::path::Path::new("/var/lib/libvirt/images/vm1.qcow2");
            let dir = std::path::Path::new(
                "/var/lib/snapmon/evidence/2026-11-28T180211.482113000Z-1-SM-Q001-4242-vm1.qcow2",
            );
            let files = [
                "pre-header.bin",
                "pre.json",
                "post-header.bin",
                "post.json",
                "alert.json",
            ]
            .iter()
            .map(|n| crate::evidence::file_entry(&dir.join(n), n.as_bytes()))
            .collect();
            out.push(crate::evidence::saved_record(image, &a, dir, files));
            out.push(crate::evidence::failed_record(
                image,
                &a,
                "/var/lib/snapmon/evidence: No space left on device (os error 28)".into(),
            ));
        }
        out.push(Record::Alert(Box::new(a)));
    }
    // Start-up, as on a big host.
    let (hooks, watch, roots, warnings) = crate::state::tests::big_start();
    let mut info = crate::state::tests::info_fixture(&hooks, &watch, &roots, &warnings);
    info.missing = Box::leak(Box::new(vec![crate::kernel::offsets::Missing {
        group: "vfs",
        field: "inode.i_sb".into(),
        effect: "no fentry write hook",
    }]));
    info.notes = Box::leak(Box::new(vec!["skipped /srv/x: not found".to_string()]));
    out.extend(crate::state::started(&info).into_iter().map(Record::State));
    // Running and stopping, with the real producers.
    let pipe =
        crate::pipeline::Pipeline::new(Default::default(), &crate::config::Policy::embedded());
    let dir = crate::testutil::TmpDir::new("schema");
    let spec = format!("file:{},chain=false", dir.join("x.jsonl").display());
    let mut sinks = SinkSet::start(
        &[crate::sink::config::SinkConfig::parse_spec(&spec).unwrap()],
        "h".into(),
    )
    .unwrap();
    // Every program counted, with long attach points: the per-hook records stay small.
    sinks.registry().set_hook_runs(crate::metrics::HookRuns {
        enabled: true,
        note: None,
        programs: crate::kernel::loader::HOOKS
            .iter()
            .map(|h| crate::metrics::HookRun {
                program: h.program.into(),
                attach: format!("tracepoint/syscalls/{}", h.program),
                runs: u64::MAX / 3,
                run_ns: u64::MAX / 5,
            })
            .collect(),
    });
    out.extend(crate::state::stats(&pipe, &sinks, &mut 0));
    let hooks = sinks.registry().hook_runs().unwrap();
    let responder = crate::respond::act::Responder::new(crate::evidence::Evidence::new(
        &crate::config::Policy::embedded().evidence,
    ));
    out.extend(crate::state::stopped(
        "SIGTERM", &pipe, &sinks, &hooks, 3, &responder,
    ));
    sinks.shutdown(std::time::Duration::from_secs(2));
    out.push(Record::State(StateRecord {
        action: "reloaded",
        detail: json!({"policy": "/etc/snapmon/policy.toml", "rule_warnings": ["w"],
                       "enforcement": {"active": true, "dry_run": false, "monitor_only": false, "protected": 2,
                                       "keep_enforcing": false, "trusted": ["/usr/bin/qemu-img"]},
                       "response": {"active": true, "mode": "kill", "dry_run": false,
                                    "stores": [{"path": "/var/lib/libvirt/images", "monitor": false}],
                                    "kernel_classes": ["header"], "agent_rules": ["SM-R001"], "objects": 3,
                                    "images": 2, "trusted_count": 4, "notes": ["n"]},
                       "restart_needed": ["[[store]] /srv/vms added: not watched until the agent restarts"]}),
    }));
    out.push(Record::State(StateRecord {
        action: "reload_failed",
        detail: json!({"policy": "/etc/snapmon/policy.toml", "error": "line 3: unknown key `x`"}),
    }));
    out.push(Record::Metric(MetricRecord {
        action: "lost",
        detail: json!({"kernel": {"ringbuf_full": 3, "io_uring_fixed_file": 1, "watch_full": 2},
                       "kernel_total": [3, 0, 0, 1, 2],
                       "decoder": {"decode_truncated": 1}, "watch": {"watch_full": 4},
                       "sinks": [{"sink": "tcp:127.0.0.1:9000", "cause": "spill_full", "count": 12}]}),
    }));
    out.push(Record::Metric(MetricRecord {
        action: "filtered",
        detail: json!({"kernel_writes": 10, "kernel_total": 50, "files": 2}),
    }));
    out
}

fn fail(fmt: &str, r: &Record, line: &str, errs: &[String]) -> String {
    format!(
        "{fmt} record {:?} is invalid:\n  {}\n{line}",
        match r {
            Record::Event(e) => e.action.to_string(),
            Record::Alert(a) => format!("alert {:?}", a.technique),
            Record::State(s) => format!("state {}", s.action),
            Record::Metric(m) => format!("metric {}", m.action),
        },
        errs.join("\n  ")
    )
}

/// No record the agent writes exceeds what a stock syslog daemon takes (8 KiB), chain member
/// included, in either format.
#[test]
fn every_record_fits_in_8_kib() {
    const MAX: usize = 8 * 1024;
    let chain_member = 180;
    for r in every_record() {
        for f in [Format::Json, Format::Ocsf] {
            let n = super::render(f, &r, "a-long-hostname.example.internal", false).len()
                + chain_member;
            assert!(n <= MAX, "{f:?} {} is {n} bytes", fail("", &r, "", &[]));
        }
    }
}

type Validator = fn(&str) -> Result<(), Vec<String>>;

/// Every record in `format`, each line through `validate`: all failures in one message.
fn assert_all_valid(name: &str, format: Format, validate: Validator) {
    let bad: Vec<String> = every_record()
        .iter()
        .filter_map(|r| {
            let line = String::from_utf8(super::render(format, r, "host1", false)).unwrap();
            validate(&line).err().map(|e| fail(name, r, &line, &e))
        })
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
}

#[test]
fn every_ecs_record_is_valid_ecs() {
    assert_all_valid("ECS", Format::Json, snapmon_schema::ecs::validate_line);
}

/// The file sink's lean events (ancestry carried earlier in the file) are valid ECS too.
#[test]
fn every_lean_ecs_record_is_valid_ecs() {
    let bad: Vec<String> = every_record()
        .into_iter()
        .filter_map(|mut r| {
            if let Record::Event(e) = &mut r {
                // Only a numbered build can go lean.
                e.process.revision = 1;
            }
            let mut b = Vec::new();
            crate::sink::json::write_record_lean(&mut b, &r, "host1", Some("run-1"), true);
            let line = String::from_utf8(b).unwrap();
            snapmon_schema::ecs::validate_line(&line)
                .err()
                .map(|e| fail("lean ECS", &r, &line, &e))
        })
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
}

#[test]
fn every_ocsf_record_is_valid_ocsf() {
    assert_all_valid("OCSF", Format::Ocsf, snapmon_schema::ocsf::validate_line);
}

/// The tamper-evident chain's own records, in each format a chained file can have.
#[test]
fn chain_records_are_valid_in_their_file_format() {
    for format in [Format::Json, Format::Ocsf] {
        let mut c = Chain::new(Some(vec![7; 32]), 10, 0, [0; 32]).with_format(format);
        let path = std::path::Path::new("/var/log/snapmon.jsonl");
        for line in [
            c.header("h", path),
            c.checkpoint("h"),
            c.footer("h", "rotation"),
        ] {
            let line = String::from_utf8(line).unwrap();
            let res = match format {
                Format::Ocsf => snapmon_schema::ocsf::validate_line(line.trim_end()),
                _ => snapmon_schema::ecs::validate_line(line.trim_end()),
            };
            assert!(res.is_ok(), "{format:?} {res:?}\n{line}");
        }
    }
}

fn no_actor_alert(event: crate::event::Event) -> Alert {
    Alert {
        rule_id: "SM-L001".into(),
        rule_name: "x".into(),
        severity: Severity::Medium,
        technique: vec!["T1562.001".into()],
        message: "m".into(),
        event,
        related_seq: vec![],
    }
}

/// A record no process made (the agent's own word: a loop device found detached in sysfs)
/// names no actor in any format: ECS leaves `process` out (pid 0 and user "0" would blame
/// root), OCSF's required actor is `invoked_by` alone, the tail line shows no pid; each still
/// valid against its schema. Syslog carries these same renderings as its message.
#[test]
fn a_record_with_no_actor_names_none_in_any_format() {
    let e = every_record()
        .into_iter()
        .find_map(|r| match r {
            Record::Event(e) if e.no_actor => Some(e),
            _ => None,
        })
        .expect("every_record has a record with no actor");
    assert_eq!(e.action, Action::LoopDetached);
    for r in [
        Record::Event(e.clone()),
        Record::Alert(Box::new(no_actor_alert(e))),
    ] {
        let line = String::from_utf8(super::render(Format::Json, &r, "h", false)).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert!(v.get("process").is_none(), "ECS names an actor: {line}");
        assert!(v["snapmon"].get("process").is_none(), "{line}");
        assert!(
            v.get("user").is_none() && v.get("container").is_none(),
            "{line}"
        );
        snapmon_schema::ecs::validate_line(&line).unwrap();
        // The slow path (`to_value`, tests and fixtures) says the same.
        let slow = super::json::to_value(&r, "h");
        assert!(slow.get("process").is_none(), "{slow}");
        assert!(slow["snapmon"].get("process").is_none(), "{slow}");

        let line = String::from_utf8(super::render(Format::Ocsf, &r, "h", false)).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["actor"], json!({"invoked_by": "snapmon"}), "{line}");
        if let Some(ev) = v["evidences"].get(0) {
            assert_eq!(ev["actor"], json!({"invoked_by": "snapmon"}), "{line}");
        }
        assert!(!line.contains("\"pid\":0"), "OCSF names pid 0: {line}");
        snapmon_schema::ocsf::validate_line(&line).unwrap();

        let line = String::from_utf8(super::render(Format::Tail, &r, "h", false)).unwrap();
        assert!(!line.contains("pid 0") && !line.contains("[0]"), "{line}");
    }
    // A replay of the JSON line keeps it actorless.
    let line = super::json::to_value(
        &every_record()
            .into_iter()
            .find(|r| matches!(r, Record::Event(e) if e.no_actor))
            .unwrap(),
        "h",
    )
    .to_string();
    let back = crate::rules::replay::parse_line(&line, 1).unwrap().unwrap();
    assert!(back.no_actor);
}

/// The alert's OCSF finding carries the ATT&CK split, the analytic and its evidence.
#[test]
fn alert_is_a_detection_finding_with_attacks_and_evidence() {
    let a = Record::Alert(Box::new(Alert {
        rule_id: "SM-Q004".into(),
        rule_name: "x".into(),
        severity: Severity::High,
        technique: vec!["T1565.001".into(), "T1490".into()],
        message: "m".into(),
        event: fixtures::event(7),
        related_seq: vec![5],
    }));
    let v: Value = serde_json::from_slice(&super::render(Format::Ocsf, &a, "h", false)).unwrap();
    assert_eq!(
        (v["class_uid"].as_u64(), v["type_uid"].as_u64()),
        (Some(2004), Some(200401))
    );
    let at = &v["finding_info"]["attacks"];
    assert_eq!(at[0]["technique"]["uid"], "T1565");
    assert_eq!(at[0]["sub_technique"]["uid"], "T1565.001");
    assert_eq!(at[0]["tactic"]["uid"], "TA0040");
    assert_eq!(at[1]["technique"]["uid"], "T1490");
    assert!(at[1].get("sub_technique").is_none());
    assert_eq!(v["finding_info"]["analytic"]["uid"], "SM-Q004");
    assert_eq!(v["finding_info"]["related_events"][0]["uid"], "7");
    assert_eq!(v["finding_info"]["related_events"][1]["uid"], "5");
    assert_eq!(v["evidences"][0]["file"]["name"], "vm1.qcow2");
    assert_eq!(v["evidences"][0]["actor"]["process"]["pid"], 4242);
    let e: Value = serde_json::from_slice(&super::render(Format::Json, &a, "h", false)).unwrap();
    assert_eq!(e["threat"]["technique"]["id"], json!(["T1565", "T1490"]));
    assert_eq!(
        e["threat"]["technique"]["subtechnique"]["id"],
        json!(["T1565.001"])
    );
    assert_eq!(e["threat"]["tactic"]["id"], json!(["TA0040"]));
}

/// Findings of issue #17 that the validators must keep catching, on the old shapes.
#[test]
fn the_old_shapes_fail_validation() {
    let ok: Value = serde_json::from_slice(&super::render(
        Format::Json,
        &Record::Event(fixtures::event(1)),
        "h",
        false,
    ))
    .unwrap();
    let ecs = |f: &dyn Fn(&mut Value)| {
        let mut v = ok.clone();
        f(&mut v);
        snapmon_schema::ecs::validate(&v)
            .err()
            .unwrap_or_default()
            .join("; ")
    };
    assert!(ecs(&|v| { v["ecs"] = json!({}) }).contains("ecs.version"));
    assert!(ecs(&|v| {
        v["snapmon"]["metric"] = json!({"sinks": {"file:/var/log/x": {"queue_full": 1}}})
    })
    .contains("not an identifier"));
    assert!(ecs(&|v| { v["process"]["args_truncated"] = json!(true) }).contains("not an ECS field"));
    assert!(ecs(&|v| { v["event"]["type"] = json!(["denied"]) }).contains("not expected"));
    let ocsf_ok: Value = serde_json::from_slice(&super::render(
        Format::Ocsf,
        &Record::Event(fixtures::event(1)),
        "h",
        false,
    ))
    .unwrap();
    let ocsf = |f: &dyn Fn(&mut Value)| {
        let mut v = ocsf_ok.clone();
        f(&mut v);
        snapmon_schema::ocsf::validate(&v)
            .err()
            .unwrap_or_default()
            .join("; ")
    };
    assert!(ocsf(&|v| {
        v["file"].as_object_mut().unwrap().remove("name");
    })
    .contains("file.name"));
    assert!(ocsf(&|v| {
        v["metadata"]["product"]
            .as_object_mut()
            .unwrap()
            .remove("vendor_name");
    })
    .contains("vendor_name"));
    assert!(
        ocsf(&|v| { v["metadata"]["sequence"] = json!(5_000_000_000u64) }).contains("integer_t")
    );
}

/// Writes every record's ECS line to $SNAPMON_DUMP (for reviewing the custom field set).
#[test]
#[ignore = "a tool, not a check: writes every ECS line to $SNAPMON_DUMP"]
fn dump_ecs_lines() {
    let mut out = String::new();
    for r in every_record() {
        out.push_str(&String::from_utf8(super::render(Format::Json, &r, "host1", false)).unwrap());
        out.push('\n');
    }
    std::fs::write(std::env::var("SNAPMON_DUMP").unwrap(), out).unwrap();
}
