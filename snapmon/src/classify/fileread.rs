//! Classify stage, file access: every read the agent makes of a store file opens it here.
//! Opened without following a final symlink and without blocking, and only a regular file
//! or block device is read: a FIFO or character device planted under an image's name never
//! stalls the agent. The reads themselves run on worker threads under a time budget
//! ([`bounded`]): a hung NFS server or a FUSE daemon that never answers costs the event loop
//! one budget per filesystem, then its reads fail at once until the stuck one returns.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, Read},
    os::unix::fs::FileTypeExt,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc, Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

pub use snapmon_formats::file::{open, open_with, OpenError};

/// LVM writes PVs with O_DIRECT; a buffered read racing such a write can leave stale pages
/// in the device's page cache for good. Drop them before reading a block device.
pub fn drop_stale_pages(f: &File) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    if f.metadata()?.file_type().is_block_device() {
        // SAFETY: an advisory call on a descriptor we own.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    Ok(())
}

/// Up to `n` bytes from the current position (the start, for a fresh descriptor).
pub fn prefix_of(f: &mut File, n: u64) -> io::Result<Vec<u8>> {
    drop_stale_pages(f)?;
    let mut buf = Vec::new();
    f.by_ref().take(n).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Up to `n` bytes from the start of the file at `path`.
pub fn read_prefix(path: &Path, n: u64) -> io::Result<Vec<u8>> {
    prefix_of(&mut open(path)?, n)
}

/// `len` bytes at `off` (fewer at end of file).
pub fn read_at(f: &File, off: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

pub use crate::config::DEFAULT_BUDGET_MS;
/// Once a stop is asked for, a wait on a slow read lasts at most this: the loop heeds a
/// signal within the 100 ms it promises, whatever the budget.
const STOP_WAIT: Duration = Duration::from_millis(20);
/// How often a waiting loop looks whether a stop was asked for.
const WAIT_SLICE: Duration = Duration::from_millis(10);
/// Reads left stuck at once before any further one fails without being tried: each holds
/// a thread (and its descriptor) until the filesystem answers.
const MAX_STUCK: usize = 64;

static BUDGET_MS: AtomicU64 = AtomicU64::new(DEFAULT_BUDGET_MS);
static STARTED: AtomicU64 = AtomicU64::new(0);
static STALLED: AtomicU64 = AtomicU64::new(0);
static SKIPPED: AtomicU64 = AtomicU64::new(0);
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on SIGTERM and SIGINT (besides what else handles them) cut short any wait on a
/// read: the event loop may be inside one when the signal comes, and cannot see it there.
pub fn heed_stop_signals() -> io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the action is one atomic store, async-signal-safe.
        unsafe {
            signal_hook_registry::register(sig, || STOPPING.store(true, Relaxed))?;
        }
    }
    Ok(())
}

/// How long the event loop waits for one bounded file operation (the policy's value).
pub fn set_budget(d: Duration) {
    BUDGET_MS.store(d.as_millis().clamp(1, u64::MAX as u128) as u64, Relaxed);
}

fn budget() -> Duration {
    Duration::from_millis(BUDGET_MS.load(Relaxed))
}

/// A bounded operation that did not finish in time, or was not started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stalled {
    /// It ran out of time; it goes on in the background and its result is dropped.
    #[error("no answer within {0} ms")]
    TimedOut(u64),
    /// An earlier read on the same filesystem is still stuck: not tried.
    #[error("an earlier read on this filesystem has been stuck for over {0} ms")]
    Quarantined(u64),
    /// Too many reads are stuck at once: not tried.
    #[error("{0} reads are stuck")]
    TooMany(usize),
}

/// Counters since start, for the `stats` record: `started` ran on a worker, `stalled` ran
/// out of time, `skipped` were not tried, `stuck` are still waiting on their filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReadStats {
    pub started: u64,
    pub stalled: u64,
    pub skipped: u64,
    pub stuck: usize,
}

pub fn stats() -> ReadStats {
    ReadStats {
        started: STARTED.load(Relaxed),
        stalled: STALLED.load(Relaxed),
        skipped: SKIPPED.load(Relaxed),
        stuck: pool().stuck,
    }
}

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    /// Workers waiting for a job.
    idle: Vec<mpsc::Sender<Job>>,
    stuck: usize,
    /// Stuck reads per filesystem (`st_dev` as the kernel reports it).
    stuck_devs: BTreeMap<u32, usize>,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    idle: Vec::new(),
    stuck: 0,
    stuck_devs: BTreeMap::new(),
});

fn pool() -> MutexGuard<'static, Pool> {
    // Nothing under the lock can panic half-way; a poisoned pool is still consistent.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

fn spawn_worker() -> io::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("snapmon-read".into())
        // Parsers recurse little; the default 2 MiB is address space held by every stuck one.
        .stack_size(512 << 10)
        .spawn(move || {
            for job in rx {
                job();
            }
        })?;
    Ok(tx)
}

#[derive(PartialEq)]
enum JobState {
    Running,
    Done,
    Abandoned,
}

/// Run `f` (file access on the filesystem `dev`, when known) on a worker thread and wait at
/// most the read budget for it. Past the budget the caller goes on without the result and
/// `dev` is quarantined until `f` returns: later calls for it fail at once, so one stuck
/// filesystem costs the event loop one budget, not one per event. `what` names the file in
/// the note on stderr.
pub fn bounded<T: Send + 'static>(
    dev: Option<u32>,
    what: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Stalled> {
    let budget = budget();
    let ms = budget.as_millis() as u64;
    let worker = {
        let mut p = pool();
        let refused = if dev.is_some_and(|d| p.stuck_devs.contains_key(&d)) {
            Some(Stalled::Quarantined(ms))
        } else {
            (p.stuck >= MAX_STUCK).then_some(Stalled::TooMany(p.stuck))
        };
        if let Some(e) = refused {
            SKIPPED.fetch_add(1, Relaxed);
            note_stall(what, &e);
            return Err(e);
        }
        p.idle.pop()
    };
    // No thread to be had: read inline rather than not at all (the old behaviour).
    let Ok(worker) = worker.map_or_else(spawn_worker, Ok) else {
        return Ok(f());
    };
    STARTED.fetch_add(1, Relaxed);
    let state = Arc::new(Mutex::new(JobState::Running));
    let (tx, rx) = mpsc::sync_channel(1);
    let st = state.clone();
    let what_owned = what.to_path_buf();
    let job: Job = Box::new(move || {
        let v = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
        if *s == JobState::Abandoned {
            drop(s);
            released(dev, &what_owned);
        } else {
            // Sent under the lock: `Done` means the value is in the channel.
            *s = JobState::Done;
            let _ = tx.send(v);
        }
    });
    if let Err(mpsc::SendError(job)) = worker.send(job) {
        // The worker is gone (it cannot be: jobs catch panics); run the job inline.
        job();
    }
    let got = match wait(&rx, budget) {
        Some(v) => Some(v),
        None => {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            if *s == JobState::Done {
                rx.try_recv().ok()
            } else {
                *s = JobState::Abandoned;
                None
            }
        }
    };
    match got {
        Some(v) => {
            pool().idle.push(worker);
            v.map_err(|p| std::panic::resume_unwind(p))
        }
        None => {
            // The worker ends after its job (its sender is dropped here).
            STALLED.fetch_add(1, Relaxed);
            let mut p = pool();
            p.stuck += 1;
            if let Some(d) = dev {
                let n = p.stuck_devs.entry(d).or_insert(0);
                *n += 1;
                if *n == 1 {
                    eprintln!(
                        "snapmon: reading {} took over {ms} ms; files on its filesystem \
                         (dev {d:#x}) are not read until it answers",
                        crate::event::Bytes::from_path(what).display()
                    );
                }
            }
            let e = Stalled::TimedOut(ms);
            note_stall(what, &e);
            Err(e)
        }
    }
}

/// The job's result within `budget`, or within [`STOP_WAIT`] once a stop is asked for.
fn wait<T>(rx: &mpsc::Receiver<T>, budget: Duration) -> Option<T> {
    let start = std::time::Instant::now();
    let mut stop_seen: Option<std::time::Instant> = None;
    loop {
        let now = std::time::Instant::now();
        if stop_seen.is_none() && STOPPING.load(Relaxed) {
            stop_seen = Some(now);
        }
        let end = match stop_seen {
            Some(t) => (start + budget).min(t + STOP_WAIT),
            None => start + budget,
        };
        if now >= end {
            return rx.try_recv().ok();
        }
        match rx.recv_timeout(WAIT_SLICE.min(end - now)) {
            Ok(v) => return Some(v),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
        }
    }
}

/// [`bounded`] for file access that returns `io::Result`: a stall is `TimedOut`.
pub fn bounded_io<T: Send + 'static>(
    dev: Option<u32>,
    what: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    bounded(dev, what, f).unwrap_or_else(|e| Err(io::Error::new(io::ErrorKind::TimedOut, e)))
}

thread_local! {
    /// The last bounded operation on this thread that was not done, and its file.
    static LAST_STALL: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// What went unread since the last call (`file: why`), for the record being judged.
pub fn take_stall() -> Option<String> {
    LAST_STALL.with(|s| s.borrow_mut().take())
}

fn note_stall(what: &Path, e: &Stalled) {
    let msg = format!("{}: {e}", crate::event::Bytes::from_path(what).display());
    LAST_STALL.with(|s| *s.borrow_mut() = Some(msg));
}

/// A stuck job came back: its filesystem is read again.
fn released(dev: Option<u32>, what: &Path) {
    let mut p = pool();
    p.stuck = p.stuck.saturating_sub(1);
    if let Some(d) = dev {
        if let Some(n) = p.stuck_devs.get_mut(&d) {
            *n -= 1;
            if *n == 0 {
                p.stuck_devs.remove(&d);
                eprintln!(
                    "snapmon: {} answered; its filesystem (dev {d:#x}) is read again",
                    crate::event::Bytes::from_path(what).display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_symlinks_and_dirs_are_refused_without_blocking() {
        let d = crate::testutil::TmpDir::new("fileread");
        let fifo = d.path("vm.qcow2");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No writer: a blocking open would hang here.
        assert!(matches!(open(&fifo), Err(OpenError::NotRegular("fifo"))));
        std::fs::write(d.path("real"), b"QFI\xfb").unwrap();
        std::os::unix::fs::symlink(d.path("real"), d.path("link")).unwrap();
        match open(&d.path("link")) {
            Err(OpenError::Symlink(to)) => assert!(to.ends_with("/real"), "{to}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            open(&d.0),
            Err(OpenError::NotRegular("directory"))
        ));
        assert!(open(&d.path("missing")).unwrap_err().is_not_found());
        assert_eq!(read_prefix(&d.path("real"), 2).unwrap(), b"QF");
        let f = open(&d.path("real")).unwrap();
        assert_eq!(read_at(&f, 2, 10).unwrap(), b"I\xfb");
    }
}

#[cfg(test)]
mod bounded_tests {
    //! The pool is process-wide: each test uses its own device numbers, and asserts on
    //! counter deltas only where no other test can move them.
    use super::*;
    use std::{sync::mpsc::channel, time::Instant};

    /// The stop flag and the budget are process-wide: these tests take turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[test]
    fn a_stuck_read_costs_one_budget_then_its_filesystem_fails_fast_until_it_answers() {
        let _turn = serial();
        let (release, gate) = channel::<()>();
        let t = Instant::now();
        let r = bounded(Some(0xfe01), Path::new("/nfs/vm.qcow2"), move || {
            let _ = gate.recv();
            7
        });
        let waited = t.elapsed();
        assert!(matches!(r, Err(Stalled::TimedOut(_))), "{r:?}");
        assert!(waited >= budget() && waited < budget() * 5, "{waited:?}");
        // The same filesystem: not tried, no wait.
        let t = Instant::now();
        let r = bounded(Some(0xfe01), Path::new("/nfs/b.qcow2"), || 1);
        assert!(matches!(r, Err(Stalled::Quarantined(_))), "{r:?}");
        assert!(t.elapsed() < Duration::from_millis(50));
        // Another filesystem is read as usual meanwhile.
        assert_eq!(bounded(Some(0xfe02), Path::new("/srv/a"), || 2), Ok(2));
        // The stuck read answers: its filesystem is read again.
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match bounded(Some(0xfe01), Path::new("/nfs/b.qcow2"), || 3) {
                Ok(v) => break assert_eq!(v, 3),
                Err(Stalled::Quarantined(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_stop_cuts_a_wait_on_a_slow_read_short() {
        let _turn = serial();
        let (tx, rx) = channel::<u8>();
        let (_keep, never) = channel::<()>();
        std::thread::spawn(move || {
            let _ = never.recv_timeout(Duration::from_secs(5));
            let _ = tx.send(1);
        });
        STOPPING.store(true, Relaxed);
        let t = Instant::now();
        let got = wait(&rx, Duration::from_secs(5));
        STOPPING.store(false, Relaxed);
        assert_eq!(got, None);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn results_come_back_in_order_and_panics_reach_the_caller() {
        let _turn = serial();
        for i in 0..50u32 {
            assert_eq!(
                bounded(Some(0xfe10), Path::new("x"), move || i * 2),
                Ok(i * 2)
            );
        }
        // A parser bug on the worker reaches the caller as the panic it is (or, when printing
        // its backtrace outlasts the budget, as a stall): never as a result.
        let r = std::panic::catch_unwind(|| {
            bounded(Some(0xfe11), Path::new("x"), || -> u8 {
                panic!("parser bug")
            })
        });
        assert!(matches!(r, Err(_) | Ok(Err(Stalled::TimedOut(_)))), "{r:?}");
        // Its filesystem is read again once the job is over.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool().stuck_devs.contains_key(&0xfe11) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // The pool still works after it.
        assert_eq!(bounded(Some(0xfe11), Path::new("x"), || 5), Ok(5));
    }
}
