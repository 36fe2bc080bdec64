//! Classify stage: offline qcow2 integrity inspector and file baselines.
//!
//! The inspector never fails: every problem, including an unreadable or
//! unparsable file, becomes a `Finding`.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::qcow2::{
    parse_head, read_at, scan_snapshot_entries, shannon_entropy, BackingName, ExtensionData,
    FieldChange, HeaderSummary, Qcow2Error, Qcow2Header, Qcow2Image, SnapshotEntry,
    COMPAT_LAZY_REFCOUNTS, EXT_ENCRYPTION, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_DIRTY,
    INCOMPAT_EXTL2, INCOMPAT_KNOWN, L2_COMPRESSED, L2_OFFSET_MASK, MAX_SNAPSHOTS,
};

/// Longest backing chain followed.
pub const MAX_CHAIN: usize = 16;
const VOLATILE_DIRS: &[&str] = &["/tmp", "/var/tmp", "/dev/shm"];

pub use crate::Severity;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackingLink {
    /// Name as stored in the referencing image (escaped).
    pub name: String,
    /// Resolved path (relative names resolve against the referrer's dir).
    pub path: String,
    pub exists: bool,
    /// "qcow2", "other" or "missing".
    pub format: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    pub path: String,
    /// "qcow2" or "unknown".
    pub format: &'static str,
    pub file_size: u64,
    pub header: Option<HeaderSummary>,
    pub backing_chain: Vec<BackingLink>,
    pub features: Vec<String>,
    pub snapshots: Vec<SnapshotEntry>,
    pub findings: Vec<Finding>,
}

impl InspectReport {
    pub fn has_findings_at_least(&self, sev: Severity) -> bool {
        self.findings.iter().any(|f| f.severity >= sev)
    }

    pub fn finding(&self, code: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.code == code)
    }

    fn add(&mut self, severity: Severity, code: &'static str, message: impl Into<String>) {
        self.findings.push(Finding {
            severity,
            code,
            message: message.into(),
        });
    }
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} ({} bytes)",
            self.path, self.format, self.file_size
        )?;
        if let Some(h) = &self.header {
            writeln!(
                f,
                "  qcow2 v{}, virtual size {}, cluster {}, refcount bits {}, crypt {}",
                h.version, h.virtual_size, h.cluster_size, h.refcount_bits, h.crypt_method
            )?;
        }
        if !self.features.is_empty() {
            writeln!(f, "  features: {}", self.features.join(", "))?;
        }
        for (i, l) in self.backing_chain.iter().enumerate() {
            writeln!(
                f,
                "  backing[{}]: {} -> {} ({})",
                i + 1,
                l.name,
                l.path,
                l.format
            )?;
        }
        writeln!(f, "  snapshots: {}", self.snapshots.len())?;
        for s in &self.snapshots {
            writeln!(
                f,
                "    id {} name {} date {} vm_state {} l1 {:#x}/{}",
                s.id, s.name, s.date_sec, s.vm_state_size, s.l1_table_offset, s.l1_size
            )?;
        }
        if self.findings.is_empty() {
            writeln!(f, "  findings: none")?;
        }
        for x in &self.findings {
            writeln!(f, "  [{}] {}: {}", x.severity, x.code, x.message)?;
        }
        Ok(())
    }
}

fn error_finding(r: &mut InspectReport, e: &Qcow2Error) {
    use Severity::*;
    match e {
        Qcow2Error::BadMagic => r.add(High, "bad_magic", "no qcow2 magic (QFI\\xfb) at offset 0"),
        Qcow2Error::Truncated { what, .. } if *what == "header" => {
            r.add(High, "truncated", e.to_string())
        }
        Qcow2Error::Truncated { .. } => r.add(High, "header_outside_file", e.to_string()),
        Qcow2Error::UnsupportedVersion(_) => r.add(Medium, "unsupported_version", e.to_string()),
        Qcow2Error::Io(_) => r.add(High, "io_error", e.to_string()),
        _ => r.add(High, "invalid_metadata", e.to_string()),
    }
}

/// Inspect one image file offline. A FIFO, device or symlink at `path` is not opened
/// (see [`crate::file::open`]): it becomes an `io_error` finding.
pub fn inspect_image(path: &Path) -> InspectReport {
    match crate::file::open(path) {
        Ok(f) => inspect_file(path, f),
        Err(e) => {
            let mut r = empty_report(path);
            r.add(Severity::High, "io_error", format!("cannot open: {e}"));
            r
        }
    }
}

fn empty_report(path: &Path) -> InspectReport {
    InspectReport {
        path: path.display().to_string(),
        format: "unknown",
        file_size: 0,
        header: None,
        backing_chain: Vec::new(),
        features: Vec::new(),
        snapshots: Vec::new(),
        findings: Vec::new(),
    }
}

/// Inspect `f`, opened from `path` by [`crate::file::open`].
pub fn inspect_file(path: &Path, mut f: File) -> InspectReport {
    let mut r = empty_report(path);
    r.file_size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut head = Vec::new();
    if let Err(e) = (&mut f).take(2 << 20).read_to_end(&mut head) {
        r.add(Severity::High, "io_error", format!("cannot read: {e}"));
        return r;
    }
    let cluster0 = {
        let h = Qcow2Header::decode_lossy(&head);
        let cs = if (9..=21).contains(&h.cluster_bits) {
            h.cluster_size()
        } else {
            512
        };
        &head[..head.len().min(cs as usize)]
    };
    let (hdr, exts, backing) = match parse_head(cluster0) {
        Ok(x) => x,
        Err(e) => {
            error_finding(&mut r, &e);
            let sample = &head[..head.len().min(512)];
            let ent = shannon_entropy(sample);
            if sample.len() >= 256 && ent > 7.0 {
                r.add(
                    Severity::High,
                    "header_random",
                    format!(
                        "first {} bytes look random ({ent:.2} bits/byte): header overwritten?",
                        sample.len()
                    ),
                );
            }
            return r;
        }
    };
    r.format = "qcow2";
    r.features = hdr.feature_names();
    header_checks(&mut r, &hdr, &exts);
    follow_chain(&mut r, path, backing.as_ref());

    let img = match Qcow2Image::read_from(&mut f) {
        Ok(img) => img,
        Err(e) => {
            error_finding(&mut r, &e);
            return r;
        }
    };
    r.header = Some(img.summary());
    r.snapshots = img.snapshots.clone();
    bounds_checks(&mut r, &img);
    overlap_checks(&mut r, &img);
    hidden_snapshot_checks(&mut r, &img, &mut f);
    orphan_snapshot_table_check(&mut r, &img, &mut f);
    r
}

/// Clusters probed by the orphan snapshot-table scan.
const MAX_ORPHAN_PROBES: usize = 1 << 18;
/// Candidates checked against every L2 table (each check reads them all).
const MAX_ORPHAN_CANDIDATES: usize = 4;
/// L2 bytes read per candidate check.
const MAX_L2_SCAN_BYTES: u64 = 256 << 20;

/// A snapshot table that no header field points to any more (e.g. bytes
/// 60..72 zeroed) keeps its refcount, and so do its snapshots' L1 tables.
/// Both being allocated yet claimed by no metadata and no L2 entry is what
/// gives it away; a guest planting a look-alike in its own data fails the
/// L2 check.
fn orphan_snapshot_table_check<F: Read + Seek>(r: &mut InspectReport, img: &Qcow2Image, f: &mut F) {
    match find_orphan_table(img, f) {
        OrphanTable::None => {}
        OrphanTable::Unverified { at, name } => r.add(
            Severity::Medium,
            "hidden_snapshot_suspected",
            format!(
                "cluster {at:#x} looks like an unreferenced snapshot table ('{name}'), L2 tables too large to verify"
            ),
        ),
        OrphanTable::Found { at, entries } => {
            let names: Vec<String> = entries
                .iter()
                .take(16)
                .map(|e| format!("'{}' (id {}, L1 {:#x})", e.name, e.id, e.l1_table_offset))
                .collect();
            r.add(
                Severity::High,
                "hidden_snapshot_suspected",
                format!(
                    "allocated but unreferenced snapshot table at {at:#x} with {} entr{}: {}",
                    entries.len(),
                    if entries.len() == 1 { "y" } else { "ies" },
                    names.join(", ")
                ),
            );
        }
    }
}

/// An allocated snapshot table no header field points to.
#[derive(Debug)]
pub enum OrphanTable {
    None,
    /// A candidate the L2 check could not rule out (L2 tables beyond the read budget).
    Unverified {
        at: u64,
        name: String,
    },
    Found {
        at: u64,
        entries: Vec<SnapshotEntry>,
    },
}

/// Find a snapshot table that is allocated but referenced by nothing (the first one).
pub fn find_orphan_table<F: Read + Seek>(img: &Qcow2Image, f: &mut F) -> OrphanTable {
    let cs = img.cluster_size();
    let orphans = img.allocated_data_clusters(f, MAX_ORPHAN_PROBES);
    let is_orphan = |o: u64| orphans.binary_search(&o).is_ok();
    let mut candidates = 0;
    // The table at snapshots_offset is hidden_snapshot_checks' business.
    for &c in orphans
        .iter()
        .filter(|&&c| c != img.header.snapshots_offset)
    {
        let Some(first) = scan_snapshot_entries(f, c, cs, 1).pop() else {
            continue;
        };
        if !is_orphan(first.l1_table_offset) {
            continue;
        }
        candidates += 1;
        if candidates > MAX_ORPHAN_CANDIDATES {
            return OrphanTable::None;
        }
        match l2_references(img, f, &[c, first.l1_table_offset]) {
            Some(false) => {}
            Some(true) => continue,
            None => {
                return OrphanTable::Unverified {
                    at: c,
                    name: first.name,
                }
            }
        }
        let entries = scan_snapshot_entries(f, c, cs, MAX_SNAPSHOTS as usize);
        return OrphanTable::Found { at: c, entries };
    }
    OrphanTable::None
}

/// Does any L2 entry (active or snapshot) point at one of `targets`?
/// None when the L2 tables exceed the read budget.
fn l2_references<F: Read + Seek>(img: &Qcow2Image, f: &mut F, targets: &[u64]) -> Option<bool> {
    let cs = img.cluster_size();
    let stride = if img.header.incompatible_features & INCOMPAT_EXTL2 != 0 {
        16
    } else {
        8
    };
    let tables = img.l2_tables();
    if (tables.len() as u64).saturating_mul(cs) > MAX_L2_SCAN_BYTES {
        return None;
    }
    for t in tables {
        let b = read_at(f, t, cs).ok()?;
        let hit = b.chunks_exact(stride).any(|e| {
            let v = u64::from_be_bytes(e[..8].try_into().unwrap_or_default());
            // Compressed entries use a different layout; they never point at
            // whole metadata-sized clusters QEMU would allocate for tables.
            v & L2_COMPRESSED == 0 && targets.contains(&(v & L2_OFFSET_MASK))
        });
        if hit {
            return Some(true);
        }
    }
    Some(false)
}

fn header_checks(r: &mut InspectReport, h: &Qcow2Header, exts: &[crate::qcow2::HeaderExtension]) {
    use Severity::*;
    let inc = h.incompatible_features;
    if inc & INCOMPAT_DIRTY != 0 {
        // Lazy-refcount images are legitimately dirty while in use.
        let sev = if h.compatible_features & COMPAT_LAZY_REFCOUNTS != 0 {
            Info
        } else {
            Low
        };
        r.add(
            sev,
            "dirty",
            "dirty bit set: refcounts may be stale (image in use or crashed)",
        );
    }
    if inc & INCOMPAT_CORRUPT != 0 {
        r.add(
            High,
            "corrupt",
            "corrupt bit set: QEMU found metadata corruption",
        );
    }
    if inc & !INCOMPAT_KNOWN != 0 {
        r.add(
            High,
            "unknown_incompatible_features",
            format!(
                "unknown incompatible feature bits {:#x}",
                inc & !INCOMPAT_KNOWN
            ),
        );
    }
    let crypto_ext = exts.iter().any(|e| e.ext_type == EXT_ENCRYPTION);
    match (h.crypt_method, crypto_ext) {
        (2, false) => r.add(
            High,
            "encrypted_inconsistent",
            "LUKS crypt_method without encryption extension",
        ),
        (0 | 1, true) => r.add(
            High,
            "encrypted_inconsistent",
            format!(
                "encryption extension present but crypt_method is {}",
                h.crypt_method
            ),
        ),
        (1, false) => r.add(
            Low,
            "legacy_aes_encryption",
            "legacy AES-CBC encryption (insecure)",
        ),
        _ => {}
    }
    let data_file = exts.iter().find_map(|e| match &e.data {
        ExtensionData::ExternalDataFile(n) => Some(n.clone()),
        _ => None,
    });
    if (inc & INCOMPAT_DATA_FILE != 0) != data_file.is_some() {
        r.add(
            Medium,
            "external_data_inconsistent",
            "external data file bit and extension disagree",
        );
    }
    if let Some(n) = data_file {
        if let Some(dir) = volatile_location(Path::new(&n)) {
            r.add(
                High,
                "data_file_volatile",
                format!("external data file {n} is in {dir}"),
            );
        }
    }
}

/// Why `p` is an untrustworthy place for an image (volatile or world-writable
/// directory), if it is one.
fn volatile_location(p: &Path) -> Option<String> {
    let canon = std::fs::canonicalize(p).ok();
    for cand in std::iter::once(p).chain(canon.as_deref()) {
        if let Some(d) = VOLATILE_DIRS.iter().find(|d| cand.starts_with(d)) {
            return Some((*d).to_string());
        }
    }
    let dir = canon.as_deref().unwrap_or(p).parent()?;
    let mode = std::fs::metadata(dir).ok()?.permissions().mode();
    (mode & 0o002 != 0).then(|| format!("world-writable directory {}", dir.display()))
}

fn follow_chain(r: &mut InspectReport, path: &Path, first: Option<&BackingName>) {
    use Severity::*;
    let mut seen: HashSet<PathBuf> = std::fs::canonicalize(path).into_iter().collect();
    let mut cur_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut next = first.cloned();
    while let Some(name) = next.take() {
        if r.backing_chain.len() >= MAX_CHAIN {
            r.add(
                Medium,
                "backing_chain_too_long",
                format!("more than {MAX_CHAIN} backing files"),
            );
            return;
        }
        let shown = name.display();
        if name.0.starts_with(b"json:") || name.0.windows(3).any(|w| w == b"://") {
            r.add(
                Medium,
                "backing_file_nonlocal",
                format!("backing file {shown} is not a local path"),
            );
            return;
        }
        let raw = Path::new(OsStr::from_bytes(&name.0));
        let p = if raw.is_absolute() {
            raw.to_path_buf()
        } else {
            cur_dir.join(raw)
        };
        let canon = std::fs::canonicalize(&p).ok();
        let mut link = BackingLink {
            name: shown.clone(),
            path: p.display().to_string(),
            exists: canon.is_some(),
            format: "missing",
        };
        if let Some(dir) = volatile_location(&p) {
            r.add(
                High,
                "backing_file_volatile",
                format!("backing file {} is in {dir}", link.path),
            );
        }
        let Some(canon) = canon else {
            r.add(
                Medium,
                "backing_file_missing",
                format!("backing file {} does not exist", link.path),
            );
            r.backing_chain.push(link);
            return;
        };
        if !seen.insert(canon.clone()) {
            r.add(
                High,
                "backing_loop",
                format!("backing chain loops back to {}", canon.display()),
            );
            link.format = "qcow2";
            r.backing_chain.push(link);
            return;
        }
        let mut head = Vec::new();
        // A backing name is the image's author's to choose: it may name a FIFO or a device.
        let ok = crate::file::open(&canon)
            .map_err(std::io::Error::from)
            .and_then(|f| f.take(2 << 20).read_to_end(&mut head))
            .is_ok();
        link.format = "other";
        if ok {
            let cs = Qcow2Header::decode_lossy(&head).cluster_size();
            if let Ok((_, _, b)) = parse_head(&head[..head.len().min(cs as usize)]) {
                link.format = "qcow2";
                next = b;
            }
        }
        cur_dir = canon.parent().map(Path::to_path_buf).unwrap_or_default();
        r.backing_chain.push(link);
    }
}

fn bounds_checks(r: &mut InspectReport, img: &Qcow2Image) {
    let len = img.file_len;
    let mut bad: Vec<String> = img
        .metadata_extents()
        .into_iter()
        .filter(|(_, s, e)| *s >= len || *e > len)
        .map(|(l, s, e)| format!("{l} [{s:#x}..{e:#x})"))
        .collect();
    // Cluster-sized tables: flag only when they start past EOF (QEMU may
    // leave the last cluster short).
    for (kind, set) in [
        ("refcount_block", img.refcount_blocks()),
        ("l2", img.l2_tables()),
    ] {
        bad.extend(
            set.iter()
                .filter(|&&o| o >= len)
                .map(|o| format!("{kind} {o:#x}")),
        );
    }
    if !bad.is_empty() {
        let n = bad.len();
        bad.truncate(8);
        r.add(
            Severity::High,
            "header_outside_file",
            format!(
                "{n} metadata structure(s) beyond EOF {len:#x}: {}",
                bad.join(", ")
            ),
        );
    }
}

fn overlap_checks(r: &mut InspectReport, img: &Qcow2Image) {
    let cs = img.cluster_size();
    let mut ext = img.metadata_extents();
    ext.extend(
        img.refcount_blocks()
            .into_iter()
            .map(|o| ("refcount_block".to_string(), o, o.saturating_add(cs))),
    );
    ext.retain(|(_, s, e)| s < e);
    ext.sort_by_key(|(_, s, e)| (*s, *e));
    let mut hits = Vec::new();
    let mut open: Option<(String, u64)> = None; // furthest-reaching extent so far
    for (label, s, e) in &ext {
        if let Some((ol, oe)) = &open {
            if s < oe {
                hits.push(format!("{ol} overlaps {label} at {s:#x}"));
            }
        }
        if open.as_ref().is_none_or(|(_, oe)| e > oe) {
            open = Some((label.clone(), *e));
        }
    }
    // L2 tables are shared between L1s legitimately, so check them only
    // against the other structures.
    let l2 = img.l2_tables();
    for (label, s, e) in &ext {
        let first = l2.partition_point(|&c| c.saturating_add(cs) <= *s);
        if let Some(&c) = l2.get(first).filter(|&&c| c < *e) {
            hits.push(format!("l2 {c:#x} overlaps {label}"));
        }
    }
    if !hits.is_empty() {
        let n = hits.len();
        hits.truncate(8);
        r.add(
            Severity::High,
            "overlapping_metadata",
            format!("{n} overlap(s): {}", hits.join("; ")),
        );
    }
}

/// Snapshots hidden by lowering nb_snapshots: QEMU writes a fresh table on
/// every change (and sets snapshots_offset to 0 when none remain), so
/// plausible entries past nb_snapshots mean the count was edited.
fn hidden_snapshot_checks<F: Read + Seek>(r: &mut InspectReport, img: &Qcow2Image, f: &mut F) {
    let h = &img.header;
    if h.snapshots_offset == 0 {
        return;
    }
    let nb = h.nb_snapshots as usize;
    let tail = h.snapshots_offset.saturating_add(img.snapshot_table_len);
    let hidden: Vec<SnapshotEntry> =
        scan_snapshot_entries(f, tail, img.cluster_size(), MAX_SNAPSHOTS as usize - nb);
    if hidden.is_empty() {
        if nb == 0 {
            r.add(
                Severity::Low,
                "snapshot_offset_dangling",
                format!(
                    "nb_snapshots is 0 but snapshots_offset is {:#x} (QEMU writes 0)",
                    h.snapshots_offset
                ),
            );
        }
        return;
    }
    let desc: Vec<String> = hidden
        .iter()
        .take(16)
        .map(|s| {
            let rc = img
                .refcount_of(f, s.l1_table_offset)
                .map_or("refcount unknown".to_string(), |c| format!("refcount {c}"));
            format!(
                "'{}' (id {}, L1 {:#x}, {rc})",
                s.name, s.id, s.l1_table_offset
            )
        })
        .collect();
    r.add(
        Severity::High,
        "hidden_snapshot_suspected",
        format!(
            "snapshot table at {:#x} holds {} valid entr{} beyond nb_snapshots={nb}: {}",
            h.snapshots_offset,
            hidden.len(),
            if hidden.len() == 1 { "y" } else { "ies" },
            desc.join(", ")
        ),
    );
}

// ---------------------------------------------------------------- baseline

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub qcow2: Option<HeaderSummary>,
}

/// A FIFO, device or symlink at `path` (planted since the baseline, say) is an error, never
/// opened or followed.
pub fn baseline_entry(path: &Path) -> Result<BaselineEntry, Qcow2Error> {
    let mut f = crate::file::open(path).map_err(|e| Qcow2Error::Io(e.into()))?;
    let size = f.metadata()?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let qcow2 = Qcow2Image::read_from(&mut f).ok().map(|i| i.summary());
    Ok(BaselineEntry {
        path: path.display().to_string(),
        size,
        sha256: hex::encode(hasher.finalize()),
        qcow2,
    })
}

pub fn compare_baseline(old: &BaselineEntry, new: &BaselineEntry) -> Vec<FieldChange> {
    let mut out = Vec::new();
    let mut cmp = |f: &str, a: String, b: String| {
        if a != b {
            out.push(FieldChange::new(f, a, b));
        }
    };
    cmp("path", old.path.clone(), new.path.clone());
    cmp("file_size", old.size.to_string(), new.size.to_string());
    cmp("sha256", old.sha256.clone(), new.sha256.clone());
    match (&old.qcow2, &new.qcow2) {
        (Some(a), Some(b)) => {
            let hex = |v: u64| format!("{v:#x}");
            let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "(none)".into());
            for (f, x, y) in [
                ("version", a.version.to_string(), b.version.to_string()),
                (
                    "size",
                    a.virtual_size.to_string(),
                    b.virtual_size.to_string(),
                ),
                (
                    "cluster_size",
                    a.cluster_size.to_string(),
                    b.cluster_size.to_string(),
                ),
                (
                    "crypt_method",
                    a.crypt_method.to_string(),
                    b.crypt_method.to_string(),
                ),
                ("backing_file", opt(&a.backing_file), opt(&b.backing_file)),
                (
                    "backing_format",
                    opt(&a.backing_format),
                    opt(&b.backing_format),
                ),
                (
                    "nb_snapshots",
                    a.nb_snapshots.to_string(),
                    b.nb_snapshots.to_string(),
                ),
                (
                    "l1_table_offset",
                    hex(a.l1_table_offset),
                    hex(b.l1_table_offset),
                ),
                (
                    "refcount_table_offset",
                    hex(a.refcount_table_offset),
                    hex(b.refcount_table_offset),
                ),
                (
                    "snapshots_offset",
                    hex(a.snapshots_offset),
                    hex(b.snapshots_offset),
                ),
                (
                    "incompatible_features",
                    hex(a.incompatible_features),
                    hex(b.incompatible_features),
                ),
                (
                    "compatible_features",
                    hex(a.compatible_features),
                    hex(b.compatible_features),
                ),
                (
                    "autoclear_features",
                    hex(a.autoclear_features),
                    hex(b.autoclear_features),
                ),
                (
                    "refcount_bits",
                    a.refcount_bits.to_string(),
                    b.refcount_bits.to_string(),
                ),
            ] {
                cmp(f, x, y);
            }
            for n in a.snapshots.iter().filter(|n| !b.snapshots.contains(n)) {
                out.push(FieldChange::new("snapshot_removed", n, ""));
            }
            for n in b.snapshots.iter().filter(|n| !a.snapshots.contains(n)) {
                out.push(FieldChange::new("snapshot_added", "", n));
            }
        }
        (a, b) if a.is_some() != b.is_some() => {
            let fmt = |s: &Option<HeaderSummary>| if s.is_some() { "qcow2" } else { "unknown" };
            out.push(FieldChange::new("format", fmt(a), fmt(b)));
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qcow2::testutil::*;

    fn codes(r: &InspectReport) -> Vec<&'static str> {
        r.findings.iter().map(|f| f.code).collect()
    }

    #[test]
    fn hidden_snapshots_found_after_nb_zeroed() {
        let d = TmpDir::new("hidden");
        let p = image_with_snapshots(&d, "a.qcow2", &[]);
        let clean = inspect_image(&p);
        assert!(
            clean.finding("hidden_snapshot_suspected").is_none(),
            "{clean}"
        );
        patch(&p, 60, &[0; 4]);
        let r = inspect_image(&p);
        let f = r
            .finding("hidden_snapshot_suspected")
            .unwrap_or_else(|| panic!("{r}"));
        assert!(f.severity >= Severity::High);
        assert!(
            f.message.contains("'s1'") && f.message.contains("'s2'"),
            "{}",
            f.message
        );
        assert!(f.message.contains("refcount 1"), "{}", f.message);
        assert!(r.snapshots.is_empty());
        assert!(r.to_string().contains("hidden_snapshot_suspected"));
        // Hiding only the last one names only it.
        patch(&p, 60, &1u32.to_be_bytes());
        let r = inspect_image(&p);
        let m = &r.finding("hidden_snapshot_suspected").unwrap().message;
        assert!(m.contains("'s2'") && !m.contains("'s1'"), "{m}");
        // Count and table pointer both zeroed: the orphaned table is found.
        patch(&p, 60, &[0; 12]);
        let r = inspect_image(&p);
        let m = &r
            .finding("hidden_snapshot_suspected")
            .unwrap_or_else(|| panic!("{r}"))
            .message;
        assert!(
            m.contains("unreferenced") && m.contains("'s1'") && m.contains("'s2'"),
            "{m}"
        );
    }

    #[test]
    fn hidden_with_sub_byte_refcounts() {
        for bits in ["1", "4", "64"] {
            let d = TmpDir::new("rc");
            let p = d.s("a.qcow2");
            qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &format!("refcount_bits={bits}"),
                &p,
                "16M",
            ]);
            qemu_img(&["snapshot", "-c", "x", &p]);
            assert!(!inspect_image(&d.path("a.qcow2")).has_findings_at_least(Severity::Low));
            patch(&d.path("a.qcow2"), 60, &[0; 4]);
            let r = inspect_image(&d.path("a.qcow2"));
            let m = &r
                .finding("hidden_snapshot_suspected")
                .unwrap_or_else(|| panic!("{r}"))
                .message;
            assert!(
                m.contains("'x'") && m.contains("refcount 1"),
                "bits {bits}: {m}"
            );
        }
    }

    #[test]
    fn legit_delete_is_not_hidden() {
        let d = TmpDir::new("legit");
        let p = image_with_snapshots(&d, "a.qcow2", &[]);
        qemu_img(&["snapshot", "-d", "s2", &d.s("a.qcow2")]);
        let r = inspect_image(&p);
        assert!(!r.has_findings_at_least(Severity::Low), "{r}");
        qemu_img(&["snapshot", "-d", "s1", &d.s("a.qcow2")]);
        let r = inspect_image(&p);
        assert!(!r.has_findings_at_least(Severity::Low), "{r}");
    }

    #[test]
    fn clean_image_has_no_medium_findings() {
        let d = TmpDir::new("clean");
        let p = image_with_snapshots(&d, "a.qcow2", &["-o", "lazy_refcounts=on"]);
        qemu_img(&["bitmap", "--add", &d.s("a.qcow2"), "bm0"]);
        let r = inspect_image(&p);
        assert_eq!(r.format, "qcow2");
        assert!(!r.has_findings_at_least(Severity::Medium), "{r}");
        assert_eq!(r.snapshots.len(), 2);
        assert!(r.features.contains(&"lazy_refcounts".to_string()));
        // v2, with the table last in the file (its final padding is never
        // written).
        let v2 = d.s("v2.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10,cluster_size=4096",
            &v2,
            "16M",
        ]);
        qemu_img(&["snapshot", "-c", "only", &v2]);
        let r2 = inspect_image(&d.path("v2.qcow2"));
        assert!(!r2.has_findings_at_least(Severity::Low), "{r2}");
        assert_eq!(r2.snapshots[0].name, "only");
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["format"], "qcow2");
        assert_eq!(j["header"]["snapshots"][1], "s2");
    }

    #[test]
    fn backing_chain_findings() {
        let d = TmpDir::new("chain");
        qemu_img(&["create", "-q", "-f", "qcow2", &d.s("base.qcow2"), "16M"]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            &d.s("mid.qcow2"),
        ]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            &d.s("top.qcow2"),
        ]);
        let r = inspect_image(&d.path("top.qcow2"));
        let names: Vec<&str> = r.backing_chain.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["mid.qcow2", "base.qcow2"]);
        assert!(r
            .backing_chain
            .iter()
            .all(|l| l.exists && l.format == "qcow2"));
        // The test dir lives under /tmp, so the chain is volatile.
        assert!(
            r.finding("backing_file_volatile")
                .unwrap()
                .message
                .contains("/tmp"),
            "{r}"
        );
        assert!(r.finding("backing_file_missing").is_none());

        qemu_img(&[
            "rebase",
            "-u",
            "-b",
            "/tmp/snapmon-no-such-evil.qcow2",
            "-F",
            "qcow2",
            &d.s("top.qcow2"),
        ]);
        let r = inspect_image(&d.path("top.qcow2"));
        assert!(r.finding("backing_file_missing").is_some(), "{r}");
        assert!(r.finding("backing_file_volatile").is_some(), "{r}");

        // base -> top loop.
        qemu_img(&[
            "rebase",
            "-u",
            "-b",
            "top.qcow2",
            "-F",
            "qcow2",
            &d.s("base.qcow2"),
        ]);
        qemu_img(&[
            "rebase",
            "-u",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            &d.s("top.qcow2"),
        ]);
        let r = inspect_image(&d.path("top.qcow2"));
        assert!(r.finding("backing_loop").is_some(), "{r}");
        assert_eq!(r.backing_chain.len(), 3);
    }

    #[test]
    fn non_volatile_backing_not_flagged() {
        // Must not be under /tmp (CI may clone there): /var/lib is neither volatile nor
        // world-writable.
        let dir = PathBuf::from(format!(
            "/var/lib/snapmon-test-inspect-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let s = |n: &str| dir.join(n).display().to_string();
        qemu_img(&["create", "-q", "-f", "qcow2", &s("base.qcow2"), "16M"]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            &s("top.qcow2"),
        ]);
        let r = inspect_image(&dir.join("top.qcow2"));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!r.has_findings_at_least(Severity::Low), "{r}");
        assert_eq!(r.backing_chain.len(), 1);
    }

    #[test]
    fn damaged_headers() {
        let d = TmpDir::new("damage");
        let p = image_with_snapshots(&d, "a.qcow2", &[]);
        let good = std::fs::read(&p).unwrap();
        let variant = |name: &str, off: usize, bytes: &[u8]| {
            let q = d.path(name);
            let mut v = good.clone();
            v[off..off + bytes.len()].copy_from_slice(bytes);
            std::fs::write(&q, v).unwrap();
            inspect_image(&q)
        };
        let r = variant(
            "dirty.qcow2",
            72,
            &(INCOMPAT_DIRTY | INCOMPAT_CORRUPT).to_be_bytes(),
        );
        assert!(
            codes(&r).contains(&"dirty") && codes(&r).contains(&"corrupt"),
            "{r}"
        );
        let r = variant("unk.qcow2", 72, &(1u64 << 40).to_be_bytes());
        assert!(codes(&r).contains(&"unknown_incompatible_features"), "{r}");
        let r = variant("luks.qcow2", 32, &2u32.to_be_bytes());
        assert!(codes(&r).contains(&"encrypted_inconsistent"), "{r}");
        let r = variant("far.qcow2", 40, &(1u64 << 40).to_be_bytes());
        assert!(codes(&r).contains(&"header_outside_file"), "{r}");
        let rt = &good[48..56];
        let r = variant("overlap.qcow2", 40, rt);
        assert!(codes(&r).contains(&"overlapping_metadata"), "{r}");
        let r = variant("magic.qcow2", 0, b"XXXX");
        assert_eq!((r.format, codes(&r)), ("unknown", vec!["bad_magic"]));
        let mut rng = XorShift(99);
        let noise: Vec<u8> = (0..512).map(|_| rng.next() as u8).collect();
        let r = variant("random.qcow2", 0, &noise);
        assert!(
            codes(&r).contains(&"bad_magic") && codes(&r).contains(&"header_random"),
            "{r}"
        );
        std::fs::write(d.path("short.qcow2"), &good[..50]).unwrap();
        assert_eq!(codes(&inspect_image(&d.path("short.qcow2"))), ["truncated"]);
        let r = inspect_image(&d.path("missing.qcow2"));
        assert_eq!(codes(&r), ["io_error"]);
    }

    #[test]
    fn baseline_round_trip_and_compare() {
        let d = TmpDir::new("baseline");
        let p = image_with_snapshots(&d, "a.qcow2", &[]);
        let old = baseline_entry(&p).unwrap();
        assert_eq!(old.sha256.len(), 64);
        let back: BaselineEntry =
            serde_json::from_str(&serde_json::to_string(&old).unwrap()).unwrap();
        assert_eq!(back, old);
        assert!(compare_baseline(&old, &back).is_empty());
        qemu_img(&["snapshot", "-c", "s3", &d.s("a.qcow2")]);
        let new = baseline_entry(&p).unwrap();
        let ch: Vec<String> = compare_baseline(&old, &new)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(ch.contains(&"nb_snapshots: 2 → 3".to_string()), "{ch:?}");
        assert!(ch.contains(&"snapshot_added: s3".to_string()), "{ch:?}");
        assert!(ch.iter().any(|c| c.starts_with("sha256: ")));
        std::fs::write(&p, b"not qcow2").unwrap();
        let raw = baseline_entry(&p).unwrap();
        assert!(raw.qcow2.is_none());
        assert!(compare_baseline(&new, &raw)
            .iter()
            .any(|c| c.to_string() == "format: qcow2 → unknown"));
    }

    /// Runs `f` on a thread: a blocking open would hang the suite, so it fails after 10 s.
    fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("blocked: a FIFO with no writer was opened for reading")
    }

    #[test]
    fn a_fifo_or_symlink_named_like_an_image_is_reported_not_opened() {
        let d = TmpDir::new("inspect-fifo");
        let fifo = d.path("x.qcow2");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
        let p = fifo.clone();
        let r = within_10s(move || inspect_image(&p));
        let f = r.finding("io_error").unwrap_or_else(|| panic!("{r}"));
        assert!(f.message.contains("fifo"), "{}", f.message);
        let p = fifo.clone();
        let e = within_10s(move || baseline_entry(&p)).unwrap_err();
        assert!(e.to_string().contains("fifo"), "{e}");
        // A backing file named by the image's author: a FIFO is a link of format "other".
        let top = image_with_snapshots(&d, "top.qcow2", &[]);
        std::fs::remove_file(&top).unwrap();
        let s = top.to_str().unwrap();
        let ok = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b"])
            .arg(&fifo)
            .arg(s)
            .arg("16M")
            .status()
            .unwrap();
        assert!(ok.success());
        let r = within_10s(move || inspect_image(&top));
        assert_eq!(r.backing_chain.len(), 1, "{r}");
        assert_eq!(r.backing_chain[0].format, "other", "{r}");
        // A symlink is not followed.
        std::os::unix::fs::symlink(&fifo, d.path("link.qcow2")).unwrap();
        let r = inspect_image(&d.path("link.qcow2"));
        let f = r.finding("io_error").unwrap_or_else(|| panic!("{r}"));
        assert!(f.message.contains("symlink"), "{}", f.message);
    }
}
