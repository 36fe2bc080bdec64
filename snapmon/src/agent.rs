//! The running agent: kernel → ring buffer → decode → enrich → classify → rules → sinks,
//! driven by one async loop that also handles signals and periodic loss reporting.

use std::{
    os::fd::AsFd as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{HashMap as BpfHashMap, MapData};
use serde_json::json;
use snapmon_common::{FileKey, WriteFilter};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    config::Policy,
    kernel::loader::{self, Kernel, LoadOptions, RunStats},
    metrics::{HookRuns, Registry},
    pipeline::Pipeline,
    record::{MetricRecord, Record, StateRecord},
    sink::{BrokenPipe, SinkSet},
    watch::{WatchMaps, WatchSet},
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
        KernelMaps {
            files: &mut k.files,
            share: &mut k.watch_share,
            precious_exts: &mut k.precious_exts,
            ino_slots: &mut k.ino_slots,
            dirs: &mut k.dirs,
            prefixes: &mut k.prefixes,
            write_filter: &mut k.write_filter,
            runtime: &mut k.runtime,
            rdevs: &mut k.rdevs,
            rdev_any: &mut k.rdev_any,
            image_ino: &mut k.image_ino,
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

/// The circuit-breaker options of `policy` under the command line's, and the plan.
fn respond_plan(
    opts: &RunOptions,
    policy: &Policy,
) -> Result<Option<crate::respond::Plan>, String> {
    use crate::config::StoreKind as K;
    // Stores of images and devices: not libvirt's or LVM's text metadata, which admins edit.
    let watched: Vec<PathBuf> = policy
        .stores
        .iter()
        .filter(|s| !matches!(s.kind, K::Libvirt | K::Lvm))
        .map(|s| s.path.clone())
        .filter(|p| p.exists())
        .chain(opts.extra_watch.iter().cloned())
        .collect();
    let o = crate::respond::from_policy(
        opts.respond,
        opts.enforce.dry_run,
        &opts.enforce.protect,
        &policy.respond,
        &[
            policy.enforce.trust.as_slice(),
            opts.enforce.trust.as_slice(),
        ]
        .concat(),
        &watched,
    );
    crate::respond::plan(&o, policy).map_err(|e| format!("respond: {e}"))
}

/// The policy's read budget, for every bounded read from now on (start and reload).
fn set_read_budget(policy: &Policy) {
    let ms = policy.agent.read_budget_ms;
    crate::classify::fileread::set_budget(Duration::from_millis(ms));
}

/// Register configured stores; missing optional ones are noted, not fatal.
fn register(
    policy: &Policy,
    extra: &[PathBuf],
    maps: &mut dyn WatchMaps,
) -> anyhow::Result<(WatchSet, Vec<String>)> {
    let mut ws = WatchSet::default();
    ws.scan_depth = Some(policy.agent.scan_depth as usize);
    ws.precious = crate::watch::Precious::from_policy(policy);
    maps.set_precious_exts(&ws.precious.ext_hashes())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut notes = Vec::new();
    for s in &policy.stores {
        if let Err(e) = ws.add_root(&s.path, maps) {
            if s.required {
                anyhow::bail!("required store {}: {e}", s.path.display());
            }
            notes.push(format!("skipped {e}"));
        }
    }
    for p in extra {
        ws.add_root(p, maps)
            .map_err(|e| anyhow::anyhow!("--watch {e}"))?;
    }
    if ws.stats.too_deep > 0 {
        // Files below are not watched: say so where an admin looks, not only in a record.
        let w = format!(
            "{} director{} deeper than {} levels below a store not scanned: writes to files in them go unreported (raise [agent] scan_depth; `stores_skipped` lists them)",
            ws.stats.too_deep,
            if ws.stats.too_deep == 1 { "y" } else { "ies" },
            policy.agent.scan_depth
        );
        eprintln!("snapmon: warning: {w}");
        crate::state::add_start_warning(w);
    }
    Ok((ws, notes))
}

pub async fn run(opts: RunOptions, mut sinks: SinkSet) -> anyhow::Result<()> {
    let started_at = Instant::now();
    // Enforcement is decided (and refused) before anything is loaded.
    let enf_opts = crate::enforce::from_policy(&opts.enforce, &opts.policy.enforce);
    let enf = &enf_opts;
    let plan = crate::enforce::plan_for(enf).map_err(anyhow::Error::msg)?;
    let lsm_ok = plan.is_some() && crate::enforce::bpf_lsm_active().unwrap_or(false);
    if enf.mode == crate::enforce::Mode::On && !lsm_ok {
        anyhow::bail!(
            "--enforce needs BPF LSM, which this kernel does not offer (see `snapmon doctor`); use --enforce=best-effort to run detection only"
        );
    }
    let respond_plan = respond_plan(&opts, &opts.policy).map_err(anyhow::Error::msg)?;
    let mut k: Kernel = loader::load(&LoadOptions {
        ring_buffer_bytes: opts.policy.agent.ring_buffer_bytes,
        process_events: true,
        lsm: lsm_ok,
        lsm_observe: crate::enforce::bpf_lsm_active().unwrap_or(false),
        hook_stats: opts.hook_stats,
        compat: opts.compat_syscalls,
    })?;
    let registry = sinks.registry().clone();
    refresh_hook_runs(&k, &registry);
    if let RunStats::Unavailable(why) = &k.run_stats {
        if opts.hook_stats {
            eprintln!("snapmon: no per-hook counters: {why}");
        }
    }
    let enforcement = match (&plan, k.lsm) {
        (Some(p), true) => {
            k.apply_enforcement(p, enf.dry_run)?;
            if enf.keep_enforcing {
                k.pin_enforcement()
                    .context("--keep-enforcing: pinning the LSM programs")?;
            }
            json!({"active": true, "dry_run": enf.dry_run, "monitor_only": enf.monitor_only,
                   "protected": p.protected.len(), "trusted": p.trusted.iter().map(|(_, t)| t).collect::<Vec<_>>(),
                   "keep_enforcing": enf.keep_enforcing})
        }
        (Some(_), false) if enf.mode == crate::enforce::Mode::On => {
            let why = k
                .hooks
                .iter()
                .find(|h| h.program.starts_with("lsm_") && h.error.is_some())
                .map(|h| format!("{}: {}", h.program, h.error.as_deref().unwrap_or("")))
                .unwrap_or_default();
            anyhow::bail!("--enforce: the BPF LSM hooks did not attach ({why})")
        }
        (Some(_), false) => {
            json!({"active": false, "reason": "no BPF LSM on this kernel (best-effort: detection only)"})
        }
        (None, _) => json!({"active": false}),
    };
    // Protected stores are watched: the kernel judges only what its watch filter lets by.
    let mut extra_watch = opts.extra_watch.clone();
    for s in respond_plan.iter().flat_map(|p| &p.stores) {
        let covered = opts
            .policy
            .stores
            .iter()
            .map(|x| &x.path)
            .chain(&extra_watch)
            .any(|w| std::fs::canonicalize(w).is_ok_and(|w| s.path.starts_with(w)));
        if !covered {
            extra_watch.push(s.path.clone());
        }
    }
    set_read_budget(&opts.policy);
    if let Err(e) = crate::classify::fileread::heed_stop_signals() {
        eprintln!("snapmon: a stop during a stuck read waits for the read budget: {e}");
    }
    let (watch, notes) = {
        let mut maps = KernelMaps::of(&mut k);
        register(&opts.policy, &extra_watch, &mut maps)?
    };
    let n_attached = k.hooks.iter().filter(|h| h.attached_to.is_some()).count();
    if n_attached == 0 {
        anyhow::bail!(
            "no eBPF hook could be attached: {}",
            k.hooks
                .first()
                .and_then(|h| h.error.clone())
                .unwrap_or_default()
        );
    }
    let mut pipe = Pipeline::new(watch, &opts.policy);
    let files: Vec<_> = pipe
        .enricher
        .watch
        .known()
        .map(|(k, p)| (*k, p.clone()))
        .collect();
    pipe.classifier.preload(files.iter().map(|(k, p)| (k, p)));
    // Overlays over a store mounted before the start, then as the mount table changes.
    rescan_overlays(&mut pipe, &mut k);
    // Loop devices attached to images before the start: their attach was never seen.
    seed_loops(&mut pipe, &mut k);
    let mounts_fd = mount_table_watch();
    pipe.enricher.process_events = opts.policy.agent.process_events;
    // Writers the kernel may filter on classified files (their metadata writes still arrive).
    loader::set_trusted_writers(&mut k.trusted_writers, &pipe.rules.filter_writers())
        .context("loading trusted writers into the kernel")?;
    let mut responder =
        crate::respond::act::Responder::new(crate::evidence::Evidence::new(&opts.policy.evidence));
    let response = responder
        .apply(&mut k, respond_plan, &pipe.classifier)
        .context("loading the circuit breaker into the kernel")?;

    let (stats_on, stats_note) = k.run_stats.describe();
    let started = crate::state::started(&crate::state::StartInfo {
        backend: k.backend,
        fd_walk: k.fd_walk,
        hooks: &k.hooks,
        missing: &k.missing,
        hook_stats: (stats_on, stats_note),
        watch: &pipe.enricher.watch.stats,
        roots: &pipe.enricher.watch.roots,
        notes: &notes,
        startup_ms: started_at.elapsed().as_millis() as u64,
        enforcement,
        policy: opts
            .policy_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<embedded default>".into()),
        rule_warnings: pipe.rule_warnings(),
        sinks: crate::state::sink_list(&sinks.stats()),
        previous_run: sinks.previous_run(),
        response: response.clone(),
        evidence_dir: responder.evidence.dir().map(|d| d.display().to_string()),
    });
    // One line for the LSM family: on a kernel that refuses them they all fail alike.
    let (lsm_bad, other_bad): (Vec<_>, Vec<_>) = k
        .hooks
        .iter()
        .filter(|h| h.error.is_some())
        .partition(|h| h.program.starts_with("lsm_"));
    for h in other_bad {
        eprintln!(
            "snapmon: hook {} not attached: {}",
            h.program,
            h.error.as_deref().unwrap_or("")
        );
    }
    if let Some(first) = lsm_bad.first() {
        eprintln!(
            "snapmon: {} BPF LSM hooks not attached ({}): namespace changes through aliases \
             of watched directories are not observed; see `snapmon doctor`",
            lsm_bad.len(),
            first.error.as_deref().unwrap_or("")
        );
    }
    // Handlers first: whoever reads `started` may signal at once (a SIGHUP before them
    // would end the agent).
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    // logrotate: reopen files (and reconnect sockets).
    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
    let mut usr1 = tokio::signal::unix::signal(SignalKind::user_defined1())?;
    if sinks.previous_run()["clean"] == false {
        eprintln!(
            "snapmon: the previous run did not close its log (killed or crashed): see previous_run in the started record"
        );
    }
    for r in started {
        if emit(&sinks, Record::State(r)).is_err() {
            return Ok(());
        }
    }
    // systemd (Type=notify) sees the unit active only once `started` is in the log.
    let notify = crate::notify::Notifier::from_env();
    sinks.settle(Duration::from_secs(5));
    notify.ready(&format!(
        "{} of {} hooks attached",
        n_attached,
        k.hooks.len()
    ));
    // Start-up parsed the kernel's BTF (twice: offsets and BTF tracepoints) and read every
    // process in /proc; that memory is free now but still held by the allocator (mimalloc
    // in the agent binary, glibc for anything allocated before it or by C code).
    // SAFETY: both only return free pages to the kernel.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        #[cfg(target_env = "gnu")]
        libc::malloc_trim(0);
    }
    allocator_steady();

    let mut tick = tokio::time::interval(opts.status_interval);
    let mut blind_check = tokio::time::interval(BLIND_CHECK.min(opts.status_interval));
    // Keep-alives come from this loop only, so a stalled reader gets restarted.
    let mut watchdog =
        tokio::time::interval(notify.ping_every().unwrap_or(Duration::from_secs(86_400)));
    let mut last_lost = k.lost_counts();
    let mut last_stats = Instant::now();
    let mut last_filtered = 0u64;
    // Records received by the last tick: none since means quiet (`purge_when_quiet`).
    let mut received_at_tick = 0u64;
    // A dup of the ring buffer fd: epoll watches the same open file, and the borrow of
    // `k` stays free for draining.
    let owned = k.events.as_fd().try_clone_to_owned()?;
    // SAFETY: `owned` is an OwnedFd moved into the AsyncFd, which closes it only on drop.
    let fd = unsafe { AsyncFd::register(owned) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let owned = k.urgent.as_fd().try_clone_to_owned()?;
    // SAFETY: as above.
    let urgent_fd = unsafe { AsyncFd::register(owned) }
        .map_err(|e| anyhow::anyhow!("polling the urgent ring buffer: {e}"))?;
    let mut buf = Chunk::default();
    // Records left in the ring buffer by a drain pass cut short (a flood): drained again
    // on the loop's next turn, after whatever else is due.
    let mut backlog = false;
    let mut last_stats_lost = registry.snapshot().lost;
    // EPOLLERR on stdout when its reader has gone: noticed with no record to write.
    let stdout_err = sinks.writes_stdout().then(stdout_watch).flatten();
    let reason;
    loop {
        // Held events and rechecks (classify::recheck) are due without a record to carry them.
        let due = pipe.next_due().map(tokio::time::Instant::from_std);
        let later = async move {
            match due {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        // Biased: signals, the tick (stats, loss, watchdog) and timers come before the ring
        // buffer, and a drain pass is bounded (DRAIN_SLICE), so a flood delays none of them.
        // Every branch but the ring buffers' says `false`: those three share one drain pass.
        let drain_due = tokio::select! {
            biased;
            _ = term.recv() => { reason = "SIGTERM"; break; }
            _ = int.recv() => { reason = "SIGINT"; break; }
            _ = stdout_closed(&stdout_err) => return Ok(()),
            _ = tick.tick() => {
                if report_loss(&mut k, &mut last_lost, &mut pipe, &mut responder, &sinks, 0).is_err() { return Ok(()); }
                if report_filtered(&k, &mut last_filtered, &pipe, &sinks).is_err() { return Ok(()); }
                refresh_hook_runs(&k, &registry);
                registry.watch_ordinary.store(ordinary_entries(&k.watch_share), std::sync::atomic::Ordering::Relaxed);
                // Half a tick of slack: ticks jitter, and a stats interval equal to the
                // status interval must give one record per tick, not one per two.
                if opts.stats_interval.is_some_and(|d| last_stats.elapsed() + opts.status_interval / 2 >= d) {
                    last_stats = Instant::now();
                    for r in crate::state::stats(&pipe, &sinks, &mut last_stats_lost) {
                        if emit(&sinks, r).is_err() { return Ok(()); }
                    }
                }
                if pipe.stats.received == received_at_tick {
                    purge_when_quiet();
                }
                received_at_tick = pipe.stats.received;
                // Loop devices detached at their last close: no ioctl says so (sysfs does).
                if !pipe.enricher.loops.is_empty() {
                    let recs = pipe.check_loops(std::path::Path::new(crate::enrich::SYS_DEV_BLOCK), &mut KernelMaps::of(&mut k));
                    if deliver(recs, &mut pipe, &mut responder, &sinks).is_err() { return Ok(()); }
                }
                // Sequences that time out with no event to carry them (a freeze never thawed).
                let recs = pipe.tick(crate::clock::now_unix_ns());
                if deliver(recs, &mut pipe, &mut responder, &sinks).is_err() { return Ok(()); }
                false
            }
            // Records about an image dropped (a flood): said within BLIND_CHECK, not a tick.
            _ = blind_check.tick() => {
                let precious = snapmon_common::lost::PRECIOUS_DROPPED;
                if k.lost_count(precious) > last_lost[precious as usize]
                    && report_loss(&mut k, &mut last_lost, &mut pipe, &mut responder, &sinks, 0).is_err()
                {
                    return Ok(());
                }
                false
            }
            _ = watchdog.tick(), if notify.ping_every().is_some() => { notify.ping(); false }
            _ = hup.recv() => {
                notify.reloading();
                sinks.reopen();
                if emit(&sinks, Record::State(reload(&opts, &mut pipe, &mut k, &mut responder))).is_err() { return Ok(()); }
                notify.ready("reloaded");
                false
            }
            _ = usr1.recv() => { sinks.reopen(); false }
            _ = mount_table_changed(&mounts_fd) => { rescan_overlays(&mut pipe, &mut k); false }
            _ = later => {
                let recs = pipe.poll(Instant::now(), &mut KernelMaps::of(&mut k));
                if deliver(recs, &mut pipe, &mut responder, &sinks).is_err() { return Ok(()); }
                false
            }
            // A yield, not a ready future: the runtime turns its timer and signal drivers
            // only when the task gives way, so the branches above would never become ready.
            _ = tokio::task::yield_now(), if backlog => true,
            // The urgent lane first (a drain pass reads it before the shared lane anyway).
            r = urgent_fd.readable() => { r?.clear_ready(); true }
            r = fd.readable() => { r?.clear_ready(); true }
        };
        if drain_due {
            match drain(
                &mut k,
                &mut pipe,
                &mut responder,
                &sinks,
                &mut buf,
                Instant::now() + DRAIN_SLICE,
            ) {
                Ok(d) => backlog = d == Drained::More,
                Err(BrokenPipe) => return Ok(()),
            }
        }
    }
    notify.stopping();
    // Drain what the kernel had queued when the stop came (what it writes after is not
    // waited for: a flood does not end because we stop), judge what is held, then say
    // goodbye.
    // Overflowing since the last tick: the kernel is dropping records anyway (and says so in
    // `lost`), and reading on would not end the flood: the short bound.
    let now_lost = k.lost_counts();
    let flood = [
        snapmon_common::lost::RINGBUF_FULL,
        snapmon_common::lost::PRECIOUS_DROPPED,
    ]
    .iter()
    .any(|&c| now_lost[c as usize] > last_lost[c as usize]);
    let bound = if flood { STOP_DRAIN_FLOOD } else { STOP_DRAIN };
    let unread = match stop_drain(&mut k, &mut pipe, &mut responder, &sinks, &mut buf, bound) {
        Ok(n) => n,
        Err(BrokenPipe) => return Ok(()),
    };
    let recs = pipe.flush_held(&mut KernelMaps::of(&mut k));
    if deliver(recs, &mut pipe, &mut responder, &sinks).is_err() {
        return Ok(());
    }
    let _ = report_loss(
        &mut k,
        &mut last_lost,
        &mut pipe,
        &mut responder,
        &sinks,
        unread,
    );
    refresh_hook_runs(&k, &registry);
    let hooks = registry.hook_runs().unwrap_or_default();
    let stopped = crate::state::stopped(
        reason,
        &pipe,
        &sinks,
        &hooks,
        k.filtered_count(),
        &responder,
    );
    for r in stopped {
        let _ = emit(&sinks, r);
    }
    // Sinks drain and flush on their own threads; a dead one is not waited for forever.
    sinks.shutdown(Duration::from_secs(5));
    Ok(())
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

/// SIGHUP: re-read the policy and swap the rules in only if all of it is valid.
fn reload(
    opts: &RunOptions,
    pipe: &mut Pipeline,
    k: &mut Kernel,
    responder: &mut crate::respond::act::Responder,
) -> StateRecord {
    let Some(path) = &opts.policy_path else {
        return StateRecord {
            action: "reloaded",
            detail: json!({"policy": "<embedded default>", "changed": false}),
        };
    };
    let failed = |e: String| {
        eprintln!(
            "snapmon: reload of {} failed, keeping the running policy: {e}",
            path.display()
        );
        StateRecord {
            action: "reload_failed",
            detail: json!({"policy": path.display().to_string(), "error": e}),
        }
    };
    // Refused as at start: whoever could edit the file could silence every rule.
    let policy = match Policy::load_trusted(path, opts.insecure_config) {
        Ok((p, None)) => p,
        Ok((p, Some(why))) => {
            eprintln!(
                "snapmon: warning: --insecure-config: using {} although {}",
                path.display(),
                why.what
            );
            p
        }
        Err(e) => return failed(e.to_string()),
    };
    // Build the enforcement plan before touching anything: all or nothing.
    let enf = crate::enforce::from_policy(&opts.enforce, &policy.enforce);
    let plan = match crate::enforce::plan_for(&enf) {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    if plan.is_some() && !k.lsm && enf.mode == crate::enforce::Mode::On {
        return failed(
            "enforcement needs the BPF LSM hooks, which were not attached at start".into(),
        );
    }
    let mut response_plan = match respond_plan(opts, &policy) {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    // The watch set is fixed at start: a store outside it is never seen by the kernel.
    for p in response_plan.iter_mut() {
        let unwatched: Vec<String> = p
            .stores
            .iter()
            .filter(|s| {
                !pipe
                    .enricher
                    .watch
                    .roots
                    .iter()
                    .any(|r| s.path.starts_with(r))
            })
            .map(|s| s.path.display().to_string())
            .collect();
        for s in unwatched {
            p.notes.push(format!(
                "store {s} is not watched: restart the agent to protect it"
            ));
        }
    }
    // The watch set is built at start: a store added or removed takes a restart.
    let restart_needed = store_changes(&opts.policy.stores, &policy.stores);
    for n in &restart_needed {
        eprintln!("snapmon: reload: {n}");
    }
    set_read_budget(&policy);
    if let Err(e) = pipe.reload(policy) {
        return failed(e);
    }
    let response = match responder.apply(k, response_plan, &pipe.classifier) {
        Ok(v) => v,
        Err(e) => json!({"active": "unknown", "error": format!("{e:#}")}),
    };
    if let Err(e) =
        loader::set_trusted_writers(&mut k.trusted_writers, &pipe.rules.filter_writers())
    {
        eprintln!("snapmon: reload: trusted writers not updated: {e}");
    }
    let enforcement = if k.lsm {
        match k.reapply_enforcement(plan.as_ref(), enf.dry_run) {
            Ok(()) => {
                json!({"active": plan.is_some(), "dry_run": enf.dry_run, "monitor_only": enf.monitor_only,
                             "protected": plan.as_ref().map(|p| p.protected.len()).unwrap_or(0)})
            }
            Err(e) => json!({"active": "unknown", "error": e.to_string()}),
        }
    } else {
        json!({"active": false})
    };
    StateRecord {
        action: "reloaded",
        detail: json!({"policy": path.display().to_string(), "rule_warnings": pipe.rule_warnings(),
                       "enforcement": enforcement, "response": response, "restart_needed": restart_needed}),
    }
}

/// `[[store]]` entries a reload cannot apply (the kernel's watch set is built at start), one
/// sentence each; empty when the stores are those the agent started with.
fn store_changes(running: &[crate::config::Store], new: &[crate::config::Store]) -> Vec<String> {
    let has = |list: &[crate::config::Store], s: &crate::config::Store| {
        list.iter().any(|x| x.path == s.path)
    };
    let added = new.iter().filter(|s| !has(running, s)).map(|s| {
        format!(
            "[[store]] {} added: not watched until the agent restarts",
            s.path.display()
        )
    });
    let removed = running.iter().filter(|s| !has(new, s)).map(|s| {
        format!(
            "[[store]] {} removed: still watched until the agent restarts",
            s.path.display()
        )
    });
    added.chain(removed).collect()
}

/// Read every attached program's run statistics into the metrics registry (a bpf() call per
/// program: cheap at one refresh per status interval).
fn refresh_hook_runs(k: &Kernel, reg: &Registry) {
    let (enabled, note) = k.run_stats.describe();
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

/// Longest a handled record waits in a batch for the rest of its chunk.
const HANDOFF_AFTER: Duration = Duration::from_millis(5);

/// How often the loop looks for dropped records about images (`lost::PRECIOUS_DROPPED`,
/// one map read): SM-A001 comes within this of the loss, whatever the status interval.
const BLIND_CHECK: Duration = Duration::from_millis(250);

/// Longest one drain pass runs before the loop takes its turn (signals, ticks, timers): well
/// inside the 100 ms a SIGTERM may wait.
const DRAIN_SLICE: Duration = Duration::from_millis(20);
/// Longest the shutdown drain runs: what the kernel had queued at the stop is handled within
/// it, whatever arrives after is not waited for. It was a flat 100 ms, which dropped a burst
/// made just before SIGINT without a word (2 148 of 5 000 unlinks, debug build); the sinks
/// get as long again to write it out.
const STOP_DRAIN: Duration = Duration::from_millis(5000);
/// The bound while the ring buffer overflows (a flood): the agent stops at once, what is
/// left unread is said on stderr, and the kernel's `ringbuf_full` count is in `lost`.
const STOP_DRAIN_FLOOD: Duration = Duration::from_millis(100);

/// The shutdown drain: every record the kernel had committed to the ring buffer when the
/// stop came is handled (within `bound`), and none written after it is waited for. Returns
/// how many of those records were left unhandled at `bound`: loss, counted
/// (`agent.stop_unread`).
fn stop_drain(
    k: &mut Kernel,
    pipe: &mut Pipeline,
    responder: &mut crate::respond::act::Responder,
    sinks: &SinkSet,
    chunk: &mut Chunk,
    bound: Duration,
) -> Result<u64, BrokenPipe> {
    let until = Instant::now() + bound;
    let pos = RingPos::map(k.events.as_fd());
    let target = pos.as_ref().map(RingPos::producer);
    loop {
        if drain(k, pipe, responder, sinks, chunk, until)? == Drained::Empty {
            return Ok(0);
        }
        let caught_up = chunk.next == chunk.len
            && pos
                .as_ref()
                .zip(target)
                .is_some_and(|(p, t)| p.consumer() >= t);
        if caught_up {
            return Ok(0);
        }
        if Instant::now() >= until {
            // Counted, not handled: taking records out of the ring without judging them is
            // quick, and only what was queued at the stop is taken.
            let mut unread = (chunk.len - chunk.next) as u64;
            chunk.next = chunk.len;
            if let (Some(p), Some(t)) = (pos.as_ref(), target) {
                while p.consumer() < t {
                    if k.events.next().is_none() {
                        break;
                    }
                    unread += 1;
                }
            }
            eprintln!(
                "snapmon: stopping: {unread} records the kernel queued before the stop left unhandled after {bound:?} (counted as lost: agent stop_unread)"
            );
            return Ok(unread);
        }
    }
}

/// Read-only views of a BPF ring buffer's consumer and producer positions (its first two
/// pages, as libbpf maps them): how far the agent has read, and how far the kernel had
/// written when the stop came. Byte offsets that only grow.
struct RingPos {
    cons: *const u8,
    prod: *const u8,
    page: usize,
}

impl RingPos {
    fn map(fd: std::os::fd::BorrowedFd<'_>) -> Option<RingPos> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
        let one = |off: usize| -> Option<*const u8> {
            // SAFETY: a fresh read-only shared mapping of one page of a ring buffer map fd
            // (page 0: consumer position, page 1: producer position); the kernel allows both
            // read-only. Checked for MAP_FAILED; unmapped in Drop.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    page,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    off as libc::off_t,
                )
            };
            (p != libc::MAP_FAILED).then_some(p as *const u8)
        };
        let cons = one(0)?;
        let Some(prod) = one(page) else {
            // SAFETY: `cons` is the one-page mapping made just above.
            unsafe { libc::munmap(cons as *mut _, page) };
            return None;
        };
        Some(RingPos { cons, prod, page })
    }

    fn load(p: *const u8) -> u64 {
        // SAFETY: the position is the first, 8-byte-aligned u64 of a live page-aligned
        // mapping; the kernel (producer) and aya (consumer) store it atomically.
        unsafe {
            (*(p as *const std::sync::atomic::AtomicU64)).load(std::sync::atomic::Ordering::Acquire)
        }
    }

    fn consumer(&self) -> u64 {
        Self::load(self.cons)
    }

    fn producer(&self) -> u64 {
        Self::load(self.prod)
    }
}

impl Drop for RingPos {
    fn drop(&mut self) {
        // SAFETY: both are one-page mappings made in `map` and not used after this.
        unsafe {
            libc::munmap(self.cons as *mut _, self.page);
            libc::munmap(self.prod as *mut _, self.page);
        }
    }
}

/// Records read from the ring buffers per chunk.
const CHUNK: usize = 256;

/// Whether a drain pass emptied the ring buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    Empty,
    /// Stopped at its deadline with records still queued.
    More,
}

/// Ring-buffer records copied out and not yet handled; the buffers are reused from chunk to
/// chunk (no allocation per record), and what a pass left is handled first by the next.
#[derive(Default)]
struct Chunk {
    bufs: Vec<Vec<u8>>,
    next: usize,
    len: usize,
}

/// Read what is queued, chunk by chunk (one flush per chunk), until the ring buffers are
/// empty or `until` has passed; checked per record, as one can take milliseconds. Each chunk
/// takes the urgent lane first, so a record there waits for at most one chunk of the shared
/// lane however deep a flood has made it.
fn drain(
    k: &mut Kernel,
    pipe: &mut Pipeline,
    responder: &mut crate::respond::act::Responder,
    sinks: &SinkSet,
    chunk: &mut Chunk,
    until: Instant,
) -> Result<Drained, BrokenPipe> {
    loop {
        if chunk.next == chunk.len {
            let mut n = 0;
            for ring in [&mut k.urgent, &mut k.events] {
                while n < CHUNK {
                    let Some(item) = ring.next() else { break };
                    match chunk.bufs.get_mut(n) {
                        Some(b) => {
                            b.clear();
                            b.extend_from_slice(&item);
                        }
                        None => chunk.bufs.push(item.to_vec()),
                    }
                    n += 1;
                }
            }
            (chunk.next, chunk.len) = (0, n);
            if n == 0 {
                return Ok(Drained::Empty);
            }
        }
        // One hand-off (one wake-up and one flush per sink) per chunk, not per record.
        let out_of_time = sinks.batch(|| -> Result<bool, BrokenPipe> {
            let mut since = Instant::now();
            while chunk.next < chunk.len {
                let raw = &chunk.bufs[chunk.next];
                chunk.next += 1;
                let recs = pipe.handle(raw, &mut KernelMaps::of(k));
                deliver(recs, pipe, responder, sinks)?;
                // One clock read per record serves both checks.
                let now = Instant::now();
                if now >= until {
                    return Ok(true);
                }
                // A slow record (an LVM metadata re-read under load) must not hold back the
                // ones already handled: hand over what is pending every HANDOFF_AFTER.
                if now.duration_since(since) >= HANDOFF_AFTER {
                    sinks.hand_off_pending();
                    since = now;
                }
            }
            Ok(false)
        })?;
        if out_of_time {
            return Ok(Drained::More);
        }
    }
}

/// A watch on stdout for its reader going away (EPOLLERR on a pipe's write end), when stdout
/// is something epoll takes (a pipe or socket; not a file or /dev/null).
fn stdout_watch() -> Option<AsyncFd<std::os::fd::OwnedFd>> {
    let fd = std::io::stdout().as_fd().try_clone_to_owned().ok()?;
    // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, which closes it only on drop.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::ERROR) }.ok()
}

/// The agent's mount table, polled for changes (`POLLPRI`); None when it cannot be, said once.
fn mount_table_watch() -> Option<AsyncFd<std::os::fd::OwnedFd>> {
    let f = std::fs::File::open(crate::overlay::MOUNTINFO).and_then(|f| {
        // SAFETY: an OwnedFd moved into the AsyncFd, which closes it only on drop.
        unsafe {
            AsyncFd::register_with_interest(
                std::os::fd::OwnedFd::from(f),
                tokio::io::Interest::PRIORITY,
            )
        }
        .map_err(std::io::Error::from)
    });
    match f {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!(
                "snapmon: {}: {e}: overlays mounted over a store after the start are not watched",
                crate::overlay::MOUNTINFO
            );
            None
        }
    }
}

/// The mount table changed (a mount or unmount in the agent's mount namespace).
async fn mount_table_changed(w: &Option<AsyncFd<std::os::fd::OwnedFd>>) {
    let Some(w) = w else {
        return std::future::pending().await;
    };
    match w.ready(tokio::io::Interest::PRIORITY).await {
        // The kernel re-arms on the next change: poll itself took note of this one.
        Ok(mut g) => g.clear_ready(),
        Err(_) => std::future::pending().await,
    }
}

/// Re-read the mount table and bring the overlay aliases in line; what changed is said on
/// stderr (the records carry `snapmon.detail.overlay_*` on each event through a view).
fn rescan_overlays(pipe: &mut Pipeline, k: &mut Kernel) {
    let text = match std::fs::read_to_string(crate::overlay::MOUNTINFO) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("snapmon: {}: {e}", crate::overlay::MOUNTINFO);
            return;
        }
    };
    let r = pipe.enricher.rescan_overlays(&text, &mut KernelMaps::of(k));
    for (mp, upper, n) in &r.added {
        eprintln!(
            "snapmon: overlay at {} has {} as its upper dir: {n} merged-view aliases watched",
            mp.display(),
            upper.display()
        );
    }
    for mp in &r.removed {
        eprintln!(
            "snapmon: overlay at {} unmounted: its aliases withdrawn",
            mp.display()
        );
    }
    if r.refused > 0 {
        eprintln!(
            "snapmon: {} merged-view aliases of images refused by the watched-files map: writes through them go unseen",
            r.refused
        );
    }
}

/// Watch the loop devices already over watched images (`/sys/block/loop*/loop`) as their
/// attach would have; each one seeded is said on stderr.
fn seed_loops(pipe: &mut Pipeline, k: &mut Kernel) {
    let seeded = pipe.enricher.seed_loops(
        std::path::Path::new(crate::enrich::SYS_BLOCK),
        &mut KernelMaps::of(k),
    );
    for s in seeded {
        eprintln!("snapmon: {s}");
    }
}

/// Resolves once stdout's reader has gone; never when stdout is not watched.
async fn stdout_closed(w: &Option<AsyncFd<std::os::fd::OwnedFd>>) {
    match w {
        Some(w) => {
            let _ = w.ready(tokio::io::Interest::ERROR).await;
        }
        None => std::future::pending().await,
    }
}

/// Trusted writes dropped in the kernel since the last tick, when there were any.
fn report_filtered(
    k: &Kernel,
    last: &mut u64,
    pipe: &Pipeline,
    sinks: &SinkSet,
) -> Result<(), BrokenPipe> {
    let now = k.filtered_count();
    if now == *last {
        return Ok(());
    }
    let rec = MetricRecord {
        action: "filtered",
        detail: json!({"kernel_writes": now - *last, "kernel_total": now,
                       "files": pipe.classifier.filters_published()}),
    };
    *last = now;
    emit(sinks, Record::Metric(rec))
}

/// Records about images or metadata the kernel dropped between two readings of `LOST`;
/// any other cause (ordinary files, paths, stash) is not a blinding.
fn precious_dropped(now: &[u64], last: &[u64]) -> u64 {
    let i = snapmon_common::lost::PRECIOUS_DROPPED as usize;
    now[i].saturating_sub(last[i])
}

/// The `lost` record for what was lost since the last call; when records about images or
/// metadata were among it, also the `blinded` event naming the last of them (SM-A001).
fn report_loss(
    k: &mut Kernel,
    last: &mut [u64; snapmon_common::lost::COUNT as usize],
    pipe: &mut Pipeline,
    responder: &mut crate::respond::act::Responder,
    sinks: &SinkSet,
    stop_unread: u64,
) -> Result<(), BrokenPipe> {
    // Sink drops are loss too: their own `lost` record, per sink and cause.
    if let Some(r) = sinks.loss_record() {
        sinks.send(&r)?;
    }
    let now = k.lost_counts();
    // Slot i of the kernel's LOST map is cause i of the declared list.
    let names = crate::metrics::kernel_loss_causes();
    let delta: serde_json::Map<_, _> = now
        .iter()
        .zip(last.iter())
        .zip(names)
        .filter(|((n, l), _)| n > l)
        .map(|((n, l), name)| (name.to_string(), json!(n - l)))
        .collect();
    let decode = pipe.take_decode_errors();
    let watch = pipe.enricher.watch.take_loss();
    if delta.is_empty() && decode.is_empty() && watch.watch_full == 0 && stop_unread == 0 {
        return Ok(());
    }
    let blinded = precious_dropped(&now, last);
    *last = now;
    let mut detail = json!({"kernel": delta, "kernel_total": now, "decoder": decode});
    if watch.watch_full > 0 {
        // Files the agent could not put into the kernel's file map (see watch::admit).
        detail["watch"] = json!({"watch_full": watch.watch_full});
    }
    if stop_unread > 0 {
        // Queued before the stop, left unhandled when the stop drain ran out of time.
        detail["agent"] = json!({"stop_unread": stop_unread});
    }
    let rec = MetricRecord {
        action: "lost",
        detail,
    };
    emit(sinks, Record::Metric(rec))?;
    if blinded == 0 {
        return Ok(());
    }
    // The slot is written before the count on each CPU: a grown count has a file to name.
    let Some(b) = k.last_blinded() else {
        return Ok(());
    };
    let recs = pipe.blinded(&b, blinded, &mut KernelMaps::of(k));
    deliver(recs, pipe, responder, sinks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Store;

    fn store(p: &str) -> Store {
        Store {
            path: p.into(),
            kind: Default::default(),
            required: false,
        }
    }

    #[test]
    fn only_dropped_image_records_are_a_blinding() {
        use snapmon_common::lost;
        let last = [0u64; lost::COUNT as usize];
        let mut now = last;
        // A flood of junk names: the shared ring overflowed, nothing about an image lost.
        now[lost::RINGBUF_FULL as usize] = 50_000;
        now[lost::WATCH_FULL as usize] = 7;
        assert_eq!(precious_dropped(&now, &last), 0);
        now[lost::PRECIOUS_DROPPED as usize] = 12;
        assert_eq!(precious_dropped(&now, &last), 12);
        // Counted once: the next reading starts from this one.
        assert_eq!(precious_dropped(&now, &now), 0);
    }

    #[test]
    fn the_newest_cpu_slot_names_the_blinding() {
        use snapmon_common::Blinded;
        let at = |ts_ns, tgid| Blinded {
            ts_ns,
            tgid,
            ..Default::default()
        };
        let pick = loader::newest_blinded([at(5, 1), Blinded::default(), at(9, 2), at(7, 3)]);
        assert_eq!(pick.map(|b| b.tgid), Some(2));
        // No CPU dropped one yet: nothing to name.
        assert!(loader::newest_blinded([Blinded::default(); 4]).is_none());
    }

    #[test]
    fn a_reload_names_the_stores_it_cannot_apply() {
        let running = [store("/a"), store("/b")];
        assert!(store_changes(&running, &[store("/b"), store("/a")]).is_empty());
        let n = store_changes(&running, &[store("/a"), store("/c")]);
        assert_eq!(
            n,
            [
                "[[store]] /c added: not watched until the agent restarts",
                "[[store]] /b removed: still watched until the agent restarts"
            ]
        );
    }
}
