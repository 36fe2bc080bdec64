//! The agent's event model: what the enrich stage produces and every later stage consumes.

use std::path::PathBuf;

use serde::Serialize;

/// Bytes that are usually UTF-8 (paths, argv) but must survive when they are not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    pub fn from_path(p: &std::path::Path) -> Self {
        use std::os::unix::ffi::OsStrExt;
        Bytes(p.as_os_str().as_bytes().to_vec())
    }
    pub fn is_utf8(&self) -> bool {
        std::str::from_utf8(&self.0).is_ok()
    }
    /// Display form: valid UTF-8 kept, other bytes as `\xNN`; control characters escaped.
    pub fn display(&self) -> String {
        escape_bytes(&self.0)
    }
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
    pub fn as_path(&self) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        PathBuf::from(std::ffi::OsStr::from_bytes(&self.0))
    }
}

pub use crate::text::escape_bytes;
pub use crate::vocab::{DetailKey, FallocMode, WriteOp};

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Ancestor {
    pub pid: u32,
    pub name: String,
    pub executable: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub entity_id: String,
}

/// Who acted: the process and how it got there.
///
/// The names (everything allocated) sit behind an `Arc` shared by every event of one build of
/// the process: an event costs a reference count, not a dozen allocations made on the agent's
/// thread and freed on a sink's. They read as fields of their own (`p.name`, through `Deref`);
/// writing one (`DerefMut`) copies them first if shared and sets `revision` to 0, as a change
/// must.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub args_truncated: bool,
    pub uid: u32,
    pub gid: u32,
    pub euid: Option<u32>,
    pub exe_dev: u32,
    pub exe_ino: u64,
    pub start_ns: u64,
    /// Which build of this process this is: the lineage stage numbers each process it builds
    /// (unique in the agent) and its clones share the number, so a consumer may reuse work
    /// done for the same build. 0: built or changed elsewhere. Whoever changes a field of
    /// this struct must set it to 0 (a change to the names does so itself).
    pub revision: u64,
    /// Read and written through `Deref`/`DerefMut`, which keep `revision` honest.
    pub names: std::sync::Arc<ProcessNames>,
}

/// The allocated part of a [`ProcessInfo`], shared between its clones.
#[derive(Debug, Clone, Default)]
pub struct ProcessNames {
    pub name: String,
    pub executable: Bytes,
    pub args: Vec<Bytes>,
    pub entity_id: String,
    pub cwd: Option<Bytes>,
    pub container_id: Option<String>,
    pub systemd_unit: Option<String>,
    pub vm_name: Option<String>,
    pub vm_uuid: Option<String>,
    pub parent: Option<Ancestor>,
    /// Parent first, up to pid 1.
    pub ancestors: std::sync::Arc<Vec<Ancestor>>,
}

impl Default for ProcessInfo {
    /// No names yet: one shared empty set, not an allocation (an event starts from this).
    fn default() -> Self {
        static EMPTY: std::sync::OnceLock<std::sync::Arc<ProcessNames>> =
            std::sync::OnceLock::new();
        ProcessInfo {
            pid: 0,
            tid: 0,
            ppid: 0,
            args_truncated: false,
            uid: 0,
            gid: 0,
            euid: None,
            exe_dev: 0,
            exe_ino: 0,
            start_ns: 0,
            revision: 0,
            names: EMPTY.get_or_init(Default::default).clone(),
        }
    }
}

impl std::ops::Deref for ProcessInfo {
    type Target = ProcessNames;
    fn deref(&self) -> &ProcessNames {
        &self.names
    }
}

impl std::ops::DerefMut for ProcessInfo {
    fn deref_mut(&mut self) -> &mut ProcessNames {
        self.revision = 0;
        std::sync::Arc::make_mut(&mut self.names)
    }
}

impl ProcessInfo {
    /// A process with these names, its numbers left to the caller.
    pub fn with_names(names: ProcessNames) -> Self {
        ProcessInfo {
            names: std::sync::Arc::new(names),
            ..Default::default()
        }
    }

    /// Do `self` and `other` share their names (one build's clones)?
    pub fn shares_names(&self, other: &ProcessInfo) -> bool {
        std::sync::Arc::ptr_eq(&self.names, &other.names)
    }
}

impl ProcessInfo {
    /// `python3 ← bash ← sshd`
    pub fn lineage(&self) -> String {
        let mut s = self.name.clone();
        for a in self.ancestors.iter().take(4) {
            s.push_str(" ← ");
            s.push_str(&a.name);
        }
        if self.ancestors.len() > 4 {
            s.push_str(" ← …");
        }
        s
    }
}

#[derive(Debug, Clone, Default)]
pub struct FileInfo {
    pub path: Option<Bytes>,
    pub dev: u32,
    pub ino: u64,
    pub size: Option<u64>,
}

/// Data/size/mapping change details.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WriteInfo {
    /// Syscall or path (`pwrite64`, `io_uring_write`, `fallocate` …).
    pub op: WriteOp,
    pub offset: i64,
    pub length: u64,
    /// Offset came from the file position (write/writev).
    pub offset_from_fpos: bool,
    pub length_partial: bool,
    /// fallocate mode names (`punch_hole`, `keep_size`, `zero_range` …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mode: Vec<FallocMode>,
    #[serde(skip)]
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct IoctlRaw {
    pub cmd: u32,
    pub arg: u64,
    #[serde(skip)]
    pub arg_data: Vec<u8>,
}

/// ECS `event.action`: every operation the agent reports, its name written once (strum
/// derives `as_str`/`FromStr` from it). Policy exceptions and replay parse through it, so an
/// action the agent emits is one they accept, and an unknown name is an error.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::EnumIter,
    strum::EnumCount,
    strum::Display,
)]
#[strum(serialize_all = "snake_case")]
pub enum Action {
    /// An event not given one yet (`Event::default`, tests); the agent never emits it.
    #[default]
    #[strum(serialize = "")]
    Unset,
    // Data writes, by syscall or path.
    Write,
    #[strum(serialize = "pwrite64")]
    Pwrite64,
    Writev,
    Pwritev,
    #[strum(serialize = "pwritev2")]
    Pwritev2,
    IoUringWrite,
    IoUringWritev,
    IoUringWriteFixed,
    AioPwrite,
    AioPwritev,
    CopyFileRange,
    Splice,
    Sendfile,
    MmapSharedWrite,
    /// A VFS-level write seen below the syscall layer (fentry backend).
    VfsWrite,
    /// A write record whose `WriteOp` this agent does not know.
    WriteUnknown,
    // Size and allocation changes.
    Fallocate,
    PunchHole,
    ZeroRange,
    CollapseRange,
    InsertRange,
    Truncate,
    /// A reflink (`FICLONE*` ioctl, or `vfs_clone_file_range` below the syscall layer).
    CloneRange,
    // Opens and namespace operations.
    Create,
    OpenWrite,
    OpenTruncate,
    Rename,
    Unlink,
    Rmdir,
    Link,
    Symlink,
    Mkdir,
    Chmod,
    Chown,
    Utimes,
    /// A namespace record whose `NsOp` this agent does not know.
    NamespaceUnknown,
    Ioctl,
    /// A watched file put into an io_uring registered-file table (`UringRegisterEvent`): the
    /// ring's writes to it name a slot, which only the direct walk's submit hook resolves.
    /// Rule SM-U001 judges it.
    IoUringRegisterFiles,
    /// The kernel dropped records about an image or metadata file
    /// (`lost::PRECIOUS_DROPPED`): `file` is the last such file, `process` the actor of that
    /// record. Rule SM-A001 judges it.
    Blinded,
    /// A loop device over a watched file was found detached, or over another file, on the
    /// agent's tick (a detach at last close, autoclear: no ioctl says so): the alias ended
    /// (`loop_watch: ended`). The actor is unknown (the last closer), so it names none.
    LoopDetached,
    // Process lifecycle.
    Fork,
    Exec,
    Exit,
    // LSM decisions on protected stores (`actions::deny_action`).
    DenyWrite,
    DenyOpenWrite,
    DenyTruncate,
    DenyUnlink,
    DenyRename,
    DenyLink,
    DenyMmapWrite,
    DenyIoctl,
    WouldDenyWrite,
    WouldDenyOpenWrite,
    WouldDenyTruncate,
    WouldDenyUnlink,
    WouldDenyRename,
    WouldDenyLink,
    WouldDenyMmapWrite,
    WouldDenyIoctl,
    /// A decision on an operation bit this agent does not know.
    #[strum(serialize = "deny")]
    DenyUnknown,
    // Circuit-breaker records (`actions::response_action`).
    Kill,
    Stop,
    Freeze,
    WouldKill,
    WouldStop,
    WouldFreeze,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Which decision of the agent's own an action records, `None` for an observed operation.
    /// Exhaustive: a new action must be placed here.
    pub fn decision(self) -> Option<Decision> {
        use Action as A;
        Some(match self {
            A::DenyWrite
            | A::DenyOpenWrite
            | A::DenyTruncate
            | A::DenyUnlink
            | A::DenyRename
            | A::DenyLink
            | A::DenyMmapWrite
            | A::DenyIoctl => Decision::Denied,
            A::WouldDenyWrite
            | A::WouldDenyOpenWrite
            | A::WouldDenyTruncate
            | A::WouldDenyUnlink
            | A::WouldDenyRename
            | A::WouldDenyLink
            | A::WouldDenyMmapWrite
            | A::WouldDenyIoctl => Decision::WouldDeny,
            A::DenyUnknown => Decision::UnknownDeny,
            A::Kill | A::Stop | A::Freeze => Decision::Responded,
            A::WouldKill | A::WouldStop | A::WouldFreeze => Decision::WouldRespond,
            A::Unset
            | A::Write
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
            | A::MmapSharedWrite
            | A::VfsWrite
            | A::WriteUnknown
            | A::Fallocate
            | A::PunchHole
            | A::ZeroRange
            | A::CollapseRange
            | A::InsertRange
            | A::Truncate
            | A::CloneRange
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
            | A::Exit => return None,
        })
    }

    /// A monitor-mode record (`would_*`): what the LSM or circuit breaker would have done.
    pub fn is_dry_run(self) -> bool {
        matches!(
            self.decision(),
            Some(Decision::WouldDeny | Decision::WouldRespond)
        )
    }
}

/// What an [`Action`] of the agent's own decision records (`Action::decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The LSM refused the operation (`deny_*`).
    Denied,
    /// The LSM would have refused it, in monitor mode (`would_deny_*`).
    WouldDeny,
    /// A decision on an operation bit this agent does not know (`deny`): whether it was
    /// carried out is not known either, so it raises no decision alert.
    UnknownDeny,
    /// The circuit breaker signalled the actor (`kill`, `stop`, `freeze`).
    Responded,
    /// It would have, in monitor mode (`would_kill` …).
    WouldRespond,
}

impl Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// ECS `event.category`: which kind of object an event is about.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::EnumIter,
)]
#[strum(serialize_all = "snake_case")]
pub enum Category {
    /// Only `Event::default`'s; the agent never emits it.
    #[default]
    #[strum(serialize = "")]
    Unset,
    File,
    Process,
}

/// ECS `event.type`: what happened to the object.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::EnumIter,
)]
#[strum(serialize_all = "snake_case")]
pub enum EventType {
    /// Only `Event::default`'s; the agent never emits it.
    #[default]
    #[strum(serialize = "")]
    Unset,
    Change,
    Creation,
    Deletion,
    Access,
    Info,
    Start,
    End,
    /// An LSM decision carried out (ECS puts it in `intrusion_detection` too).
    Denied,
    /// An LSM decision in monitor mode.
    Allowed,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl Serialize for Category {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// `dropped_record` of a `blinded` event for an image whose name went with dropped path
/// records (`Enricher::blinded_names`); SM-A001 words it apart.
pub const DROPPED_PATH: &str = "path";
/// `dropped_record` of a `blinded` event for fanotify events lost (`dirwatch`): names made
/// in a store through another name of it may have gone unseen; SM-A001 words it apart.
pub const DROPPED_FANOTIFY: &str = "fanotify";

/// One observed operation, enriched.
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// Monotonic sequence number assigned by the pipeline.
    pub seq: u64,
    /// Wall-clock nanoseconds since the Unix epoch.
    pub ts_unix_ns: i128,
    pub ts_boot_ns: u64,
    /// ECS `event.category` (`file`, `process`).
    pub category: Category,
    /// ECS `event.type` (`change`, `creation`, `deletion`, `start`, `end`, `info`).
    pub ecs_type: EventType,
    /// ECS `event.action` (`pwrite64`, `rename`, `punch_hole`, `exec` …).
    pub action: Action,
    pub backend: snapmon_common::Backend,
    /// Who did it; left at its default when `no_actor`.
    pub process: ProcessInfo,
    /// No process did it in a record: the agent saw it itself (a loop device found detached
    /// in sysfs). Outputs leave the actor out (never pid 0, never "root").
    pub no_actor: bool,
    pub file: Option<FileInfo>,
    /// Rename/link destination.
    pub target: Option<FileInfo>,
    pub write: Option<WriteInfo>,
    pub ioctl: Option<IoctlRaw>,
    /// Namespace details (`mode`, `uid`, rename flags …).
    pub detail: Vec<(DetailKey, String)>,
    /// Set by classify: the regions a write touched and the field-level diff.
    pub classification: Option<crate::classify::classification::Classification>,
}

impl Event {
    /// The value of a detail key, the first if several.
    pub fn detail_value(&self, key: DetailKey) -> Option<&str> {
        self.detail
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn inode_reused(&self) -> bool {
        self.detail
            .iter()
            .any(|(k, _)| *k == DetailKey::InodeReused)
    }

    /// Is the path of `which` (`file`, `target`) only the start of one, unresolved? Its name
    /// then tells nothing of the real one's end (its extension).
    pub fn path_cut(&self, which: &str) -> bool {
        self.detail
            .iter()
            .any(|(k, v)| *k == DetailKey::PathTruncated && v.split(',').any(|w| w == which))
    }
}

/// `snapmon.detail.io_uring_register` values, by `snapmon_common::uring_register` opcode word.
pub const URING_ROUTES: &[(u32, &str)] = &[
    (
        snapmon_common::uring_register::REGISTER_FILES,
        "register_files",
    ),
    (
        snapmon_common::uring_register::REGISTER_FILES2,
        "register_files2",
    ),
    (
        snapmon_common::uring_register::REGISTER_FILES_UPDATE,
        "register_files_update",
    ),
    (
        snapmon_common::uring_register::REGISTER_FILES_UPDATE2,
        "register_files_update2",
    ),
    (
        snapmon_common::uring_register::VIA_SQE | snapmon_common::uring_register::OP_FILES_UPDATE,
        "op_files_update",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_category_and_type_parses_back_from_its_name() {
        use strum::IntoEnumIterator;
        for c in Category::iter() {
            assert_eq!(c.as_str().parse::<Category>(), Ok(c), "{c:?}");
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        for t in EventType::iter() {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t), "{t:?}");
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
    }

    #[test]
    fn decisions_agree_with_the_names_they_replaced() {
        // enforce and respond used to test these prefixes.
        use strum::IntoEnumIterator;
        for a in Action::iter() {
            let n = a.as_str();
            assert_eq!(a.is_dry_run(), n.starts_with("would_"), "{n}");
            assert_eq!(
                a.decision() == Some(Decision::Denied),
                n.starts_with("deny_"),
                "{n}"
            );
            assert_eq!(
                a.decision() == Some(Decision::WouldDeny),
                n.starts_with("would_deny_"),
                "{n}"
            );
        }
    }

    #[test]
    fn every_action_parses_back_from_its_name() {
        use strum::IntoEnumIterator;
        for a in Action::iter() {
            assert_eq!(a.as_str().parse::<Action>(), Ok(a), "{a}");
            assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
        }
        assert!("other".parse::<Action>().is_err());
    }

    #[test]
    fn clones_share_names_until_one_is_written_and_the_writer_loses_its_revision() {
        let mut built = ProcessInfo {
            pid: 7,
            revision: 42,
            ..ProcessInfo::with_names(ProcessNames {
                name: "qemu-img".into(),
                args: vec![Bytes(b"qemu-img".to_vec())],
                ..Default::default()
            })
        };
        let mut ev = built.clone();
        ev.tid = 8;
        assert!(
            ev.shares_names(&built),
            "an event's copy allocated its names"
        );
        assert_eq!(ev.revision, 42, "numbers alone keep the build's revision");
        ev.executable = Bytes(b"/usr/bin/qemu-img (deleted)".to_vec());
        assert!(!ev.shares_names(&built));
        assert_eq!(
            ev.revision, 0,
            "a changed process kept the build's revision"
        );
        assert_eq!(
            built.executable.0, b"",
            "the write reached the shared names"
        );
        assert_eq!((ev.name.as_str(), ev.args.len()), ("qemu-img", 1));
        // Sole owner: written in place, and still no longer that build.
        built.name.push('x');
        assert_eq!((built.name.as_str(), built.revision), ("qemu-imgx", 0));
    }
}
