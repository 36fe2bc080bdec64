//! Rules stage, offline: `snapmon replay` reads the agent's own `--format json` output back
//! into [`Event`]s (the inverse of `sink::json`) and runs the rules over them. Alert, state
//! and metric lines are skipped, so replaying a log that already holds alerts cannot make a
//! rule fire on an alert. Write samples are not in the JSON; rules use classification fields.

use std::io::BufRead;

use serde_json::Value;

use crate::{
    classify::{Change, Classification, Format},
    event::{
        Action, Ancestor, Bytes, Category, DetailKey, Event, EventType, FallocMode, FileInfo,
        IoctlRaw, ProcessInfo, ProcessNames, WriteInfo, WriteOp,
    },
    record::Alert,
};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("line {line}: not JSON: {msg}")]
    Json { line: usize, msg: String },
    #[error("line {line}: {msg}")]
    Shape { line: usize, msg: String },
}

/// Undo `event::escape_bytes`: `\xNN` → byte, `\\` → `\`.
pub fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
            match s
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => {
                    out.push(v);
                    i += 4;
                }
                None => {
                    out.push(b[i]);
                    i += 1;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// RFC 3339 UTC (`2026-11-28T18:02:11.482113000Z`) → Unix nanoseconds.
pub fn parse_rfc3339(s: &str) -> Option<i128> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let (y, m, dd): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':');
    let (h, mi, se): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&dd) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nanos: i128 = format!("{frac:0<9}").parse().ok()?;
    // Howard Hinnant's days_from_civil.
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days as i128 * 86_400 + (h * 3600 + mi * 60 + se) as i128) * 1_000_000_000 + nanos)
}

/// `MAJOR:MINOR` → kernel dev (`MAJOR << 20 | MINOR`).
fn parse_dev(s: &str) -> Option<u32> {
    let (a, b) = s.split_once(':')?;
    let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
    (a < 4096 && b < (1 << 20)).then_some((a << 20) | b)
}

fn u64_of(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn hex_or_display(display: &Value, hex: &Value) -> Option<Bytes> {
    if let Some(h) = hex.as_str() {
        if let Ok(b) = hex::decode(h) {
            return Some(Bytes(b));
        }
    }
    display.as_str().map(|s| Bytes(unescape(s)))
}

fn ancestor(v: &Value) -> Ancestor {
    Ancestor {
        pid: u64_of(&v["pid"]).unwrap_or(0) as u32,
        name: str_of(&v["name"]).to_string(),
        executable: str_of(&v["executable"]).to_string(),
        entity_id: str_of(&v["entity_id"]).to_string(),
    }
}

/// Err: the message for an unknown `format`.
fn classification(c: &Value) -> Result<Classification, String> {
    // "" (`Format::Unset`) is what an unclassified one carries.
    let format = str_of(&c["format"]);
    let format = format
        .parse::<Format>()
        .map_err(|_| format!("unknown snapmon.classification.format `{format}`"))?;
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(Classification {
        format,
        regions: strs(&c["regions"]),
        changes: c["changes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        Change::new(
                            str_of(&x["field"]),
                            str_of(&x["before"]),
                            str_of(&x["after"]),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        ioctl: c.get("ioctl").filter(|v| !v.is_null()).cloned(),
        ioctl_name: c["ioctl_name"].as_str().map(String::from),
        snapshot_destructive: c["snapshot_destructive"].as_bool().unwrap_or(false),
        snapshot_create: c["snapshot_create"].as_bool().unwrap_or(false),
        sample_entropy: c["sample_entropy"].as_f64(),
        facts: c["facts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| {
                        Some((
                            f.get(0)?.as_str()?.to_string(),
                            f.get(1)?.as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Ancestries seen so far, by process entity id: a lean event (no `snapmon.process.ancestors`,
/// the file carried them in an earlier record of the same process) gets them back from here.
#[derive(Debug, Default)]
pub struct Ancestries(std::collections::HashMap<String, std::sync::Arc<Vec<Ancestor>>>);

/// One JSON line → an event; `Ok(None)` for lines that are not events (alerts, state …).
pub fn parse_line(line: &str, n: usize) -> Result<Option<Event>, ReplayError> {
    parse_line_with(line, n, &mut Ancestries::default())
}

/// [`parse_line`] within a recording: ancestries are remembered for the lean lines after.
pub fn parse_line_with(
    line: &str,
    n: usize,
    seen: &mut Ancestries,
) -> Result<Option<Event>, ReplayError> {
    let v: Value = serde_json::from_str(line).map_err(|e| ReplayError::Json {
        line: n,
        msg: e.to_string(),
    })?;
    if !v.is_object() {
        return Err(ReplayError::Shape {
            line: n,
            msg: "not a JSON object".into(),
        });
    }
    if v["event"]["kind"] != "event" {
        return Ok(None);
    }
    let shape = |msg: &str| ReplayError::Shape {
        line: n,
        msg: msg.into(),
    };
    let ts = parse_rfc3339(str_of(&v["@timestamp"])).ok_or_else(|| shape("bad @timestamp"))?;
    let e = &v["event"];
    let sm = &v["snapmon"];
    let p = &v["process"];
    let sp = &sm["process"];
    let first = |x: &Value| x.get(0).and_then(|s| s.as_str()).unwrap_or("").to_string();
    let names = ProcessNames {
        name: str_of(&p["name"]).to_string(),
        executable: Bytes(unescape(str_of(&p["executable"]))),
        args: p["args"]
            .as_array()
            .map(|a| a.iter().map(|x| Bytes(unescape(str_of(x)))).collect())
            .unwrap_or_default(),
        entity_id: str_of(&p["entity_id"]).to_string(),
        cwd: p["working_directory"].as_str().map(|s| Bytes(unescape(s))),
        container_id: v["container"]["id"].as_str().map(String::from),
        systemd_unit: sp["systemd_unit"].as_str().map(String::from),
        vm_name: sp["vm"]["name"].as_str().map(String::from),
        vm_uuid: sp["vm"]["uuid"].as_str().map(String::from),
        ancestors: match sp["ancestors"].as_array() {
            Some(a) => {
                let a: std::sync::Arc<Vec<Ancestor>> =
                    a.iter().map(ancestor).collect::<Vec<_>>().into();
                let id = str_of(&p["entity_id"]);
                if !id.is_empty() {
                    // Bounded against a hostile recording; a lean line after the reset
                    // replays with no ancestry, as a recording of schema 1 might.
                    if seen.0.len() >= 65_536 {
                        seen.0.clear();
                    }
                    seen.0.insert(id.to_string(), a.clone());
                }
                a
            }
            None => seen
                .0
                .get(str_of(&p["entity_id"]))
                .cloned()
                .unwrap_or_default(),
        },
        ..Default::default()
    };
    let mut process = ProcessInfo {
        pid: u64_of(&p["pid"]).unwrap_or(0) as u32,
        tid: u64_of(&p["thread"]["id"]).unwrap_or(0) as u32,
        ppid: u64_of(&p["parent"]["pid"]).unwrap_or(0) as u32,
        // Schema 2 moved it under `snapmon.process`; recordings of schema 1 still replay.
        args_truncated: sp["args_truncated"]
            .as_bool()
            .or(p["args_truncated"].as_bool())
            .unwrap_or(false),
        uid: u64_of(&p["user"]["id"]).unwrap_or(0) as u32,
        gid: u64_of(&p["group"]["id"]).unwrap_or(0) as u32,
        ..ProcessInfo::with_names(names)
    };
    if p["parent"]["name"].is_string() {
        process.parent = Some(ancestor(&p["parent"]));
    }
    if let (Some(d), Some(i)) = (
        sp["executable_identity"]["device"]
            .as_str()
            .and_then(parse_dev),
        u64_of(&sp["executable_identity"]["inode"]),
    ) {
        process.exe_dev = d;
        process.exe_ino = i;
    }
    let file_of = |f: &Value, hex: &Value| -> Option<FileInfo> {
        if !f.is_object() {
            return None;
        }
        Some(FileInfo {
            path: hex_or_display(&f["path"], hex),
            dev: f["device"].as_str().and_then(parse_dev).unwrap_or(0),
            ino: u64_of(&f["inode"]).unwrap_or(0),
            size: f["size"].as_u64(),
        })
    };
    let file = file_of(&v["file"], &sm["file_path_hex"]);
    // Rename/link destination: `snapmon.destination` (schema 2) or `file.target_path` (1).
    let dest = &sm["destination"];
    let target = if dest.is_object() {
        hex_or_display(&dest["path"], &dest["path_hex"])
    } else {
        hex_or_display(&v["file"]["target_path"], &sm["file_target_path_hex"])
    }
    .map(|p| FileInfo {
        path: Some(p),
        ..Default::default()
    });
    let write = sm["write"].as_object().map(|w| WriteInfo {
        // Write ops, modes and detail keys this build does not know parse to their `Unknown`
        // (`vocab`): kept as written, so the event still replays and renders back unchanged.
        op: WriteOp::from_name(w.get("op").and_then(|x| x.as_str()).unwrap_or("")),
        offset: w.get("offset").and_then(|x| x.as_i64()).unwrap_or(-1),
        length: w.get("length").and_then(|x| x.as_u64()).unwrap_or(0),
        offset_from_fpos: w
            .get("offset_from_fpos")
            .and_then(|x| x.as_bool())
            .unwrap_or(false),
        length_partial: w
            .get("length_partial")
            .and_then(|x| x.as_bool())
            .unwrap_or(false),
        mode: w
            .get("mode")
            .and_then(|m| m.as_array())
            .map(|a| a.iter().map(|x| FallocMode::from_name(str_of(x))).collect())
            .unwrap_or_default(),
        data: Vec::new(),
    });
    let hexnum = |x: &Value| {
        x.as_str()
            .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
            .unwrap_or(0)
    };
    let ioctl = sm["ioctl"].as_object().map(|i| IoctlRaw {
        cmd: hexnum(i.get("cmd").unwrap_or(&Value::Null)) as u32,
        arg: hexnum(i.get("arg").unwrap_or(&Value::Null)),
        arg_data: Vec::new(),
    });
    let detail = sm["detail"]
        .as_object()
        .map(|d| {
            d.iter()
                .map(|(k, x)| {
                    (
                        DetailKey::from_name(k),
                        x.as_str()
                            .map(String::from)
                            .unwrap_or_else(|| x.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    // The rules index events by action: one this agent does not know is refused, not guessed.
    let action = str_of(&e["action"]);
    let action = action
        .parse::<Action>()
        .ok()
        .filter(|a| *a != Action::Unset)
        .ok_or_else(|| shape(&format!("unknown event.action `{action}`")))?;
    let backend = str_of(&sm["backend"]);
    let backend = snapmon_common::Backend::from_name(backend)
        .ok_or_else(|| shape(&format!("unknown snapmon.backend `{backend}`")))?;
    // `Unset` ("") is no value: a missing field is an error too.
    let category = first(&e["category"]);
    let category = category
        .parse::<Category>()
        .ok()
        .filter(|c| *c != Category::Unset)
        .ok_or_else(|| shape(&format!("unknown event.category `{category}`")))?;
    let ecs_type = first(&e["type"]);
    let ecs_type = ecs_type
        .parse::<EventType>()
        .ok()
        .filter(|t| *t != EventType::Unset)
        .ok_or_else(|| shape(&format!("unknown event.type `{ecs_type}`")))?;
    Ok(Some(Event {
        seq: u64_of(&e["sequence"]).unwrap_or(0),
        ts_unix_ns: ts,
        ts_boot_ns: 0,
        category,
        ecs_type,
        action,
        backend,
        process,
        // The agent's own observation: written with no `process` at all.
        no_actor: !p.is_object(),
        file,
        target,
        write,
        ioctl,
        detail,
        classification: sm["classification"]
            .is_object()
            .then(|| classification(&sm["classification"]))
            .transpose()
            .map_err(|m| shape(&m))?,
    }))
}

/// What a replay saw.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReplayStats {
    pub lines: usize,
    pub events: usize,
    pub skipped: usize,
    pub errors: Vec<String>,
}

/// Run an engine over JSON Lines. Bad lines are reported and skipped, never fatal.
pub fn run(engine: &mut super::Engine, input: impl BufRead) -> (Vec<Alert>, ReplayStats) {
    let mut alerts = Vec::new();
    let mut st = ReplayStats::default();
    let mut seen = Ancestries::default();
    for (i, line) in input.lines().enumerate() {
        let Ok(line) = line else {
            st.errors.push(format!("line {}: unreadable", i + 1));
            break;
        };
        if line.trim().is_empty() {
            continue;
        }
        st.lines += 1;
        match parse_line_with(&line, i + 1, &mut seen) {
            Ok(Some(ev)) => {
                st.events += 1;
                alerts.extend(engine.process(&ev));
            }
            Ok(None) => st.skipped += 1,
            Err(e) => {
                if st.errors.len() < 100 {
                    st.errors.push(e.to_string());
                }
            }
        }
    }
    (alerts, st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{record::Record, sink::json::to_value};

    #[test]
    fn timestamps_round_trip() {
        for ns in [0i128, 951_782_400_000_000_001, 1_795_887_000_123_000_000] {
            let s = crate::clock::rfc3339(ns);
            assert_eq!(parse_rfc3339(&s), Some(ns), "{s}");
        }
        assert_eq!(parse_rfc3339("garbage"), None);
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00.0Z"), None);
    }

    #[test]
    fn an_unknown_or_missing_action_is_an_error_naming_the_line() {
        let line = |a: &str| {
            format!(
                r#"{{"@timestamp":"2026-11-28T18:02:11.482113000Z","event":{{"kind":"event","category":["file"],"type":["change"],"action":{a}}},"snapmon":{{"backend":"lsm"}}}}"#
            )
        };
        for a in [r#""explode""#, r#""""#, "null", "7"] {
            let e = parse_line(&line(a), 3).unwrap_err().to_string();
            assert!(e.starts_with("line 3: unknown event.action `"), "{a}: {e}");
        }
        let ok = parse_line(&line(r#""punch_hole""#), 1).unwrap().unwrap();
        assert_eq!(ok.action, Action::PunchHole);
        assert_eq!(ok.backend, snapmon_common::Backend::Lsm);
        let e = parse_line(&line(r#""write""#).replace("lsm", "ebpf"), 4)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "line 4: unknown snapmon.backend `ebpf`");
    }

    #[test]
    fn an_unknown_or_missing_category_or_type_is_an_error_naming_the_line() {
        let line = |c: &str, t: &str| {
            format!(
                r#"{{"@timestamp":"2026-11-28T18:02:11.482113000Z","event":{{"kind":"event","category":{c},"type":{t},"action":"exit"}},"snapmon":{{"backend":"lsm"}}}}"#
            )
        };
        for c in [r#"["device"]"#, r#"[""]"#, "[]", "null", r#""process""#] {
            let e = parse_line(&line(c, r#"["end"]"#), 5)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("line 5: unknown event.category `"),
                "{c}: {e}"
            );
        }
        for t in [r#"["ended"]"#, "[]", r#"[7]"#] {
            let e = parse_line(&line(r#"["process"]"#, t), 6)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("line 6: unknown event.type `"), "{t}: {e}");
        }
        let ok = parse_line(&line(r#"["process"]"#, r#"["end"]"#), 1)
            .unwrap()
            .unwrap();
        assert_eq!(
            (ok.category, ok.ecs_type),
            (Category::Process, EventType::End)
        );
        let e = parse_line(&line(r#"["File"]"#, r#"["end"]"#), 2)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "line 2: unknown event.category `File`");
    }

    #[test]
    fn an_unknown_classification_format_is_an_error_naming_the_line() {
        let line = |f: &str| {
            format!(
                r#"{{"@timestamp":"2026-11-28T18:02:11.482113000Z","event":{{"kind":"event","category":["file"],"type":["change"],"action":"pwrite64"}},"snapmon":{{"backend":"lsm","classification":{{"format":{f}}}}}}}"#
            )
        };
        let e = parse_line(&line(r#""vmdk""#), 8).unwrap_err().to_string();
        assert_eq!(e, "line 8: unknown snapmon.classification.format `vmdk`");
        for (f, want) in [
            (r#""lvm-backup""#, Format::LvmBackup),
            (r#""file""#, Format::File),
            // An unclassified one carries no name.
            (r#""""#, Format::Unset),
        ] {
            let ok = parse_line(&line(f), 1).unwrap().unwrap();
            assert_eq!(ok.classification.unwrap().format, want, "{f}");
        }
    }

    #[test]
    fn json_round_trips_to_an_equivalent_event() {
        let ev = Event {
            seq: 9,
            ts_unix_ns: 1_795_887_000_123_000_000,
            category: Category::File,
            ecs_type: EventType::Change,
            action: Action::Pwrite64,
            backend: snapmon_common::Backend::Tracepoint,
            process: ProcessInfo {
                pid: 7,
                exe_dev: (254 << 20) | 1,
                exe_ino: 42,
                ..ProcessInfo::with_names(ProcessNames {
                    name: "python3".into(),
                    executable: Bytes(b"/usr/bin/python3".to_vec()),
                    ancestors: vec![Ancestor {
                        pid: 6,
                        name: "bash".into(),
                        executable: "/usr/bin/bash".into(),
                        entity_id: String::new(),
                    }]
                    .into(),
                    ..Default::default()
                })
            },
            file: Some(FileInfo {
                path: Some(Bytes(b"/s/a\\b\x01\xffc".to_vec())),
                dev: 8 << 20,
                ino: 3,
                size: Some(10),
            }),
            write: Some(WriteInfo {
                op: WriteOp::Pwrite64,
                offset: 60,
                length: 4,
                mode: vec![FallocMode::KeepSize, FallocMode::from_name("newer_bit")],
                ..Default::default()
            }),
            detail: vec![
                (DetailKey::LoopDevice, "/dev/loop0".into()),
                (DetailKey::from_name("newer_key"), "x".into()),
            ],
            classification: Some(Classification {
                format: Format::Qcow2,
                regions: vec!["header.nb_snapshots".into()],
                changes: vec![Change::new("nb_snapshots", "3", "0")],
                facts: vec![("k".into(), "v".into())],
                ..Default::default()
            }),
            target: Some(FileInfo {
                path: Some(Bytes(b"/s/.hidden\xfe".to_vec())),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut ev = ev;
        ev.process.args_truncated = true;
        let line = to_value(&Record::Event(ev.clone()), "h").to_string();
        // Schema 1's shape of the same event still replays.
        let mut old: Value = serde_json::from_str(&line).unwrap();
        old["file"]["target_path"] = old["snapmon"]["destination"]["path"].take();
        old["snapmon"]["file_target_path_hex"] = old["snapmon"]["destination"]["path_hex"].take();
        old["snapmon"]
            .as_object_mut()
            .unwrap()
            .remove("destination");
        old["process"]["args_truncated"] = old["snapmon"]["process"]["args_truncated"].take();
        let from_old = parse_line(&old.to_string(), 1).unwrap().unwrap();
        assert_eq!(
            from_old.target.unwrap().path,
            ev.target.as_ref().unwrap().path
        );
        assert!(from_old.process.args_truncated);
        let back = parse_line(&line, 1).unwrap().unwrap();
        assert_eq!(
            back.file.as_ref().unwrap().path,
            ev.file.as_ref().unwrap().path
        );
        assert_eq!(
            (back.process.exe_dev, back.process.exe_ino),
            ((254 << 20) | 1, 42)
        );
        assert_eq!(back.process.ancestors[0].name, "bash");
        assert_eq!(back.ts_unix_ns, ev.ts_unix_ns);
        let c = back.classification.unwrap();
        assert_eq!(
            (c.format.as_str(), c.changes[0].after.as_str()),
            ("qcow2", "0")
        );
        assert_eq!(c.facts, vec![("k".to_string(), "v".to_string())]);
        // Same JSON again: the inverse is exact for everything the sink writes.
        let again = to_value(&Record::Event(parse_line(&line, 1).unwrap().unwrap()), "h");
        assert_eq!(again, serde_json::from_str::<Value>(&line).unwrap());
    }

    #[test]
    fn words_this_build_does_not_know_are_kept_as_written() {
        let line = r#"{"@timestamp":"2026-11-28T18:02:11.482113000Z","event":{"kind":"event","category":["file"],"type":["change"],"action":"fallocate"},"snapmon":{"backend":"tracepoint","write":{"op":"io_uring_fallocate2","mode":["keep_size","future_bit"]},"detail":{"via":"lsm","future_key":"7"}}}"#;
        let ev = parse_line(line, 1).unwrap().unwrap();
        let w = ev.write.as_ref().unwrap();
        assert_eq!(w.op, WriteOp::Unknown("io_uring_fallocate2".into()));
        assert_eq!(
            w.mode,
            [
                FallocMode::KeepSize,
                FallocMode::Unknown("future_bit".into())
            ]
        );
        assert_eq!(ev.detail_value(DetailKey::Via), Some("lsm"));
        assert_eq!(
            ev.detail_value(DetailKey::Unknown("future_key".into())),
            Some("7")
        );
        let back = to_value(&Record::Event(ev), "h");
        assert_eq!(back["snapmon"]["write"]["op"], "io_uring_fallocate2");
        assert_eq!(back["snapmon"]["write"]["mode"][1], "future_bit");
        assert_eq!(back["snapmon"]["detail"]["future_key"], "7");
    }

    #[test]
    fn hostile_lines_are_errors_not_panics() {
        for l in [
            "", "{", "[]", "42", "null", "{\"event\":{\"kind\":\"event\"}}",
            "{\"event\":{\"kind\":\"event\"},\"@timestamp\":\"2026-01-01T00:00:00.x9Z\"}",
            "{\"event\":{\"kind\":\"event\",\"action\":[1]},\"@timestamp\":\"2026-01-01T00:00:00.1Z\",\"file\":{\"device\":\"99999:1\",\"inode\":-1},\"snapmon\":{\"file_path_hex\":\"zz\",\"ioctl\":{\"cmd\":\"0xzz\"},\"classification\":{\"changes\":[1,{}],\"facts\":[[1],[\"a\"]]}}}",
            "{\"event\":{\"kind\":\"alert\"}}",
        ] {
            let _ = parse_line(l, 1);
        }
        assert!(matches!(
            parse_line("{\"event\":{\"kind\":\"alert\"}}", 1),
            Ok(None)
        ));
        assert_eq!(unescape("a\\x0"), b"a\\x0");
        assert_eq!(unescape("\\x01\\\\"), b"\x01\\");
    }
}
