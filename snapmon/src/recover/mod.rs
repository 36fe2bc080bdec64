//! `snapmon recover`: undo hidden snapshots. Finds the snapshot table an attacker hid (the
//! count lowered, the table pointer zeroed or overwritten) in the image itself or in the
//! agent's log and evidence, proves from the refcounts that nothing the table needs was
//! freed or reused since, and writes a copy of the image (or, with a backup, the image
//! itself, under QEMU's OFD locks) whose header points at the table again.

use std::{
    collections::HashMap,
    fs::File,
    io::{Read, Seek, Write as _},
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

use serde::Serialize;
use serde_json::Value;

use crate::classify::{
    inspect::{find_orphan_table, OrphanTable},
    qcow2::{
        read_at, refcount_entry, scan_snapshot_entries, Qcow2Error, Qcow2Image, WithWrite,
        INCOMPAT_DATA_FILE, INCOMPAT_EXTL2, L2_COMPRESSED, L2_OFFSET_MASK, MAX_SNAPSHOTS,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: not a readable qcow2 image: {1}")]
    Image(String, Qcow2Error),
    #[error("{0}")]
    Usage(String),
    #[error("{image} is in use: {why} (stop the VM or tool that holds it)")]
    Locked { image: String, why: String },
    #[error("no hidden snapshot table found in {0} (nor in the logs given)")]
    NothingHidden(String),
    #[error("refusing to restore: {0}")]
    Unsafe(String),
}

impl RecoverError {
    /// 1: nothing (safe) to restore; 2: usage, read or lock error.
    pub fn exit_code(&self) -> i32 {
        match self {
            RecoverError::NothingHidden(_) | RecoverError::Unsafe(_) => 1,
            _ => 2,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RecoverError + '_ {
    move |source| RecoverError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where a candidate table came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub source: String,
}

/// What `recover` restored.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub image: String,
    pub written: String,
    pub backup: Option<String>,
    pub from: Candidate,
    pub before: (u32, u64),
    pub snapshots: Vec<SnapshotSummary>,
    /// Candidates tried first and why they were not used.
    pub rejected: Vec<(Candidate, String)>,
    /// Clusters with more refcount than references after the restore (harmless leaks).
    pub leaked_clusters: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotSummary {
    pub id: String,
    pub name: String,
    pub l1_table_offset: u64,
}

pub struct Request<'a> {
    pub image: &'a Path,
    pub out: Option<&'a Path>,
    pub in_place: bool,
    pub backup: Option<&'a Path>,
    pub logs: &'a [PathBuf],
}

/// Run a recovery.
pub fn recover(req: &Request) -> Result<Restored, RecoverError> {
    let shown = req.image.display().to_string();
    let dest: &Path =
        match (req.out, req.in_place, req.backup) {
            (Some(_), true, _) => {
                return Err(RecoverError::Usage(
                    "--out and --in-place exclude each other".into(),
                ))
            }
            (Some(o), false, _) => {
                if o.exists() {
                    return Err(RecoverError::Usage(format!(
                        "{} exists; recover never overwrites (remove it or pick another --out)",
                        o.display()
                    )));
                }
                o
            }
            (None, true, Some(b)) => {
                if b.exists() {
                    return Err(RecoverError::Usage(format!(
                        "backup {} exists; recover never overwrites",
                        b.display()
                    )));
                }
                req.image
            }
            (None, true, None) => {
                return Err(RecoverError::Usage(
                    "--in-place needs --backup PATH (a copy of the image as it is now)".into(),
                ))
            }
            (None, false, _) => return Err(RecoverError::Usage(
                "say where the restored image goes: --out FIXED.qcow2, or --in-place --backup PATH"
                    .into(),
            )),
        };
    // Never blocking on a FIFO or writing through a symlink planted under the image's name;
    // every later read and copy goes through this one descriptor.
    let mut f = crate::classify::fileread::open_with(req.image, req.in_place)
        .map_err(|e| io(req.image)(e.into()))?;
    // As qemu-img does: nobody may write (or resize) while we read; in place we write.
    let perms = if req.in_place {
        PERM_READ | PERM_WRITE
    } else {
        PERM_READ
    };
    lock_like_qemu(&f, perms, PERM_READ | PERM_WRITE_UNCHANGED).map_err(|why| {
        RecoverError::Locked {
            image: shown.clone(),
            why,
        }
    })?;
    let img = Qcow2Image::read_from(&mut f).map_err(|e| RecoverError::Image(shown.clone(), e))?;
    let mut candidates = candidates_in_image(&img, &mut f);
    let (dev, ino) = {
        use std::os::unix::fs::MetadataExt as _;
        let m = f.metadata().map_err(io(req.image))?;
        (m.dev(), m.ino())
    };
    // The log's states first, newest first: they are what the header said, exactly; then
    // what the image itself still shows.
    let mut all: Vec<Candidate> = candidates_in_logs(req.logs, req.image, (dev, ino))?
        .into_iter()
        .rev()
        .collect();
    all.append(&mut candidates);
    let mut candidates = all;
    dedup(&mut candidates);
    let before = (img.header.nb_snapshots, img.header.snapshots_offset);
    let mut rejected = Vec::new();
    for c in candidates {
        if c.nb_snapshots <= img.header.nb_snapshots
            && c.snapshots_offset == img.header.snapshots_offset
        {
            continue;
        }
        match check(&img, &mut f, &c) {
            Ok((restored, leaks)) => {
                let patch = header_patch(&c);
                if req.in_place {
                    let b = req.backup.expect("checked above");
                    copy_synced(&f, req.image, b)?;
                    f.write_all_at(&patch, 60).map_err(io(req.image))?;
                    f.sync_all().map_err(io(req.image))?;
                } else {
                    let o = copy_synced(&f, req.image, dest)?;
                    o.write_all_at(&patch, 60).map_err(io(dest))?;
                    o.sync_all().map_err(io(dest))?;
                }
                return Ok(Restored {
                    image: shown,
                    written: dest.display().to_string(),
                    backup: req
                        .backup
                        .filter(|_| req.in_place)
                        .map(|b| b.display().to_string()),
                    from: c,
                    before,
                    snapshots: restored
                        .snapshots
                        .iter()
                        .map(|s| SnapshotSummary {
                            id: s.id.clone(),
                            name: s.name.clone(),
                            l1_table_offset: s.l1_table_offset,
                        })
                        .collect(),
                    rejected,
                    leaked_clusters: leaks,
                });
            }
            Err(why) => rejected.push((c, why)),
        }
    }
    if rejected.is_empty() {
        return Err(RecoverError::NothingHidden(shown));
    }
    Err(RecoverError::Unsafe(
        rejected
            .iter()
            .map(|(c, why)| {
                format!(
                    "table at {:#x} with {} snapshots ({}): {why}",
                    c.snapshots_offset, c.nb_snapshots, c.source
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    ))
}

fn dedup(v: &mut Vec<Candidate>) {
    let mut seen = Vec::new();
    v.retain(|c| {
        let k = (c.nb_snapshots, c.snapshots_offset);
        if seen.contains(&k) {
            false
        } else {
            seen.push(k);
            true
        }
    });
}

/// Bytes 60..72: nb_snapshots and snapshots_offset, big-endian.
fn header_patch(c: &Candidate) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[..4].copy_from_slice(&c.nb_snapshots.to_be_bytes());
    p[4..].copy_from_slice(&c.snapshots_offset.to_be_bytes());
    p
}

/// Copy the open image (`from` names it in errors) to a new file `to`, synced; the copy's
/// descriptor, so nothing reopens `to` by name.
fn copy_synced(src: &File, from: &Path, to: &Path) -> Result<File, RecoverError> {
    let mut src = src.try_clone().map_err(io(from))?;
    src.seek(std::io::SeekFrom::Start(0)).map_err(io(from))?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(io(to))?;
    std::io::copy(&mut src, &mut dst).map_err(io(to))?;
    dst.flush().map_err(io(to))?;
    dst.sync_all().map_err(io(to))?;
    Ok(dst)
}

/// Tables the image itself still holds: entries beyond `nb_snapshots` at the table the
/// header points to, or an allocated table nothing points to.
fn candidates_in_image<F: Read + Seek>(img: &Qcow2Image, f: &mut F) -> Vec<Candidate> {
    let mut v = Vec::new();
    let h = &img.header;
    let cs = img.cluster_size();
    if h.snapshots_offset != 0 {
        let n = scan_snapshot_entries(f, h.snapshots_offset, cs, MAX_SNAPSHOTS as usize).len();
        if n as u32 > h.nb_snapshots {
            v.push(Candidate {
                nb_snapshots: n as u32,
                snapshots_offset: h.snapshots_offset,
                source: format!(
                    "entries beyond nb_snapshots={} in the table the header points to",
                    h.nb_snapshots
                ),
            });
        }
    }
    if let OrphanTable::Found { at, entries } = find_orphan_table(img, f) {
        v.push(Candidate {
            nb_snapshots: entries.len() as u32,
            snapshots_offset: at,
            source: "an allocated snapshot table no header field points to".into(),
        });
    }
    v
}

fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The header states the agent logged for this image, oldest first: every
/// `nb_snapshots`/`snapshots_offset` pair it ever saw, and the pre-images of its evidence.
pub fn candidates_in_logs(
    logs: &[PathBuf],
    image: &Path,
    (_dev, ino): (u64, u64),
) -> Result<Vec<Candidate>, RecoverError> {
    use std::io::BufRead as _;
    let canon = std::fs::canonicalize(image).unwrap_or_else(|_| image.to_path_buf());
    let names: Vec<String> = [image.display().to_string(), canon.display().to_string()].into();
    let ours = |v: &Value| {
        let path = v["file"]["path"].as_str();
        path.is_some_and(|p| names.iter().any(|n| n == p))
            || v["file"]["inode"].as_str() == Some(ino.to_string().as_str())
                && path.is_none_or(|p| names.iter().any(|n| n == p))
    };
    let mut out = Vec::new();
    let (mut nb, mut off): (Option<u64>, Option<u64>) = (None, None);
    for l in logs {
        let file = File::open(l).map_err(io(l))?;
        for (n, line) in std::io::BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .enumerate()
        {
            if !line.contains("nb_snapshots")
                && !line.contains("snapshots_offset")
                && !line.contains(crate::evidence::FILES_KEY)
            {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let at = format!("{}:{}", l.display(), n + 1);
            if v["snapmon"]["state"]["image"]
                .as_str()
                .is_some_and(|p| names.iter().any(|n| n == p))
            {
                for fv in v["snapmon"]["state"][crate::evidence::FILES_KEY]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let Some(p) = fv["path"].as_str().filter(|p| p.ends_with("/pre.json")) else {
                        continue;
                    };
                    let Ok(pre) = std::fs::read(p).map(|b| serde_json::from_slice::<Value>(&b))
                    else {
                        continue;
                    };
                    let Ok(pre) = pre else { continue };
                    if let (Some(n), Some(o)) = (
                        pre["header"]["nb_snapshots"].as_u64(),
                        pre["header"]["snapshots_offset"].as_u64(),
                    ) {
                        out.push(Candidate {
                            nb_snapshots: n as u32,
                            snapshots_offset: o,
                            source: format!("evidence {p} (logged at {at})"),
                        });
                    }
                }
                continue;
            }
            if !ours(&v) {
                continue;
            }
            let changes = &v["snapmon"]["classification"]["changes"];
            let get = |field: &str| {
                changes
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["field"] == field)
                    .map(|c| {
                        (
                            c["before"].as_str().and_then(parse_num),
                            c["after"].as_str().and_then(parse_num),
                        )
                    })
            };
            let (cn, co) = (get("nb_snapshots"), get("snapshots_offset"));
            if cn.is_none() && co.is_none() {
                continue;
            }
            // The state before this change, as far as the log tells it.
            let prev_nb = cn.and_then(|c| c.0).or(nb);
            let prev_off = co.and_then(|c| c.0).or(off);
            if let (Some(n), Some(o)) = (prev_nb, prev_off) {
                out.push(Candidate {
                    nb_snapshots: n as u32,
                    snapshots_offset: o,
                    source: format!("the agent's log, before the change at {at}"),
                });
            }
            nb = cn.and_then(|c| c.1).or(prev_nb);
            off = co.and_then(|c| c.1).or(prev_off);
        }
    }
    if let (Some(n), Some(o)) = (nb, off) {
        out.push(Candidate {
            nb_snapshots: n as u32,
            snapshots_offset: o,
            source: "the agent's log, last state".into(),
        });
    }
    out.retain(|c| c.nb_snapshots > 0 && c.snapshots_offset != 0);
    Ok(out)
}

/// Refcounts of every cluster, read once.
struct Refcounts {
    width: u64,
    per_block: u64,
    blocks: HashMap<u64, Vec<u8>>,
    table: Vec<u64>,
}

/// Refcount blocks read at most.
const MAX_REFCOUNT_BYTES: u64 = 256 << 20;

impl Refcounts {
    fn load<F: Read + Seek>(img: &Qcow2Image, f: &mut F) -> Result<Refcounts, String> {
        let cs = img.cluster_size();
        let width = img.header.refcount_bits();
        if cs == 0 || width == 0 || width > 64 {
            return Err("unsupported refcount width".into());
        }
        let mut blocks = HashMap::new();
        let mut budget = MAX_REFCOUNT_BYTES;
        for &e in &img.refcount_table {
            let b = e & 0xffff_ffff_ffff_fe00;
            if b == 0 || blocks.contains_key(&b) {
                continue;
            }
            budget = budget
                .checked_sub(cs)
                .ok_or("refcount blocks larger than recover reads")?;
            let data = read_at(f, b, cs).map_err(|e| e.to_string())?;
            blocks.insert(b, data);
        }
        Ok(Refcounts {
            width,
            per_block: cs * 8 / width,
            blocks,
            table: img.refcount_table.clone(),
        })
    }

    fn get(&self, cluster: u64) -> u64 {
        let Some(&e) = self.table.get((cluster / self.per_block) as usize) else {
            return 0;
        };
        let b = e & 0xffff_ffff_ffff_fe00;
        self.blocks.get(&b).map_or(0, |blk| {
            refcount_entry(blk, cluster % self.per_block, self.width)
        })
    }
}

/// Every reference the image's metadata makes, per cluster, as `qemu-img check` counts
/// them: each L1 table walks its L2 tables and their data clusters once.
struct References {
    cs: u64,
    refs: HashMap<u64, u64>,
    l2_cache: HashMap<u64, Vec<u8>>,
    budget: u64,
}

impl References {
    fn add(&mut self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = off / self.cs;
        let last = (off + len - 1) / self.cs;
        for c in first..=last {
            *self.refs.entry(c).or_default() += 1;
        }
    }

    fn l1<F: Read + Seek>(
        &mut self,
        img: &Qcow2Image,
        f: &mut F,
        off: u64,
        entries: &[u64],
        bytes: u64,
    ) -> Result<(), String> {
        self.add(off, bytes);
        let stride = if img.header.incompatible_features & INCOMPAT_EXTL2 != 0 {
            16
        } else {
            8
        };
        let data_file = img.header.incompatible_features & INCOMPAT_DATA_FILE != 0;
        let cb = img.header.cluster_bits as u64;
        for &e in entries {
            let l2 = e & 0x00ff_ffff_ffff_fe00;
            if l2 == 0 {
                continue;
            }
            self.add(l2, self.cs);
            if !self.l2_cache.contains_key(&l2) {
                self.budget = self
                    .budget
                    .checked_sub(self.cs)
                    .ok_or("L2 tables larger than recover reads")?;
                let t = read_at(f, l2, self.cs).map_err(|e| e.to_string())?;
                self.l2_cache.insert(l2, t);
            }
            let table = self.l2_cache[&l2].clone();
            for ent in table.chunks_exact(stride) {
                let v = u64::from_be_bytes(ent[..8].try_into().unwrap_or_default());
                if v & L2_COMPRESSED != 0 {
                    // Compressed: host offset and sector count (qcow2.rst "Compressed Clusters").
                    let x = 62 - (cb - 8);
                    let host = v & ((1u64 << x) - 1);
                    let sectors = ((v >> x) & ((1u64 << (cb - 8)) - 1)) + 1;
                    let start = host & !511;
                    let end = (host & !511) + sectors * 512;
                    self.add(start, end - start);
                } else if !data_file {
                    let d = v & L2_OFFSET_MASK;
                    if d != 0 {
                        self.add(d, self.cs);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Is restoring `c` safe? The restored image must parse, and every cluster it references
/// must have at least as much refcount as references: a cluster freed (refcount dropped)
/// or reused (referenced by something new as well) since the table was hidden fails.
/// Returns the restored image and the count of leaked clusters left.
fn check<F: Read + Seek>(
    img: &Qcow2Image,
    f: &mut F,
    c: &Candidate,
) -> Result<(Qcow2Image, usize), String> {
    let cs = img.cluster_size();
    let found = scan_snapshot_entries(f, c.snapshots_offset, cs, c.nb_snapshots as usize);
    if found.len() < c.nb_snapshots as usize {
        return Err(format!(
            "only {} of {} snapshot entries are still there (the table was overwritten since)",
            found.len(),
            c.nb_snapshots
        ));
    }
    let patch = header_patch(c);
    let restored = {
        let mut w = WithWrite::new(&mut *f, 60, &patch);
        Qcow2Image::read_from(&mut w)
            .map_err(|e| format!("the restored header does not open: {e}"))?
    };
    if !restored.snapshot_l1_complete {
        return Err("the snapshots' L1 tables are larger than recover reads".into());
    }
    let rc = Refcounts::load(&restored, f)?;
    let mut refs = References {
        cs,
        refs: HashMap::new(),
        l2_cache: HashMap::new(),
        budget: 256 << 20,
    };
    // Everything the restored image references, as qemu-img check counts it.
    refs.add(0, cs);
    let h = &restored.header;
    refs.add(h.refcount_table_offset, h.refcount_table_bytes());
    for b in restored.refcount_blocks() {
        refs.add(b, cs);
    }
    refs.add(
        h.snapshots_offset,
        restored.snapshot_table_len.div_ceil(cs).max(1) * cs,
    );
    for e in &restored.extensions {
        if let crate::classify::qcow2::ExtensionData::Encryption { offset, length } = e.data {
            refs.add(offset, length);
        }
    }
    if !restored.bitmaps.is_empty() {
        for e in &restored.extensions {
            if let crate::classify::qcow2::ExtensionData::Bitmaps {
                bitmap_directory_offset,
                bitmap_directory_size,
                ..
            } = e.data
            {
                refs.add(bitmap_directory_offset, bitmap_directory_size);
            }
        }
        for b in &restored.bitmaps {
            let bytes = u64::from(b.table_size) * 8;
            refs.add(b.table_offset, bytes);
            let t = read_at(f, b.table_offset, bytes).map_err(|e| e.to_string())?;
            for ent in t.chunks_exact(8) {
                let o =
                    u64::from_be_bytes(ent.try_into().unwrap_or_default()) & 0x00ff_ffff_ffff_fe00;
                if o != 0 {
                    refs.add(o, cs);
                }
            }
        }
    }
    refs.l1(
        &restored,
        f,
        h.l1_table_offset,
        &restored.l1,
        u64::from(h.l1_size) * 8,
    )?;
    for (s, l1) in restored.snapshots.iter().zip(&restored.snapshot_l1) {
        refs.l1(
            &restored,
            f,
            s.l1_table_offset,
            l1,
            u64::from(s.l1_size) * 8,
        )?;
    }
    // The clusters only the hidden table brings back.
    let mut needed = References {
        cs,
        refs: HashMap::new(),
        l2_cache: std::mem::take(&mut refs.l2_cache),
        budget: refs.budget,
    };
    needed.add(
        c.snapshots_offset,
        restored.snapshot_table_len.div_ceil(cs).max(1) * cs,
    );
    let visible = img.snapshots.len();
    for (s, l1) in restored
        .snapshots
        .iter()
        .zip(&restored.snapshot_l1)
        .skip(visible)
    {
        needed.l1(
            &restored,
            f,
            s.l1_table_offset,
            l1,
            u64::from(s.l1_size) * 8,
        )?;
    }
    let mut bad: Vec<String> = needed
        .refs
        .keys()
        .filter_map(|&cl| {
            let want = refs.refs.get(&cl).copied().unwrap_or(0);
            let have = rc.get(cl);
            (want > have).then(|| {
                format!(
                    "cluster {:#x} is referenced {want} time(s) but its refcount is {have}",
                    cl * cs
                )
            })
        })
        .collect();
    if !bad.is_empty() {
        bad.sort();
        let n = bad.len();
        bad.truncate(4);
        return Err(format!(
            "{n} cluster(s) the hidden snapshots need were freed or reused since ({})",
            bad.join("; ")
        ));
    }
    let leaks = refs
        .refs
        .keys()
        .filter(|&&cl| rc.get(cl) > refs.refs[&cl])
        .count();
    Ok((restored, leaks))
}

// QEMU's OFD lock bytes (block/file-posix.c: RAW_LOCK_PERM_BASE, RAW_LOCK_SHARED_BASE) and
// permission bits (include/block/block-common.h: BLK_PERM_*).
const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;
const PERM_READ: u32 = 1 << 0;
const PERM_WRITE: u32 = 1 << 1;
const PERM_WRITE_UNCHANGED: u32 = 1 << 2;
const PERM_NAMES: [&str; 4] = ["consistent read", "write", "write unchanged", "resize"];

fn ofd(f: &File, cmd: libc::c_int, ty: libc::c_short, byte: i64) -> std::io::Result<libc::flock> {
    use std::os::fd::AsRawFd as _;
    let mut fl = libc::flock {
        l_type: ty,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: byte,
        l_len: 1,
        l_pid: 0,
    };
    // SAFETY: fcntl on an fd we own with a valid flock.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), cmd, &mut fl) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(fl)
    }
}

/// Take `perms` and refuse to share what `shared` leaves out, the way QEMU locks an image
/// (so a running VM and qemu-img see us, and we see them). Held until `f` is closed.
fn lock_like_qemu(f: &File, perms: u32, shared: u32) -> Result<(), String> {
    for bit in 0..4 {
        let m = 1u32 << bit;
        if perms & m != 0 {
            ofd(f, libc::F_OFD_SETLK, libc::F_RDLCK as _, PERM_BASE + bit)
                .map_err(|e| format!("locking byte {}: {e}", PERM_BASE + bit))?;
        }
        if shared & m == 0 {
            ofd(f, libc::F_OFD_SETLK, libc::F_RDLCK as _, SHARED_BASE + bit)
                .map_err(|e| format!("locking byte {}: {e}", SHARED_BASE + bit))?;
        }
    }
    for bit in 0..4 {
        let m = 1u32 << bit;
        let name = PERM_NAMES[bit as usize];
        if perms & m != 0 {
            let fl = ofd(f, libc::F_OFD_GETLK, libc::F_WRLCK as _, SHARED_BASE + bit)
                .map_err(|e| e.to_string())?;
            if fl.l_type != libc::F_UNLCK as libc::c_short {
                return Err(format!("another process does not share \"{name}\""));
            }
        }
        if shared & m == 0 {
            let fl = ofd(f, libc::F_OFD_GETLK, libc::F_WRLCK as _, PERM_BASE + bit)
                .map_err(|e| e.to_string())?;
            if fl.l_type != libc::F_UNLCK as libc::c_short {
                return Err(format!("another process holds \"{name}\""));
            }
        }
    }
    Ok(())
}

impl std::fmt::Display for Restored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: restored {} snapshot(s) (nb_snapshots {} → {}, snapshots_offset {:#x} → {:#x}) from {}",
            self.written,
            self.snapshots.len(),
            self.before.0,
            self.from.nb_snapshots,
            self.before.1,
            self.from.snapshots_offset,
            self.from.source
        )?;
        for s in &self.snapshots {
            writeln!(
                f,
                "  id {} name {} (L1 {:#x})",
                s.id, s.name, s.l1_table_offset
            )?;
        }
        if let Some(b) = &self.backup {
            writeln!(f, "  the image as it was is in {b}")?;
        }
        for (c, why) in &self.rejected {
            writeln!(
                f,
                "  not used: table at {:#x} with {} snapshots ({}): {why}",
                c.snapshots_offset, c.nb_snapshots, c.source
            )?;
        }
        if self.leaked_clusters > 0 {
            writeln!(
                f,
                "  {} cluster(s) keep more refcount than references (leaks; `qemu-img check -r leaks` frees them)",
                self.leaked_clusters
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
