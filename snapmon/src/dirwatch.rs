//! Fanotify directory marks on the watched directories: a second route for names made in a
//! store through another name of it (a symlink, a bind mount, another mount namespace), where
//! no LSM hook sees namespace operations by the directory's identity (#14, side doors).
//!
//! The syscall route judges a rename's or mkdir's path at entry, by watched prefix or watched
//! last component; a new hidden name made through `/tmp/link-to-store` is neither. An inode
//! mark fires whatever path reached the directory. Its events become the namespace records
//! the pipeline already reads (a rename or mkdir on the store's own name, the actor's pid),
//! but only for a name the syscall route did not report: events are held briefly, the ring
//! buffer drained, and names the pipeline saw lately are dropped (`Recent`).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    ffi::CString,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use snapmon_common::{
    ns_flags, EventKind, FileKey, Header, NamespaceEvent, NsOp, COMM_LEN, PATH_LEN,
};

use crate::event::{Action, Event};

/// `FANOTIFY_METADATA_VERSION` of every kernel since 2.6.37.
const META_VERSION: u8 = 3;
/// `sizeof(struct fanotify_event_metadata)`.
const META_LEN: usize = 24;
/// `sizeof(struct fanotify_event_info_header)`.
const INFO_HDR_LEN: usize = 4;
/// `__kernel_fsid_t`, then `struct file_handle`'s two 32-bit fields.
const FID_FIXED_LEN: usize = 8 + 8;
/// `MAX_HANDLE_SZ`.
const MAX_HANDLE: usize = 128;

/// What the marks ask for: a name made (`FAN_CREATE`, a directory's with `FAN_ONDIR`) or
/// moved in (`FAN_MOVED_TO`).
const MARK_MASK: u64 = libc::FAN_CREATE | libc::FAN_MOVED_TO | libc::FAN_ONDIR;

/// How long an event waits for the syscall route's record of the same name (written at
/// syscall entry, so in the ring buffer before the fanotify event is read): the ring is
/// drained before a held event is judged.
pub const HOLD: Duration = Duration::from_millis(100);
/// Longest an event waits while the ring buffer is backlogged (a flood): then it is judged
/// anyway, a duplicate being better than a miss.
pub const HOLD_MAX: Duration = Duration::from_secs(1);
/// Most events held at once (as many as the kernel's default queue): past it, a flood of
/// names made in a store is counted as overflow rather than held without bound.
const MAX_HELD: usize = 16_384;
/// How long a name the pipeline saw covers fanotify events about it.
const RECENT_KEEP: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("fanotify record of {have} bytes is shorter than its {what} ({need} bytes)")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("fanotify metadata version {0}, not {META_VERSION}")]
    Version(u8),
    #[error("fanotify {what} length {len} is outside 4..={room}")]
    BadLength {
        what: &'static str,
        len: usize,
        room: usize,
    },
}

impl ParseError {
    /// Stable cause name for loss accounting.
    pub fn cause(&self) -> &'static str {
        match self {
            ParseError::Truncated { .. } => "dirwatch_truncated",
            ParseError::Version(_) => "dirwatch_version",
            ParseError::BadLength { .. } => "dirwatch_bad_length",
        }
    }
}

/// A directory by its file handle: what `FAN_REPORT_DFID_NAME` events name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DirId {
    pub handle_type: i32,
    pub handle: Vec<u8>,
}

/// One fanotify record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FanRecord {
    /// `FAN_Q_OVERFLOW`: the queue was full and events were dropped.
    Overflow,
    Event(FanEvent),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanEvent {
    pub mask: u64,
    /// The actor's process id (tgid), as the kernel saw it from the agent's namespace.
    pub pid: u32,
    /// The directory and the entry's name (None: no DFID_NAME record came).
    pub dir: Option<(DirId, Vec<u8>)>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads of the fanotify queue per loop turn (64 KiB each, about 900 events).
const READS_PER_TURN: usize = 8;

/// Held events made into records per loop turn (`take_due`).
pub const TAKE_PER_TURN: usize = 256;

/// The first record of `buf` and its length. Never panics on bad input.
pub fn parse_one(buf: &[u8]) -> Result<(FanRecord, usize), ParseError> {
    if buf.len() < META_LEN {
        return Err(ParseError::Truncated {
            what: "event metadata",
            need: META_LEN,
            have: buf.len(),
        });
    }
    let event_len = u32_at(buf, 0) as usize;
    if buf[4] != META_VERSION {
        return Err(ParseError::Version(buf[4]));
    }
    let meta_len = u16_at(buf, 6) as usize;
    if event_len > buf.len() {
        return Err(ParseError::Truncated {
            what: "event",
            need: event_len,
            have: buf.len(),
        });
    }
    if event_len < META_LEN || meta_len < META_LEN || meta_len > event_len {
        return Err(ParseError::BadLength {
            what: "event",
            len: event_len.min(meta_len),
            room: buf.len(),
        });
    }
    let mut mask = [0u8; 8];
    mask.copy_from_slice(&buf[8..16]);
    let mask = u64::from_ne_bytes(mask);
    if mask & libc::FAN_Q_OVERFLOW != 0 {
        return Ok((FanRecord::Overflow, event_len));
    }
    let pid = u32_at(buf, 20);
    let mut dir = None;
    let mut at = meta_len;
    while at < event_len {
        let rest = &buf[at..event_len];
        if rest.len() < INFO_HDR_LEN {
            return Err(ParseError::Truncated {
                what: "info header",
                need: INFO_HDR_LEN,
                have: rest.len(),
            });
        }
        let (kind, len) = (rest[0], u16_at(rest, 2) as usize);
        if len < INFO_HDR_LEN || len > rest.len() {
            return Err(ParseError::BadLength {
                what: "info record",
                len,
                room: rest.len(),
            });
        }
        if kind == libc::FAN_EVENT_INFO_TYPE_DFID_NAME {
            dir = Some(parse_dfid_name(&rest[..len])?);
        }
        at += len;
    }
    Ok((FanRecord::Event(FanEvent { mask, pid, dir }), event_len))
}

/// A `fanotify_event_info_fid` with its directory handle and the entry's name.
fn parse_dfid_name(rec: &[u8]) -> Result<(DirId, Vec<u8>), ParseError> {
    let fixed = INFO_HDR_LEN + FID_FIXED_LEN;
    if rec.len() < fixed {
        return Err(ParseError::Truncated {
            what: "fid record",
            need: fixed,
            have: rec.len(),
        });
    }
    let handle_bytes = u32_at(rec, INFO_HDR_LEN + 8) as usize;
    let handle_type = u32_at(rec, INFO_HDR_LEN + 12) as i32;
    let need = fixed.saturating_add(handle_bytes);
    if rec.len() < need || handle_bytes > MAX_HANDLE {
        return Err(ParseError::Truncated {
            what: "file handle",
            need,
            have: rec.len(),
        });
    }
    let handle = rec[fixed..need].to_vec();
    let name = crate::decode::cstr(&rec[need..], rec.len() - need).to_vec();
    Ok((
        DirId {
            handle_type,
            handle,
        },
        name,
    ))
}

/// Every record of one read; the rest of a buffer after a bad record is dropped with it.
pub fn parse_all(mut buf: &[u8]) -> Vec<Result<FanRecord, ParseError>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        match parse_one(buf) {
            Ok((r, n)) => {
                out.push(Ok(r));
                buf = &buf[n..];
            }
            Err(e) => {
                out.push(Err(e));
                break;
            }
        }
    }
    out
}

/// Most names `Recent` keeps, and most bytes of them: a rename flood by any user fills it
/// within the window. At the bound the oldest go first; a name gone early can only make a
/// fanotify event fed that the syscall route reported too (a duplicate), never one dropped.
const RECENT_MAX: usize = 16_384;
const RECENT_MAX_BYTES: usize = 4 << 20;

/// Names the pipeline saw made lately by mkdir or rename (the only events this route feeds):
/// a fanotify event about one of them was the syscall route's too.
#[derive(Default)]
pub struct Recent {
    /// Noting costs a hash insert per namespace event: only while the route is on.
    pub on: bool,
    /// Each name's newest note: when, and its number.
    names: HashMap<Vec<u8>, (Instant, u64)>,
    /// Notes oldest first (a name noted again is here twice; the older is passed over).
    order: VecDeque<(Vec<u8>, Instant, u64)>,
    bytes: usize,
    notes: u64,
    /// Names let go at the bound before their window ended.
    pub evicted: u64,
}

impl Recent {
    /// Note the name `ev` made, if by mkdir or rename (a flood of creates costs nothing).
    pub fn note(&mut self, ev: &Event, now: Instant) {
        if !self.on {
            return;
        }
        let made = match ev.action {
            Action::Mkdir => ev.file.as_ref(),
            Action::Rename => ev.target.as_ref(),
            _ => return,
        };
        if let Some(p) = made.and_then(|f| f.path.as_ref()) {
            self.insert(&p.0, now);
        }
    }

    fn insert(&mut self, name: &[u8], now: Instant) {
        self.notes += 1;
        self.names.insert(name.to_vec(), (now, self.notes));
        self.order.push_back((name.to_vec(), now, self.notes));
        self.bytes += name.len();
        // Expired notes first, then the oldest while past a bound.
        while let Some((_, t, _)) = self.order.front() {
            let expired = now.saturating_duration_since(*t) >= RECENT_KEEP;
            let over = self.order.len() > RECENT_MAX || self.bytes > RECENT_MAX_BYTES;
            if !expired && !over {
                break;
            }
            let Some((n, _, no)) = self.order.pop_front() else {
                break;
            };
            self.bytes -= n.len();
            // Only the name's newest note takes it out.
            if self.names.get(&n).is_some_and(|&(_, newest)| newest == no) {
                self.names.remove(&n);
                if !expired {
                    self.evicted += 1;
                }
            }
        }
    }

    /// Whether the pipeline saw `path` made within `RECENT_KEEP` of `now`.
    pub fn seen(&self, path: &[u8], now: Instant) -> bool {
        self.names
            .get(path)
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) < RECENT_KEEP)
    }

    /// Names kept.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// A fanotify event about a watched directory, waiting for the ring buffer's drain.
#[derive(Debug)]
struct Held {
    read_at: Instant,
    op: NsOp,
    /// The directory by identity: its path is looked up when the event is fed, so a
    /// directory renamed since it was marked is named as it is now.
    dir: FileKey,
    name: Vec<u8>,
    pid: u32,
    /// CLOCK_BOOTTIME when read, as near the operation as this route knows: the lineage
    /// names the process that ran then, also once it has exited.
    ts_ns: u64,
}

/// Counters for the `lost` record and the status line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DirWatchLoss {
    /// `FAN_Q_OVERFLOW` records (events the kernel dropped), and events dropped past
    /// `MAX_HELD`.
    pub overflow: u64,
    /// Records that did not parse (the rest of their read is dropped).
    pub parse_errors: u64,
    /// Directories that could not be marked.
    pub mark_failed: u64,
    /// Reads of the fanotify fd that failed (not EAGAIN): what they held is gone.
    pub read_errors: u64,
    /// Where the overflow was, as far as this route knows: the directories the events read
    /// last before a `FAN_Q_OVERFLOW` were about (the flood's, not surely the hidden
    /// name's: any marked directory may have lost events), and those of events dropped past
    /// `MAX_HELD`. At most `MAX_UNHEARD`.
    pub unheard: Vec<Unheard>,
}

impl DirWatchLoss {
    /// Namespace events about watched directories were lost (SM-A001).
    pub fn blinding(&self) -> bool {
        self.overflow > 0
    }

    fn unheard(&mut self, u: Unheard) {
        if let Some(have) = self.unheard.iter_mut().find(|h| h.dir == u.dir) {
            *have = u;
        } else if self.unheard.len() < MAX_UNHEARD {
            self.unheard.push(u);
        }
    }
}

/// Most directories one loss names.
const MAX_UNHEARD: usize = 8;

/// A directory whose namespace events were lost, and the last actor seen there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unheard {
    pub dir: FileKey,
    pub pid: u32,
    /// CLOCK_BOOTTIME when that actor's event was read.
    pub ts_ns: u64,
}

/// The fanotify group, its marks and the events waiting to be judged.
pub struct DirWatch {
    fd: OwnedFd,
    /// Marked directories by handle.
    dirs: HashMap<DirId, FileKey>,
    /// Watched directories already marked (or tried: None), with their handle.
    marked: HashMap<FileKey, Option<DirId>>,
    held: VecDeque<Held>,
    buf: Vec<u8>,
    loss: DirWatchLoss,
    /// The directories of the events read since the queue was last empty (any kind, at most
    /// `MAX_UNHEARD`, newest last), with their actor: what an overflow record names.
    last_dirs: VecDeque<Unheard>,
    /// Events whose name the syscall route had reported (not fed again).
    pub duplicates: u64,
    /// Events fed into the pipeline.
    pub fed: u64,
}

impl DirWatch {
    /// A notification-only group reporting the directory's handle and the entry's name.
    pub fn new() -> std::io::Result<DirWatch> {
        let flags = libc::FAN_CLASS_NOTIF
            | libc::FAN_REPORT_DFID_NAME
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK;
        // SAFETY: fanotify_init takes two flag words and returns a new fd or -1.
        let fd = unsafe { libc::fanotify_init(flags, libc::O_RDONLY as libc::c_uint) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(DirWatch {
            fd,
            dirs: HashMap::new(),
            marked: HashMap::new(),
            held: VecDeque::new(),
            buf: vec![0; 64 * 1024],
            loss: DirWatchLoss::default(),
            last_dirs: VecDeque::new(),
            duplicates: 0,
            fed: 0,
        })
    }

    /// A group on `fd` (a test's stand-in) with `dirs` marked.
    #[cfg(test)]
    fn on(fd: OwnedFd, dirs: &[(DirId, FileKey)]) -> DirWatch {
        DirWatch {
            fd,
            dirs: dirs.iter().cloned().collect(),
            marked: dirs.iter().map(|(id, k)| (*k, Some(id.clone()))).collect(),
            held: VecDeque::new(),
            buf: vec![0; 64 * 1024],
            loss: DirWatchLoss::default(),
            last_dirs: VecDeque::new(),
            duplicates: 0,
            fed: 0,
        }
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd as _;
        self.fd.as_fd()
    }

    /// Directories marked.
    pub fn marked(&self) -> usize {
        self.dirs.len()
    }

    /// Mark the watched directories not marked yet: at start, then as the watch set grows.
    /// Without `full`, only a change in their number is looked for (one comparison, run
    /// after every drain pass); `full` (each status tick) compares them one by one.
    pub fn sync(
        &mut self,
        dirs: &HashSet<FileKey>,
        path_of: impl Fn(&FileKey) -> Option<PathBuf>,
        full: bool,
    ) {
        if dirs.len() == self.marked.len()
            && (!full || dirs.iter().all(|k| self.marked.contains_key(k)))
        {
            return;
        }
        // Gone from the watch set: the kernel dropped the mark with the inode, or it stays
        // and its events name a directory no longer known (not fed).
        let dirs_by_handle = &mut self.dirs;
        self.marked.retain(|k, id| {
            let keep = dirs.contains(k);
            if let (false, Some(id)) = (keep, id) {
                dirs_by_handle.remove(id);
            }
            keep
        });
        for k in dirs {
            if self.marked.contains_key(k) {
                continue;
            }
            let id = path_of(k).and_then(|p| match mark(&self.fd, &p, k.ino) {
                Ok(id) => Some(id),
                Err(_) => {
                    self.loss.mark_failed += 1;
                    None
                }
            });
            if let Some(id) = &id {
                self.dirs.insert(id.clone(), *k);
            }
            self.marked.insert(*k, id);
        }
    }

    /// Read what is queued (the fd is non-blocking): relevant events are held. At most
    /// `READS_PER_TURN` reads, so a flood of creates in a store does not hold the event
    /// loop: true when it stopped there, with more perhaps queued.
    pub fn read(&mut self, now: Instant) -> bool {
        for _ in 0..READS_PER_TURN {
            // SAFETY: reads into our own buffer, at most its length.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                )
            };
            let n = match usize::try_from(n) {
                Ok(0) => {
                    self.last_dirs.clear();
                    return false;
                }
                Ok(n) => n,
                Err(_) => {
                    let e = std::io::Error::last_os_error();
                    match e.kind() {
                        // Emptied: a later overflow comes after a full queue of events read
                        // from now on, so the directories seen so far are not its.
                        std::io::ErrorKind::WouldBlock => self.last_dirs.clear(),
                        std::io::ErrorKind::Interrupted => continue,
                        // Counted, and the loop goes on: the next readiness tries again.
                        _ => self.loss.read_errors += 1,
                    }
                    return false;
                }
            };
            let buf = std::mem::take(&mut self.buf);
            self.absorb(&buf[..n], now);
            self.buf = buf;
        }
        true
    }

    /// The records of one read.
    fn absorb(&mut self, buf: &[u8], now: Instant) {
        for r in parse_all(buf) {
            match r {
                Ok(FanRecord::Overflow) => {
                    self.loss.overflow += 1;
                    for u in self.last_dirs.clone() {
                        self.loss.unheard(u);
                    }
                }
                Ok(FanRecord::Event(e)) => self.hold(e, now),
                Err(_) => self.loss.parse_errors += 1,
            }
        }
    }

    fn hold(&mut self, e: FanEvent, now: Instant) {
        let Some((id, name)) = e.dir else { return };
        let Some(&dir) = self.dirs.get(&id) else {
            return;
        };
        let seen = Unheard {
            dir,
            pid: e.pid,
            ts_ns: crate::lineage::boottime_ns(),
        };
        // A file's create too: a flood of them is what fills the queue.
        if let Some(i) = self.last_dirs.iter().position(|u| u.dir == dir) {
            self.last_dirs.remove(i);
        } else if self.last_dirs.len() >= MAX_UNHEARD {
            self.last_dirs.pop_front();
        }
        self.last_dirs.push_back(seen.clone());
        let op = if e.mask & libc::FAN_MOVED_TO != 0 {
            NsOp::Rename
        } else if e.mask & libc::FAN_CREATE != 0 && e.mask & libc::FAN_ONDIR != 0 {
            NsOp::Mkdir
        } else {
            // A file's create: the open hook judges it by its directory's identity.
            return;
        };
        if name.is_empty() || name.contains(&b'/') {
            return;
        }
        if self.held.len() >= MAX_HELD {
            self.loss.overflow += 1;
            self.loss.unheard(seen);
            return;
        }
        self.held.push_back(Held {
            read_at: now,
            op,
            dir,
            name,
            pid: e.pid,
            ts_ns: crate::lineage::boottime_ns(),
        });
    }

    /// When the oldest held event is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.held.front().map(|h| h.read_at + HOLD)
    }

    /// Whether the oldest held event has waited `HOLD_MAX`.
    pub fn overdue(&self, now: Instant) -> bool {
        self.held
            .front()
            .is_some_and(|h| now.duration_since(h.read_at) >= HOLD_MAX)
    }

    /// Namespace records for up to `max` of the events due, less those whose name the
    /// pipeline saw, each on its directory's watched path (`path_of`) as it is now. Each
    /// record reads the actor from /proc: the loop takes `TAKE_PER_TURN` at a time, so a
    /// flood of renames does not keep it from the ring buffers.
    pub fn take_due(
        &mut self,
        now: Instant,
        max: usize,
        recent: &Recent,
        path_of: impl Fn(&FileKey) -> Option<PathBuf>,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while out.len() < max
            && self
                .held
                .front()
                .is_some_and(|h| now.saturating_duration_since(h.read_at) >= HOLD)
        {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            let Some(dir) = path_of(&h.dir) else { continue };
            let path = dir.join(std::ffi::OsStr::from_bytes(&h.name));
            if recent.seen(path.as_os_str().as_bytes(), now) {
                self.duplicates += 1;
                continue;
            }
            self.fed += 1;
            // The actor from /proc only now: most events are duplicates, dropped above.
            out.push(record(h.op, &path, header_of(h.pid, h.ts_ns)));
        }
        out
    }

    /// Whether events were lost since the last `take_loss` (an overflow): said within the
    /// loop's blind check, not at the next status tick.
    pub fn blinded(&self) -> bool {
        self.loss.blinding()
    }

    /// What was lost since the last call (None: nothing).
    pub fn take_loss(&mut self) -> Option<DirWatchLoss> {
        let l = std::mem::take(&mut self.loss);
        (l != DirWatchLoss::default()).then_some(l)
    }
}

/// The route where it is needed: not where the LSM hooks observe namespace operations by
/// the directory's identity already (`lsm_observes`). With the words for `started`/`doctor`.
pub fn route(lsm_observes: bool) -> (Option<DirWatch>, String) {
    if lsm_observes {
        return (
            None,
            "off: the LSM hooks see namespace operations by directory identity".into(),
        );
    }
    match DirWatch::new() {
        Ok(d) => (Some(d), "fanotify".into()),
        Err(e) => (
            None,
            format!("off: fanotify_init: {e} (names made through a symlink or bind mount of a store by rename or mkdir go unseen)"),
        ),
    }
}

/// `route`'s words once the marks are placed.
pub fn describe(d: &Option<DirWatch>, off: &str) -> String {
    match d {
        Some(d) => format!("fanotify ({} directories marked)", d.marked()),
        None => off.to_string(),
    }
}

/// Put a mark on the directory at `p` (opened once, so the handle and the mark are the same
/// inode, checked to be `ino`) and return its handle.
fn mark(fan: &OwnedFd, p: &Path, ino: u64) -> std::io::Result<DirId> {
    use std::os::unix::fs::MetadataExt as _;
    let dir = std::fs::File::open(p)?;
    if dir.metadata()?.ino() != ino {
        return Err(std::io::Error::other("replaced since it was watched"));
    }
    // struct file_handle: handle_bytes, handle_type, then the handle.
    let mut h = [0u32; 2 + MAX_HANDLE / 4];
    h[0] = MAX_HANDLE as u32;
    let mut mount_id: libc::c_int = 0;
    let empty = CString::default();
    // SAFETY: `h` is a file_handle with room for MAX_HANDLE bytes (as handle_bytes says);
    // AT_EMPTY_PATH names the open directory itself.
    let r = unsafe {
        libc::name_to_handle_at(
            dir.as_raw_fd(),
            empty.as_ptr(),
            h.as_mut_ptr().cast(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let len = (h[0] as usize).min(MAX_HANDLE);
    let bytes: Vec<u8> = h[2..]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .take(len)
        .collect();
    // SAFETY: plain syscall on two valid fds; a NULL path with a dirfd marks that inode.
    let r = unsafe {
        libc::fanotify_mark(
            fan.as_raw_fd(),
            libc::FAN_MARK_ADD,
            MARK_MASK,
            dir.as_raw_fd(),
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(DirId {
        handle_type: h[1] as i32,
        handle: bytes,
    })
}

/// The actor as /proc says while it lives (it may be gone; the lineage knows it then).
pub(crate) fn header_of(pid: u32, ts_ns: u64) -> Header {
    let mut h = Header {
        kind: EventKind::Namespace as u32,
        backend: snapmon_common::Backend::Tracepoint as u32,
        ts_ns,
        pid,
        tgid: pid,
        uid: 0,
        gid: 0,
        comm: [0; COMM_LEN],
    };
    if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        let id = |key: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        };
        h.uid = id("Uid:").unwrap_or(0);
        h.gid = id("Gid:").unwrap_or(0);
    }
    if let Ok(c) = std::fs::read(format!("/proc/{pid}/comm")) {
        let c = c.strip_suffix(b"\n").unwrap_or(&c);
        let n = c.len().min(COMM_LEN - 1);
        h.comm[..n].copy_from_slice(&c[..n]);
    }
    h
}

/// The namespace record the syscall route would have written for `op` on `path` (absolute,
/// the store's own name): a mkdir's path1, a rename's path2 (its source is not known here).
pub fn record(op: NsOp, path: &Path, hdr: Header) -> Vec<u8> {
    // SAFETY: NamespaceEvent is plain data; all zeroes is a valid value.
    let mut n: NamespaceEvent = unsafe { std::mem::zeroed() };
    n.hdr = hdr;
    n.op = op as u16;
    n.flags = ns_flags::VIA_FANOTIFY;
    (n.dirfd, n.dirfd2) = (libc::AT_FDCWD, libc::AT_FDCWD);
    let b = path.as_os_str().as_bytes();
    let (buf, len, flag) = match op {
        NsOp::Rename => (&mut n.path2, &mut n.path2_len, ns_flags::PATH2_MATCH),
        _ => (&mut n.path1, &mut n.path1_len, ns_flags::ABS_PREFIX_MATCH),
    };
    n.flags |= flag;
    let keep = b.len().min(PATH_LEN - 1);
    buf[..keep].copy_from_slice(&b[..keep]);
    *len = b.len().min(u16::MAX as usize) as u16;
    if keep < b.len() {
        n.flags |= if op == NsOp::Rename {
            ns_flags::PATH2_TRUNCATED
        } else {
            ns_flags::PATH1_TRUNCATED
        };
    }
    // SAFETY: a view of the plain-data struct's bytes, copied out.
    unsafe {
        std::slice::from_raw_parts(
            (&n as *const NamespaceEvent).cast::<u8>(),
            size_of::<NamespaceEvent>(),
        )
    }
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DFID_NAME event as the kernel writes it: metadata, then one fid record (fsid, a
    /// file handle, the name NUL-terminated and padded to 4).
    fn event(mask: u64, pid: u32, handle: &[u8], name: &[u8]) -> Vec<u8> {
        let mut info = vec![libc::FAN_EVENT_INFO_TYPE_DFID_NAME, 0, 0, 0];
        info.extend_from_slice(&[7, 0, 0, 0, 9, 0, 0, 0]); // fsid
        info.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        info.extend_from_slice(&1i32.to_ne_bytes());
        info.extend_from_slice(handle);
        info.extend_from_slice(name);
        info.push(0);
        while info.len() % 4 != 0 {
            info.push(0);
        }
        let ilen = info.len() as u16;
        info[2..4].copy_from_slice(&ilen.to_ne_bytes());
        let mut m = Vec::new();
        m.extend_from_slice(&((META_LEN + info.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&[META_VERSION, 0]);
        m.extend_from_slice(&(META_LEN as u16).to_ne_bytes());
        m.extend_from_slice(&mask.to_ne_bytes());
        m.extend_from_slice(&(-1i32).to_ne_bytes());
        m.extend_from_slice(&pid.to_ne_bytes());
        m.extend_from_slice(&info);
        m
    }

    #[test]
    fn parses_a_rename_in_with_its_directory_handle_and_name() {
        let b = event(
            libc::FAN_MOVED_TO,
            4242,
            &[1, 2, 3, 4, 5, 6, 7, 8],
            b".hidden",
        );
        let (r, n) = parse_one(&b).unwrap();
        assert_eq!(n, b.len());
        let FanRecord::Event(e) = r else {
            panic!("{r:?}")
        };
        assert_eq!((e.mask, e.pid), (libc::FAN_MOVED_TO, 4242));
        let (id, name) = e.dir.unwrap();
        assert_eq!(id.handle, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(id.handle_type, 1);
        assert_eq!(name, b".hidden");
    }

    #[test]
    fn every_cut_is_a_typed_error_and_never_a_panic() {
        let b = event(libc::FAN_CREATE | libc::FAN_ONDIR, 7, &[9; 12], b".dir");
        for cut in 0..b.len() {
            let err = parse_one(&b[..cut]).unwrap_err();
            let what = if cut < META_LEN {
                "event metadata"
            } else {
                "event"
            };
            assert!(
                matches!(err, ParseError::Truncated { what: w, have, .. } if w == what && have == cut),
                "cut at {cut}: {err:?}"
            );
        }
        // The event's own length shortened at every point: the records inside it are cut.
        for cut in META_LEN + 1..b.len() {
            let mut c = b[..cut].to_vec();
            c[..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            let _ = parse_one(&c); // an error or a shorter name, never a panic
        }
        let mut c = b.clone();
        c[..4].copy_from_slice(&((META_LEN + 2) as u32).to_ne_bytes());
        assert!(matches!(
            parse_one(&c[..META_LEN + 2]),
            Err(ParseError::Truncated {
                what: "info header",
                ..
            })
        ));
    }

    #[test]
    fn bad_lengths_versions_and_handles_are_typed_errors() {
        let b = event(libc::FAN_MOVED_TO, 1, &[1; 8], b"x");
        let mut v = b.clone();
        v[4] = 2;
        assert_eq!(parse_one(&v).unwrap_err(), ParseError::Version(2));
        let mut l = b.clone();
        l[..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(matches!(parse_one(&l), Err(ParseError::BadLength { .. })));
        // An info record longer than its event.
        let mut i = b.clone();
        i[META_LEN + 2..META_LEN + 4].copy_from_slice(&999u16.to_ne_bytes());
        assert!(matches!(
            parse_one(&i),
            Err(ParseError::BadLength {
                what: "info record",
                ..
            })
        ));
        // A handle longer than its record.
        let mut h = b.clone();
        h[META_LEN + 12..META_LEN + 16].copy_from_slice(&200u32.to_ne_bytes());
        assert!(matches!(
            parse_one(&h),
            Err(ParseError::Truncated {
                what: "file handle",
                ..
            })
        ));
    }

    #[test]
    fn an_overflow_and_several_events_in_one_read() {
        let mut o = vec![0u8; META_LEN];
        o[..4].copy_from_slice(&(META_LEN as u32).to_ne_bytes());
        o[4] = META_VERSION;
        o[6..8].copy_from_slice(&(META_LEN as u16).to_ne_bytes());
        o[8..16].copy_from_slice(&libc::FAN_Q_OVERFLOW.to_ne_bytes());
        let mut all = o.clone();
        all.extend(event(libc::FAN_MOVED_TO, 5, &[2; 8], b"a"));
        all.extend(event(libc::FAN_CREATE | libc::FAN_ONDIR, 6, &[3; 8], b"b"));
        let r = parse_all(&all);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0], Ok(FanRecord::Overflow));
        assert!(matches!(&r[2], Ok(FanRecord::Event(e)) if e.pid == 6));
        // A bad record ends the read: what follows it is not guessed at.
        let mut bad = all.clone();
        bad[META_LEN + 4] = 9;
        let r = parse_all(&bad);
        assert_eq!(r.len(), 2);
        assert!(r[1].is_err());
    }

    #[test]
    fn records_decode_as_the_namespace_records_the_pipeline_reads() {
        let h = header_of(std::process::id(), crate::lineage::boottime_ns());
        let raw = record(NsOp::Rename, Path::new("/s/.x"), h);
        let Ok(crate::decode::RawEvent::Namespace(n)) = crate::decode::decode(&raw) else {
            panic!("not a namespace record")
        };
        assert_eq!(n.op, NsOp::Rename as u16);
        assert_eq!(n.path1_len, 0);
        assert_eq!(
            crate::decode::cstr(&n.path2, n.path2_len as usize),
            b"/s/.x"
        );
        assert_ne!(n.flags & ns_flags::VIA_FANOTIFY, 0);
        assert_eq!(n.hdr.tgid, std::process::id());
        let raw = record(NsOp::Mkdir, Path::new("/s/.d"), h);
        let Ok(crate::decode::RawEvent::Namespace(n)) = crate::decode::decode(&raw) else {
            panic!("not a namespace record")
        };
        assert_eq!(
            crate::decode::cstr(&n.path1, n.path1_len as usize),
            b"/s/.d"
        );
        // A name longer than the record holds is marked cut, with its whole length.
        let long = format!("/s/{}", "a".repeat(400));
        let raw = record(NsOp::Mkdir, Path::new(&long), h);
        let Ok(crate::decode::RawEvent::Namespace(n)) = crate::decode::decode(&raw) else {
            panic!("not a namespace record")
        };
        assert_ne!(n.flags & ns_flags::PATH1_TRUNCATED, 0);
        assert_eq!(n.path1_len as usize, long.len());
    }

    #[test]
    fn a_name_the_pipeline_saw_lately_is_not_fed_twice() {
        let now = Instant::now();
        let mut r = recent_on();
        r.note(&rename_to(b"/s/.x"), now);
        assert!(r.seen(b"/s/.x", now + Duration::from_millis(200)));
        assert!(!r.seen(b"/s/.y", now));
        assert!(!r.seen(b"/s/.x", now + RECENT_KEEP));
        // A create is the open hook's, judged by its directory: not this route's to feed.
        let w = Event {
            action: Action::Create,
            file: Some(crate::event::FileInfo {
                path: Some(crate::event::Bytes(b"/s/img".to_vec())),
                ..Default::default()
            }),
            ..Default::default()
        };
        r.note(&w, now);
        assert!(!r.seen(b"/s/img", now));
    }

    fn overflow_record() -> Vec<u8> {
        let mut o = vec![0u8; META_LEN];
        o[..4].copy_from_slice(&(META_LEN as u32).to_ne_bytes());
        o[4] = META_VERSION;
        o[6..8].copy_from_slice(&(META_LEN as u16).to_ne_bytes());
        o[8..16].copy_from_slice(&libc::FAN_Q_OVERFLOW.to_ne_bytes());
        o
    }

    fn null_fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    fn dir(n: u8) -> (DirId, FileKey) {
        (
            DirId {
                handle_type: 1,
                handle: vec![n; 8],
            },
            FileKey {
                dev: 1,
                ino: n as u64,
                ..Default::default()
            },
        )
    }

    /// A flood of file creates in one marked directory fills the kernel's queue: the
    /// overflow is a blinding (SM-A001) naming that directory and the flooder, not only a
    /// count in `lost`.
    #[test]
    fn an_overflow_is_a_blinding_naming_the_flooded_directory() {
        let (a, b) = (dir(1), dir(2));
        let mut d = DirWatch::on(null_fd(), &[a.clone(), b.clone()]);
        let now = Instant::now();
        let mut buf = event(libc::FAN_CREATE, 70, &a.0.handle, b"junk1");
        buf.extend(event(libc::FAN_CREATE, 77, &a.0.handle, b"junk2"));
        d.absorb(&buf, now);
        // Nothing lost yet: no blinding.
        assert!(!d.blinded());
        assert!(d.take_loss().is_none());
        d.absorb(&overflow_record(), now);
        assert!(d.blinded());
        let l = d.take_loss().unwrap();
        assert!(l.blinding());
        assert_eq!(l.overflow, 1);
        assert_eq!(
            l.unheard.iter().map(|u| (u.dir, u.pid)).collect::<Vec<_>>(),
            [(a.1, 77)]
        );
        // Said once: the next check starts afresh.
        assert!(!d.blinded());
        // Events read before the queue was last emptied are not a later overflow's.
        d.absorb(&event(libc::FAN_CREATE, 70, &a.0.handle, b"junk3"), now);
        assert!(!d.read(now));
        d.absorb(&event(libc::FAN_CREATE, 80, &b.0.handle, b"junk4"), now);
        d.absorb(&overflow_record(), now);
        let l = d.take_loss().unwrap();
        assert_eq!(
            l.unheard.iter().map(|u| (u.dir, u.pid)).collect::<Vec<_>>(),
            [(b.1, 80)]
        );
        // An overflow with no event read before it still says so, naming no directory.
        let mut fresh = DirWatch::on(null_fd(), std::slice::from_ref(&b));
        fresh.absorb(&overflow_record(), now);
        let l = fresh.take_loss().unwrap();
        assert!(l.blinding() && l.unheard.is_empty());
    }

    /// Past `MAX_HELD` the agent drops renames-in itself: the same blinding, naming where.
    #[test]
    fn events_dropped_past_the_hold_are_a_blinding_naming_their_directory() {
        let a = dir(3);
        let mut d = DirWatch::on(null_fd(), std::slice::from_ref(&a));
        let now = Instant::now();
        for i in 0..MAX_HELD {
            d.hold(
                FanEvent {
                    mask: libc::FAN_MOVED_TO,
                    pid: 5,
                    dir: Some((a.0.clone(), format!(".n{i}").into_bytes())),
                },
                now,
            );
        }
        assert!(!d.blinded());
        d.hold(
            FanEvent {
                mask: libc::FAN_MOVED_TO,
                pid: 6,
                dir: Some((a.0.clone(), b".hidden".to_vec())),
            },
            now,
        );
        let l = d.take_loss().unwrap();
        assert_eq!(l.overflow, 1);
        assert_eq!(l.unheard.len(), 1);
        assert_eq!((l.unheard[0].dir, l.unheard[0].pid), (a.1, 6));
    }

    /// A read that fails (here EISDIR) is counted and ends the turn; the loop goes on.
    #[test]
    fn a_failed_read_is_counted_not_fatal() {
        let dirfd: OwnedFd = std::fs::File::open("/").unwrap().into();
        let mut d = DirWatch::on(dirfd, &[]);
        assert!(!d.read(Instant::now()));
        assert!(!d.read(Instant::now()));
        let l = d.take_loss().unwrap();
        assert_eq!(l.read_errors, 2);
        assert!(!l.blinding());
        // EOF or EAGAIN is no error.
        let mut d = DirWatch::on(null_fd(), &[]);
        assert!(!d.read(Instant::now()));
        assert!(d.take_loss().is_none());
    }

    /// A `Recent` that notes, as the pipeline's is where the route runs.
    fn recent_on() -> Recent {
        Recent {
            on: true,
            ..Default::default()
        }
    }

    fn rename_to(p: &[u8]) -> Event {
        Event {
            action: Action::Rename,
            target: Some(crate::event::FileInfo {
                path: Some(crate::event::Bytes(p.to_vec())),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A rename flood cannot grow `Recent` past its bound: the oldest go first, the newest
    /// (those whose fanotify events are still held) stay, and a name noted again is kept by
    /// its newest note.
    #[test]
    fn recent_is_bounded_and_lets_the_oldest_go() {
        let now = Instant::now();
        let mut r = recent_on();
        r.note(&rename_to(b"/s/.kept"), now);
        for i in 0..RECENT_MAX + 100 {
            if i == RECENT_MAX / 2 {
                // Noted again half way: its first note's eviction must not take it.
                r.note(&rename_to(b"/s/.kept"), now);
            }
            r.note(&rename_to(format!("/s/junk{i}").as_bytes()), now);
        }
        assert_eq!(r.len(), RECENT_MAX);
        assert!(r.order.len() <= RECENT_MAX);
        assert!(!r.seen(b"/s/junk0", now));
        assert!(r.seen(format!("/s/junk{}", RECENT_MAX + 99).as_bytes(), now));
        assert!(r.seen(b"/s/.kept", now));
        assert!(r.evicted > 0);
        // Bytes bound too: long names keep fewer.
        let mut r = recent_on();
        let long = "x".repeat(4000);
        for i in 0..2000 {
            r.note(&rename_to(format!("/s/{i}{long}").as_bytes()), now);
        }
        assert!(r.bytes <= RECENT_MAX_BYTES, "{}", r.bytes);
        assert!(r.len() < 2000);
        // Expired notes go as new ones come, whatever the bound.
        r.note(&rename_to(b"/s/late"), now + RECENT_KEEP);
        assert_eq!(r.len(), 1);
        assert_eq!(r.bytes, b"/s/late".len());
    }

    /// At the bound a name let go early makes the fanotify event about it fed (a duplicate
    /// of the syscall route's record), never dropped: eviction can't hide a name.
    #[test]
    fn an_evicted_name_is_fed_not_dropped() {
        let a = dir(4);
        let mut d = DirWatch::on(null_fd(), std::slice::from_ref(&a));
        let now = Instant::now();
        let mut r = recent_on();
        r.note(&rename_to(b"/s/.x"), now);
        d.hold(
            FanEvent {
                mask: libc::FAN_MOVED_TO,
                pid: 9,
                dir: Some((a.0.clone(), b".x".to_vec())),
            },
            now,
        );
        for i in 0..RECENT_MAX {
            r.note(&rename_to(format!("/s/j{i}").as_bytes()), now);
        }
        let out = d.take_due(now + HOLD, usize::MAX, &r, |_| Some(PathBuf::from("/s")));
        assert_eq!(out.len(), 1);
        assert_eq!((d.fed, d.duplicates), (1, 0));
    }

    /// A flood's worth of due renames is taken `max` at a time, oldest first, the rest
    /// left held: each record reads /proc, and the loop must get back to the ring buffers.
    #[test]
    fn due_events_are_taken_at_most_max_at_a_time() {
        let a = dir(4);
        let mut d = DirWatch::on(null_fd(), std::slice::from_ref(&a));
        let now = Instant::now();
        let r = Recent::default();
        for i in 0..1000 {
            let ev = FanEvent {
                mask: libc::FAN_MOVED_TO,
                pid: 9,
                dir: Some((a.0.clone(), format!("n{i}").into_bytes())),
            };
            d.hold(ev, now);
        }
        let path = |_: &FileKey| Some(PathBuf::from("/s"));
        let first = d.take_due(now + HOLD, TAKE_PER_TURN, &r, path);
        assert_eq!(first.len(), TAKE_PER_TURN);
        assert_eq!(d.held.len(), 1000 - TAKE_PER_TURN);
        assert!(first[0].windows(5).any(|w| w == b"/s/n0"));
        let mut n = first.len();
        while !d.held.is_empty() {
            n += d.take_due(now + HOLD, TAKE_PER_TURN, &r, path).len();
        }
        assert_eq!((n, d.fed), (1000, 1000));
    }
}
