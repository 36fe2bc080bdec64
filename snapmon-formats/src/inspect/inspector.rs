//! The checks of one image, its tables and its backing chain; every problem becomes a finding.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::qcow2::{
    parse_head, read_at, scan_snapshot_entries, shannon_entropy, BackingName, ExtensionData,
    HeaderSummary, Qcow2Error, Qcow2Header, Qcow2Image, SnapshotEntry, COMPAT_LAZY_REFCOUNTS,
    EXT_ENCRYPTION, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_DIRTY, INCOMPAT_EXTL2,
    INCOMPAT_KNOWN, L2_COMPRESSED, L2_OFFSET_MASK, MAX_SNAPSHOTS,
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
