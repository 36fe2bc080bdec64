//! Lineage stage seam: the enrich stage asks "who is tgid X at time T" through [`Lineage`];
//! the process table answers from fork/exec/exit records and a `/proc` seed.

use crate::{decode::RawEvent, event::ProcessInfo};

pub trait Lineage: Send {
    /// Feed every record (process records update the table; others may refresh it).
    fn observe(&mut self, raw: &RawEvent);
    /// The process image that was running `tgid` at `ts_ns` (CLOCK_BOOTTIME).
    fn process(
        &mut self,
        tgid: u32,
        tid: u32,
        ts_ns: u64,
        hdr: &snapmon_common::Header,
    ) -> ProcessInfo;
    /// Counters for the status line / metrics.
    fn stats(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// Header-only lineage: names the acting task from the record itself. Used by `replay` of
/// records without process history and as the last resort when the table misses.
pub struct HeaderOnly;

impl Lineage for HeaderOnly {
    fn observe(&mut self, _raw: &RawEvent) {}
    fn process(
        &mut self,
        _tgid: u32,
        _tid: u32,
        _ts: u64,
        hdr: &snapmon_common::Header,
    ) -> ProcessInfo {
        header_process(hdr)
    }
}

/// Process info for a header alone (no lineage): used when lineage is unavailable.
pub fn header_process(h: &snapmon_common::Header) -> ProcessInfo {
    ProcessInfo {
        pid: h.tgid,
        tid: h.pid,
        uid: h.uid,
        gid: h.gid,
        ..ProcessInfo::with_names(crate::event::ProcessNames {
            name: String::from_utf8_lossy(crate::decode::cstr(&h.comm, h.comm.len())).into_owned(),
            ..Default::default()
        })
    }
}

/// The lineage implementation the agent runs with.
pub fn default_lineage() -> Box<dyn Lineage> {
    Box::new(TableLineage::new(true))
}

/// The process table (see `lineage`) behind the [`Lineage`] seam.
pub struct TableLineage {
    pub table: crate::lineage::ProcessTable,
    /// tgid → the process as last built, valid while the table's stamp allows it: a writer
    /// hammering an image gets its lineage built once, not per event.
    cache: std::collections::HashMap<u32, Cached>,
}

struct Cached {
    generation: u64,
    start_ns: u64,
    info: ProcessInfo,
}

/// A fresh `ProcessInfo::revision`, unique in the agent (several tables may run in a process).
fn next_revision() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Bound on cached processes (cleared wholesale when reached).
const CACHE_MAX: usize = 4096;

/// Kernel dev_t (`MAJOR << 20 | MINOR`) → userspace `st_dev`, the table's encoding.
fn user_dev(kdev: u32) -> u64 {
    libc::makedev(kdev >> 20, kdev & 0xfffff)
}

fn split_args(buf: &[u8], len: usize) -> Vec<Vec<u8>> {
    let b = &buf[..len.min(buf.len())];
    let b = b.strip_suffix(&[0]).unwrap_or(b);
    if b.is_empty() {
        return Vec::new();
    }
    b.split(|&c| c == 0).map(|s| s.to_vec()).collect()
}

impl TableLineage {
    pub fn new(seed_procfs: bool) -> Self {
        let boot = crate::lineage::read_boot_id().unwrap_or_default();
        // cgroup v2 ids are inode numbers of the unified hierarchy, which hybrid hosts mount
        // at /sys/fs/cgroup/unified rather than /sys/fs/cgroup.
        let root = crate::lineage::cgroup2_mount(std::path::Path::new("/proc/self/mounts"))
            .unwrap_or_else(|| "/sys/fs/cgroup".into());
        let mut table = crate::lineage::ProcessTable::new(boot).with_cgroupfs_root(root);
        if seed_procfs {
            let _ = table.seed_from_procfs(std::path::Path::new("/proc"));
        }
        TableLineage {
            table,
            cache: Default::default(),
        }
    }

    fn to_info(v: crate::lineage::ProcessView, tid: u32) -> ProcessInfo {
        use crate::event::{Ancestor, Bytes, ProcessNames};
        let names = ProcessNames {
            name: v.name.display(),
            executable: Bytes(v.exe.as_bytes().to_vec()),
            args: v
                .args
                .iter()
                .map(|a| Bytes(a.as_bytes().to_vec()))
                .collect(),
            entity_id: v.entity_id,
            cwd: v.cwd.map(|c| Bytes(c.as_bytes().to_vec())),
            container_id: v.container_id,
            systemd_unit: v.systemd_unit,
            vm_name: v.vm.as_ref().and_then(|m| m.name.clone()),
            vm_uuid: v.vm.as_ref().and_then(|m| m.uuid.clone()),
            parent: v.parent.map(|p| Ancestor {
                pid: p.pid,
                name: p.name.display(),
                executable: p.exe.display(),
                entity_id: p.entity_id,
            }),
            ancestors: v
                .ancestors
                .into_iter()
                .map(|a| Ancestor {
                    pid: a.pid,
                    name: a.name.display(),
                    executable: a.exe.display(),
                    entity_id: a.entity_id,
                })
                .collect::<Vec<_>>()
                .into(),
        };
        ProcessInfo {
            pid: v.pid,
            tid,
            ppid: v.ppid,
            args_truncated: v.args_truncated,
            uid: v.uid.unwrap_or(u32::MAX),
            gid: v.gid.unwrap_or(u32::MAX),
            euid: v.euid,
            exe_dev: crate::paths::kernel_dev(v.exe_dev),
            exe_ino: v.exe_ino,
            start_ns: v.start_ns,
            revision: next_revision(),
            ..ProcessInfo::with_names(names)
        }
    }
}

/// The executable's path as an exec record names it. An exec through a descriptor
/// (`fexecve`, `execveat(fd, "", AT_EMPTY_PATH)`) says `/dev/fd/N`: the image is whatever
/// that fd was, a memfd (`/memfd:NAME (deleted)`) or an unlinked file (`PATH (deleted)`),
/// read from `/proc/PID/exe` while it is still the same image.
fn exe_path(e: &snapmon_common::ExecEvent) -> Vec<u8> {
    let name = crate::decode::cstr(&e.filename, e.filename_len as usize);
    let via_fd = name.starts_with(b"/dev/fd/")
        || (name.starts_with(b"/proc/") && name.windows(4).any(|w| w == b"/fd/"));
    if !via_fd {
        return name.to_vec();
    }
    let link = format!("/proc/{}/exe", e.hdr.tgid);
    let same = std::fs::metadata(&link).is_ok_and(|m| crate::paths::key_of(&m) == e.exe);
    match std::fs::read_link(&link) {
        Ok(t) if same => {
            use std::os::unix::ffi::OsStrExt;
            t.as_os_str().as_bytes().to_vec()
        }
        // Gone already: a memfd is still known by the filesystem it lives on.
        _ if memfd_dev() == Some(e.exe.dev) => b"/memfd:? (deleted)".to_vec(),
        _ => name.to_vec(),
    }
}

/// The kernel dev of memfds (the internal shmem mount), from one made for the purpose.
fn memfd_dev() -> Option<u32> {
    static DEV: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *DEV.get_or_init(|| {
        // SAFETY: memfd_create with a NUL-terminated name; the fd is closed by File.
        let fd = unsafe { libc::memfd_create(c"snapmon-probe".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        use std::os::fd::FromRawFd;
        let f = unsafe { std::fs::File::from_raw_fd(fd) };
        f.metadata().ok().map(|m| crate::paths::key_of(&m).dev)
    })
}

/// Executables removed after they started: `/proc/PID/exe` then reads `PATH (deleted)`.
/// Looked up for events that may alert, at most once a second per process.
#[derive(Default)]
pub struct DeletedExe {
    seen: std::collections::HashMap<u32, (std::time::Instant, Option<Vec<u8>>)>,
}

impl DeletedExe {
    /// Name `p`'s executable `PATH (deleted)` when its file is gone.
    pub fn amend(&mut self, p: &mut ProcessInfo, now: std::time::Instant) {
        let exe = &p.executable.0;
        if p.pid == 0 || exe.ends_with(b" (deleted)") || exe.starts_with(b"/memfd:") {
            return;
        }
        let fresh = self
            .seen
            .get(&p.pid)
            .filter(|(at, _)| now.duration_since(*at) < std::time::Duration::from_secs(1));
        let deleted = match fresh {
            Some((_, d)) => d.clone(),
            None => {
                let link = format!("/proc/{}/exe", p.pid);
                let same = std::fs::metadata(&link).is_ok_and(|m| {
                    let k = crate::paths::key_of(&m);
                    (k.dev, k.ino) == (p.exe_dev, p.exe_ino)
                });
                let d = std::fs::read_link(&link)
                    .ok()
                    .map(|t| {
                        use std::os::unix::ffi::OsStrExt;
                        t.as_os_str().as_bytes().to_vec()
                    })
                    .filter(|t| same && t.ends_with(b" (deleted)"));
                if self.seen.len() >= CACHE_MAX {
                    self.seen.clear();
                }
                self.seen.insert(p.pid, (now, d.clone()));
                d
            }
        };
        if let Some(d) = deleted {
            p.executable = crate::event::Bytes(d);
            p.revision = 0;
        }
    }
}

impl Lineage for TableLineage {
    fn observe(&mut self, raw: &RawEvent) {
        use crate::lineage::{ExecInfo, ExitInfo, ForkInfo};
        match raw {
            RawEvent::Fork(f) => self.table.observe_fork(&ForkInfo {
                ts_ns: f.hdr.ts_ns,
                parent_tgid: f.parent_tgid,
                child_tgid: f.child_tgid,
                child_start_ns: f.child_start_ns,
            }),
            RawEvent::Exec(e) => self.table.observe_exec(&ExecInfo {
                ts_ns: e.hdr.ts_ns,
                tgid: e.hdr.tgid,
                ppid: e.ppid,
                uid: e.hdr.uid,
                euid: e.euid,
                gid: e.hdr.gid,
                start_ns: e.start_ns,
                exe_path: exe_path(e),
                exe_dev: user_dev(e.exe.dev),
                exe_ino: e.exe.ino,
                argv: split_args(&e.args, e.args_len as usize),
                comm: crate::decode::cstr(&e.hdr.comm, 16).to_vec(),
                cgroup_id: e.cgroup_id,
            }),
            RawEvent::Exit(x) => self.table.observe_exit(&ExitInfo {
                ts_ns: x.hdr.ts_ns,
                tgid: x.hdr.tgid,
                start_ns: x.start_ns,
                exit_code: x.exit_code,
            }),
            _ => {}
        }
    }

    fn process(
        &mut self,
        tgid: u32,
        tid: u32,
        ts_ns: u64,
        hdr: &snapmon_common::Header,
    ) -> ProcessInfo {
        let (generation, horizon) = self.table.stamp();
        if ts_ns >= horizon {
            if let Some(c) = self.cache.get(&tgid).filter(|c| c.generation == generation) {
                let mut info = c.info.clone();
                info.tid = tid;
                let start = c.start_ns;
                self.table.note_cached_lookup(tgid, start);
                return info;
            }
        }
        let view = match self.table.lookup(tgid, ts_ns) {
            Some(v) => Some(v),
            // First sight of a process (or its history was evicted): ask /proc once.
            None if self.table.refresh_from_procfs(tgid) => self.table.lookup(tgid, ts_ns),
            None => None,
        };
        let Some(v) = view else {
            return header_process(hdr);
        };
        let start_ns = v.start_ns;
        let info = Self::to_info(v, tid);
        // Only a view taken at or after the horizon holds for later events (`stamp`); the
        // stamp is read again because a procfs refresh above may have moved it.
        let (generation, horizon) = self.table.stamp();
        if ts_ns >= horizon {
            if self.cache.len() >= CACHE_MAX {
                self.cache.clear();
            }
            self.cache.insert(
                tgid,
                Cached {
                    generation,
                    start_ns,
                    info: info.clone(),
                },
            );
        }
        info
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::to_value(self.table.stats()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_buffer_splits_on_nul() {
        assert_eq!(
            split_args(b"qemu-img\0snapshot\0-c\0s1\0", 24),
            vec![
                b"qemu-img".to_vec(),
                b"snapshot".to_vec(),
                b"-c".to_vec(),
                b"s1".to_vec()
            ]
        );
        assert_eq!(split_args(b"a\0b", 3), vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(split_args(b"", 0).is_empty());
    }

    #[test]
    fn dev_encodings_round_trip() {
        let k = (253 << 20) | 3;
        assert_eq!(crate::paths::kernel_dev(user_dev(k)), k);
    }

    #[test]
    fn cached_lineage_follows_execs_and_never_serves_an_earlier_time() {
        use crate::lineage::{ExecInfo, ForkInfo};
        // Far past any real boot clock, so the procfs horizon never gets in the way.
        const T: u64 = 1 << 62;
        let mut l = TableLineage::new(false);
        // SAFETY: plain integers and byte arrays; all zeroes is a valid header.
        let hdr: snapmon_common::Header = unsafe { std::mem::zeroed() };
        let exec = |name: &str, ts: u64| ExecInfo {
            ts_ns: ts,
            tgid: 4242,
            ppid: 1,
            uid: 0,
            euid: 0,
            gid: 0,
            start_ns: T,
            exe_path: format!("/usr/bin/{name}").into_bytes(),
            exe_dev: 1,
            exe_ino: 2,
            argv: vec![name.as_bytes().to_vec()],
            comm: name.as_bytes().to_vec(),
            cgroup_id: 0,
        };
        l.table.observe_fork(&ForkInfo {
            ts_ns: T,
            parent_tgid: 1,
            child_tgid: 4242,
            child_start_ns: T,
        });
        l.table.observe_exec(&exec("bash", T + 10));
        assert_eq!(l.process(4242, 4242, T + 20, &hdr).name, "bash");
        // Served from the cache, with this event's thread.
        let lookups = l.table.stats().lookups;
        let p = l.process(4242, 4243, T + 30, &hdr);
        assert_eq!((p.name.as_str(), p.tid), ("bash", 4243));
        assert_eq!(l.table.stats().lookups, lookups + 1, "a hit still counts");
        // An exec moves the generation: later events see the new image …
        l.table.observe_exec(&exec("python3", T + 40));
        assert_eq!(l.process(4242, 4242, T + 50, &hdr).name, "python3");
        // … and an event from before it, delivered late, still gets the old one.
        assert_eq!(l.process(4242, 4242, T + 35, &hdr).name, "bash");
        assert_eq!(l.process(4242, 4242, T + 60, &hdr).name, "python3");
    }
}
