//! Classify stage: format intelligence. Works out what each event touched (a qcow2 header
//! field, the snapshot table, LVM metadata, a device-mapper table load …) and the diff.

pub mod inspect;
pub mod ioctl;
pub mod libvirt;
pub mod lvm;
pub mod qcow2;

use std::{
    collections::HashMap,
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::Path,
};

use serde::Serialize;

use crate::event::Event;
pub use qcow2::FieldChange as Change;

/// What the classify stage attaches to an event.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Classification {
    /// `qcow2`, `lvm`, `lvm-backup`, `libvirt`, `dm`, `btrfs`, `zfs`, `file` …
    pub format: &'static str,
    /// Region labels in offset order (`header.nb_snapshots`, `snapshot_table`, `data` …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    /// Decoded ioctl.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ioctl: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ioctl_name: Option<String>,
    /// The ioctl destroys or creates a snapshot (dm/btrfs/zfs semantics).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub snapshot_destructive: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub snapshot_create: bool,
    /// Shannon entropy (bits/byte) of the captured write sample, when judged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_entropy: Option<f64>,
    /// Facts from the file itself (libvirt snapshot name and domain, LVM description …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub facts: Vec<(String, String)>,
}

impl Classification {
    pub fn touches_metadata(&self) -> bool {
        self.regions.iter().any(|r| r != "data")
    }
}

/// Per-file format state kept between events.
enum FileState {
    Qcow2(Box<qcow2::Qcow2Shadow>),
    Lvm(Box<LvmState>),
    /// Looked at; not a format we model (yet). Re-checked when its first bytes change.
    Other,
}

struct LvmState {
    label: Option<lvm::PvLabel>,
    mda: Option<lvm::MdaHeader>,
    vg: Option<lvm::VgMetadata>,
}

/// Bytes read to recognise a file and load LVM metadata (label + first metadata area).
const PROBE_BYTES: u64 = 1 << 20;
/// Shadows kept; beyond this the oldest is forgotten (re-read on next touch).
const MAX_SHADOWS: usize = 4096;

#[derive(Debug, Default, Clone, Serialize)]
pub struct ClassifyStats {
    pub classified: u64,
    pub shadows: usize,
    pub refreshes: u64,
    pub errors: u64,
}

/// Per-file format state (shadow headers) and the decoders, behind one call.
pub struct Classifier {
    state: HashMap<(u32, u64), FileState>,
    order: std::collections::VecDeque<(u32, u64)>,
    pub stats: ClassifyStats,
}

fn read_prefix(path: &Path, n: u64) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut buf = Vec::new();
    f.by_ref().take(n).read_to_end(&mut buf)?;
    Ok(buf)
}

fn load_state(path: &Path) -> FileState {
    let Ok(head) = read_prefix(path, PROBE_BYTES) else { return FileState::Other };
    if head.starts_with(b"QFI\xfb") {
        if let Ok(mut f) = File::open(path) {
            if let Ok(s) = qcow2::Qcow2Shadow::load(&mut f) {
                return FileState::Qcow2(Box::new(s));
            }
        }
    }
    if let Ok(label) = lvm::parse_label(&head) {
        let mda = head.get(4096..).and_then(|b| lvm::parse_mda_header(b).ok());
        let vg = lvm::metadata_text_from_device(&head).ok();
        return FileState::Lvm(Box::new(LvmState { label: Some(label), mda, vg }));
    }
    FileState::Other
}

fn lvm_changes(c: Vec<lvm::LvmChange>) -> Vec<Change> {
    c.into_iter()
        .map(|ch| {
            let s = ch.to_string();
            match s.split_once(": ") {
                Some((f, rest)) => match rest.split_once(" → ") {
                    Some((b, a)) => Change::new(f, b, a),
                    None => Change::new(f, "", rest),
                },
                None => Change::new("lvm", "", s),
            }
        })
        .collect()
}

impl Classifier {
    pub fn new(_policy: &crate::config::Policy) -> Self {
        Classifier { state: HashMap::new(), order: Default::default(), stats: ClassifyStats::default() }
    }

    fn remember(&mut self, key: (u32, u64), st: FileState) {
        if self.state.insert(key, st).is_none() {
            self.order.push_back(key);
            while self.order.len() > MAX_SHADOWS {
                if let Some(old) = self.order.pop_front() {
                    self.state.remove(&old);
                }
            }
        }
        self.stats.shadows = self.state.len();
    }

    pub fn classify(&mut self, ev: &Event, path: Option<&Path>) -> Option<Classification> {
        let c = self.classify_inner(ev, path);
        if c.is_some() {
            self.stats.classified += 1;
        }
        c
    }

    fn classify_inner(&mut self, ev: &Event, path: Option<&Path>) -> Option<Classification> {
        if let Some(i) = &ev.ioctl {
            return Some(classify_ioctl(i));
        }
        let path_str = path.map(|p| p.to_string_lossy().into_owned());
        // libvirt metadata and LVM text files are judged by name and, when present, content.
        if let Some(ps) = &path_str {
            if let Some(lf) = libvirt::classify_libvirt_path(ps) {
                return Some(classify_libvirt(&lf, ev, path));
            }
            if let Some(c) = classify_lvm_file(ps, ev, path) {
                return Some(c);
            }
        }
        let w = ev.write.as_ref()?;
        let f = ev.file.as_ref()?;
        let key = (f.dev, f.ino);
        let path = path?;
        if !self.state.contains_key(&key) {
            let st = load_state(path);
            self.remember(key, st);
        }
        let (off, len) = write_span(ev.action, w, f.size);
        let mut c = Classification { format: "file", ..Default::default() };
        if off < 4096 && w.data.len() >= 64 {
            c.sample_entropy = Some((qcow2::shannon_entropy(&w.data) * 1000.0).round() / 1000.0);
        }
        let st = self.state.get_mut(&key)?;
        match st {
            FileState::Qcow2(sh) => {
                c.format = "qcow2";
                let spans = sh.image.classify(off, len.max(1));
                for s in &spans {
                    let l = s.region.as_label().into_owned();
                    if c.regions.last() != Some(&l) {
                        c.regions.push(l);
                    }
                }
                let header_end = sh.raw.len() as u64;
                let full_sample = w.data.len() as u64 == w.length && ev.action != "truncate";
                if off < header_end && full_sample && !w.data.is_empty() {
                    if let Some(p) = sh.apply_header_write(off, &w.data) {
                        c.changes = p.changes.clone();
                        if !sh.absorb(p) {
                            self.stats.refreshes += 1;
                            // Re-read to rebuild the map; the diff was already computed.
                            if let Ok(mut fh) = File::open(path) {
                                if let Ok(new) = qcow2::Qcow2Shadow::load(&mut fh) {
                                    **sh = new;
                                }
                            }
                        }
                    }
                } else if c.touches_metadata() {
                    // Large metadata rewrite (amend, rebase, commit): diff against the file.
                    self.stats.refreshes += 1;
                    if let Ok(mut fh) = File::open(path) {
                        match sh.refresh(&mut fh) {
                            Ok(ch) => c.changes = ch,
                            Err(e) => c.changes.push(Change::new("parse_error", "", e.to_string())),
                        }
                    }
                }
            }
            FileState::Lvm(l) => {
                c.format = "lvm";
                c.regions = lvm::classify_pv_write(l.label.as_ref(), l.mda.as_ref(), off, len.max(1))
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                if c.regions.iter().any(|r| r != "lvm.data") {
                    self.stats.refreshes += 1;
                    if let Ok(head) = read_prefix(path, PROBE_BYTES) {
                        let vg = lvm::metadata_text_from_device(&head).ok();
                        if let (Some(a), Some(b)) = (&l.vg, &vg) {
                            c.changes = lvm_changes(lvm::diff_vg(a, b));
                        }
                        l.label = lvm::parse_label(&head).ok();
                        l.mda = head.get(4096..).and_then(|b| lvm::parse_mda_header(b).ok());
                        if vg.is_some() {
                            l.vg = vg;
                        }
                    }
                }
            }
            FileState::Other => {
                // A file that becomes qcow2/LVM (creation) is picked up on its header write.
                if off < 4096 {
                    self.state.remove(&key);
                    let st = load_state(path);
                    let became = !matches!(st, FileState::Other);
                    self.remember(key, st);
                    if became {
                        return self.classify_inner(ev, Some(path));
                    }
                }
                c.regions.push("data".into());
            }
        }
        Some(c)
    }

    /// Forget a file's shadow (unlinked, or replaced by rename).
    pub fn forget(&mut self, dev: u32, ino: u64) {
        self.state.remove(&(dev, ino));
        self.stats.shadows = self.state.len();
    }
}

/// The byte range an operation affects: truncation cuts from the new length to the old end.
fn write_span(action: &str, w: &crate::event::WriteInfo, size: Option<u64>) -> (u64, u64) {
    let off = w.offset.max(0) as u64;
    match action {
        "truncate" => {
            let old = size.unwrap_or(0);
            if w.length < old {
                (w.length, old - w.length)
            } else {
                (old, w.length.saturating_sub(old))
            }
        }
        _ => (off, w.length),
    }
}

fn classify_ioctl(i: &crate::event::IoctlRaw) -> Classification {
    const FICLONE: u32 = 0x4004_9409;
    // FICLONE passes the source fd by value, not a pointer.
    let arg: Vec<u8> = if i.cmd == FICLONE { (i.arg as u32).to_le_bytes().to_vec() } else { i.arg_data.clone() };
    let info = ioctl::decode_ioctl(i.cmd, &arg);
    Classification {
        format: info.family,
        ioctl_name: Some(info.to_string()),
        snapshot_destructive: info.is_snapshot_destructive(),
        snapshot_create: info.is_snapshot_create(),
        ioctl: serde_json::to_value(&info).ok(),
        ..Default::default()
    }
}

fn classify_libvirt(lf: &libvirt::LibvirtFile, ev: &Event, path: Option<&Path>) -> Classification {
    let mut c = Classification { format: "libvirt", ..Default::default() };
    c.facts.push(("kind".into(), format!("{:?}", lf.kind).to_lowercase()));
    c.facts.push(("domain".into(), lf.domain.clone()));
    c.facts.push(("name".into(), lf.name.clone()));
    if lf.temp {
        c.facts.push(("temp".into(), "true".into()));
    }
    // After the final rename the document is in place: read what it says.
    let readable = matches!(ev.action, "rename" | "create" | "link") || ev.write.is_some();
    let target = ev.target.as_ref().and_then(|t| t.path.as_ref()).map(|p| p.as_path());
    if readable {
        let p = target.as_deref().or(path);
        if let Some(Ok(doc)) = p.map(|p| read_prefix(p, 1 << 20).map(|b| libvirt::parse_libvirt_xml(&b))) {
            if let Ok(doc) = doc {
                if let Some(parent) = doc.parent {
                    c.facts.push(("parent".into(), parent));
                }
                if let Some(d) = doc.domain_name {
                    c.facts.push(("xml_domain".into(), d));
                }
            }
        }
    }
    c
}

fn classify_lvm_file(ps: &str, ev: &Event, path: Option<&Path>) -> Option<Classification> {
    let in_backup = ps.starts_with("/etc/lvm/backup/") || ps.starts_with("/etc/lvm/archive/");
    if !in_backup {
        return None;
    }
    let mut c = Classification { format: "lvm-backup", ..Default::default() };
    c.regions.push(if ps.starts_with("/etc/lvm/backup/") { "lvm.backup".into() } else { "lvm.archive".into() });
    let target = ev.target.as_ref().and_then(|t| t.path.as_ref()).map(|p| p.as_path());
    let p = target.as_deref().or(path)?;
    if let Ok(b) = read_prefix(p, 4 << 20) {
        if let Ok(vg) = lvm::parse_metadata_text(&b) {
            c.facts.push(("vg".into(), vg.vg_name.clone()));
            c.facts.push(("seqno".into(), vg.seqno.to_string()));
            if let Some(d) = vg.description {
                c.facts.push(("description".into(), d));
            }
        }
    }
    Some(c)
}

/// Read `len` bytes at `off` (helper for tests and the inspector).
pub fn read_range(path: &Path, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(off))?;
    let mut b = vec![0; len];
    let n = f.read(&mut b)?;
    b.truncate(n);
    Ok(b)
}
