//! The floor under any syscall-tracepoint agent: a do-nothing BPF program (`r0 = 0; exit`)
//! on the write syscalls' tracepoints that snapmon's write path uses, on raw `sys_enter`,
//! or on an unrelated syscall's tracepoint. Its cost is the hooks' own (the syscall slow
//! path, the perf trace buffer, the program call), with none of snapmon's work on top, so
//! the hook-cost phase can show how much of snapmon's cost any tracepoint design pays.

use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{bail, Context as _};

/// The write syscalls' tracepoints (the hook-cost loop calls pwrite64).
pub const TRACEPOINTS: &[&str] = &[
    "syscalls/sys_enter_write",
    "syscalls/sys_enter_pwrite64",
    "syscalls/sys_enter_writev",
    "syscalls/sys_enter_pwritev",
    "syscalls/sys_enter_pwritev2",
];

/// Attached while alive; dropping the fds detaches and unloads.
pub struct Floor {
    _fds: Vec<OwnedFd>,
}

#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// `union bpf_attr` for BPF_PROG_LOAD, up to the fields we set; the kernel takes the rest
/// as zero.
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    _rest: [u8; 80],
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

fn tracepoint_id(tp: &str) -> anyhow::Result<u64> {
    for base in [
        "/sys/kernel/tracing/events",
        "/sys/kernel/debug/tracing/events",
    ] {
        if let Ok(s) = std::fs::read_to_string(format!("{base}/{tp}/id")) {
            return s.trim().parse().context("tracepoint id");
        }
    }
    bail!("tracepoint {tp} not found under /sys/kernel/tracing/events")
}

fn load_noop(prog_type: u32) -> anyhow::Result<OwnedFd> {
    let insns = [
        // r0 = 0
        Insn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: 0,
        },
        // exit
        Insn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license = b"GPL\0";
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"bench_noop");
    let attr = ProgLoad {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        _rest: [0; 80],
    };
    sys_bpf(BPF_PROG_LOAD, &attr).context("loading the no-op program")
}

/// `bpf(cmd, attr)` for a command that returns a new fd.
fn sys_bpf<T>(cmd: libc::c_long, attr: &T) -> anyhow::Result<OwnedFd> {
    // SAFETY: `attr` is a live `union bpf_attr` prefix of the size passed, pointing at live
    // buffers for the duration of the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn attach(prog: &OwnedFd, tp: &str) -> anyhow::Result<OwnedFd> {
    use std::os::fd::AsRawFd as _;
    let id = tracepoint_id(tp)?;
    // perf_event_attr: type, size, config, sample_period; the rest zero.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&PERF_TYPE_TRACEPOINT.to_ne_bytes());
    attr[4..8].copy_from_slice(&128u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&id.to_ne_bytes());
    attr[16..24].copy_from_slice(&1u64.to_ne_bytes());
    // SAFETY: a perf_event_attr of the size it declares.
    let pfd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if pfd < 0 {
        bail!("perf_event_open({tp}): {}", std::io::Error::last_os_error());
    }
    // SAFETY: a new fd that we own.
    let pfd = unsafe { OwnedFd::from_raw_fd(pfd as i32) };
    // SAFETY: ioctls on the perf event fd with an int argument.
    unsafe {
        if libc::ioctl(pfd.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()) != 0 {
            bail!("attaching to {tp}: {}", std::io::Error::last_os_error());
        }
        if libc::ioctl(pfd.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) != 0 {
            bail!("enabling {tp}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(pfd)
}

impl Floor {
    /// On the per-syscall tracepoints (perf trace buffer, then the program), as snapmon's
    /// syscall hooks are.
    pub fn attach() -> anyhow::Result<Floor> {
        Self::attach_to(TRACEPOINTS)
    }

    /// On these tracepoints (`syscalls/sys_enter_sync`: one the write loop never calls).
    pub fn attach_to(tps: &[&str]) -> anyhow::Result<Floor> {
        let prog = load_noop(BPF_PROG_TYPE_TRACEPOINT)?;
        let mut fds = Vec::new();
        for tp in tps {
            fds.push(attach(&prog, tp)?);
        }
        fds.push(prog);
        Ok(Floor { _fds: fds })
    }

    /// Both: the floor of tracepoint mode with its 32-bit hook, which the per-syscall
    /// tracepoints cannot be (they skip ia32 syscalls) and which runs on every syscall.
    pub fn attach_with_compat() -> anyhow::Result<Floor> {
        let mut f = Self::attach()?;
        f._fds.extend(Self::attach_raw()?._fds);
        Ok(f)
    }

    /// On the raw `sys_enter` tracepoint: called for every syscall, with no trace buffer.
    /// The floor of a design that hooks all syscalls once and picks the writes by number.
    pub fn attach_raw() -> anyhow::Result<Floor> {
        use std::os::fd::AsRawFd as _;
        let prog = load_noop(BPF_PROG_TYPE_RAW_TRACEPOINT)?;
        #[repr(C)]
        struct RawOpen {
            name: u64,
            prog_fd: u32,
            _rest: [u8; 116],
        }
        let name = b"sys_enter\0";
        let attr = RawOpen {
            name: name.as_ptr() as u64,
            prog_fd: prog.as_raw_fd() as u32,
            _rest: [0; 116],
        };
        let link = sys_bpf(BPF_RAW_TRACEPOINT_OPEN, &attr).context("attaching to raw sys_enter")?;
        Ok(Floor {
            _fds: vec![link, prog],
        })
    }
}

/// Per-program run time accounting (`run_time_ns`, `run_cnt`) while the fd is open. It
/// costs two clock reads per program run, so timed loops run without it.
pub fn enable_stats() -> anyhow::Result<OwnedFd> {
    #[repr(C)]
    struct EnableStats {
        kind: u32, // BPF_STATS_RUN_TIME
        _rest: [u8; 124],
    }
    sys_bpf(
        BPF_ENABLE_STATS,
        &EnableStats {
            kind: 0,
            _rest: [0; 124],
        },
    )
    .context("BPF_ENABLE_STATS")
}
