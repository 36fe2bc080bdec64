//! Rules tests: policy validation, exceptions, windows, reload, bounded state, and every
//! default rule against fixtures recorded from real tool runs.

use crate::event::Action;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use super::{
    policy::{FixedOffset, Resolver, Window},
    registry, Engine,
};
use crate::{
    classify::{Change, Classification},
    config::{ConfigError, Policy, DEFAULT_POLICY},
    event::{Ancestor, Bytes, Event, FileInfo, ProcessInfo},
    record::Severity,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules")
}

/// Identities as they were on the recording host (identities are per host).
struct Recorded(BTreeMap<String, (u32, u64)>);

impl Recorded {
    fn load() -> Recorded {
        Recorded::from_file(&fixtures().join("identities.json"))
    }

    /// A rule directory recorded on another host (the `vm-test` guest, whose root is 9p) has
    /// its own `identities.json`, which replaces the top-level one for its fixtures.
    fn for_fixture(fixture: &Path) -> Recorded {
        let own = fixture.with_file_name("identities.json");
        if own.exists() {
            Recorded::from_file(&own)
        } else {
            Recorded::load()
        }
    }

    fn from_file(path: &Path) -> Recorded {
        let text = std::fs::read_to_string(path).unwrap();
        let m: BTreeMap<String, String> = serde_json::from_str(&text).unwrap();
        Recorded(
            m.into_iter()
                .map(|(k, v)| {
                    let p: Vec<u64> = v.split(':').map(|x| x.parse().unwrap()).collect();
                    (k, (((p[0] << 20) | p[1]) as u32, p[2]))
                })
                .collect(),
        )
    }
}

impl Resolver for Recorded {
    fn identity(&self, path: &str) -> Option<(u32, u64)> {
        self.0.get(path).copied()
    }
    fn list(&self, dir: &str) -> Vec<String> {
        self.0
            .keys()
            .filter(|k| Path::new(k).parent() == Some(Path::new(dir)))
            .cloned()
            .collect()
    }
    fn sha256(&self, _: &str) -> Option<String> {
        None
    }
}

fn engine(p: &Policy) -> Engine {
    Engine::build(p, &Recorded::load(), Box::new(FixedOffset(0))).unwrap()
}

fn policy_for(fixture: &Path) -> Policy {
    let overlay = fixture.with_extension("policy.toml");
    match std::fs::read_to_string(&overlay) {
        Ok(o) if o.starts_with("# standalone") => Policy::parse(&o, "overlay").unwrap(),
        Ok(o) => Policy::parse(&format!("{DEFAULT_POLICY}\n{o}"), "overlay").unwrap(),
        Err(_) => Policy::embedded(),
    }
}

fn replay(fixture: &Path) -> Vec<crate::record::Alert> {
    let mut e = Engine::build(
        &policy_for(fixture),
        &Recorded::for_fixture(fixture),
        Box::new(FixedOffset(0)),
    )
    .unwrap();
    let f = std::fs::File::open(fixture).unwrap();
    let (alerts, st) = super::replay::run(&mut e, std::io::BufReader::new(f));
    assert!(
        st.errors.is_empty(),
        "{}: {:?}",
        fixture.display(),
        st.errors
    );
    assert!(st.events > 0, "{}: no events", fixture.display());
    alerts
}

fn jsonl(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| {
        let n = p.file_name().unwrap().to_string_lossy();
        n.starts_with(prefix) && n.ends_with(".jsonl")
    });
    v.sort();
    v
}

#[test]
fn every_default_rule_has_positive_and_negative_fixtures_that_behave() {
    let enabled = engine(&Policy::embedded()).enabled_rules();
    let mut checked = 0;
    for def in registry::RULES {
        let dir = fixtures().join(def.id);
        let (pos, neg) = (jsonl(&dir, "positive"), jsonl(&dir, "negative"));
        if enabled.contains(&def.id) {
            assert!(
                !pos.is_empty(),
                "{}: no positive fixture in {}",
                def.id,
                dir.display()
            );
            assert!(
                !neg.is_empty(),
                "{}: no negative fixture in {}",
                def.id,
                dir.display()
            );
        }
        for p in &pos {
            let a = replay(p);
            assert!(
                a.iter().any(|a| a.rule_id == def.id),
                "{} did not fire on {}: {:#?}",
                def.id,
                p.display(),
                a.iter()
                    .map(|a| (&a.rule_id, &a.message))
                    .collect::<Vec<_>>()
            );
            checked += 1;
        }
        for n in &neg {
            let a = replay(n);
            assert!(
                !a.iter().any(|a| a.rule_id == def.id),
                "{} fired on negative {}: {:#?}",
                def.id,
                n.display(),
                a.iter()
                    .filter(|a| a.rule_id == def.id)
                    .map(|a| &a.message)
                    .collect::<Vec<_>>()
            );
            checked += 1;
        }
    }
    assert!(checked >= 2 * enabled.len());
}

#[test]
fn benign_corpus_yields_nothing_at_medium_or_above() {
    let files = jsonl(&fixtures().join("benign"), "");
    assert!(files.len() >= 3);
    for f in files {
        let loud: Vec<_> = replay(&f)
            .into_iter()
            .filter(|a| a.severity >= Severity::Medium)
            .map(|a| format!("{} {}", a.rule_id, a.message))
            .collect();
        assert!(loud.is_empty(), "{}: {loud:#?}", f.display());
    }
}

#[test]
fn alerts_carry_actor_target_diff_and_related_events() {
    let a = replay(&fixtures().join("SM-Q002/positive-hide.jsonl"));
    let q = a.iter().find(|a| a.rule_id == "SM-Q002").unwrap();
    assert_eq!(q.severity, Severity::Critical);
    assert!(q.message.starts_with("python3 (← bash"), "{}", q.message);
    assert!(
        q.message.contains("set nb_snapshots 3→0 in vm1.qcow2"),
        "{}",
        q.message
    );
    assert_eq!(q.technique, vec!["T1490", "T1564"]);
    // The generic metadata rule is superseded by the specific one on the same event.
    assert!(!a.iter().any(|a| a.rule_id == "SM-Q001"));
    let a = replay(&fixtures().join("SM-Q002/positive-table-then-count.jsonl"));
    let q = a.iter().find(|a| a.rule_id == "SM-Q002").unwrap();
    assert_eq!(q.related_seq, vec![219], "{}", q.message);
    let a = replay(&fixtures().join("SM-B001/positive-qemu-img-delete-six.jsonl"));
    let b = a.iter().find(|a| a.rule_id == "SM-B001").unwrap();
    assert!(
        b.related_seq.len() >= 4 && b.message.contains("a, b, c, d, e"),
        "{}",
        b.message
    );
    let a = replay(&fixtures().join("SM-Q004/positive-backing-to-tmp.jsonl"));
    let q = a.iter().find(|a| a.rule_id == "SM-Q004").unwrap();
    assert_eq!(q.severity, Severity::Critical);
    assert!(q.message.contains("/tmp/evil.qcow2"), "{}", q.message);
}

#[test]
fn replay_skips_alert_lines_so_no_rule_fires_on_an_alert() {
    let text = std::fs::read_to_string(fixtures().join("SM-Q002/positive-hide.jsonl")).unwrap();
    let mut e = engine(&Policy::embedded());
    let (alerts, _) = super::replay::run(&mut e, text.as_bytes());
    let host = "h";
    let mut rec = String::new();
    for a in alerts {
        rec.push_str(
            &crate::sink::json::to_value(&crate::record::Record::Alert(Box::new(a)), host)
                .to_string(),
        );
        rec.push('\n');
    }
    let mut e = engine(&Policy::embedded());
    let (again, st) = super::replay::run(&mut e, rec.as_bytes());
    assert!(again.is_empty() && st.events == 0 && st.skipped > 0);
}

#[test]
fn the_agent_never_alerts_on_its_own_process() {
    let mut e = engine(&Policy::embedded());
    let ev = hide_event(4242);
    e.set_own_pid(4242);
    assert!(e.process(&ev).is_empty());
    e.set_own_pid(1);
    assert!(!e.process(&ev).is_empty());
}

#[test]
fn deduped_hits_are_dropped_and_the_next_window_gets_a_full_message() {
    let p = Policy::embedded();
    let window = p.detection.dedupe_seconds as i128 * 1_000_000_000;
    let mut e = engine(&p);
    let mut ev = hide_event(4242);
    if let Some(c) = &mut ev.classification {
        c.regions = vec!["header.l1_table_offset".into()];
        c.changes = vec![Change::new("l1_table_offset", "0x30000", "0x40000")];
    }
    let q001 = |a: Vec<crate::record::Alert>| {
        a.into_iter()
            .filter(|a| a.rule_id == "SM-Q001")
            .map(|a| a.message)
            .collect::<Vec<_>>()
    };
    let first = q001(e.process(&ev));
    assert_eq!(first.len(), 1);
    assert!(
        first[0].ends_with(
            "wrote qcow2 metadata (header) in vm1.qcow2: l1_table_offset 0x30000→0x40000"
        ),
        "{first:?}"
    );
    let deduped = e.stats.deduped;
    ev.ts_unix_ns += 1_000_000_000;
    ev.seq += 1;
    assert!(q001(e.process(&ev)).is_empty());
    assert_eq!(e.stats.deduped, deduped + 1);
    // The quiet hit still counts as fired: the more specific rule supersedes it.
    ev.seq += 1;
    let ids: Vec<_> = e
        .process(&hide_event(4242))
        .into_iter()
        .map(|a| a.rule_id)
        .collect();
    assert_eq!(ids, ["SM-Q002"]);
    ev.ts_unix_ns += window;
    ev.seq += 1;
    assert_eq!(q001(e.process(&ev)), first);
}

fn hide_event(pid: u32) -> Event {
    Event {
        seq: 1,
        ts_unix_ns: 1_795_887_000_000_000_000,
        category: crate::event::Category::File,
        ecs_type: crate::event::EventType::Change,
        action: Action::Pwrite64,
        process: ProcessInfo {
            pid,
            exe_dev: 1,
            exe_ino: 99,
            ..ProcessInfo::with_names(crate::event::ProcessNames {
                name: "python3".into(),
                executable: Bytes(b"/usr/bin/python3".to_vec()),
                ancestors: vec![Ancestor {
                    pid: 1,
                    name: "bash".into(),
                    executable: "/usr/bin/bash".into(),
                    ..Default::default()
                }]
                .into(),
                ..Default::default()
            })
        },
        file: Some(FileInfo {
            path: Some(Bytes(b"/var/lib/libvirt/images/vm1.qcow2".to_vec())),
            dev: 5,
            ino: 6,
            size: Some(1 << 20),
        }),
        classification: Some(Classification {
            format: crate::classify::Format::Qcow2,
            regions: vec!["header.nb_snapshots".into()],
            changes: vec![Change::new("nb_snapshots", "3", "0")],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn parse_err(text: &str) -> (usize, usize, String) {
    match Policy::parse(text, "p.toml") {
        Err(ConfigError::Parse { line, col, msg, .. }) => (line, col, msg),
        other => panic!("expected a positioned error for\n{text}\ngot {other:?}"),
    }
}

#[test]
fn policy_errors_point_at_line_and_column() {
    let (l, c, m) =
        parse_err("[[actor]]\nname = \"q\"\nexecutables = [\"/usr/bin/x\"]\nbogus = 1\n");
    assert_eq!((l, c), (4, 1), "{m}");
    let (l, _, m) = parse_err("[[actor]]\nname = \"q\"\nexecutables = [\"usr/bin/x\"]\n");
    assert_eq!(l, 3);
    assert!(m.contains("absolute"), "{m}");
    let (l, c, m) =
        parse_err("[[rule]]\nid = \"SM-Q001\"\nenabled = true\n\n[[rule]]\n  id = \"SM-NOPE\"\n");
    assert_eq!((l, c), (6, 8), "{m}");
    let (l, _, m) = parse_err("[[rule]]\nid = \"SM-Q001\"\nthreshold = 3\n");
    assert_eq!(l, 3);
    assert!(m.contains("not a rate rule"), "{m}");
    let (l, _, _) = parse_err("[[rule]]\nid = \"SM-B001\"\nthreshold = \"five\"\n");
    assert_eq!(l, 3);
    let (l, _, m) = parse_err("[[rule]]\nid = \"SM-Q001\"\nseverity = \"urgent\"\n");
    assert_eq!(l, 3, "{m}");
    let (l, _, m) = parse_err("[detection]\nvolatile_paths = [\"/tmp/[x\"]\n");
    assert_eq!(l, 2);
    assert!(m.contains("bad glob"), "{m}");
    let (l, _, m) =
        parse_err("[[maintenance]]\nname = \"n\"\nstart = \"03:00\"\nend = \"03:00\"\n");
    assert_eq!(l, 4);
    assert!(m.contains("empty"), "{m}");
    let (l, _, _) =
        parse_err("[[maintenance]]\nname = \"n\"\nstart = \"25:00\"\nend = \"03:00\"\n");
    assert_eq!(l, 3);
    let (l, _, _) = parse_err("[[maintenance]]\nname = \"n\"\nstart = \"01:00\"\nend = \"03:00\"\ndays = [\"mon\", \"funday\"]\n");
    assert_eq!(l, 5);
    let (l, _, m) = parse_err("[[exception]]\nrules = [\"SM-Q001\"]\nactor = \"nobody\"\n");
    assert_eq!(l, 3);
    assert!(m.contains("unknown actor"), "{m}");
    let (l, _, m) = parse_err("[[exception]]\nrules = [\"SM-Q001\"]\nexecutable = \"/x\"\nactions = [\"write\", \"explode\"]\n");
    assert_eq!(l, 4);
    assert!(m.contains("explode"), "{m}");
    let (l, _, _) =
        parse_err("[[actor]]\nname = \"q\"\npinned = [{ path = \"/x\", sha256 = \"abc\" }]\n");
    assert_eq!(l, 3);
    // The embedded default is valid and the CLI's check has no side effects to assert.
    Policy::embedded();
}

fn exception_policy(extra: &str) -> Policy {
    Policy::parse(
        &format!("[[actor]]\nname = \"backup\"\nexecutables = [\"/usr/bin/qemu-img\"]\n{extra}"),
        "p",
    )
    .unwrap()
}

#[test]
fn exceptions_match_actor_action_and_target_only() {
    let ev = hide_event(7);
    let fires = |p: &Policy| !engine(p).process(&ev).is_empty();
    assert!(fires(&exception_policy("")));
    // Executable + action + target: excepted.
    assert!(!fires(&exception_policy(
        "[[exception]]\nrules = [\"SM-Q002\"]\nexecutable = \"/usr/bin/python*\"\nactions = [\"pwrite64\"]\ntarget = \"/var/lib/libvirt/images/*.qcow2\"\n"
    )));
    // Another target, another action, another rule or another actor: still fires.
    for x in [
        "target = \"/srv/*.qcow2\"",
        "actions = [\"truncate\"]",
        "executable = \"/usr/bin/perl\"",
    ] {
        let base = "[[exception]]\nrules = [\"SM-Q002\"]\n";
        let who = if x.starts_with("executable") {
            ""
        } else {
            "executable = \"/usr/bin/python*\"\n"
        };
        assert!(
            fires(&exception_policy(&format!("{base}{who}{x}\n"))),
            "{x}"
        );
    }
    // An actor-group exception needs the identity, not the path.
    assert!(fires(&exception_policy(
        "[[exception]]\nrules = [\"SM-Q002\"]\nactor = \"backup\"\n"
    )));
}

#[test]
fn maintenance_windows_in_local_time() {
    let w = |s: &str, e: &str, days: &str| {
        let p = Policy::parse(
            &format!(
                "[[maintenance]]\nname = \"w\"\nstart = \"{s}\"\nend = \"{e}\"\ndays = [{days}]\n"
            ),
            "p",
        )
        .unwrap();
        Window::compile(&p.windows[0]).unwrap()
    };
    let n = w("03:00", "04:00", "");
    assert!(n.contains(1, 3 * 60) && n.contains(6, 3 * 60 + 59));
    assert!(!n.contains(1, 4 * 60) && !n.contains(1, 2 * 60 + 59));
    // Crossing midnight: Friday 23:00 → Saturday 01:00 belongs to Friday.
    let x = w("23:00", "01:00", "\"fri\"");
    assert!(x.contains(5, 23 * 60 + 30) && x.contains(6, 30));
    assert!(!x.contains(6, 23 * 60 + 30) && !x.contains(5, 30));
    // Injectable clock: 2026-11-28 is a Saturday; 18:10 UTC is 03:10 at +09:00.
    let t = 1_795_889_400i64; // 2026-11-28T18:10:00Z
    use super::policy::LocalTime;
    assert_eq!(FixedOffset(0).local(t), (6, 18 * 60 + 10));
    assert_eq!(FixedOffset(9 * 3600).local(t), (0, 3 * 60 + 10));
    // Host zone through localtime_r agrees with itself (smoke: no panic, sane ranges).
    let (d, m) = super::policy::HostLocalTime.local(t);
    assert!(d < 7 && m < 1440);
    // Suppression: a burst inside a window that expects it is quiet.
    let burst = fixtures().join("SM-B001/positive-qemu-img-delete-six.jsonl");
    let text = std::fs::read_to_string(&burst).unwrap();
    let mk = |win: &str| {
        let p = Policy::parse(&format!("{DEFAULT_POLICY}\n[[maintenance]]\nname = \"m\"\n{win}\nsuppress = [\"SM-B001\"]\n"), "p").unwrap();
        let mut e = engine(&p);
        super::replay::run(&mut e, text.as_bytes())
            .0
            .iter()
            .any(|a| a.rule_id == "SM-B001")
    };
    assert!(!mk("start = \"18:00\"\nend = \"19:00\""));
    assert!(mk("start = \"03:00\"\nend = \"04:00\""));
}

#[test]
fn reload_is_transactional() {
    use crate::{enrich::lineage::HeaderOnly, pipeline::Pipeline, watch::WatchSet};
    let mut pipe = Pipeline::with_lineage(
        WatchSet::default(),
        &Policy::embedded(),
        Box::new(HeaderOnly),
    );
    let before = pipe.rules.enabled_rules();
    assert!(before.contains(&"SM-Q001"));
    // A policy assembled in code with an unknown rule id: refused, old rules kept.
    let mut bad = Policy::embedded();
    bad.rules.push(toml::from_str("id = \"SM-NOPE\"").unwrap());
    assert!(pipe.reload(bad).unwrap_err().contains("SM-NOPE"));
    assert_eq!(pipe.rules.enabled_rules(), before);
    // A good one swaps.
    let good = Policy::parse("[[rule]]\nid = \"SM-Q001\"\nenabled = false\n", "p").unwrap();
    pipe.reload(good).unwrap();
    assert!(!pipe.rules.enabled_rules().contains(&"SM-Q001"));
}

#[test]
fn state_stays_bounded_under_floods() {
    let mut e = engine(&Policy::embedded());
    let base = hide_event(1);
    for i in 0..60_000u64 {
        let mut ev = base.clone();
        ev.seq = i;
        ev.ts_unix_ns += i as i128 * 1_000;
        ev.process.pid = (i % 50_000) as u32 + 2;
        let f = ev.file.as_mut().unwrap();
        f.ino = i;
        f.path = Some(Bytes(format!("/s/d{i}.qcow2").into_bytes()));
        match i % 5 {
            0 => {
                ev.action = Action::Rename;
                ev.target = Some(FileInfo {
                    path: Some(Bytes(format!("/s/d{i}.qcow2.locked").into_bytes())),
                    ..Default::default()
                });
                ev.classification = None;
            }
            1 => {
                ev.action = Action::Create;
                ev.classification = None;
            }
            2 => {
                ev.classification.as_mut().unwrap().regions = vec!["snapshot_table".into()];
            }
            3 => {
                ev.action = Action::Ioctl;
                ev.classification = Some(Classification {
                    format: crate::classify::Format::File,
                    ioctl_name: Some("FIFREEZE".into()),
                    ..Default::default()
                });
            }
            _ => {
                let c = ev.classification.as_mut().unwrap();
                c.changes
                    .push(Change::new("snapshot_removed", format!("s{i}"), ""));
            }
        }
        let _ = e.process(&ev);
    }
    let s = e.state_sizes();
    for (k, v) in s.as_object().unwrap() {
        let n = v.as_u64().unwrap() as usize;
        assert!(n <= super::ctx::STATE_CAP, "{k} = {n}");
    }
    assert!(s["freezes"].as_u64().unwrap() <= 256, "{s}");
    assert!(s["renames"].as_u64().unwrap() <= 256, "{s}");
}

/// #14's userspace side doors, replayed from real runs: a replace is named by its target and
/// how it was done, every hidden snapshot is listed, a header rewrite whose backing name lies
/// past the capture shows the name, and qemu-io's routine writes are a note, not an alarm.
#[test]
fn replaces_and_late_content_alert_like_writes_and_say_how() {
    let find = |fx: &str, rule: &str| {
        let a = replay(&fixtures().join(fx));
        a.into_iter()
            .find(|a| a.rule_id == rule)
            .unwrap_or_else(|| panic!("{rule} did not fire on {fx}"))
    };
    let q = find(
        "SM-Q002/positive-rename-doctored-copy-over.jsonl",
        "SM-Q002",
    );
    assert_eq!(q.severity, Severity::Critical);
    assert!(
        q.message.ends_with(
            "set nb_snapshots 2→0 in vm1.qcow2 by renaming vm1.qcow2 over it (hides s1, s2)"
        ),
        "{}",
        q.message
    );
    let q = find("SM-Q004/positive-header-name-past-capture.jsonl", "SM-Q004");
    assert_eq!(q.severity, Severity::Critical);
    assert!(
        q.message.contains("backing_file (none)→/dev/shm/x.qcow2"),
        "{}",
        q.message
    );
    let q = find("SM-Q005/positive-rename-junk-over.jsonl", "SM-Q005");
    assert!(
        q.message
            .contains("of vm4.qcow2 by renaming junk.bin over it (magic QFI\\xfb→"),
        "{}",
        q.message
    );
    let m = find("SM-M001/positive-sed-in-place.jsonl", "SM-M001");
    assert!(
        m.message
            .contains("replaced libvirt snapshot metadata s1.xml of domain dom1 by renaming sed"),
        "{}",
        m.message
    );
    let h = find("SM-H002/positive-mmap-fill.jsonl", "SM-H002");
    assert_eq!(h.event.action, Action::MmapSharedWrite);
    // Routine qemu-io: SM-Q001 at info, never louder.
    let a = replay(&fixtures().join("benign/replace-and-fill-routine.jsonl"));
    let io: Vec<_> = a
        .iter()
        .filter(|a| a.rule_id == "SM-Q001" && a.event.process.name == "qemu-io")
        .collect();
    assert!(
        !io.is_empty() && io.iter().all(|a| a.severity == Severity::Info),
        "{io:#?}"
    );
    assert!(
        io[0].message.contains("qemu-io is a QEMU debugging tool"),
        "{}",
        io[0].message
    );
    // The same tool through the raw driver is a header edit.
    let q = find("SM-Q001/positive-qemu-io-raw.jsonl", "SM-Q001");
    assert_eq!(q.severity, Severity::High, "{}", q.message);
}

#[test]
fn memfd_and_deleted_programs_are_named_by_what_they_run() {
    for (exe, named) in [
        (&b"/memfd:evil (deleted)"[..], "memfd:evil (← bash)"),
        (b"/tmp/.x/tool (deleted)", "/tmp/.x/tool (deleted) (← bash)"),
        (b"/usr/bin/python3", "3 (← bash)"),
    ] {
        let mut ev = hide_event(4242);
        // fexecve: the kernel names the task after the descriptor (`/dev/fd/3`).
        ev.process.name = "3".into();
        ev.process.executable = Bytes(exe.to_vec());
        let a = engine(&Policy::embedded()).process(&ev);
        let q = a.iter().find(|a| a.rule_id == "SM-Q002").unwrap();
        assert!(q.message.starts_with(named), "{}", q.message);
    }
}

#[test]
fn every_hidden_snapshot_is_named_up_to_a_bound() {
    let mut e = engine(&Policy::embedded());
    let mut ev = hide_event(4242);
    let c = ev.classification.as_mut().unwrap();
    c.changes = vec![Change::new("nb_snapshots", "70", "0")];
    for i in 0..70 {
        c.changes
            .push(Change::new("snapshot_removed", format!("s{i}"), ""));
    }
    let a = e.process(&ev);
    let q = a.iter().find(|a| a.rule_id == "SM-Q002").unwrap();
    assert!(
        q.message.contains("s0, s1, s2, s3, s4, s5, s6, s7"),
        "{}",
        q.message
    );
    assert!(q.message.contains(", s63 and 6 more)"), "{}", q.message);
}

/// SM-H002's metadata directories are matched in the path's bytes, so a name that is not
/// UTF-8 under one is still seen, and an image under a store is not.
#[test]
fn a_qcow2_in_a_metadata_directory_is_disguised_whatever_its_bytes() {
    let h002 = |path: &[u8]| {
        let mut e = engine(&Policy::embedded());
        let mut ev = hide_event(4242);
        ev.file.as_mut().unwrap().path = Some(Bytes(path.to_vec()));
        let a = e.process(&ev);
        a.into_iter()
            .find(|a| a.rule_id == "SM-H002")
            .map(|a| a.message)
    };
    for p in [
        &b"/var/lib/libvirt/qemu/snapshot/vm1.qcow2"[..],
        b"/var/lib/libvirt/qemu/checkpoint/\xffvm1.qcow2",
        b"/etc/lvm/\xfe\xff/vm1.qcow2",
    ] {
        let m = h002(p).unwrap_or_else(|| panic!("no SM-H002 for {p:?}"));
        assert!(m.contains("metadata directory"), "{m}");
    }
    assert_eq!(h002(b"/var/lib/libvirt/images/vm1.qcow2"), None);
    assert_eq!(h002(b"/var/lib/libvirt/qemu/snapshotx/vm1.qcow2"), None);
}

/// Renames whose names the kernel cut (unresolved, marked `path_truncated`): the cut name has
/// lost its extension, and SM-R001 must not take that for "not an image".
#[test]
fn renames_to_cut_names_count_as_image_renames_and_whole_ones_are_judged_as_before() {
    let renames = |src: &dyn Fn(u64) -> String, dst: &dyn Fn(u64) -> String, cut: &str| {
        let mut e = engine(&Policy::embedded());
        let mut fired = vec![];
        for i in 0..6u64 {
            let mut ev = hide_event(4242);
            ev.seq = i + 1;
            ev.ts_unix_ns += i as i128 * 1_000_000;
            ev.action = Action::Rename;
            ev.classification = None;
            ev.file.as_mut().unwrap().ino = 100 + i;
            ev.file.as_mut().unwrap().path = Some(Bytes(src(i).into_bytes()));
            ev.target = Some(FileInfo {
                path: Some(Bytes(dst(i).into_bytes())),
                ..Default::default()
            });
            if !cut.is_empty() {
                ev.detail
                    .push((crate::event::DetailKey::PathTruncated, cut.to_string()));
            }
            fired.extend(e.process(&ev).into_iter().map(|a| a.rule_id));
        }
        fired.contains(&"SM-R001".to_string())
    };
    let long = "x".repeat(200);
    let img = |i: u64| format!("/s/d{i}.qcow2");
    let cut_dst = |i: u64| format!("/s/d{i}-{long}…");
    let cut_src = |i: u64| format!("/s/{long}-{i}…");
    assert!(renames(&img, &cut_dst, "target"), "image → cut name");
    assert!(renames(&cut_src, &cut_dst, "file,target"), "cut → cut");
    assert!(
        renames(&cut_src, &|i| format!("/s/d{i}.locked"), "file"),
        "cut → non-image name"
    );
    // Whole names: as before (and the same bytes unmarked are whole names).
    assert!(renames(&img, &|i| format!("/s/d{i}.qcow2.locked"), ""));
    assert!(!renames(&img, &|i| format!("/s/e{i}.qcow2"), ""));
    assert!(
        !renames(&cut_src, &cut_dst, ""),
        "unmarked, `…` ends a name"
    );
    assert!(!renames(&cut_src, &img, "file"), "cut → image name");
}

/// nobody's python renaming `vm{i}.qcow2` to `.locked`, child of one shell (SM-R001's key).
fn rename_event(i: u64) -> Event {
    let mut ev = hide_event(5000 + i as u32);
    ev.seq = 100 + i;
    ev.ts_unix_ns += i as i128 * 1_000_000_000;
    ev.action = Action::Rename;
    ev.classification = None;
    ev.process.ancestors = vec![Ancestor {
        pid: 777,
        name: "bash".into(),
        executable: "/usr/bin/bash".into(),
        ..Default::default()
    }]
    .into();
    let f = ev.file.as_mut().unwrap();
    f.ino = 1000 + i;
    f.path = Some(Bytes(format!("/s/vm{i}.qcow2").into_bytes()));
    ev.target = Some(FileInfo {
        path: Some(Bytes(format!("/s/vm{i}.qcow2.locked").into_bytes())),
        ..Default::default()
    });
    ev
}

fn r001(alerts: &[crate::record::Alert]) -> bool {
    alerts.iter().any(|a| a.rule_id == "SM-R001")
}

/// Three renames, a reload to `after` (inheriting or not), two more: did SM-R001 fire?
fn renames_across_reload(after: &Policy, inherit: bool) -> bool {
    let mut e = engine(&Policy::embedded());
    for i in 0..3 {
        assert!(!r001(&e.process(&rename_event(i))));
    }
    let mut new = engine(after);
    if inherit {
        new.inherit(e);
    }
    (3..5).any(|i| r001(&new.process(&rename_event(i))))
}

#[test]
fn a_reload_keeps_the_windows_of_unchanged_rules() {
    // Without carry-over the window restarts: what a SIGHUP between renames used to buy.
    assert!(!renames_across_reload(&Policy::embedded(), false));
    assert!(renames_across_reload(&Policy::embedded(), true));
    // An unrelated change (another rule's severity) keeps SM-R001's window too.
    let other = Policy::parse("[[rule]]\nid = \"SM-Q001\"\nseverity = \"low\"\n", "p").unwrap();
    assert!(renames_across_reload(&other, true));
    // A changed threshold restarts it: 3 + 2 under 4 would fire if the 3 were kept.
    let changed = Policy::parse("[[rule]]\nid = \"SM-R001\"\nthreshold = 4\n", "p").unwrap();
    assert!(!renames_across_reload(&changed, true));
}

#[test]
fn a_reload_keeps_an_open_freeze_and_dedupe_by_rule_not_index() {
    let mut e = engine(&Policy::embedded());
    let hide = hide_event(4242);
    assert!(e.process(&hide).iter().any(|a| a.rule_id == "SM-Q002"));
    let mut freeze = hide_event(4243);
    freeze.action = Action::Ioctl;
    freeze.classification = Some(Classification {
        format: crate::classify::Format::File,
        ioctl_name: Some("FIFREEZE".into()),
        ..Default::default()
    });
    let _ = e.process(&freeze);
    let evaluated = e.stats.evaluated;
    // SM-Q001 off: every later rule's index shifts by one.
    let p = Policy::parse("[[rule]]\nid = \"SM-Q001\"\nenabled = false\n", "p").unwrap();
    let mut new = engine(&p);
    new.inherit(e);
    assert_eq!(new.stats.evaluated, evaluated);
    let mut again = hide.clone();
    again.seq += 10;
    again.ts_unix_ns += 1_000_000_000;
    assert!(new.process(&again).is_empty(), "the same finding again");
    assert_eq!(new.stats.deduped, 1);
    // The freeze from before the reload is never thawed: SM-K004 when its window ends.
    let k004 = new.expire(freeze.ts_unix_ns + 3_600 * 1_000_000_000);
    assert_eq!(
        k004.iter().map(|a| a.rule_id.as_str()).collect::<Vec<_>>(),
        ["SM-K004"]
    );
}

/// SM-L001 fires once per process, not once per pid: a reused pid (a new process) is judged
/// afresh. Keyed by pid alone, a second `qemu-img` in a container that drew an earlier hit's
/// pid went unreported.
#[test]
fn unusual_lineage_is_once_per_process_not_per_pid() {
    let fx = fixtures().join("SM-L001/positive-qemu-img-in-docker-cgroup.jsonl");
    let text = std::fs::read_to_string(&fx).unwrap();
    let mut e = engine(&policy_for(&fx));
    let l001 = |e: &mut Engine, ev: &Event| {
        e.process(ev)
            .into_iter()
            .filter(|a| a.rule_id == "SM-L001")
            .count()
    };
    let evs: Vec<Event> = text
        .lines()
        .enumerate()
        .filter_map(|(n, l)| super::replay::parse_line(l, n + 1).unwrap())
        .collect();
    let mut hit = None;
    for ev in &evs {
        if l001(&mut e, ev) > 0 {
            hit = Some(ev.clone());
            break;
        }
    }
    let mut ev = hit.expect("the positive fixture raises SM-L001");
    ev.seq += 100;
    assert_eq!(l001(&mut e, &ev), 0, "the same process twice");
    ev.process.start_ns += 1;
    ev.seq += 1;
    assert_eq!(l001(&mut e, &ev), 1, "a new process on the same pid");
}

/// The trust remembered for a process build is never another build's: a pid reused by an
/// untrusted program (a new build, a new revision) or an unnumbered process is judged afresh.
#[test]
fn remembered_trust_belongs_to_one_build() {
    let mut e = engine(&Policy::embedded());
    let (dev, ino) = Recorded::load().identity("/usr/bin/qemu-img").unwrap();
    let mut qemu = hide_event(10).process;
    (qemu.exe_dev, qemu.exe_ino, qemu.revision) = (dev, ino, 7);
    let mut other = hide_event(10).process;
    other.revision = 8;
    assert!(e.trust_for(&qemu).by("qemu"));
    assert!(e.trust_for(&qemu).by("qemu"), "remembered");
    assert!(
        !e.trust_for(&other).by("qemu"),
        "the pid's next build got the last one's trust"
    );
    (qemu.revision, other.revision) = (0, 0);
    assert!(e.trust_for(&qemu).by("qemu"));
    assert!(
        !e.trust_for(&other).by("qemu"),
        "an unnumbered process got the last one's trust"
    );
    assert!(e.trust_for(&qemu).by("qemu"));
}

/// SM-K006 trusts qemu-nbd by who started it: the recorded export (root's shell) re-parented
/// to each launcher. libvirt's daemons are the `nbd` group; systemd is not (any root shell
/// can `systemd-run qemu-nbd`), nor is the shell it was recorded from.
#[test]
fn k006_trusts_qemu_nbd_started_by_libvirt_not_by_systemd_or_a_shell() {
    let text = std::fs::read_to_string(
        fixtures().join("SM-K006/positive-root-shell-qemu-nbd-export.jsonl"),
    )
    .unwrap();
    let k006 = |parent: &str| {
        let lines: String = text
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["process"]["parent"]["executable"] = parent.into();
                format!("{v}\n")
            })
            .collect();
        let mut e = engine(&Policy::embedded());
        let (alerts, st) = super::replay::run(&mut e, lines.as_bytes());
        assert!(st.errors.is_empty() && st.events > 0, "{:?}", st.errors);
        alerts.iter().filter(|a| a.rule_id == "SM-K006").count()
    };
    assert_eq!(k006("/usr/bin/bash"), 1);
    assert_eq!(k006("/usr/lib/systemd/systemd"), 1);
    assert_eq!(k006("/usr/sbin/libvirtd"), 0);
    assert_eq!(k006("/usr/sbin/virtqemud"), 0);
}
