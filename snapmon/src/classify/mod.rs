//! Classify stage: format intelligence. Works out what each event touched (a qcow2 header
//! field, the snapshot table, LVM metadata, a device-mapper table load …) and the diff.

use crate::event::Action;

pub mod classification;
pub mod fileread;
pub mod filter;
pub mod recheck;
pub mod replace;
// The parsers live in their own crate; these paths stay for the agent's callers.
pub use snapmon_formats::{inspect, ioctl, libvirt, lvm, qcow2};

use std::{collections::HashMap, fs::File, path::Path, time::Instant};

use serde::Serialize;

use crate::event::Event;
pub use classification::{Classification, Format};
pub use qcow2::FieldChange as Change;
use snapmon_common::{filter_actor, FileKey, WriteFilter};

/// Per-file format state kept between events.
enum FileState {
    Qcow2(Box<Qcow2State>),
    Lvm(Box<LvmState>),
    /// Looked at; not a format we model (yet). Re-checked when its first bytes change.
    Other(OtherState),
}

/// A file that did not load as an image when last looked at.
#[derive(Default)]
struct OtherState {
    /// It starts with an image's magic (`qcow2`, `lvm`) but did not load: still being
    /// filled, or a disguise that only looks like one. Why it did not load.
    magic: Option<(Format, String)>,
    /// Looks at it since it showed the magic (bounded: a file that never loads stops
    /// costing a re-read on every write).
    tries: u32,
}

/// Re-reads of a file that shows an image magic but does not load, before only writes to
/// its first cluster trigger one.
const MAX_MAGIC_TRIES: u32 = 16;

impl FileState {
    fn other() -> FileState {
        FileState::Other(OtherState::default())
    }

    /// The format a file claims by its magic when it does not load as one.
    fn magic_only(&self) -> Option<Format> {
        match self {
            FileState::Other(o) => o.magic.as_ref().map(|m| m.0),
            _ => None,
        }
    }
}

/// Where content sniffing looks: a qcow2 magic and an LVM label lie in the first 4 KiB, so
/// bytes put there (by a write, copy or clone) get a non-image file looked at again; one that
/// shows a magic but did not load yet is looked at after any write (MAX_MAGIC_TRIES).
const SNIFF_SPAN: u64 = 4096;

/// Actions that put bytes into a file (as opposed to cutting, punching or mapping it).
fn puts_bytes(action: Action) -> bool {
    use Action as A;
    match action {
        A::Write
        | A::Pwrite64
        | A::Writev
        | A::Pwritev
        | A::Pwritev2
        | A::IoUringWrite
        | A::IoUringWritev
        | A::IoUringWriteFixed
        | A::AioPwrite
        | A::AioPwritev
        | A::CopyFileRange
        | A::Splice
        | A::Sendfile
        | A::VfsWrite
        | A::CloneRange => true,
        // Mapped writes are not seen byte by byte; size changes and namespace operations
        // carry no data.
        A::MmapSharedWrite
        | A::WriteUnknown
        | A::Fallocate
        | A::PunchHole
        | A::ZeroRange
        | A::CollapseRange
        | A::InsertRange
        | A::Truncate
        | A::Create
        | A::OpenWrite
        | A::OpenTruncate
        | A::Rename
        | A::Unlink
        | A::Rmdir
        | A::Link
        | A::Symlink
        | A::Mkdir
        | A::Chmod
        | A::Chown
        | A::Utimes
        | A::NamespaceUnknown
        | A::Ioctl
        | A::IoUringRegisterFiles
        | A::Blinded
        | A::LoopDetached
        | A::Fork
        | A::Exec
        | A::Exit
        | A::Unset => false,
        // The agent's own decisions.
        A::DenyWrite
        | A::DenyOpenWrite
        | A::DenyTruncate
        | A::DenyUnlink
        | A::DenyRename
        | A::DenyLink
        | A::DenyMmapWrite
        | A::DenyIoctl
        | A::DenyUnknown
        | A::WouldDenyWrite
        | A::WouldDenyOpenWrite
        | A::WouldDenyTruncate
        | A::WouldDenyUnlink
        | A::WouldDenyRename
        | A::WouldDenyLink
        | A::WouldDenyMmapWrite
        | A::WouldDenyIoctl
        | A::Kill
        | A::Stop
        | A::Freeze
        | A::WouldKill
        | A::WouldStop
        | A::WouldFreeze => false,
    }
}

/// What the classify stage says about one event.
pub enum Verdict {
    /// Judged now.
    Now(Option<Classification>),
    /// Judged once the file shows what the syscall did: [`Classifier::complete`].
    Hold(recheck::Hold),
}

/// A held event, judged.
pub struct Completed {
    pub classification: Option<Classification>,
    /// A rename or link: the identity now at the target, to be watched under that name.
    pub placed: Option<(std::path::PathBuf, recheck::Key, bool)>,
}

struct Qcow2State {
    shadow: qcow2::Qcow2Shadow,
    /// Cluster where a new snapshot table is being written before the header points at it.
    pending_table: Option<u64>,
    /// Tables the header pointed at before its last flip (QEMU punches them right after).
    retired_tables: Vec<(u64, u64)>,
}

/// Does a write's first bytes look like a snapshot-table entry for this image?
/// QEMU writes a new table into free clusters before flipping the header pointer.
fn looks_like_snapshot_entry(d: &[u8], h: &qcow2::Qcow2Header, file_len: u64) -> bool {
    if d.len() < 40 {
        return false;
    }
    let be64 = |o: usize| u64::from_be_bytes(d[o..o + 8].try_into().unwrap_or([0; 8]));
    let be32 = |o: usize| u32::from_be_bytes(d[o..o + 4].try_into().unwrap_or([0; 4]));
    let be16 = |o: usize| u16::from_be_bytes(d[o..o + 2].try_into().unwrap_or([0; 2]));
    let (l1_off, l1_size, id_len, name_len, extra) =
        (be64(0), be32(8), be16(12), be16(14), be32(36));
    let cs = h.cluster_size().max(512);
    l1_off != 0
        && l1_off % cs == 0
        && l1_off < file_len.saturating_add(1 << 30)
        && l1_size == h.l1_size
        && (1..=64).contains(&id_len)
        && name_len <= 1024
        && extra <= 1024
        && extra % 8 == 0
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

/// What a recheck reads besides the head, by what the file was (and then what it read).
enum Reread {
    // Boxed: one lives for one recheck, and the shadow dwarfs the other variants.
    Shadow(Option<Box<qcow2::Qcow2Shadow>>),
    State(FileState),
    Nothing,
}

/// Per-file format state (shadow headers) and the decoders, behind one call.
pub struct Classifier {
    state: HashMap<(u32, u64), FileState>,
    order: std::collections::VecDeque<(u32, u64)>,
    pub stats: ClassifyStats,
    /// In-kernel write filters as last published, per file.
    published: HashMap<(u32, u64), WriteFilter>,
    /// Filter changes not yet applied to the kernel map (None: withdraw).
    filter_updates: Vec<(FileKey, Option<WriteFilter>)>,
    /// Files to look at again later (shared mappings, late fills, clones).
    rechecks: std::collections::VecDeque<recheck::Recheck>,
    /// Files created since the agent started, with their creator's pid (bounded, oldest
    /// forgotten): what the creator writes into one is being made, not modified.
    created: HashMap<recheck::Key, u32>,
    created_order: std::collections::VecDeque<recheck::Key>,
    /// Recently changed qcow2 headers as they were before their last change (evidence).
    pre_images: std::collections::VecDeque<((u32, u64), PreImage)>,
}

/// A qcow2 shadow as it was before a header change, and the event that changed it.
#[derive(Debug, Clone)]
pub struct PreImage {
    pub seq: u64,
    pub shadow: qcow2::Qcow2Shadow,
}

/// Pre-images kept (each up to a cluster of header bytes plus the parsed tables).
const MAX_PRE_IMAGES: usize = 32;

/// Queue `f` for the kernel if it differs from what the file has now.
fn publish(
    published: &mut HashMap<(u32, u64), WriteFilter>,
    updates: &mut Vec<(FileKey, Option<WriteFilter>)>,
    key: (u32, u64),
    f: Option<WriteFilter>,
) {
    let fk = FileKey {
        dev: key.0,
        _pad: 0,
        ino: key.1,
    };
    match f {
        Some(f) if published.get(&key) != Some(&f) => {
            published.insert(key, f);
            updates.push((fk, Some(f)));
        }
        None if published.remove(&key).is_some() => updates.push((fk, None)),
        _ => {}
    }
}

/// Up to `n` bytes of the file at `path` on the filesystem `dev`, within the read budget.
fn read_prefix(dev: Option<u32>, path: &Path, n: u64) -> std::io::Result<Vec<u8>> {
    let p = path.to_path_buf();
    fileread::bounded_io(dev, path, move || fileread::read_prefix(&p, n))
}

/// What the file at `path` is, within the read budget; `None` when its filesystem did not
/// answer in time (nothing is known: the caller must not remember it as "not an image").
fn load_state(dev: u32, path: &Path) -> Option<FileState> {
    let p = path.to_path_buf();
    fileread::bounded(Some(dev), path, move || match fileread::open(&p) {
        Ok(mut f) => load_state_from(&mut f),
        Err(_) => FileState::other(),
    })
    .ok()
}

/// What a file's content says it is, all read through one descriptor.
fn load_state_from(f: &mut File) -> FileState {
    // Cheap sniff first: most files in a store are not worth a 1 MiB read.
    let Ok(sniff) = fileread::drop_stale_pages(f).and_then(|_| fileread::read_at(f, 0, 4096))
    else {
        return FileState::other();
    };
    let lvm_label = sniff.windows(8).any(|w| w == b"LABELONE");
    let qcow2_magic = sniff.starts_with(b"QFI\xfb");
    if !qcow2_magic && !lvm_label {
        return FileState::other();
    }
    let magic = |fmt: Format, why: String| {
        FileState::Other(OtherState {
            magic: Some((fmt, why)),
            tries: 0,
        })
    };
    let head = match fileread::prefix_of(f, PROBE_BYTES) {
        Ok(h) => h,
        Err(e) => {
            return magic(
                if qcow2_magic {
                    Format::Qcow2
                } else {
                    Format::Lvm
                },
                e.to_string(),
            )
        }
    };
    if head.starts_with(b"QFI\xfb") {
        return match qcow2::Qcow2Shadow::load(f) {
            Ok(shadow) => FileState::Qcow2(Box::new(Qcow2State {
                shadow,
                pending_table: None,
                retired_tables: Vec::new(),
            })),
            Err(e) => magic(Format::Qcow2, e.to_string()),
        };
    }
    match lvm::parse_label(&head) {
        Ok(label) => {
            let mda = head.get(4096..).and_then(|b| lvm::parse_mda_header(b).ok());
            let vg = lvm::metadata_text_from_device(&head).ok();
            FileState::Lvm(Box::new(LvmState {
                label: Some(label),
                mda,
                vg,
            }))
        }
        // LABELONE anywhere in the first 4 KiB that is not a valid label: not claimed.
        Err(_) => FileState::other(),
    }
}

/// LVM's own commands (run as `lvm <cmd>` or through their symlinks).
fn is_lvm_tool(name: &str, args: &[&[u8]]) -> bool {
    let base = args
        .first()
        .and_then(|a| std::str::from_utf8(a).ok())
        .map(|a| a.rsplit('/').next().unwrap_or(a))
        .unwrap_or(name);
    name == "lvm"
        || base == "lvm"
        || ["lv", "vg", "pv"].iter().any(|p| base.starts_with(p)) && base.len() > 2
}

/// Re-read a PV after a metadata write by `args` and work out which changes are this
/// writer's. Returns the changes and the new shadow, or `None` to keep the shadow.
///
/// The hook fires at io_submit, before LVM's O_DIRECT write lands, so the commit gets a
/// bounded moment to appear. The agent may also be handling the event late, after later
/// commands committed too: versions are then attributed by LVM's own `Write from <cmd>`
/// description, so each command's diff stays with the command that made it.
fn lvm_refresh(
    dev: Option<u32>,
    path: &Path,
    shadow: Option<&lvm::VgMetadata>,
    args: &[&[u8]],
    lvm_tool: bool,
) -> Option<(Vec<Change>, lvm::VgMetadata)> {
    let old_seq = shadow.map(|v| v.seqno);
    let mut hist = Vec::new();
    for i in 0..20 {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        hist = read_prefix(dev, path, PROBE_BYTES)
            .map(|h| lvm::metadata_history(&h))
            .unwrap_or_default();
        let cur = hist.last().map(|v| v.seqno);
        if old_seq.is_none() || (cur.is_some() && cur != old_seq) {
            break;
        }
    }
    let newer: Vec<&lvm::VgMetadata> = hist
        .iter()
        .filter(|v| old_seq.is_none_or(|o| v.seqno > o))
        .collect();
    let cur = hist.last()?;
    let Some(prev) = shadow else {
        return Some((Vec::new(), cur.clone()));
    };
    let mine: Vec<&lvm::VgMetadata> = newer
        .iter()
        .copied()
        .filter(|v| {
            v.description
                .as_deref()
                .is_some_and(|d| lvm::description_names_command(d, args))
        })
        .collect();
    if let Some(last) = mine.last() {
        let mut out = Vec::new();
        for v in &mine {
            // Diff against the version just before it, when the ring still holds it.
            let before = hist
                .iter()
                .rev()
                .find(|h| h.seqno < v.seqno)
                .filter(|h| h.seqno >= prev.seqno)
                .unwrap_or(prev);
            out.extend(lvm_changes(lvm::diff_vg(before, v)));
        }
        return Some((out, (*last).clone()));
    }
    // An LVM command whose own version is not (yet) there: newer versions written by other
    // LVM commands are theirs to claim.
    let others_only = !newer.is_empty()
        && newer.iter().all(|v| {
            v.description
                .as_deref()
                .is_some_and(|d| d.starts_with("Write") && d.contains(" from "))
        });
    if lvm_tool && others_only {
        return None;
    }
    if newer.is_empty() {
        return None;
    }
    Some((lvm_changes(lvm::diff_vg(prev, cur)), cur.clone()))
}

fn lvm_changes(c: Vec<lvm::LvmChange>) -> Vec<Change> {
    c.iter().map(lvm::LvmChange::field_change).collect()
}

impl Default for Classifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Classifier {
    pub fn new() -> Self {
        Classifier {
            state: HashMap::new(),
            order: Default::default(),
            stats: ClassifyStats::default(),
            published: HashMap::new(),
            filter_updates: Vec::new(),
            rechecks: Default::default(),
            created: HashMap::new(),
            created_order: Default::default(),
            pre_images: Default::default(),
        }
    }

    fn remember(&mut self, key: (u32, u64), st: FileState) {
        if self.state.insert(key, st).is_none() {
            self.order.push_back(key);
            while self.order.len() > MAX_SHADOWS {
                if let Some(old) = self.order.pop_front() {
                    self.state.remove(&old);
                    // Nothing left to keep its ranges current: report all its writes again.
                    publish(&mut self.published, &mut self.filter_updates, old, None);
                }
            }
        }
        self.stats.shadows = self.state.len();
    }

    /// Judge an event now, whatever has landed: what tests and one-shot callers use.
    /// The agent's pipeline uses [`Classifier::judge`] and [`Classifier::complete`].
    pub fn classify(&mut self, ev: &Event, path: Option<&Path>) -> Option<Classification> {
        match self.judge(ev, path, Instant::now()) {
            Verdict::Now(c) => c,
            Verdict::Hold(h) => self.complete(ev, path, h).classification,
        }
    }

    /// Judge an event now, or say it must wait until the file shows what its syscall did.
    pub fn judge(&mut self, ev: &Event, path: Option<&Path>, now: Instant) -> Verdict {
        // About an earlier file with this inode number: its bytes and shadow are gone.
        if ev.inode_reused() {
            return Verdict::Now(None);
        }
        self.watch_later(ev, path, now);
        if ev.action == Action::Create {
            self.note_creator(ev);
        }
        if let Some(p) = recheck::Pending::from_event(ev) {
            if p.located().is_none() {
                return Verdict::Hold(recheck::Hold::new(recheck::HoldKind::Replace(p), now));
            }
            let (c, _) = self.judge_replace(ev, &p);
            return Verdict::Now(self.counted(ev, c));
        }
        if let Some(k) = self.hold_for(ev, path) {
            return Verdict::Hold(recheck::Hold::new(k, now));
        }
        let c = self.classify_inner(ev, path);
        Verdict::Now(self.counted(ev, c))
    }

    /// Judge a held event (landed, forced by a later event on the same file, or out of time).
    pub fn complete(&mut self, ev: &Event, path: Option<&Path>, h: recheck::Hold) -> Completed {
        let c = match &h.kind {
            recheck::HoldKind::Replace(p) => {
                let (c, placed) = self.judge_replace(ev, p);
                let placed = placed.map(|k| (p.target.clone(), k, p.link));
                return Completed {
                    classification: self.counted(ev, c),
                    placed,
                };
            }
            _ => self.classify_inner(ev, path),
        };
        // Bytes that landed but made no image yet: look again later, for a slow writer.
        if let recheck::HoldKind::Sniff { key, path, .. } = &h.kind {
            let still_other = self
                .state
                .get(key)
                .is_none_or(|s| matches!(s, FileState::Other(_)));
            if still_other {
                self.add_recheck(recheck::Recheck::new(
                    *key,
                    path.clone(),
                    recheck::RecheckWhy::LateFill,
                    ev,
                    Instant::now(),
                ));
            }
        }
        Completed {
            classification: self.counted(ev, c),
            placed: None,
        }
    }

    fn counted(&mut self, ev: &Event, mut c: Option<Classification>) -> Option<Classification> {
        if let Some(c) = &mut c {
            self.stats.classified += 1;
            // Bytes its creator puts into a file it just made (cp, qemu-img convert into a
            // new file, a tool writing a template): the file is being made, not modified.
            let fills = ev.write.is_some() || is_clone_ioctl(ev);
            if fills && !self.created.is_empty() && self.by_creator(ev) {
                c.facts.push(("made".into(), "by its creator".into()));
            }
        }
        c
    }

    /// Is this event its file's creator at work, with no one else having touched it since?
    /// The first other writer ends the making.
    fn by_creator(&mut self, ev: &Event) -> bool {
        let Some(f) = ev.file.as_ref().filter(|f| f.ino != 0) else {
            return false;
        };
        let key = (f.dev, f.ino);
        match self.created.get(&key) {
            None => false,
            Some(&pid) if pid == ev.process.pid => true,
            Some(_) => {
                // Stale keys in `created_order` are skipped when it is trimmed.
                self.created.remove(&key);
                false
            }
        }
    }

    /// A file created (`O_CREAT` that made it): its creator's pid, until someone else
    /// touches it.
    fn note_creator(&mut self, ev: &Event) {
        let Some(f) = ev.file.as_ref().filter(|f| f.ino != 0) else {
            return;
        };
        let key = (f.dev, f.ino);
        // A reused inode number: the new file's creator is the one that counts.
        if self.created.insert(key, ev.process.pid).is_none() {
            self.created_order.push_back(key);
        }
        while self.created.len() > MAX_SHADOWS {
            let Some(old) = self.created_order.pop_front() else {
                break;
            };
            self.created.remove(&old);
        }
        // Keys whose making ended leave stale entries behind: drop them now and then.
        if self.created_order.len() > 2 * MAX_SHADOWS {
            let live = &self.created;
            self.created_order.retain(|k| live.contains_key(k));
        }
    }

    /// Does this event have to wait for its syscall to land before it can be judged?
    fn hold_for(&mut self, ev: &Event, path: Option<&Path>) -> Option<recheck::HoldKind> {
        let (w, f, path) = (ev.write.as_ref()?, ev.file.as_ref()?, path?);
        if f.ino == 0 {
            return None;
        }
        let key = (f.dev, f.ino);
        if !self.state.contains_key(&key) && !self.created.contains_key(&key) {
            // Seen for the first time, not seen being created (its shadow was evicted, or
            // it appeared under a name the agent learned late): load what it is *before*
            // this event's bytes land, so a header write still diffs against the old header.
            let ps = path.to_string_lossy();
            if libvirt::classify_libvirt_path(&ps).is_none() && !lvm_text_path(&ps) {
                if let Some(st) = load_state(f.dev, path) {
                    self.remember(key, st);
                }
            }
        }
        if ev.ioctl.is_some() || !puts_bytes(ev.action) {
            return None;
        }
        let (off, len) = write_span(ev.action, w, f.size);
        // Cheapest test first: most writes are to images, within the capture.
        match self.state.get(&key) {
            Some(FileState::Qcow2(q)) => {
                let sh = &q.shadow;
                let partial = (w.data.len() as u64) < w.length;
                if !partial || off >= sh.raw.len() as u64 || len == 0 {
                    return None;
                }
                let same_as_before = !w.data.is_empty()
                    && usize::try_from(off)
                        .ok()
                        .and_then(|o| sh.raw.get(o..o.checked_add(w.data.len())?))
                        == Some(&w.data[..]);
                Some(recheck::HoldKind::HeaderTail {
                    key,
                    path: path.to_path_buf(),
                    off,
                    data: w.data.clone(),
                    same_as_before,
                })
            }
            Some(FileState::Lvm(_)) => None,
            st @ (None | Some(FileState::Other(_))) => {
                let magic = st.and_then(FileState::magic_only).is_some();
                if off >= SNIFF_SPAN && !magic {
                    return None;
                }
                // Metadata text files are judged by name, not sniffed.
                let ps = path.to_string_lossy();
                if libvirt::classify_libvirt_path(&ps).is_some() || lvm_text_path(&ps) {
                    return None;
                }
                Some(recheck::HoldKind::Sniff {
                    key,
                    path: path.to_path_buf(),
                    off,
                    data: w.data.clone(),
                })
            }
        }
    }

    /// Files whose content can change with no event to say when: a shared writable
    /// mapping (stores land in the page cache whenever the process pleases), a clone.
    fn watch_later(&mut self, ev: &Event, path: Option<&Path>, now: Instant) {
        let (Some(f), Some(path)) = (ev.file.as_ref(), path) else {
            return;
        };
        if f.ino == 0 {
            return;
        }
        let why = match ev.action {
            Action::MmapSharedWrite => recheck::RecheckWhy::SharedMapping,
            Action::Ioctl if is_clone_ioctl(ev) => recheck::RecheckWhy::Clone,
            _ => return,
        };
        // No digest yet: the first look always judges, since the stores or the clone may
        // have landed before this event reached the agent.
        let mut r = recheck::Recheck::new((f.dev, f.ino), path.to_path_buf(), why, ev, now);
        if why == recheck::RecheckWhy::Clone {
            // The clone is done when the ioctl returns: look soon, then once more.
            r.next = now + recheck::LAND_DELAY;
        }
        self.add_recheck(r);
    }

    fn add_recheck(&mut self, r: recheck::Recheck) {
        // One per file and reason: a newer event only refreshes who is followed up on.
        self.rechecks
            .retain(|x| !(x.key == r.key && x.why == r.why));
        if self.rechecks.len() >= recheck::MAX_RECHECKS {
            self.rechecks.pop_front();
        }
        self.rechecks.push_back(r);
    }

    /// When the next recheck is due.
    pub fn next_recheck(&self) -> Option<Instant> {
        self.rechecks.iter().map(|r| r.next).min()
    }

    /// Look again at the files that are due; a change yields a follow-up event (the
    /// prompting event's process and file, classified by what the file holds now).
    pub fn rechecks_due(&mut self, now: Instant) -> Vec<Event> {
        let mut out = Vec::new();
        let due: Vec<recheck::Recheck> = {
            let (due, keep): (Vec<_>, Vec<_>) =
                self.rechecks.drain(..).partition(|r| r.next <= now);
            self.rechecks.extend(keep);
            due
        };
        // One read of a process's maps per round, however many of its mappings are due.
        let mut maps: HashMap<u32, String> = HashMap::new();
        for mut r in due {
            let mapped = match r.why {
                recheck::RecheckWhy::SharedMapping => {
                    let pid = r.template.process.pid;
                    let text = maps.entry(pid).or_insert_with(|| {
                        std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default()
                    });
                    recheck::maps_text_has(text, r.key)
                }
                _ => false,
            };
            if let Some(c) = self.recheck(&mut r) {
                let mut ev = (*r.template).clone();
                let wall = crate::clock::Clock::now();
                let boot = crate::lineage::boottime_ns();
                ev.ts_boot_ns = boot;
                ev.ts_unix_ns = wall.unix_ns(boot);
                if ev.action == Action::Ioctl {
                    // The clone's effect on the content, judged as a write of it.
                    ev.action = Action::CloneRange;
                    ev.ioctl = None;
                }
                ev.detail
                    .push((crate::event::DetailKey::Recheck, r.why.as_str().to_string()));
                ev.classification = Some(c);
                self.stats.classified += 1;
                out.push(ev);
            }
            if r.advance(now, mapped) {
                self.rechecks.push_back(r);
            }
        }
        out
    }

    /// Read a file again; a classification when it became an image or its header changed.
    fn recheck(&mut self, r: &mut recheck::Recheck) -> Option<Classification> {
        let want = match self.state.get(&r.key) {
            Some(FileState::Qcow2(_)) => Reread::Shadow(None),
            Some(FileState::Lvm(_)) => Reread::Nothing,
            None | Some(FileState::Other(_)) => Reread::State(FileState::other()),
        };
        let (at, key, last) = (r.path.clone(), r.key, r.last);
        // All of it on the worker, under one budget: a filesystem that answers the first
        // read may hang on the next.
        let (d, got) = fileread::bounded(Some(r.key.0), &r.path, move || {
            let mut f = fileread::open(&at).ok()?;
            let md = f.metadata().ok()?;
            let k = crate::paths::key_for(&at, &md);
            if (k.dev, k.ino) != key {
                // Another file has the name now: its own events speak for it.
                return None;
            }
            let head = fileread::read_at(&f, 0, 4096).ok()?;
            let d = recheck::digest(&head);
            if last == Some(d) {
                return None;
            }
            Some((
                d,
                match want {
                    Reread::Shadow(_) => {
                        Reread::Shadow(qcow2::Qcow2Shadow::load(&mut f).ok().map(Box::new))
                    }
                    Reread::State(_) => Reread::State(load_state_from(&mut f)),
                    Reread::Nothing => Reread::Nothing,
                },
            ))
        })
        .ok()??;
        r.last = Some(d);
        self.stats.refreshes += 1;
        match self.state.get_mut(&r.key) {
            Some(FileState::Qcow2(q)) => {
                // The whole header area may have moved under a mapping: re-read it all.
                let before = q.shadow.image.clone();
                let Reread::Shadow(Some(new)) = got else {
                    return None;
                };
                let changes = qcow2::diff_images(&before, &new.image);
                q.shadow = *new;
                q.pending_table = None;
                if changes.is_empty() {
                    return None;
                }
                let ranges = q.shadow.image.metadata_ranges();
                let fl = filter::to_wire(filter_actor::QEMU, ranges);
                publish(
                    &mut self.published,
                    &mut self.filter_updates,
                    r.key,
                    Some(fl),
                );
                Some(Classification {
                    format: Format::Qcow2,
                    regions: vec!["header".into()],
                    changes,
                    ..Default::default()
                })
            }
            Some(FileState::Lvm(_)) => None,
            None | Some(FileState::Other(_)) => {
                let Reread::State(st) = got else {
                    return None;
                };
                let fmt = match &st {
                    FileState::Qcow2(_) => Format::Qcow2,
                    FileState::Lvm(_) => Format::Lvm,
                    FileState::Other(_) => st.magic_only()?,
                };
                self.state.remove(&r.key);
                self.remember(r.key, st);
                Some(Classification {
                    format: fmt,
                    facts: vec![("became".into(), fmt.as_str().into())],
                    ..Default::default()
                })
            }
        }
    }

    fn classify_inner(&mut self, ev: &Event, path: Option<&Path>) -> Option<Classification> {
        if let Some(i) = &ev.ioctl {
            return Some(classify_ioctl(i));
        }
        // A new or deleted file: any shadow under that inode number is someone else's.
        if matches!(ev.action, Action::Create | Action::Unlink) {
            if let Some(f) = &ev.file {
                self.forget(f.dev, f.ino);
            }
        }
        // Borrowed for a UTF-8 path: this runs for every write.
        let path_str = path.map(|p| p.to_string_lossy());
        // libvirt metadata and LVM text files are judged by name and, when present, content.
        if let Some(ps) = &path_str {
            if let Some(lf) = libvirt::classify_libvirt_path(ps) {
                return Some(classify_libvirt(&lf, ev, path));
            }
            if let Some(c) = classify_lvm_file(ps, path, ev.file.as_ref().map(|f| f.dev)) {
                return Some(c);
            }
        }
        let w = ev.write.as_ref()?;
        let f = ev.file.as_ref()?;
        let key = (f.dev, f.ino);
        let path = path?;
        let (fresh, was_image) = match self.state.get(&key) {
            None => (true, false),
            Some(FileState::Other(_)) => (false, false),
            Some(_) => (false, true),
        };
        if fresh {
            // Not read in time: judged as unknown now, read again on its next event.
            let st = load_state(f.dev, path)?;
            self.remember(key, st);
        }
        let (off, len) = write_span(ev.action, w, f.size);
        let mut c = Classification {
            format: Format::File,
            ..Default::default()
        };
        if off < 4096 && w.data.len() >= 64 {
            c.sample_entropy = Some((qcow2::shannon_entropy(&w.data) * 1000.0).round() / 1000.0);
        }
        let st = self.state.get_mut(&key)?;
        // Nothing cut or written (ftruncate to the same size): no region.
        match st {
            FileState::Qcow2(q) => {
                c.format = Format::Qcow2;
                let sh = &mut q.shadow;
                if len > 0 {
                    for sp in sh.image.classify(off, len) {
                        let l = sp.region.as_label().into_owned();
                        if c.regions.last() != Some(&l) {
                            c.regions.push(l);
                        }
                    }
                }
                let cs = sh.image.cluster_size().max(512);
                if c.regions == ["data"]
                    && matches!(
                        ev.action,
                        Action::Pwrite64
                            | Action::Write
                            | Action::Pwritev
                            | Action::Pwritev2
                            | Action::Writev
                            | Action::IoUringWrite
                            | Action::AioPwrite
                    )
                {
                    if looks_like_snapshot_entry(&w.data, &sh.image.header, sh.image.file_len) {
                        q.pending_table = Some(off / cs);
                    }
                    if q.pending_table == Some(off / cs) {
                        c.regions = vec!["snapshot_table".into()];
                        c.facts.push((
                            "snapshot_table".into(),
                            "new table, not yet referenced by the header".into(),
                        ));
                    }
                }
                if c.regions == ["data"]
                    && q.retired_tables
                        .iter()
                        .any(|&(a, b)| off < b && off + len > a)
                {
                    c.regions = vec!["snapshot_table".into()];
                    c.facts.push((
                        "snapshot_table".into(),
                        "previous table, replaced by the last header update".into(),
                    ));
                }
                let header_end = sh.raw.len() as u64;
                let mut reread = false;
                let mut unparseable = false;
                let writes_bytes = ev.action != Action::Truncate && len > 0;
                let full_sample = w.data.len() as u64 == w.length;
                // A field rewritten with the value it has: nothing to diff or re-read.
                let noop = full_sample && sh.is_noop_write(off, &w.data);
                let mut pre = None;
                if off < header_end && writes_bytes && !noop {
                    let before = sh.image.clone();
                    let before_raw = sh.raw.clone();
                    // Exact and race-free: the bytes written (first DATA_LEN of them), applied.
                    let patch = (!w.data.is_empty())
                        .then(|| sh.apply_header_write(off, &w.data))
                        .flatten();
                    if let Some(p) = &patch {
                        c.changes = p.changes.clone();
                    }
                    let absorbed = match patch {
                        Some(p) if full_sample => sh.absorb(p),
                        _ => false,
                    };
                    if !absorbed {
                        // Pointers moved or the write was larger than the sample: re-read.
                        self.stats.refreshes += 1;
                        reread = true;
                        q.pending_table = None;
                        let (old_off, old_len) =
                            (before.header.snapshots_offset, before.snapshot_table_len);
                        // By path, so what is there now: never block on or follow what a
                        // user renamed over the image since the write.
                        let (at, data) = (path.to_path_buf(), w.data.clone());
                        let loaded = fileread::bounded(Some(f.dev), path, move || {
                            fileread::open(&at)
                                .map_err(|e| qcow2::Qcow2Error::Io(e.into()))
                                .and_then(|f| {
                                    let mut f = qcow2::WithWrite::new(f, off, &data);
                                    qcow2::Qcow2Shadow::load(&mut f)
                                })
                        });
                        match loaded {
                            // Not read in time: judged on the captured bytes alone, the
                            // shadow left as it was (the record says the file was unread).
                            Err(_) => {}
                            Ok(Ok(new)) => {
                                if old_off != 0 && old_off != new.image.header.snapshots_offset {
                                    let end = old_off + old_len.max(1).div_ceil(cs) * cs;
                                    q.retired_tables.push((old_off, end));
                                    if q.retired_tables.len() > 4 {
                                        q.retired_tables.remove(0);
                                    }
                                }
                                let full = qcow2::diff_images(&before, &new.image);
                                if full_sample {
                                    // The captured bytes were the whole write: their diff is
                                    // exact; the re-read adds what lies elsewhere (the
                                    // snapshots a moved table no longer lists, each one).
                                    for ch in full {
                                        if !c.changes.contains(&ch) {
                                            c.changes.push(ch);
                                        }
                                    }
                                } else {
                                    // Bytes beyond the capture came from the file: the
                                    // re-read is the truth for every field.
                                    c.changes = full;
                                }
                                *sh = new;
                            }
                            Ok(Err(e)) => {
                                unparseable = true;
                                c.facts.push(("header_unparseable".into(), e.to_string()))
                            }
                        }
                    }
                    pre = Some(qcow2::Qcow2Shadow {
                        raw: before_raw,
                        image: before,
                    });
                }
                if let Some(shadow) = pre.filter(|_| !c.changes.is_empty() || unparseable) {
                    self.pre_images.retain(|(k, _)| *k != key);
                    if self.pre_images.len() >= MAX_PRE_IMAGES {
                        self.pre_images.pop_front();
                    }
                    self.pre_images.push_back((
                        key,
                        PreImage {
                            seq: ev.seq,
                            shadow,
                        },
                    ));
                }
                // Ranges move only with the header: recompute when it changed (or on the
                // file's first event, after the rules have seen one write of it).
                if unparseable {
                    publish(&mut self.published, &mut self.filter_updates, key, None);
                } else if reread || !c.changes.is_empty() || !self.published.contains_key(&key) {
                    let f = filter::to_wire(filter_actor::QEMU, sh.image.metadata_ranges());
                    publish(&mut self.published, &mut self.filter_updates, key, Some(f));
                }
            }
            FileState::Lvm(l) => {
                c.format = Format::Lvm;
                c.regions =
                    lvm::classify_pv_write(l.label.as_ref(), l.mda.as_ref(), off, len.max(1))
                        .into_iter()
                        .map(str::to_string)
                        .collect();
                if c.regions.iter().any(|r| r != "lvm.data") {
                    self.stats.refreshes += 1;
                    let args: Vec<&[u8]> = ev.process.args.iter().map(|a| a.0.as_slice()).collect();
                    let lvm_tool = is_lvm_tool(&ev.process.name, &args);
                    if let Some((changes, vg)) =
                        lvm_refresh(Some(f.dev), path, l.vg.as_ref(), &args, lvm_tool)
                    {
                        c.changes = changes;
                        l.vg = Some(vg);
                    }
                    if let Ok(head) =
                        read_prefix(Some(f.dev), path, 4096 + lvm::MDA_HEADER_SIZE as u64)
                    {
                        l.label = lvm::parse_label(&head).ok();
                        l.mda = head.get(4096..).and_then(|b| lvm::parse_mda_header(b).ok());
                    }
                    let r = lvm::pv_metadata_ranges(l.label.as_ref(), l.mda.as_ref());
                    let f = filter::to_wire(filter_actor::LVM, r);
                    publish(&mut self.published, &mut self.filter_updates, key, Some(f));
                } else if !self.published.contains_key(&key) {
                    let r = lvm::pv_metadata_ranges(l.label.as_ref(), l.mda.as_ref());
                    let f = filter::to_wire(filter_actor::LVM, r);
                    publish(&mut self.published, &mut self.filter_updates, key, Some(f));
                }
            }
            FileState::Other(o) => {
                let (magic, tries) = (o.magic.is_some(), o.tries);
                publish(&mut self.published, &mut self.filter_updates, key, None);
                // A file that becomes qcow2/LVM (creation, a copy, a late fill) is picked up
                // when bytes land in its first cluster; one that shows an image magic but
                // does not load yet, on any write (bounded).
                let resniff = (off < SNIFF_SPAN && len > 0) || (magic && tries < MAX_MAGIC_TRIES);
                // Unread in time: the old state stands until the next write.
                let st = if resniff && !fresh {
                    load_state(f.dev, path)
                } else {
                    None
                };
                if let Some(mut st) = st {
                    self.state.remove(&key);
                    if let FileState::Other(n) = &mut st {
                        if n.magic.is_some() {
                            n.tries = tries + 1;
                        }
                    }
                    let became = !matches!(st, FileState::Other(_));
                    self.remember(key, st);
                    if became {
                        let mut c = self.classify_inner(ev, Some(path));
                        if let Some(c) = &mut c {
                            c.facts.push(("became".into(), c.format.as_str().into()));
                        }
                        return c;
                    }
                }
                // It claims an image format by its magic: rules judge the claim (a disguise).
                if let Some(FileState::Other(OtherState {
                    magic: Some((fmt, why)),
                    ..
                })) = self.state.get(&key)
                {
                    c.format = *fmt;
                    c.facts.push(("header_unparseable".into(), why.clone()));
                }
                c.regions.push("data".into());
            }
        }
        // First seen as an image on this very event (a new file being filled): made, not
        // modified; rules about changed metadata leave it to the ones about disguise.
        if fresh
            && !was_image
            && matches!(
                self.state.get(&key),
                Some(FileState::Qcow2(_) | FileState::Lvm(_))
            )
        {
            c.facts.push(("became".into(), c.format.as_str().into()));
        }
        Some(c)
    }

    /// Write-filter changes for the kernel since the last call, in order.
    pub fn take_filter_updates(&mut self) -> Vec<(FileKey, Option<WriteFilter>)> {
        std::mem::take(&mut self.filter_updates)
    }

    /// The qcow2 header of a file as it was before its last change, if it changed lately.
    pub fn pre_image(&self, dev: u32, ino: u64) -> Option<&PreImage> {
        self.pre_images
            .iter()
            .find(|(k, _)| *k == (dev, ino))
            .map(|(_, p)| p)
    }

    /// The shadow of a qcow2 file: what the agent believes its header is now.
    pub fn qcow2_shadow(&self, dev: u32, ino: u64) -> Option<&qcow2::Qcow2Shadow> {
        match self.state.get(&(dev, ino))? {
            FileState::Qcow2(q) => Some(&q.shadow),
            _ => None,
        }
    }

    /// What the write filter would hold for a file with a shadow (its metadata ranges and
    /// trusted writers), without publishing it: the circuit breaker's ranges before the
    /// file's first event.
    pub fn metadata_filter(&self, dev: u32, ino: u64) -> Option<WriteFilter> {
        match self.state.get(&(dev, ino))? {
            FileState::Qcow2(q) => Some(filter::to_wire(
                filter_actor::QEMU,
                q.shadow.image.metadata_ranges(),
            )),
            FileState::Lvm(l) => Some(filter::to_wire(
                filter_actor::LVM,
                lvm::pv_metadata_ranges(l.label.as_ref(), l.mda.as_ref()),
            )),
            FileState::Other(_) => None,
        }
    }

    /// Files with a published write filter.
    pub fn filters_published(&self) -> usize {
        self.published.len()
    }

    /// Load shadows for files that already exist, so the first change to them diffs
    /// against their state before the agent started rather than after.
    pub fn preload<'a>(
        &mut self,
        files: impl Iterator<Item = (&'a FileKey, &'a std::path::PathBuf)>,
    ) {
        for (k, p) in files {
            let key = (k.dev, k.ino);
            // Regular files and block devices (LVM PVs); never char devices, which may block.
            use std::os::unix::fs::FileTypeExt;
            let ok =
                std::fs::metadata(p).is_ok_and(|m| m.is_file() || m.file_type().is_block_device());
            if !self.state.contains_key(&key) && ok {
                if let Some(st) = load_state(k.dev, p) {
                    if !matches!(st, FileState::Other(_)) {
                        self.remember(key, st);
                    }
                }
            }
        }
    }

    /// Forget a file's shadow (unlinked, or replaced by rename).
    pub fn forget(&mut self, dev: u32, ino: u64) {
        self.state.remove(&(dev, ino));
        publish(
            &mut self.published,
            &mut self.filter_updates,
            (dev, ino),
            None,
        );
        self.stats.shadows = self.state.len();
    }
}

fn lvm_text_path(p: &str) -> bool {
    p.starts_with("/etc/lvm/backup/") || p.starts_with("/etc/lvm/archive/")
}

fn is_clone_ioctl(ev: &Event) -> bool {
    const FICLONE: u32 = 0x4004_9409;
    const FICLONERANGE: u32 = 0x4020_940d;
    ev.ioctl
        .as_ref()
        .is_some_and(|i| i.cmd == FICLONE || i.cmd == FICLONERANGE)
}

/// The byte range an operation affects: truncation cuts from the new length to the old end.
fn write_span(action: Action, w: &crate::event::WriteInfo, size: Option<u64>) -> (u64, u64) {
    let off = w.offset.max(0) as u64;
    match action {
        Action::Truncate => {
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
    use snapmon_common::loop_ioctl as lo;
    // FICLONE and LOOP_SET_FD/LOOP_CHANGE_FD pass an fd by value, not a pointer.
    let arg: Vec<u8> = if i.cmd == FICLONE || i.cmd == lo::SET_FD || i.cmd == lo::CHANGE_FD {
        (i.arg as u32).to_le_bytes().to_vec()
    } else {
        i.arg_data.clone()
    };
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
    let mut c = Classification {
        format: Format::Libvirt,
        ..Default::default()
    };
    c.facts
        .push(("kind".into(), format!("{:?}", lf.kind).to_lowercase()));
    c.facts.push(("domain".into(), lf.domain.clone()));
    c.facts.push(("name".into(), lf.name.clone()));
    if lf.temp {
        c.facts.push(("temp".into(), "true".into()));
    }
    // After the final rename the document is in place (`path` is where it is now): read
    // what it says.
    let readable =
        matches!(ev.action, Action::Rename | Action::Create | Action::Link) || ev.write.is_some();
    let doc = path
        .filter(|_| readable)
        .and_then(|p| read_prefix(ev.file.as_ref().map(|f| f.dev), p, 1 << 20).ok())
        .and_then(|b| libvirt::parse_libvirt_xml(&b).ok());
    if let Some(doc) = doc {
        if let Some(parent) = doc.parent {
            c.facts.push(("parent".into(), parent));
        }
        if let Some(d) = doc.domain_name {
            c.facts.push(("xml_domain".into(), d));
        }
    }
    c
}

fn classify_lvm_file(ps: &str, path: Option<&Path>, dev: Option<u32>) -> Option<Classification> {
    if !lvm_text_path(ps) {
        return None;
    }
    let mut c = Classification {
        format: Format::LvmBackup,
        ..Default::default()
    };
    c.regions.push(if ps.starts_with("/etc/lvm/backup/") {
        "lvm.backup".into()
    } else {
        "lvm.archive".into()
    });
    let p = path?;
    if let Ok(b) = read_prefix(dev, p, 4 << 20) {
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

/// Every fuzz corpus seed and every input a fuzzer ever crashed on (`snapmon/fuzz/regressions/<target>/`)
/// runs through the same calls as the fuzz targets: typed errors, never a panic or a hang.
#[cfg(test)]
mod fuzz_regressions {

    use std::{path::PathBuf, time::Instant};

    fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut out = Vec::new();
        for dir in ["corpus", "regressions"] {
            let Ok(rd) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for e in rd.flatten() {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
        out
    }

    fn each(target: &str, min_seeds: usize, f: impl Fn(&[u8])) {
        let ins = inputs(target);
        assert!(
            ins.len() >= min_seeds,
            "{target}: expected ≥{min_seeds} seeds, found {}",
            ins.len()
        );
        for (p, data) in ins {
            let t = Instant::now();
            f(&data);
            assert!(
                t.elapsed().as_secs() < 5,
                "{}: took {:?}",
                p.display(),
                t.elapsed()
            );
        }
    }

    #[test]
    fn qcow2_inputs() {
        each("qcow2", 4, |d| {
            if let Ok(img) = super::qcow2::Qcow2Image::from_bytes(d) {
                let _ = img.classify(60, 4096);
                if let Ok(s) = super::qcow2::Qcow2Shadow::load(&mut std::io::Cursor::new(d)) {
                    if let Some(p) = s.apply_header_write(60, &d[d.len().saturating_sub(16)..]) {
                        let mut s2 = s.clone();
                        let _ = s2.absorb(p);
                    }
                }
            }
        });
    }

    #[test]
    fn lvm_inputs() {
        each("lvm", 2, |d| {
            let _ = super::lvm::parse_label(d);
            let _ = super::lvm::metadata_text_from_device(d);
            let _ = super::lvm::parse_metadata_text(d);
        });
    }

    #[test]
    fn ioctl_inputs() {
        each("ioctl", 3, |d| {
            if d.len() >= 4 {
                let cmd = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
                let _ = super::ioctl::decode_ioctl(cmd, &d[4..]).to_string();
            }
        });
    }

    #[test]
    fn libvirt_inputs() {
        each("libvirt", 1, |d| {
            let _ = super::libvirt::parse_libvirt_xml(d);
        });
    }
}

#[cfg(test)]
mod lvm_refresh_tests {
    use super::*;

    const FX_SEQ3: &[u8] = include_bytes!("../../../snapmon-formats/tests/fixtures/pv_seqno3.bin");

    /// `X` stands for the quoted `--config` value, which has spaces.
    fn argv(s: &str) -> Vec<Vec<u8>> {
        s.split(' ')
            .map(|a| if a == "X" { "activation { x }" } else { a })
            .map(|a| a.as_bytes().to_vec())
            .collect()
    }

    #[test]
    fn late_pv_reread_attributes_each_version_to_the_command_that_wrote_it() {
        let tmp = crate::testutil::TmpDir::new("pv");
        let p = tmp.path("pv");
        std::fs::write(&p, FX_SEQ3).unwrap();
        let hist = lvm::metadata_history(FX_SEQ3);
        let (v1, v2) = (&hist[0], &hist[1]);
        // The agent reads after both lvcreates committed: the first one's event gets only
        // its own LV, and the shadow stops at its version.
        let a = argv("lvm lvcreate --config X --driverloaded n -an -Zn -L 4M -n base snapvg");
        let a: Vec<&[u8]> = a.iter().map(|v| v.as_slice()).collect();
        let (ch, vg) = lvm_refresh(None, &p, Some(v1), &a, true).unwrap();
        let text: Vec<String> = ch.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|c| c.contains("lv_added") && c.contains("base")),
            "{text:?}"
        );
        assert!(!text.iter().any(|c| c.contains("data2")), "{text:?}");
        assert_eq!(vg.seqno, 2);
        // Its later events claim nothing that another LVM command wrote.
        assert!(lvm_refresh(None, &p, Some(v2), &a, true).is_none());
        // The second command's event then claims seqno 3.
        let b = argv("lvm lvcreate --config X --driverloaded n -an -Zn -L 4M -n data2 snapvg");
        let b: Vec<&[u8]> = b.iter().map(|v| v.as_slice()).collect();
        let (ch, vg) = lvm_refresh(None, &p, Some(v2), &b, true).unwrap();
        let text: Vec<String> = ch.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|c| c.contains("lv_added") && c.contains("data2")),
            "{text:?}"
        );
        assert_eq!(vg.seqno, 3);
        // Anyone else writing the PV is diffed against the shadow, whoever's text it is.
        let e = argv("python3 evil.py");
        let e: Vec<&[u8]> = e.iter().map(|v| v.as_slice()).collect();
        let (ch, vg) = lvm_refresh(None, &p, Some(v1), &e, false).unwrap();
        let text: Vec<String> = ch.iter().map(ToString::to_string).collect();
        assert!(text.iter().any(|c| c.contains("data2")), "{text:?}");
        assert_eq!(vg.seqno, 3);
    }
}

#[cfg(test)]
mod filter_publishing {
    use super::qcow2::testutil::{qemu_img, TmpDir};
    use super::*;
    use crate::event::{FileInfo, WriteInfo};

    fn write_ev(action: Action, off: i64, data: &[u8], ino: u64) -> Event {
        Event {
            action,
            file: Some(FileInfo {
                dev: 7,
                ino,
                ..Default::default()
            }),
            write: Some(WriteInfo {
                op: action.as_str().parse().unwrap(),
                offset: off,
                length: data.len() as u64,
                data: data.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Hooks fire before a write lands: a re-read during `snapshot -d`'s header write
    /// must see the new table through the captured bytes, not the old header on disk.
    #[test]
    fn header_reread_racing_the_write_sees_the_captured_bytes() {
        let d = TmpDir::new("race");
        let p = qcow2::testutil::image_with_snapshots(&d, "a.qcow2", &[]);
        let q = d.path("b.qcow2");
        std::fs::copy(&p, &q).unwrap();
        qemu_img(&["snapshot", "-d", "s2", &d.s("b.qcow2")]);
        let (old, mut new) = (std::fs::read(&p).unwrap(), std::fs::read(&q).unwrap());
        let flip = new[60..72].to_vec();
        assert_ne!(old[60..72], flip[..], "snapshot -d moved the table");
        let mut c = Classifier::new();
        c.classify(&write_ev(Action::Pwrite64, 1 << 20, &[0; 512], 1), Some(&p));
        // Everything qemu-img wrote except the header flip, which is still in flight.
        new[60..72].copy_from_slice(&old[60..72]);
        std::fs::write(&p, &new).unwrap();
        let cl = c
            .classify(&write_ev(Action::Pwrite64, 60, &flip, 1), Some(&p))
            .expect("classified");
        let ch: Vec<String> = cl
            .changes
            .iter()
            .map(|c| format!("{}: {} → {}", c.field, c.before, c.after))
            .collect();
        assert!(ch.contains(&"nb_snapshots: 2 → 1".to_string()), "{ch:?}");
        assert!(
            ch.iter().any(|c| c.starts_with("snapshot_removed: s2")),
            "{ch:?}"
        );
        // The flip lands: the shadow already holds it, so rewriting it changes nothing.
        new[60..72].copy_from_slice(&flip);
        std::fs::write(&p, &new).unwrap();
        let cl = c
            .classify(&write_ev(Action::Pwrite64, 60, &flip, 1), Some(&p))
            .expect("classified");
        assert!(cl.changes.is_empty(), "{:?}", cl.changes);
    }

    /// A table rewritten elsewhere without two snapshots, then the header flipped to it:
    /// the re-read names each hidden snapshot (not only the first of them).
    #[test]
    fn a_header_flip_to_a_shorter_table_names_every_snapshot_it_drops() {
        let d = TmpDir::new("flip");
        let p = qcow2::testutil::image_with_snapshots(&d, "a.qcow2", &[]);
        qemu_img(&["snapshot", "-c", "s3", &d.s("a.qcow2")]);
        let q = d.path("b.qcow2");
        std::fs::copy(&p, &q).unwrap();
        qemu_img(&["snapshot", "-d", "s1", &d.s("b.qcow2")]);
        qemu_img(&["snapshot", "-d", "s2", &d.s("b.qcow2")]);
        let mut c = Classifier::new();
        c.classify(&write_ev(Action::Pwrite64, 1 << 20, &[0; 512], 1), Some(&p));
        // Everything landed, the flip (count and table pointer, 12 bytes at 60) included.
        let new = std::fs::read(&q).unwrap();
        std::fs::write(&p, &new).unwrap();
        let cl = c
            .classify(&write_ev(Action::Pwrite64, 60, &new[60..72], 1), Some(&p))
            .expect("classified");
        let ch: Vec<String> = cl.changes.iter().map(ToString::to_string).collect();
        assert!(ch.contains(&"nb_snapshots: 3 → 1".to_string()), "{ch:?}");
        assert!(ch.contains(&"snapshot_removed: s1".to_string()), "{ch:?}");
        assert!(ch.contains(&"snapshot_removed: s2".to_string()), "{ch:?}");
    }

    /// Evidence needs the header as it was before the change an alert is about: kept with
    /// the changing event's sequence; a write that changes nothing keeps none.
    #[test]
    fn a_header_change_keeps_the_pre_image_of_its_own_event() {
        let d = TmpDir::new("preimage");
        let p = qcow2::testutil::image_with_snapshots(&d, "a.qcow2", &[]);
        let mut c = Classifier::new();
        c.classify(&write_ev(Action::Pwrite64, 1 << 20, &[0; 512], 1), Some(&p));
        assert!(c.pre_image(7, 1).is_none());
        let nb = c
            .qcow2_shadow(7, 1)
            .expect("shadow")
            .image
            .header
            .nb_snapshots;
        assert_eq!(nb, 2);
        let mut ev = write_ev(Action::Pwrite64, 60, &[0, 0, 0, 0], 1);
        ev.seq = 41;
        c.classify(&ev, Some(&p));
        let pre = c.pre_image(7, 1).expect("pre-image kept");
        assert_eq!(pre.seq, 41);
        assert_eq!(pre.shadow.image.header.nb_snapshots, 2);
        assert_eq!(pre.shadow.image.snapshots.len(), 2);
        assert_eq!(&pre.shadow.raw[60..64], &[0, 0, 0, 2]);
        assert_eq!(c.qcow2_shadow(7, 1).unwrap().image.header.nb_snapshots, 0);
        // The same bytes again: no change, the pre-image stays the one of event 41.
        let mut again = write_ev(Action::Pwrite64, 60, &[0, 0, 0, 0], 1);
        again.seq = 42;
        c.classify(&again, Some(&p));
        assert_eq!(c.pre_image(7, 1).unwrap().seq, 41);
        assert!(c.metadata_filter(7, 1).is_some_and(|f| f.count > 0));
    }

    #[test]
    fn qcow2_ranges_are_published_on_first_sight_moved_with_the_header_and_withdrawn() {
        let d = TmpDir::new("publish");
        let p = d.path("a.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", &d.s("a.qcow2"), "64M"]);
        let mut c = Classifier::new();
        // First write seen: published for QEMU with the header cluster in it.
        c.classify(&write_ev(Action::Pwrite64, 1 << 20, &[0; 512], 1), Some(&p));
        let u = c.take_filter_updates();
        assert_eq!(u.len(), 1, "{u:?}");
        let f = u[0].1.expect("published");
        assert_eq!(f.actors, filter_actor::QEMU);
        assert_eq!(f.ranges[0].start, 0);
        // Data again: nothing new. Same header bytes rewritten: nothing new either.
        c.classify(&write_ev(Action::Pwrite64, 2 << 20, &[0; 512], 1), Some(&p));
        assert!(c.take_filter_updates().is_empty());
        // QEMU adds a snapshot: the table appears, the header changes, ranges are re-published.
        qemu_img(&["snapshot", "-c", "s1", &d.s("a.qcow2")]);
        let head = std::fs::read(&p).unwrap()[..104].to_vec();
        c.classify(&write_ev(Action::Pwrite64, 0, &head, 1), Some(&p));
        let u = c.take_filter_updates();
        let g = u.last().and_then(|x| x.1).expect("re-published");
        assert!(g.count > f.count || g.ranges != f.ranges, "{f:?} → {g:?}");
        // Unlinked: withdrawn, so a reused inode number is never filtered by stale ranges.
        let mut un = write_ev(Action::Unlink, 0, &[], 1);
        un.write = None;
        c.classify(&un, Some(&p));
        let u = c.take_filter_updates();
        assert!(matches!(u.as_slice(), [(k, None)] if k.ino == 1), "{u:?}");
    }
}
