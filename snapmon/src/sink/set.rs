//! The running set of sinks: one thread per sink fed by a bounded channel, per-sink
//! counters, reopen requests, loss deltas for `lost` records, and a bounded shutdown.

use std::{
    io::{self, IsTerminal as _},
    sync::{
        atomic::AtomicBool,
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::json;

use super::{
    config::{self, ConfigError, Format, SinkConfig, SyslogTransport},
    counters::{Cause, SinkCounters, RELAXED},
    file,
    filter::Filter,
    nats, net,
    output::BrokenPipe,
    render::{render_id, RecordId},
    stdout, syslog,
    writer::SinkWriter,
};
use crate::{
    metrics::Registry,
    record::{MetricRecord, Record},
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("sink {sink}: {source}")]
    Open { sink: String, source: io::Error },
}

/// Records go to a sink's thread in batches: one wake-up and one flush per batch, not per
/// record.
type Batch = Vec<(RecordId, Arc<Record>)>;

/// Records held back while a batch is open (`SinkSet::batch`) before the hand-off.
const BATCH_MAX: usize = 256;

struct Handle {
    /// Unbounded in batches; `queued` against `limit` bounds it in records.
    tx: Option<Sender<Batch>>,
    /// Alerts: read by the sink's thread before anything else queued, so a flood of events
    /// ahead of an alert does not delay it (`worker`).
    urgent: Option<Sender<Batch>>,
    limit: usize,
    pending: Mutex<Batch>,
    filter: Filter,
    counters: Arc<SinkCounters>,
    reopen: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Disconnected when the sink's thread ends (its sender is dropped, on panic too):
    /// shutdown waits on it, woken at once, instead of polling `is_finished`.
    done: Receiver<()>,
}

/// All configured sinks, each on its own thread.
pub struct SinkSet {
    sinks: Vec<Handle>,
    registry: Arc<Registry>,
    /// Drop counts already reported by `take_drops`.
    reported: Mutex<Vec<[u64; Cause::ALL.len()]>>,
    /// Inside `batch`: hold records until it ends (or `BATCH_MAX` are pending).
    batching: AtomicBool,
    /// What earlier runs left in the file sinks' files (`previous_run` of `started`).
    previous_runs: Vec<serde_json::Value>,
    /// A stdout sink is configured: its reader going away ends the agent.
    writes_stdout: bool,
}

const TICK: Duration = Duration::from_millis(100);

/// Write one batch; alerts handed over meanwhile go first, before each of its records.
fn write_batch(
    w: &mut Box<dyn SinkWriter>,
    c: &SinkCounters,
    b: Batch,
    urgent: &Receiver<Batch>,
) -> u64 {
    let mut n = write_urgent(w, c, urgent);
    c.queued.fetch_sub(b.len() as i64, RELAXED);
    n += b.len() as u64;
    for (id, r) in b {
        n += write_urgent(w, c, urgent);
        w.write_id(id, &r);
    }
    n
}

/// Write every alert queued on the urgent channel.
fn write_urgent(w: &mut Box<dyn SinkWriter>, c: &SinkCounters, urgent: &Receiver<Batch>) -> u64 {
    let mut n = 0;
    while let Ok(b) = urgent.try_recv() {
        c.queued.fetch_sub(b.len() as i64, RELAXED);
        n += b.len() as u64;
        for (id, r) in b {
            w.write_id(id, &r);
        }
    }
    n
}

fn worker(
    mut w: Box<dyn SinkWriter>,
    rx: Receiver<Batch>,
    urgent: Receiver<Batch>,
    reopen: Arc<AtomicBool>,
    c: Arc<SinkCounters>,
) {
    let mut last_tick = Instant::now();
    let write = |w: &mut Box<dyn SinkWriter>, b: Batch| write_batch(w, &c, b, &urgent);
    loop {
        let wait = if w.backlog() {
            Duration::from_millis(1)
        } else {
            TICK
        };
        match rx.recv_timeout(wait) {
            Ok(b) => {
                let mut n = write(&mut w, b);
                // Take what else is already queued, then flush once.
                for _ in 0..64 {
                    match rx.try_recv() {
                        Ok(b) => n += write(&mut w, b),
                        Err(_) => break,
                    }
                }
                w.idle();
                c.settled.fetch_add(n, RELAXED);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let n = write_urgent(&mut w, &c, &urgent);
                c.settled.fetch_add(n, RELAXED);
                break;
            }
        }
        if reopen.swap(false, RELAXED) {
            w.reopen();
        }
        if last_tick.elapsed() >= TICK || w.backlog() {
            w.tick();
            last_tick = Instant::now();
        }
    }
    w.close();
}

impl SinkSet {
    /// Open every sink (errors name the sink) and start its thread.
    pub fn start(configs: &[SinkConfig], host: String) -> Result<SinkSet, StartError> {
        Self::start_with(configs, host, Arc::new(Registry::default()))
    }

    /// As `start`, counting into a registry the agent (and `--metrics`) shares.
    pub fn start_with(
        configs: &[SinkConfig],
        host: String,
        registry: Arc<Registry>,
    ) -> Result<SinkSet, StartError> {
        config::validate_all(configs)?;
        let mut set = SinkSet {
            sinks: Vec::new(),
            registry: registry.clone(),
            reported: Mutex::new(Vec::new()),
            batching: AtomicBool::new(false),
            previous_runs: Vec::new(),
            writes_stdout: configs.iter().any(|c| matches!(c, SinkConfig::Stdout(_))),
        };
        for c in configs {
            let name = c.name();
            let o = c.options();
            let stdout_tty = matches!(c, SinkConfig::Stdout(_)) && io::stdout().is_terminal();
            let format = o.format.unwrap_or(if stdout_tty {
                Format::Tail
            } else {
                Format::Json
            });
            let counters = Arc::new(SinkCounters::new(name.clone(), c.kind(), format.as_str()));
            let open_err = |source: io::Error| StartError::Open {
                sink: name.clone(),
                source,
            };
            let writer: Box<dyn SinkWriter> = match c {
                SinkConfig::Stdout(_) => Box::new(stdout::StdoutSink::new(
                    format,
                    o.colour.unwrap_or(stdout_tty),
                    stdout_tty,
                    host.clone(),
                    registry.clone(),
                    counters.clone(),
                )),
                SinkConfig::File(_) => {
                    let f = file::FileSink::open(c, format, host.clone(), counters.clone())
                        .map_err(open_err)?;
                    if let Some(mut p) = f.previous_run() {
                        p["sink"] = json!(name);
                        set.previous_runs.push(p);
                    }
                    Box::new(f)
                }
                SinkConfig::Unix(_) | SinkConfig::Tcp(_) => {
                    let addr = o.address.clone().unwrap_or_default();
                    let ep = match c {
                        SinkConfig::Unix(_) => net::Endpoint::Unix(addr.into()),
                        _ => net::Endpoint::Tcp(addr),
                    };
                    let h = host.clone();
                    Box::new(
                        net::NetSink::new(
                            c,
                            ep,
                            net::Framing::Newline,
                            Box::new(move |id, r| render_id(format, r, Some(id), &h, false)),
                            counters.clone(),
                        )
                        .map_err(open_err)?,
                    )
                }
                SinkConfig::Syslog(_) => {
                    let t = o.transport.unwrap_or_default();
                    let f = syslog::Formatter {
                        facility: o
                            .facility
                            .as_deref()
                            .and_then(config::facility_code)
                            .unwrap_or(16),
                        host: host.clone(),
                        app: o.app_name.clone().unwrap_or_else(|| "snapmon".into()),
                        format,
                        pid: std::process::id(),
                        protocol: o.protocol.unwrap_or(if t == SyslogTransport::Unix {
                            config::SyslogProtocol::Rfc3164
                        } else {
                            config::SyslogProtocol::Rfc5424
                        }),
                        max: c.max_message(),
                    };
                    let addr = o.address.clone().unwrap_or_else(|| "/dev/log".into());
                    if t == SyslogTransport::Tcp {
                        Box::new(
                            net::NetSink::new(
                                c,
                                net::Endpoint::Tcp(addr),
                                net::Framing::OctetCount,
                                Box::new(move |id, r| f.message(id, r)),
                                counters.clone(),
                            )
                            .map_err(open_err)?,
                        )
                    } else {
                        let (d, r) = syslog::DatagramSink::new(t, addr, f, counters.clone());
                        if let Err(e) = r {
                            match c.on_unreachable() {
                                config::Unreachable::Fail => {
                                    return Err(open_err(io::Error::new(
                                        e.kind(),
                                        format!(
                                            "cannot reach {}: {e} (on_unreachable = \"warn\" starts anyway)",
                                            d.target()
                                        ),
                                    )))
                                }
                                config::Unreachable::Warn => eprintln!(
                                    "snapmon: WARNING: sink {name}: cannot reach {}: {e}; its records are dropped and counted until it can (snapmon_sink_up 0)",
                                    d.target()
                                ),
                            }
                        }
                        Box::new(d)
                    }
                }
                SinkConfig::Nats(_) => Box::new(
                    nats::NatsSink::new(c, format, host.clone(), counters.clone())
                        .map_err(open_err)?,
                ),
            };
            set.add_writer(writer, Filter::of(c), counters, c.queue())
                .map_err(open_err)?;
        }
        Ok(set)
    }

    /// Run one more sink on its own thread (any `SinkWriter`).
    pub fn add_writer(
        &mut self,
        writer: Box<dyn SinkWriter>,
        filter: Filter,
        counters: Arc<SinkCounters>,
        queue: usize,
    ) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        let (urgent_tx, urgent_rx) = mpsc::channel();
        let reopen = Arc::new(AtomicBool::new(false));
        let (r2, c2) = (reopen.clone(), counters.clone());
        let (done_tx, done) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("sink {}", counters.kind))
            .spawn(move || {
                let _done = done_tx;
                worker(writer, rx, urgent_rx, r2, c2)
            })?;
        self.registry.register_sink(counters.clone());
        self.sinks.push(Handle {
            tx: Some(tx),
            urgent: Some(urgent_tx),
            limit: queue.max(1),
            pending: Mutex::new(Vec::new()),
            filter,
            counters,
            reopen,
            thread: Some(thread),
            done,
        });
        if let Ok(mut r) = self.reported.lock() {
            r.push([0; Cause::ALL.len()]);
        }
        Ok(())
    }

    /// Whether stdout is one of the sinks (so a closed stdout means "exit").
    pub fn writes_stdout(&self) -> bool {
        self.writes_stdout
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// How the previous run ended, from the files it left (`started.previous_run`):
    /// `clean` is false when any file sink found its file not closed (the run was killed or
    /// crashed); `logs` has one entry per file sink that continued a file. Null when no file
    /// sink found an earlier file.
    pub fn previous_run(&self) -> serde_json::Value {
        if self.previous_runs.is_empty() {
            return serde_json::Value::Null;
        }
        let clean = self.previous_runs.iter().all(|p| p["clean"] == true);
        json!({"clean": clean, "logs": self.previous_runs})
    }

    /// Hand a record to every sink whose filter takes it. Never blocks. `Err` only when
    /// stdout's reader has gone away (`snapmon run | head`): time to exit quietly.
    pub fn send(&self, r: &Record) -> Result<(), BrokenPipe> {
        let mut shared: Option<Arc<Record>> = None;
        self.offer(r, &mut || {
            shared.get_or_insert_with(|| Arc::new(r.clone())).clone()
        })
    }

    /// As `send`, without copying the record.
    pub fn send_owned(&self, r: Record) -> Result<(), BrokenPipe> {
        let a = Arc::new(r);
        self.offer(&a, &mut || a.clone())
    }

    /// `share` gives the queued copy, made only if some sink takes the record.
    fn offer(&self, r: &Record, share: &mut dyn FnMut() -> Arc<Record>) -> Result<(), BrokenPipe> {
        self.registry.observe(r);
        // State and metric records (`lost`, `stats`, `stopped`) are few and say what was
        // lost: they are never the ones a full queue drops.
        let control = matches!(r, Record::State(_) | Record::Metric(_));
        // Alerts skip the queue, and have a reserve of their own the size of the queue: a
        // flood of events can neither delay nor crowd out the alert behind it.
        let alert = matches!(r, Record::Alert(_));
        let mut closed = false;
        let batching = self.batching.load(RELAXED);
        // One id for every sink's copy.
        let id = RecordId::next();
        for h in &self.sinks {
            let c = &h.counters;
            c.received.fetch_add(1, RELAXED);
            closed |= c.closed.load(RELAXED);
            if !h.filter.accepts(r) {
                c.filtered.fetch_add(1, RELAXED);
                continue;
            }
            if h.tx.is_none() {
                c.lose(Cause::SinkDead, 1);
                continue;
            }
            let limit = if alert { 2 * h.limit } else { h.limit };
            if !control && c.queued.load(RELAXED) >= limit as i64 {
                c.lose(Cause::QueueFull, 1);
                continue;
            }
            let rec = share();
            c.queued.fetch_add(1, RELAXED);
            if alert {
                hand_off_urgent(h, (id, rec));
                continue;
            }
            let Ok(mut p) = h.pending.lock() else {
                c.queued.fetch_sub(1, RELAXED);
                c.lose(Cause::SinkDead, 1);
                continue;
            };
            p.push((id, rec));
            if !batching || p.len() >= BATCH_MAX {
                hand_off(h, &mut p);
            }
        }
        if closed {
            Err(BrokenPipe)
        } else {
            Ok(())
        }
    }

    /// Run `f` with records held back and handed to each sink's thread in one batch when it
    /// returns: the agent wraps each ring-buffer drain in it.
    pub fn batch<R>(&self, f: impl FnOnce() -> R) -> R {
        let was = self.batching.swap(true, RELAXED);
        let r = f();
        if !was {
            self.batching.store(false, RELAXED);
            self.hand_off_pending();
        }
        r
    }

    /// Hand over what is pending now (inside `batch`: without ending the batch).
    pub fn hand_off_pending(&self) {
        for h in &self.sinks {
            if let Ok(mut p) = h.pending.lock() {
                hand_off(h, &mut p);
            }
        }
    }

    /// Hand over what is pending and wait (at most `timeout`) until every live sink has
    /// written and flushed (by its flush policy) all it was handed: the `started` record is
    /// in the log before the agent tells systemd it is ready. False on timeout.
    pub fn settle(&self, timeout: Duration) -> bool {
        self.hand_off_pending();
        let deadline = Instant::now() + timeout;
        let targets: Vec<u64> = self
            .sinks
            .iter()
            .map(|h| h.counters.handed.load(RELAXED))
            .collect();
        loop {
            let behind = self.sinks.iter().zip(&targets).any(|(h, t)| {
                let alive = h.thread.as_ref().is_some_and(|t| !t.is_finished());
                alive && h.counters.settled.load(RELAXED) < *t
            });
            if !behind {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Ask every sink to reopen its file or reconnect (on SIGHUP/SIGUSR1).
    pub fn reopen(&self) {
        for h in &self.sinks {
            h.reopen.store(true, RELAXED);
        }
    }

    /// Drops since the last call, per sink and cause (non-zero only).
    pub fn take_drops(&self) -> Vec<(String, &'static str, u64)> {
        let mut out = Vec::new();
        let Ok(mut rep) = self.reported.lock() else {
            return out;
        };
        for (h, last) in self.sinks.iter().zip(rep.iter_mut()) {
            for c in Cause::ALL {
                let now = h.counters.dropped(c);
                let d = now.saturating_sub(last[c as usize]);
                if d > 0 {
                    out.push((h.counters.name.clone(), c.as_str(), d));
                    last[c as usize] = now;
                }
            }
        }
        out
    }

    /// A `lost` metric record for the sink drops since the last call, if any.
    pub fn loss_record(&self) -> Option<Record> {
        let drops = self.take_drops();
        if drops.is_empty() {
            return None;
        }
        // One entry per sink and cause: a sink name is data, not an object key.
        let sinks: Vec<_> = drops
            .into_iter()
            .map(|(sink, cause, n)| json!({"sink": sink, "cause": cause, "count": n}))
            .collect();
        Some(Record::Metric(MetricRecord {
            action: "lost",
            detail: json!({ "sinks": sinks }),
        }))
    }

    pub fn stats(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.sinks
                .iter()
                .map(|h| (h.counters.name.clone(), h.counters.to_json()))
                .collect(),
        )
    }

    /// Close the queues, let every sink drain and flush, waiting at most `timeout` in all.
    /// What is still queued after that is counted as `shutdown` drops.
    pub fn shutdown(&mut self, timeout: Duration) {
        self.hand_off_pending();
        for h in &mut self.sinks {
            h.tx = None;
            h.urgent = None;
        }
        let deadline = Instant::now() + timeout;
        for h in &mut self.sinks {
            let Some(t) = h.thread.take() else { continue };
            // Nothing is ever sent: this returns when the thread's closure has ended (its
            // sender dropped, on panic too) or at the deadline. A 5 ms polling sleep here was
            // most of an idle agent's exit once the hooks were released in the background.
            let left = deadline.saturating_duration_since(Instant::now());
            match h.done.recv_timeout(left) {
                // Done but for the thread's own teardown: the join is immediate.
                Err(RecvTimeoutError::Disconnected) | Ok(()) => {
                    let _ = t.join();
                }
                Err(RecvTimeoutError::Timeout) => {
                    let left = h.counters.queued.load(RELAXED).max(0) as u64;
                    h.counters.lose(Cause::Shutdown, left);
                    h.counters.set_state("abandoned at shutdown");
                }
            }
        }
    }
}

/// Hand an alert to its sink's thread at once, and wake the thread if it waits for events.
fn hand_off_urgent(h: &Handle, item: (RecordId, Arc<Record>)) {
    let sent = h
        .urgent
        .as_ref()
        .is_some_and(|tx| tx.send(vec![item]).is_ok());
    if sent {
        h.counters.handed.fetch_add(1, RELAXED);
        if let Some(tx) = &h.tx {
            let _ = tx.send(Vec::new());
        }
    } else {
        h.counters.queued.fetch_sub(1, RELAXED);
        h.counters.lose(Cause::SinkDead, 1);
    }
}

/// Move a sink's pending records to its thread.
fn hand_off(h: &Handle, p: &mut Batch) {
    if p.is_empty() {
        return;
    }
    let b = std::mem::take(p);
    let n = b.len();
    let sent = h.tx.as_ref().is_some_and(|tx| tx.send(b).is_ok());
    if sent {
        h.counters.handed.fetch_add(n as u64, RELAXED);
    } else {
        h.counters.queued.fetch_sub(n as i64, RELAXED);
        h.counters.lose(Cause::SinkDead, n as u64);
    }
}

impl Drop for SinkSet {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::record::Severity;
    use crate::sink::fixtures;

    /// A writer that takes its time, counting what it has written.
    struct Slow(Arc<AtomicU64>);
    impl SinkWriter for Slow {
        fn write(&mut self, _: &Record) {
            std::thread::sleep(Duration::from_millis(50));
            self.0.fetch_add(1, RELAXED);
        }
        fn tick(&mut self) {}
        fn reopen(&mut self) {}
        fn close(&mut self) {}
    }

    #[test]
    fn settle_returns_once_everything_handed_over_is_written() {
        let written = Arc::new(AtomicU64::new(0));
        let mut set = SinkSet::start(&[], "h".into()).unwrap();
        let c = Arc::new(SinkCounters::new(
            "slow".into(),
            "test",
            Format::Json.as_str(),
        ));
        set.add_writer(Box::new(Slow(written.clone())), Filter::default(), c, 100)
            .unwrap();
        for i in 0..3 {
            set.send_owned(Record::Event(fixtures::event(i))).unwrap();
        }
        assert!(set.settle(Duration::from_secs(5)));
        assert_eq!(
            written.load(RELAXED),
            3,
            "settle returned before the writes"
        );
        // Nothing new: at once.
        let t0 = Instant::now();
        assert!(set.settle(Duration::from_secs(5)));
        assert!(t0.elapsed() < Duration::from_secs(1));
        set.shutdown(Duration::from_secs(1));
    }

    /// Records in the order a writer got them: `true` for an alert.
    struct Order(Arc<Mutex<Vec<bool>>>);
    impl SinkWriter for Order {
        fn write(&mut self, r: &Record) {
            std::thread::sleep(Duration::from_millis(2));
            self.0.lock().unwrap().push(matches!(r, Record::Alert(_)));
        }
        fn tick(&mut self) {}
        fn reopen(&mut self) {}
        fn close(&mut self) {}
    }

    #[test]
    fn an_alert_jumps_the_events_queued_ahead_and_a_full_queue() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut set = SinkSet::start(&[], "h".into()).unwrap();
        let c = Arc::new(SinkCounters::new("o".into(), "test", Format::Json.as_str()));
        set.add_writer(
            Box::new(Order(order.clone())),
            Filter::default(),
            c.clone(),
            200,
        )
        .unwrap();
        // A flood fills the queue (200) and overflows it; the alert comes last.
        for i in 0..300 {
            set.send_owned(Record::Event(fixtures::event(i))).unwrap();
        }
        set.send_owned(fixtures::alert(300, Severity::High))
            .unwrap();
        assert!(set.settle(Duration::from_secs(10)));
        set.shutdown(Duration::from_secs(1));
        let order = order.lock().unwrap();
        assert_eq!(
            order.iter().filter(|&&a| a).count(),
            1,
            "the alert was dropped"
        );
        let at = order.iter().position(|&a| a).unwrap();
        // Written within a few records of being sent (the writer was ~0.4 s behind), not
        // after the 200 queued events.
        assert!(at < 20, "the alert was written {at}th of {}", order.len());
        assert!(
            c.dropped(Cause::QueueFull) >= 90,
            "the events beyond the queue were not dropped"
        );
    }

    fn slow_set(written: &Arc<AtomicU64>) -> (SinkSet, Arc<SinkCounters>) {
        let mut set = SinkSet::start(&[], "h".into()).unwrap();
        let c = Arc::new(SinkCounters::new(
            "slow".into(),
            "test",
            Format::Json.as_str(),
        ));
        set.add_writer(
            Box::new(Slow(written.clone())),
            Filter::default(),
            c.clone(),
            100,
        )
        .unwrap();
        (set, c)
    }

    #[test]
    fn shutdown_writes_everything_handed_over_before_it_returns() {
        let written = Arc::new(AtomicU64::new(0));
        let (mut set, c) = slow_set(&written);
        // Queued behind 200 ms of writes when shutdown begins.
        for i in 0..4 {
            set.send_owned(Record::Event(fixtures::event(i))).unwrap();
        }
        set.shutdown(Duration::from_secs(5));
        assert_eq!(written.load(RELAXED), 4);
        assert_eq!(c.dropped(Cause::Shutdown), 0);
    }

    #[test]
    fn shutdown_gives_up_on_a_stuck_sink_at_its_deadline() {
        let written = Arc::new(AtomicU64::new(0));
        let (mut set, c) = slow_set(&written);
        for i in 0..40 {
            set.send_owned(Record::Event(fixtures::event(i))).unwrap();
        }
        // 40 writes take 2 s; a functional bound, not a performance target.
        let t0 = Instant::now();
        set.shutdown(Duration::from_millis(100));
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        assert!(
            c.dropped(Cause::Shutdown) > 0,
            "the abandoned records not counted"
        );
    }
}
