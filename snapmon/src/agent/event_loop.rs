//! The event loop: drain the ring buffers in bounded passes, answer signals, ticks (loss,
//! stats, watchdog) and timers, and at a stop drain what was queued and say `stopped`.

use std::{
    collections::VecDeque,
    os::fd::AsFd as _,
    time::{Duration, Instant},
};

use serde_json::json;
use tokio::io::unix::AsyncFd;

use super::{
    kernel_maps::{ordinary_entries, KernelMaps},
    memory::purge_when_quiet,
    mounts::{mount_table_changed, rescan_overlays},
    output::{deliver, deliver_from, emit, refresh_hook_runs},
    reload::reload,
    startup::{RunOptions, Running, Signals},
};
use crate::{
    kernel::loader::{Counters, Kernel},
    pipeline::Pipeline,
    record::{MetricRecord, Record},
    sink::{BrokenPipe, SinkSet},
};

/// Ring buffers, signals, ticks and timers until a stop; then the stop drain and `stopped`.
pub(super) async fn run(
    opts: &RunOptions,
    mut sinks: SinkSet,
    running: Running,
) -> anyhow::Result<()> {
    let Running {
        mut k,
        mut pipe,
        mut responder,
        registry,
        notify,
        signals,
        mounts: mounts_fd,
        mut dirwatch,
    } = running;
    let Signals {
        mut term,
        mut int,
        mut hup,
        mut usr1,
    } = signals;
    let mut tick = tokio::time::interval(opts.status_interval);
    let mut blind_check = tokio::time::interval(BLIND_CHECK.min(opts.status_interval));
    // Keep-alives come from this loop only, so a stalled reader gets restarted.
    let mut watchdog =
        tokio::time::interval(notify.ping_every().unwrap_or(Duration::from_secs(86_400)));
    let mut last_lost = k.counters.lost_counts();
    let mut last_stats = Instant::now();
    let mut last_filtered = 0u64;
    // Records received by the last tick: none since means quiet (`purge_when_quiet`).
    let mut received_at_tick = 0u64;
    // A dup of the ring buffer fd: epoll watches the same open file, and the borrow of
    // `k` stays free for draining.
    let owned = k.rings.events.as_fd().try_clone_to_owned()?;
    // SAFETY: `owned` is an OwnedFd moved into the AsyncFd, which closes it only on drop.
    let fd = unsafe { AsyncFd::register(owned) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let owned = k.rings.urgent.as_fd().try_clone_to_owned()?;
    // SAFETY: as above.
    let urgent_fd = unsafe { AsyncFd::register(owned) }
        .map_err(|e| anyhow::anyhow!("polling the urgent ring buffer: {e}"))?;
    // Fanotify marks on the watched directories (`dirwatch`): polled as the ring buffers are.
    let dir_fd = match dirwatch.as_ref().map(|d| d.fd().try_clone_to_owned()) {
        // SAFETY: as above.
        Some(Ok(owned)) => Some(
            unsafe { AsyncFd::register(owned) }
                .map_err(|e| anyhow::anyhow!("polling the fanotify group: {e}"))?,
        ),
        Some(Err(e)) => return Err(e.into()),
        None => None,
    };
    let mut buf = Chunk::default();
    // A status tick compares the watched directories with the marked ones one by one.
    let mut full_sync = false;
    // The fanotify queue was left unread at a turn's bound (a flood of creates): read on
    // at the next turn, the readiness edge having been taken.
    let mut dir_more = false;
    // Fanotify events taken due and not yet judged: fed a slice per turn (`feed_dirwatch`).
    let mut dir_fed: VecDeque<Vec<u8>> = VecDeque::new();
    // Records left in the ring buffer by a drain pass cut short (a flood): drained again
    // on the loop's next turn, after whatever else is due.
    let mut backlog = false;
    // A busy pass: the next one waits out LINGER first (see there).
    let mut linger: Option<tokio::time::Instant> = None;
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
        // Fanotify events held for the syscall route's records of the same names.
        let dir_due = dirwatch
            .as_ref()
            .and_then(|d| d.next_due())
            .map(tokio::time::Instant::from_std);
        let dir_later = async move {
            match dir_due {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let lingered = async move {
            match linger {
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
                full_sync = true;
                let dir_loss = dirwatch.as_mut().and_then(|d| d.take_loss());
                if report_loss(&mut k, &mut last_lost, &mut pipe, &mut responder, &sinks, 0, dir_loss).is_err() { return Ok(()); }
                if report_filtered(&k.counters, &mut last_filtered, &pipe, &sinks).is_err() { return Ok(()); }
                refresh_hook_runs(&k, &registry);
                registry.watch_ordinary.store(ordinary_entries(&k.watch.share), std::sync::atomic::Ordering::Relaxed);
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
                use snapmon_common::lost::{NAMESPACE_DROPPED, PRECIOUS_DROPPED};
                let grew = |c: u32| k.counters.lost_count(c) > last_lost[c as usize];
                // The fanotify route's overflow too: namespace events about stores lost.
                let dir_blind = dirwatch.as_ref().is_some_and(|d| d.blinded());
                if grew(PRECIOUS_DROPPED) || grew(NAMESPACE_DROPPED) || dir_blind {
                    let dir_loss = if dir_blind { dirwatch.as_mut().and_then(|d| d.take_loss()) } else { None };
                    if report_loss(&mut k, &mut last_lost, &mut pipe, &mut responder, &sinks, 0, dir_loss).is_err() {
                        return Ok(());
                    }
                }
                false
            }
            _ = watchdog.tick(), if notify.ping_every().is_some() => { notify.ping(); false }
            _ = hup.recv() => {
                notify.reloading();
                sinks.reopen();
                if emit(&sinks, Record::State(reload(opts, &mut pipe, &mut k, &mut responder))).is_err() { return Ok(()); }
                notify.ready("reloaded");
                false
            }
            _ = usr1.recv() => { sinks.reopen(); false }
            _ = mount_table_changed(&mounts_fd) => { rescan_overlays(&mut pipe, &mut k); false }
            _ = dir_readable(&dir_fd) => {
                if let Some(d) = dirwatch.as_mut() { dir_more = d.read(Instant::now()); }
                false
            }
            // Drain first: the syscall route's records of these names are in the ring.
            _ = dir_later => true,
            _ = later => {
                let recs = pipe.poll(Instant::now(), &mut KernelMaps::of(&mut k));
                if deliver(recs, &mut pipe, &mut responder, &sinks).is_err() { return Ok(()); }
                false
            }
            // A yield, not a ready future: the runtime turns its timer and signal drivers
            // only when the task gives way, so the branches above would never become ready.
            _ = tokio::task::yield_now(), if backlog || dir_more || !dir_fed.is_empty() => true,
            // Readiness that comes meanwhile stays set: the pass after the linger reads it.
            _ = lingered, if linger.is_some() => true,
            // The urgent lane first (a drain pass reads it before the shared lane anyway).
            r = urgent_fd.readable(), if linger.is_none() => { r?.clear_ready(); true }
            r = fd.readable(), if linger.is_none() => { r?.clear_ready(); true }
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
                Ok((d, handled)) => {
                    backlog = d == Drained::More;
                    linger = lingers(d, handled).then(|| tokio::time::Instant::now() + LINGER);
                }
                Err(BrokenPipe) => return Ok(()),
            }
        }
        if let Some(d) = dirwatch.as_mut() {
            if dir_more {
                dir_more = d.read(Instant::now());
            }
            take_dirwatch(d, &mut dir_fed, backlog, full_sync, &pipe);
            full_sync = false;
            // Renames by anyone in a store fill `dir_fed` (16 384 held at most, ~4 s of
            // judging in a debug build): all in one turn, the ring buffers and their urgent
            // lane went unread that long.
            let fed = take_slice(
                &mut dir_fed,
                Instant::now() + DRAIN_SLICE,
                Instant::now,
                |raw| {
                    let recs = pipe.handle(&raw, &mut KernelMaps::of(&mut k));
                    deliver(recs, &mut pipe, &mut responder, &sinks)
                },
            );
            if fed.is_err() {
                return Ok(());
            }
        }
    }
    notify.stopping();
    // Drain what the kernel had queued when the stop came (what it writes after is not
    // waited for: a flood does not end because we stop), judge what is held, then say
    // goodbye.
    // Overflowing since the last tick: the kernel is dropping records anyway (and says so in
    // `lost`), and reading on would not end the flood: the short bound.
    let now_lost = k.counters.lost_counts();
    let flood = [
        snapmon_common::lost::RINGBUF_FULL,
        snapmon_common::lost::PRECIOUS_DROPPED,
        snapmon_common::lost::NAMESPACE_DROPPED,
    ]
    .iter()
    .any(|&c| now_lost[c as usize] > last_lost[c as usize]);
    let bound = if flood { STOP_DRAIN_FLOOD } else { STOP_DRAIN };
    let unread = match stop_drain(&mut k, &mut pipe, &mut responder, &sinks, &mut buf, bound) {
        Ok(n) => n,
        Err(BrokenPipe) => return Ok(()),
    };
    // Fanotify events queued at the stop, after the ring's records of the same names.
    if let Some(d) = dirwatch.as_mut() {
        let now = Instant::now();
        d.read(now);
        let w = &pipe.enricher.watch;
        let raws = d.take_due(
            now + crate::dirwatch::HOLD,
            usize::MAX,
            &pipe.recent,
            |key| w.path_of(key).cloned(),
        );
        // Those taken before the stop first: they are the older.
        for raw in std::mem::take(&mut dir_fed).into_iter().chain(raws) {
            let recs = pipe.handle(&raw, &mut KernelMaps::of(&mut k));
            if deliver(recs, &mut pipe, &mut responder, &sinks).is_err() {
                return Ok(());
            }
        }
    }
    let recs = pipe.flush_held(&mut KernelMaps::of(&mut k));
    if deliver(recs, &mut pipe, &mut responder, &sinks).is_err() {
        return Ok(());
    }
    let dir_loss = dirwatch.as_mut().and_then(|d| d.take_loss());
    let _ = report_loss(
        &mut k,
        &mut last_lost,
        &mut pipe,
        &mut responder,
        &sinks,
        unread,
        dir_loss,
    );
    refresh_hook_runs(&k, &registry);
    let hooks = registry.hook_runs().unwrap_or_default();
    let stopped = crate::state::stopped(
        reason,
        &pipe,
        &sinks,
        &hooks,
        k.counters.filtered_count(),
        &responder,
    );
    for r in stopped {
        let _ = emit(&sinks, r);
    }
    // Sinks drain and flush on their own threads; a dead one is not waited for forever.
    sinks.shutdown(Duration::from_secs(5));
    Ok(())
}

/// After a drain pass that handled at least LINGER_MIN records, the next waits this long
/// instead of for the ring buffer's wake-up. A stream of 100 000 records/s woke the loop
/// (and through its hand-off, the sink thread) every 9 records: each wake-up, a context
/// switch and a tokio turn on each thread, cost more CPU than the record did. Waiting lets
/// a pass take ~100 at that rate. A record waits at most this long more (the p99 alert
/// latency goal is 10 ms); a quiet host, one record a pass, never waits; signals, ticks and
/// timers are served meanwhile (it is a branch of the loop, not a sleep).
const LINGER: Duration = Duration::from_millis(1);
const LINGER_MIN: usize = 8;

/// Whether the pass after this one waits out [`LINGER`]: only after a busy pass that emptied
/// the ring buffers (one cut short goes on at once).
fn lingers(d: Drained, handled: usize) -> bool {
    d == Drained::Empty && handled >= LINGER_MIN
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
    let pos = RingPos::map(k.rings.events.as_fd());
    let target = pos.as_ref().map(RingPos::producer);
    loop {
        if drain(k, pipe, responder, sinks, chunk, until)?.0 == Drained::Empty {
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
                    if k.rings.events.next().is_none() {
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
    /// What the pipeline made of one record, on its way to the sinks (empty between).
    recs: Vec<Record>,
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
) -> Result<(Drained, usize), BrokenPipe> {
    let mut handled = 0;
    loop {
        if chunk.next == chunk.len {
            let mut n = 0;
            for ring in [&mut k.rings.urgent, &mut k.rings.events] {
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
                return Ok((Drained::Empty, handled));
            }
        }
        // One hand-off (one wake-up and one flush per sink) per chunk, not per record.
        let out_of_time = sinks.batch(|| -> Result<bool, BrokenPipe> {
            let mut since = Instant::now();
            while chunk.next < chunk.len {
                let raw = &chunk.bufs[chunk.next];
                chunk.next += 1;
                handled += 1;
                pipe.handle_into(raw, &mut KernelMaps::of(k), &mut chunk.recs);
                deliver_from(&mut chunk.recs, pipe, responder, sinks)?;
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
            return Ok((Drained::More, handled));
        }
    }
}

/// Fanotify events can be read (never, without the route).
async fn dir_readable(w: &Option<AsyncFd<std::os::fd::OwnedFd>>) {
    let Some(w) = w else {
        return std::future::pending().await;
    };
    match w.readable().await {
        // Cleared before the read, which empties the queue: a later event wakes us again.
        Ok(mut g) => g.clear_ready(),
        Err(_) => std::future::pending().await,
    }
}

/// Mark directories the watch set gained, and take the held fanotify events that are due
/// into `fed` once the ring buffers were drained (or they waited `HOLD_MAX`) and what was
/// taken before is fed: the loop feeds them to the pipeline a `DRAIN_SLICE` per turn.
fn take_dirwatch(
    d: &mut crate::dirwatch::DirWatch,
    fed: &mut VecDeque<Vec<u8>>,
    backlog: bool,
    full: bool,
    pipe: &Pipeline,
) {
    let w = &pipe.enricher.watch;
    d.sync(&w.dirs, |key| w.path_of(key).cloned(), full);
    let now = Instant::now();
    let due = d.next_due().is_some_and(|t| t <= now) && (!backlog || d.overdue(now));
    if fed.is_empty() && due {
        let w = &pipe.enricher.watch;
        fed.extend(
            d.take_due(now, crate::dirwatch::TAKE_PER_TURN, &pipe.recent, |key| {
                w.path_of(key).cloned()
            }),
        );
    }
}

/// Hand queued items to `f`, oldest first, until the queue is empty or `until` has passed
/// (read from `clock` after each; at least one is handed per call, so the queue drains).
fn take_slice<T, E>(
    q: &mut VecDeque<T>,
    until: Instant,
    mut clock: impl FnMut() -> Instant,
    mut f: impl FnMut(T) -> Result<(), E>,
) -> Result<(), E> {
    while let Some(item) = q.pop_front() {
        f(item)?;
        if clock() >= until {
            break;
        }
    }
    Ok(())
}

/// A watch on stdout for its reader going away (EPOLLERR on a pipe's write end), when stdout
/// is something epoll takes (a pipe or socket; not a file or /dev/null).
fn stdout_watch() -> Option<AsyncFd<std::os::fd::OwnedFd>> {
    let fd = std::io::stdout().as_fd().try_clone_to_owned().ok()?;
    // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, which closes it only on drop.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::ERROR) }.ok()
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
    counters: &Counters,
    last: &mut u64,
    pipe: &Pipeline,
    sinks: &SinkSet,
) -> Result<(), BrokenPipe> {
    let now = counters.filtered_count();
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

/// Records of cause `c` (`snapmon_common::lost`) the kernel dropped between two readings of
/// `LOST`. Dropped records about images or metadata are a blinding; dropped path records
/// may be (`Pipeline::blinded_names` looks); any other cause (ordinary files, stash) is not.
fn dropped(c: u32, now: &[u64], last: &[u64]) -> u64 {
    now[c as usize].saturating_sub(last[c as usize])
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
    dir_loss: Option<crate::dirwatch::DirWatchLoss>,
) -> Result<(), BrokenPipe> {
    // Sink drops are loss too: their own `lost` record, per sink and cause.
    if let Some(r) = sinks.loss_record() {
        sinks.send(&r)?;
    }
    let now = k.counters.lost_counts();
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
    if delta.is_empty()
        && decode.is_empty()
        && watch.watch_full == 0
        && stop_unread == 0
        && dir_loss.is_none()
    {
        return Ok(());
    }
    let blinded = dropped(snapmon_common::lost::PRECIOUS_DROPPED, &now, last);
    let names = dropped(snapmon_common::lost::NAMESPACE_DROPPED, &now, last);
    *last = now;
    let mut detail = json!({"kernel": delta, "kernel_total": now, "decoder": decode});
    if watch.watch_full > 0 {
        // Files the agent could not put into the kernel's file map (see watch::admit).
        detail["watch"] = json!({"watch_full": watch.watch_full});
    }
    if let Some(l) = &dir_loss {
        // Fanotify events the kernel dropped (queue full), could not parse, or directories
        // that could not be marked: names made through another name of a store may be unseen.
        detail["dirwatch"] = json!({"overflow": l.overflow, "parse_errors": l.parse_errors,
                                    "mark_failed": l.mark_failed, "read_errors": l.read_errors});
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
    use snapmon_common::blinded_slot;
    // A slot is written before its count on each CPU: a grown count has a file to name.
    if blinded > 0 {
        if let Some(b) = k.counters.last_blinded(blinded_slot::FILE) {
            let recs = pipe.blinded(&b, blinded, &mut KernelMaps::of(k));
            deliver(recs, pipe, responder, sinks)?;
        }
    }
    if names > 0 {
        if let Some(b) = k.counters.last_blinded(blinded_slot::NAMESPACE) {
            let recs = pipe.blinded_names(&b, names, &mut KernelMaps::of(k));
            deliver(recs, pipe, responder, sinks)?;
        }
    }
    // Fanotify events lost: names made in a store through another name of it may be unseen.
    if let Some(l) = dir_loss.as_ref().filter(|l| l.blinding()) {
        let recs = pipe.blinded_fanotify(l, &mut KernelMaps::of(k));
        deliver(recs, pipe, responder, sinks)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::loader;

    #[test]
    fn only_a_busy_pass_that_emptied_the_ring_lingers() {
        // A quiet host: each record is handled as soon as it is woken for.
        assert!(!lingers(Drained::Empty, 1));
        assert!(!lingers(Drained::Empty, LINGER_MIN - 1));
        assert!(lingers(Drained::Empty, LINGER_MIN));
        // A backlog is drained on the loop's next turn, not after a wait.
        assert!(!lingers(Drained::More, 10 * LINGER_MIN));
    }

    #[test]
    fn a_deep_fanotify_queue_is_fed_a_slice_per_turn() {
        // 10 000 renames came due at once, each taking 1 ms to judge: one turn takes 20,
        // oldest first, and leaves the rest (in order) for the next turns.
        let mut q: VecDeque<u32> = (0..10_000).collect();
        let t0 = Instant::now();
        let clock = std::cell::Cell::new(t0);
        let mut fed = Vec::new();
        let tick = || {
            clock.set(clock.get() + Duration::from_millis(1));
            clock.get()
        };
        let r: Result<(), ()> = take_slice(&mut q, t0 + DRAIN_SLICE, tick, |i| {
            fed.push(i);
            Ok(())
        });
        assert!(r.is_ok());
        assert_eq!(fed, (0..20).collect::<Vec<_>>());
        assert_eq!(q.len(), 10_000 - 20);
        assert_eq!(q.front(), Some(&20));
        // Past its deadline already (a slow turn): one still goes, so the queue drains.
        let r: Result<(), ()> = take_slice(&mut q, t0, tick, |i| {
            fed.push(i);
            Ok(())
        });
        assert!(r.is_ok());
        assert_eq!(fed.last(), Some(&20));
        assert_eq!(q.len(), 10_000 - 21);
        // A broken pipe stops the feed at once.
        assert_eq!(
            take_slice(&mut q, t0 + DRAIN_SLICE, tick, |_| Err(7)),
            Err(7)
        );
        assert_eq!(q.len(), 10_000 - 22);
    }

    #[test]
    fn only_dropped_image_records_are_a_blinding() {
        use snapmon_common::lost;
        let last = [0u64; lost::COUNT as usize];
        let mut now = last;
        // A flood of junk names: the shared ring overflowed, nothing about an image lost.
        now[lost::RINGBUF_FULL as usize] = 50_000;
        now[lost::WATCH_FULL as usize] = 7;
        assert_eq!(dropped(lost::PRECIOUS_DROPPED, &now, &last), 0);
        now[lost::PRECIOUS_DROPPED as usize] = 12;
        assert_eq!(dropped(lost::PRECIOUS_DROPPED, &now, &last), 12);
        // Counted once: the next reading starts from this one.
        assert_eq!(dropped(lost::PRECIOUS_DROPPED, &now, &now), 0);
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
}
