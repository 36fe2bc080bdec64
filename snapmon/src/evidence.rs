//! Evidence: when a high or critical rule fires on a qcow2 image, save what the agent knew
//! of it before (the shadow header, snapshot-table entries, L1 locations) and what is on
//! disk now, in a private directory, and log each file's SHA-256 in an `evidence` record.
//! The record rides the log's hash chain, so `verify-log` also proves the files unchanged.

use std::{
    collections::VecDeque,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::{
    classify::{
        qcow2::{Qcow2Header, Qcow2Image, Qcow2Shadow},
        Classifier,
    },
    config::EvidenceSection,
    record::{Alert, Record, Severity, StateRecord},
};

/// The key of the file list in an `evidence` record: what `verify-log` looks for.
pub const FILES_KEY: &str = "evidence_files";
/// Most captures per minute (an attacker hitting many images must not fill the disk or
/// hold the event loop).
const PER_MINUTE: u32 = 60;
/// Most reads of an image per minute, saved or found the same: each costs a read of the
/// image's metadata and a hash (~250 µs), on the event loop. A flood of alerts must not
/// turn into a flood of reads (seen: 5 000 alerts/s took 107% CPU, p99 latency 2 s).
const READS_PER_MINUTE: u32 = 600;
/// Recent attempts remembered by their in-memory state, so a state seen again costs a
/// compare, not a read (two alternating states fit).
const RECENT: usize = 8;
/// The same image in the same before/after state is saved once in this long.
const SAME_STATE: Duration = Duration::from_secs(600);
/// Header bytes read from the image for the post-image.
const POST_BYTES: u64 = 64 << 10;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    pub saved: u64,
    /// Image reads made to compare or save (at most `READS_PER_MINUTE`).
    pub reads: u64,
    pub duplicate: u64,
    pub rate_limited: u64,
    pub over_quota: u64,
    pub errors: u64,
}

/// (dev, ino, pre+post hash) of a saved piece of evidence.
type Saved = (u32, u64, [u8; 32]);

/// This minute's captures.
struct Window {
    start: Instant,
    saved: u32,
    reads: u32,
}

impl Window {
    fn new(start: Instant) -> Window {
        Window {
            start,
            saved: 0,
            reads: 0,
        }
    }
}

/// An attempted capture, by the agent's shadows of the image before and now.
struct Attempt {
    key: (u32, u64),
    pre: Vec<u8>,
    now: Vec<u8>,
    at: Instant,
}

pub struct Evidence {
    dir: Option<PathBuf>,
    max_bytes: u64,
    used: u64,
    minute: Window,
    /// The in-memory states (shadow before, shadow now) captures were attempted on lately.
    recent: VecDeque<Attempt>,
    /// Saved lately, and when.
    seen: VecDeque<(Saved, Instant)>,
    pub stats: Stats,
    pub last_error: Option<String>,
}

impl Evidence {
    pub fn new(cfg: &EvidenceSection) -> Evidence {
        let used = if cfg.enabled { dir_bytes(&cfg.dir) } else { 0 };
        Evidence {
            dir: cfg.enabled.then(|| cfg.dir.clone()),
            max_bytes: cfg.max_mb.saturating_mul(1 << 20),
            used,
            minute: Window::new(Instant::now()),
            recent: VecDeque::new(),
            seen: VecDeque::new(),
            stats: Stats::default(),
            last_error: None,
        }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Save evidence for `a` when it is high or critical and about a qcow2 image the
    /// classifier knows; the `evidence` record to log right after the alert.
    pub fn capture(&mut self, a: &Alert, classifier: &Classifier) -> Option<Record> {
        let dir = self.dir.clone()?;
        if a.severity < Severity::High {
            return None;
        }
        let f = a.event.file.as_ref()?;
        let path = f.path.as_ref()?.as_path();
        // The pre-image of the header change this alert is about; otherwise the header is
        // what the shadow says now (the alert precedes any change, or there was none).
        let pre = classifier
            .pre_image(f.dev, f.ino)
            .filter(|p| p.seq == a.event.seq);
        let (pre_shadow, pre_src) = match pre {
            Some(p) => (
                &p.shadow,
                format!("agent shadow before the header change of event {}", p.seq),
            ),
            None => (
                classifier.qcow2_shadow(f.dev, f.ino)?,
                "agent shadow (this event did not change the header)".to_string(),
            ),
        };
        let now_raw = classifier
            .qcow2_shadow(f.dev, f.ino)
            .map_or(&[][..], |s| s.raw.as_slice());
        let now = Instant::now();
        // The same states as an attempt lately: the image says what it said then.
        if let Some(r) = self
            .recent
            .iter()
            .find(|r| r.key == (f.dev, f.ino) && r.pre == pre_shadow.raw && r.now == now_raw)
        {
            if now.duration_since(r.at) < SAME_STATE {
                self.stats.duplicate += 1;
                return None;
            }
        }
        if now.duration_since(self.minute.start) >= Duration::from_secs(60) {
            self.minute = Window::new(now);
        }
        if self.used >= self.max_bytes {
            self.stats.over_quota += 1;
            return None;
        }
        if self.minute.saved >= PER_MINUTE || self.minute.reads >= READS_PER_MINUTE {
            self.stats.rate_limited += 1;
            return None;
        }
        self.minute.reads += 1;
        self.stats.reads += 1;
        self.recent
            .retain(|r| r.key != (f.dev, f.ino) || r.pre != pre_shadow.raw || r.now != now_raw);
        if self.recent.len() >= RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(Attempt {
            key: (f.dev, f.ino),
            pre: pre_shadow.raw.clone(),
            now: now_raw.to_vec(),
            at: now,
        });
        let post = read_post(f.dev, &path);
        let mut h = Sha256::new();
        h.update(&pre_shadow.raw);
        h.update(post.as_ref().map(|(b, _)| b.as_slice()).unwrap_or(b""));
        let state: [u8; 32] = h.finalize().into();
        self.seen
            .retain(|(_, t)| now.duration_since(*t) < SAME_STATE);
        if self.seen.iter().any(|(k, _)| *k == (f.dev, f.ino, state)) {
            self.stats.duplicate += 1;
            return None;
        }
        self.minute.saved += 1;
        match self.save(&dir, a, &path, pre_shadow, &pre_src, post) {
            Ok((files, bytes)) => {
                self.seen.push_back(((f.dev, f.ino, state), now));
                if self.seen.len() > 4096 {
                    self.seen.pop_front();
                }
                self.used += bytes;
                self.stats.saved += 1;
                Some(saved_record(&path, a, &files.0, files.1))
            }
            Err(e) => {
                // Not saved: the same state is tried again on its next alert.
                self.recent.pop_back();
                self.stats.errors += 1;
                self.last_error = Some(e.clone());
                Some(failed_record(&path, a, e))
            }
        }
    }

    fn save(
        &self,
        dir: &Path,
        a: &Alert,
        image: &Path,
        pre: &Qcow2Shadow,
        pre_src: &str,
        post: Result<(Vec<u8>, Value), String>,
    ) -> Result<((PathBuf, Vec<Value>), u64), String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        // An existing directory keeps its mode unless we own the decision: make it private.
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        let name = image
            .file_name()
            .map(|n| n.to_string_lossy().replace(['/', '\\'], "_"))
            .unwrap_or_else(|| "image".into());
        let stamp = crate::clock::rfc3339(a.event.ts_unix_ns).replace(':', "");
        let sub = dir.join(format!(
            "{stamp}-{}-{}-{}-{name}",
            a.event.seq, a.rule_id, a.event.process.pid
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&sub)
            .map_err(|e| format!("{}: {e}", sub.display()))?;
        let mut files = Vec::new();
        let mut bytes = 0u64;
        let mut put = |n: &str, data: &[u8]| -> Result<(), String> {
            let p = sub.join(n);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            f.write_all(data)
                .and_then(|_| f.sync_all())
                .map_err(|e| format!("{}: {e}", p.display()))?;
            bytes += data.len() as u64;
            files.push(file_entry(&p, data));
            Ok(())
        };
        put("pre-header.bin", &pre.raw)?;
        let pre_json = describe_image(&pre.image, pre_src);
        put("pre.json", &pretty(&pre_json))?;
        match &post {
            Ok((b, desc)) => {
                put("post-header.bin", b)?;
                put("post.json", &pretty(desc))?;
            }
            Err(e) => put(
                "post.json",
                &pretty(&json!({"source": "read from the image when the alert fired", "error": e})),
            )?,
        }
        let meta = json!({
            "image": image.display().to_string(),
            "rule": {"id": a.rule_id, "name": a.rule_name, "severity": a.severity.as_str()},
            "message": a.message,
            "sequence": a.event.seq,
            "process": {"pid": a.event.process.pid, "name": a.event.process.name,
                        "executable": a.event.process.executable.display(),
                        "lineage": a.event.process.lineage()},
        });
        put("alert.json", &pretty(&meta))?;
        let _ = std::fs::File::open(&sub).and_then(|d| d.sync_all());
        Ok(((sub, files), bytes))
    }
}

/// One saved file, as the `evidence` record lists it (and `verify-log` checks it).
pub(crate) fn file_entry(path: &Path, data: &[u8]) -> Value {
    json!({"path": path.display().to_string(), "sha256": hex::encode(Sha256::digest(data)), "bytes": data.len()})
}

/// The `evidence` record: the image, the alert's rule and event, the directory the files are
/// in, and each file (`file_entry`).
pub(crate) fn saved_record(image: &Path, a: &Alert, dir: &Path, files: Vec<Value>) -> Record {
    Record::State(StateRecord {
        action: "evidence",
        detail: json!({
            "image": image.display().to_string(),
            "rule": a.rule_id,
            "sequence": a.event.seq,
            "dir": dir.display().to_string(),
            FILES_KEY: files,
        }),
    })
}

/// The `evidence_failed` record: what could not be saved, and why.
pub(crate) fn failed_record(image: &Path, a: &Alert, error: String) -> Record {
    Record::State(StateRecord {
        action: "evidence_failed",
        detail: json!({"image": image.display().to_string(), "rule": a.rule_id,
                       "sequence": a.event.seq, "error": error}),
    })
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).unwrap_or_default();
    b.push(b'\n');
    b
}

/// The image's first cluster now and what the image says, read within the read budget.
fn read_post(dev: u32, path: &Path) -> Result<(Vec<u8>, Value), String> {
    let p = path.to_path_buf();
    crate::classify::fileread::bounded(Some(dev), path, move || read_post_now(&p))
        .unwrap_or_else(|e| Err(format!("{}: {e}", path.display())))
}

fn read_post_now(path: &Path) -> Result<(Vec<u8>, Value), String> {
    use std::io::Read as _;
    // By path, after the alert: whatever a user put there since must not stall the agent.
    let mut f =
        crate::classify::fileread::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = Vec::new();
    (&mut f)
        .take(POST_BYTES)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let cs = Qcow2Header::decode_lossy(&buf).cluster_size();
    if (512..=POST_BYTES).contains(&cs) {
        buf.truncate(cs as usize);
    }
    let source = "read from the image when the alert fired";
    let desc = match crate::classify::fileread::open(path)
        .map_err(|e| e.to_string())
        .and_then(|mut f| Qcow2Image::read_from(&mut f).map_err(|e| e.to_string()))
    {
        Ok(img) => describe_image(&img, source),
        Err(e) => json!({"source": source, "error": e,
                         "header": header_json(&Qcow2Header::decode_lossy(&buf))}),
    };
    Ok((buf, desc))
}

fn header_json(h: &Qcow2Header) -> Value {
    serde_json::to_value(h).unwrap_or(Value::Null)
}

/// The parts of an image recovery needs: header, snapshot table and its entries, where the
/// active and every snapshot L1 table live.
pub fn describe_image(img: &Qcow2Image, source: &str) -> Value {
    let h = &img.header;
    json!({
        "source": source,
        "header": header_json(h),
        "snapshot_table": {"offset": h.snapshots_offset, "nb_snapshots": h.nb_snapshots, "bytes": img.snapshot_table_len},
        "active_l1": {"offset": h.l1_table_offset, "entries": h.l1_size},
        "refcount_table": {"offset": h.refcount_table_offset, "clusters": h.refcount_table_clusters},
        "snapshots": img.snapshots.iter().map(|s| json!({
            "id": s.id, "name": s.name, "entry_offset": s.offset,
            "l1_table_offset": s.l1_table_offset, "l1_size": s.l1_size,
            "date_sec": s.date_sec, "vm_state_size": s.vm_state_size,
        })).collect::<Vec<_>>(),
    })
}

/// Bytes under `dir` (one level of capture directories).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .filter_map(|e| std::fs::read_dir(e.path()).ok())
        .flat_map(|d| d.flatten())
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Every `{path, sha256}` listed under [`FILES_KEY`] anywhere in a record.
fn listed(v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == FILES_KEY {
                    for f in x.as_array().into_iter().flatten() {
                        if let (Some(p), Some(h)) = (f["path"].as_str(), f["sha256"].as_str()) {
                            out.push((p.to_string(), h.to_string()));
                        }
                    }
                } else {
                    listed(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| listed(x, out)),
        _ => {}
    }
}

/// Check every evidence file the logs list against its logged SHA-256: (files checked,
/// problems). Lines that are not JSON are the chain check's business, not ours.
pub fn verify_logs(logs: &[PathBuf]) -> (usize, Vec<String>) {
    use std::io::BufRead as _;
    let mut files = Vec::new();
    for l in logs {
        let Ok(f) = std::fs::File::open(l) else {
            continue;
        };
        for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            if !line.contains(FILES_KEY) {
                continue;
            }
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                listed(&v, &mut files);
            }
        }
    }
    let mut problems = Vec::new();
    for (p, want) in &files {
        match std::fs::read(p) {
            Ok(b) => {
                let got = hex::encode(Sha256::digest(&b));
                if &got != want {
                    problems.push(format!(
                        "evidence file {p} was altered: sha256 {got}, logged {want}"
                    ));
                }
            }
            Err(e) => problems.push(format!("evidence file {p} cannot be read: {e}")),
        }
    }
    (files.len(), problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::qcow2::testutil::{image_with_snapshots, patch, TmpDir};
    use crate::config::EvidenceSection;

    #[test]
    fn listed_files_are_found_at_any_depth() {
        let v = json!({"snapmon": {"state": {FILES_KEY: [{"path": "/a", "sha256": "00"}]}},
                       "unmapped": [{FILES_KEY: [{"path": "/b", "sha256": "11"}]}]});
        let mut out = vec![];
        listed(&v, &mut out);
        assert_eq!(
            out,
            vec![("/a".into(), "00".into()), ("/b".into(), "11".into())]
        );
    }

    #[test]
    fn post_image_is_one_cluster_of_the_file() {
        let d = TmpDir::new("evidence-post");
        let p = image_with_snapshots(&d, "a.qcow2", &[]);
        let b = read_post(0, &p).unwrap().0;
        assert_eq!(b.len(), 65536);
        patch(&p, 60, &[0; 4]);
        let img = Qcow2Image::read_from(&mut std::fs::File::open(&p).unwrap()).unwrap();
        let j = describe_image(&img, "t");
        assert_eq!(j["snapshot_table"]["nb_snapshots"], 0);
        assert_ne!(j["snapshot_table"]["offset"], 0);
    }

    fn header_alert(p: &Path, seq: u64, nb: u32) -> (Alert, crate::event::Event) {
        use crate::event::{Action, Event, FileInfo, WriteInfo};
        let ev = Event {
            action: Action::Pwrite64,
            seq,
            file: Some(FileInfo {
                dev: 7,
                ino: 1,
                path: Some(crate::event::Bytes(
                    p.as_os_str().as_encoded_bytes().to_vec(),
                )),
                ..Default::default()
            }),
            write: Some(WriteInfo {
                op: Action::Pwrite64.as_str().parse().unwrap(),
                offset: 60,
                length: 4,
                data: nb.to_be_bytes().to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let a = Alert {
            rule_id: "SM-Q001".into(),
            rule_name: "t".into(),
            severity: Severity::High,
            technique: vec![],
            message: "m".into(),
            event: ev.clone(),
            related_seq: vec![],
        };
        (a, ev)
    }

    /// A flood of alerts is not a flood of image reads: a state seen lately costs a
    /// compare, two alternating states are read once each, and new states at most
    /// `READS_PER_MINUTE` times a minute (seen: every alert read and hashed the image).
    #[test]
    fn a_flood_of_alerts_reads_the_image_a_bounded_number_of_times() {
        let d = TmpDir::new("evidence-flood");
        let p = image_with_snapshots(&d, "a.qcow2", &[]);
        let mut ev = Evidence::new(&EvidenceSection {
            dir: d.path("ev"),
            ..Default::default()
        });
        let mut c = Classifier::new();
        // First sight: the shadow is the image as made, two snapshots.
        c.classify(&header_alert(&p, 1, 2).1, Some(&p));
        // Hidden (0) and back (2), the bytes landing each time, 1000 times over.
        let mut saved = 0;
        for i in 0..1000u64 {
            let nb = if i % 2 == 0 { 0 } else { 2 };
            let (a, e) = header_alert(&p, 100 + i, nb);
            patch(&p, 60, &nb.to_be_bytes());
            c.classify(&e, Some(&p));
            saved += usize::from(ev.capture(&a, &c).is_some());
        }
        assert_eq!((ev.stats.reads, ev.stats.saved), (2, 2), "{:?}", ev.stats);
        assert_eq!(saved, 2);
        assert_eq!(ev.stats.duplicate, 998);
        // Ten states in turn, more than are remembered: each alert reads the image, finds
        // it saved already, and the reads stop at the minute's budget.
        for i in 0..(READS_PER_MINUTE as u64 + 100) {
            let nb = 3 + (i % 10) as u32;
            let (a, e) = header_alert(&p, 5000 + i, nb);
            patch(&p, 60, &nb.to_be_bytes());
            c.classify(&e, Some(&p));
            ev.capture(&a, &c);
        }
        assert_eq!(
            ev.stats.reads,
            u64::from(READS_PER_MINUTE),
            "{:?}",
            ev.stats
        );
        // 2 → 3 once, then 12 → 3 and the nine others.
        assert_eq!(ev.stats.saved, 2 + 11, "{:?}", ev.stats);
        // Past the budget, the eight states remembered are still known; the others wait.
        assert_eq!(ev.stats.rate_limited, 22, "{:?}", ev.stats);
    }
}
