//! The event model's closed word lists besides `Action`: write ops, fallocate modes and detail
//! keys, each name written once (re-exported by `event`).
//!
//! Each has an `Unknown` bucket that only `replay` fills: rules judge actions, never these
//! names, so a name this build does not know (a recording of another agent version) is kept
//! as written and rendered back unchanged, rather than costing the event and its rule firings
//! (an error) or being rewritten (the old `other`). The agent itself never makes one.

use serde::Serialize;

/// `snapmon.write.op`: the syscall or path of a write record (`enrich`). Most names are
/// actions' too, but it is its own list: the op is how the file was written, the action what
/// it did (`ftruncate` is a `truncate`, a `fallocate` with `punch_hole` a `punch_hole`).
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Hash,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::EnumIter,
)]
#[strum(serialize_all = "snake_case")]
pub enum WriteOp {
    /// Only `WriteInfo::default`'s; the agent never emits it.
    #[default]
    #[strum(serialize = "")]
    Unset,
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
    Fallocate,
    Ftruncate,
    MmapSharedWrite,
    IoUringFallocate,
    Sendfile,
    Splice,
    IoUringFtruncate,
    /// A VFS-level write seen below the syscall layer (fentry backend).
    VfsWrite,
    /// The kernel freed or zeroed the range (`VfsRangeDropped`): for the data there, a
    /// punched hole.
    PunchHole,
    /// `vfs_clone_file_range` below the syscall layer.
    CloneRange,
    /// A record op this agent does not know.
    WriteUnknown,
    /// A name read back by `replay` that this build does not know.
    #[strum(default)]
    Unknown(String),
}

impl WriteOp {
    /// The op of a kernel write record (`snapmon_common::WriteOp` number).
    pub fn of_record(op: u16) -> Self {
        use snapmon_common::WriteOp as K;
        match K::from_u16(op) {
            Some(K::Write) => Self::Write,
            Some(K::Pwrite) => Self::Pwrite64,
            Some(K::Writev) => Self::Writev,
            Some(K::Pwritev) => Self::Pwritev,
            Some(K::Pwritev2) => Self::Pwritev2,
            Some(K::IoUringWrite) => Self::IoUringWrite,
            Some(K::IoUringWritev) => Self::IoUringWritev,
            Some(K::IoUringWriteFixed) => Self::IoUringWriteFixed,
            Some(K::AioPwrite) => Self::AioPwrite,
            Some(K::AioPwritev) => Self::AioPwritev,
            Some(K::CopyFileRange) => Self::CopyFileRange,
            Some(K::Fallocate) => Self::Fallocate,
            Some(K::Ftruncate) => Self::Ftruncate,
            Some(K::MmapShared) => Self::MmapSharedWrite,
            Some(K::IoUringFallocate) => Self::IoUringFallocate,
            Some(K::Sendfile) => Self::Sendfile,
            Some(K::Splice) => Self::Splice,
            Some(K::IoUringFtruncate) => Self::IoUringFtruncate,
            Some(K::VfsWrite) => Self::VfsWrite,
            Some(K::VfsRangeDropped) => Self::PunchHole,
            Some(K::VfsClone) => Self::CloneRange,
            None => Self::WriteUnknown,
        }
    }
}

/// `snapmon.write.mode`: one fallocate(2) mode bit by name.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, strum::IntoStaticStr, strum::EnumString, strum::EnumIter,
)]
#[strum(serialize_all = "snake_case")]
pub enum FallocMode {
    KeepSize,
    PunchHole,
    NoHideStale,
    CollapseRange,
    ZeroRange,
    InsertRange,
    UnshareRange,
    /// A name read back by `replay` that this build does not know.
    #[strum(default)]
    Unknown(String),
}

impl FallocMode {
    /// The names of the bits set in a fallocate mode, lowest first.
    pub fn of_bits(mode: u64) -> Vec<Self> {
        const BITS: [(u64, FallocMode); 7] = [
            (0x01, FallocMode::KeepSize),
            (0x02, FallocMode::PunchHole),
            (0x04, FallocMode::NoHideStale),
            (0x08, FallocMode::CollapseRange),
            (0x10, FallocMode::ZeroRange),
            (0x20, FallocMode::InsertRange),
            (0x40, FallocMode::UnshareRange),
        ];
        BITS.into_iter()
            .filter(|(b, _)| mode & b != 0)
            .map(|(_, m)| m)
            .collect()
    }
}

/// A key of `snapmon.detail`: an operation's specifics (`sink::json` documents each).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, strum::IntoStaticStr, strum::EnumString, strum::EnumIter,
)]
#[strum(serialize_all = "snake_case")]
pub enum DetailKey {
    // Namespace operations.
    Mode,
    Uid,
    Gid,
    OpenFlags,
    RenameFlags,
    Length,
    /// `io_uring`, `lsm`, `fanotify`: the path a namespace operation was seen on.
    Via,
    /// `classify::recheck`: a follow-up event from a later look at the file.
    Recheck,
    // Loop devices.
    LoopDevice,
    LoopNode,
    LoopOffset,
    LoopRole,
    LoopWatch,
    LoopWorker,
    /// How the file entered the ring's table (`event::URING_ROUTES`).
    IoUringRegister,
    /// Its index in the ring's file table (`alloc`: the kernel picks it,
    /// `IORING_FILE_INDEX_ALLOC`).
    IoUringSlot,
    /// The fd registered (in the actor's table).
    IoUringFd,
    /// The ring's fd (`registered:N` for a registered ring, `-1` for `op_files_update`,
    /// where it is not at hand).
    IoUringRingFd,
    /// The call passed more fds than the kernel reads (`64 of N`).
    IoUringCut,
    // Overlays: the mount point and the path used through the merged view.
    OverlayMount,
    OverlayPath,
    /// The path as the process gave it, through a symlinked or bind-mounted store (or
    /// another mount namespace): `file.path`/`destination.path` name the store's file.
    LinkPath,
    /// Which of an event's paths are cut and unresolved (`file`, `target`, or `file,target`;
    /// see `longpath`).
    PathTruncated,
    /// The record is about an earlier file with this inode number, read after the file that
    /// has it now was created (`watch::WatchSet::stale`); it is reported by its own name and
    /// judged against nothing.
    InodeReused,
    /// Records about images or metadata files dropped since the last `blinded` event (all
    /// files, not only `file`).
    Dropped,
    /// What the last dropped record was (`write`, `open`, `namespace`, `ioctl`,
    /// `io_uring_register`).
    DroppedRecord,
    /// A file the judgement needed did not answer within the read budget (`file: why`); the
    /// record is judged on what the event itself carries.
    ReadStalled,
    // LSM decisions (`enforce`) and responses (`respond`).
    Operation,
    Outcome,
    Protected,
    ActorExeIdentity,
    Aux,
    Responder,
    TriggerRule,
    Signal,
    SyscallToSignalNs,
    SignalBoottimeNs,
    Cgroup,
    FreezeRefused,
    Resume,
    Offset,
    WriteOp,
    IoctlCmd,
    PathHash,
    /// A key read back by `replay` that this build does not know.
    #[strum(default)]
    Unknown(String),
}

macro_rules! word_impls {
    ($($t:ident),*) => {$(
        impl $t {
            pub fn as_str(&self) -> &str {
                match self {
                    Self::Unknown(s) => s,
                    k => k.into(),
                }
            }

            /// The word of a name; one this build does not know is kept as `Unknown`.
            pub fn from_name(s: &str) -> Self {
                s.parse().unwrap_or_else(|_| Self::Unknown(s.to_string()))
            }
        }

        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    )*};
}
word_impls!(WriteOp, FallocMode, DetailKey);

#[cfg(test)]
mod tests {
    use super::*;
    use strum::IntoEnumIterator;

    #[test]
    fn every_name_parses_back_and_an_unknown_one_is_kept_as_written() {
        macro_rules! round_trips {
            ($t:ident) => {
                for w in $t::iter().filter(|w| !matches!(w, $t::Unknown(_))) {
                    assert_eq!($t::from_name(w.as_str()), w, "{w:?}");
                    assert_eq!(serde_json::to_value(&w).unwrap(), w.as_str());
                }
                let other = $t::from_name("from_a_newer_agent");
                assert_eq!(other, $t::Unknown("from_a_newer_agent".into()));
                assert_eq!(other.as_str(), "from_a_newer_agent");
            };
        }
        round_trips!(WriteOp);
        round_trips!(FallocMode);
        round_trips!(DetailKey);
    }

    #[test]
    fn names_are_the_ones_the_agent_wrote_as_strings() {
        let ops: Vec<_> = (0..=22u16).map(WriteOp::of_record).collect();
        let names: Vec<_> = ops.iter().map(WriteOp::as_str).collect();
        assert_eq!(
            names,
            [
                "write_unknown",
                "write",
                "pwrite64",
                "writev",
                "pwritev",
                "pwritev2",
                "io_uring_write",
                "io_uring_writev",
                "io_uring_write_fixed",
                "aio_pwrite",
                "aio_pwritev",
                "copy_file_range",
                "fallocate",
                "ftruncate",
                "mmap_shared_write",
                "io_uring_fallocate",
                "sendfile",
                "splice",
                "io_uring_ftruncate",
                "vfs_write",
                "punch_hole",
                "clone_range",
                "write_unknown",
            ]
        );
        let modes: Vec<_> = FallocMode::of_bits(0x7f);
        let modes: Vec<_> = modes.iter().map(FallocMode::as_str).collect();
        assert_eq!(
            modes,
            [
                "keep_size",
                "punch_hole",
                "no_hide_stale",
                "collapse_range",
                "zero_range",
                "insert_range",
                "unshare_range"
            ]
        );
        assert_eq!(FallocMode::of_bits(0x03).len(), 2);
        assert_eq!(DetailKey::IoUringRingFd.as_str(), "io_uring_ring_fd");
        assert_eq!(
            DetailKey::SyscallToSignalNs.as_str(),
            "syscall_to_signal_ns"
        );
        assert_eq!(DetailKey::WriteOp.as_str(), "write_op");
    }
}
