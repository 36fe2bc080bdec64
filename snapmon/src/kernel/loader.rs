//! Load stage: load the embedded eBPF object, hand it the BTF offsets, attach every hook the
//! running kernel allows and report, per hook, what attached and why not.

use anyhow::{bail, Context as _};
use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{
        fentry::FEntryLink, links::FdLink, tp_btf::BtfTracePointLink, trace_point::TracePointLink,
        BtfTracePoint, FEntry, Lsm, TracePoint,
    },
    Btf as AyaBtf, Ebpf, EbpfLoader,
};
use snapmon_common::{fd_walk, AgentConfig, FileKey, KernelOffsets, SyscallSet};
use std::os::fd::{AsFd as _, AsRawFd as _};

use super::{
    btf::Btf,
    offsets::{self, format_field_offset, Missing},
    verify::{self, verbose, Load, Loaded},
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/snapmon"));

pub const TRACEFS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// One hook and what the write paths it covers mean to a user.
pub struct HookSpec {
    pub program: &'static str,
    pub attach: Attach,
    pub covers: &'static str,
}

pub enum Attach {
    /// `syscalls/<name>`
    Syscall(&'static str),
    /// `syscalls/<the hook's program name>`, running the code of syscall program `code`,
    /// loaded (and verified) once for every hook that shares it.
    SyscallShared(&'static str),
    /// BTF tracepoint; first name the kernel knows wins.
    Btf(&'static [&'static str]),
    /// fentry on a kernel function (VFS backend); refused on some kernels.
    FEntry(&'static str),
    /// BPF LSM hook (enforcement); attached only when enforcement is requested.
    Lsm(&'static str),
    /// BPF LSM inode hook that also observes (VFS backend, namespace side); attached
    /// wherever BPF LSM is active.
    LsmNs(&'static str),
    /// `raw_syscalls/sys_enter`, handing 32-bit syscalls to the programs of [`COMPAT`];
    /// attached only where the VFS write hook (which sees them) is not live.
    Compat,
}

/// ia32 syscall number → the program that judges it (arch/x86/entry/syscalls/syscall_32.tbl).
/// Native hooks where the arguments mean the same; `compat_*` where the ia32 ABI splits a
/// 64-bit argument in two or uses 32-bit iovecs. Not here, so still unseen from 32-bit code
/// on the tracepoint backend: opens and creates (judged at syscall exit) and the timestamp
/// calls with 32-bit time structs.
pub const COMPAT: &[(u32, &str)] = &[
    (4, "sys_enter_write"),
    (181, "compat_pwrite64"),
    (146, "compat_writev"),
    (334, "compat_pwritev"),
    (379, "compat_pwritev2"),
    (93, "sys_enter_ftruncate"),
    (194, "compat_ftruncate64"),
    (324, "compat_fallocate"),
    (377, "sys_enter_copy_file_range"),
    (313, "sys_enter_splice"),
    (187, "sys_enter_sendfile64"),
    (239, "sys_enter_sendfile64"),
    // old_mmap takes its arguments by pointer; mmap2 its offset in pages.
    (90, "compat_old_mmap"),
    (192, "compat_mmap2"),
    // 32-bit iocb pointers (the iocbs themselves are the same on either ABI).
    (248, "compat_io_submit"),
    (54, "sys_enter_ioctl"),
    (10, "sys_enter_unlink"),
    (301, "sys_enter_unlinkat"),
    (40, "sys_enter_rmdir"),
    (38, "sys_enter_rename"),
    (302, "sys_enter_renameat"),
    (353, "sys_enter_renameat2"),
    (9, "sys_enter_link"),
    (303, "sys_enter_linkat"),
    (83, "sys_enter_symlink"),
    (304, "sys_enter_symlinkat"),
    (39, "sys_enter_mkdir"),
    (296, "sys_enter_mkdirat"),
    (15, "sys_enter_chmod"),
    (94, "sys_enter_fchmod"),
    (306, "sys_enter_fchmodat"),
    (452, "sys_enter_fchmodat2"),
    (182, "sys_enter_chown"),
    (212, "sys_enter_chown"),
    (16, "sys_enter_lchown"),
    (198, "sys_enter_lchown"),
    (95, "sys_enter_fchown"),
    (207, "sys_enter_fchown"),
    (298, "sys_enter_fchownat"),
    // truncate64(path, len_lo, len_hi): the low half is the length the native hook reports.
    (92, "sys_enter_truncate"),
    (193, "sys_enter_truncate"),
    (412, "sys_enter_utimensat"),
    // Same arguments: the files structs carry 64-bit pointers on either ABI.
    (427, "sys_enter_io_uring_register"),
];

/// How the syscall entry hooks run (`--syscall-hook`, `SNAPMON_SYSCALL_HOOK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyscallHook {
    /// `Raw` where it runs and the syscalls' tracepoints are the write route: the direct fd
    /// walk, the argument registers in BTF and no VFS write hook (fentry refused). Else
    /// `Tracepoint`. The bench's VM-host syscall mix is what decided it (#19 item 3).
    #[default]
    Auto,
    /// One `tracepoint/syscalls/sys_enter_*` program per hooked syscall: nothing runs on the
    /// syscalls nobody hooks.
    Tracepoint,
    /// One `tp_btf/sys_enter` program (`syscall_enter`) for every syscall, tail-calling the
    /// handler of the syscall's number ([`RAW`]): cheaper per hooked syscall, dearer on
    /// every other one. Needs `tp_btf` and the direct fd walk (6.2+).
    Raw,
}

impl SyscallHook {
    pub const ALL: [SyscallHook; 3] =
        [SyscallHook::Auto, SyscallHook::Tracepoint, SyscallHook::Raw];

    pub fn name(self) -> &'static str {
        match self {
            SyscallHook::Auto => "auto",
            SyscallHook::Tracepoint => "tracepoint",
            SyscallHook::Raw => "raw",
        }
    }

    pub fn parse(s: &str) -> Option<SyscallHook> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }

    /// `SNAPMON_SYSCALL_HOOK` (how tests and benches pick the mode), else the default; an
    /// unknown value is an error, not a silent default.
    pub fn from_env() -> anyhow::Result<SyscallHook> {
        match std::env::var("SNAPMON_SYSCALL_HOOK") {
            Ok(v) if !v.is_empty() => Self::parse(&v).with_context(|| {
                format!("SNAPMON_SYSCALL_HOOK={v}: expected `auto`, `tracepoint` or `raw`")
            }),
            _ => Ok(SyscallHook::default()),
        }
    }

    /// The mode `Auto` stands for, given what this load has: `raw_runs` (direct walk and
    /// argument registers) and whether the VFS write hook attached.
    fn resolve(self, raw_runs: bool, vfs: bool) -> SyscallHook {
        match self {
            SyscallHook::Auto if raw_runs && !vfs => SyscallHook::Raw,
            SyscallHook::Auto => SyscallHook::Tracepoint,
            m => m,
        }
    }
}

/// The VFS write hook (fentry): where it attaches, it owns writes.
const VFS_WRITE_HOOK: &str = "rw_verify_area";

/// The raw hook's handlers: (x86_64 syscall number, the tracepoint program whose code it runs,
/// the `tp_btf/sys_enter` program): every `sys_enter_*` hook. The exit hooks (`sys_exit_*`)
/// stay on their tracepoints in raw mode.
pub const RAW: &[(u32, &str, &str)] = &[
    (1, "sys_enter_write", "raw_write"),
    (18, "sys_enter_pwrite64", "raw_pwrite64"),
    (20, "sys_enter_writev", "raw_writev"),
    (296, "sys_enter_pwritev", "raw_pwritev"),
    (328, "sys_enter_pwritev2", "raw_pwritev2"),
    (326, "sys_enter_copy_file_range", "raw_copy_file_range"),
    (275, "sys_enter_splice", "raw_splice"),
    (40, "sys_enter_sendfile64", "raw_sendfile64"),
    (285, "sys_enter_fallocate", "raw_fallocate"),
    (77, "sys_enter_ftruncate", "raw_ftruncate"),
    (9, "sys_enter_mmap", "raw_mmap"),
    (209, "sys_enter_io_submit", "raw_io_submit"),
    (427, "sys_enter_io_uring_register", "raw_io_uring_register"),
    (16, "sys_enter_ioctl", "raw_ioctl"),
    (257, "sys_enter_openat", "raw_openat"),
    (2, "sys_enter_open", "raw_open"),
    (85, "sys_enter_creat", "raw_creat"),
    (437, "sys_enter_openat2", "raw_openat2"),
    (87, "sys_enter_unlink", "raw_unlink"),
    (263, "sys_enter_unlinkat", "raw_unlinkat"),
    (84, "sys_enter_rmdir", "raw_rmdir"),
    (82, "sys_enter_rename", "raw_rename"),
    (264, "sys_enter_renameat", "raw_renameat"),
    (316, "sys_enter_renameat2", "raw_renameat2"),
    (86, "sys_enter_link", "raw_link"),
    (265, "sys_enter_linkat", "raw_linkat"),
    (88, "sys_enter_symlink", "raw_symlink"),
    (266, "sys_enter_symlinkat", "raw_symlinkat"),
    (83, "sys_enter_mkdir", "raw_mkdir"),
    (258, "sys_enter_mkdirat", "raw_mkdirat"),
    (90, "sys_enter_chmod", "raw_chmod"),
    (268, "sys_enter_fchmodat", "raw_fchmodat"),
    (452, "sys_enter_fchmodat2", "raw_fchmodat2"),
    (91, "sys_enter_fchmod", "raw_fchmod"),
    (92, "sys_enter_chown", "raw_chown"),
    (94, "sys_enter_lchown", "raw_lchown"),
    (260, "sys_enter_fchownat", "raw_fchownat"),
    (93, "sys_enter_fchown", "raw_fchown"),
    (76, "sys_enter_truncate", "raw_truncate"),
    (280, "sys_enter_utimensat", "raw_utimensat"),
    (132, "sys_enter_utime", "raw_utime"),
    (235, "sys_enter_utimes", "raw_utimes"),
    (261, "sys_enter_futimesat", "raw_futimesat"),
];

/// The ia32 numbers with a raw handler: every slot `raw_compat_table` can fill.
pub fn compat_ids() -> SyscallSet {
    let mut set = SyscallSet::default();
    for &(nr, name) in COMPAT {
        if raw_handler(name).is_some() {
            set.insert(nr);
        }
    }
    set
}

/// The numbers with a raw handler on either ABI: every slot `raw_hook` and
/// `raw_compat_table` can fill (raw mode's `syscall_enter` returns at once for the others).
pub fn hooked_ids() -> SyscallSet {
    let mut set = compat_ids();
    for &(nr, _, _) in RAW {
        set.insert(nr);
    }
    set
}

/// The raw handler of a tracepoint or compat program ([`RAW`], `compat_*` → `raw_compat_*`).
pub fn raw_handler(program: &str) -> Option<&'static str> {
    if let Some((_, _, raw)) = RAW.iter().find(|(_, p, _)| *p == program) {
        return Some(raw);
    }
    const COMPAT_RAW: &[(&str, &str)] = &[
        ("compat_pwrite64", "raw_compat_pwrite64"),
        ("compat_ftruncate64", "raw_compat_ftruncate64"),
        ("compat_fallocate", "raw_compat_fallocate"),
        ("compat_writev", "raw_compat_writev"),
        ("compat_pwritev", "raw_compat_pwritev"),
        ("compat_pwritev2", "raw_compat_pwritev2"),
        ("compat_io_submit", "raw_compat_io_submit"),
        ("compat_old_mmap", "raw_compat_old_mmap"),
        ("compat_mmap2", "raw_compat_mmap2"),
    ];
    COMPAT_RAW
        .iter()
        .find(|(p, _)| *p == program)
        .map(|(_, r)| *r)
}

macro_rules! sc {
    ($name:literal, $covers:literal) => {
        HookSpec {
            program: $name,
            attach: Attach::Syscall($name),
            covers: $covers,
        }
    };
}

pub const HOOKS: &[HookSpec] = &[
    HookSpec {
        program: "sched_process_fork",
        attach: Attach::Btf(&["sched_process_fork"]),
        covers: "process lineage",
    },
    HookSpec {
        program: "sched_process_exec",
        attach: Attach::Btf(&["sched_process_exec"]),
        covers: "process lineage",
    },
    HookSpec {
        program: "sched_process_exit",
        attach: Attach::Btf(&["sched_process_exit"]),
        covers: "process lineage",
    },
    HookSpec {
        program: "io_uring_submit_req",
        attach: Attach::Btf(&["io_uring_submit_req", "io_uring_submit_sqe"]),
        covers: "io_uring writes",
    },
    HookSpec {
        program: "rw_verify_area",
        attach: Attach::FEntry("rw_verify_area"),
        covers: "VFS writes below the syscall layer (io_uring incl. registered files, loop devices, kernel writers, 32-bit programs)",
    },
    HookSpec {
        program: "truncate_pagecache_range",
        attach: Attach::FEntry("truncate_pagecache_range"),
        covers: "byte ranges freed below the syscall layer (loop-device discard, nfsd fallocate)",
    },
    HookSpec {
        program: "vfs_clone_file_range",
        attach: Attach::FEntry("vfs_clone_file_range"),
        covers: "reflinks below the syscall layer (overlayfs copy-up, nfsd CLONE)",
    },
    HookSpec { program: "lsm_file_permission", attach: Attach::Lsm("file_permission"), covers: "enforce: write" },
    HookSpec { program: "lsm_file_open", attach: Attach::Lsm("file_open"), covers: "enforce: open for write" },
    HookSpec { program: "lsm_path_truncate", attach: Attach::Lsm("path_truncate"), covers: "enforce: truncate" },
    HookSpec { program: "lsm_inode_unlink", attach: Attach::LsmNs("inode_unlink"), covers: "unlink through any name or kernel thread; enforce: unlink" },
    HookSpec { program: "lsm_inode_rename", attach: Attach::LsmNs("inode_rename"), covers: "rename through any name or kernel thread; enforce: rename" },
    HookSpec { program: "lsm_inode_link", attach: Attach::LsmNs("inode_link"), covers: "link through any name or kernel thread; enforce: link" },
    HookSpec { program: "lsm_inode_rmdir", attach: Attach::LsmNs("inode_rmdir"), covers: "rmdir through any name or kernel thread" },
    HookSpec { program: "lsm_inode_mkdir", attach: Attach::LsmNs("inode_mkdir"), covers: "mkdir through any name or kernel thread" },
    HookSpec { program: "lsm_inode_symlink", attach: Attach::LsmNs("inode_symlink"), covers: "symlink through any name or kernel thread" },
    HookSpec { program: "lsm_inode_setattr", attach: Attach::LsmNs("inode_setattr"), covers: "chmod/chown/utimes through any name or kernel thread" },
    HookSpec { program: "lsm_inode_setattr_idmap", attach: Attach::LsmNs("inode_setattr"), covers: "chmod/chown/utimes through any name or kernel thread" },
    HookSpec { program: "lsm_mmap_file", attach: Attach::Lsm("mmap_file"), covers: "enforce: shared writable mmap" },
    HookSpec { program: "lsm_file_ioctl", attach: Attach::Lsm("file_ioctl"), covers: "enforce: snapshot-destroying ioctls" },
    sc!("sys_enter_write", "write"),
    sc!("sys_enter_pwrite64", "pwrite"),
    sc!("sys_enter_writev", "writev"),
    sc!("sys_enter_pwritev", "pwritev"),
    sc!("sys_enter_pwritev2", "pwritev2"),
    sc!("sys_enter_copy_file_range", "copy_file_range"),
    sc!("sys_enter_splice", "splice"),
    sc!("sys_enter_sendfile64", "sendfile"),
    sc!("sys_enter_fallocate", "fallocate/punch-hole"),
    sc!("sys_enter_ftruncate", "ftruncate"),
    sc!("sys_enter_mmap", "shared writable mmap"),
    sc!("sys_enter_io_submit", "linux-aio writes"),
    sc!("sys_enter_io_uring_register", "io_uring registered (fixed) files"),
    sc!("sys_enter_ioctl", "ioctls (dm, btrfs, zfs, clone, freeze)"),
    sc!("sys_exit_ioctl", "loop attach/detach outcomes"),
    sc!("sys_enter_openat", "open for write / create"),
    sc!("sys_exit_openat", "open for write / create"),
    sc!("sys_enter_open", "open for write / create"),
    HookSpec {
        program: "sys_exit_open",
        attach: Attach::SyscallShared("sys_exit_openat"),
        covers: "open for write / create",
    },
    sc!("sys_enter_creat", "create"),
    HookSpec {
        program: "sys_exit_creat",
        attach: Attach::SyscallShared("sys_exit_openat"),
        covers: "create",
    },
    sc!("sys_enter_openat2", "open for write / create"),
    HookSpec {
        program: "sys_exit_openat2",
        attach: Attach::SyscallShared("sys_exit_openat"),
        covers: "open for write / create",
    },
    sc!("sys_enter_unlink", "unlink"),
    sc!("sys_enter_unlinkat", "unlink/rmdir"),
    sc!("sys_enter_rmdir", "rmdir"),
    sc!("sys_enter_rename", "rename"),
    sc!("sys_enter_renameat", "rename"),
    sc!("sys_enter_renameat2", "rename"),
    sc!("sys_enter_link", "link"),
    sc!("sys_enter_linkat", "link"),
    sc!("sys_enter_symlink", "symlink"),
    sc!("sys_enter_symlinkat", "symlink"),
    sc!("sys_enter_mkdir", "mkdir"),
    sc!("sys_enter_mkdirat", "mkdir"),
    sc!("sys_enter_chmod", "chmod"),
    sc!("sys_enter_fchmodat", "chmod"),
    sc!("sys_enter_fchmodat2", "chmod"),
    sc!("sys_enter_fchmod", "chmod"),
    sc!("sys_enter_chown", "chown"),
    sc!("sys_enter_lchown", "chown"),
    sc!("sys_enter_fchownat", "chown"),
    sc!("sys_enter_fchown", "chown"),
    sc!("sys_enter_truncate", "truncate"),
    sc!("sys_enter_utimensat", "timestamps"),
    sc!("sys_enter_utime", "timestamps"),
    sc!("sys_enter_utimes", "timestamps"),
    sc!("sys_enter_futimesat", "timestamps"),
    HookSpec {
        program: "raw_sys_enter",
        attach: Attach::Compat,
        covers: "32-bit (ia32) programs' writes, renames, unlinks, ioctls and attribute changes",
    },
];

/// Programs loaded only with `--enforce` (BPF LSM denials): not counted as missing without it.
pub fn enforcement_only(program: &str) -> bool {
    HOOKS
        .iter()
        .any(|s| s.program == program && matches!(s.attach, Attach::Lsm(_)))
}

/// Outcome of one hook.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HookStatus {
    pub program: &'static str,
    pub attached_to: Option<String>,
    pub covers: &'static str,
    pub error: Option<String>,
    /// The program that runs this hook's code when it is not `program` itself: its
    /// `tp_btf/sys_enter` handler in raw mode (`--syscall-hook raw`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<&'static str>,
}

impl HookStatus {
    /// A hook that did not attach, and why.
    fn refused(program: &'static str, covers: &'static str, error: String) -> HookStatus {
        HookStatus {
            program,
            attached_to: None,
            covers,
            error: Some(error),
            handler: None,
        }
    }
}

/// The live kernel side: programs attached and the maps userspace drives, grouped by role so
/// that callers borrow only the part they drive.
pub struct Kernel {
    /// The object's maps not taken into the fields below: the circuit breaker's (taken by
    /// `respond::act::Maps`) and the rest, held open so that the tail-call arrays, which the
    /// kernel empties when the last user fd closes, keep their programs.
    maps: Vec<(String, aya::maps::Map)>,
    /// The attached programs' fds, for their run statistics. aya's `Ebpf` is dropped once
    /// everything is attached: it keeps a copy of every program's relocated instructions and
    /// line info (measured 4.1 MiB of heap for a second copy of the object).
    programs: Vec<(&'static str, aya::programs::ProgramFd)>,
    pub rings: Rings,
    pub watch: Watch,
    pub enforce: Enforce,
    pub counters: Counters,
    /// Runtime flags (`snapmon_common::runtime`), shared by the watch set (reserve bit),
    /// enforcement and the circuit breaker.
    pub runtime: aya::maps::Array<MapData, u32>,
    pub info: LoadInfo,
    pub links: Links,
}

/// The ring buffers the programs write records into.
pub struct Rings {
    pub events: RingBuf<MapData>,
    /// The urgent lane: root's records and those about images the actor does not own,
    /// drained before `events` (see `snapmon-ebpf` `emit::urgent_file`).
    pub urgent: RingBuf<MapData>,
}

/// The maps behind the watch set (`agent::KernelMaps`) and the trusted-writer filter.
pub struct Watch {
    pub files: BpfHashMap<MapData, FileKey, u32>,
    /// Ordinary entries of `files`, by who added or removed them (`snapmon_common::watch_share`).
    pub share: aya::maps::Array<MapData, u64>,
    /// Extension hashes of image and metadata names (`snapmon_common::ext_hash`).
    pub precious_exts: BpfHashMap<MapData, u64, u32>,
    pub ino_slots: aya::maps::Array<MapData, u32>,
    pub dirs: BpfHashMap<MapData, FileKey, u32>,
    pub prefixes: BpfHashMap<MapData, u64, u32>,
    /// Last components of watched image and metadata names (`snapmon_common::leaf_hash`).
    pub leaves: BpfHashMap<MapData, u64, u32>,
    /// Classified files → ranges trusted writers must still report (see `classify::filter`).
    pub write_filter: BpfHashMap<MapData, FileKey, snapmon_common::WriteFilter>,
    pub trusted_writers: BpfHashMap<MapData, FileKey, u32>,
    /// Loop devices over watched images by device number → the attach's node (kernel-filled).
    pub rdevs: BpfHashMap<MapData, u32, FileKey>,
    /// Nonzero while `rdevs` may have entries: the write hooks read `i_rdev` only then.
    pub rdev_any: aya::maps::Array<MapData, u32>,
    /// Inode numbers of watched images (`IMAGE_INO`, LRU): the open hook's overlay candidates.
    pub image_ino: BpfHashMap<MapData, u64, u32>,
}

/// The BPF LSM enforcement side: whether it can decide, and the maps it decides from.
pub struct Enforce {
    /// Every requested LSM hook attached.
    pub lsm: bool,
    pub protected: BpfHashMap<MapData, FileKey, u32>,
    pub trusted: BpfHashMap<MapData, FileKey, u32>,
    pub deny_ioctls: BpfHashMap<MapData, u32, u32>,
}

/// What the kernel counts: loss, blindings, filtered writes and program run statistics.
pub struct Counters {
    pub lost: PerCpuArray<MapData, u64>,
    /// The last image or metadata record each CPU dropped (`lost::PRECIOUS_DROPPED`).
    pub blinded: PerCpuArray<MapData, snapmon_common::Blinded>,
    pub filtered: PerCpuArray<MapData, u64>,
    /// Kernel BPF run statistics for the per-hook counters.
    pub run_stats: RunStats,
}

/// What the load found and chose: per-hook outcomes, BTF fields, and the access modes.
pub struct LoadInfo {
    pub hooks: Vec<HookStatus>,
    pub missing: Vec<Missing>,
    pub offsets: KernelOffsets,
    /// `tracepoint`, or `tracepoint+vfs` when the fentry write hook is live.
    pub backend: &'static str,
    /// How the programs resolve fds: `direct` (BTF loads) or `probe_read` (`FdWalk`).
    pub fd_walk: &'static str,
    /// The submit hook resolves registered (fixed) files in the ring's table: the direct
    /// walk and `valid::IO_URING_FIXED`. Else their writes are counted as lost.
    pub fixed_files: bool,
    /// How the syscall entry hooks run (each hook's `attached_to` says where it runs).
    pub syscall_hook: SyscallHook,
}

impl LoadInfo {
    /// The LSM hooks report namespace operations by the directory's identity (the backend
    /// says `+lsm`): names made through another name of a store are seen there.
    pub fn lsm_observes(&self) -> bool {
        self.backend.ends_with("+lsm")
    }
}

/// The attached hooks' links.
pub struct Links {
    /// The LSM links: pinned by `--keep-enforcing`, else detached on drop.
    pub lsm: Vec<(&'static str, aya::programs::lsm::LsmLink)>,
    /// Every other hook's link, released on drop by `release_links`.
    pub hooks: Vec<(&'static str, HookLink)>,
}

/// One attached hook's link, owned here rather than by its program so that dropping the
/// `Kernel` decides how it is detached (`release_links`).
pub enum HookLink {
    TracePoint(TracePointLink),
    Btf(BtfTracePointLink),
    FEntry(FEntryLink),
}

impl HookLink {
    /// The bpf_link behind it. A perf event attached the legacy way (kernels before 5.15
    /// have no perf bpf_link) has none: it is detached, synchronously, by this call.
    fn into_fd_link(self) -> Option<FdLink> {
        match self {
            HookLink::TracePoint(l) => FdLink::try_from(l).ok(),
            HookLink::Btf(l) => Some(l.into()),
            HookLink::FEntry(l) => Some(l.into()),
        }
    }
}

/// Whether the kernel counts runs and run time of our programs (`bpf_prog_info.run_cnt`,
/// `run_time_ns`). Counting costs two clock reads per run for every BPF program on the host,
/// so the kernel only does it while someone asks.
#[derive(Debug)]
pub enum RunStats {
    /// `BPF_ENABLE_STATS(BPF_STATS_RUN_TIME)`: counting lasts as long as this fd is open.
    Enabled(std::os::fd::OwnedFd),
    /// The bpf() command was refused, but `kernel.bpf_stats_enabled` is already 1.
    Sysctl,
    /// Not counting; why (refused, or not asked for with `--hook-stats`).
    Unavailable(String),
}

impl RunStats {
    /// Not asked to count: counters only when someone else already turned counting on.
    pub fn passive() -> RunStats {
        if Self::sysctl_on() {
            RunStats::Sysctl
        } else {
            RunStats::Unavailable(
                "off by default (each program run pays two clock reads while counting); \
                 --hook-stats turns them on"
                    .into(),
            )
        }
    }

    fn sysctl_on() -> bool {
        std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
    }

    /// Ask the kernel to count; never fails, the reason is kept instead.
    pub fn enable() -> RunStats {
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => RunStats::Enabled(fd),
            Err(e) => {
                if Self::sysctl_on() {
                    RunStats::Sysctl
                } else {
                    RunStats::Unavailable(format!(
                        "the kernel refused BPF_ENABLE_STATS ({}) and kernel.bpf_stats_enabled is 0",
                        e.io_error
                    ))
                }
            }
        }
    }

    pub fn counting(&self) -> bool {
        !matches!(self, RunStats::Unavailable(_))
    }

    /// For the `started` record and the metrics registry.
    pub fn describe(&self) -> (bool, Option<String>) {
        match self {
            RunStats::Enabled(_) => (true, None),
            RunStats::Sysctl => (true, Some("kernel.bpf_stats_enabled=1".into())),
            RunStats::Unavailable(why) => (false, Some(why.clone())),
        }
    }
}

pub struct LoadOptions {
    pub ring_buffer_bytes: u32,
    pub process_events: bool,
    /// Attach the BPF LSM (enforcement) hooks.
    pub lsm: bool,
    /// Attach the BPF LSM inode hooks to observe (the kernel lists `bpf` among its LSMs).
    pub lsm_observe: bool,
    /// Turn on kernel BPF run statistics for the per-hook counters.
    pub hook_stats: bool,
    /// Attach the 32-bit syscall hook where the VFS write hook is refused (`Attach::Compat`).
    pub compat: bool,
    /// How the syscall entry hooks run.
    pub syscall_hook: SyscallHook,
}

/// The fd → inode walk for this kernel: BTF loads where `bpf_rdonly_cast` exists (6.2+),
/// else the probe-read chain. `SNAPMON_FD_WALK=probe_read` forces the latter (how the 6.1
/// path is verified on a newer host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdWalk {
    pub mode: u32,
    pub btf_file: u32,
    /// vmlinux BTF id of `struct mm_struct`, through whose `exe_file` member the fd slot is
    /// read by a plain load (0: the slot is a probe read, as on the probe-read walk).
    pub btf_mm: u32,
    /// vmlinux BTF id of the `bpf_rdonly_cast` FUNC (0 for the probe-read walk).
    pub rdonly_cast: u32,
}

impl FdWalk {
    pub const fn probe() -> FdWalk {
        FdWalk {
            mode: fd_walk::PROBE_READ,
            btf_file: 0,
            btf_mm: 0,
            rdonly_cast: 0,
        }
    }

    pub fn choose(btf: &Btf, valid: u32) -> FdWalk {
        const PROBE: FdWalk = FdWalk::probe();
        let forced = std::env::var("SNAPMON_FD_WALK").ok();
        if forced.as_deref() == Some("probe_read") || valid & snapmon_common::valid::FILES == 0 {
            return PROBE;
        }
        // The verifier refuses kfunc calls to interpreted programs.
        let jit = std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable");
        if jit.is_ok_and(|j| j.trim() == "0") {
            return PROBE;
        }
        match (btf.func_id("bpf_rdonly_cast"), btf.struct_id("file")) {
            (Ok(rdonly_cast), Ok(btf_file)) => FdWalk {
                mode: fd_walk::DIRECT,
                btf_file,
                // Without it (or `exe_file`'s offset: `valid::ARGS`) the slot stays a probe read.
                btf_mm: match btf.struct_id("mm_struct") {
                    Ok(id) if valid & snapmon_common::valid::ARGS != 0 => id,
                    _ => 0,
                },
                rdonly_cast,
            },
            _ => PROBE,
        }
    }

    pub fn name(&self) -> &'static str {
        if self.mode == fd_walk::DIRECT {
            "direct"
        } else {
            "probe_read"
        }
    }

    /// The object with every `bpf_rdonly_cast` placeholder call (`fd_walk::RDONLY_CAST_MARK`)
    /// rewritten: into the kfunc call for the direct walk (aya 0.14 relocates no kfunc
    /// calls), into `r0 = 0` otherwise, which the verifier never reaches either way on the
    /// probe-read walk but which no kernel can mistake for a helper.
    pub fn patch(&self, object: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut out = object.to_vec();
        let n = patch_marks(&mut out, *self);
        if n == 0 && self.mode == fd_walk::DIRECT {
            bail!("the eBPF object has no bpf_rdonly_cast placeholder call to patch");
        }
        Ok(out)
    }
}

/// Rewrite each 8-byte `call RDONLY_CAST_MARK` instruction (opcode 0x85, no registers, no
/// offset) at an 8-aligned file offset; program text is 8-aligned in the ELF. The count.
fn patch_marks(elf: &mut [u8], walk: FdWalk) -> usize {
    let mut mark = [0x85, 0, 0, 0, 0, 0, 0, 0];
    mark[4..].copy_from_slice(&fd_walk::RDONLY_CAST_MARK.to_le_bytes());
    let with: [u8; 8] = if walk.mode == fd_walk::DIRECT {
        // BPF_JMP|BPF_CALL, src_reg BPF_PSEUDO_KFUNC_CALL (2), off 0 (vmlinux), imm btf id.
        let mut i = [0x85, 0x20, 0, 0, 0, 0, 0, 0];
        i[4..].copy_from_slice(&walk.rdonly_cast.to_le_bytes());
        i
    } else {
        // BPF_ALU64|BPF_MOV|BPF_K: r0 = 0.
        [0xb7, 0, 0, 0, 0, 0, 0, 0]
    };
    let mut n = 0;
    for insn in elf.chunks_exact_mut(8) {
        if *insn == mark {
            insn.copy_from_slice(&with);
            n += 1;
        }
    }
    n
}

pub fn tracefs_root() -> Option<&'static str> {
    TRACEFS
        .iter()
        .copied()
        .find(|p| std::path::Path::new(&format!("{p}/events/syscalls")).is_dir())
}

/// Preconditions, checked before touching the kernel, each as one clear sentence.
pub fn preflight() -> anyhow::Result<&'static str> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("snapmon must run as root (it loads eBPF programs; CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE are needed)");
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("this kernel has no BTF (/sys/kernel/btf/vmlinux is missing); snapmon needs CONFIG_DEBUG_INFO_BTF=y");
    }
    tracefs_root().context(
        "tracefs is not mounted or has no syscall tracepoints; mount it with `mount -t tracefs tracefs /sys/kernel/tracing`",
    )
}

fn syscall_arg_offsets(tracefs: &str) -> anyhow::Result<(u32, u32)> {
    let enter = std::fs::read_to_string(format!(
        "{tracefs}/events/syscalls/sys_enter_pwrite64/format"
    ))
    .context("reading the sys_enter_pwrite64 tracepoint format")?;
    let exit = std::fs::read_to_string(format!("{tracefs}/events/syscalls/sys_exit_openat/format"))
        .context("reading the sys_exit_openat tracepoint format")?;
    let args =
        format_field_offset(&enter, "fd").context("no `fd` field in sys_enter_pwrite64 format")?;
    let ret =
        format_field_offset(&exit, "ret").context("no `ret` field in sys_exit_openat format")?;
    Ok((args, ret))
}

/// Load and attach. Should the verifier refuse a program on the direct fd walk (a kernel
/// whose `bpf_rdonly_cast` or BTF loads differ from what was tested), load everything once
/// more on the probe-read walk, which every supported kernel verifies.
pub fn load(opts: &LoadOptions) -> anyhow::Result<Kernel> {
    let k = load_either(opts);
    release_object_pages();
    k
}

fn load_either(opts: &LoadOptions) -> anyhow::Result<Kernel> {
    let k = load_walk(opts, false)?;
    let refused = k
        .info
        .hooks
        .iter()
        .find(|h| h.error.as_deref().is_some_and(|e| e.contains("verifier:")));
    if k.info.fd_walk != "direct" || refused.is_none() {
        return Ok(k);
    }
    if let Some(h) = refused {
        eprintln!(
            "snapmon: the verifier refused {} on the direct fd walk; loading the probe-read walk instead",
            h.program
        );
    }
    drop(k);
    load_walk(opts, true)
}

/// Unmap the embedded object's pages from this process once it is loaded: it is read once
/// (copied to be patched) and never again, yet stayed mapped, 3.5 MiB of the idle RSS. The
/// pages are clean file pages of the binary: should it be read again, they fault back in.
fn release_object_pages() {
    const PAGE: usize = 4096;
    let start = OBJECT.as_ptr() as usize;
    let (from, to) = (
        start.next_multiple_of(PAGE),
        (start + OBJECT.len()) / PAGE * PAGE,
    );
    if to > from {
        // SAFETY: the range lies inside OBJECT, a read-only mapping of the executable that
        // nothing writes; MADV_DONTNEED on it only drops this process's page-table entries.
        unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_DONTNEED) };
    }
}

fn load_walk(opts: &LoadOptions, probe_read: bool) -> anyhow::Result<Kernel> {
    let tracefs = preflight()?;
    let btf_bytes = Btf::from_sys_fs().context("reading /sys/kernel/btf/vmlinux")?;
    let btf = Btf::parse(&btf_bytes).context("parsing kernel BTF")?;
    let (sc_args, sc_ret) = syscall_arg_offsets(tracefs)?;
    let (offsets, missing) = offsets::resolve(&btf, sc_args, sc_ret);
    let walk = if probe_read {
        FdWalk::probe()
    } else {
        FdWalk::choose(&btf, offsets.valid)
    };
    let config = AgentConfig {
        agent_tgid: std::process::id(),
        process_events: opts.process_events as u32,
        fd_walk: walk.mode,
        btf_file: walk.btf_file,
        btf_mm: walk.btf_mm,
        _pad: 0,
        compat_ids: compat_ids(),
        hooked_ids: hooked_ids(),
    };
    let object = walk.patch(OBJECT)?;
    let rb = opts.ring_buffer_bytes.next_power_of_two().max(4096);
    let mut ebpf = EbpfLoader::new()
        .override_global("OFFSETS", &offsets, true)
        .override_global("CONFIG", &config, true)
        .map_max_entries("EVENTS", rb)
        .map_max_entries("URGENT", (rb / 4).max(4096))
        .load(&object)
        .context("loading the eBPF object into the kernel")?;
    let aya_btf = AyaBtf::from_sys_fs().context("loading kernel BTF for BTF tracepoints")?;

    let mut hooks = Vec::new();
    let mut lsm_links = Vec::new();
    let mut links = Vec::new();
    release_stale();
    let debug = std::env::var_os("SNAPMON_DEBUG_LOAD").is_some();
    let raw_runs =
        walk.mode == fd_walk::DIRECT && offsets.valid & snapmon_common::valid::REGS_ARGS != 0;
    // `auto` follows the VFS write hook, so that one is attached first.
    let mut early = None;
    if opts.syscall_hook == SyscallHook::Auto && raw_runs {
        if let Some(spec) = HOOKS.iter().find(|s| s.program == VFS_WRITE_HOOK) {
            early = Some(attach_one(
                &mut ebpf,
                spec,
                None,
                &aya_btf,
                &mut lsm_links,
                &mut links,
            ));
        }
    }
    let mut mode = opts.syscall_hook.resolve(
        raw_runs,
        early.as_ref().is_some_and(|h| h.attached_to.is_some()),
    );
    if mode == SyscallHook::Raw {
        // `syscall_enter` is attached last: a failure before it leaves nothing running.
        match raw_hook(&mut ebpf, &aya_btf, walk, &offsets, &mut links) {
            Ok(st) => hooks.push(st),
            // Asked for, raw mode refuses to start without it; chosen by `auto`, the
            // tracepoints stand in and say why.
            Err(e) if opts.syscall_hook == SyscallHook::Auto => {
                eprintln!(
                    "snapmon: raw syscall hook unavailable, using the syscall tracepoints: {e:#}"
                );
                mode = SyscallHook::Tracepoint;
            }
            Err(e) => return Err(e),
        }
    }
    // Everything `attach_one` would load, verified up front on several threads.
    let t = std::time::Instant::now();
    let jobs: Vec<(&'static str, Load)> = HOOKS
        .iter()
        .filter(|spec| !skipped(spec, opts, &offsets))
        .filter(|spec| !(mode == SyscallHook::Raw && raw_handler(spec.program).is_some()))
        .filter(|spec| !(early.is_some() && spec.program == VFS_WRITE_HOOK))
        .filter_map(|spec| Some((code_of(spec), load_of(&spec.attach)?)))
        .collect();
    let preloaded = verify::load_all(&mut ebpf, &aya_btf, &jobs, &verify::sizes(&object), debug);
    if debug {
        eprintln!("verified {} programs in {:?}", preloaded.len(), t.elapsed());
    }
    for spec in HOOKS {
        let t = std::time::Instant::now();
        if skipped(spec, opts, &offsets) {
            continue;
        }
        if spec.program == VFS_WRITE_HOOK {
            if let Some(st) = early.take() {
                hooks.push(st);
                continue;
            }
        }
        if let (SyscallHook::Raw, Some(raw)) = (mode, raw_handler(spec.program)) {
            hooks.push(HookStatus {
                program: spec.program,
                attached_to: Some(raw_attached_to(spec.program)),
                covers: spec.covers,
                error: None,
                handler: Some(raw),
            });
            continue;
        }
        if matches!(spec.attach, Attach::Compat) {
            if !opts.compat {
                continue;
            }
            // The VFS write hook sees 32-bit writes already; do not pay for every syscall.
            if hooks
                .iter()
                .any(|h: &HookStatus| h.program == VFS_WRITE_HOOK && h.attached_to.is_some())
            {
                continue;
            }
            let raw = mode == SyscallHook::Raw;
            // Tracepoint mode, where the raw handlers load: the 32-bit hook on
            // `tp_btf/sys_enter`, which every syscall on the host pays less for than the
            // classic `raw_syscalls/sys_enter`. Failing that, the classic one below.
            if !raw && raw_runs {
                if let Ok(st) = compat_enter(&mut ebpf, &aya_btf, &offsets, spec, &mut links) {
                    hooks.push(st);
                    continue;
                }
            }
            if raw {
                match raw_compat_table(&mut ebpf, &aya_btf, &offsets) {
                    Ok(None) => {
                        // Every 32-bit syscall is handed on by `syscall_enter`.
                        hooks.push(HookStatus {
                            program: spec.program,
                            attached_to: Some(
                                "tp_btf/sys_enter (syscall_enter, 32-bit syscalls by RAW_COMPAT_TAIL)".into(),
                            ),
                            covers: spec.covers,
                            error: None,
                            // Its runs are syscall_enter's, counted under that hook.
                            handler: None,
                        });
                        continue;
                    }
                    Ok(Some(_)) => {}
                    Err(e) => {
                        hooks.push(HookStatus::refused(
                            spec.program,
                            spec.covers,
                            format!("{e:#}"),
                        ));
                        continue;
                    }
                }
            }
            match compat_table(&mut ebpf, tracefs, &offsets, raw) {
                Err(e) => {
                    hooks.push(HookStatus::refused(
                        spec.program,
                        spec.covers,
                        format!("{e:#}"),
                    ));
                    continue;
                }
                // A variant the verifier refused: its syscall stays unseen from 32-bit code.
                Ok(refused) => hooks.extend(
                    refused
                        .into_iter()
                        .map(|(program, e)| HookStatus::refused(program, spec.covers, e)),
                ),
            }
        }
        let pre = preloaded.get(code_of(spec));
        let mut status = attach_one(&mut ebpf, spec, pre, &aya_btf, &mut lsm_links, &mut links);
        if let (Attach::Compat, SyscallHook::Raw, Some(at)) =
            (&spec.attach, mode, status.attached_to.as_mut())
        {
            at.push_str("; the raw handlers' by tp_btf/sys_enter (RAW_COMPAT_TAIL)");
        }
        if debug {
            // The verifier's instruction count: the start's cost, free of the host's load.
            let verified = ebpf
                .program(spec.program)
                .and_then(|p| p.info().ok())
                .and_then(|i| i.verified_instruction_count());
            eprintln!(
                "load {} {:?} {:?} verified_insns={verified:?}",
                spec.program,
                t.elapsed(),
                status.error
            );
        }
        hooks.push(status);
    }
    // Tell the programs which backend owns io_uring writes now that we know what attached.
    let vfs = hooks
        .iter()
        .any(|h| h.program == VFS_WRITE_HOOK && h.attached_to.is_some());
    // Enforcement needs every enforcing hook; observation-only ones may be missing.
    let enforcing = |p: &str| {
        HOOKS.iter().any(|s| {
            s.program == p
                && match s.attach {
                    Attach::Lsm(_) => true,
                    Attach::LsmNs(h) => matches!(h, "inode_unlink" | "inode_rename" | "inode_link"),
                    _ => false,
                }
        })
    };
    let lsm = opts.lsm
        && !lsm_links.is_empty()
        && hooks
            .iter()
            .filter(|h| enforcing(h.program))
            .all(|h| h.attached_to.is_some());
    let observe = offsets.valid & snapmon_common::valid::VFS_NS != 0
        && hooks.iter().any(|h| {
            h.attached_to.is_some()
                && HOOKS
                    .iter()
                    .any(|s| s.program == h.program && matches!(s.attach, Attach::LsmNs(_)))
        });
    let take = |ebpf: &mut Ebpf, name: &str| {
        ebpf.take_map(name)
            .with_context(|| format!("map {name} missing from object"))
    };
    let events = RingBuf::try_from(take(&mut ebpf, "EVENTS")?)?;
    let urgent = RingBuf::try_from(take(&mut ebpf, "URGENT")?)?;
    let files = BpfHashMap::try_from(take(&mut ebpf, "WATCHED_FILES")?)?;
    let watch_share = aya::maps::Array::try_from(take(&mut ebpf, "WATCH_SHARE")?)?;
    let precious_exts = BpfHashMap::try_from(take(&mut ebpf, "PRECIOUS_EXTS")?)?;
    let ino_slots = aya::maps::Array::try_from(take(&mut ebpf, "WATCHED_INO")?)?;
    let dirs = BpfHashMap::try_from(take(&mut ebpf, "WATCHED_DIRS")?)?;
    let prefixes = BpfHashMap::try_from(take(&mut ebpf, "WATCHED_PREFIXES")?)?;
    let leaves = BpfHashMap::try_from(take(&mut ebpf, "WATCHED_LEAVES")?)?;
    let lost = PerCpuArray::try_from(take(&mut ebpf, "LOST")?)?;
    let blinded = PerCpuArray::try_from(take(&mut ebpf, "BLINDED")?)?;
    let mut runtime = aya::maps::Array::try_from(take(&mut ebpf, "RUNTIME")?)?;
    let mut flags = 0;
    if vfs {
        flags |= snapmon_common::runtime::VFS_WRITES;
    }
    if observe {
        flags |= snapmon_common::runtime::LSM_OBSERVE;
    }
    runtime.set(0, flags, 0)?;
    let protected = BpfHashMap::try_from(take(&mut ebpf, "PROTECTED")?)?;
    let trusted = BpfHashMap::try_from(take(&mut ebpf, "TRUSTED_EXES")?)?;
    let deny_ioctls = BpfHashMap::try_from(take(&mut ebpf, "DENY_IOCTLS")?)?;
    let write_filter = BpfHashMap::try_from(take(&mut ebpf, "WRITE_FILTER")?)?;
    let trusted_writers = BpfHashMap::try_from(take(&mut ebpf, "TRUSTED_WRITERS")?)?;
    let filtered = PerCpuArray::try_from(take(&mut ebpf, "FILTERED")?)?;
    let rdevs = BpfHashMap::try_from(take(&mut ebpf, "WATCHED_RDEV")?)?;
    let rdev_any = aya::maps::Array::try_from(take(&mut ebpf, "RDEV_ANY")?)?;
    let image_ino = BpfHashMap::try_from(take(&mut ebpf, "IMAGE_INO")?)?;
    let backend = match (vfs, observe) {
        (true, true) => "tracepoint+vfs+lsm",
        (true, false) => "tracepoint+vfs",
        (false, true) => "tracepoint+lsm",
        (false, false) => "tracepoint",
    };
    let run_stats = if opts.hook_stats {
        RunStats::enable()
    } else {
        RunStats::passive()
    };
    // One fd per program: hooks that share one (`Attach::SyscallShared`) name it alike. Raw
    // mode's handlers are not among them: the kernel counts no runs for a tail call, so
    // their statistics would read 0 forever (their runs are `syscall_enter`'s).
    let mut kept = std::collections::HashSet::new();
    let programs = hooks
        .iter()
        .filter(|h| h.attached_to.is_some())
        .filter_map(|h| {
            let name = h.handler.unwrap_or(h.program);
            if tail_called(name) || !kept.insert(name) {
                return None;
            }
            let fd = ebpf.program(name)?.fd().ok()?.try_clone().ok()?;
            Some((name, fd))
        })
        .collect();
    let names: Vec<String> = ebpf.maps().map(|(n, _)| n.to_string()).collect();
    let maps = names
        .into_iter()
        .filter_map(|n| ebpf.take_map(&n).map(|m| (n, m)))
        .collect();
    // The links were taken and the maps are held: what goes is aya's copy of the programs.
    drop(ebpf);
    Ok(Kernel {
        maps,
        programs,
        rings: Rings { events, urgent },
        watch: Watch {
            files,
            share: watch_share,
            precious_exts,
            ino_slots,
            dirs,
            prefixes,
            leaves,
            write_filter,
            trusted_writers,
            rdevs,
            rdev_any,
            image_ino,
        },
        enforce: Enforce {
            lsm,
            protected,
            trusted,
            deny_ioctls,
        },
        counters: Counters {
            lost,
            blinded,
            filtered,
            run_stats,
        },
        runtime,
        info: LoadInfo {
            hooks,
            missing,
            offsets,
            backend,
            fd_walk: walk.name(),
            fixed_files: walk.mode == fd_walk::DIRECT
                && offsets.valid & snapmon_common::valid::IO_URING_FIXED != 0,
            syscall_hook: mode,
        },
        links: Links {
            lsm: lsm_links,
            hooks: links,
        },
    })
}

/// A hook this start leaves out: LSM programs without BPF LSM, and the setattr program of
/// the other hook signature (or both, without the fields).
fn skipped(spec: &HookSpec, opts: &LoadOptions, offsets: &KernelOffsets) -> bool {
    match spec.attach {
        Attach::Lsm(_) => !opts.lsm,
        Attach::LsmNs(hook) => {
            let idmap = offsets.setattr_dentry_arg == 1;
            !(opts.lsm || opts.lsm_observe)
                || (hook == "inode_setattr"
                    && (offsets.valid & snapmon_common::valid::VFS_NS == 0
                        || idmap != spec.program.ends_with("_idmap")))
        }
        _ => false,
    }
}

/// The program whose code a hook runs (its own, or the shared one it names).
fn code_of(spec: &HookSpec) -> &'static str {
    match spec.attach {
        Attach::SyscallShared(code) => code,
        _ => spec.program,
    }
}

/// How the verifier loads a hook's program; none for the compat table (loaded with its
/// variants by `compat_table`).
fn load_of(attach: &Attach) -> Option<Load> {
    Some(match *attach {
        Attach::Syscall(_) | Attach::SyscallShared(_) => Load::TracePoint,
        Attach::Compat => return None,
        Attach::Lsm(hook) | Attach::LsmNs(hook) => Load::Lsm(hook),
        Attach::FEntry(func) => Load::FEntry(func),
        Attach::Btf(names) => Load::Btf(names),
    })
}

/// Attach `spec`'s program, loading it unless `pre` (the parallel load) did; a refusal there
/// is this hook's error.
fn attach_one(
    ebpf: &mut Ebpf,
    spec: &HookSpec,
    pre: Option<&Loaded>,
    btf: &AyaBtf,
    lsm_links: &mut Vec<(&'static str, aya::programs::lsm::LsmLink)>,
    links: &mut Vec<(&'static str, HookLink)>,
) -> HookStatus {
    let mut st = HookStatus {
        program: spec.program,
        attached_to: None,
        covers: spec.covers,
        error: None,
        handler: None,
    };
    let code = code_of(spec);
    if let Attach::SyscallShared(code) = spec.attach {
        st.handler = Some(code);
    }
    let Some(prog) = ebpf.program_mut(code) else {
        st.error = Some("program missing from the eBPF object".into());
        return st;
    };
    let btf_name = match pre {
        Some(Err(e)) => {
            st.error = Some(e.clone());
            return st;
        }
        Some(Ok(name)) => *name,
        None => None,
    };
    let res: anyhow::Result<String> = (|| match &spec.attach {
        Attach::Syscall(name) => {
            let tp: &mut TracePoint = prog.try_into()?;
            if tp.fd().is_err() {
                tp.load().map_err(verbose)?;
            }
            let id = tp.attach("syscalls", name).map_err(verbose)?;
            links.push((spec.program, HookLink::TracePoint(tp.take_link(id)?)));
            Ok(format!("tracepoint/syscalls/{name}"))
        }
        Attach::SyscallShared(_) => {
            let tp: &mut TracePoint = prog.try_into()?;
            // Verified once, for every hook that runs it.
            if tp.fd().is_err() {
                tp.load().map_err(verbose)?;
            }
            let id = tp.attach("syscalls", spec.program).map_err(verbose)?;
            links.push((spec.program, HookLink::TracePoint(tp.take_link(id)?)));
            Ok(format!("tracepoint/syscalls/{}", spec.program))
        }
        Attach::Compat => {
            let tp: &mut TracePoint = prog.try_into()?;
            tp.load().map_err(verbose)?;
            let id = tp.attach("raw_syscalls", "sys_enter").map_err(verbose)?;
            links.push((spec.program, HookLink::TracePoint(tp.take_link(id)?)));
            Ok("tracepoint/raw_syscalls/sys_enter (32-bit syscalls)".to_string())
        }
        Attach::Lsm(hook) | Attach::LsmNs(hook) => {
            let p: &mut Lsm = prog.try_into()?;
            if p.fd().is_err() {
                p.load(hook, btf).map_err(verbose)?;
            }
            let id = p.attach().map_err(verbose)?;
            // Own the link: dropping it detaches, pinning it keeps enforcing after we exit.
            lsm_links.push((spec.program, p.take_link(id)?));
            Ok(format!("lsm/{hook}"))
        }
        Attach::FEntry(func) => {
            let p: &mut FEntry = prog.try_into()?;
            if p.fd().is_err() {
                p.load(func, btf).map_err(verbose)?;
            }
            let id = p.attach().map_err(verbose)?;
            links.push((spec.program, HookLink::FEntry(p.take_link(id)?)));
            Ok(format!("fentry/{func}"))
        }
        Attach::Btf(names) => {
            let tp: &mut BtfTracePoint = prog.try_into()?;
            if let (Some(name), Ok(_)) = (btf_name, tp.fd()) {
                let id = tp.attach().map_err(verbose)?;
                links.push((spec.program, HookLink::Btf(tp.take_link(id)?)));
                return Ok(format!("tp_btf/{name}"));
            }
            let mut last = None;
            for name in *names {
                match tp.load(name, btf) {
                    Ok(()) => {
                        let id = tp.attach().map_err(verbose)?;
                        links.push((spec.program, HookLink::Btf(tp.take_link(id)?)));
                        return Ok(format!("tp_btf/{name}"));
                    }
                    Err(e) => last = Some(verbose(e)),
                }
            }
            Err(last.unwrap_or_else(|| anyhow::anyhow!("no candidate tracepoint")))
        }
    })();
    match res {
        Ok(to) => st.attached_to = Some(to),
        Err(e) => st.error = Some(format!("{e:#}")),
    }
    st
}

/// Fill the compat tail-call table. The table stays owned by `ebpf` (the `Kernel`): the kernel
/// empties a program array when its last user reference goes. Returns the `compat_*`
/// variants that would not load, with why.
fn compat_table(
    ebpf: &mut Ebpf,
    tracefs: &str,
    offsets: &KernelOffsets,
    raw: bool,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    anyhow::ensure!(
        offsets.valid & snapmon_common::valid::COMPAT != 0,
        "no thread_info.status in the kernel's BTF"
    );
    // The native programs read arguments where `syscalls/sys_enter_*` records keep them.
    let format = std::fs::read_to_string(format!("{tracefs}/events/raw_syscalls/sys_enter/format"))
        .context("reading the raw_syscalls/sys_enter tracepoint format")?;
    let (id, args) = (
        format_field_offset(&format, "id"),
        format_field_offset(&format, "args"),
    );
    anyhow::ensure!(
        id == Some(8) && args == Some(offsets.sc_args),
        "raw_syscalls/sys_enter keeps id at {id:?} and args at {args:?}, not 8 and {} as the syscall records",
        offsets.sc_args
    );
    let (mut fds, mut refused) = (Vec::new(), Vec::new());
    for &(nr, name) in COMPAT {
        // In raw mode `syscall_enter` hands these on: only the rest come here.
        if raw && raw_handler(name).is_some() {
            continue;
        }
        let prog: &mut TracePoint = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the eBPF object"))?
            .try_into()?;
        // Loaded already when its own tracepoint attached; a variant is loaded here. A native
        // hook this kernel lacks (fchmodat2 before 6.6) leaves its slot empty.
        if prog.fd().is_err() {
            if let Err(e) = prog.load() {
                if name.starts_with("compat_") && !refused.iter().any(|(n, _)| *n == name) {
                    refused.push((name, format!("{:#}", verbose(e))));
                }
                continue;
            }
        }
        fds.push((nr, prog.fd()?.try_clone()?));
    }
    let mut table = ProgramArray::try_from(
        ebpf.map_mut("COMPAT_TAIL")
            .context("map COMPAT_TAIL missing from object")?,
    )?;
    for (nr, fd) in &fds {
        table
            .set(*nr, fd, 0)
            .with_context(|| format!("compat slot {nr}"))?;
    }
    Ok(refused)
}

/// A raw-mode handler: run by tail call from `syscall_enter`, never attached itself.
fn tail_called(program: &str) -> bool {
    RAW.iter().any(|&(_, _, raw)| raw == program)
}

/// Where a hook runs in raw mode: its handler, by the native syscall number.
fn raw_attached_to(program: &str) -> String {
    match RAW.iter().find(|(_, p, _)| *p == program) {
        Some((nr, _, raw)) => format!("tp_btf/sys_enter ({raw}, syscall {nr})"),
        None => "tp_btf/sys_enter".into(),
    }
}

/// Load a program as a `tp_btf/sys_enter` tail-call target (loaded, never attached).
fn load_sys_enter<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
    btf: &AyaBtf,
) -> anyhow::Result<&'a BtfTracePoint> {
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load("sys_enter", btf)
            .map_err(verbose)
            .with_context(|| format!("--syscall-hook raw: loading {name}"))?;
    }
    Ok(prog)
}

/// `--syscall-hook raw`: load every handler of [`RAW`] into `RAW_TAIL` by native syscall
/// number, then attach `syscall_enter`. Any failure is an error: a raw mode that silently
/// hooks less than the tracepoints would be worse than no choice.
fn raw_hook(
    ebpf: &mut Ebpf,
    btf: &AyaBtf,
    walk: FdWalk,
    offsets: &KernelOffsets,
    links: &mut Vec<(&'static str, HookLink)>,
) -> anyhow::Result<HookStatus> {
    if walk.mode != fd_walk::DIRECT {
        bail!(
            "--syscall-hook raw needs the direct fd walk (bpf_rdonly_cast, Linux 6.2+), and this load has the {} walk; use --syscall-hook tracepoint",
            walk.name()
        );
    }
    anyhow::ensure!(
        offsets.valid & snapmon_common::valid::REGS_ARGS != 0,
        "--syscall-hook raw: the kernel's BTF has no pt_regs argument registers; use --syscall-hook tracepoint"
    );
    let mut fds = Vec::new();
    for &(nr, _, raw) in RAW {
        fds.push((nr, load_sys_enter(ebpf, raw, btf)?.fd()?.try_clone()?));
    }
    let mut table = ProgramArray::try_from(
        ebpf.map_mut("RAW_TAIL")
            .context("map RAW_TAIL missing from object")?,
    )?;
    for (nr, fd) in &fds {
        table
            .set(*nr, fd, 0)
            .with_context(|| format!("raw slot {nr}"))?;
    }
    let prog: &mut BtfTracePoint = ebpf
        .program_mut("syscall_enter")
        .context("program syscall_enter missing from the eBPF object")?
        .try_into()?;
    prog.load("sys_enter", btf)
        .map_err(verbose)
        .context("--syscall-hook raw: loading syscall_enter (tp_btf/sys_enter)")?;
    let id = prog
        .attach()
        .map_err(verbose)
        .context("--syscall-hook raw: attaching tp_btf/sys_enter")?;
    links.push(("syscall_enter", HookLink::Btf(prog.take_link(id)?)));
    Ok(HookStatus {
        program: "syscall_enter",
        attached_to: Some("tp_btf/sys_enter".into()),
        covers: "raw syscall hook: hands each hooked syscall to its handler by number",
        error: None,
        handler: None,
    })
}

/// Tracepoint mode's 32-bit hook as `compat_enter` on `tp_btf/sys_enter`, handing ia32
/// syscalls to the raw handlers (`RAW_COMPAT_TAIL`). An error where any 32-bit slot lacks a
/// raw handler, or anything fails to load: the caller then attaches the classic hook.
fn compat_enter(
    ebpf: &mut Ebpf,
    btf: &AyaBtf,
    offsets: &KernelOffsets,
    spec: &HookSpec,
    links: &mut Vec<(&'static str, HookLink)>,
) -> anyhow::Result<HookStatus> {
    if let Some(rest) = raw_compat_table(ebpf, btf, offsets)? {
        bail!("no raw handler for {rest:?}");
    }
    let prog: &mut BtfTracePoint = ebpf
        .program_mut("compat_enter")
        .context("program compat_enter missing from the eBPF object")?
        .try_into()?;
    prog.load("sys_enter", btf).map_err(verbose)?;
    let id = prog.attach().map_err(verbose)?;
    links.push(("compat_enter", HookLink::Btf(prog.take_link(id)?)));
    Ok(HookStatus {
        program: spec.program,
        attached_to: Some(
            "tp_btf/sys_enter (compat_enter, 32-bit syscalls by RAW_COMPAT_TAIL)".into(),
        ),
        covers: spec.covers,
        error: None,
        handler: Some("compat_enter"),
    })
}

/// Raw mode's share of the 32-bit table: every [`COMPAT`] entry with a raw handler goes into
/// `RAW_COMPAT_TAIL`. The names of those left to the classic table (`raw_syscalls/sys_enter`),
/// or None when there are none.
fn raw_compat_table(
    ebpf: &mut Ebpf,
    btf: &AyaBtf,
    offsets: &KernelOffsets,
) -> anyhow::Result<Option<Vec<&'static str>>> {
    anyhow::ensure!(
        offsets.valid & snapmon_common::valid::COMPAT != 0,
        "no thread_info.status in the kernel's BTF"
    );
    let mut fds = Vec::new();
    let mut rest = Vec::new();
    for &(nr, name) in COMPAT {
        match raw_handler(name) {
            Some(raw) => fds.push((nr, load_sys_enter(ebpf, raw, btf)?.fd()?.try_clone()?)),
            None => rest.push(name),
        }
    }
    let mut table = ProgramArray::try_from(
        ebpf.map_mut("RAW_COMPAT_TAIL")
            .context("map RAW_COMPAT_TAIL missing from object")?,
    )?;
    for (nr, fd) in &fds {
        table
            .set(*nr, fd, 0)
            .with_context(|| format!("raw compat slot {nr}"))?;
    }
    Ok((!rest.is_empty()).then_some(rest))
}

/// Where links are handed to the kernel to detach after the agent is gone (`release_links`),
/// one directory per agent process.
pub const RELEASE_DIR: &str = "/sys/fs/bpf/snapmon-release";

/// Detach `links` without waiting for the kernel to finish.
///
/// Closing a syscall tracepoint's link waits, under global kernel mutexes, for an RCU Tasks
/// Trace grace period (detaching the program), then for another one and a normal RCU grace
/// period (freeing the perf event): about 80 ms a hook, 3.3-4 s for the ~45 syscall hooks
/// on an idle 2-CPU host, one hook after the other. The kernel does the same work on its
/// own, in workqueues, for a link whose last reference is a bpffs pin that is removed (the
/// pin's inode is freed after an RCU grace period and the link put from there is deferred
/// to a kworker, which also closes the perf event). So each link is pinned, our fd closed
/// (cheap: the pin still holds the link) and the pin removed: the agent exits at once, and
/// the programs detach within about a second after it, writing meanwhile into a ring buffer
/// nobody reads any more (what the agent had to report was drained before this).
///
/// Without a writable bpffs at /sys/fs/bpf a private one is mounted for it, in a mount
/// namespace of one thread's own (`release_privately`), so the host's mounts are not
/// touched. Where even that is refused the links are closed here, from one thread each:
/// that overlaps some of the grace periods (measured: 0.07-1.9 s instead of 3.3 s). A link
/// whose pin fails is closed at once, as before.
/// A pin left by an agent killed between pinning and removing is removed at the next start
/// (`release_stale`).
fn release_links(links: Vec<(&'static str, HookLink)>) {
    if links.is_empty() {
        return;
    }
    let dir = format!("{RELEASE_DIR}/{}", std::process::id());
    let fds: Vec<(&str, FdLink)> = links
        .into_iter()
        .filter_map(|(name, link)| Some((name, link.into_fd_link()?)))
        .collect();
    let close = if std::fs::create_dir_all(&dir).is_ok() {
        pin_and_unlink(&dir, fds);
        let _ = std::fs::remove_dir(&dir);
        Vec::new()
    } else {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("release".into())
                .spawn_scoped(s, move || release_privately(fds))
                .map_or_else(|_| Vec::new(), |t| t.join().unwrap_or_default())
        })
    };
    std::thread::scope(|s| {
        for fd in close {
            // A thread that cannot be spawned leaves its link to be closed right here.
            let _ = std::thread::Builder::new().spawn_scoped(s, move || drop(fd));
        }
    });
}

/// Pin each link under `dir` and remove the pin at once: the kernel puts the link (and
/// detaches its program) from a workqueue once the pin's inode is freed.
fn pin_and_unlink(dir: &str, fds: Vec<(&str, FdLink)>) {
    for (i, (name, fd)) in fds.into_iter().enumerate() {
        let path = format!("{dir}/{i}-{name}");
        // A failed pin consumes the link: it is closed (synchronously) right there.
        if let Ok(pinned) = fd.pin(&path) {
            drop(pinned);
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// `pin_and_unlink` on a bpffs of this thread's own: the thread leaves the process's mount
/// namespace, makes every mount in its copy private (so nothing it mounts reaches the
/// host's), and mounts a fresh bpffs over a directory only it sees. Run on a thread of its
/// own, which ends with its namespace. The links are handed back when a step is refused
/// (no CAP_SYS_ADMIN, seccomp), to be closed the slow way.
fn release_privately(fds: Vec<(&'static str, FdLink)>) -> Vec<FdLink> {
    use std::ffi::CString;
    let give_back = |fds: Vec<(&str, FdLink)>| fds.into_iter().map(|(_, fd)| fd).collect();
    // SAFETY: unshare and mount take no pointers but the NUL-terminated strings made here
    // (or null where the call allows it); they change only this thread's mount namespace.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return give_back(fds);
        }
        let root = c"/";
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return give_back(fds);
        }
        // /sys/fs/bpf is there (unmounted) on kernels with bpffs; /tmp anywhere else.
        for at in ["/sys/fs/bpf", "/tmp"] {
            let Ok(c) = CString::new(at) else { continue };
            let fs = c"bpf";
            if libc::mount(fs.as_ptr(), c.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) == 0 {
                pin_and_unlink(at, fds);
                return Vec::new();
            }
        }
    }
    give_back(fds)
}

/// Remove the pins an agent killed in `release_links` left behind (their programs would
/// otherwise stay attached until reboot).
fn release_stale() {
    let Ok(dirs) = std::fs::read_dir(RELEASE_DIR) else {
        return;
    };
    for d in dirs.flatten() {
        let name = d.file_name();
        let alive = name
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if alive {
            continue;
        }
        let _ = std::fs::remove_dir_all(d.path());
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        release_links(std::mem::take(&mut self.links.hooks));
    }
}

/// Where `--keep-enforcing` pins the LSM links and maps.
pub const PIN_DIR: &str = "/sys/fs/bpf/snapmon";

impl Kernel {
    /// Pin the LSM links (and the decision maps) so enforcement outlives the agent.
    /// Remove with `rm -r /sys/fs/bpf/snapmon`.
    pub fn pin_enforcement(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(PIN_DIR)?;
        for (name, link) in self.links.lsm.drain(..) {
            let fd: FdLink = link.into();
            fd.pin(format!("{PIN_DIR}/{name}"))
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        }
        Ok(())
    }

    /// Replace the enforcement maps with a new plan (or none: decisions off), for SIGHUP.
    pub fn reapply_enforcement(
        &mut self,
        plan: Option<&crate::enforce::Plan>,
        dry_run: bool,
    ) -> anyhow::Result<()> {
        let mut flags = self.runtime.get(&0, 0).unwrap_or(0);
        // Decisions off while the maps are rebuilt: a half-built map must not deny anyone.
        self.runtime
            .set(0, flags & !snapmon_common::runtime::ENFORCE_ACTIVE, 0)?;
        let prot: Vec<FileKey> = self
            .enforce
            .protected
            .keys()
            .filter_map(Result::ok)
            .collect();
        for k in prot {
            let _ = self.enforce.protected.remove(&k);
        }
        let trusted: Vec<FileKey> = self.enforce.trusted.keys().filter_map(Result::ok).collect();
        for k in trusted {
            let _ = self.enforce.trusted.remove(&k);
        }
        flags &= !(snapmon_common::runtime::ENFORCE_ACTIVE | snapmon_common::runtime::DRY_RUN);
        self.runtime.set(0, flags, 0)?;
        match plan {
            Some(p) => self.apply_enforcement(p, dry_run),
            None => Ok(()),
        }
    }

    /// Load an enforcement plan into the maps, then switch decisions on.
    pub fn apply_enforcement(
        &mut self,
        plan: &crate::enforce::Plan,
        dry_run: bool,
    ) -> anyhow::Result<()> {
        for (k, _) in &plan.trusted {
            self.enforce.trusted.insert(k, 1, 0)?;
        }
        for (cmd, _) in crate::enforce::DENY_IOCTLS {
            self.enforce.deny_ioctls.insert(cmd, 1, 0)?;
        }
        for (k, m, _) in &plan.protected {
            self.enforce.protected.insert(k, m, 0)?;
        }
        let mut flags =
            self.runtime.get(&0, 0).unwrap_or(0) | snapmon_common::runtime::ENFORCE_ACTIVE;
        if dry_run {
            flags |= snapmon_common::runtime::DRY_RUN;
        }
        self.runtime.set(0, flags, 0)?;
        Ok(())
    }

    /// Runs and run time of every attached program so far (kernel BPF run statistics);
    /// empty when the kernel is not counting.
    pub fn hook_runs(&self) -> Vec<crate::metrics::HookRun> {
        if !self.counters.run_stats.counting() {
            return Vec::new();
        }
        // A program shared by several hooks counts its runs once.
        let mut seen = std::collections::HashSet::new();
        self.info
            .hooks
            .iter()
            .filter_map(|h| {
                let attach = h.attached_to.as_ref()?;
                let name = h.handler.unwrap_or(h.program);
                if !seen.insert(name) {
                    return None;
                }
                let (_, fd) = self.programs.iter().find(|(n, _)| *n == name)?;
                let (runs, run_ns) = run_stats(fd.as_fd()).ok()?;
                Some(crate::metrics::HookRun {
                    program: name.to_string(),
                    attach: attach.clone(),
                    runs,
                    run_ns,
                })
            })
            .collect()
    }

    /// Take one of the object's maps not already taken at load.
    pub fn take_map(&mut self, name: &str) -> Option<aya::maps::Map> {
        let i = self.maps.iter().position(|(n, _)| n == name)?;
        Some(self.maps.swap_remove(i).1)
    }
}

/// A loaded program's run count and run time (`BPF_OBJ_GET_INFO_BY_FD`): aya reads these
/// only through its `Program`, which is not kept.
fn run_stats(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<(u64, u64)> {
    use aya_obj::generated::{bpf_cmd, bpf_prog_info};
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: bpf_prog_info is plain integers; all zero is its empty value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<bpf_prog_info>() as u32,
        info: &mut info as *mut bpf_prog_info as u64,
    };
    // SAFETY: the kernel writes at most `info_len` bytes into `info`, which outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &attr as *const InfoAttr,
            size_of::<InfoAttr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((info.run_cnt, info.run_time_ns))
}

impl Counters {
    /// Writes the kernel dropped as trusted writes outside every published range.
    pub fn filtered_count(&self) -> u64 {
        self.filtered
            .get(&0, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Sum of per-CPU loss counters, by cause.
    pub fn lost_counts(&self) -> [u64; snapmon_common::lost::COUNT as usize] {
        let mut out = [0u64; snapmon_common::lost::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(v) = self.lost.get(&(i as u32), 0) {
                *slot = v.iter().sum();
            }
        }
        out
    }

    /// Sum of the per-CPU loss counters of one cause (`snapmon_common::lost`).
    pub fn lost_count(&self, cause: u32) -> u64 {
        self.lost
            .get(&cause, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// The newest record of `slot` (`snapmon_common::blinded_slot`: about an image or
    /// metadata file, or a path in a watched tree) any CPU dropped, if one was.
    pub fn last_blinded(&self, slot: u32) -> Option<snapmon_common::Blinded> {
        newest_blinded(self.blinded.get(&slot, 0).ok()?.iter().copied())
    }
}

/// Of the per-CPU `BLINDED` slots, the one written last (a slot never written is all zero).
pub fn newest_blinded(
    slots: impl IntoIterator<Item = snapmon_common::Blinded>,
) -> Option<snapmon_common::Blinded> {
    slots
        .into_iter()
        .filter(|b| b.ts_ns != 0)
        .max_by_key(|b| b.ts_ns)
}

/// Replace the trusted-writer identities (exe identity → `filter_actor` bits).
pub fn set_trusted_writers(
    map: &mut BpfHashMap<MapData, FileKey, u32>,
    ids: &[(FileKey, u32)],
) -> anyhow::Result<()> {
    let old: Vec<FileKey> = map.keys().filter_map(Result::ok).collect();
    for k in old {
        if !ids.iter().any(|(i, _)| *i == k) {
            let _ = map.remove(&k);
        }
    }
    for (k, bits) in ids {
        map.insert(k, bits, 0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `[from, to)` mapped in this process (/proc/self/pagemap, bit 63).
    fn present_pages(from: usize, to: usize) -> usize {
        use std::io::{Read as _, Seek as _};
        let mut pm = std::fs::File::open("/proc/self/pagemap").unwrap();
        pm.seek(std::io::SeekFrom::Start((from / 4096 * 8) as u64))
            .unwrap();
        let mut b = vec![0u8; (to - from) / 4096 * 8];
        pm.read_exact(&mut b).unwrap();
        b.chunks_exact(8)
            .filter(|e| u64::from_le_bytes((*e).try_into().unwrap()) >> 63 == 1)
            .count()
    }

    /// Tests that read the embedded object fault its pages back in: the unmapping test must
    /// not run beside them.
    fn reading_the_object() -> std::sync::MutexGuard<'static, ()> {
        static READERS: std::sync::Mutex<()> = std::sync::Mutex::new(());
        READERS.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[test]
    fn the_embedded_object_is_unmapped_once_loaded() {
        let _alone = reading_the_object();
        let start = OBJECT.as_ptr() as usize;
        let (from, to) = (
            start.next_multiple_of(4096),
            (start + OBJECT.len()) / 4096 * 4096,
        );
        assert!(to - from > 1 << 20, "object of {} bytes", OBJECT.len());
        // Read as the loader does (a copy to patch): every page is mapped.
        let copy = OBJECT.to_vec();
        assert_eq!(present_pages(from, to), (to - from) / 4096);
        release_object_pages();
        assert_eq!(present_pages(from, to), 0);
        // And read again, it is the same object.
        assert_eq!(OBJECT, &copy[..]);
    }

    /// The placeholder call as the eBPF object carries it, between two other instructions.
    fn text() -> Vec<u8> {
        let mut t = vec![0xbf, 0x16, 0, 0, 0, 0, 0, 0];
        t.extend_from_slice(&[0x85, 0, 0, 0]);
        t.extend_from_slice(&fd_walk::RDONLY_CAST_MARK.to_le_bytes());
        t.extend_from_slice(&[0x85, 0, 0, 0, 14, 0, 0, 0]);
        t
    }

    #[test]
    fn patches_the_placeholder_into_the_kfunc_call_or_a_zero() {
        let direct = FdWalk {
            mode: fd_walk::DIRECT,
            btf_file: 7,
            btf_mm: 9,
            rdonly_cast: 0x1234,
        };
        let mut t = text();
        assert_eq!(patch_marks(&mut t, direct), 1);
        assert_eq!(&t[8..16], &[0x85, 0x20, 0, 0, 0x34, 0x12, 0, 0]);
        assert_eq!(
            &t[16..],
            &[0x85, 0, 0, 0, 14, 0, 0, 0],
            "helper calls untouched"
        );
        let probe = FdWalk {
            mode: fd_walk::PROBE_READ,
            btf_file: 0,
            btf_mm: 0,
            rdonly_cast: 0,
        };
        let mut t = text();
        assert_eq!(patch_marks(&mut t, probe), 1);
        assert_eq!(&t[8..16], &[0xb7, 0, 0, 0, 0, 0, 0, 0]);
    }

    /// Every syscall hook's code is a program of the object; a shared one serves only
    /// tracepoints of its own kind (an exit's `ret` is where every exit keeps it).
    #[test]
    fn every_syscall_hook_names_a_program_of_the_object() {
        let _alone = reading_the_object();
        let obj = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");
        for spec in HOOKS {
            let code = match spec.attach {
                Attach::Syscall(name) => name,
                Attach::SyscallShared(code) => {
                    let kind = |n: &str| n.split('_').take(2).collect::<Vec<_>>().join("_");
                    assert_eq!(kind(code), kind(spec.program), "{}", spec.program);
                    assert_ne!(code, spec.program, "{} shares with itself", spec.program);
                    code
                }
                _ => continue,
            };
            assert!(
                obj.programs.contains_key(code),
                "{}: no program {code} in the object",
                spec.program
            );
        }
    }

    /// The parallel load verifies the costliest programs first: each one the attach loop
    /// would load has a size in the object (by the name it is loaded under), and each named
    /// costliest is a hook's program.
    #[test]
    fn every_loaded_program_has_a_size_to_order_its_verification() {
        let _alone = reading_the_object();
        let sizes = verify::sizes(OBJECT);
        for spec in HOOKS {
            if load_of(&spec.attach).is_none() {
                continue;
            }
            let code = code_of(spec);
            assert!(
                sizes.get(code).is_some_and(|&n| n > 0),
                "{}: no size for {code}",
                spec.program
            );
        }
        for c in verify::COSTLIEST {
            assert!(
                HOOKS
                    .iter()
                    .any(|s| code_of(s) == *c && load_of(&s.attach).is_some()),
                "{c} is no hook's program"
            );
        }
    }

    #[test]
    fn raw_mode_has_a_handler_for_every_syscall_entry_hook_and_32_bit_slot() {
        for spec in HOOKS {
            if let Attach::Syscall(name) = spec.attach {
                assert_eq!(
                    raw_handler(name).is_some(),
                    name.starts_with("sys_enter_"),
                    "{name}"
                );
            }
        }
        for (nr, name) in COMPAT {
            assert!(raw_handler(name).is_some(), "ia32 {nr} {name}");
        }
        let mut nrs: Vec<u32> = RAW.iter().map(|(nr, _, _)| *nr).collect();
        nrs.sort_unstable();
        nrs.dedup();
        assert_eq!(nrs.len(), RAW.len(), "one handler per syscall number");
        assert!(nrs.iter().all(|nr| *nr < snapmon_common::RAW_SLOTS));
    }

    /// The numbers of [`RAW`] are the x86_64 syscall numbers the kernel headers give.
    #[test]
    fn raw_mode_numbers_are_the_x86_64_syscall_numbers() {
        let Ok(h) = std::fs::read_to_string("/usr/include/x86_64-linux-gnu/asm/unistd_64.h") else {
            return;
        };
        let nr = |name: &str| {
            h.lines().find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("#define") && w.next() == Some(&format!("__NR_{name}")))
                    .then(|| w.next()?.parse::<u32>().ok())
                    .flatten()
            })
        };
        let mut checked = 0;
        for (n, program, _) in RAW {
            let name = program.trim_start_matches("sys_enter_");
            // sendfile64 is `sendfile` on x86_64; headers older than the syscall lack it.
            let name = if name == "sendfile64" {
                "sendfile"
            } else {
                name
            };
            if let Some(want) = nr(name) {
                assert_eq!(*n, want, "{program}");
                checked += 1;
            }
        }
        assert!(checked > 30, "only {checked} numbers found in the header");
    }

    #[test]
    fn syscall_hook_modes_parse_by_name_only() {
        for m in SyscallHook::ALL {
            assert_eq!(SyscallHook::parse(m.name()), Some(m));
        }
        assert_eq!(SyscallHook::parse("Raw"), None);
        assert_eq!(SyscallHook::default(), SyscallHook::Auto);
    }

    #[test]
    fn raw_handlers_are_tail_called_and_attached_programs_are_not() {
        assert!(tail_called("raw_pwrite64"));
        assert!(!tail_called("syscall_enter"));
        assert!(!tail_called("sys_enter_pwrite64"));
    }

    /// `auto` is raw only where raw loads and no VFS write hook owns writes; an explicit
    /// mode is kept whatever the load has (raw then fails with its reason).
    /// The programs skip the ia32 test, or return at once, for a number outside these sets:
    /// a slot the loader fills that is missing from them would be a syscall never seen.
    #[test]
    fn the_syscall_sets_hold_every_slot_the_loader_fills() {
        let (compat, hooked) = (compat_ids(), hooked_ids());
        for &(nr, name) in COMPAT {
            if raw_handler(name).is_some() {
                assert!(
                    compat.contains(nr) && hooked.contains(nr),
                    "ia32 {nr} {name}"
                );
            }
        }
        for &(nr, tp, _) in RAW {
            assert!(hooked.contains(nr), "{nr} {tp}");
        }
        // And nothing else: getppid (110) has no handler on either ABI.
        assert!(!hooked.contains(110) && !compat.contains(110));
        let n = |s: SyscallSet| s.0.iter().map(|w| w.count_ones()).sum::<u32>();
        assert_eq!(
            n(compat) as usize,
            COMPAT
                .iter()
                .filter(|(_, p)| raw_handler(p).is_some())
                .count()
        );
    }

    #[test]
    fn auto_is_raw_only_without_the_vfs_hook_and_where_raw_runs() {
        use SyscallHook::*;
        for (mode, raw_runs, vfs, want) in [
            (Auto, true, false, Raw),
            (Auto, true, true, Tracepoint),
            (Auto, false, false, Tracepoint),
            (Auto, false, true, Tracepoint),
            (Tracepoint, true, false, Tracepoint),
            (Raw, false, true, Raw),
        ] {
            assert_eq!(
                mode.resolve(raw_runs, vfs),
                want,
                "{mode:?} {raw_runs} {vfs}"
            );
        }
    }

    #[test]
    fn the_built_object_carries_the_placeholder() {
        let _alone = reading_the_object();
        assert!(patch_marks(&mut OBJECT.to_vec(), FdWalk::probe()) > 0);
    }

    /// The programs read syscall arguments by context loads only at the usual layout
    /// (`SC_ARGS_USUAL`); elsewhere every argument is a helper call again.
    #[test]
    fn this_kernels_syscall_records_have_the_usual_layout() {
        let Ok((args, ret)) = syscall_arg_offsets("/sys/kernel/tracing") else {
            return; // no tracefs here (an unprivileged build)
        };
        assert_eq!(args, snapmon_common::SC_ARGS_USUAL);
        assert_eq!(ret, snapmon_common::SC_RET_USUAL);
    }

    #[test]
    fn this_kernel_gets_the_direct_walk() {
        let data = Btf::from_sys_fs().expect("kernel BTF at /sys/kernel/btf/vmlinux");
        let btf = Btf::parse(&data).unwrap();
        if btf.func_id("bpf_rdonly_cast").is_err() || std::env::var_os("SNAPMON_FD_WALK").is_some()
        {
            return;
        }
        let w = FdWalk::choose(&btf, snapmon_common::valid::FILES);
        assert_eq!(w.name(), "direct");
        assert_ne!(w.btf_file, 0);
        let all = FdWalk::choose(
            &btf,
            snapmon_common::valid::FILES | snapmon_common::valid::ARGS,
        );
        assert_ne!(
            all.btf_mm, 0,
            "the fd slot by a plain load where `exe_file`'s offset is known"
        );
    }
}
