//! Enrich stage: kernel record → [`Event`] with the acting process, its lineage and the real
//! paths involved; namespace records outside the watched roots are dropped here (the kernel
//! filter is a superset).

pub mod lineage;

use std::{
    collections::HashMap,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use snapmon_common::{ns_flags, respond as r, write_flags, FileKey, NsOp, WriteOp, PATH_LEN};

use crate::{
    clock::Clock,
    decode::{cstr, RawEvent},
    event::Action,
    event::{
        Bytes, Category, DetailKey, Event, EventType, FallocMode, FileInfo, IoctlRaw, ProcessInfo,
        WriteInfo,
    },
    longpath::{self, Cut, Look},
    paths::normalize,
    watch::{WatchMaps, WatchSet},
};
use lineage::Lineage;

/// The detail of a kernel response record (`snapmon.detail` of its event and alert).
pub fn response_details(x: &snapmon_common::RespondEvent) -> Vec<(DetailKey, String)> {
    let mut d = vec![
        (DetailKey::Responder, "kernel".to_string()),
        (
            DetailKey::Operation,
            crate::actions::class_name(x.class).to_string(),
        ),
        (
            DetailKey::Signal,
            crate::actions::signal_name(x.signal).to_string(),
        ),
        (
            DetailKey::Outcome,
            match (x.signal, x.ret) {
                (0, _) => "would_signal".to_string(),
                (_, 0) => "signalled".to_string(),
                (_, e) => format!("failed: {}", std::io::Error::from_raw_os_error(-e)),
            },
        ),
        (
            DetailKey::SyscallToSignalNs,
            x.signal_ns.saturating_sub(x.hdr.ts_ns).to_string(),
        ),
        // CLOCK_BOOTTIME of the signal: lets a caller time it from its own stamp.
        (DetailKey::SignalBoottimeNs, x.signal_ns.to_string()),
        (
            DetailKey::ActorExeIdentity,
            format!("{}:{}", crate::paths::dev_display(x.exe.dev), x.exe.ino),
        ),
    ];
    match x.class {
        r::METADATA_WRITE | r::TRUNCATE if x.path_hash == 0 => {
            d.push((DetailKey::Offset, x.offset.to_string()));
            d.push((DetailKey::Length, x.len.to_string()));
            let op = crate::event::WriteOp::of_record(x.aux as u16);
            if op != crate::event::WriteOp::WriteUnknown {
                d.push((DetailKey::WriteOp, op.as_str().to_string()));
            }
        }
        r::SNAPSHOT_IOCTL => d.push((DetailKey::IoctlCmd, format!("{:#010x}", x.aux))),
        _ => {}
    }
    if x.path_hash != 0 {
        d.push((DetailKey::PathHash, format!("{:016x}", x.path_hash)));
    }
    d
}

/// The `event.action` of a write record, and fallocate's mode bits by name.
fn write_action(op: u16, aux: u64) -> (Action, Vec<FallocMode>) {
    match WriteOp::from_u16(op) {
        Some(WriteOp::Fallocate | WriteOp::IoUringFallocate) => {
            (fallocate_action(aux), FallocMode::of_bits(aux))
        }
        Some(WriteOp::Ftruncate | WriteOp::IoUringFtruncate) => (Action::Truncate, vec![]),
        Some(WriteOp::Write) => (Action::Write, vec![]),
        Some(WriteOp::Pwrite) => (Action::Pwrite64, vec![]),
        Some(WriteOp::Writev) => (Action::Writev, vec![]),
        Some(WriteOp::Pwritev) => (Action::Pwritev, vec![]),
        Some(WriteOp::Pwritev2) => (Action::Pwritev2, vec![]),
        Some(WriteOp::IoUringWrite) => (Action::IoUringWrite, vec![]),
        Some(WriteOp::IoUringWritev) => (Action::IoUringWritev, vec![]),
        Some(WriteOp::IoUringWriteFixed) => (Action::IoUringWriteFixed, vec![]),
        Some(WriteOp::AioPwrite) => (Action::AioPwrite, vec![]),
        Some(WriteOp::AioPwritev) => (Action::AioPwritev, vec![]),
        Some(WriteOp::CopyFileRange) => (Action::CopyFileRange, vec![]),
        Some(WriteOp::MmapShared) => (Action::MmapSharedWrite, vec![]),
        Some(WriteOp::Sendfile) => (Action::Sendfile, vec![]),
        Some(WriteOp::Splice) => (Action::Splice, vec![]),
        Some(WriteOp::VfsWrite) => (Action::VfsWrite, vec![]),
        // The kernel freed or zeroed the range: for the data there, a punched hole.
        Some(WriteOp::VfsRangeDropped) => (Action::PunchHole, vec![]),
        Some(WriteOp::VfsClone) => (Action::CloneRange, vec![]),
        None => (Action::WriteUnknown, vec![]),
    }
}

fn fallocate_action(mode: u64) -> Action {
    if mode & 0x02 != 0 {
        Action::PunchHole
    } else if mode & 0x10 != 0 {
        Action::ZeroRange
    } else if mode & 0x08 != 0 {
        Action::CollapseRange
    } else if mode & 0x20 != 0 {
        Action::InsertRange
    } else {
        Action::Fallocate
    }
}

const FMODE_CREATED: u32 = 1 << 20;

/// Counters: what enrich received, emitted, and why it dropped the rest.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct EnrichStats {
    pub received: u64,
    pub emitted: u64,
    pub process_only: u64,
    pub dropped_outside_watch: u64,
}

/// How a path given through another name of a store was placed on the store's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Its directory, looked up, is a watched one.
    Directory,
    /// Its directory no longer leads there: the one watched name of its last component that
    /// no longer names its file.
    VanishedName,
}

pub struct Enricher {
    pub clock: Clock,
    pub watch: WatchSet,
    pub lineage: Box<dyn Lineage>,
    pub stats: EnrichStats,
    /// Emit fork/exec/exit as events too (otherwise they only feed lineage).
    pub process_events: bool,
    /// Loop device nodes over watched files, by the node's identity.
    pub loops: HashMap<FileKey, LoopAlias>,
    /// Overlay mounts over stores and the merged-view identities of their files.
    pub overlays: crate::overlay::Overlays,
    /// The last write through a loop device, by the image's identity. Kept apart from
    /// `loops`: the loop worker's writes may be read after the device was found detached.
    loop_fronts: HashMap<FileKey, LoopFront>,
}

/// A write through a loop device node: when, by whom, and the node's name.
#[derive(Debug, Clone)]
struct LoopFront {
    ts_ns: u64,
    process: ProcessInfo,
    node: String,
}

/// A loop device whose backing file is watched: its writes are the image's, `offset` bytes in.
#[derive(Debug, Clone)]
pub struct LoopAlias {
    pub image: FileKey,
    /// `lo_offset`: device byte 0 is this byte of the image.
    pub offset: u64,
    pub node: Option<PathBuf>,
}

/// How long after a write through a loop device the kernel's loop worker may still be writing
/// it to the image (dirty pages expire after 30 s by default).
const LOOP_REPLAY_NS: u64 = 30_000_000_000;

/// Directory entries the `blinded` event reads at most to name a file the agent never
/// heard of (a store of 100 000 junk names is read in a few tens of milliseconds).
const BLINDED_LOOKUP: usize = 200_000;

/// Names of watched images a dropped path record makes the agent look at (a stat each):
/// its store's, or every store's for an absolute path.
const GONE_LOOKUP: usize = 20_000;

/// The name under which process `tgid` holds file `key` open, if it still does.
fn held_open(tgid: u32, key: FileKey) -> Option<PathBuf> {
    std::fs::read_dir(format!("/proc/{tgid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|p| p.is_absolute())
        .find(|p| std::fs::metadata(p).is_ok_and(|md| crate::paths::key_for(p, &md) == key))
}

/// A kernel thread (a child of kthreadd, no executable): on the fentry backend the loop
/// driver's worker is seen writing the backing file itself.
fn kernel_thread(p: &ProcessInfo) -> bool {
    p.ppid == 2 && p.executable.0.is_empty()
}

impl LoopAlias {
    fn node_name(&self, key: FileKey) -> String {
        match &self.node {
            Some(p) => Bytes::from_path(p).display(),
            None => format!("{}:{}", crate::paths::dev_display(key.dev), key.ino),
        }
    }
}

/// The name of loop device node `key` the process used as `fd`, else a `/dev/loop*` entry
/// with that identity.
fn loop_node_path(tgid: u32, fd: i32, key: FileKey) -> Option<PathBuf> {
    let is = |p: &Path| std::fs::metadata(p).is_ok_and(|md| crate::paths::key_for(p, &md) == key);
    if let Ok(p) = std::fs::read_link(format!("/proc/{tgid}/fd/{fd}")) {
        if is(&p) {
            return Some(p);
        }
    }
    std::fs::read_dir("/dev")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.as_bytes().starts_with(b"loop"))
        })
        .find(|p| is(p))
}

/// Where the loop devices say what they are over (`loopN/loop/backing_file`, `offset`).
pub const SYS_BLOCK: &str = "/sys/block";

/// The block devices by number (`MAJ:MIN`, links into [`SYS_BLOCK`]).
pub const SYS_DEV_BLOCK: &str = "/sys/dev/block";

/// A loop device over a file, as `sys_block/loopN/loop` tells it: (node, backing file,
/// offset). A backing file the kernel calls "(deleted)" has no name to match and is left out.
fn attached_loops(sys_block: &Path) -> Vec<(PathBuf, PathBuf, u64)> {
    let Ok(rd) = std::fs::read_dir(sys_block) else {
        return vec![];
    };
    let mut out: Vec<_> = rd
        .flatten()
        .filter(|e| e.file_name().as_bytes().starts_with(b"loop"))
        .filter_map(|e| {
            let d = e.path().join("loop");
            let b = std::fs::read_to_string(d.join("backing_file")).ok()?;
            let b = b.trim_end_matches('\n');
            if b.ends_with(" (deleted)") {
                return None;
            }
            let offset = std::fs::read_to_string(d.join("offset"))
                .ok()
                .and_then(|o| o.trim().parse().ok())
                .unwrap_or(0);
            Some((
                Path::new("/dev").join(e.file_name()),
                PathBuf::from(b),
                offset,
            ))
        })
        .collect();
    out.sort();
    out
}

impl Enricher {
    /// Alias the loop devices attached to watched files before the agent started, as their
    /// attach would have (the node and its device number go into the kernel's maps). Says
    /// what it seeded, one line each.
    pub fn seed_loops(&mut self, sys_block: &Path, maps: &mut dyn WatchMaps) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut said = vec![];
        for (dev, backing, offset) in attached_loops(sys_block) {
            let Some(image) = std::fs::metadata(&backing)
                .ok()
                .map(|md| crate::paths::key_for(&backing, &md))
                .filter(|k| self.watch.path_of(k).is_some())
            else {
                continue;
            };
            let Ok(md) = std::fs::metadata(&dev) else {
                continue;
            };
            let node = crate::paths::key_for(&dev, &md);
            if self.loops.contains_key(&node) {
                continue;
            }
            let name = self.watch.path_of(&image).cloned().unwrap_or_default();
            if !self.watch.watch_alias(node, Some(&dev), &name, maps) {
                said.push(format!(
                    "loop device {} over {} refused by the watched-files map: writes through it go unseen",
                    dev.display(),
                    name.display()
                ));
                continue;
            }
            // The kernel's dev_t: MKDEV(major, minor) = major << 20 | minor.
            let rdev = (libc::major(md.rdev()) << 20) | libc::minor(md.rdev());
            maps.add_rdev_alias(rdev, node);
            self.loops.insert(
                node,
                LoopAlias {
                    image,
                    offset,
                    node: Some(dev.clone()),
                },
            );
            said.push(format!(
                "loop device {} attached to {} (offset {offset}) before the start: watched as the image",
                dev.display(),
                name.display()
            ));
        }
        said
    }

    /// The aliased loop devices that are no longer over their image: detached (no
    /// `loop/` under the device in `sys_dev_block`, `MAJ:MIN`) or over a file of another
    /// identity. The kernel detaches at the last close (autoclear, a deferred `LOOP_CLR_FD`)
    /// with no ioctl to say so; this looks, once per aliased device (a stat of its node, a
    /// sysfs read, and a stat of the backing file only when it is not at the image's name),
    /// withdraws each such alias from the kernel's maps and returns one `loop_detached`
    /// event on its image (`loop_watch: ended`). A backing file shown "(deleted)", or one
    /// that cannot be looked at, is left as it is.
    pub fn check_loops(&mut self, sys_dev_block: &Path, maps: &mut dyn WatchMaps) -> Vec<Event> {
        use std::os::unix::fs::MetadataExt;
        if self.loops.is_empty() {
            return vec![];
        }
        let gone: Vec<FileKey> = self
            .loops
            .iter()
            .filter(|(node, a)| {
                // The node as the alias knows it; renamed or gone: nothing to look up by.
                let Some(p) = a.node.as_deref() else {
                    return false;
                };
                let Ok(md) = std::fs::metadata(p) else {
                    return false;
                };
                if crate::paths::key_for(p, &md) != **node {
                    return false;
                }
                let sys = sys_dev_block.join(format!(
                    "{}:{}/loop/backing_file",
                    libc::major(md.rdev()),
                    libc::minor(md.rdev())
                ));
                match std::fs::read_to_string(&sys) {
                    Err(e) => e.kind() == std::io::ErrorKind::NotFound,
                    Ok(b) => {
                        let b = b.trim_end_matches('\n');
                        if b.ends_with(" (deleted)") {
                            return false;
                        }
                        let b = Path::new(b);
                        // At the image's own name: the same file, with no look at the store's
                        // filesystem (a stuck one would hold the loop). Only another name
                        // (another file, or the image by a name the agent does not know) is
                        // looked at.
                        if self.watch.path_of(&a.image).is_some_and(|p| p == b) {
                            return false;
                        }
                        std::fs::metadata(b)
                            .is_ok_and(|md| crate::paths::key_for(b, &md) != a.image)
                    }
                }
            })
            .map(|(node, _)| *node)
            .collect();
        let mut out = Vec::with_capacity(gone.len());
        for node in gone {
            let Some(a) = self.loops.remove(&node) else {
                continue;
            };
            self.watch.unwatch_alias(node, maps);
            let ts = crate::lineage::boottime_ns();
            out.push(Event {
                ts_unix_ns: self.clock.unix_ns(ts),
                ts_boot_ns: ts,
                category: Category::File,
                ecs_type: EventType::Info,
                action: Action::LoopDetached,
                backend: snapmon_common::Backend::Tracepoint,
                // The detach came at someone's last close, by no record the agent read.
                no_actor: true,
                file: Some(self.file(a.image, None)),
                detail: vec![
                    (DetailKey::LoopDevice, a.node_name(node)),
                    (DetailKey::LoopWatch, "ended".into()),
                ],
                ..Default::default()
            });
            self.stats.emitted += 1;
        }
        out
    }

    pub fn new(watch: WatchSet, lineage: Box<dyn Lineage>) -> Self {
        Enricher {
            clock: Clock::now(),
            watch,
            lineage,
            stats: EnrichStats::default(),
            process_events: false,
            loops: HashMap::new(),
            overlays: Default::default(),
            loop_fronts: HashMap::new(),
        }
    }

    /// The watch set's due work ([`WatchSet::settle`]); names made since their record was
    /// read are aliased through the overlays over them, as at once they would have been.
    pub fn settle(&mut self, now: std::time::Instant, maps: &mut dyn WatchMaps) {
        for (k, p) in self.watch.settle(now, maps) {
            self.overlays.appeared(k, &p, &mut self.watch, maps);
        }
    }

    /// Bring the overlay aliases in line with the mount table `text` (mountinfo).
    pub fn rescan_overlays(
        &mut self,
        text: &str,
        maps: &mut dyn WatchMaps,
    ) -> crate::overlay::Rescan {
        self.overlays.rescan(text, &mut self.watch, maps)
    }

    fn base(
        &mut self,
        raw: &RawEvent,
        category: Category,
        ecs_type: EventType,
        action: Action,
    ) -> Event {
        let h = raw.header();
        let process = self.lineage.process(h.tgid, h.pid, h.ts_ns, h);
        Event {
            ts_unix_ns: self.clock.unix_ns(h.ts_ns),
            ts_boot_ns: h.ts_ns,
            category,
            ecs_type,
            action,
            // Every program sets it; a number this agent does not know was reported as the
            // default backend before it was an enum, and still is.
            backend: snapmon_common::Backend::from_u32(h.backend).unwrap_or_default(),
            process,
            ..Default::default()
        }
    }

    /// The `blinded` event for `dropped` records about images or metadata files the kernel
    /// could not queue, `b` the last of them: its file and actor, named as any event's.
    pub fn blinded(&mut self, b: &snapmon_common::Blinded, dropped: u64) -> Event {
        use snapmon_common::EventKind;
        let record = match EventKind::from_u32(b.kind) {
            Some(EventKind::FileWrite) => "write",
            Some(EventKind::FileOpen) => "open",
            Some(EventKind::Namespace) => "namespace",
            Some(EventKind::Ioctl) => "ioctl",
            Some(EventKind::UringRegister) => "io_uring_register",
            _ => "other",
        };
        // Its create may have been dropped too: look for it among the actor's open files,
        // then in the watched directories, and keep the name.
        if self.watch.path_of(&b.file).is_none() {
            let found =
                held_open(b.tgid, b.file).or_else(|| self.watch.find_name(&b.file, BLINDED_LOOKUP));
            if let Some(p) = found {
                self.watch.learn(b.file, p);
            }
        }
        let process = self.dropper(b);
        let file = self.file(b.file, None);
        self.blinded_event(b, process, file, dropped, record)
    }

    /// A `blinded` event: `dropped` records of kind `record` lost, `b` the last, about `file`.
    fn blinded_event(
        &self,
        b: &snapmon_common::Blinded,
        process: ProcessInfo,
        file: FileInfo,
        dropped: u64,
        record: &str,
    ) -> Event {
        Event {
            ts_unix_ns: self.clock.unix_ns(b.ts_ns),
            ts_boot_ns: b.ts_ns,
            category: Category::File,
            ecs_type: EventType::Info,
            action: Action::Blinded,
            backend: snapmon_common::Backend::Tracepoint,
            process,
            file: Some(file),
            detail: vec![
                (DetailKey::Dropped, dropped.to_string()),
                (DetailKey::DroppedRecord, record.to_string()),
            ],
            ..Default::default()
        }
    }

    /// The actor of a record the kernel dropped (`Blinded`), named as any event's.
    fn dropper(&mut self, b: &snapmon_common::Blinded) -> ProcessInfo {
        let hdr = snapmon_common::Header {
            kind: b.kind,
            backend: 1,
            ts_ns: b.ts_ns,
            pid: b.pid,
            tgid: b.tgid,
            uid: b.uid,
            gid: b.gid,
            comm: b.comm,
        };
        let process = self.lineage.process(b.tgid, b.pid, b.ts_ns, &hdr);
        // The exec the lineage missed may be among the lost records: the kernel's own word
        // (credentials and name at the drop) wins over a stale entry.
        let comm = cstr(&b.comm, b.comm.len());
        let name = process.name.as_bytes();
        if process.uid != b.uid || !name.starts_with(comm) {
            return lineage::header_process(&hdr);
        }
        process
    }

    /// The `blinded` events for `dropped` path records in watched trees the kernel could not
    /// queue (`lost::NAMESPACE_DROPPED`), `b` the last of them: one per watched image or
    /// metadata file in its store (every store when its path was absolute) whose name went
    /// unheard, a delete or rename among the lost. A flood of other names is loss, no more.
    pub fn blinded_names(&mut self, b: &snapmon_common::Blinded, dropped: u64) -> Vec<Event> {
        let store = (b.file.ino != 0)
            .then(|| self.watch.path_of(&b.file).cloned())
            .flatten();
        let gone = self.watch.unheard_gone(store.as_deref(), GONE_LOOKUP);
        if gone.is_empty() {
            return Vec::new();
        }
        let process = self.dropper(b);
        let mut out = Vec::with_capacity(gone.len());
        for (key, path) in gone {
            // Its name is gone: the agent stops watching it, as the unlink would have.
            self.watch.forget_path(&path);
            let file = FileInfo {
                path: Some(Bytes::from_path(&path)),
                dev: key.dev,
                ino: key.ino,
                size: None,
            };
            out.push(self.blinded_event(
                b,
                process.clone(),
                file,
                dropped,
                crate::event::DROPPED_PATH,
            ));
        }
        out
    }

    /// The `blinded` events for fanotify events lost (`dirwatch`: its queue overflowed, or
    /// the agent's hold was full), `dropped` how many overflows and drops: one per directory
    /// named, with the last actor seen there, else one naming none.
    pub fn blinded_fanotify(
        &mut self,
        unheard: &[crate::dirwatch::Unheard],
        dropped: u64,
    ) -> Vec<Event> {
        let record = crate::event::DROPPED_FANOTIFY;
        let mut out: Vec<Event> = unheard
            .iter()
            .map(|u| {
                // The agent's own events are not judged: it is never named as the actor.
                let pid = if u.pid == std::process::id() {
                    0
                } else {
                    u.pid
                };
                let h = crate::dirwatch::header_of(pid, u.ts_ns);
                let b = snapmon_common::Blinded {
                    ts_ns: u.ts_ns,
                    file: u.dir,
                    kind: h.kind,
                    pid: h.pid,
                    tgid: h.tgid,
                    uid: h.uid,
                    gid: h.gid,
                    op: 0,
                    comm: h.comm,
                };
                let process = self.dropper(&b);
                let file = self.file(u.dir, None);
                self.blinded_event(&b, process, file, dropped, record)
            })
            .collect();
        if out.is_empty() {
            let b = snapmon_common::Blinded {
                ts_ns: crate::lineage::boottime_ns(),
                ..Default::default()
            };
            let mut ev = self.blinded_event(
                &b,
                ProcessInfo::default(),
                FileInfo::default(),
                dropped,
                record,
            );
            ev.file = None;
            out.push(ev);
        }
        for ev in &mut out {
            ev.detail.push((DetailKey::Via, "fanotify".into()));
        }
        out
    }

    fn file(&self, key: FileKey, size: Option<u64>) -> FileInfo {
        FileInfo {
            path: self.watch.path_of(&key).map(|p| Bytes::from_path(p)),
            dev: key.dev,
            ino: key.ino,
            size,
        }
    }

    /// Resolve a namespace path: absolute, or relative to its base dir / the process cwd.
    fn resolve(&self, raw_path: &[u8], base: FileKey, tgid: u32) -> Option<PathBuf> {
        if raw_path.is_empty() {
            return None;
        }
        let p = Path::new(std::ffi::OsStr::from_bytes(raw_path));
        if p.is_absolute() {
            return Some(normalize(p));
        }
        Some(normalize(&self.base_path(base, tgid)?.join(p)))
    }

    /// `p`, which the kernel matched by its last component only: the watched name it reaches
    /// through a symlinked or bind-mounted store, or from another mount namespace (its
    /// directory looked up in the process's root, or ours once the process is gone, and
    /// known by identity), or, for an unlink or rename whose directory no longer leads there
    /// (the symlink removed, the bind mount undone at once), the one watched name of that last
    /// component that no longer names its file.
    fn through_link(&self, p: &Path, tgid: u32, op: Option<NsOp>) -> Option<(PathBuf, Via)> {
        let (dir, leaf) = (p.parent()?, p.file_name()?);
        let rel = dir.strip_prefix("/").ok()?.to_path_buf();
        let found = crate::classify::fileread::bounded(None, dir, move || {
            let key = |p: PathBuf| std::fs::metadata(&p).map(|m| crate::paths::key_for(&p, &m));
            key(Path::new("/proc")
                .join(tgid.to_string())
                .join("root")
                .join(&rel))
            .or_else(|_| key(Path::new("/").join(&rel)))
        });
        if let Some(q) = found
            .ok()
            .and_then(Result::ok)
            .and_then(|k| Some(self.watch.path_of(&k)?.join(leaf)))
            .filter(|q| self.watch.covers(q))
        {
            return Some((q, Via::Directory));
        }
        if !matches!(op, Some(NsOp::Unlink | NsOp::Rename)) {
            return None;
        }
        match self.watch.gone_by_leaf(leaf).as_slice() {
            [(_, q)] => Some((q.clone(), Via::VanishedName)),
            _ => None,
        }
    }

    /// The directory a relative path starts from: its base dir, else the process cwd.
    fn base_path(&self, base: FileKey, tgid: u32) -> Option<PathBuf> {
        match self.watch.path_of(&base) {
            Some(b) if base.ino != 0 => Some(b.clone()),
            _ => std::fs::read_link(format!("/proc/{tgid}/cwd")).ok(),
        }
    }

    /// A path the kernel cut: the object it names when exactly one fits (see `longpath`),
    /// else the cut shown with an ellipsis and `true` (unresolved).
    fn resolve_cut(
        &self,
        cut: &Cut,
        base: FileKey,
        tgid: u32,
        look: Option<Look>,
        ino: Option<u64>,
    ) -> (PathBuf, bool) {
        let abs = if cut.head.starts_with(b"/") {
            cut.clone()
        } else {
            match self.base_path(base, tgid) {
                Some(b) => cut.under(&b),
                None => return (cut.marked(), true),
            }
        };
        match look.and_then(|l| abs.resolve(self.watch.named_with_prefix(&abs.head), l, ino)) {
            Some(p) => (p, false),
            None => (abs.marked(), true),
        }
    }

    /// The path of a file opened by a name the kernel cut: what the process's descriptor
    /// names, or the file's entry in its (known) parent directory.
    fn opened_path(&self, tgid: u32, fd: i32, file: FileKey, parent: FileKey) -> Option<PathBuf> {
        longpath::fd_path(tgid, fd, file).or_else(|| {
            let dir = self.watch.path_of(&parent).filter(|_| parent.ino != 0)?;
            longpath::entry_with_ino(dir, file)
        })
    }

    /// An entry name seen at an LSM hook, in the directory with identity `dir`: a full path
    /// when that directory is known, else the bare name (never a guess from the cwd).
    fn in_dir(&self, name: &[u8], dir: FileKey) -> Option<PathBuf> {
        if name.is_empty() {
            return None;
        }
        let n = Path::new(std::ffi::OsStr::from_bytes(name));
        Some(match self.watch.path_of(&dir) {
            Some(d) if dir.ino != 0 => normalize(&d.join(n)),
            _ => n.to_path_buf(),
        })
    }

    /// Turn one kernel record into zero or one event.
    pub fn enrich(&mut self, raw: &RawEvent, maps: &mut dyn WatchMaps) -> Option<Event> {
        self.stats.received += 1;
        self.lineage.observe(raw);
        let ev = match raw {
            RawEvent::Fork(_) | RawEvent::Exec(_) | RawEvent::Exit(_) => {
                if !self.process_events {
                    self.stats.process_only += 1;
                    return None;
                }
                let (t, a) = match raw {
                    RawEvent::Fork(_) => (EventType::Start, Action::Fork),
                    RawEvent::Exec(_) => (EventType::Start, Action::Exec),
                    _ => (EventType::End, Action::Exit),
                };
                self.base(raw, Category::Process, t, a)
            }
            RawEvent::Write(w) => {
                let (action, mode) = write_action(w.op, w.aux);
                let mut ev = self.base(raw, Category::File, EventType::Change, action);
                ev.file = Some(self.file(w.file, Some(w.size)));
                if self.watch.stale(&w.file, w.hdr.ts_ns) {
                    // Not the file that has the name and inode now; its own name is gone.
                    if let Some(f) = ev.file.as_mut() {
                        f.path = None;
                    }
                    ev.detail.push((DetailKey::InodeReused, "true".into()));
                }
                let n = (w.data_len as usize).min(w.data.len());
                ev.write = Some(WriteInfo {
                    op: crate::event::WriteOp::of_record(w.op),
                    offset: w.offset,
                    length: w.len,
                    offset_from_fpos: w.flags & write_flags::POS_FROM_FILE != 0,
                    length_partial: w.flags & write_flags::LEN_PARTIAL != 0,
                    mode,
                    data: w.data[..n].to_vec(),
                });
                // An io_uring registered file: `fd` is its slot in the ring's table.
                let fixed = w.flags & write_flags::FIXED_FILE != 0;
                if fixed {
                    ev.detail.push((DetailKey::IoUringSlot, w.fd.to_string()));
                }
                if let Some(a) = self.overlays.alias(&w.file).cloned() {
                    self.through_overlay(&mut ev, &a, Some(w.size));
                } else if let Some(a) = self.loops.get(&w.file).cloned() {
                    self.front_written(&a, w.file, w.hdr.ts_ns, &ev.process);
                    self.through_loop(&mut ev, w.file, a);
                    if !fixed {
                        self.other_node(&mut ev, w.hdr.tgid, w.fd, w.file);
                    }
                } else if kernel_thread(&ev.process) {
                    self.loop_replay(&mut ev, w.file, w.hdr.ts_ns);
                }
                ev
            }
            RawEvent::Open(o) => {
                let created = o.f_mode & FMODE_CREATED != 0;
                const O_TRUNC: u32 = 0o1000;
                let (t, a) = if created {
                    (EventType::Creation, Action::Create)
                } else if o.flags & O_TRUNC != 0 {
                    (EventType::Change, Action::OpenTruncate)
                } else {
                    (EventType::Access, Action::OpenWrite)
                };
                // The file's path is its real parent dir (from the kernel) + the name's last
                // component; always re-learn it, since inode numbers are reused after unlink.
                let name = cstr(&o.path, o.path_len as usize);
                let named = Path::new(std::ffi::OsStr::from_bytes(name));
                // A name that filled the buffer may be cut: neither it nor its last component
                // names the file.
                let cut = name.len() >= PATH_LEN - 1;
                // An absolute name is taken as given: on btrfs every subvolume root is inode
                // 256 on one superblock, so the parent's identity alone can be ambiguous.
                // One outside every store, through a symlinked or bind-mounted one, is the
                // store's name when that name is this very file.
                let path = match (self.watch.path_of(&o.parent), named.file_name()) {
                    _ if cut => self.opened_path(o.hdr.tgid, o.fd, o.file, o.parent),
                    (Some(base), Some(leaf))
                        if named.is_absolute() && !self.watch.covers(&normalize(named)) =>
                    {
                        let real = base.join(leaf);
                        Some(if names_file(&real, o.file) {
                            real
                        } else {
                            normalize(named)
                        })
                    }
                    _ if named.is_absolute() => Some(normalize(named)),
                    (Some(base), Some(leaf)) => Some(base.join(leaf)),
                    _ => None,
                };
                // Made through a view with the number of a freed file an alias was for.
                if created {
                    self.overlays.reborn(o.file, &mut self.watch, maps);
                }
                // Through a tracked overlay's merged view: the real file's open (or create).
                let mut via = self.overlay_opened(o.file, o.parent, named, maps);
                // Else the kernel took an overlay's inode for an image's by its number (a
                // foreign overlay's): confirmed here, or withdrawn and dropped (not ours).
                if via.is_none() && o.watch == snapmon_common::open_watch::OVERLAY {
                    via = self.overlays.foreign_open(
                        o.hdr.tgid,
                        o.fd,
                        o.file,
                        named,
                        &mut self.watch,
                        maps,
                    );
                    if via.is_none() {
                        self.stats.dropped_outside_watch += 1;
                        return None;
                    }
                }
                if let Some(al) = via {
                    let mut ev = self.base(raw, Category::File, t, a);
                    if created {
                        self.watch.born(al.real, o.hdr.ts_ns);
                    }
                    self.through_overlay(&mut ev, &al, Some(o.size));
                    ev.detail
                        .push((DetailKey::OpenFlags, format!("{:#o}", o.flags)));
                    self.stats.emitted += 1;
                    return Some(ev);
                }
                let stale = self.watch.stale(&o.file, o.hdr.ts_ns);
                if let Some(p) = path.clone().filter(|_| !stale) {
                    let refused = o.watch == snapmon_common::open_watch::REFUSED;
                    self.watch.seen_opened(o.file, p.clone(), refused, maps);
                    if created {
                        self.watch.born(o.file, o.hdr.ts_ns);
                        // A new image in a store that is an overlay's upper dir.
                        self.overlays.appeared(o.file, &p, &mut self.watch, maps);
                    }
                }
                let mut ev = self.base(raw, Category::File, t, a);
                ev.file = Some(self.file(o.file, Some(o.size)));
                if stale {
                    if let Some(f) = ev.file.as_mut() {
                        f.path = path.as_deref().map(Bytes::from_path);
                    }
                    ev.detail.push((DetailKey::InodeReused, "true".into()));
                }
                if let Some(f) = ev.file.as_mut().filter(|f| cut && f.path.is_none()) {
                    let c = Cut {
                        head: name.to_vec(),
                        len: None,
                    };
                    f.path = Some(Bytes::from_path(&c.marked()));
                    ev.detail.push((DetailKey::PathTruncated, "file".into()));
                }
                ev.detail
                    .push((DetailKey::OpenFlags, format!("{:#o}", o.flags)));
                ev
            }
            RawEvent::Namespace(n) => return self.namespace(raw, n, maps),
            RawEvent::Enforce(x) => {
                let op = snapmon_common::deny::NAMES
                    .iter()
                    .find(|(b, _)| *b == x.op)
                    .map(|(_, n)| *n)
                    .unwrap_or("op");
                let action = crate::actions::deny_action(op, x.denied != 0);
                let mut ev = self.base(
                    raw,
                    Category::File,
                    if x.denied != 0 {
                        EventType::Denied
                    } else {
                        EventType::Allowed
                    },
                    action,
                );
                let obj = if x.object.ino != 0 {
                    x.object
                } else {
                    x.target
                };
                ev.file = Some(self.file(obj, None));
                ev.detail.push((DetailKey::Operation, op.to_string()));
                ev.detail.push((
                    DetailKey::Outcome,
                    if x.denied != 0 {
                        "denied"
                    } else {
                        "would_deny"
                    }
                    .to_string(),
                ));
                if let Some(t) = self.watch.path_of(&x.target) {
                    ev.detail
                        .push((DetailKey::Protected, Bytes::from_path(t).display()));
                }
                ev.detail.push((
                    DetailKey::ActorExeIdentity,
                    format!("{}:{}", crate::paths::dev_display(x.exe.dev), x.exe.ino),
                ));
                if x.aux != 0 {
                    ev.detail.push((DetailKey::Aux, format!("{:#x}", x.aux)));
                }
                ev
            }
            RawEvent::Respond(x) => {
                let action = crate::actions::response_action(x.signal, x.flags);
                let ty = if x.signal == snapmon_common::respond::SIGKILL {
                    EventType::End
                } else {
                    EventType::Change
                };
                let mut ev = self.base(raw, Category::Process, ty, action);
                if x.target.ino != 0 {
                    ev.file = Some(self.file(x.target, None));
                }
                ev.detail.extend(response_details(x));
                ev
            }
            RawEvent::UringRegister(u) => {
                use crate::event as e;
                use snapmon_common::uring_register as ur;
                let mut ev = self.base(
                    raw,
                    Category::File,
                    EventType::Change,
                    Action::IoUringRegisterFiles,
                );
                ev.file = Some(self.file(u.file, Some(u.size)));
                if self.watch.stale(&u.file, u.hdr.ts_ns) {
                    if let Some(f) = ev.file.as_mut() {
                        f.path = None;
                    }
                    ev.detail.push((DetailKey::InodeReused, "true".into()));
                }
                let route = e::URING_ROUTES
                    .iter()
                    .find(|(op, _)| *op == u.opcode)
                    .map_or_else(|| format!("opcode_{}", u.opcode), |(_, n)| (*n).to_string());
                let ring = if u.flags & ur::RING_REGISTERED != 0 {
                    format!("registered:{}", u.ring_fd)
                } else {
                    u.ring_fd.to_string()
                };
                ev.detail.push((DetailKey::IoUringRegister, route));
                let slot = match u.slot {
                    u32::MAX => "alloc".to_string(),
                    n => n.to_string(),
                };
                ev.detail.push((DetailKey::IoUringSlot, slot));
                ev.detail.push((DetailKey::IoUringFd, u.fd.to_string()));
                ev.detail.push((DetailKey::IoUringRingFd, ring));
                if u.flags & ur::CUT != 0 {
                    ev.detail.push((
                        DetailKey::IoUringCut,
                        format!("{} of {}", ur::MAX_FDS, u.nr),
                    ));
                }
                ev
            }
            RawEvent::Ioctl(i) => {
                let mut ev = self.base(raw, Category::File, EventType::Info, Action::Ioctl);
                let mut f = self.file(i.file, None);
                // Entry name in a known directory beats the identity's remembered path, which
                // is ambiguous when identities are shared (btrfs subvolume roots).
                let name = cstr(&i.name, i.name_len as usize);
                if !name.is_empty() && !name.contains(&b'/') {
                    if let Some(dir) = self.watch.path_of(&i.parent).filter(|_| i.parent.ino != 0) {
                        let p = dir.join(std::ffi::OsStr::from_bytes(name));
                        f.path = Some(Bytes(p.as_os_str().as_bytes().to_vec()));
                    }
                }
                ev.file = Some(f);
                let n = (i.arg_len as usize).min(i.arg_data.len());
                ev.ioctl = Some(IoctlRaw {
                    cmd: i.cmd,
                    arg: i.arg,
                    arg_data: i.arg_data[..n].to_vec(),
                });
                if i.flags & write_flags::LOOP_BACKING != 0 {
                    self.loop_attached(&mut ev, i, maps);
                } else if let Some(a) = self.loops.get(&i.file).cloned() {
                    self.loop_ioctl(&mut ev, i, a, maps);
                }
                ev
            }
        };
        self.stats.emitted += 1;
        Some(ev)
    }

    fn namespace(
        &mut self,
        raw: &RawEvent,
        n: &snapmon_common::NamespaceEvent,
        maps: &mut dyn WatchMaps,
    ) -> Option<Event> {
        let op = NsOp::from_u16(n.op);
        let (t, a) = match op {
            Some(NsOp::Mkdir) => (EventType::Creation, Action::Mkdir),
            Some(NsOp::Rename) => (EventType::Change, Action::Rename),
            Some(NsOp::Unlink) => (EventType::Deletion, Action::Unlink),
            Some(NsOp::Rmdir) => (EventType::Deletion, Action::Rmdir),
            Some(NsOp::Link) => (EventType::Creation, Action::Link),
            Some(NsOp::Symlink) => (EventType::Creation, Action::Symlink),
            Some(NsOp::Chmod) => (EventType::Change, Action::Chmod),
            Some(NsOp::Chown) => (EventType::Change, Action::Chown),
            Some(NsOp::Utimes) => (EventType::Change, Action::Utimes),
            Some(NsOp::Truncate) => (EventType::Change, Action::Truncate),
            None => (EventType::Info, Action::NamespaceUnknown),
        };
        let tgid = n.hdr.tgid;
        // Which paths stay cut: the event says so (`DetailKey::PathTruncated`).
        let mut unresolved: Vec<&str> = Vec::new();
        // Paths given through a symlinked or bind-mounted store (`DetailKey::LinkPath`).
        let mut linked: Vec<String> = Vec::new();
        let (file, target) = if n.flags & ns_flags::TARGET_IS_FD != 0 {
            (Some(self.file(n.base1, None)), None)
        } else {
            let via_vfs = n.flags & ns_flags::VIA_VFS != 0;
            let res = |raw: &[u8], base: FileKey| {
                if via_vfs {
                    self.in_dir(raw, base)
                } else {
                    // A path through an overlay's merged view names the store's file.
                    self.resolve(raw, base, tgid)
                        .map(|p| self.overlays.real_of(&p).unwrap_or(p))
                }
            };
            // Paths the kernel cut (syscall arguments only: LSM names are entry names).
            let cut_of = |flag: u16, buf: &[u8], len: u16| {
                (!via_vfs && n.flags & flag != 0)
                    .then(|| Cut::from_record(buf, len as usize))
                    .flatten()
            };
            let cut1 = cut_of(ns_flags::PATH1_TRUNCATED, &n.path1, n.path1_len);
            let cut2 = (n.path2_len > 0)
                .then(|| cut_of(ns_flags::PATH2_TRUNCATED, &n.path2, n.path2_len))
                .flatten();
            // path1 names what was there (the table knows it); a symlink's is its content.
            let look1 = match op {
                Some(NsOp::Symlink) => None,
                Some(NsOp::Mkdir) => Some(Look::Disk),
                _ => Some(Look::Known),
            };
            let (p1, cut1) = match &cut1 {
                Some(c) => {
                    let (p, unresolved) = self.resolve_cut(c, n.base1, tgid, look1, None);
                    (Some(p), unresolved)
                }
                None => (res(cstr(&n.path1, n.path1_len as usize), n.base1), false),
            };
            // A path that matched the kernel by its last component only: through a symlinked
            // or bind-mounted store, the store's own name. `moved`: path1's directory as
            // given, and the store's.
            let mut moved: Option<(PathBuf, PathBuf)> = None;
            let p1 = match p1 {
                Some(p)
                    if !cut1
                        && n.flags & (ns_flags::LEAF_MATCH | ns_flags::LEAF2_MATCH) != 0
                        && !self.watch.covers(&p) =>
                {
                    // A file renamed over a watched one of the same last component: that
                    // name is gone because of this very rename, so it does not place path1
                    // (a rename onto itself is no rename).
                    let target = (op == Some(NsOp::Rename) && cut2.is_none() && n.path2_len > 0)
                        .then(|| res(cstr(&n.path2, n.path2_len as usize), n.base2))
                        .flatten();
                    match self
                        .through_link(&p, tgid, op)
                        .filter(|(q, via)| *via == Via::Directory || target.as_ref() != Some(q))
                    {
                        Some((q, _)) => {
                            linked.push(p.display().to_string());
                            moved = p
                                .parent()
                                .zip(q.parent())
                                .map(|(a, b)| (a.to_path_buf(), b.to_path_buf()));
                            Some(q)
                        }
                        None => Some(p),
                    }
                }
                other => other,
            };
            // Identity of the source while its name is still in the table (rename and unlink
            // have happened, or are about to, by the time we look at the filesystem).
            let known = p1
                .as_deref()
                .filter(|_| !cut1)
                .and_then(|p| self.key_for(p));
            // A rename or link target is the source's inode under a new name.
            let same = match op {
                Some(NsOp::Rename | NsOp::Link) => known.map(|k| k.ino),
                _ => None,
            };
            let (p2, cut2) = match &cut2 {
                Some(c) => {
                    let (p, unresolved) =
                        self.resolve_cut(c, n.base2, tgid, Some(Look::Disk), same);
                    (Some(p), unresolved)
                }
                None if n.path2_len > 0 => {
                    (res(cstr(&n.path2, n.path2_len as usize), n.base2), false)
                }
                None => (None, false),
            };
            let raw2_dir = p2.as_deref().and_then(Path::parent).map(Path::to_path_buf);
            // Either path's last component may be the one that matched (a rename's target
            // is often a new name): both are resolved.
            let p2 = match p2 {
                Some(p)
                    if !cut2
                        && n.flags & (ns_flags::LEAF_MATCH | ns_flags::LEAF2_MATCH) != 0
                        && !self.watch.covers(&p) =>
                {
                    // In the directory path1 was resolved from: the same directory (its
                    // symlink may be gone by now).
                    let same_dir = moved
                        .as_ref()
                        .filter(|(given, _)| p.parent() == Some(given.as_path()))
                        .zip(p.file_name())
                        .map(|((_, real), leaf)| real.join(leaf));
                    // A rename's target that replaced a watched file: that file's name is
                    // gone by leaf too, when the symlink went before we looked.
                    let op2 = op.filter(|o| matches!(o, NsOp::Rename));
                    match same_dir.or_else(|| self.through_link(&p, tgid, op2).map(|(q, _)| q)) {
                        Some(q) => {
                            linked.push(p.display().to_string());
                            Some(q)
                        }
                        None => Some(p),
                    }
                }
                other => other,
            };
            // path1 in the directory the target was found in, when only the target could be
            // placed (a temp file renamed over a watched one through a symlink now gone).
            let p1 = match (p1, &p2) {
                (Some(a), Some(b))
                    if moved.is_none()
                        && !cut1
                        && n.flags & (ns_flags::LEAF_MATCH | ns_flags::LEAF2_MATCH) != 0
                        && !self.watch.covers(&a)
                        && self.watch.covers(b)
                        && a.parent().is_some()
                        && a.parent() == raw2_dir.as_deref() =>
                {
                    Some(
                        b.parent()
                            .map_or(a.clone(), |d| d.join(a.file_name().unwrap_or_default())),
                    )
                }
                (a, _) => a,
            };
            let in1 = p1.as_deref().is_some_and(|p| self.watch.covers(p));
            let in2 = p2.as_deref().is_some_and(|p| self.watch.covers(p));
            if !in1 && !in2 {
                self.stats.dropped_outside_watch += 1;
                return None;
            }
            if cut1 {
                unresolved.push("file");
            }
            if cut2 {
                unresolved.push("target");
            }
            // Identity the target name had before: what a rename replaces.
            let replaced = match op {
                Some(NsOp::Rename | NsOp::Link) => p2
                    .as_deref()
                    .filter(|_| !cut2)
                    .and_then(|p| self.key_for(p)),
                _ => None,
            };
            // Keep the watch set and path table current (never by a cut name).
            let (w1, w2) = (p1.as_ref().filter(|_| !cut1), p2.as_ref().filter(|_| !cut2));
            match op {
                Some(NsOp::Rename) => {
                    if let (Some(a), Some(b)) = (w1, w2) {
                        self.watch.renamed(a, b);
                    }
                    if let Some(b) = w2 {
                        if let Some(k) = self.watch.observe_landing(b, maps) {
                            self.overlays.appeared(k, b, &mut self.watch, maps);
                        }
                    }
                }
                Some(NsOp::Unlink | NsOp::Rmdir) => {
                    // Forget the name: the inode number may come back for another file.
                    if let Some(p) = w1 {
                        self.watch.forget_path(p);
                    }
                }
                Some(NsOp::Mkdir | NsOp::Link | NsOp::Symlink) => {
                    let new = if p2.is_some() { w2 } else { w1 };
                    if let Some(p) = new {
                        // In a store that is an overlay's upper dir: aliased too (a directory
                        // made through the view is watched there from now on).
                        if let Some(k) = self.watch.observe_landing(p, maps) {
                            self.overlays.appeared(k, p, &mut self.watch, maps);
                        }
                    }
                }
                _ => {}
            }
            let fi = |p: Option<PathBuf>| FileInfo {
                path: p.map(|p| Bytes(p.as_os_str().as_bytes().to_vec())),
                ..Default::default()
            };
            let mut f1 = fi(p1);
            if let Some(key) = known {
                f1.dev = key.dev;
                f1.ino = key.ino;
            }
            let mut f2 = p2.map(|p| fi(Some(p)));
            if let (Some(t), Some(k)) = (&mut f2, replaced) {
                t.dev = k.dev;
                t.ino = k.ino;
            }
            (Some(f1), f2)
        };
        let mut ev = self.base(raw, Category::File, t, a);
        ev.file = file;
        ev.target = target;
        match op {
            Some(NsOp::Chmod) | Some(NsOp::Mkdir) => {
                ev.detail.push((DetailKey::Mode, format!("{:#o}", n.aux)))
            }
            Some(NsOp::Chown) => {
                ev.detail
                    .push((DetailKey::Uid, (n.aux as u32 as i32).to_string()));
                ev.detail
                    .push((DetailKey::Gid, (n.aux2 as u32 as i32).to_string()));
            }
            Some(NsOp::Rename) if n.aux != 0 => ev
                .detail
                .push((DetailKey::RenameFlags, format!("{:#x}", n.aux))),
            Some(NsOp::Truncate) => ev.detail.push((DetailKey::Length, n.aux2.to_string())),
            _ => {}
        }
        if !unresolved.is_empty() {
            ev.detail
                .push((DetailKey::PathTruncated, unresolved.join(",")));
        }
        if !linked.is_empty() {
            ev.detail.push((DetailKey::LinkPath, linked.join(",")));
        }
        if n.flags & ns_flags::VIA_IO_URING != 0 {
            ev.detail.push((DetailKey::Via, "io_uring".into()));
        } else if n.flags & ns_flags::VIA_VFS != 0 {
            ev.detail.push((DetailKey::Via, "lsm".into()));
        } else if n.flags & ns_flags::VIA_FANOTIFY != 0 {
            ev.detail.push((DetailKey::Via, "fanotify".into()));
        }
        self.stats.emitted += 1;
        Some(ev)
    }

    /// A write through a loop device over a watched file: it is the file's, at the file's
    /// offset, and is judged as such.
    fn through_loop(&self, ev: &mut Event, node: FileKey, a: LoopAlias) {
        let mut f = self.file(a.image, None);
        f.size = f
            .path
            .as_ref()
            .and_then(|p| std::fs::metadata(p.as_path()).ok())
            .map(|m| m.len());
        ev.file = Some(f);
        if let Some(w) = ev.write.as_mut() {
            w.offset = w.offset.saturating_add(a.offset as i64);
        }
        ev.detail.push((DetailKey::LoopDevice, a.node_name(node)));
        ev.detail
            .push((DetailKey::LoopOffset, a.offset.to_string()));
    }

    /// The real file behind an open through an overlay's merged view: an aliased file, or
    /// one made in an aliased directory or by a path through the view (watched and aliased
    /// now).
    fn overlay_opened(
        &mut self,
        file: FileKey,
        parent: FileKey,
        named: &Path,
        maps: &mut dyn WatchMaps,
    ) -> Option<crate::overlay::Alias> {
        if let Some(a) = self.overlays.alias(&file) {
            return Some(a.clone());
        }
        let merged = match self.overlays.alias(&parent).filter(|a| a.is_dir) {
            Some(d) => d.merged.join(named.file_name()?),
            // A directory made through the view a moment ago (the kernel watched it at the
            // open, below an aliased one): named by the absolute path used.
            None if named.is_absolute() => normalize(named),
            None => return None,
        };
        self.overlays.created(&merged, file, &mut self.watch, maps)
    }

    /// A record about a merged-view identity: it is the real file's, and says which view.
    fn through_overlay(&self, ev: &mut Event, a: &crate::overlay::Alias, size: Option<u64>) {
        let mut f = self.file(a.real, size);
        if f.path.is_none() {
            f.path = Some(Bytes::from_path(&a.real_path));
        }
        ev.file = Some(f);
        ev.detail.push((
            DetailKey::OverlayMount,
            Bytes::from_path(&a.mount_point).display(),
        ));
        ev.detail.push((
            DetailKey::OverlayPath,
            Bytes::from_path(&a.merged).display(),
        ));
    }

    /// A write through another node of the device than the one the attach named (a `mknod`
    /// twin, which the kernel matched by device number): its path, when the fd still shows
    /// it, so the report names the door actually used.
    fn other_node(&self, ev: &mut Event, tgid: u32, fd: i32, node: FileKey) {
        let Ok(p) = std::fs::read_link(format!("/proc/{tgid}/fd/{fd}")) else {
            return;
        };
        let same = std::fs::metadata(&p).is_ok_and(|md| crate::paths::key_for(&p, &md) == node);
        if !same {
            ev.detail
                .push((DetailKey::LoopNode, Bytes::from_path(&p).display()));
        }
    }

    /// The loop worker writing the backing image (seen on fentry only) replays writes made
    /// through the device: it is attributed to the last writer through it, who was judged for
    /// them, and says so. Writes that follow no front write (a node the agent does not know
    /// of) keep the kernel thread as their actor and are judged as such.
    fn loop_replay(&self, ev: &mut Event, image: FileKey, ts_ns: u64) {
        let Some(f) = self
            .loop_fronts
            .get(&image)
            .filter(|f| ts_ns.saturating_sub(f.ts_ns) <= LOOP_REPLAY_NS)
        else {
            return;
        };
        ev.detail.push((DetailKey::LoopDevice, f.node.clone()));
        ev.detail.push((DetailKey::LoopRole, "worker".into()));
        ev.detail
            .push((DetailKey::LoopWorker, ev.process.name.clone()));
        ev.process = f.process.clone();
    }

    /// Remember `process`'s write through loop node `node` (alias `a`) for the worker's
    /// writes of it, even after the device is detached; fronts past the window are dropped.
    fn front_written(&mut self, a: &LoopAlias, node: FileKey, ts_ns: u64, process: &ProcessInfo) {
        self.loop_fronts
            .retain(|_, f| ts_ns.saturating_sub(f.ts_ns) <= LOOP_REPLAY_NS);
        self.loop_fronts.insert(
            a.image,
            LoopFront {
                ts_ns,
                process: process.clone(),
                node: a.node_name(node),
            },
        );
    }

    /// A loop attach whose backing fd is a watched file (`parent` is the loop device node):
    /// the node becomes an alias of the file.
    fn loop_attached(
        &mut self,
        ev: &mut Event,
        i: &snapmon_common::IoctlEvent,
        maps: &mut dyn WatchMaps,
    ) {
        let node = i.parent;
        let offset = if i.cmd == snapmon_common::loop_ioctl::CONFIGURE {
            // loop_config.info.lo_offset
            ev.ioctl
                .as_ref()
                .and_then(|x| x.arg_data.get(32..40))
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .unwrap_or(0)
        } else {
            0
        };
        let a = LoopAlias {
            image: i.file,
            offset,
            node: (node.ino != 0)
                .then(|| loop_node_path(i.hdr.tgid, i.fd, node))
                .flatten(),
        };
        ev.detail.push((DetailKey::LoopDevice, a.node_name(node)));
        ev.detail.push((DetailKey::LoopRole, "backing".into()));
        if node.ino == 0 {
            return;
        }
        let image = self.watch.path_of(&i.file).cloned().unwrap_or_default();
        if self
            .watch
            .watch_alias(node, a.node.as_deref(), &image, maps)
        {
            self.loops.insert(node, a);
        } else {
            maps.remove_rdev_alias(node);
            ev.detail.push((DetailKey::LoopWatch, "refused".into()));
        }
    }

    /// An ioctl on a loop device node that aliases a watched file: a new offset moves the
    /// mapping; another backing file ends it; a detach is reported and ends nothing yet.
    fn loop_ioctl(
        &mut self,
        ev: &mut Event,
        i: &snapmon_common::IoctlEvent,
        a: LoopAlias,
        maps: &mut dyn WatchMaps,
    ) {
        use snapmon_common::loop_ioctl as lo;
        let node = i.file;
        ev.file = Some(self.file(a.image, None));
        ev.detail.push((DetailKey::LoopDevice, a.node_name(node)));
        ev.detail.push((DetailKey::LoopRole, "device".into()));
        let data = ev
            .ioctl
            .as_ref()
            .map(|x| x.arg_data.as_slice())
            .unwrap_or(&[]);
        match i.cmd {
            lo::SET_STATUS64 => {
                if let Some(b) = data.get(24..32) {
                    let o = u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
                    if let Some(x) = self.loops.get_mut(&node) {
                        x.offset = o;
                    }
                }
            }
            lo::SET_STATUS => {
                if let Some(b) = data.get(32..36) {
                    let o = i32::from_le_bytes(b.try_into().unwrap_or([0; 4])) as u32 as u64;
                    if let Some(x) = self.loops.get_mut(&node) {
                        x.offset = o;
                    }
                }
            }
            // A detach only asks: while anyone holds the device open the kernel just sets
            // autoclear and the image stays writable through it. The alias ends when the
            // device gets another backing file (reported only when that attach succeeded).
            lo::CLR_FD => {
                ev.detail
                    .push((DetailKey::LoopWatch, "detach_requested".into()));
            }
            // Given a file that is not watched (a watched one arrives flagged).
            lo::SET_FD | lo::CHANGE_FD | lo::CONFIGURE => {
                self.loops.remove(&node);
                self.watch.unwatch_alias(node, maps);
                ev.detail.push((DetailKey::LoopWatch, "ended".into()));
            }
            _ => {}
        }
    }

    fn key_for(&self, p: &Path) -> Option<FileKey> {
        self.watch.key_at(p)
    }
}

/// Does `p` name the file `k` now (looked at under the read budget)?
fn names_file(p: &Path, k: FileKey) -> bool {
    let q = p.to_path_buf();
    crate::classify::fileread::bounded(Some(k.dev), p, move || {
        std::fs::symlink_metadata(&q).is_ok_and(|m| crate::paths::key_for(&q, &m) == k)
    })
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_known_write_op_is_a_known_action() {
        // A name enrich produces is an `Action` (so a policy exception can name it); only an
        // op this agent does not know is `write_unknown`.
        for op in 0..64u16 {
            if WriteOp::from_u16(op).is_none() {
                continue;
            }
            for mode in [0, 1, 2 | 1, 0x10, 8, 0x20] {
                let (a, _) = write_action(op, mode);
                assert_ne!(a, Action::WriteUnknown, "{op}");
            }
        }
    }

    use super::*;

    #[test]
    fn fallocate_modes_are_named() {
        assert_eq!(
            write_action(WriteOp::Fallocate as u16, 0x03).1,
            [FallocMode::KeepSize, FallocMode::PunchHole]
        );
        assert_eq!(fallocate_action(0x03).as_str(), "punch_hole");
        assert_eq!(fallocate_action(0x10).as_str(), "zero_range");
        assert_eq!(fallocate_action(0).as_str(), "fallocate");
    }

    #[test]
    fn every_write_op_has_a_name() {
        for op in 1..=19u16 {
            assert_ne!(
                crate::event::WriteOp::of_record(op),
                crate::event::WriteOp::WriteUnknown,
                "op {op}"
            );
        }
        assert_eq!(
            crate::event::WriteOp::of_record(999).as_str(),
            "write_unknown"
        );
    }
}
