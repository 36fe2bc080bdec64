//! Classify stage, timing: the hooks fire at syscall entry, before bytes or names land, so
//! some events are judged only once the file shows what the syscall did ([`Hold`]), and
//! some files are looked at again later ([`Recheck`]): content written through a shared
//! mapping, or filled by a writer that was slower than the first look.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::event::{Action, Bytes, Event};

/// How often a held event's readiness is tested.
pub const HOLD_STEP: Duration = Duration::from_millis(2);
/// A write whose landing cannot be seen in the file (its captured bytes equal what was
/// there) is judged this long after it was handled: a syscall that started before the
/// event reached the agent has finished by then unless the writer was preempted inside it.
pub const LAND_DELAY: Duration = Duration::from_millis(10);
/// The longest any event is held: judged then, landed or not (a failed syscall never lands).
pub const HOLD_MAX: Duration = Duration::from_millis(60);
/// Held events at most; beyond that the oldest is judged at once.
pub const MAX_HELD: usize = 1024;

/// File identity as the classifier keys it: (kernel dev, inode).
pub type Key = (u32, u64);

/// Why an event is held, and what tells that the syscall has taken effect.
#[derive(Debug, Clone)]
pub enum HoldKind {
    /// A qcow2 header write longer than the bytes the hook captured: the fields beyond
    /// them (the backing file name, extensions) are read from the file once it landed.
    HeaderTail {
        key: Key,
        path: PathBuf,
        off: u64,
        data: Vec<u8>,
        /// The captured bytes equal the shadow's: landing is not visible in them.
        same_as_before: bool,
    },
    /// Bytes put into the first cluster of a file not known to be an image (or one whose
    /// image header did not load yet): sniffed again once they landed.
    Sniff {
        key: Key,
        path: PathBuf,
        off: u64,
        data: Vec<u8>,
    },
    /// A rename or link into a store: judged by what it put at the target.
    Replace(Pending),
}

/// A rename or link whose effect is judged once it is visible at the target.
#[derive(Debug, Clone)]
pub struct Pending {
    pub target: PathBuf,
    pub source: Option<PathBuf>,
    /// Identity that held the target's name before (from the path table), if any.
    pub replaced: Option<Key>,
    /// Identity of the source, when the agent knew it.
    pub source_key: Option<Key>,
    pub link: bool,
}

fn key_of_info(f: Option<&crate::event::FileInfo>) -> Option<Key> {
    f.filter(|f| f.ino != 0).map(|f| (f.dev, f.ino))
}

impl Pending {
    /// A rename or link with a target path; `None` for everything else.
    pub fn from_event(ev: &Event) -> Option<Pending> {
        let link = match ev.action {
            Action::Rename => false,
            Action::Link => true,
            _ => return None,
        };
        let target = ev.target.as_ref()?.path.as_ref()?.as_path();
        let source = ev
            .file
            .as_ref()
            .and_then(|f| f.path.as_ref())
            .map(Bytes::as_path);
        if source.as_deref() == Some(target.as_path()) || !target.is_absolute() {
            return None;
        }
        let replaced = key_of_info(ev.target.as_ref());
        let source_key = key_of_info(ev.file.as_ref());
        Some(Pending {
            target,
            source,
            // A rename of a file onto another name of itself changes nothing.
            replaced: replaced.filter(|r| Some(*r) != source_key),
            source_key,
            link,
        })
    }

    pub fn keys(&self) -> Vec<Key> {
        self.replaced.into_iter().chain(self.source_key).collect()
    }

    /// The identity at the target once the rename or link took effect; `None` before.
    pub fn located(&self) -> Option<Key> {
        let md = std::fs::symlink_metadata(&self.target).ok()?;
        let k = crate::paths::key_for(&self.target, &md);
        let k = (k.dev, k.ino);
        if let Some(s) = self.source_key {
            return (k == s).then_some(k);
        }
        if let Some(r) = self.replaced {
            return (k != r).then_some(k);
        }
        // Nothing known about either side: a link took effect when the name exists, a
        // rename when the source name is gone as well.
        let source_gone = self
            .source
            .as_ref()
            .is_none_or(|s| std::fs::symlink_metadata(s).is_err());
        (self.link || source_gone).then_some(k)
    }
}

/// An event the classifier judges later.
#[derive(Debug, Clone)]
pub struct Hold {
    pub kind: HoldKind,
    pub since: Instant,
    pub next_check: Instant,
    pub deadline: Instant,
}

impl Hold {
    pub fn new(kind: HoldKind, now: Instant) -> Hold {
        Hold {
            kind,
            since: now,
            next_check: now + HOLD_STEP / 2,
            deadline: now + HOLD_MAX,
        }
    }

    /// Identities this hold is about: a later event on one of them must not be judged
    /// before it (it would diff against a shadow the held event has not updated yet).
    pub fn keys(&self) -> Vec<Key> {
        match &self.kind {
            HoldKind::HeaderTail { key, .. } | HoldKind::Sniff { key, .. } => vec![*key],
            HoldKind::Replace(p) => p.keys(),
        }
    }

    /// Is a later event about identity `key` or path `path` (raw bytes) one that must not
    /// be judged before this hold? A replace is known by name before its identity.
    pub fn concerns(&self, key: Option<Key>, path: Option<&[u8]>) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let by_key = |k: Key| key == Some(k);
        let by_path = |p: &std::path::Path| path.is_some_and(|b| p.as_os_str().as_bytes() == b);
        match &self.kind {
            HoldKind::HeaderTail { key, path, .. } | HoldKind::Sniff { key, path, .. } => {
                by_key(*key) || by_path(path)
            }
            HoldKind::Replace(p) => {
                p.replaced.is_some_and(by_key)
                    || p.source_key.is_some_and(by_key)
                    || by_path(&p.target)
                    || p.source.as_deref().is_some_and(by_path)
            }
        }
    }

    /// Does the file show that the syscall took effect? Cheap: a few bytes or an lstat.
    pub fn landed(&self, now: Instant) -> bool {
        match &self.kind {
            HoldKind::HeaderTail {
                key,
                path,
                off,
                data,
                same_as_before,
            } => {
                (!*same_as_before || now >= self.since + LAND_DELAY)
                    && bytes_at_are(key.0, path, *off, data)
            }
            HoldKind::Sniff {
                key,
                path,
                off,
                data,
                ..
            } => {
                if data.is_empty() {
                    // A copy or clone: no bytes to look for.
                    now >= self.since + LAND_DELAY
                } else {
                    bytes_at_are(key.0, path, *off, data)
                }
            }
            HoldKind::Replace(p) => p.located().is_some(),
        }
    }
}

/// Does the file at `path` hold `data` at `off`?
fn bytes_at_are(dev: u32, path: &std::path::Path, off: u64, data: &[u8]) -> bool {
    let (p, want) = (path.to_path_buf(), data.to_vec());
    super::fileread::bounded(Some(dev), path, move || {
        let Ok(f) = super::fileread::open(&p) else {
            // Gone or replaced by something unreadable: nothing more will land.
            return true;
        };
        super::fileread::read_at(&f, off, want.len()).is_ok_and(|b| b == want)
    })
    // Unreadable in time: waiting longer would hold the event for nothing.
    .unwrap_or(true)
}

/// Why a file is looked at again, for the follow-up event's `recheck` detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecheckWhy {
    /// A shared writable mapping of it exists (or just went away).
    SharedMapping,
    /// Bytes were put into its first cluster; the first look found no image.
    LateFill,
    /// Another file's blocks were cloned into it (FICLONE/FICLONERANGE).
    Clone,
}

impl RecheckWhy {
    pub fn as_str(self) -> &'static str {
        match self {
            RecheckWhy::SharedMapping => "shared_mapping",
            RecheckWhy::LateFill => "late_fill",
            RecheckWhy::Clone => "clone",
        }
    }
}

/// Interval between looks at a file with a live shared mapping.
pub const MAPPING_STEP: Duration = Duration::from_millis(200);
/// A mapping is watched at most this long (then looked at once more and forgotten).
pub const MAPPING_MAX: Duration = Duration::from_secs(600);
/// When a late fill or a clone is looked at again after the event.
pub const LATE_STEPS: [Duration; 2] = [Duration::from_millis(250), Duration::from_millis(1000)];
/// Files looked at again at most (a mapping storm evicts the oldest).
pub const MAX_RECHECKS: usize = 256;

/// A file to look at again later; a change found yields a follow-up event.
#[derive(Debug, Clone)]
pub struct Recheck {
    pub key: Key,
    pub path: PathBuf,
    pub why: RecheckWhy,
    /// The event that prompted it: the follow-up carries its process and file.
    pub template: Box<Event>,
    pub since: Instant,
    pub next: Instant,
    /// Later looks still due (late fill, clone).
    pub steps_left: usize,
    /// Digest of the file's first bytes at the last look: unchanged means nothing to do.
    pub last: Option<u64>,
}

impl Recheck {
    pub fn new(key: Key, path: PathBuf, why: RecheckWhy, template: &Event, now: Instant) -> Self {
        let (next, steps_left) = match why {
            RecheckWhy::SharedMapping => (now + MAPPING_STEP, 0),
            RecheckWhy::LateFill | RecheckWhy::Clone => (now + LATE_STEPS[0], LATE_STEPS.len()),
        };
        Recheck {
            key,
            path,
            why,
            template: Box::new(template.clone()),
            since: now,
            next,
            steps_left,
            last: None,
        }
    }

    /// Schedule the next look, or `false` when this was the last.
    pub fn advance(&mut self, now: Instant, still_mapped: bool) -> bool {
        match self.why {
            RecheckWhy::SharedMapping => {
                if still_mapped && now < self.since + MAPPING_MAX {
                    self.next = now + MAPPING_STEP;
                    true
                } else {
                    false
                }
            }
            RecheckWhy::LateFill | RecheckWhy::Clone => {
                self.steps_left = self.steps_left.saturating_sub(1);
                let done = LATE_STEPS.len() - self.steps_left;
                match LATE_STEPS.get(done) {
                    Some(at) if self.steps_left > 0 => {
                        self.next = self.since + *at;
                        true
                    }
                    _ => false,
                }
            }
        }
    }
}

/// Does this `/proc/PID/maps` text map the file `key`? An unreadable maps file (read as
/// empty) means the process is gone. Lines are `addr perms offset MAJ:MIN inode path`, the
/// device in hex.
pub fn maps_text_has(text: &str, key: Key) -> bool {
    let (major, minor) = (key.0 >> 20, key.0 & 0xfffff);
    text.lines().any(|l| {
        let mut f = l.split_ascii_whitespace().skip(3);
        let (Some(dev), Some(ino)) = (f.next(), f.next()) else {
            return false;
        };
        let Some((ma, mi)) = dev.split_once(':') else {
            return false;
        };
        u32::from_str_radix(ma, 16) == Ok(major)
            && u32::from_str_radix(mi, 16) == Ok(minor)
            && ino.parse::<u64>() == Ok(key.1)
    })
}

/// FNV-1a over the first bytes of a file, to tell a changed file from an unchanged one.
pub fn digest(b: &[u8]) -> u64 {
    snapmon_common::fnv1a(b)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::qcow2::testutil::{qemu_img, TmpDir};
    use super::super::{Classifier, Verdict};
    use super::*;
    use crate::event::Action;
    use crate::event::{Bytes, FileInfo, WriteInfo};

    fn ev(action: Action, p: &Path, off: i64, len: u64, data: &[u8]) -> Event {
        let md = std::fs::metadata(p).unwrap();
        let k = crate::paths::key_for(p, &md);
        Event {
            action,
            file: Some(FileInfo {
                path: Some(Bytes::from_path(p)),
                dev: k.dev,
                ino: k.ino,
                size: Some(md.len()),
            }),
            write: (action != Action::Create).then(|| WriteInfo {
                op: action.as_str().parse().unwrap(),
                offset: off,
                length: len,
                data: data.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn held(c: &mut Classifier, e: &Event, p: &Path) -> Hold {
        match c.judge(e, Some(p), Instant::now()) {
            Verdict::Hold(h) => h,
            Verdict::Now(cl) => panic!("judged before the write landed: {cl:?}"),
        }
    }

    fn texts(c: &crate::classify::Classification) -> Vec<String> {
        c.changes.iter().map(ToString::to_string).collect()
    }

    /// `qemu-img rebase -u -b /dev/shm/x.qcow2` rewrites the whole header cluster (65536
    /// bytes at 0); the hook captures 256, and the new backing name lies beyond them.
    #[test]
    fn a_header_write_longer_than_the_capture_is_judged_from_the_file_once_landed() {
        let d = TmpDir::new("tail");
        qemu_img(&["create", "-q", "-f", "qcow2", &d.s("vm.qcow2"), "16M"]);
        qemu_img(&["create", "-q", "-f", "qcow2", &d.s("rebased.qcow2"), "16M"]);
        super::super::qcow2::testutil::rebase_unsafe(&d.s("rebased.qcow2"), "/dev/shm/x.qcow2");
        let new_head = std::fs::read(d.path("rebased.qcow2")).unwrap()[..65536].to_vec();
        let img = d.path("vm.qcow2");
        let mut c = Classifier::new();
        let k = crate::paths::key_for(&img, &std::fs::metadata(&img).unwrap());
        c.preload(std::iter::once((&k, &img)));
        let e = ev(
            Action::Pwrite64,
            &img,
            0,
            65536,
            &new_head[..snapmon_common::DATA_LEN],
        );
        let h = held(&mut c, &e, &img);
        assert!(matches!(h.kind, HoldKind::HeaderTail { .. }), "{h:?}");
        // The name is beyond the captured bytes: not on disk yet, not in the capture.
        let off = u64::from_be_bytes(new_head[8..16].try_into().unwrap()) as usize;
        assert!(off >= snapmon_common::DATA_LEN, "name at {off}");
        let now = Instant::now();
        assert!(!h.landed(now));
        super::super::qcow2::testutil::patch(&img, 0, &new_head);
        assert!(h.landed(now));
        let cl = c.complete(&e, Some(&img), h).classification.unwrap();
        let t = texts(&cl);
        assert!(
            t.contains(&"backing_file: (none) → /dev/shm/x.qcow2".to_string()),
            "{t:?}"
        );
        assert!(
            t.contains(&"backing_format: (none) → qcow2".to_string()),
            "{t:?}"
        );
    }

    /// `cp image.qcow2 store/x.log`: the copy's hook fires before its bytes are in the file.
    #[test]
    fn a_copy_into_a_new_file_is_sniffed_once_it_landed() {
        let d = TmpDir::new("late");
        qemu_img(&["create", "-q", "-f", "qcow2", &d.s("src.qcow2"), "16M"]);
        let src = std::fs::read(d.path("src.qcow2")).unwrap();
        let dst = d.path("x.log");
        std::fs::write(&dst, b"").unwrap();
        let mut c = Classifier::new();
        let mut create = ev(Action::Create, &dst, 0, 0, &[]);
        create.process.pid = 77;
        assert!(c.classify(&create, Some(&dst)).is_none());
        let mut e = ev(Action::CopyFileRange, &dst, 0, src.len() as u64, &[]);
        e.process.pid = 77;
        let h = held(&mut c, &e, &dst);
        assert!(matches!(h.kind, HoldKind::Sniff { .. }), "{h:?}");
        std::fs::write(&dst, &src).unwrap();
        let cl = c.complete(&e, Some(&dst), h).classification.unwrap();
        assert_eq!(cl.format, "qcow2");
        let facts: Vec<&str> = cl.facts.iter().map(|f| f.0.as_str()).collect();
        assert!(
            facts.contains(&"became") && facts.contains(&"made"),
            "{facts:?}"
        );
    }

    /// Stores through a shared mapping raise no event: the file is looked at again, and a
    /// change yields a follow-up event with the prompting event's process and file.
    #[test]
    fn content_written_through_a_shared_mapping_is_followed_up() {
        let d = TmpDir::new("mapped");
        qemu_img(&["create", "-q", "-f", "qcow2", &d.s("src.qcow2"), "16M"]);
        let src = std::fs::read(d.path("src.qcow2")).unwrap();
        let dst = d.path("m.log");
        std::fs::write(&dst, vec![0u8; src.len()]).unwrap();
        let mut c = Classifier::new();
        let mut e = ev(Action::MmapSharedWrite, &dst, 0, src.len() as u64, &[]);
        e.process.pid = u32::MAX; // gone: this look is the last
        let cl = c.classify(&e, Some(&dst)).unwrap();
        assert_eq!(cl.format, "file");
        let due = c.next_recheck().expect("a look is scheduled");
        std::fs::write(&dst, &src).unwrap();
        let f = c.rechecks_due(due);
        assert_eq!(f.len(), 1);
        let c1 = f[0].classification.as_ref().unwrap();
        assert_eq!(c1.format, "qcow2");
        assert_eq!(f[0].action, Action::MmapSharedWrite);
        assert!(f[0].detail.contains(&(
            crate::event::DetailKey::Recheck,
            "shared_mapping".to_string()
        )));
        // The process is gone: nothing more to look at.
        assert!(c.next_recheck().is_none());
    }

    #[test]
    fn maps_lines_are_matched_on_device_and_inode() {
        let text = "7f0000000000-7f0000010000 rw-s 00000000 fe:01 123456   /store/x.log\n\
                    7f0000010000-7f0000020000 r--p 00000000 00:00 0 \n";
        assert!(maps_text_has(text, ((0xfe << 20) | 1, 123456)));
        assert!(!maps_text_has(text, ((0xfe << 20) | 1, 12345)));
        assert!(!maps_text_has(text, ((0xfe << 20) | 2, 123456)));
        assert!(!maps_text_has("garbage\n\n", (1, 1)));
        // Our own maps hold our executable's identity.
        let exe = std::fs::metadata("/proc/self/exe").unwrap();
        let k = crate::paths::key_of(&exe);
        let own = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(maps_text_has(&own, (k.dev, k.ino)));
        assert!(!maps_text_has("", (k.dev, k.ino)));
    }

    #[test]
    fn late_checks_run_at_each_step_then_stop() {
        let now = Instant::now();
        let mut r = Recheck::new(
            (1, 1),
            "/x".into(),
            RecheckWhy::LateFill,
            &Event::default(),
            now,
        );
        assert_eq!(r.next, now + LATE_STEPS[0]);
        assert!(r.advance(r.next, false));
        assert_eq!(r.next, now + LATE_STEPS[1]);
        assert!(!r.advance(r.next, false));
        let mut m = Recheck::new(
            (1, 1),
            "/x".into(),
            RecheckWhy::SharedMapping,
            &Event::default(),
            now,
        );
        assert!(m.advance(now + MAPPING_STEP, true));
        assert!(!m.advance(now + 2 * MAPPING_STEP, false));
        assert!(!m.advance(now + MAPPING_MAX, true));
    }
}
