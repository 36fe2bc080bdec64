//! The running agent: kernel → ring buffer → decode → enrich → classify → rules → sinks,
//! driven by one async loop that also handles signals and periodic loss reporting. Start-up
//! (`startup`) hands the loop (`event_loop`) what it runs on; SIGHUP reloads (`reload`).
//! Here: the watch set's kernel maps, and what more than one of those share.

mod event_loop;
mod reload;
mod startup;

use std::{path::PathBuf, time::Duration};

use aya::maps::{HashMap as BpfHashMap, MapData};
use snapmon_common::{FileKey, WriteFilter};

use crate::{
    config::Policy,
    kernel::loader::Kernel,
    metrics::{HookRuns, Registry},
    pipeline::Pipeline,
    record::Record,
    sink::{BrokenPipe, SinkSet},
    watch::WatchMaps,
};

/// Kernel maps as the watch set's backing store.
pub struct KernelMaps<'a> {
    pub files: &'a mut BpfHashMap<MapData, FileKey, u32>,
    /// Ordinary entries of `files` (`snapmon_common::watch_share`).
    pub share: &'a mut aya::maps::Array<MapData, u64>,
    pub precious_exts: &'a mut BpfHashMap<MapData, u64, u32>,
    /// The write hooks' inode-number prefilter (`snapmon_common::ino_slot`).
    pub ino_slots: &'a mut aya::maps::Array<MapData, u32>,
    pub dirs: &'a mut BpfHashMap<MapData, FileKey, u32>,
    pub prefixes: &'a mut BpfHashMap<MapData, u64, u32>,
    pub write_filter: &'a mut BpfHashMap<MapData, FileKey, WriteFilter>,
    /// Runtime flags (`snapmon_common::runtime`): the file map's reserve bit.
    pub runtime: &'a mut aya::maps::Array<MapData, u32>,
    /// Loop devices over watched images, by device number (`WATCHED_RDEV`).
    pub rdevs: &'a mut BpfHashMap<MapData, u32, FileKey>,
    pub rdev_any: &'a mut aya::maps::Array<MapData, u32>,
    /// Inode numbers of watched images (`IMAGE_INO`).
    pub image_ino: &'a mut BpfHashMap<MapData, u64, u32>,
}

impl<'a> KernelMaps<'a> {
    /// The watch-set maps of a loaded kernel side.
    pub fn of(k: &'a mut Kernel) -> Self {
        let w = &mut k.watch;
        KernelMaps {
            files: &mut w.files,
            share: &mut w.share,
            precious_exts: &mut w.precious_exts,
            ino_slots: &mut w.ino_slots,
            dirs: &mut w.dirs,
            prefixes: &mut w.prefixes,
            write_filter: &mut w.write_filter,
            runtime: &mut k.runtime,
            rdevs: &mut w.rdevs,
            rdev_any: &mut w.rdev_any,
            image_ino: &mut w.image_ino,
        }
    }
}

const BPF_NOEXIST: u64 = 1;

/// Ordinary entries of the watched-files map, as kernel and agent counted them.
fn ordinary_entries(share: &aya::maps::Array<MapData, u64>) -> u64 {
    use snapmon_common::watch_share as w;
    let s = |i| share.get(&i, 0).unwrap_or(0);
    (s(w::KERNEL_ADDED) + s(w::AGENT_ADDED)).saturating_sub(s(w::AGENT_REMOVED))
}

impl KernelMaps<'_> {
    /// Add one to a `watch_share` slot the agent writes (it is that slot's only writer).
    fn bump(&mut self, slot: u32) {
        let n = self.share.get(&slot, 0).unwrap_or(0);
        if let Err(e) = self.share.set(slot, n + 1, 0) {
            eprintln!("snapmon: watch-share map: {e}");
        }
    }

    /// Delete `key` from the file map; an ordinary entry gives its room back to the share.
    fn withdraw(&mut self, key: &FileKey) -> bool {
        let value = self.files.get(key, 0).unwrap_or(0);
        let gone = self.files.remove(key).is_ok();
        if gone && value & snapmon_common::watch_value::ORDINARY != 0 {
            self.bump(snapmon_common::watch_share::AGENT_REMOVED);
        }
        gone
    }
}

impl WatchMaps for KernelMaps<'_> {
    fn add_file(&mut self, key: FileKey, ordinary: bool) -> Result<(), String> {
        // Slot first: a write between the two must not be dropped by the prefilter.
        self.ino_slots
            .set(snapmon_common::ino_slot(key.ino), 1, 0)
            .map_err(|e| format!("watched-inode prefilter map: {e}"))?;
        let value = if ordinary {
            snapmon_common::watch_value::ORDINARY
        } else {
            0
        };
        match self.files.insert(key, value, BPF_NOEXIST) {
            Ok(()) => {
                if ordinary {
                    self.bump(snapmon_common::watch_share::AGENT_ADDED);
                }
                Ok(())
            }
            // In already (the kernel took it at create): its value is kept, so the ordinary
            // share is counted once, by whoever inserted it.
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            Err(e) => Err(format!("watched-files map: {e}")),
        }
    }
    fn remove_file(&mut self, key: FileKey) {
        // Absent already (never taken, or withdrawn before) is the wanted end state. The
        // prefilter slot stays: other inodes may share it, and it only costs a lookup.
        self.withdraw(&key);
    }
    fn has_file(&self, key: FileKey) -> bool {
        self.files.get(&key, 0).is_ok()
    }
    fn ordinary_entries(&self) -> Option<u64> {
        Some(ordinary_entries(self.share))
    }
    fn set_precious_exts(&mut self, hashes: &[u64]) -> Result<(), String> {
        for h in hashes {
            self.precious_exts
                .insert(*h, 1, 0)
                .map_err(|e| format!("precious-extensions map: {e}"))?;
        }
        Ok(())
    }
    fn set_reserve(&mut self, on: bool) -> Result<(), String> {
        let old = self.runtime.get(&0, 0).unwrap_or(0);
        let new = if on {
            old | snapmon_common::runtime::WATCH_RESERVE
        } else {
            old & !snapmon_common::runtime::WATCH_RESERVE
        };
        self.runtime
            .set(0, new, 0)
            .map_err(|e| format!("runtime flags map: {e}"))
    }
    fn sweep_files(&mut self, keep: &dyn Fn(&FileKey) -> bool) -> usize {
        let gone: Vec<FileKey> = self
            .files
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keep(k))
            .collect();
        gone.iter().filter(|k| self.withdraw(k)).count()
    }
    fn add_dir(&mut self, key: FileKey, flags: u32) -> Result<(), String> {
        let old = self.dirs.get(&key, 0).unwrap_or(0);
        self.dirs
            .insert(key, old | flags, 0)
            .map_err(|e| format!("watched-dirs map: {e}"))
    }
    fn note_image(&mut self, key: FileKey) {
        // An LRU set: never full, and a number left behind by a gone image costs at most a
        // candidate the agent withdraws.
        let _ = self.image_ino.insert(key.ino, 1, 0);
    }
    fn remove_dir(&mut self, key: FileKey) {
        // Absent already is the wanted end state.
        let _ = self.dirs.remove(&key);
    }
    fn add_prefix(&mut self, hash: u64) -> Result<(), String> {
        self.prefixes
            .insert(hash, 1, 0)
            .map_err(|e| format!("watched-prefix map: {e}"))
    }
    fn add_rdev_alias(&mut self, rdev: u32, node: FileKey) {
        // As the kernel's attach hook: the entry first, then the flag the write hooks read.
        if self.rdevs.insert(rdev, node, 0).is_ok() {
            let _ = self.rdev_any.set(0, 1, 0);
        }
    }
    fn remove_rdev_alias(&mut self, node: FileKey) {
        let gone: Vec<u32> = self
            .rdevs
            .iter()
            .flatten()
            .filter(|(_, n)| *n == node)
            .map(|(r, _)| r)
            .collect();
        for r in gone {
            let _ = self.rdevs.remove(&r);
        }
        // The last one gone: spare every write the i_rdev read again. Cleared first and
        // set again if the kernel added one meanwhile (it sets the flag after its insert).
        if self.rdevs.keys().next().is_none() {
            let _ = self.rdev_any.set(0, 0, 0);
            if self.rdevs.keys().next().is_some() {
                let _ = self.rdev_any.set(0, 1, 0);
            }
        }
    }
    fn set_write_filter(&mut self, key: FileKey, f: Option<&WriteFilter>) -> Result<(), String> {
        match f {
            Some(f) => self
                .write_filter
                .insert(key, *f, 0)
                .map_err(|e| format!("write-filter map: {e}")),
            // Already absent is fine: withdrawing is idempotent.
            None => {
                let _ = self.write_filter.remove(&key);
                Ok(())
            }
        }
    }
}

pub struct RunOptions {
    pub policy: Policy,
    pub policy_path: Option<PathBuf>,
    /// `--insecure-config`: a policy file others could change is used, with a warning.
    pub insecure_config: bool,
    pub extra_watch: Vec<PathBuf>,
    pub status_interval: Duration,
    /// Period of the `stats` metric record; None: only in the `stopped` record.
    pub stats_interval: Option<Duration>,
    /// Turn on kernel BPF run statistics for the per-hook counters.
    pub hook_stats: bool,
    /// Attach the 32-bit syscall hook where fentry is refused (`--no-compat-syscalls`).
    pub compat_syscalls: bool,
    pub enforce: crate::enforce::Options,
    /// `--respond MODE` (the policy's `[respond] mode` otherwise).
    pub respond: Option<crate::respond::Mode>,
}

pub async fn run(opts: RunOptions, sinks: SinkSet) -> anyhow::Result<()> {
    let Some(running) = startup::start(&opts, &sinks)? else {
        return Ok(());
    };
    event_loop::run(&opts, sinks, running).await
}

/// mimalloc's option id of the purge delay (`mi_option_e` of mimalloc v3; the crate pins the
/// version, libmimalloc-sys 0.1.49 = mimalloc 3.3.2, but exports no names for these).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Purge delay of freed pages once started, in ms. 0 (return at once) made the records'
/// memory, freed on the sink thread, come back as fresh pages: madvise there, page faults
/// here, about 7 % of the agent's CPU at 100 000 records/s. Pages reused within the delay are
/// kept; a quiet tick purges the rest (`purge_when_quiet`).
const STEADY_PURGE_DELAY_MS: std::ffi::c_long = 100;

/// mimalloc (the agent binary's allocator) for a long-running agent: no transparent huge
/// pages and, through start-up, freed pages returned at once, so idle RSS stays what is in
/// use (measured idle: 41.7 MiB with mimalloc's defaults, 30.1 MiB with these, 27.6 MiB with
/// glibc). [`allocator_steady`] follows once started.
pub fn tune_allocator() {
    const ALLOW_THP: libmimalloc_sys::mi_option_t = 43;
    // SAFETY: setting options is always allowed; unknown ids are ignored with a warning.
    // PR_SET_THP_DISABLE only changes this process's huge-page policy: mimalloc reads its
    // THP option once, before main, so the kernel switch is what takes effect.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
        libmimalloc_sys::mi_option_set(ALLOW_THP, 0);
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Start-up memory is given back: from now on keep freed pages a moment, for the records.
fn allocator_steady() {
    // SAFETY: as in `tune_allocator`; mimalloc reads the delay whenever it schedules a purge.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, STEADY_PURGE_DELAY_MS) };
}

/// Give freed pages whose purge delay has passed back to the kernel: mimalloc purges only
/// when it is called, and an idle agent hardly calls it.
fn purge_when_quiet() {
    // SAFETY: collecting only frees what is free; `false` keeps the purge delay.
    unsafe { libmimalloc_sys::mi_collect(false) };
}

/// Read every attached program's run statistics into the metrics registry (a bpf() call per
/// program: cheap at one refresh per status interval).
fn refresh_hook_runs(k: &Kernel, reg: &Registry) {
    let (enabled, note) = k.counters.run_stats.describe();
    reg.set_hook_runs(HookRuns {
        enabled,
        note,
        programs: k.hook_runs(),
    });
}

fn emit(sinks: &SinkSet, r: Record) -> Result<(), BrokenPipe> {
    sinks.send_owned(r)
}

/// Send what the pipeline produced, whichever way it came out (an event, a held event's
/// timer, a sequence timeout, shutdown), with what follows from it: kernel enforcement
/// decisions as alerts, the circuit breaker's answer and evidence. One path, so no alert
/// reaches the sinks without the responder having seen it.
fn deliver(
    recs: Vec<Record>,
    pipe: &mut Pipeline,
    responder: &mut crate::respond::act::Responder,
    sinks: &SinkSet,
) -> Result<(), BrokenPipe> {
    let follow = responder.after(&recs, &mut pipe.classifier);
    for r in recs.into_iter().chain(follow) {
        let decision = match &r {
            Record::Event(ev) => crate::enforce::decision_alert(ev),
            _ => None,
        };
        sinks.send_owned(r)?;
        if let Some(a) = decision {
            sinks.send_owned(Record::Alert(Box::new(a)))?;
        }
    }
    Ok(())
}
