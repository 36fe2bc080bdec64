//! Kernel hooks: the first stage of the flow. Each program filters in the kernel and emits
//! one wire record (see `snapmon-common`) into `EVENTS` only for watched files and dirs.
//!
//! Which hook fires is the backend's business (tracepoints here); what it emits is shared by
//! the `emit` helpers, so a second backend produces the same records.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![feature(asm_experimental_arch)]
#![allow(internal_features, reason = "core_intrinsics for the BPF target")]
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "aya's maps take `impl Borrow<K>`: a key passed by reference stays the stack slot the helper is given"
)]

mod compat;
mod emit;
mod enforce;
mod ioctl;
mod kernel;
mod namespace;
mod observe;
mod open;
mod path;
mod process;
mod raw;
mod respond;
mod uring;
mod vfs;
mod write;

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use snapmon_common::{
    AgentConfig, FileKey, FileOpenEvent, FileWriteEvent, IoctlEvent, KernelOffsets, NamespaceEvent,
    NsMark, OpenStash, RespondEntry, RespondEvent, RespondTarget, WriteFilter,
};

/// Field offsets from the running kernel's BTF, written by the loader.
#[no_mangle]
static OFFSETS: KernelOffsets = unsafe { core::mem::zeroed() };

#[no_mangle]
static CONFIG: AgentConfig = unsafe { core::mem::zeroed() };

/// Size is overridden by the loader (`--ring-buffer-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// The urgent lane (`emit::urgent_*`): drained before `EVENTS`, so no unprivileged user's
/// flood delays what root does or what touches an image the user does not own. Sized by the
/// loader (a quarter of `EVENTS`).
#[map]
static URGENT: RingBuf = RingBuf::with_byte_size(2 << 20, 0);

/// Watched regular files and devices, by identity. Value: reserved flags.
#[map]
static WATCHED_FILES: HashMap<FileKey, u32> =
    HashMap::with_max_entries(snapmon_common::WATCHED_FILES_MAX, 0);

/// Ordinary entries of `WATCHED_FILES`, counted by kernel and agent (`watch_share`): the
/// open hook admits an ordinary file only below `ORDINARY_LIMIT`.
#[map]
static WATCH_SHARE: Array<u64> = Array::with_max_entries(snapmon_common::watch_share::COUNT, 0);

/// Loop devices over watched images, by device number (`inode.i_rdev`) → the identity of the
/// node the attach was issued on: every node of the device (a `mknod` twin has its own inode)
/// is that node's alias. Filled at attach; the agent withdraws entries on detach.
#[map]
static WATCHED_RDEV: HashMap<u32, FileKey> = HashMap::with_max_entries(256, 0);

/// Nonzero while `WATCHED_RDEV` may have entries (set here after an insert, cleared by the
/// agent when it empties the map): otherwise no write pays the `i_rdev` read.
#[map]
static RDEV_ANY: Array<u32> = Array::with_max_entries(1, 0);

/// FNV-1a hashes of the lower-case extensions of image and metadata names
/// (`snapmon_common::ext_hash`), pushed by the agent: such files always get a watch.
#[map]
static PRECIOUS_EXTS: HashMap<u64, u32> =
    HashMap::with_max_entries(snapmon_common::PRECIOUS_EXTS_MAX, 0);

/// Nonzero at `ino_slot(ino)` for every watched file's inode number (`snapmon_common::ino_slot`).
#[map]
static WATCHED_INO: Array<u32> = Array::with_max_entries(snapmon_common::INO_SLOTS, 0);

/// Inode numbers of watched images and metadata, set by the agent: an overlay over a
/// store shows its files under the same numbers, on the overlay's anonymous device, in
/// whichever mount namespace it was mounted (`open_watch::OVERLAY`).
#[map]
static IMAGE_INO: LruHashMap<u64, u32> =
    LruHashMap::with_max_entries(snapmon_common::IMAGE_INO_MAX, 0);

/// Watched directories and their ancestors (`dir_flags`).
#[map]
static WATCHED_DIRS: HashMap<FileKey, u32> = HashMap::with_max_entries(16384, 0);

/// FNV-1a hashes of the absolute paths of watched directories.
#[map]
static WATCHED_PREFIXES: HashMap<u64, u32> = HashMap::with_max_entries(4096, 0);

/// FNV-1a hashes of the last components of watched image and metadata names
/// (`snapmon_common::leaf_hash`): a path that ends in one is sent up though its directories
/// match no watched prefix (a symlinked or bind-mounted store).
#[map]
static WATCHED_LEAVES: HashMap<u64, u32> =
    HashMap::with_max_entries(snapmon_common::WATCHED_LEAVES_MAX, 0);

/// open(2) arguments kept between syscall entry and exit, by thread id.
#[map]
static OPEN_STASH: LruHashMap<u32, OpenStash> = LruHashMap::with_max_entries(8192, 0);

/// Flags the agent sets after attaching (`snapmon_common::runtime`).
/// Namespace syscalls the tracepoints reported, per thread (see `observe`).
#[map]
static NS_MARK: LruHashMap<u64, NsMark> = LruHashMap::with_max_entries(4096, 0);

#[map]
static RUNTIME: Array<u32> = Array::with_max_entries(1, 0);

/// Protected objects (files or store directories) → `deny::*` bits and mode.
#[map]
static PROTECTED: HashMap<FileKey, u32> = HashMap::with_max_entries(65536, 0);

/// Executable identities allowed to touch protected objects.
#[map]
static TRUSTED_EXES: HashMap<FileKey, u32> = HashMap::with_max_entries(1024, 0);

/// Classified watched files → the ranges trusted writers' writes must still be reported for.
#[map]
static WRITE_FILTER: HashMap<FileKey, WriteFilter> = HashMap::with_max_entries(4096, 0);

/// Executable identities of trusted writers → `filter_actor` bits (from the policy's actors).
#[map]
static TRUSTED_WRITERS: HashMap<FileKey, u32> = HashMap::with_max_entries(1024, 0);

/// Writes dropped by `WRITE_FILTER` (per CPU, summed by the agent).
#[map]
static FILTERED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// ioctl cmds judged by the enforcement hook (snapshot destroy, read-only clear …).
#[map]
static DENY_IOCTLS: HashMap<u32, u32> = HashMap::with_max_entries(256, 0);

/// Circuit breaker: protected files and store directories → `respond::*` bits and ranges.
#[map]
static RESPOND: HashMap<FileKey, RespondTarget> = HashMap::with_max_entries(16384, 0);

/// Circuit breaker: FNV-1a of protected images' absolute paths → `respond::*` bits, for
/// operations that name a path.
#[map]
static RESPOND_PATHS: HashMap<u64, u32> = HashMap::with_max_entries(16384, 0);

/// Circuit breaker: protected images by (directory, FNV-1a of the name), for operations
/// that name them relative to a directory fd or the cwd.
#[map]
static RESPOND_ENTRIES: HashMap<RespondEntry, u32> = HashMap::with_max_entries(16384, 0);

/// Executable identities the circuit breaker never signals (trusted actors, package
/// managers, init's executable).
#[map]
static RESPOND_TRUSTED: HashMap<FileKey, u32> = HashMap::with_max_entries(1024, 0);

/// Records that could not be emitted, by cause (`snapmon_common::lost`).
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(snapmon_common::lost::COUNT, 0);

/// The last image or metadata record (`emit::output_file`) and the last path record in a
/// watched tree (`emit::output_ns`) each CPU dropped (`snapmon_common::blinded_slot`): per
/// CPU, so a slot has one writer and the agent never reads a file from one drop and an actor
/// from another.
#[map]
static BLINDED: PerCpuArray<snapmon_common::Blinded> =
    PerCpuArray::with_max_entries(snapmon_common::blinded_slot::COUNT, 0);

// Per-CPU scratch records: larger than the 512-byte BPF stack.
#[map]
static SCRATCH_WRITE: PerCpuArray<FileWriteEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SCRATCH_NS: PerCpuArray<NamespaceEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SCRATCH_IOCTL: PerCpuArray<IoctlEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SCRATCH_OPEN: PerCpuArray<FileOpenEvent> = PerCpuArray::with_max_entries(1, 0);
/// Loop state of the path filter's `bpf_loop` walk.
#[map]
static PATH_WALK: PerCpuArray<path::Walk> = PerCpuArray::with_max_entries(1, 0);
/// Loop state of the walk up from a base directory not (yet) in `WATCHED_DIRS`.
#[map]
static UP_WALK: PerCpuArray<path::UpWalk> = PerCpuArray::with_max_entries(1, 0);
/// A cut path read once more in full, for its length (`path::match_path`).
#[map]
static PATH_FULL: PerCpuArray<[u8; snapmon_common::PATH_MAX]> = PerCpuArray::with_max_entries(1, 0);
/// The write the circuit breaker is judging (`respond::on_write`).
#[map]
static RESPOND_WRITE: PerCpuArray<respond::WriteCheck> = PerCpuArray::with_max_entries(1, 0);
/// linux-aio writes of one io_submit, judged after its loop (`respond::flush_aio`).
#[map]
static RESPOND_AIO: PerCpuArray<respond::WriteQueue> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SCRATCH_RESPOND: PerCpuArray<RespondEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SCRATCH_URING: PerCpuArray<snapmon_common::UringRegisterEvent> =
    PerCpuArray::with_max_entries(1, 0);
/// Loop state of an io_uring files registration being read (`uring::register_step`).
#[map]
static REG_WALK: PerCpuArray<uring::RegWalk> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SCRATCH_EXEC: PerCpuArray<snapmon_common::ExecEvent> = PerCpuArray::with_max_entries(1, 0);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
