//! Wire types shared by the eBPF programs and the agent: the kernel → ring buffer contract.
//!
//! Every record starts with [`Header`]; `Header::kind` is a stable numeric [`EventKind`].
//! All structs are `#[repr(C)]` with padding spelled out, and their layout is pinned by
//! `const` asserts so a change on one side cannot silently break the other.
#![no_std]

pub const COMM_LEN: usize = 16;
pub const PATH_LEN: usize = 256;
/// The kernel's PATH_MAX: no path a syscall accepts is longer (with its NUL).
pub const PATH_MAX: usize = 4096;
pub const ARGS_LEN: usize = 512;
/// Bytes of a write's payload captured in the kernel (enough for any qcow2 header field
/// update, a snapshot-table entry, or to judge whether a header was overwritten randomly).
pub const DATA_LEN: usize = 256;
/// Bytes of an ioctl argument captured (dm_ioctl + one target spec + params, btrfs names).
pub const IOCTL_ARG_LEN: usize = 1024;
/// Most linux-aio iocbs inspected per `io_submit` call.
pub const AIO_MAX_IOCBS: u32 = 8;
/// Most iovecs summed for `writev`-style length.
pub const IOV_MAX_SUMMED: u32 = 16;
/// Watched directory paths hashed for path-based filtering.
pub const MAX_PREFIX_DEPTH: usize = 64;

/// Stable record identifiers. Never renumber; only append.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    ProcessFork = 1,
    ProcessExec = 2,
    ProcessExit = 3,
    FileWrite = 10,
    FileOpen = 11,
    Namespace = 20,
    Ioctl = 30,
    Enforce = 40,
    /// The in-kernel circuit breaker signalled (or, dry-run, would have signalled) a process.
    Respond = 41,
    /// A watched file entered an io_uring registered-file table (`UringRegisterEvent`).
    UringRegister = 50,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::ProcessFork,
            2 => Self::ProcessExec,
            3 => Self::ProcessExit,
            10 => Self::FileWrite,
            11 => Self::FileOpen,
            20 => Self::Namespace,
            30 => Self::Ioctl,
            40 => Self::Enforce,
            41 => Self::Respond,
            50 => Self::UringRegister,
            _ => return None,
        })
    }
}

/// Which kernel backend produced a record (`Header::backend`). Stable numbers; the programs
/// write them as `emit::BACKEND_*`.
#[repr(u32)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    #[default]
    Tracepoint = 1,
    /// fentry/fexit on VFS functions.
    Fentry = 2,
    Lsm = 3,
}

impl Backend {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Tracepoint,
            2 => Self::Fentry,
            3 => Self::Lsm,
            _ => return None,
        })
    }
    /// `snapmon.backend` in the agent's output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tracepoint => "tracepoint",
            Self::Fentry => "fentry",
            Self::Lsm => "lsm",
        }
    }
    pub fn from_name(s: &str) -> Option<Self> {
        [Self::Tracepoint, Self::Fentry, Self::Lsm]
            .into_iter()
            .find(|b| b.as_str() == s)
    }
}

/// How a write-class event reached the file. Stable numbers.
#[repr(u16)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    Write = 1,
    Pwrite = 2,
    Writev = 3,
    Pwritev = 4,
    Pwritev2 = 5,
    IoUringWrite = 6,
    IoUringWritev = 7,
    IoUringWriteFixed = 8,
    AioPwrite = 9,
    AioPwritev = 10,
    CopyFileRange = 11,
    Fallocate = 12,
    Ftruncate = 13,
    MmapShared = 14,
    IoUringFallocate = 15,
    Sendfile = 16,
    Splice = 17,
    IoUringFtruncate = 18,
    /// A VFS-level write seen below the syscall layer (fentry backend).
    VfsWrite = 19,
    /// A byte range freed or zeroed below the syscall layer (`truncate_pagecache_range`: a
    /// loop device's discard, nfsd's fallocate).
    VfsRangeDropped = 20,
    /// `vfs_clone_file_range` below the syscall layer (overlayfs copy-up, nfsd CLONE).
    VfsClone = 21,
}

impl WriteOp {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Write,
            2 => Self::Pwrite,
            3 => Self::Writev,
            4 => Self::Pwritev,
            5 => Self::Pwritev2,
            6 => Self::IoUringWrite,
            7 => Self::IoUringWritev,
            8 => Self::IoUringWriteFixed,
            9 => Self::AioPwrite,
            10 => Self::AioPwritev,
            11 => Self::CopyFileRange,
            12 => Self::Fallocate,
            13 => Self::Ftruncate,
            14 => Self::MmapShared,
            15 => Self::IoUringFallocate,
            16 => Self::Sendfile,
            17 => Self::Splice,
            18 => Self::IoUringFtruncate,
            19 => Self::VfsWrite,
            20 => Self::VfsRangeDropped,
            21 => Self::VfsClone,
            _ => return None,
        })
    }
}

/// Path-level operations in watched directories. Stable numbers.
#[repr(u16)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NsOp {
    Mkdir = 2,
    Rename = 3,
    Unlink = 4,
    Rmdir = 5,
    Link = 6,
    Symlink = 7,
    Chmod = 8,
    Chown = 9,
    Utimes = 10,
    Truncate = 11,
}

impl NsOp {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            2 => Self::Mkdir,
            3 => Self::Rename,
            4 => Self::Unlink,
            5 => Self::Rmdir,
            6 => Self::Link,
            7 => Self::Symlink,
            8 => Self::Chmod,
            9 => Self::Chown,
            10 => Self::Utimes,
            11 => Self::Truncate,
            _ => return None,
        })
    }
}

/// `NamespaceEvent::flags` bits: how the kernel decided the event was relevant.
pub mod ns_flags {
    /// path1 is absolute and one of its directory prefixes hashed to a watched dir.
    pub const ABS_PREFIX_MATCH: u16 = 1 << 0;
    /// path1 is relative and its base directory (dirfd or cwd) is watched.
    pub const BASE_WATCHED: u16 = 1 << 1;
    /// path1 is relative with several components and its base is an ancestor of a watched dir.
    pub const BASE_ANCESTOR: u16 = 1 << 2;
    /// The path contains `//`, `/./` or `/../`; userspace must resolve it.
    pub const UNNORMALIZED: u16 = 1 << 3;
    /// Same as the bits above, for path2 (rename/link/symlink target).
    pub const PATH2_MATCH: u16 = 1 << 4;
    /// The target was named by a file descriptor (fchmod, futimens …): `target_*` is the file.
    pub const TARGET_IS_FD: u16 = 1 << 5;
    /// path1 could not be fully copied (longer than PATH_LEN): `path1` holds its first
    /// PATH_LEN-1 bytes and `path1_len` the whole path's length.
    pub const PATH1_TRUNCATED: u16 = 1 << 6;
    pub const PATH2_TRUNCATED: u16 = 1 << 7;
    /// Submitted through io_uring (IORING_OP_RENAMEAT …), not a syscall.
    pub const VIA_IO_URING: u16 = 1 << 8;
    /// Seen at an LSM hook (VFS backend): path1/path2 are entry names in base1/base2, or with
    /// TARGET_IS_FD base1 is the file itself.
    pub const VIA_VFS: u16 = 1 << 9;
    /// A path's last component is the name of a watched image or metadata file
    /// (`WATCHED_LEAVES`) though no prefix matched: a symlinked or bind-mounted store, or
    /// another mount namespace. Userspace resolves the directory through the filesystem.
    pub const LEAF_MATCH: u16 = 1 << 10;
    /// The same for path2.
    pub const LEAF2_MATCH: u16 = 1 << 11;
    /// Made by the agent from a fanotify event on a watched directory (`dirwatch`), never
    /// by a program: the path is the store's own name, whatever name the process used.
    pub const VIA_FANOTIFY: u16 = 1 << 12;
}

/// `FileWriteEvent::flags` bits.
pub mod write_flags {
    /// The file descriptor's file is a watched directory (ioctl on a dir etc.).
    pub const IS_DIR: u16 = 1 << 0;
    /// Offset was taken from `f_pos` (write/writev) rather than the call.
    pub const POS_FROM_FILE: u16 = 1 << 1;
    /// File opened with O_APPEND: the write lands at the end of the file.
    pub const APPEND: u16 = 1 << 2;
    /// `len` is a lower bound (more iovecs than were summed).
    pub const LEN_PARTIAL: u16 = 1 << 3;
    /// The io_uring request used a registered (fixed) file: `fd` is its table slot.
    pub const FIXED_FILE: u16 = 1 << 4;
    /// This is the source side of a copy (copy_file_range/splice/sendfile out of a watched file).
    pub const SOURCE_SIDE: u16 = 1 << 5;
    /// A loop attach (`LOOP_SET_FD`, `LOOP_CHANGE_FD`, `LOOP_CONFIGURE`) whose *backing* fd is
    /// a watched file: `file` is that file, and `parent` the loop device node the ioctl was
    /// issued on (`name` is empty).
    pub const LOOP_BACKING: u16 = 1 << 6;
}

/// Loop-device ioctls (`linux/loop.h`; plain numbers, no `_IOC` size).
pub mod loop_ioctl {
    pub const SET_FD: u32 = 0x4C00;
    pub const CLR_FD: u32 = 0x4C01;
    pub const SET_STATUS: u32 = 0x4C02;
    pub const SET_STATUS64: u32 = 0x4C04;
    pub const CHANGE_FD: u32 = 0x4C06;
    pub const CONFIGURE: u32 = 0x4C0A;

    /// Ioctls that give a loop device a backing file (the fd is `arg`, or `loop_config.fd`).
    #[inline(always)]
    pub fn attaches(cmd: u32) -> bool {
        cmd == SET_FD || cmd == CHANGE_FD || cmd == CONFIGURE
    }
}

/// io_uring registered (fixed) files: how a file enters a ring's table. The opcode word of
/// `UringRegisterEvent` is the `io_uring_register(2)` opcode, or `VIA_SQE | 20` for an
/// `IORING_OP_FILES_UPDATE` request submitted through the ring itself.
pub mod uring_register {
    pub const REGISTER_FILES: u32 = 2;
    pub const REGISTER_FILES_UPDATE: u32 = 6;
    pub const REGISTER_FILES2: u32 = 13;
    pub const REGISTER_FILES_UPDATE2: u32 = 14;
    /// `IORING_REGISTER_USE_REGISTERED_RING`: the ring fd is itself a registered index.
    pub const USE_REGISTERED_RING: u32 = 1 << 31;
    /// `IORING_OP_FILES_UPDATE` (an SQE opcode), marked apart from the register opcodes.
    pub const OP_FILES_UPDATE: u32 = 20;
    pub const VIA_SQE: u32 = 1 << 16;
    /// fds read per registration: larger tables are reported cut (`CUT`).
    pub const MAX_FDS: u32 = 64;
    /// Flag: the call passed more fds than the kernel hook reads.
    pub const CUT: u32 = 1 << 0;
    /// Flag: `ring_fd` is an index into the task's registered rings, not an fd.
    pub const RING_REGISTERED: u32 = 1 << 1;
}

/// Per-CPU loss counters, index into the `LOST` map.
pub mod lost {
    pub const RINGBUF_FULL: u32 = 0;
    pub const READ_FAILED: u32 = 1;
    pub const STASH_FULL: u32 = 2;
    /// io_uring request on a registered file the submit hook could not resolve (no readable
    /// file table on this kernel, or the probe-read fd walk).
    pub const URING_FIXED_FILE: u32 = 3;
    /// A new file in a watched dir the full `WATCHED_FILES` map could not take.
    pub const WATCH_FULL: u32 = 4;
    /// A record about an image or metadata file (a `WATCHED_FILES` entry without
    /// `watch_value::ORDINARY`) that neither ring lane could take: counted here, not as
    /// `RINGBUF_FULL`, and named in `BLINDED`, since a tamper may be what was lost.
    pub const PRECIOUS_DROPPED: u32 = 5;
    /// A record naming a path in a watched tree (unlink, rename, link … of a name) that
    /// neither ring lane could take: counted here, not as `RINGBUF_FULL`, and its store and
    /// actor kept in `BLINDED` slot `blinded_slot::NAMESPACE`, since the name may have been an
    /// image's (the agent looks: SM-A001 when a watched image's name went unheard).
    pub const NAMESPACE_DROPPED: u32 = 6;
    pub const COUNT: u32 = 7;

    /// The causes above by name: slot `c as u32` of the kernel's `LOST` map counts cause `c`.
    /// The numbers are the constants' (the programs use those), so they stay stable.
    #[repr(u32)]
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum LostCause {
        RingbufFull = RINGBUF_FULL,
        ReadFailed = READ_FAILED,
        StashFull = STASH_FULL,
        UringFixedFile = URING_FIXED_FILE,
        WatchFull = WATCH_FULL,
        PreciousDropped = PRECIOUS_DROPPED,
        NamespaceDropped = NAMESPACE_DROPPED,
    }

    impl LostCause {
        /// In slot order.
        pub const ALL: [Self; COUNT as usize] = [
            Self::RingbufFull,
            Self::ReadFailed,
            Self::StashFull,
            Self::UringFixedFile,
            Self::WatchFull,
            Self::PreciousDropped,
            Self::NamespaceDropped,
        ];
        pub fn from_u32(v: u32) -> Option<Self> {
            Self::ALL.get(v as usize).copied()
        }
        /// The cause in the agent's `lost` records and `snapmon_lost_total{cause}`.
        pub const fn as_str(self) -> &'static str {
            match self {
                Self::RingbufFull => "ringbuf_full",
                Self::ReadFailed => "read_failed",
                Self::StashFull => "stash_full",
                Self::UringFixedFile => "io_uring_fixed_file",
                Self::WatchFull => "watch_full",
                Self::PreciousDropped => "precious_dropped",
                Self::NamespaceDropped => "namespace_dropped",
            }
        }
        pub fn from_name(s: &str) -> Option<Self> {
            Self::ALL.into_iter().find(|c| c.as_str() == s)
        }
    }
}

/// Slots of the kernel's `BLINDED` map.
pub mod blinded_slot {
    /// The last record about an image or metadata file dropped (`lost::PRECIOUS_DROPPED`).
    pub const FILE: u32 = 0;
    /// The last path record in a watched tree dropped (`lost::NAMESPACE_DROPPED`): `file` is
    /// the directory its relative path started from, zero for an absolute path.
    pub const NAMESPACE: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// The kernel's `BLINDED` map (per CPU, `blinded_slot::COUNT` slots): the last record of
/// each kind this CPU dropped (`lost::PRECIOUS_DROPPED`, `lost::NAMESPACE_DROPPED`), so the
/// agent can name the file or store and the actor. Written only on those failure paths, in
/// place through the map value.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Blinded {
    /// CLOCK_BOOTTIME of the dropped record (`Header::ts_ns`); 0: none yet on this CPU.
    pub ts_ns: u64,
    /// The watched file the record was about (slot `NAMESPACE`: its path's base directory).
    pub file: FileKey,
    /// `EventKind` of the dropped record.
    pub kind: u32,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Slot `NAMESPACE`: the dropped record's `NsOp`; 0 (padding) in slot `FILE`.
    pub op: u32,
    pub comm: [u8; COMM_LEN],
}

/// Entries of the kernel's `WATCHED_FILES` map.
pub const WATCHED_FILES_MAX: u32 = 65536;

/// Ordinary (not image, not metadata) files may hold this many `WATCHED_FILES` entries;
/// the last tenth is headroom only images and metadata may use, so junk files cannot take
/// the room of the next image. The kernel enforces it at create, before the agent hears.
pub const ORDINARY_LIMIT: u32 = WATCHED_FILES_MAX / 10 * 9;

/// `WATCHED_FILES` values.
pub mod watch_value {
    /// The entry counts towards the ordinary share (`WATCH_SHARE`): whoever deletes it
    /// gives the room back.
    pub const ORDINARY: u32 = 1 << 0;
    /// The bits above `GEN_SHIFT` hold the low bits of the file's `i_generation`: an inode
    /// with that number but another generation is a later file (the watched one was freed
    /// unseen) and is not watched. Without this bit the generation is unknown (a
    /// filesystem that does not tell it to userspace) and any inode of that number matches.
    pub const GEN: u32 = 1 << 1;
    pub const GEN_SHIFT: u32 = 2;

    /// `flags` with generation `generation` recorded.
    #[inline(always)]
    pub const fn with_generation(flags: u32, generation: u32) -> u32 {
        (flags & (GEN - 1)) | GEN | (generation << GEN_SHIFT)
    }

    /// Is an entry of value `v` the file whose inode has generation `generation`?
    #[inline(always)]
    pub const fn same_file(v: u32, generation: u32) -> bool {
        v & GEN == 0 || (v ^ (generation << GEN_SHIFT)) >> GEN_SHIFT == 0
    }
}

/// Slots of the `WATCH_SHARE` array (u64 each). Each slot has one writer, so no slot needs
/// an atomic read-modify-write across kernel and agent: ordinary entries in the map are
/// `KERNEL_ADDED + AGENT_ADDED - AGENT_REMOVED`.
pub mod watch_share {
    /// Ordinary entries the open hook inserted (atomic add in the kernel).
    pub const KERNEL_ADDED: u32 = 0;
    /// Ordinary entries the agent inserted.
    pub const AGENT_ADDED: u32 = 1;
    /// Ordinary entries the agent deleted (the kernel never deletes).
    pub const AGENT_REMOVED: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Extensions (lower case, at most this many bytes) whose files are images or metadata:
/// FNV-1a hashes in `PRECIOUS_EXTS`, pushed by the agent.
pub const PRECIOUS_EXT_LEN: usize = 16;
pub const PRECIOUS_EXTS_MAX: u32 = 256;

/// Distinct last components (FNV-1a, `leaf_hash`) of watched image and metadata names the
/// kernel matches paths against (`ns_flags::LEAF_MATCH`).
pub const WATCHED_LEAVES_MAX: u32 = 16384;

/// FNV-1a of a path's last component, byte for byte, as the kernel's path walk hashes it.
pub fn leaf_hash(name: &[u8]) -> u64 {
    fnv1a(name)
}

/// FNV-1a of an extension folded to lower case (ASCII), as the kernel hashes it.
pub fn ext_hash(ext: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in ext {
        h = fnv1a_step(h, b.to_ascii_lowercase());
    }
    h
}

/// `FileOpenEvent::watch`: what the open hook did with a file new to `WATCHED_FILES`.
pub mod open_watch {
    /// Nothing (already watched, reserve left it to the agent, or not in a watched dir).
    pub const NONE: u32 = 0;
    /// Inserted.
    pub const ADMITTED: u32 = 1;
    /// Refused and counted as `lost::WATCH_FULL` in the kernel: the agent does not count
    /// it again.
    pub const REFUSED: u32 = 2;
    /// Inserted as a candidate merged-view alias: an inode on an anonymous-device
    /// filesystem (an overlay's) with the inode number of a watched image (`IMAGE_INO`),
    /// opened for write. The agent confirms it against the opener's mount table or
    /// withdraws it.
    pub const OVERLAY: u32 = 3;
}

/// Entries of the kernel's `IMAGE_INO` set (inode numbers of watched images; LRU).
pub const IMAGE_INO_MAX: u32 = 16384;

/// Common prefix of every record. 48 bytes.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct Header {
    pub kind: u32,
    /// Which kernel backend produced it (1 tracepoint, 2 fentry/LSM).
    pub backend: u32,
    /// CLOCK_BOOTTIME nanoseconds.
    pub ts_ns: u64,
    /// Thread id of the acting task.
    pub pid: u32,
    /// Process id (thread-group id) of the acting task.
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; COMM_LEN],
}

/// Slots of the watched-inode prefilter (`WATCHED_INO`).
pub const INO_SLOTS: u32 = 1 << 16;

/// Prefilter slot of an inode number: a write hook tests it before it reads the superblock
/// and looks the (dev, ino) key up, so most unwatched writes stop one kernel read and one
/// hash lookup earlier. Set for every watched file before its key is inserted, never cleared:
/// a stale or shared slot only costs the full lookup.
#[inline(always)]
pub fn ino_slot(ino: u64) -> u32 {
    ((ino ^ (ino >> 16) ^ (ino >> 32) ^ (ino >> 48)) as u32) & (INO_SLOTS - 1)
}

/// Key of the watched-file and watched-dir maps: a file's identity.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct FileKey {
    /// Kernel-internal `dev_t` of the superblock (`MAJOR << 20 | MINOR`).
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// `sched_process_fork` for a new process (thread creations are filtered in the kernel).
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct ForkEvent {
    pub hdr: Header,
    pub child_tgid: u32,
    pub parent_tgid: u32,
    pub child_start_ns: u64,
}

#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct ExecEvent {
    pub hdr: Header,
    pub ppid: u32,
    pub euid: u32,
    pub start_ns: u64,
    pub exe: FileKey,
    pub cgroup_id: u64,
    pub filename_len: u32,
    /// Bytes of NUL-separated argv copied into `args`.
    pub args_len: u32,
    /// Total argv bytes in the process (≥ args_len when truncated).
    pub args_total: u32,
    pub old_pid: u32,
    pub filename: [u8; PATH_LEN],
    pub args: [u8; ARGS_LEN],
}

#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct ExitEvent {
    pub hdr: Header,
    pub exit_code: i32,
    pub _pad: u32,
    pub start_ns: u64,
}

/// A write-class operation on a watched file (data, size or mapping changes).
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct FileWriteEvent {
    pub hdr: Header,
    pub op: u16,
    pub flags: u16,
    pub fd: i32,
    pub file: FileKey,
    /// Byte offset of the write (-1 when unknown).
    pub offset: i64,
    /// Bytes requested (truncate: the new length; mmap: mapping length).
    pub len: u64,
    /// fallocate mode / mmap prot<<32|flags / pwritev2 flags / source fd.
    pub aux: u64,
    /// File size (`i_size`) when the event was taken.
    pub size: u64,
    pub data_len: u32,
    pub _pad: u32,
    pub data: [u8; DATA_LEN],
}

/// An open of a watched file for writing, or a create inside a watched dir.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct FileOpenEvent {
    pub hdr: Header,
    pub fd: i32,
    /// open(2) flags as passed.
    pub flags: u32,
    /// `file->f_mode` (FMODE_CREATED tells a new file).
    pub f_mode: u32,
    pub path_len: u32,
    pub file: FileKey,
    pub parent: FileKey,
    pub size: u64,
    /// `open_watch::*`.
    pub watch: u32,
    pub _pad: u32,
    pub path: [u8; PATH_LEN],
}

/// A path-level operation whose path lies in a watched directory.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct NamespaceEvent {
    pub hdr: Header,
    pub op: u16,
    pub flags: u16,
    pub dirfd: i32,
    pub dirfd2: i32,
    /// Bytes of the path (with `PATH*_TRUNCATED`, more than the buffer holds).
    pub path1_len: u16,
    pub path2_len: u16,
    /// Base directory of path1 (dirfd or cwd) or, with TARGET_IS_FD, the target file.
    pub base1: FileKey,
    pub base2: FileKey,
    /// rename flags / mode / uid / open flags.
    pub aux: u64,
    /// gid / truncate length.
    pub aux2: u64,
    pub path1: [u8; PATH_LEN],
    pub path2: [u8; PATH_LEN],
}

/// An ioctl on a watched file, directory or device, with the start of its argument.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct IoctlEvent {
    pub hdr: Header,
    pub fd: i32,
    pub cmd: u32,
    pub file: FileKey,
    pub arg: u64,
    /// Bytes of `arg` copied into `arg_data` (0 when `arg` is not a readable pointer).
    pub arg_len: u32,
    pub flags: u16,
    pub _pad: u16,
    pub arg_data: [u8; IOCTL_ARG_LEN],
    /// Directory holding the fd's entry, and the entry's name: names the object when its
    /// identity is shared (every btrfs subvolume root is inode 256 on one superblock).
    pub parent: FileKey,
    pub name_len: u16,
    pub _pad2: [u8; 6],
    pub name: [u8; IOCTL_NAME_LEN],
}

/// A watched file put into an io_uring registered-file table (`io_uring_register(2)` files
/// opcodes, or `IORING_OP_FILES_UPDATE`): later requests name it by `slot` with
/// `IOSQE_FIXED_FILE`, which the submit hook cannot resolve, so the registration is the
/// record. One per watched fd.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct UringRegisterEvent {
    pub hdr: Header,
    pub file: FileKey,
    /// The registered fd (in the registering task).
    pub fd: i32,
    /// The ring's fd (or, with `uring_register::RING_REGISTERED`, its registered index).
    pub ring_fd: i32,
    /// Index in the ring's file table: the update offset plus the fd's position.
    pub slot: u32,
    /// `uring_register::*` opcode word.
    pub opcode: u32,
    /// `uring_register::CUT` / `RING_REGISTERED`.
    pub flags: u32,
    /// fds the call passed (`nr_args` or the struct's `nr`).
    pub nr: u32,
    /// File size (`i_size`) when registered.
    pub size: u64,
}

/// Bytes of the entry name an ioctl record carries.
pub const IOCTL_NAME_LEN: usize = 64;

/// Kernel struct field offsets, located in the running kernel's BTF at load time.
/// A zero `valid` bit means the field was not found and hooks needing it must stay idle.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub task_fs: u32,
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_pid: u32,
    pub task_cred: u32,
    pub task_start_boottime: u32,
    pub task_mm: u32,
    pub task_exit_code: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub file_pos: u32,
    pub file_flags: u32,
    pub file_mode: u32,
    /// `file.f_path.dentry`
    pub file_dentry: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub inode_size: u32,
    pub inode_mode: u32,
    pub sb_dev: u32,
    pub dentry_parent: u32,
    pub dentry_inode: u32,
    /// `fs_struct.pwd.dentry`
    pub fs_pwd_dentry: u32,
    pub cred_uid: u32,
    pub cred_euid: u32,
    pub cred_gid: u32,
    pub mm_exe_file: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub bprm_filename: u32,
    pub bprm_file: u32,
    pub req_opcode: u32,
    pub req_flags: u32,
    /// `io_kiocb.cqe.fd`
    pub req_fd: u32,
    pub req_file: u32,
    /// `io_kiocb.cmd` + `io_rw.kiocb` + `kiocb.ki_pos`
    pub req_rw_pos: u32,
    /// `io_kiocb.cmd` + `io_rw.len`
    pub req_rw_len: u32,
    /// `io_kiocb.cmd` + `io_rw.addr`
    pub req_rw_addr: u32,
    /// `io_kiocb.cmd` + `io_sync.off` / `.len` / `.mode` (IORING_OP_FALLOCATE)
    pub req_sync_off: u32,
    pub req_sync_len: u32,
    pub req_sync_mode: u32,
    /// Offset of the first argument in `syscalls/sys_enter_*` records (`SC_ARGS_USUAL` on
    /// every kernel seen so far).
    pub sc_args: u32,
    /// Offset of `ret` in `syscalls/sys_exit_*` records.
    pub sc_ret: u32,
    /// Bit set of `valid::*` groups that resolved.
    pub valid: u32,
    /// `pt_regs.orig_ax`: the syscall a task is in (VFS backend dedup).
    pub regs_orig_ax: u32,
    /// io_uring namespace requests, in `io_kiocb.cmd` (prepped before submission is traced):
    /// `io_rename` (RENAMEAT) …
    pub uring_ren_odfd: u32,
    pub uring_ren_ndfd: u32,
    pub uring_ren_opath: u32,
    pub uring_ren_npath: u32,
    pub uring_ren_flags: u32,
    /// … `io_link` (LINKAT, SYMLINKAT) …
    pub uring_lnk_odfd: u32,
    pub uring_lnk_ndfd: u32,
    pub uring_lnk_opath: u32,
    pub uring_lnk_npath: u32,
    pub uring_lnk_flags: u32,
    /// … `io_unlink` (UNLINKAT) …
    pub uring_unl_dfd: u32,
    pub uring_unl_flags: u32,
    pub uring_unl_path: u32,
    /// … `io_mkdir` (MKDIRAT) …
    pub uring_mkd_dfd: u32,
    pub uring_mkd_path: u32,
    /// … whose paths are `struct filename *`: the kernel copy is at `filename.name`.
    pub filename_name: u32,
    /// `dentry.d_name.name`: the entry's name for the LSM namespace hooks.
    pub dentry_name: u32,
    /// `pt_regs.di`: first syscall argument (tells a syscall the tracepoints reported apart).
    pub regs_di: u32,
    /// Index of the dentry among `inode_setattr`'s arguments (1 since 6.3 added `idmap`).
    pub setattr_dentry_arg: u32,
    /// `iattr.ia_valid` / `.ia_mode` / `.ia_uid` / `.ia_gid`
    pub iattr_valid: u32,
    pub iattr_mode: u32,
    pub iattr_uid: u32,
    pub iattr_gid: u32,
    /// `task_struct.thread_info.status` (x86: `TS_COMPAT` while in a 32-bit syscall).
    pub task_ti_status: u32,
    /// `inode.i_uid`: the owner, which decides an event's ring lane (`emit::urgent_file`).
    pub inode_uid: u32,
    /// `inode.i_rdev`: a device node's device number (kernel `dev_t`, major << 20 | minor),
    /// which every node of one loop device shares, whatever its inode.
    pub inode_rdev: u32,
    /// `super_block.s_magic` (an `unsigned long`): an overlay's files are told by it.
    pub sb_magic: u32,
    /// `io_rsrc_update.arg` / `.nr_args` / `.offset` in `io_kiocb`'s command area: an
    /// `IORING_OP_FILES_UPDATE` request's fds array, count and first table slot.
    pub uring_upd_arg: u32,
    pub uring_upd_nr: u32,
    pub uring_upd_off: u32,
    /// `io_kiocb.ctx`: the ring a request belongs to.
    pub req_ctx: u32,
    /// The ring's registered-file table (`valid::IO_URING_FIXED`): its slot count
    /// (`io_ring_ctx.file_table.data.nr` since 6.13, `.nr_user_files` before) and slot array
    /// (`.file_table.data.nodes` / `.file_table.files`).
    pub uring_ft_nr: u32,
    pub uring_ft_slots: u32,
    /// 1 when a slot holds an `io_rsrc_node *` (6.13+), 0 when it is the tagged file pointer
    /// itself (`io_fixed_file.file_ptr`).
    pub uring_ft_nodes: u32,
    /// `io_rsrc_node.file_ptr` (6.13+).
    pub uring_node_file: u32,
    /// `inode.i_generation`: told with (dev, ino), which file an entry of `WATCHED_FILES` is
    /// (`watch_value::GEN`), so a reused inode number is not judged as the deleted file.
    pub inode_generation: u32,
    /// `pt_regs.si` / `.dx` / `.r10` / `.r8` / `.r9`: with `regs_di`, the native syscall
    /// arguments the raw syscall hook (`tp_btf/sys_enter`) reads from the saved registers.
    pub regs_si: u32,
    pub regs_dx: u32,
    pub regs_r10: u32,
    pub regs_r8: u32,
    pub regs_r9: u32,
    /// `pt_regs.bx` / `.cx` / `.bp`: with `dx`, `si`, `di`, an ia32 syscall's arguments.
    pub regs_bx: u32,
    pub regs_cx: u32,
    pub regs_bp: u32,
}

/// `OVERLAYFS_SUPER_MAGIC` (include/uapi/linux/magic.h).
pub const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;

/// Where the arguments of a `syscalls/sys_enter_*` record start, and `ret` of a
/// `sys_exit_*` one, in the layout every kernel since 2.6.33 has (`struct
/// syscall_trace_enter`/`_exit`: the 8-byte `trace_entry`, then the number in an 8-byte
/// slot). When the format files agree, the programs read arguments by context loads at
/// constant offsets instead of a `bpf_probe_read_kernel` call each.
pub const SC_ARGS_USUAL: u32 = 16;
pub const SC_RET_USUAL: u32 = 16;

/// Groups of offsets; a hook family runs only when its group resolved.
pub mod valid {
    pub const FILES: u32 = 1 << 0;
    pub const PROC: u32 = 1 << 1;
    pub const CWD: u32 = 1 << 2;
    pub const IO_URING: u32 = 1 << 3;
    pub const ARGS: u32 = 1 << 4;
    pub const VFS: u32 = 1 << 5;
    pub const IO_URING_NS: u32 = 1 << 6;
    /// Namespace and attribute changes observed at the LSM hooks (VFS backend).
    pub const VFS_NS: u32 = 1 << 7;
    /// 32-bit syscalls told apart at `raw_syscalls/sys_enter` (tracepoint backend).
    pub const COMPAT: u32 = 1 << 8;
    /// `inode.i_rdev`: any node of an attached loop device is its alias (`WATCHED_RDEV`).
    pub const RDEV: u32 = 1 << 9;
    /// `super_block.s_magic`: the open hook's overlay candidates (`open_watch::OVERLAY`).
    pub const SB_MAGIC: u32 = 1 << 10;
    /// `io_rsrc_update`: fixed-file updates submitted through a ring are read.
    pub const IO_URING_UPD: u32 = 1 << 11;
    /// The ring's registered-file table: writes through fixed files are resolved and judged
    /// one by one (with the direct fd walk only).
    pub const IO_URING_FIXED: u32 = 1 << 12;
    /// `inode.i_generation`: `WATCHED_FILES` entries are checked against the inode's.
    pub const GENERATION: u32 = 1 << 13;
    /// `pt_regs` argument registers: the raw syscall hook (`--syscall-hook raw`) can run.
    pub const REGS_ARGS: u32 = 1 << 14;
}

/// Slots of the compat tail-call table: one per ia32 syscall number the hooks handle (all
/// are below 512).
pub const COMPAT_SLOTS: u32 = 512;

/// Slots of each tail-call table of the raw syscall hook (`--syscall-hook raw`): one per
/// native or ia32 syscall number (all hooked ones are below 512).
pub const RAW_SLOTS: u32 = 512;

/// `RUNTIME` map bits, set by the agent after attaching (not known at load time).
pub mod runtime {
    /// The VFS write hook is live: io_uring writes are reported there, not at submission.
    pub const VFS_WRITES: u32 = 1 << 0;
    /// LSM decisions are live (monitor or enforce per protected object).
    pub const ENFORCE_ACTIVE: u32 = 1 << 1;
    /// Global dry-run: report what would be denied, deny nothing.
    pub const DRY_RUN: u32 = 1 << 2;
    /// The LSM namespace hooks observe: they report what the syscall hooks did not.
    pub const LSM_OBSERVE: u32 = 1 << 3;
    /// The circuit breaker is live (`RESPOND`, `RESPOND_PATHS`, `RESPOND_TRUSTED` loaded).
    pub const RESPOND_ACTIVE: u32 = 1 << 4;
    /// The agent counts `WATCHED_FILES` past its ordinary share: new ordinary files are
    /// left to it (images and metadata the kernel still inserts at once).
    pub const WATCH_RESERVE: u32 = 1 << 5;
}

/// Circuit breaker (`RESPOND`, `RESPOND_PATHS` values and `RespondEvent::class`): which
/// operations on a protected object draw a signal, which signal, and whether it is sent.
pub mod respond {
    /// A write-class operation overlapping the file's metadata ranges (`WRITE_FILTER`, or the
    /// target's own ranges until the classifier published them).
    pub const METADATA_WRITE: u32 = 1 << 0;
    /// A snapshot-destroying ioctl (the `DENY_IOCTLS` cmds) on the object.
    pub const SNAPSHOT_IOCTL: u32 = 1 << 1;
    pub const RENAME: u32 = 1 << 2;
    /// truncate(2), ftruncate(2).
    pub const TRUNCATE: u32 = 1 << 3;
    pub const UNLINK: u32 = 1 << 4;
    pub const CLASSES: u32 = METADATA_WRITE | SNAPSHOT_IOCTL | RENAME | TRUNCATE | UNLINK;
    /// Stable names of the classes, as the policy's `[respond] rules` lists them.
    pub const NAMES: [(u32, &str); 5] = [
        (METADATA_WRITE, "metadata_write"),
        (SNAPSHOT_IOCTL, "snapshot_ioctl"),
        (RENAME, "rename"),
        (TRUNCATE, "truncate"),
        (UNLINK, "unlink"),
    ];
    /// The value is a store directory's (ioctls on it are judged; its entries have their own).
    pub const DIR: u32 = 1 << 8;
    /// Send SIGKILL (else SIGSTOP).
    pub const KILL: u32 = 1 << 16;
    /// After the SIGSTOP, the agent freezes the process's cgroup.
    pub const FREEZE: u32 = 1 << 17;
    /// Report what would be done, send nothing (dry-run, or a store in monitor mode).
    pub const DRY_RUN: u32 = 1 << 30;
    pub const SIGKILL: u32 = 9;
    pub const SIGSTOP: u32 = 19;
}

/// `RESPOND` value: a protected file or store directory, its `respond::*` bits, and the
/// metadata ranges known when it was loaded (used until `WRITE_FILTER` has the file).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RespondTarget {
    pub flags: u32,
    /// Ranges used in `ranges` (at most FILTER_RANGES).
    pub count: u32,
    pub ranges: [ByteRange; FILTER_RANGES],
}

/// `RESPOND_ENTRIES` key: a protected image by its directory and name, for operations that
/// name it relative to a directory fd or the cwd.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RespondEntry {
    pub dir: FileKey,
    /// FNV-1a of the entry name.
    pub name_hash: u64,
}

/// The circuit breaker acted on the current process (or would have, with `DRY_RUN`).
/// `hdr.ts_ns` is when the hook began judging the syscall; `signal_ns` when the signal
/// helper returned.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct RespondEvent {
    pub hdr: Header,
    /// One `respond::*` class bit: what the process did.
    pub class: u32,
    /// Signal sent (9, 19), or 0 when nothing was sent (dry-run).
    pub signal: u32,
    /// `bpf_send_signal`'s return (0: queued).
    pub ret: i32,
    /// The matched `RESPOND`/`RESPOND_PATHS` value.
    pub flags: u32,
    /// The protected object: the file, the store directory, or zero when matched by path.
    pub target: FileKey,
    /// Executable identity of the actor.
    pub exe: FileKey,
    pub signal_ns: u64,
    /// Write offset (-1 unknown) and length; 0 for other classes.
    pub offset: i64,
    pub len: u64,
    /// `WriteOp` of a write, ioctl cmd, or `NsOp` of a path operation.
    pub aux: u64,
    /// FNV-1a of the absolute path a path operation named (0 otherwise).
    pub path_hash: u64,
}

/// `PROTECTED` values: operations denied to untrusted executables, plus the mode bit.
pub mod deny {
    pub const WRITE: u32 = 1 << 0;
    pub const OPEN_WRITE: u32 = 1 << 1;
    pub const TRUNCATE: u32 = 1 << 2;
    pub const UNLINK: u32 = 1 << 3;
    pub const RENAME: u32 = 1 << 4;
    pub const LINK: u32 = 1 << 5;
    pub const MMAP: u32 = 1 << 6;
    pub const IOCTL: u32 = 1 << 7;
    /// Ops a protected *directory* applies to its entries.
    pub const DIR_OPS: u32 = UNLINK | RENAME | LINK;
    /// Deny (EPERM) rather than only report.
    pub const MODE_ENFORCE: u32 = 1 << 31;
    pub const NAMES: [(u32, &str); 8] = [
        (WRITE, "write"),
        (OPEN_WRITE, "open_write"),
        (TRUNCATE, "truncate"),
        (UNLINK, "unlink"),
        (RENAME, "rename"),
        (LINK, "link"),
        (MMAP, "mmap_write"),
        (IOCTL, "ioctl"),
    ];
}

/// An LSM decision on a protected object: denied, or would have been (monitor/dry-run).
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct EnforceEvent {
    pub hdr: Header,
    /// One `deny::*` bit: the operation judged.
    pub op: u32,
    /// 1 when the kernel returned EPERM.
    pub denied: u32,
    /// The protected object whose rule matched (file or its directory).
    pub target: FileKey,
    /// The object operated on (may equal `target`).
    pub object: FileKey,
    /// Executable identity of the actor.
    pub exe: FileKey,
    /// ioctl cmd / mmap prot / open f_mode / rename side.
    pub aux: u64,
}

/// Byte ranges of a classified file that every write must be reported for (`WRITE_FILTER`
/// values): writes by trusted writers that miss all of them are dropped in the kernel.
pub const FILTER_RANGES: usize = 16;

/// Half-open byte range `[start, end)`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

/// `WRITE_FILTER` value: which trusted writers may skip reporting, and what they may not miss.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteFilter {
    /// `filter_actor` bits: writers whose `TRUSTED_WRITERS` value shares one may be filtered.
    pub actors: u32,
    /// Ranges used in `ranges` (at most FILTER_RANGES).
    pub count: u32,
    pub ranges: [ByteRange; FILTER_RANGES],
}

/// `TRUSTED_WRITERS` values and `WriteFilter::actors`: the policy actor groups a file
/// format's rules trust.
pub mod filter_actor {
    /// `qemu`: trusted for qcow2 images.
    pub const QEMU: u32 = 1 << 0;
    /// `lvm`: trusted for LVM physical volumes.
    pub const LVM: u32 = 1 << 1;
}

/// `WATCHED_DIRS` values.
pub mod dir_flags {
    /// The directory itself is watched (recursively).
    pub const WATCHED: u32 = 1 << 0;
    /// The directory is an ancestor of a watched directory.
    pub const ANCESTOR: u32 = 1 << 1;
    /// Every file in it is metadata (libvirt, LVM stores): admitted past the ordinary share.
    pub const METADATA: u32 = 1 << 2;
}

/// FNV-1a 64 over path bytes; the kernel hashes each directory prefix of an absolute
/// path with it and looks the hash up among the watched directories.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[inline(always)]
pub fn fnv1a_step(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(FNV_PRIME)
}

pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in bytes {
        h = fnv1a_step(h, b);
    }
    h
}

/// State kept between `sys_enter_open*` and `sys_exit_open*` of one thread.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct OpenStash {
    pub path_ptr: u64,
    pub flags: u32,
    pub dirfd: i32,
}

/// A namespace syscall the tracepoints already reported, so the LSM hook it reaches stays
/// quiet: keyed by pid_tgid, matched on the syscall number and first argument.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default)]
pub struct NsMark {
    pub nr: i64,
    pub arg0: u64,
    pub ts_ns: u64,
}

/// Run-time settings the agent passes to the programs as a read-only global.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default)]
pub struct AgentConfig {
    /// The agent's own tgid: its reads and bookkeeping are never reported.
    pub agent_tgid: u32,
    /// Report every process's fork/exec/exit (needed for lineage).
    pub process_events: u32,
    /// How the programs walk fd → file → inode (`fd_walk`): a load-time constant, so the
    /// verifier prunes the other walk.
    pub fd_walk: u32,
    /// vmlinux BTF id of `struct file`, the `bpf_rdonly_cast` target of the direct walk.
    pub btf_file: u32,
    /// vmlinux BTF id of `struct mm_struct` (0: unknown). The direct walk casts the fd slot's
    /// address, less `exe_file`'s offset, to it, so the slot is one plain load of a typed
    /// `struct file *` instead of a `bpf_probe_read_kernel` call.
    pub btf_mm: u32,
    pub _pad: u32,
    /// ia32 syscall numbers with a raw handler (`RAW_COMPAT_TAIL`), one bit each
    /// ([`SyscallSet`]): the 32-bit hooks skip the ia32 test for any other syscall.
    pub compat_ids: SyscallSet,
    /// Numbers with a raw handler on either ABI: raw mode's `syscall_enter` returns at once
    /// for any other syscall.
    pub hooked_ids: SyscallSet,
}

/// A set of syscall numbers below [`RAW_SLOTS`], one bit each.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SyscallSet(pub [u64; RAW_SLOTS as usize / 64]);

impl SyscallSet {
    pub fn insert(&mut self, nr: u32) {
        if nr < RAW_SLOTS {
            self.0[(nr / 64) as usize] |= 1 << (nr % 64);
        }
    }

    #[inline(always)]
    pub fn contains(&self, nr: u32) -> bool {
        nr < RAW_SLOTS && self.0[(nr / 64) as usize & 7] & (1 << (nr % 64)) != 0
    }
}

/// The fd → file → inode walk the programs run (`AgentConfig::fd_walk`).
pub mod fd_walk {
    /// A chain of `bpf_probe_read_kernel` calls: every kernel.
    pub const PROBE_READ: u32 = 0;
    /// BTF pointer loads from `bpf_get_current_task_btf()`, the fd slot's file cast with the
    /// `bpf_rdonly_cast` kfunc (6.2+).
    pub const DIRECT: u32 = 1;
    /// The imm of the placeholder helper call the programs carry for `bpf_rdonly_cast`: no
    /// helper has this number. The loader rewrites each into the kfunc call (`src_reg` 2, imm
    /// the kfunc's vmlinux BTF id) or, for the probe-read walk, into `r0 = 0`.
    pub const RDONLY_CAST_MARK: i32 = 0x5eed_ca57;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, no pointers, padding is explicit.
    unsafe impl aya::Pod for super::FileKey {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::AgentConfig {}
    unsafe impl aya::Pod for super::OpenStash {}
    unsafe impl aya::Pod for super::WriteFilter {}
    unsafe impl aya::Pod for super::RespondTarget {}
    unsafe impl aya::Pod for super::RespondEntry {}
    unsafe impl aya::Pod for super::Blinded {}
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<Header>() == 48);
    assert!(size_of::<Backend>() == size_of::<u32>());
    // `LostCause::ALL` is in slot order: `from_u32` indexes it.
    let mut i = 0;
    while i < lost::LostCause::ALL.len() {
        assert!(lost::LostCause::ALL[i] as u32 == i as u32);
        i += 1;
    }
    assert!(offset_of!(Header, ts_ns) == 8);
    assert!(offset_of!(Header, comm) == 32);
    assert!(size_of::<FileKey>() == 16);
    assert!(size_of::<ForkEvent>() == 64);
    assert!(size_of::<ExecEvent>() == 48 + 56 + PATH_LEN + ARGS_LEN);
    assert!(offset_of!(ExecEvent, filename) == 104);
    assert!(size_of::<ExitEvent>() == 64);
    assert!(offset_of!(FileWriteEvent, file) == 56);
    assert!(offset_of!(FileWriteEvent, offset) == 72);
    assert!(offset_of!(FileWriteEvent, data) == 112);
    assert!(size_of::<FileWriteEvent>() == 112 + DATA_LEN);
    assert!(offset_of!(FileOpenEvent, file) == 64);
    assert!(offset_of!(FileOpenEvent, watch) == 104);
    assert!(offset_of!(FileOpenEvent, path) == 112);
    assert!(size_of::<FileOpenEvent>() == 112 + PATH_LEN);
    assert!(offset_of!(NamespaceEvent, base1) == 64);
    assert!(offset_of!(NamespaceEvent, path1) == 112);
    assert!(size_of::<NamespaceEvent>() == 112 + 2 * PATH_LEN);
    assert!(offset_of!(IoctlEvent, arg_data) == 88);
    assert!(offset_of!(IoctlEvent, parent) == 88 + IOCTL_ARG_LEN);
    assert!(size_of::<IoctlEvent>() == 88 + IOCTL_ARG_LEN + 24 + IOCTL_NAME_LEN);
    assert!(size_of::<KernelOffsets>() == 91 * 4);
    assert!(offset_of!(KernelOffsets, inode_generation) == 82 * 4);
    assert!(offset_of!(KernelOffsets, inode_uid) == 71 * 4);
    assert!(offset_of!(KernelOffsets, inode_rdev) == 72 * 4);
    assert!(size_of::<NsMark>() == 24);
    assert!(offset_of!(AgentConfig, compat_ids) == 24);
    assert!(size_of::<SyscallSet>() == RAW_SLOTS as usize / 8);
    assert!(size_of::<AgentConfig>() == 24 + 2 * RAW_SLOTS as usize / 8);
    assert!(size_of::<OpenStash>() == 16);
    assert!(size_of::<Blinded>() == 64);
    assert!(offset_of!(Blinded, file) == 8);
    assert!(offset_of!(Blinded, comm) == 48);
    assert!(size_of::<EnforceEvent>() == 48 + 8 + 48 + 8);
    assert!(size_of::<ByteRange>() == 16);
    assert!(offset_of!(WriteFilter, ranges) == 8);
    assert!(size_of::<WriteFilter>() == 8 + 16 * FILTER_RANGES);
    assert!(size_of::<RespondTarget>() == size_of::<WriteFilter>());
    assert!(size_of::<RespondEntry>() == 24);
    assert!(offset_of!(RespondEvent, target) == 64);
    assert!(offset_of!(RespondEvent, signal_ns) == 96);
    assert!(size_of::<RespondEvent>() == 48 + 16 + 32 + 40);
    assert!(offset_of!(UringRegisterEvent, file) == 48);
    assert!(offset_of!(UringRegisterEvent, slot) == 72);
    assert!(offset_of!(UringRegisterEvent, size) == 88);
    assert!(size_of::<UringRegisterEvent>() == 96);
};

#[cfg(test)]
mod ino_slot_tests {
    extern crate std;
    use super::*;

    /// Filesystems hand out inode numbers in runs: a run of 64 Ki never shares a slot, so
    /// a store's files do not drag unwatched neighbours through the full lookup.
    #[test]
    fn a_run_of_inode_numbers_fills_distinct_slots() {
        for base in [0u64, 1 << 20, 0x1234_5678_0000, u64::MAX - 0xffff] {
            let mut seen = std::vec![false; INO_SLOTS as usize];
            for ino in base..=base + 0xffff {
                let s = ino_slot(ino);
                assert!(s < INO_SLOTS);
                assert!(!seen[s as usize], "{ino:#x} shares slot {s}");
                seen[s as usize] = true;
            }
        }
    }
}

#[cfg(test)]
mod watch_value_tests {
    use super::watch_value::*;

    /// An entry matches its own file's generation, not another's (within the 30 bits kept),
    /// and an entry made without one matches any; the ordinary bit survives.
    #[test]
    fn an_entry_matches_its_generation_only() {
        for g in [0u32, 1, 0x3fff_ffff, 0xdead_beef, u32::MAX] {
            for flags in [0, ORDINARY] {
                let v = with_generation(flags, g);
                assert_eq!(v & ORDINARY, flags);
                assert!(v & GEN != 0);
                assert!(same_file(v, g));
                assert!(!same_file(v, g ^ 1));
                assert!(!same_file(v, g.wrapping_add(1 << 29)));
                assert!(same_file(flags, g), "no generation recorded: any matches");
            }
        }
        // Only the low 30 bits are kept: the top two do not tell files apart.
        assert!(same_file(with_generation(0, 5), 5 | (3 << 30)));
    }
}
