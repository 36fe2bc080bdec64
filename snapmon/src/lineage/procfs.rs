//! Reading processes that already exist from a procfs tree (normally
//! `/proc`; tests point it at a fake tree). Every file but `stat` and
//! `status` is optional: kernel threads have no `exe`, an unprivileged agent
//! cannot read other users' `exe`/`cwd`.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

/// `sysconf(_SC_CLK_TCK)` (USER_HZ), cached; 100 if sysconf fails.
pub fn clock_ticks_per_sec() -> u64 {
    static HZ: OnceLock<u64> = OnceLock::new();
    *HZ.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if v > 0 {
            v as u64
        } else {
            100
        }
    })
}

/// Converts `/proc/<pid>/stat` starttime (clock ticks since boot) to ns.
pub fn ticks_to_ns(ticks: u64, hz: u64) -> u64 {
    (ticks as u128 * 1_000_000_000 / hz.max(1) as u128) as u64
}

/// Reads the kernel boot id (`/proc/sys/kernel/random/boot_id`), the usual
/// value to give [`super::ProcessTable::new`].
pub fn read_boot_id() -> io::Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

/// One process as read from procfs.
#[derive(Debug, Clone, Default)]
pub(super) struct ProcSnapshot {
    pub tgid: u32,
    pub ppid: u32,
    pub start_ns: u64,
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub exe: Vec<u8>,
    pub exe_dev: u64,
    pub exe_ino: u64,
    pub argv: Vec<Vec<u8>>,
    pub comm: Vec<u8>,
    pub cgroup_path: Option<String>,
    pub cwd: Option<Vec<u8>>,
    pub session_id: Option<u32>,
    pub tty_nr: u32,
}

/// Numeric entries of the procfs root (thread-group leaders only; threads
/// live under `task/`).
pub(super) fn list_pids(root: &Path) -> io::Result<Vec<u32>> {
    let mut pids: Vec<u32> = fs::read_dir(root)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// Reads one process; `None` when it vanished (or `stat`/`status` are
/// unreadable or malformed), so a racing exit is skipped, not an error.
pub(super) fn read_process(root: &Path, tgid: u32, hz: u64) -> Option<ProcSnapshot> {
    let dir = root.join(tgid.to_string());
    let stat = parse_stat(&fs::read_to_string(dir.join("stat")).ok()?)?;
    let (uid, euid, gid) = parse_status_ids(&fs::read_to_string(dir.join("status")).ok()?)?;
    let exe_link = dir.join("exe");
    let exe = fs::read_link(&exe_link)
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .unwrap_or_default();
    // metadata follows the magic link to the mapped file, even if deleted.
    let (exe_dev, exe_ino) = fs::metadata(&exe_link)
        .map(|m| (m.dev(), m.ino()))
        .unwrap_or((0, 0));
    let argv = fs::read(dir.join("cmdline"))
        .map(|b| split_cmdline(&b))
        .unwrap_or_default();
    let mut comm = fs::read(dir.join("comm")).unwrap_or_default();
    if comm.last() == Some(&b'\n') {
        comm.pop();
    }
    let cgroup_path = fs::read_to_string(dir.join("cgroup"))
        .ok()
        .and_then(|s| parse_cgroup(&s));
    let cwd = fs::read_link(dir.join("cwd"))
        .ok()
        .map(|p| p.as_os_str().as_bytes().to_vec());
    let session_id = fs::read_to_string(dir.join("sessionid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|&s| s != u32::MAX); // AUDIT_SID_UNSET
    Some(ProcSnapshot {
        tgid,
        ppid: stat.ppid,
        start_ns: ticks_to_ns(stat.starttime, hz),
        uid,
        euid,
        gid,
        exe,
        exe_dev,
        exe_ino,
        argv,
        comm,
        cgroup_path,
        cwd,
        session_id,
        tty_nr: stat.tty_nr,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StatFields {
    pub ppid: u32,
    pub tty_nr: u32,
    pub starttime: u64,
}

/// Parses `/proc/<pid>/stat`. comm is in parentheses and may itself hold
/// spaces and `)`, so fields are counted from the *last* `)`.
pub(super) fn parse_stat(s: &str) -> Option<StatFields> {
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // f[0] is field 3 (state); field N is f[N - 3].
    Some(StatFields {
        ppid: f.get(1)?.parse().ok()?,
        tty_nr: f.get(4)?.parse::<i64>().ok()? as u32,
        starttime: f.get(19)?.parse().ok()?,
    })
}

/// (real uid, effective uid, real gid) from `/proc/<pid>/status`.
pub(super) fn parse_status_ids(s: &str) -> Option<(u32, u32, u32)> {
    let ids = |prefix: &str| -> Option<Vec<u32>> {
        let line = s.lines().find(|l| l.starts_with(prefix))?;
        line[prefix.len()..]
            .split_ascii_whitespace()
            .map(|v| v.parse().ok())
            .collect()
    };
    let uids = ids("Uid:")?;
    let gids = ids("Gid:")?;
    Some((*uids.first()?, *uids.get(1)?, *gids.first()?))
}

/// The cgroup v2 path (`0::/path`); on v1-only hosts the `name=systemd`
/// hierarchy, else the first line's path.
pub(super) fn parse_cgroup(s: &str) -> Option<String> {
    let entries: Vec<(&str, &str)> = s
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (id, ctl, path) = (it.next()?, it.next()?, it.next()?);
            Some((
                if id == "0" && ctl.is_empty() {
                    "v2"
                } else {
                    ctl
                },
                path,
            ))
        })
        .collect();
    entries
        .iter()
        .find(|(c, _)| *c == "v2")
        .or_else(|| entries.iter().find(|(c, _)| *c == "name=systemd"))
        .or_else(|| entries.first())
        .map(|(_, p)| p.to_string())
}

/// NUL-separated cmdline; the trailing NUL does not start an empty arg.
pub(super) fn split_cmdline(b: &[u8]) -> Vec<Vec<u8>> {
    let b = b.strip_suffix(b"\0").unwrap_or(b);
    if b.is_empty() {
        return Vec::new();
    }
    b.split(|&c| c == 0).map(<[u8]>::to_vec).collect()
}

/// The path (relative to the cgroup2 mount `root`, with a leading `/`, as in
/// `/proc/PID/cgroup`) of the cgroup with this id — the kernfs node id that
/// `bpf_get_current_cgroup_id` returns and the directory's inode number. Opened by
/// file handle (`FILEID_KERNFS`), so no walk of the hierarchy; needs
/// CAP_DAC_READ_SEARCH and a cgroup that still exists.
pub fn cgroup_path_by_id(root: &Path, id: u64) -> Option<String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const FILEID_KERNFS: i32 = 0xfe;
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        id: u64,
    }
    let mount = fs::File::open(root).ok()?;
    let mut h = Handle {
        bytes: 8,
        kind: FILEID_KERNFS,
        id,
    };
    // SAFETY: `h` is a valid `struct file_handle` with 8 bytes of handle.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            &mut h as *mut Handle,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor the kernel just returned, owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let full = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let rel = full.strip_prefix(root).ok()?;
    Some(format!("/{}", rel.to_string_lossy()))
}

/// Where the cgroup2 (unified) hierarchy is mounted, from a `/proc/PID/mounts` file.
pub fn cgroup2_mount(mounts: &Path) -> Option<std::path::PathBuf> {
    parse_cgroup2_mount(&fs::read_to_string(mounts).ok()?)
}

pub fn parse_cgroup2_mount(mounts: &str) -> Option<std::path::PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_src, dir, ty) = (f.next()?, f.next()?, f.next()?);
        // Mount points escape blanks as octal (`\040`); cgroup mounts have none in practice.
        (ty == "cgroup2").then(|| std::path::PathBuf::from(dir))
    })
}
