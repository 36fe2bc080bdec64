//! Kernel object walks (task → files → file → inode) using BTF offsets supplied at load time,
//! through typed pointers (`Task`, `File`, `Inode`, `Dentry`, `SuperBlock`, `Mm`) whose methods
//! are the reads: probe reads, or `direct_*` plain loads through a BTF pointer.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel,
    generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
};
use snapmon_common::{dir_flags, fd_walk, watch_value, FileKey};

use crate::{CONFIG, OFFSETS, RDEV_ANY, WATCHED_DIRS, WATCHED_FILES, WATCHED_INO, WATCHED_RDEV};

/// Read an offset from the load-time global; volatile so it is not constant-folded to 0.
macro_rules! off {
    ($f:ident) => {
        crate::kernel::ko(&crate::OFFSETS.$f)
    };
}

#[inline(always)]
pub fn ko(p: &u32) -> usize {
    unsafe { core::ptr::read_volatile(p) as usize }
}
pub(crate) use off;

#[inline(always)]
pub fn valid(group: u32) -> bool {
    unsafe { core::ptr::read_volatile(&OFFSETS.valid) & group == group }
}

#[inline(always)]
pub fn agent_tgid() -> u32 {
    unsafe { core::ptr::read_volatile(&CONFIG.agent_tgid) }
}

/// Does this load walk fd → inode with BTF loads (`fd_walk::DIRECT`)? A frozen `.rodata`
/// value, so the verifier sees a constant and never visits the other walk.
#[inline(always)]
pub fn direct_walk() -> bool {
    unsafe { core::ptr::read_volatile(&CONFIG.fd_walk) == fd_walk::DIRECT }
}

#[inline(always)]
pub fn process_events() -> bool {
    unsafe { core::ptr::read_volatile(&CONFIG.process_events) != 0 }
}

/// Read a `T` at `base + off` in kernel memory.
#[inline(always)]
pub unsafe fn rk<T>(base: *const u8, off: usize) -> Option<T> {
    if base.is_null() {
        return None;
    }
    bpf_probe_read_kernel(base.add(off) as *const T).ok()
}

/// A scalar field of a BTF pointer (a `tp_btf` argument): a plain load with the direct walk,
/// a probe read on the probe-read walk (whose programs stay as verified on 6.1).
#[inline(always)]
pub unsafe fn rbtf<T: Copy>(btf: *const u8, off: usize) -> Option<T> {
    if direct_walk() {
        if btf.is_null() {
            return None;
        }
        Some(ld(btf, off))
    } else {
        rk(btf, off)
    }
}

/// Two 8-byte fields of one struct, `a` before `b`: with a single helper call when both are
/// 8-byte aligned and within 32 bytes (the fdtable and inode fields on the hot path, where
/// each `bpf_probe_read_kernel` is a large share of the per-syscall cost), else two.
#[inline(always)]
#[allow(
    clippy::manual_is_multiple_of,
    reason = "is_multiple_of's zero check changes the BPF code of every hot-path caller"
)]
pub unsafe fn rk2(base: *const u8, a: usize, b: usize) -> Option<(u64, u64)> {
    if base.is_null() {
        return None;
    }
    let d = b.wrapping_sub(a);
    if a % 8 == 0 && b % 8 == 0 && b > a && d < 32 {
        if let Ok(w) = bpf_probe_read_kernel(base.add(a) as *const [u64; 4]) {
            let i = (d / 8) & 3;
            return Some((w[0], w[i]));
        }
    }
    Some((rk(base, a)?, rk(base, b)?))
}

/// A kernel pointer to one struct type. Reads through it are probe reads (`rk`), which work
/// on any pointer; the `direct_*` ones are plain loads (`ld`), which verify only through a
/// BTF pointer (`Task::current_btf`, `fd_walk::DIRECT`'s files and what hangs off them).
macro_rules! kernel_ptr {
    ($($(#[$m:meta])* $name:ident;)*) => {$(
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq)]
        #[repr(transparent)]
        pub struct $name(*const u8);

        #[allow(dead_code, reason = "the same accessors for every pointer type")]
        impl $name {
            #[inline(always)]
            pub const fn new(p: *const u8) -> Self {
                Self(p)
            }

            #[inline(always)]
            pub const fn null() -> Self {
                Self(core::ptr::null())
            }

            #[inline(always)]
            pub fn as_ptr(self) -> *const u8 {
                self.0
            }

            #[inline(always)]
            pub fn is_null(self) -> bool {
                self.0.is_null()
            }

            /// `None` for a null pointer.
            #[inline(always)]
            fn non_null(p: *const u8) -> Option<Self> {
                if p.is_null() {
                    None
                } else {
                    Some(Self(p))
                }
            }

            /// A member pointer by probe read (`None` when the read fails; may be null).
            #[inline(always)]
            unsafe fn rk_ptr<T: From<*const u8>>(self, off: usize) -> Option<T> {
                rk::<*const u8>(self.0, off).map(T::from)
            }

            /// A BTF pointer member by plain load, `None` when null.
            #[inline(always)]
            unsafe fn ld_ptr<T: From<*const u8>>(self, off: usize) -> Option<T> {
                let p: *const u8 = ld(self.0, off);
                if p.is_null() {
                    None
                } else {
                    Some(T::from(p))
                }
            }
        }

        impl From<*const u8> for $name {
            #[inline(always)]
            fn from(p: *const u8) -> Self {
                Self(p)
            }
        }
    )*};
}

kernel_ptr! {
    /// `struct task_struct *`
    Task;
    /// `struct file *`
    File;
    /// `struct inode *`
    Inode;
    /// `struct dentry *`
    Dentry;
    /// `struct super_block *`
    SuperBlock;
    /// `struct mm_struct *`
    Mm;
}

impl Task {
    /// The current task as a scalar: probe reads only.
    #[inline(always)]
    pub fn current() -> Self {
        Self(unsafe { bpf_get_current_task() } as *const u8)
    }

    /// The current task as a BTF pointer: `direct_*` reads too.
    #[inline(always)]
    pub fn current_btf() -> Self {
        Self(unsafe { bpf_get_current_task_btf() } as *const u8)
    }

    /// `task->files->fdt->fd[fd]`
    #[inline(always)]
    pub unsafe fn fd_file(self, fd: i64) -> Option<File> {
        if direct_walk() {
            // A BTF pointer: the probe reads callers make through it work as on a scalar.
            return direct_file(fd);
        }
        if fd < 0 {
            return None;
        }
        let files: *const u8 = rk(self.0, off!(task_files))?;
        let fdt: *const u8 = rk(files, off!(files_fdt))?;
        let (max, fds) = rk2(fdt, off!(fdt_max_fds), off!(fdt_fd))?;
        // `max_fds` is an unsigned int: the low half of its 8-byte slot.
        if fd as u64 >= max & 0xffff_ffff {
            return None;
        }
        let fds = fds as *const *const u8;
        if fds.is_null() {
            return None;
        }
        let file: *const u8 = bpf_probe_read_kernel(fds.add(fd as usize)).ok()?;
        File::non_null(file)
    }

    /// The directory a relative path starts from: `dirfd`'s dentry or the cwd's.
    #[inline(always)]
    pub unsafe fn base_dir(self, dirfd: i64) -> Option<Dentry> {
        const AT_FDCWD: i64 = -100;
        if direct_walk() {
            // As `fd_file`: the current task's, by BTF loads. Callers read on from the dentry
            // by probe reads, which take a BTF pointer as well as a scalar.
            return if dirfd as i32 as i64 == AT_FDCWD {
                let fs: *const u8 = ld(Task::current_btf().0, off!(task_fs));
                if fs.is_null() {
                    return None;
                }
                Dentry::non_null(ld(fs, off!(fs_pwd_dentry)))
            } else {
                direct_file(dirfd)?.direct_dentry()
            };
        }
        let d = if dirfd as i32 as i64 == AT_FDCWD {
            let fs: *const u8 = rk(self.0, off!(task_fs))?;
            Dentry::new(rk(fs, off!(fs_pwd_dentry))?)
        } else {
            self.fd_file(dirfd)?.dentry()
        };
        (!d.is_null()).then_some(d)
    }

    /// `task->mm` (null for a kernel thread).
    #[inline(always)]
    pub unsafe fn mm(self) -> Option<Mm> {
        self.rk_ptr(off!(task_mm))
    }

    #[inline(always)]
    pub unsafe fn direct_mm(self) -> Option<Mm> {
        self.ld_ptr(off!(task_mm))
    }

    #[inline(always)]
    pub unsafe fn real_parent(self) -> Option<Task> {
        self.rk_ptr(off!(task_real_parent))
    }

    #[inline(always)]
    pub unsafe fn tgid(self) -> u32 {
        rk::<i32>(self.0, off!(task_tgid)).unwrap_or(0) as u32
    }

    #[inline(always)]
    pub unsafe fn pid(self) -> u32 {
        rk::<i32>(self.0, off!(task_pid)).unwrap_or(0) as u32
    }

    #[inline(always)]
    pub unsafe fn start_boottime(self) -> u64 {
        rk(self.0, off!(task_start_boottime)).unwrap_or(0)
    }

    #[inline(always)]
    pub unsafe fn exit_code(self) -> i32 {
        rk(self.0, off!(task_exit_code)).unwrap_or(0)
    }

    /// `task->cred->euid` (`u32::MAX` when unreadable).
    #[inline(always)]
    pub unsafe fn euid(self) -> u32 {
        let cred: *const u8 = rk(self.0, off!(task_cred)).unwrap_or(core::ptr::null());
        rk(cred, off!(cred_euid)).unwrap_or(u32::MAX)
    }

    /// `thread_info.status` by a plain load (a BTF task only).
    #[inline(always)]
    pub unsafe fn direct_ti_status(self) -> u32 {
        ld(self.0, off!(task_ti_status))
    }
}

/// `TS_COMPAT` in x86 `thread_info.status`: the task is in a 32-bit syscall.
const TS_COMPAT: u32 = 0x0002;

/// The six syscall arguments from the saved registers `regs` (a BTF `struct pt_regs *`),
/// by plain loads at offsets from the running kernel's BTF: `di si dx r10 r8 r9` natively,
/// `bx cx dx si di bp` for an ia32 syscall.
#[inline(always)]
pub unsafe fn regs_args(regs: *const u8, ia32: bool) -> [u64; 6] {
    let r = |o: usize| -> u64 { ld(regs, o) };
    if ia32 {
        [
            r(off!(regs_bx)),
            r(off!(regs_cx)),
            r(off!(regs_dx)),
            r(off!(regs_si)),
            r(off!(regs_di)),
            r(off!(regs_bp)),
        ]
    } else {
        [
            r(off!(regs_di)),
            r(off!(regs_si)),
            r(off!(regs_dx)),
            r(off!(regs_r10)),
            r(off!(regs_r8)),
            r(off!(regs_r9)),
        ]
    }
}

/// Is the current task in a 32-bit (ia32) syscall? One helper call and one direct load.
#[inline(always)]
pub unsafe fn in_compat() -> bool {
    valid(snapmon_common::valid::COMPAT) && Task::current_btf().direct_ti_status() & TS_COMPAT != 0
}

impl File {
    /// `file->f_inode`, `None` when null.
    #[inline(always)]
    pub unsafe fn inode(self) -> Option<Inode> {
        Inode::non_null(rk(self.0, off!(file_inode))?)
    }

    #[inline(always)]
    pub unsafe fn direct_inode(self) -> Option<Inode> {
        self.ld_ptr(off!(file_inode))
    }

    /// `file->f_path.dentry` (null when unreadable).
    #[inline(always)]
    pub unsafe fn dentry(self) -> Dentry {
        self.rk_ptr(off!(file_dentry)).unwrap_or(Dentry::null())
    }

    #[inline(always)]
    pub unsafe fn direct_dentry(self) -> Option<Dentry> {
        self.ld_ptr(off!(file_dentry))
    }

    /// The identity of the file's inode.
    #[inline(always)]
    pub unsafe fn key(self) -> Option<FileKey> {
        self.inode()?.key()
    }

    /// `file->f_flags` (0 when unreadable).
    #[inline(always)]
    pub unsafe fn flags(self) -> u32 {
        rk(self.0, off!(file_flags)).unwrap_or(0)
    }

    /// `file->f_mode` (0 when unreadable).
    #[inline(always)]
    pub unsafe fn mode(self) -> u32 {
        rk(self.0, off!(file_mode)).unwrap_or(0)
    }

    /// `file->f_pos` (-1 when unreadable).
    #[inline(always)]
    pub unsafe fn pos(self) -> i64 {
        rk(self.0, off!(file_pos)).unwrap_or(-1)
    }
}

impl Inode {
    /// (dev, ino)
    #[inline(always)]
    pub unsafe fn key(self) -> Option<FileKey> {
        let (sb, ino) = self.sb_ino()?;
        sb.key(ino)
    }

    /// (dev, ino) by plain loads (a BTF inode only: a scalar here fails to verify).
    #[inline(always)]
    pub unsafe fn direct_key(self) -> Option<FileKey> {
        let ino: u64 = ld(self.0, off!(inode_ino));
        let sb: SuperBlock = self.ld_ptr(off!(inode_sb))?;
        Some(sb.direct_key(ino))
    }

    /// `i_sb` and `i_ino`, in one helper call where the layout allows (`rk2`).
    #[inline(always)]
    unsafe fn sb_ino(self) -> Option<(SuperBlock, u64)> {
        let (sb, ino) = rk2(self.0, off!(inode_sb), off!(inode_ino))?;
        Some((SuperBlock(sb as *const u8), ino))
    }

    /// `i_size` (0 when unreadable).
    #[inline(always)]
    pub unsafe fn size(self) -> u64 {
        rk::<i64>(self.0, off!(inode_size)).unwrap_or(0) as u64
    }

    /// `i_size` by a plain load (a BTF inode only).
    #[inline(always)]
    pub unsafe fn direct_size(self) -> u64 {
        ld::<i64>(self.0, off!(inode_size)) as u64
    }

    /// `i_rdev`, the device number of a device node.
    #[inline(always)]
    pub unsafe fn rdev(self) -> Option<u32> {
        rk(self.0, off!(inode_rdev))
    }

    /// `i_uid`, the owner.
    #[inline(always)]
    pub unsafe fn uid(self) -> Option<u32> {
        rk(self.0, off!(inode_uid))
    }

    #[inline(always)]
    pub unsafe fn sb(self) -> Option<SuperBlock> {
        self.rk_ptr(off!(inode_sb))
    }

    /// `i_generation`, by a plain load with the direct walk (whose inodes are BTF pointers)
    /// or a probe read; `None` when unreadable or not located.
    #[inline(always)]
    pub unsafe fn generation(self, direct: bool) -> Option<u32> {
        if !valid(snapmon_common::valid::GENERATION) {
            return None;
        }
        if direct {
            return Some(ld(self.0, off!(inode_generation)));
        }
        rk(self.0, off!(inode_generation))
    }

    /// Is this inode the file a `WATCHED_FILES` entry of value `v` was made for? An entry
    /// without a generation, or an unreadable one, matches: a failed read must not blind us.
    #[inline(always)]
    pub unsafe fn is_entry_file(self, v: u32, direct: bool) -> bool {
        if v & watch_value::GEN == 0 {
            return true;
        }
        self.generation(direct)
            .is_none_or(|g| watch_value::same_file(v, g))
    }

    /// The `WATCHED_FILES` value for a new entry of this inode: `flags`, and its generation
    /// when readable.
    #[inline(always)]
    pub unsafe fn entry_value(self, flags: u32, direct: bool) -> u32 {
        match self.generation(direct) {
            Some(g) => watch_value::with_generation(flags, g),
            None => flags,
        }
    }
}

impl SuperBlock {
    /// (dev, ino) of inode number `ino` on this superblock.
    #[inline(always)]
    unsafe fn key(self, ino: u64) -> Option<FileKey> {
        let dev: u32 = rk(self.0, off!(sb_dev))?;
        Some(FileKey { dev, _pad: 0, ino })
    }

    #[inline(always)]
    unsafe fn direct_key(self, ino: u64) -> FileKey {
        let dev: u32 = ld(self.0, off!(sb_dev));
        FileKey { dev, _pad: 0, ino }
    }

    #[inline(always)]
    pub unsafe fn magic(self) -> Option<u64> {
        rk(self.0, off!(sb_magic))
    }
}

impl Dentry {
    /// `d_inode`, `None` when null (a negative dentry).
    #[inline(always)]
    pub unsafe fn inode(self) -> Option<Inode> {
        Inode::non_null(rk(self.0, off!(dentry_inode))?)
    }

    #[inline(always)]
    pub unsafe fn direct_inode(self) -> Option<Inode> {
        self.ld_ptr(off!(dentry_inode))
    }

    /// `d_parent` (null when unreadable).
    #[inline(always)]
    pub unsafe fn parent(self) -> Dentry {
        self.rk_ptr(off!(dentry_parent)).unwrap_or(Dentry::null())
    }

    #[inline(always)]
    pub unsafe fn direct_parent(self) -> Option<Dentry> {
        self.ld_ptr(off!(dentry_parent))
    }

    /// `d_name.name`, a kernel string (null when unreadable).
    #[inline(always)]
    pub unsafe fn name(self) -> *const u8 {
        rk(self.0, off!(dentry_name)).unwrap_or(core::ptr::null())
    }

    /// The identity of the dentry's inode.
    #[inline(always)]
    pub unsafe fn key(self) -> Option<FileKey> {
        self.inode()?.key()
    }
}

impl Mm {
    #[inline(always)]
    pub unsafe fn exe_file(self) -> Option<File> {
        self.rk_ptr(off!(mm_exe_file))
    }

    #[inline(always)]
    pub unsafe fn direct_exe_file(self) -> Option<File> {
        self.ld_ptr(off!(mm_exe_file))
    }

    /// `[arg_start, arg_end)`, the user memory of the command line (0s when unreadable).
    #[inline(always)]
    pub unsafe fn args(self) -> (u64, u64) {
        (
            rk(self.0, off!(mm_arg_start)).unwrap_or(0),
            rk(self.0, off!(mm_arg_end)).unwrap_or(0),
        )
    }
}

/// May an inode with this number be watched? (An array lookup the verifier inlines.)
#[inline(always)]
pub fn maybe_watched_ino(ino: u64) -> bool {
    WATCHED_INO
        .get(snapmon_common::ino_slot(ino))
        .is_some_and(|v| *v != 0)
}

/// Keep `key`'s `WATCHED_FILES` entry, without its generation: from now on it matches any
/// inode with that number, as an entry made without one does.
#[inline(always)]
pub unsafe fn forget_generation(key: &FileKey) {
    if let Some(v) = WATCHED_FILES.get_ptr_mut(key) {
        *v &= watch_value::GEN - 1;
    }
}

/// Mark an inode number before its key goes into `WATCHED_FILES`.
#[inline(always)]
pub fn mark_watched_ino(ino: u64) {
    if let Some(p) = WATCHED_INO.get_ptr_mut(snapmon_common::ino_slot(ino)) {
        unsafe { *p = 1 };
    }
}

pub struct Watched {
    pub file: File,
    pub inode: Inode,
    pub key: FileKey,
    pub is_dir: bool,
    /// An image or metadata file (its `WATCHED_FILES` entry is not `watch_value::ORDINARY`),
    /// or a loop device over a watched image: its lost records are `lost::PRECIOUS_DROPPED`.
    pub precious: bool,
    /// `i_size` read where the inode was found, with the direct walk (unused, 0, without it).
    pub size: u64,
}

impl Watched {
    /// `i_size`: the direct walk's load where the inode was found, else a probe read now
    /// (the probe-read programs stay as they were: 6.1's verifier budget).
    #[inline(always)]
    pub unsafe fn size(&self) -> u64 {
        if direct_walk() {
            self.size
        } else {
            self.inode.size()
        }
    }
}

/// `bpf_rdonly_cast(obj, btf_id)`: aya 0.14 relocates no kfunc calls, so this is a helper
/// call to a number no helper has, which the loader rewrites (`fd_walk::RDONLY_CAST_MARK`).
/// The result is an untrusted read-only `PTR_TO_BTF_ID` the verifier lets us load through.
#[inline(always)]
unsafe fn rdonly_cast(obj: u64, btf_id: u32) -> *const u8 {
    let ret: *const u8;
    core::arch::asm!(
        "call {mark}",
        mark = const fd_walk::RDONLY_CAST_MARK,
        inlateout("r1") obj => _,
        inlateout("r2") btf_id as u64 => _,
        lateout("r0") ret,
        lateout("r3") _,
        lateout("r4") _,
        lateout("r5") _,
    );
    ret
}

/// A kernel field by a plain load through a BTF pointer (a fault-safe PROBE_MEM load once
/// verified, ~1 ns against ~30 for a `bpf_probe_read_kernel` call).
#[inline(always)]
unsafe fn ld<T: Copy>(base: *const u8, off: usize) -> T {
    core::ptr::read_volatile(base.add(off) as *const T)
}

/// `task->files->fdt->fd[fd]` by BTF loads. The slot is a `struct file **` the verifier types
/// as a scalar: its address, less `mm_struct.exe_file`'s offset, is cast to a `struct
/// mm_struct` (`bpf_rdonly_cast`), and `exe_file` loaded from that is the slot, typed
/// `struct file *`: a plain load, not a ~25 ns helper call on every write. Without
/// `mm_struct`'s id the slot is a probe read and the file cast back to BTF.
#[inline(always)]
unsafe fn direct_file(fd: i64) -> Option<File> {
    if fd < 0 {
        return None;
    }
    let task = Task::current_btf();
    let files: *const u8 = ld(task.0, off!(task_files));
    if files.is_null() {
        return None;
    }
    let fdt: *const u8 = ld(files, off!(files_fdt));
    if fdt.is_null() {
        return None;
    }
    let max: u32 = ld(fdt, off!(fdt_max_fds));
    if fd as u64 >= max as u64 {
        return None;
    }
    let fds: u64 = ld(fdt, off!(fdt_fd));
    if fds == 0 {
        return None;
    }
    let slot = fds + fd as u64 * 8;
    let btf_mm = core::ptr::read_volatile(&CONFIG.btf_mm);
    if btf_mm != 0 {
        let mm = rdonly_cast(slot - off!(mm_exe_file) as u64, btf_mm);
        let file: *const u8 = ld(mm, off!(mm_exe_file));
        return (!file.is_null()).then_some(File(file));
    }
    let file: u64 = bpf_probe_read_kernel(slot as *const u64).ok()?;
    if file == 0 {
        return None;
    }
    Some(File(rdonly_cast(
        file,
        core::ptr::read_volatile(&CONFIG.btf_file),
    )))
}

/// `direct_file`, on to (file, inode, sb, ino) by plain loads.
#[inline(always)]
unsafe fn direct_inode(fd: i64) -> Option<(File, Inode, SuperBlock, u64)> {
    let f = direct_file(fd)?;
    let inode = f.direct_inode()?;
    let ino: u64 = ld(inode.0, off!(inode_ino));
    let sb: SuperBlock = SuperBlock(ld(inode.0, off!(inode_sb)));
    Some((f, inode, sb, ino))
}

/// The current task's fd's file when it is a watched file, device or (with `dirs`) a
/// watched directory. The task is fetched here, by the walk that reads through it: the
/// direct walk's BTF task is not the probe-read walk's, and a helper call neither uses is a
/// few ns on every write.
#[inline(always)]
pub unsafe fn watched_fd(fd: i64, dirs: bool) -> Option<Watched> {
    let (file, inode, sb, ino) = if direct_walk() {
        direct_inode(fd)?
    } else {
        let file = Task::current().fd_file(fd)?;
        let inode = file.inode()?;
        let (sb, ino) = inode.sb_ino()?;
        (file, inode, sb, ino)
    };
    watched_inode(file, inode, sb, ino, dirs)
}

/// `watched_fd` past the fd: is this (file, inode) watched? With the direct walk `inode` and
/// `sb` are BTF pointers (plain loads), else scalars (probe reads).
#[inline(always)]
unsafe fn watched_inode(
    file: File,
    inode: Inode,
    sb: SuperBlock,
    ino: u64,
    dirs: bool,
) -> Option<Watched> {
    let size = || {
        if direct_walk() {
            inode.direct_size()
        } else {
            0
        }
    };
    // Most writes are to unwatched files: stop before the superblock read and hash lookup.
    if !dirs && !maybe_watched_ino(ino) {
        return rdev_alias(inode).map(|key| Watched {
            file,
            inode,
            key,
            is_dir: false,
            precious: true,
            size: size(),
        });
    }
    let key = if direct_walk() {
        sb.direct_key(ino)
    } else {
        sb.key(ino)?
    };
    if let Some(v) = WATCHED_FILES.get(&key) {
        let v = *v;
        // Another generation: the watched file was freed unseen and its number reused.
        if inode.is_entry_file(v, direct_walk()) {
            return Some(Watched {
                file,
                inode,
                key,
                is_dir: false,
                precious: v & watch_value::ORDINARY == 0,
                size: size(),
            });
        }
    }
    if dirs {
        if let Some(f) = WATCHED_DIRS.get(&key) {
            if *f & dir_flags::WATCHED != 0 {
                return Some(Watched {
                    file,
                    inode,
                    key,
                    is_dir: true,
                    precious: false,
                    size: size(),
                });
            }
        }
    }
    rdev_alias(inode).map(|key| Watched {
        file,
        inode,
        key,
        is_dir: false,
        precious: true,
        size: size(),
    })
}

/// What a request naming a registered-file slot writes (`fixed_file`).
pub enum Fixed {
    /// The slot's file, when it is watched.
    Resolved(Option<Watched>),
    /// The table is not read on this kernel or load (`valid::IO_URING_FIXED`, direct walk).
    Unresolved,
}

/// The file in slot `slot` of `req`'s ring's registered-file table (`IOSQE_FIXED_FILE`),
/// when watched. The request's own `file` is not assigned before it is issued; the table is
/// what the kernel will look the slot up in. `req` is the tracepoint's BTF pointer: the ring
/// by a plain load, the slot array and slot by probe reads (pointers the verifier types as
/// scalars), the file cast back to BTF (`bpf_rdonly_cast`) and walked as `direct_inode`.
#[inline(always)]
pub unsafe fn fixed_file(req: *const u8, slot: u32) -> Fixed {
    if !direct_walk() || !valid(snapmon_common::valid::IO_URING_FIXED) {
        return Fixed::Unresolved;
    }
    Fixed::Resolved(fixed_file_watched(req, slot))
}

#[inline(always)]
unsafe fn fixed_file_watched(req: *const u8, slot: u32) -> Option<Watched> {
    let ctx: *const u8 = ld(req, off!(req_ctx));
    if ctx.is_null() {
        return None;
    }
    // The kernel's own bound (`io_rsrc_node_lookup`, `io_file_get_fixed`).
    let nr: u32 = ld(ctx, off!(uring_ft_nr));
    if slot >= nr {
        return None;
    }
    let slots: u64 = rk(ctx, off!(uring_ft_slots))?;
    if slots == 0 {
        return None;
    }
    let mut ptr: u64 = bpf_probe_read_kernel((slots as *const u64).add(slot as usize)).ok()?;
    if ko(&OFFSETS.uring_ft_nodes) != 0 {
        // 6.13+: the slot is an `io_rsrc_node *` (null: an empty slot).
        ptr = rk(ptr as *const u8, off!(uring_node_file))?;
    }
    // The low bits tag the pointer (`FFS_NOWAIT`, `FFS_ISREG`, 6.1's `FFS_SCM`).
    let file = ptr & !7;
    if file == 0 {
        return None;
    }
    let f = File(rdonly_cast(
        file,
        core::ptr::read_volatile(&CONFIG.btf_file),
    ));
    let inode = f.direct_inode()?;
    let ino: u64 = ld(inode.0, off!(inode_ino));
    let sb: SuperBlock = SuperBlock(ld(inode.0, off!(inode_sb)));
    watched_inode(File(file as *const u8), inode, sb, ino, false)
}

/// A device node whose device is a loop over a watched image (`WATCHED_RDEV`), whichever
/// node it is: the identity of the node the attach named, which the agent maps to the image.
#[inline(always)]
pub unsafe fn rdev_alias(inode: Inode) -> Option<FileKey> {
    // Only with the direct walk (6.2+): on the probe-read walk (6.1) these lookups in every
    // write hook took copy_file_range, splice and pwritev2 past the verifier's 1M
    // instructions. There a second node of a loop device is not recognised (docs/rules.md).
    if !direct_walk()
        || !valid(snapmon_common::valid::RDEV)
        || RDEV_ANY.get(0).is_none_or(|v| *v == 0)
    {
        return None;
    }
    let rdev = inode.rdev()?;
    if rdev == 0 {
        return None;
    }
    WATCHED_RDEV.get(&rdev).copied()
}

/// Record that the loop device of node `inode` (identity `node`) is over a watched image.
#[inline(always)]
pub unsafe fn watch_rdev(inode: Inode, node: &FileKey) {
    if !valid(snapmon_common::valid::RDEV) {
        return;
    }
    let Some(rdev) = inode.rdev().filter(|r| *r != 0) else {
        return;
    };
    if WATCHED_RDEV.insert(&rdev, node, 0).is_ok() {
        if let Some(p) = RDEV_ANY.get_ptr_mut(0) {
            *p = 1;
        }
    }
}

/// Is this thread group the agent itself?
#[inline(always)]
pub fn is_agent(tgid: u32) -> bool {
    tgid == agent_tgid()
}

/// The prologue every hook shares: nothing before the loader found the offsets of `group`
/// (`snapmon_common::valid`), nothing of the agent's own. The current `pid_tgid`.
#[inline(always)]
pub fn enter(group: u32) -> Option<u64> {
    if !valid(group) {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_agent((pid_tgid >> 32) as u32) {
        return None;
    }
    Some(pid_tgid)
}

/// The syscall the current task is in (`orig_ax`, -1 outside one) and its first argument,
/// from its saved registers: the same values in a syscall tracepoint and an LSM hook.
#[inline(always)]
pub unsafe fn current_syscall() -> (i64, u64) {
    let task = bpf_get_current_task_btf();
    let regs = bpf_task_pt_regs(task) as *const u8;
    (
        rk::<i64>(regs, off!(regs_orig_ax)).unwrap_or(-1),
        rk::<u64>(regs, off!(regs_di)).unwrap_or(0),
    )
}

/// io-wq workers and SQPOLL threads are named `iou-wrk-*` / `iou-sqp-*`.
#[inline(always)]
pub fn is_io_worker() -> bool {
    let comm = aya_ebpf::helpers::bpf_get_current_comm().unwrap_or([0; 16]);
    comm[0] == b'i' && comm[1] == b'o' && comm[2] == b'u' && comm[3] == b'-'
}

/// Identity of the current task's executable (`task->mm->exe_file->f_inode`).
#[inline(always)]
pub unsafe fn current_exe() -> Option<FileKey> {
    // Every pointer on this chain is a BTF-typed member: no cast needed, five plain loads.
    if direct_walk() && valid(snapmon_common::valid::ARGS) {
        let mm = Task::current_btf().direct_mm()?;
        return mm.direct_exe_file()?.direct_inode()?.direct_key();
    }
    Task::current().mm()?.exe_file()?.inode()?.key()
}
