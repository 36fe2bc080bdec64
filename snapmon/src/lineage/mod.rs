//! Lineage stage: a bounded process table that attributes every event to the
//! process image running at the event's timestamp and to its ancestor chain.
//!
//! # Model
//! * A process is keyed by `(tgid, start_ns)` (`start_ns` = the kernel's
//!   `start_boottime`), so a reused pid is a new entry. Generations of one
//!   pid are kept sorted by start; [`ProcessTable::lookup`] picks the one
//!   alive at the event time.
//! * Each process has an image history: the image inherited at fork, then
//!   one image per exec, sorted by exec time. Events arrive out of order by
//!   a few ms across CPUs, so everything is inserted by timestamp, never by
//!   arrival order, and a late fork for an already known key is merged.
//! * Exited entries stay for a grace period (default 5 s of *event* time,
//!   i.e. the highest timestamp observed) so late events still resolve. An
//!   exited process with children in the table is kept until they go, so a
//!   daemonised child (`bash -c 'x &'`) still shows its creator.
//! * The parent is the process that forked the child (reparenting is not
//!   followed: the creator is what an alert needs).
//! * Processes seen only in procfs have `start_ns` rounded down to clock
//!   ticks; keys therefore match when the starts differ by less than a tick.
//!
//! # entity_id
//! 16 hex digits of FNV-1a-64 over `boot_id`, `0xff`, `tgid` (LE u32),
//! `start_ns / tick_ns` (LE u64) and the image's exec timestamp (LE u64; 0
//! for the image inherited at fork or read from procfs). The start is
//! hashed in clock ticks so a process gets the same id whether it was learnt
//! from kernel events or from procfs. The exec *timestamp* stands in for the
//! exec sequence number: a sequence number would change when a late exec is
//! inserted before one already reported, the timestamp never does.
//! [`ProcessView::exec_seq`] still reports the sequence number.
//!
//! # Bounds
//! At most `max_entries` processes: when full, the least recently used
//! exited entry is dropped, else the least recently used live one (counted
//! in [`TableStats::evicted_live`]). argv is capped at [`MAX_ARGS`] args and
//! [`MAX_ARGS_BYTES`] bytes, ancestor chains at [`MAX_ANCESTORS`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Serialize, Serializer};

mod parse;
mod procfs;
#[cfg(test)]
mod tests;

pub use self::parse::{
    container_from_cgroup, escape_bytes, is_qemu, parse_qemu_vm, systemd_unit_from_cgroup,
    unescape_bytes, CgroupInfo, ContainerRef, Tty, VmIdentity,
};
pub use self::procfs::{
    cgroup2_mount, cgroup_path_by_id, clock_ticks_per_sec, read_boot_id, ticks_to_ns,
};

/// Default table bound.
pub const DEFAULT_MAX_ENTRIES: usize = 65_536;
/// How long (event time) an exited process stays resolvable.
pub const DEFAULT_EXIT_GRACE_NS: u64 = 5_000_000_000;
/// An event up to this long after the exit still belongs to the exited
/// process: the kernel reports the leader's exit, which can precede the last
/// events of its other threads. Beyond it a pid is assumed reused.
pub const EXIT_SLACK_NS: u64 = 10_000_000;
/// At most this many argv entries are kept per image.
pub const MAX_ARGS: usize = 64;
/// At most this many argv bytes (sum of argument lengths) are kept.
pub const MAX_ARGS_BYTES: usize = 4096;
/// Ancestor chains stop after this many entries.
pub const MAX_ANCESTORS: usize = 64;
/// Ancestors shown by [`ProcessView::lineage_string`] before `…`.
pub const LINEAGE_STRING_ANCESTORS: usize = 4;
/// cgroup id → path cache bound (cleared when full).
const MAX_CGROUPS: usize = 8192;

/// A fork of a thread-group leader (decoder output).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForkInfo {
    /// CLOCK_BOOTTIME ns.
    pub ts_ns: u64,
    pub parent_tgid: u32,
    pub child_tgid: u32,
    /// Child task `start_boottime` ns.
    pub child_start_ns: u64,
}

/// A successful exec (decoder output).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecInfo {
    pub ts_ns: u64,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub start_ns: u64,
    /// May be non-UTF-8.
    pub exe_path: Vec<u8>,
    pub exe_dev: u64,
    pub exe_ino: u64,
    pub argv: Vec<Vec<u8>>,
    pub comm: Vec<u8>,
    pub cgroup_id: u64,
}

/// A thread-group exit (decoder output).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitInfo {
    pub ts_ns: u64,
    pub tgid: u32,
    pub start_ns: u64,
    pub exit_code: i32,
}

/// Errors of the lineage stage (only procfs seeding can fail).
#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    #[error("cannot list procfs root {path}: {source}")]
    ProcfsRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Bytes kept losslessly; serialises (and displays) as the escaped string
/// of [`escape_bytes`]. Cheap to clone.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ByteString(Arc<[u8]>);

impl ByteString {
    pub fn new(bytes: &[u8]) -> Self {
        ByteString(Arc::from(bytes))
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Escaped display form (see [`escape_bytes`]).
    pub fn display(&self) -> String {
        escape_bytes(&self.0)
    }
}

impl fmt::Display for ByteString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

impl fmt::Debug for ByteString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.display())
    }
}

impl Serialize for ByteString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.display())
    }
}

/// How the image of a view was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Inherited from the parent at fork (no exec seen yet).
    Fork,
    /// From an exec event.
    Exec,
    /// Read from procfs (process older than the agent, or refreshed).
    Procfs,
    /// Nothing known about the image (fork parent unknown).
    Unknown,
}

/// Exit of a process, when known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExitView {
    pub ts_ns: u64,
    /// `None` when the exit is only implied (the pid was seen reused).
    pub code: Option<i32>,
}

/// Summary of one ancestor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AncestorView {
    pub pid: u32,
    pub entity_id: String,
    pub start_ns: u64,
    pub name: ByteString,
    pub exe: ByteString,
}

/// The parent, with the fields ECS `process.parent.*` wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentView {
    pub pid: u32,
    pub ppid: u32,
    pub entity_id: String,
    pub start_ns: u64,
    pub name: ByteString,
    pub exe: ByteString,
    pub args: Vec<ByteString>,
    pub args_truncated: bool,
    pub uid: Option<u32>,
    pub euid: Option<u32>,
}

/// Everything the lineage stage knows about the image running in one
/// process at one point in time, with its ancestry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessView {
    pub pid: u32,
    pub ppid: u32,
    pub entity_id: String,
    pub start_ns: u64,
    /// Number of execs up to and including this image (0: pre-exec image).
    pub exec_seq: u32,
    pub exec_ts_ns: Option<u64>,
    pub origin: Origin,
    /// Basename of the exe (without a ` (deleted)` suffix), else comm.
    pub name: ByteString,
    pub comm: ByteString,
    pub exe: ByteString,
    pub exe_dev: u64,
    pub exe_ino: u64,
    pub args: Vec<ByteString>,
    pub args_truncated: bool,
    /// `None` when the image is unknown (never guess root).
    pub uid: Option<u32>,
    pub euid: Option<u32>,
    pub gid: Option<u32>,
    /// As last read from procfs (not tracked through chdir).
    pub cwd: Option<ByteString>,
    pub cgroup_id: u64,
    pub cgroup_path: Option<String>,
    pub container_id: Option<String>,
    pub container_runtime: Option<String>,
    pub systemd_unit: Option<String>,
    pub session_id: Option<u32>,
    pub tty: Option<Tty>,
    /// This QEMU process's VM, or the nearest QEMU ancestor's.
    pub vm: Option<VmIdentity>,
    pub exit: Option<ExitView>,
    pub parent: Option<ParentView>,
    /// Parent first, up to pid 1.
    pub ancestors: Vec<AncestorView>,
    /// The chain was cut by [`MAX_ANCESTORS`] or a ppid loop.
    pub ancestors_truncated: bool,
}

impl ProcessView {
    /// `python3 ← bash ← sshd`: own name then up to
    /// [`LINEAGE_STRING_ANCESTORS`] ancestors (nearest first), then `…`.
    pub fn lineage_string(&self) -> String {
        let mut s = name_or_unknown(&self.name);
        for a in self.ancestors.iter().take(LINEAGE_STRING_ANCESTORS) {
            s.push_str(" ← ");
            s.push_str(&name_or_unknown(&a.name));
        }
        if self.ancestors.len() > LINEAGE_STRING_ANCESTORS || self.ancestors_truncated {
            s.push_str(" ← …");
        }
        s
    }

    /// Escaped args joined by spaces (ECS `process.command_line`).
    pub fn command_line(&self) -> String {
        let v: Vec<String> = self.args.iter().map(ByteString::display).collect();
        v.join(" ")
    }
}

fn name_or_unknown(n: &ByteString) -> String {
    if n.is_empty() {
        "?".to_string()
    } else {
        n.display()
    }
}

/// Counters for the agent's health report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TableStats {
    pub forks: u64,
    pub execs: u64,
    pub exits: u64,
    /// Exits for a process the table never knew.
    pub unknown_exits: u64,
    pub lookups: u64,
    pub lookup_misses: u64,
    /// Live processes dropped because the table was full.
    pub evicted_live: u64,
    pub evicted_exited: u64,
    /// Exited processes dropped after their grace period.
    pub purged_exited: u64,
    pub seeded: u64,
    pub entries: usize,
    pub live_entries: usize,
}

/// Result of a procfs seeding pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SeedStats {
    pub seeded: usize,
    /// Pids that vanished (or were unreadable) mid-read.
    pub skipped: usize,
}

type Key = (u32, u64);

/// Multiplicative hasher for integer keys: SipHash dominated the fork-storm
/// profile, and pids/cgroup ids are not attacker-chosen hash inputs.
#[derive(Default)]
struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

#[derive(Debug)]
struct ImageData {
    exe: ByteString,
    exe_dev: u64,
    exe_ino: u64,
    args: Vec<ByteString>,
    args_truncated: bool,
    comm: ByteString,
    name: ByteString,
    uid: u32,
    euid: u32,
    gid: u32,
    cgroup_id: u64,
    vm: Option<VmIdentity>,
}

impl ImageData {
    #[allow(
        clippy::too_many_arguments,
        reason = "one field each of the image a process build is made of"
    )]
    fn new(
        exe: &[u8],
        dev: u64,
        ino: u64,
        argv: &[Vec<u8>],
        comm: &[u8],
        ids: (u32, u32, u32),
        cgroup_id: u64,
    ) -> Self {
        let (args, args_truncated) = bound_args(argv);
        let base = parse::basename(exe);
        let base = base.strip_suffix(b" (deleted)").unwrap_or(base);
        ImageData {
            exe: ByteString::new(exe),
            exe_dev: dev,
            exe_ino: ino,
            args,
            args_truncated,
            comm: ByteString::new(comm),
            name: ByteString::new(if base.is_empty() { comm } else { base }),
            uid: ids.0,
            euid: ids.1,
            gid: ids.2,
            cgroup_id,
            // From the full argv: libvirt puts -uuid past many args.
            vm: parse_qemu_vm(exe, argv),
        }
    }
}

fn bound_args(argv: &[Vec<u8>]) -> (Vec<ByteString>, bool) {
    let mut out = Vec::with_capacity(argv.len().min(MAX_ARGS));
    let mut total = 0;
    for (i, a) in argv.iter().enumerate() {
        let room = MAX_ARGS_BYTES - total;
        if i >= MAX_ARGS || a.len() > room {
            if i < MAX_ARGS && room > 0 {
                out.push(ByteString::new(&a[..room]));
            }
            return (out, true);
        }
        total += a.len();
        out.push(ByteString::new(a));
    }
    (out, false)
}

#[derive(Debug, Clone)]
struct ImageRef {
    /// Sort key: exec ts, or the process start for fork/procfs images.
    at_ns: u64,
    exec_ts: Option<u64>,
    origin: Origin,
    data: Arc<ImageData>,
}

#[derive(Debug, Clone)]
struct ProcCgroup {
    /// cgroup id the path belongs to; 0 when unknown.
    id: u64,
    info: Arc<CgroupInfo>,
}

#[derive(Debug)]
struct Process {
    tgid: u32,
    start_ns: u64,
    ppid: u32,
    ppid_from_fork: bool,
    /// Parent this entry holds a `child_refs` reference on.
    parent_key: Option<Key>,
    child_refs: u32,
    images: Vec<ImageRef>,
    exit_ts: Option<u64>,
    exit_code: Option<i32>,
    purge_deadline: Option<u64>,
    /// Grace period over but pinned by children.
    purge_due: bool,
    lru_tick: u64,
    cwd: Option<ByteString>,
    cgroup: Option<ProcCgroup>,
    session_id: Option<u32>,
    tty: Option<Tty>,
}

impl Process {
    fn new(tgid: u32, start_ns: u64, ppid: u32) -> Self {
        Process {
            tgid,
            start_ns,
            ppid,
            ppid_from_fork: false,
            parent_key: None,
            child_refs: 0,
            images: Vec::new(),
            exit_ts: None,
            exit_code: None,
            purge_deadline: None,
            purge_due: false,
            lru_tick: 0,
            cwd: None,
            cgroup: None,
            session_id: None,
            tty: None,
        }
    }

    fn key(&self) -> Key {
        (self.tgid, self.start_ns)
    }

    fn insert_image(&mut self, img: ImageRef) {
        let pos = self.images.partition_point(|i| i.at_ns <= img.at_ns);
        if pos > 0 && self.images[pos - 1].at_ns == img.at_ns {
            let prev = &self.images[pos - 1];
            // Duplicate exec: keep the first. A fork/procfs image at the
            // same instant is replaced by an exec one.
            if prev.exec_ts.is_some() || img.exec_ts.is_none() {
                return;
            }
            self.images[pos - 1] = img;
            return;
        }
        self.images.insert(pos, img);
    }

    /// Image known at `ts`, with its exec sequence number. `None` when `ts`
    /// precedes the first known image and that is an exec (pre-exec image
    /// unknown locally).
    fn image_at(&self, ts: u64) -> Option<(&ImageRef, u32)> {
        let idx = self.images.partition_point(|i| i.at_ns <= ts);
        if idx == 0 {
            let first = self.images.first()?;
            // fork/procfs images start at the process start; ts can only
            // precede it by tick rounding.
            return first.exec_ts.is_none().then_some((first, 0));
        }
        let seq = self.images[..idx]
            .iter()
            .filter(|i| i.exec_ts.is_some())
            .count() as u32;
        Some((&self.images[idx - 1], seq))
    }

    fn alive_at(&self, ts: u64) -> bool {
        self.exit_ts
            .is_none_or(|e| ts <= e.saturating_add(EXIT_SLACK_NS))
    }
}

/// An image resolved for a point in time.
struct Resolved<'a> {
    data: &'a Arc<ImageData>,
    /// `None` for pre-exec (fork/procfs) images.
    exec_ts: Option<u64>,
    seq: u32,
    origin: Origin,
}

/// Fields a fork child inherits from its parent.
struct Inherit {
    image: Option<Arc<ImageData>>,
    cgroup: Option<ProcCgroup>,
    session_id: Option<u32>,
    tty: Option<Tty>,
}

/// Bounded process table; see the module docs.
pub struct ProcessTable {
    boot_id: String,
    boot_prefix: u64,
    max_entries: usize,
    exit_grace_ns: u64,
    tick_ns: u64,
    procfs_root: PathBuf,
    cgroupfs_root: Option<PathBuf>,
    /// tgid → generations sorted by start_ns.
    procs: IntMap<u32, Vec<Process>>,
    len: usize,
    /// LRU orders as queues of (tick, key) with lazy deletion: a pair is
    /// stale once its entry has a newer tick or is gone. O(1) per touch
    /// where ordered maps dominated the fork-storm profile.
    lru_live: VecDeque<(u64, Key)>,
    lru_exited: VecDeque<(u64, Key)>,
    live_count: usize,
    /// (exit deadline, key), lazily deleted: stale unless the entry's
    /// `purge_deadline` still equals it.
    purge_queue: BinaryHeap<Reverse<(u64, Key)>>,
    next_tick: u64,
    /// Highest event timestamp observed (the grace-period clock).
    now_ns: u64,
    cgroups: IntMap<u64, Arc<CgroupInfo>>,
    /// Cgroup ids whose path lookup failed (gone, no privilege): not retried per exec.
    cgroup_misses: IntMap<u64, ()>,
    stats: TableStats,
    /// Bumped by every change to what a lookup can return (see [`Self::stamp`]).
    generation: u64,
    /// No observed fork, exec, exit or procfs read is later than this.
    horizon_ns: u64,
}

impl fmt::Debug for ProcessTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessTable")
            .field("boot_id", &self.boot_id)
            .field("len", &self.len)
            .field("max_entries", &self.max_entries)
            .field("now_ns", &self.now_ns)
            .finish_non_exhaustive()
    }
}

impl ProcessTable {
    /// Table bounded to [`DEFAULT_MAX_ENTRIES`]; `boot_id` salts entity ids.
    pub fn new(boot_id: impl Into<String>) -> Self {
        Self::with_capacity(boot_id, DEFAULT_MAX_ENTRIES)
    }

    /// Table bounded to `max_entries` processes (at least 1).
    pub fn with_capacity(boot_id: impl Into<String>, max_entries: usize) -> Self {
        let hz = clock_ticks_per_sec();
        let boot_id = boot_id.into();
        ProcessTable {
            boot_prefix: boot_prefix(&boot_id),
            boot_id,
            max_entries: max_entries.max(1),
            exit_grace_ns: DEFAULT_EXIT_GRACE_NS,
            tick_ns: (1_000_000_000 / hz).max(1),
            procfs_root: PathBuf::from("/proc"),
            cgroupfs_root: None,
            procs: IntMap::with_capacity_and_hasher(
                max_entries.clamp(1, 1 << 16),
                Default::default(),
            ),
            len: 0,
            lru_live: VecDeque::new(),
            lru_exited: VecDeque::new(),
            live_count: 0,
            purge_queue: BinaryHeap::new(),
            next_tick: 0,
            now_ns: 0,
            cgroups: IntMap::default(),
            cgroup_misses: IntMap::default(),
            generation: 0,
            horizon_ns: 0,
            stats: TableStats::default(),
        }
    }

    /// Sets how long (event time) exited processes stay resolvable.
    pub fn with_exit_grace(mut self, grace_ns: u64) -> Self {
        self.exit_grace_ns = grace_ns;
        self
    }

    /// Sets the cgroup2 mount (normally `/sys/fs/cgroup`) used while reading
    /// procfs to learn cgroup ids (the directory inode) of cgroup paths.
    pub fn with_cgroupfs_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.cgroupfs_root = Some(root.into());
        self
    }

    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.max_entries
    }

    pub fn stats(&self) -> TableStats {
        TableStats {
            entries: self.len,
            live_entries: self.live_count,
            ..self.stats
        }
    }

    /// Records the path of a cgroup id (e.g. from a cgroup-mkdir event), so
    /// exec events carrying only the id resolve to a path.
    pub fn register_cgroup(&mut self, cgroup_id: u64, path: &str) {
        self.generation += 1;
        self.register_cgroup_info(cgroup_id, path);
    }

    fn register_cgroup_info(&mut self, cgroup_id: u64, path: &str) -> Arc<CgroupInfo> {
        if let Some(c) = self.cgroups.get(&cgroup_id).filter(|c| c.path == path) {
            return c.clone();
        }
        if self.cgroups.len() >= MAX_CGROUPS {
            self.cgroups.clear();
        }
        let info = Arc::new(CgroupInfo::parse(path));
        if cgroup_id != 0 {
            self.cgroups.insert(cgroup_id, info.clone());
        }
        info
    }

    /// A cgroup created after the seed (a container started later) is known to the kernel
    /// events only by id: look its path up once, by file handle, so container and unit resolve.
    fn learn_cgroup(&mut self, id: u64) {
        if id == 0 || self.cgroups.contains_key(&id) || self.cgroup_misses.contains_key(&id) {
            return;
        }
        let Some(root) = &self.cgroupfs_root else {
            return;
        };
        match cgroup_path_by_id(root, id) {
            Some(path) => {
                self.register_cgroup_info(id, &path);
            }
            None => {
                if self.cgroup_misses.len() >= MAX_CGROUPS {
                    self.cgroup_misses.clear();
                }
                self.cgroup_misses.insert(id, ());
            }
        }
    }

    /// Records a fork. A late fork for a process already known from its
    /// exec (or procfs) is merged into that entry.
    pub fn observe_fork(&mut self, f: &ForkInfo) {
        self.generation += 1;
        self.stats.forks += 1;
        self.advance(f.ts_ns);
        let parent_key = self
            .resolve_parent_by_time(f.parent_tgid, f.child_start_ns)
            .map(Process::key);
        if let Some(pk) = parent_key {
            self.touch(pk);
        }
        let inherit = parent_key.map(|pk| self.inherit_from(pk, f.child_start_ns));
        let (key, fresh) = match self.find_exact(f.child_tgid, f.child_start_ns) {
            Some(key) => (key, false),
            None => (
                self.insert(Process::new(f.child_tgid, f.child_start_ns, f.parent_tgid)),
                true,
            ),
        };
        let start = key.1;
        let Some(p) = self.get_mut(key) else { return };
        p.ppid = f.parent_tgid;
        p.ppid_from_fork = true;
        if let Some(inh) = inherit {
            if let Some(img) = inh.image {
                p.insert_image(ImageRef {
                    at_ns: start,
                    exec_ts: None,
                    origin: Origin::Fork,
                    data: img,
                });
            }
            if p.cgroup.is_none() {
                p.cgroup = inh.cgroup;
            }
            if p.session_id.is_none() {
                p.session_id = inh.session_id;
            }
            if p.tty.is_none() {
                p.tty = inh.tty;
            }
        }
        // The fork names the creator authoritatively; relink if the entry
        // was linked through an exec/procfs ppid.
        if parent_key.is_some() && p.parent_key != parent_key {
            self.unlink_parent(key);
            if let Some(pk) = parent_key {
                self.link(key, pk);
            }
        }
        if !fresh {
            self.touch(key);
        }
    }

    /// Records an exec: a new image from `ts_ns` on. Creates the process if
    /// its fork was not (yet) seen.
    pub fn observe_exec(&mut self, e: &ExecInfo) {
        self.generation += 1;
        self.stats.execs += 1;
        self.advance(e.ts_ns);
        self.learn_cgroup(e.cgroup_id);
        let (key, fresh) = match self.find_exact(e.tgid, e.start_ns) {
            Some(k) => (k, false),
            None => {
                let key = self.insert(Process::new(e.tgid, e.start_ns, e.ppid));
                if let Some(pk) = self
                    .resolve_parent_by_time(e.ppid, e.start_ns)
                    .map(Process::key)
                {
                    let inh = self.inherit_from(pk, e.start_ns);
                    if let Some(p) = self.get_mut(key) {
                        p.cgroup = inh.cgroup;
                        p.session_id = inh.session_id;
                        p.tty = inh.tty;
                    }
                    self.link(key, pk);
                }
                (key, true)
            }
        };
        let data = Arc::new(ImageData::new(
            &e.exe_path,
            e.exe_dev,
            e.exe_ino,
            &e.argv,
            &e.comm,
            (e.uid, e.euid, e.gid),
            e.cgroup_id,
        ));
        let Some(p) = self.get_mut(key) else { return };
        p.insert_image(ImageRef {
            at_ns: e.ts_ns,
            exec_ts: Some(e.ts_ns),
            origin: Origin::Exec,
            data,
        });
        if !p.ppid_from_fork && p.parent_key.is_none() {
            p.ppid = e.ppid;
        }
        if !fresh {
            self.touch(key);
        }
    }

    /// Records an exit; the entry stays resolvable for the grace period.
    pub fn observe_exit(&mut self, x: &ExitInfo) {
        self.generation += 1;
        self.stats.exits += 1;
        match self.find_exact(x.tgid, x.start_ns) {
            Some(key) => self.set_exit(key, x.ts_ns, Some(x.exit_code)),
            None => self.stats.unknown_exits += 1,
        }
        self.advance(x.ts_ns);
    }

    /// The image running in `tgid` at `ts_ns`, with lineage; counts the
    /// lookup and marks the entry used. `None` if unknown (a miss): the
    /// caller may then try [`Self::refresh_from_procfs`].
    pub fn lookup(&mut self, tgid: u32, ts_ns: u64) -> Option<ProcessView> {
        self.stats.lookups += 1;
        let Some(key) = self.find_at(tgid, ts_ns) else {
            self.stats.lookup_misses += 1;
            return None;
        };
        self.touch(key);
        Some(self.build_view(key, ts_ns))
    }

    /// `(generation, horizon)`: a view looked up at `ts >= horizon` stays what a new lookup
    /// at any later `ts` would return for as long as the generation is unchanged (nothing
    /// observed since can have started, exec'd or exited before it). Lets callers cache.
    pub fn stamp(&self) -> (u64, u64) {
        (self.generation, self.horizon_ns)
    }

    /// A cached view of `(tgid, start_ns)` was used: count it and keep the entry recent.
    pub fn note_cached_lookup(&mut self, tgid: u32, start_ns: u64) {
        self.stats.lookups += 1;
        self.touch((tgid, start_ns));
    }

    /// Like [`Self::lookup`] without counting or touching the LRU.
    pub fn peek(&self, tgid: u32, ts_ns: u64) -> Option<ProcessView> {
        self.find_at(tgid, ts_ns).map(|k| self.build_view(k, ts_ns))
    }

    /// Adds every process of a procfs tree (`root` is normally `/proc`) and
    /// remembers `root` for [`Self::refresh_from_procfs`]. Known processes
    /// only get missing fields filled; pids vanishing mid-read are skipped.
    pub fn seed_from_procfs(&mut self, root: &Path) -> Result<SeedStats, LineageError> {
        self.generation += 1;
        self.horizon_ns = self.horizon_ns.max(boottime_ns());
        self.procfs_root = root.to_path_buf();
        let pids = procfs::list_pids(root).map_err(|source| LineageError::ProcfsRoot {
            path: root.to_path_buf(),
            source,
        })?;
        let hz = clock_ticks_per_sec();
        let mut out = SeedStats::default();
        let mut keys = Vec::with_capacity(pids.len());
        for pid in pids {
            match procfs::read_process(root, pid, hz) {
                Some(snap) => keys.push(self.apply_snapshot(snap)),
                None => out.skipped += 1,
            }
        }
        // Link after all are in: children may be listed before parents.
        for key in &keys {
            self.link_if_unlinked(*key);
        }
        out.seeded = keys.len();
        self.stats.seeded += keys.len() as u64;
        Ok(out)
    }

    /// Reads `tgid` (and any ancestors not yet known) from the procfs root
    /// last given to [`Self::seed_from_procfs`] (default `/proc`), e.g. for
    /// a process first seen through a file event. False if it is gone.
    pub fn refresh_from_procfs(&mut self, tgid: u32) -> bool {
        self.generation += 1;
        self.horizon_ns = self.horizon_ns.max(boottime_ns());
        let root = self.procfs_root.clone();
        let hz = clock_ticks_per_sec();
        let mut keys = Vec::new();
        let mut pid = tgid;
        for _ in 0..MAX_ANCESTORS {
            let Some(snap) = procfs::read_process(&root, pid, hz) else {
                break;
            };
            let known = self
                .find_exact(snap.tgid, snap.start_ns)
                .is_some_and(|k| self.get(k).is_some_and(|p| !p.images.is_empty()));
            let ppid = snap.ppid;
            keys.push(self.apply_snapshot(snap));
            if known || ppid == 0 || keys.iter().any(|k| k.0 == ppid) {
                break;
            }
            pid = ppid;
        }
        for key in &keys {
            self.link_if_unlinked(*key);
        }
        self.stats.seeded += keys.len() as u64;
        !keys.is_empty()
    }

    // ----- internals -----

    fn apply_snapshot(&mut self, s: procfs::ProcSnapshot) -> Key {
        let cgroup = s.cgroup_path.as_deref().map(|path| {
            let id = self
                .cgroupfs_root
                .as_ref()
                .and_then(|r| std::fs::metadata(r.join(path.trim_start_matches('/'))).ok())
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .unwrap_or(0);
            ProcCgroup {
                id,
                info: self.register_cgroup_info(id, path),
            }
        });
        let key = match self.find_exact(s.tgid, s.start_ns) {
            Some(k) => k,
            None => self.insert(Process::new(s.tgid, s.start_ns, s.ppid)),
        };
        let start = key.1;
        let Some(p) = self.get_mut(key) else {
            return key;
        };
        if p.images.is_empty() {
            let data = ImageData::new(
                &s.exe,
                s.exe_dev,
                s.exe_ino,
                &s.argv,
                &s.comm,
                (s.uid, s.euid, s.gid),
                cgroup.as_ref().map_or(0, |c| c.id),
            );
            p.images.push(ImageRef {
                at_ns: start,
                exec_ts: None,
                origin: Origin::Procfs,
                data: Arc::new(data),
            });
        }
        if !p.ppid_from_fork && p.parent_key.is_none() {
            p.ppid = s.ppid;
        }
        if let Some(c) = cgroup {
            p.cgroup = Some(c);
        }
        if let Some(cwd) = s.cwd {
            p.cwd = Some(ByteString::new(&cwd));
        }
        p.session_id = s.session_id.or(p.session_id);
        p.tty = Tty::from_nr(s.tty_nr).or(p.tty.take());
        key
    }

    fn advance(&mut self, ts: u64) {
        self.horizon_ns = self.horizon_ns.max(ts);
        if ts > self.now_ns {
            self.now_ns = ts;
        }
        self.purge();
    }

    fn purge(&mut self) {
        while let Some(&Reverse((deadline, key))) = self.purge_queue.peek() {
            if deadline > self.now_ns {
                break;
            }
            self.purge_queue.pop();
            let Some(p) = self.get_mut(key) else { continue };
            if p.purge_deadline != Some(deadline) {
                continue; // stale
            }
            p.purge_deadline = None;
            if p.child_refs > 0 {
                p.purge_due = true;
            } else {
                self.stats.purged_exited += self.remove(key) as u64;
            }
        }
    }

    fn get(&self, key: Key) -> Option<&Process> {
        get_in(&self.procs, key)
    }

    fn get_mut(&mut self, key: Key) -> Option<&mut Process> {
        self.procs
            .get_mut(&key.0)?
            .iter_mut()
            .find(|p| p.start_ns == key.1)
    }

    /// The generation of `tgid` whose start matches within one clock tick
    /// (procfs starts are rounded to ticks); closest wins.
    fn find_exact(&self, tgid: u32, start_ns: u64) -> Option<Key> {
        self.procs
            .get(&tgid)?
            .iter()
            .map(|p| (p.start_ns.abs_diff(start_ns), p.key()))
            .filter(|(d, _)| *d < self.tick_ns)
            .min()
            .map(|(_, k)| k)
    }

    /// The generation of `tgid` alive at `ts`.
    fn find_at(&self, tgid: u32, ts: u64) -> Option<Key> {
        let gens = self.procs.get(&tgid)?;
        let p = match gens.iter().rposition(|p| p.start_ns <= ts) {
            Some(i) => &gens[i],
            // Only tick rounding of a procfs start may put ts before it.
            None => gens.first().filter(|p| p.start_ns - ts < self.tick_ns)?,
        };
        p.alive_at(ts).then(|| p.key())
    }

    /// The generation of `ppid` that was alive when a child started; else
    /// its live generation (procfs ppids after reparenting to a subreaper
    /// started later than the child).
    fn resolve_parent_by_time(&self, ppid: u32, child_start: u64) -> Option<&Process> {
        if ppid == 0 {
            return None;
        }
        let gens = self.procs.get(&ppid)?;
        gens.iter()
            .rev()
            .find(|p| p.start_ns <= child_start.saturating_add(self.tick_ns))
            .filter(|p| p.alive_at(child_start))
            .or_else(|| gens.iter().rev().find(|p| p.exit_ts.is_none()))
    }

    fn parent_of(&self, p: &Process) -> Option<&Process> {
        if let Some(pp) = p.parent_key.and_then(|k| self.get(k)) {
            return Some(pp);
        }
        self.resolve_parent_by_time(p.ppid, p.start_ns)
    }

    fn inherit_from(&self, pk: Key, at: u64) -> Inherit {
        let Some(pp) = self.get(pk) else {
            return Inherit {
                image: None,
                cgroup: None,
                session_id: None,
                tty: None,
            };
        };
        Inherit {
            image: self.effective_image(pp, at).map(|r| r.data.clone()),
            cgroup: pp.cgroup.clone(),
            session_id: pp.session_id,
            tty: pp.tty.clone(),
        }
    }

    /// Image of `p` at `ts`; a pre-exec image not captured at fork is
    /// resolved through the parent (which the child was running then).
    fn effective_image<'a>(&'a self, p: &'a Process, ts: u64) -> Option<Resolved<'a>> {
        if let Some((img, seq)) = p.image_at(ts) {
            return Some(Resolved {
                data: &img.data,
                exec_ts: img.exec_ts,
                seq,
                origin: img.origin,
            });
        }
        let mut cur = p;
        let mut at = ts.min(p.start_ns);
        for _ in 0..MAX_ANCESTORS {
            let par = self.parent_of(cur)?;
            if par.key() == p.key() {
                return None;
            }
            if let Some((img, _)) = par.image_at(at) {
                return Some(Resolved {
                    data: &img.data,
                    exec_ts: None,
                    seq: 0,
                    origin: Origin::Fork,
                });
            }
            at = par.start_ns;
            cur = par;
        }
        None
    }

    fn link(&mut self, child: Key, parent: Key) {
        if child == parent {
            return;
        }
        if let Some(pp) = self.get_mut(parent) {
            pp.child_refs += 1;
            if let Some(c) = self.get_mut(child) {
                c.parent_key = Some(parent);
            }
        }
    }

    fn link_if_unlinked(&mut self, key: Key) {
        let Some(p) = self.get(key) else { return };
        if p.parent_key.is_some() {
            return;
        }
        if let Some(pk) = self
            .resolve_parent_by_time(p.ppid, p.start_ns)
            .map(Process::key)
        {
            self.link(key, pk);
        }
    }

    fn unlink_parent(&mut self, key: Key) {
        let Some(pk) = self.get_mut(key).and_then(|p| p.parent_key.take()) else {
            return;
        };
        if let Some(pp) = self.get_mut(pk) {
            pp.child_refs = pp.child_refs.saturating_sub(1);
        }
    }

    fn touch(&mut self, key: Key) {
        self.next_tick += 1;
        let tick = self.next_tick;
        let Some(p) = self.get_mut(key) else { return };
        p.lru_tick = tick;
        if p.exit_ts.is_some() {
            self.lru_exited.push_back((tick, key));
        } else {
            self.lru_live.push_back((tick, key));
        }
        self.compact();
    }

    /// Drops stale queue pairs once they outnumber live ones (amortised
    /// O(1)), so lookups without evictions cannot grow the queues unbounded.
    fn compact(&mut self) {
        let limit = 4 * self.len + 4096;
        let procs = &self.procs;
        let valid_tick = |&(t, k): &(u64, Key)| get_in(procs, k).is_some_and(|p| p.lru_tick == t);
        if self.lru_live.len() + self.lru_exited.len() > limit {
            self.lru_live.retain(valid_tick);
            self.lru_exited.retain(valid_tick);
        }
        if self.purge_queue.len() > limit {
            self.purge_queue.retain(|&Reverse((d, k))| {
                get_in(procs, k).is_some_and(|p| p.purge_deadline == Some(d))
            });
        }
    }

    /// Oldest valid key of one LRU queue, popping stale pairs.
    fn lru_oldest(&mut self, exited: bool) -> Option<Key> {
        let procs = &self.procs;
        let q = if exited {
            &mut self.lru_exited
        } else {
            &mut self.lru_live
        };
        while let Some(&(t, k)) = q.front() {
            if get_in(procs, k).is_some_and(|p| p.lru_tick == t) {
                return Some(k);
            }
            q.pop_front();
        }
        None
    }

    /// Marks `key` exited (`code: None` = implied by pid reuse) and, on the
    /// first exit, moves it to the exited LRU as most recently used.
    fn set_exit(&mut self, key: Key, ts: u64, code: Option<i32>) {
        let grace = self.exit_grace_ns;
        self.next_tick += 1;
        let new_tick = self.next_tick;
        let Some(p) = self.get_mut(key) else { return };
        if code.is_none() && p.exit_ts.is_some() {
            return; // an implied exit never overrides a known one
        }
        let was_live = p.exit_ts.is_none();
        p.exit_ts = Some(ts);
        p.exit_code = code;
        p.purge_due = false;
        let deadline = ts.saturating_add(grace);
        // Superseded queue pairs go stale by themselves.
        p.purge_deadline = Some(deadline);
        if was_live {
            p.lru_tick = new_tick;
        }
        self.purge_queue.push(Reverse((deadline, key)));
        if was_live {
            self.live_count -= 1;
            self.lru_exited.push_back((new_tick, key));
        }
        self.compact();
    }

    fn insert(&mut self, mut p: Process) -> Key {
        while self.len >= self.max_entries {
            if !self.evict_one() {
                break;
            }
        }
        self.next_tick += 1;
        p.lru_tick = self.next_tick;
        let key = p.key();
        self.lru_live.push_back((p.lru_tick, key));
        self.live_count += 1;
        let gens = self.procs.entry(key.0).or_default();
        let pos = gens.partition_point(|g| g.start_ns < key.1);
        gens.insert(pos, p);
        self.len += 1;
        // Generations of a pid cannot overlap: a neighbour with no exit
        // seen ended (at the latest) when the next one started.
        let older = pos.checked_sub(1).map(|i| gens[i].key());
        let newer = gens.get(pos + 1).map(|g| g.start_ns);
        if let Some(ok) = older {
            self.set_exit(ok, key.1, None);
        }
        if let Some(ns) = newer {
            self.set_exit(key, ns, None);
        }
        key
    }

    fn evict_one(&mut self) -> bool {
        if let Some(key) = self.lru_oldest(true) {
            self.stats.evicted_exited += self.remove(key) as u64;
            true
        } else if let Some(key) = self.lru_oldest(false) {
            let n = self.remove(key) as u64;
            self.stats.evicted_live += 1;
            self.stats.evicted_exited += n.saturating_sub(1);
            true
        } else {
            false
        }
    }

    /// Removes `key`, then any exited parent whose grace period is over and
    /// whose last child this was. Returns the number removed.
    fn remove(&mut self, key: Key) -> usize {
        let mut next = Some(key);
        let mut removed = 0;
        while let Some(k) = next.take() {
            let Some(gens) = self.procs.get_mut(&k.0) else {
                break;
            };
            let Some(pos) = gens.iter().position(|p| p.start_ns == k.1) else {
                break;
            };
            let p = gens.remove(pos);
            if gens.is_empty() {
                self.procs.remove(&k.0);
            }
            self.len -= 1;
            removed += 1;
            if p.exit_ts.is_none() {
                self.live_count -= 1;
            }
            // its queue pairs are now stale (entry gone)
            if let Some(pp) = p.parent_key.and_then(|pk| self.get_mut(pk)) {
                pp.child_refs = pp.child_refs.saturating_sub(1);
                if pp.child_refs == 0 && pp.purge_due {
                    next = Some(pp.key());
                }
            }
        }
        removed
    }

    fn entity_id(&self, p: &Process, exec_ts: Option<u64>) -> String {
        entity_id_from_prefix(
            self.boot_prefix,
            p.tgid,
            p.start_ns / self.tick_ns,
            exec_ts.unwrap_or(0),
        )
    }

    fn build_view(&self, key: Key, ts: u64) -> ProcessView {
        let p = self.get(key).expect("key from find_at");
        let img = self.effective_image(p, ts);
        let data = img.as_ref().map(|r| r.data);
        let exec_ts = img.as_ref().and_then(|r| r.exec_ts);
        let seq = img.as_ref().map_or(0, |r| r.seq);
        let origin = img.as_ref().map_or(Origin::Unknown, |r| r.origin);

        let mut ancestors = Vec::new();
        let mut ancestors_truncated = false;
        let mut vm = data.and_then(|d| d.vm.clone());
        let mut parent = None;
        let mut visited: Vec<Key> = vec![key];
        let mut cur = p;
        while cur.tgid != 1 {
            let Some(par) = self.parent_of(cur) else {
                break;
            };
            if visited.contains(&par.key()) {
                ancestors_truncated = true; // ppid loop
                break;
            }
            if ancestors.len() == MAX_ANCESTORS {
                ancestors_truncated = true;
                break;
            }
            visited.push(par.key());
            let pimg = self.effective_image(par, ts);
            let pdata = pimg.as_ref().map(|r| r.data);
            let eid = self.entity_id(par, pimg.as_ref().and_then(|r| r.exec_ts));
            if vm.is_none() {
                vm = pdata.and_then(|d| d.vm.clone());
            }
            if parent.is_none() {
                parent = Some(ParentView {
                    pid: par.tgid,
                    ppid: par.ppid,
                    entity_id: eid.clone(),
                    start_ns: par.start_ns,
                    name: pdata.map(|d| d.name.clone()).unwrap_or_default(),
                    exe: pdata.map(|d| d.exe.clone()).unwrap_or_default(),
                    args: pdata.map(|d| d.args.clone()).unwrap_or_default(),
                    args_truncated: pdata.is_some_and(|d| d.args_truncated),
                    uid: pdata.map(|d| d.uid),
                    euid: pdata.map(|d| d.euid),
                });
            }
            ancestors.push(AncestorView {
                pid: par.tgid,
                entity_id: eid,
                start_ns: par.start_ns,
                name: pdata.map(|d| d.name.clone()).unwrap_or_default(),
                exe: pdata.map(|d| d.exe.clone()).unwrap_or_default(),
            });
            cur = par;
        }

        let cgroup_id = data.map_or(0, |d| d.cgroup_id);
        let cgroup = self.cgroup_for(p, cgroup_id);
        ProcessView {
            pid: p.tgid,
            ppid: p.ppid,
            entity_id: self.entity_id(p, exec_ts),
            start_ns: p.start_ns,
            exec_seq: seq,
            exec_ts_ns: exec_ts,
            origin,
            name: data.map(|d| d.name.clone()).unwrap_or_default(),
            comm: data.map(|d| d.comm.clone()).unwrap_or_default(),
            exe: data.map(|d| d.exe.clone()).unwrap_or_default(),
            exe_dev: data.map_or(0, |d| d.exe_dev),
            exe_ino: data.map_or(0, |d| d.exe_ino),
            args: data.map(|d| d.args.clone()).unwrap_or_default(),
            args_truncated: data.is_some_and(|d| d.args_truncated),
            uid: data.map(|d| d.uid),
            euid: data.map(|d| d.euid),
            gid: data.map(|d| d.gid),
            cwd: p.cwd.clone(),
            cgroup_id,
            cgroup_path: cgroup.as_ref().map(|c| c.path.clone()),
            container_id: cgroup
                .as_ref()
                .and_then(|c| c.container.as_ref().map(|c| c.id.clone())),
            container_runtime: cgroup
                .as_ref()
                .and_then(|c| c.container.as_ref().map(|c| c.runtime.to_string())),
            systemd_unit: cgroup.as_ref().and_then(|c| c.systemd_unit.clone()),
            session_id: p.session_id,
            tty: p.tty.clone(),
            vm,
            exit: p.exit_ts.map(|ts| ExitView {
                ts_ns: ts,
                code: p.exit_code,
            }),
            parent,
            ancestors,
            ancestors_truncated,
        }
    }

    /// The image's cgroup id resolved through the registry, else the
    /// process's known path unless it belongs to a different id (moved
    /// before exec, as systemd does for services).
    fn cgroup_for(&self, p: &Process, cgroup_id: u64) -> Option<Arc<CgroupInfo>> {
        if let Some(c) = (cgroup_id != 0)
            .then(|| self.cgroups.get(&cgroup_id))
            .flatten()
        {
            return Some(c.clone());
        }
        p.cgroup
            .as_ref()
            .filter(|c| c.id == 0 || cgroup_id == 0 || c.id == cgroup_id)
            .map(|c| c.info.clone())
    }
}

/// The clock of the kernel's event timestamps (`bpf_ktime_get_boot_ns`).
pub(crate) fn boottime_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_BOOTTIME always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut t) };
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

fn get_in(procs: &IntMap<u32, Vec<Process>>, key: Key) -> Option<&Process> {
    procs.get(&key.0)?.iter().find(|p| p.start_ns == key.1)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// FNV-1a state after `boot_id` and the `0xff` separator (cached per table).
fn boot_prefix(boot_id: &str) -> u64 {
    fnv1a(fnv1a(FNV_OFFSET, boot_id.as_bytes()), &[0xff])
}

fn entity_id_from_prefix(prefix: u64, tgid: u32, start_ticks: u64, exec_ts: u64) -> String {
    let h = fnv1a(prefix, &tgid.to_le_bytes());
    let h = fnv1a(h, &start_ticks.to_le_bytes());
    format!("{:016x}", fnv1a(h, &exec_ts.to_le_bytes()))
}

/// FNV-1a-64 entity id over `boot_id`, `0xff`, `tgid` (LE u32),
/// `start_ticks` (LE u64), `exec_ts` (LE u64), as 16 hex digits; see the
/// module docs.
pub fn entity_id(boot_id: &str, tgid: u32, start_ticks: u64, exec_ts: u64) -> String {
    entity_id_from_prefix(boot_prefix(boot_id), tgid, start_ticks, exec_ts)
}
