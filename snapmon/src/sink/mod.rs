//! Sink stage: fan records out to outputs, each with its own format and filter, counting
//! what each received, wrote and dropped.
//!
//! [`SinkSet`] runs every configured sink on its own thread behind a bounded channel: `send`
//! never blocks (a full queue is a counted `queue_full` drop for that sink only), so a slow
//! or dead sink cannot stall the ring-buffer reader or the other sinks. [`Output`]
//! is the synchronous single-thread form for offline tools (`replay`).

pub mod chain;
pub mod config;
pub mod counters;
pub mod file;
pub mod fit;
pub mod identity;
pub mod json;
pub mod key;
pub mod nats;
pub mod net;
pub mod ocsf;
mod set;
pub mod spill;
mod stdout;
pub mod syslog;
pub mod tail;

pub use config::Format;
pub use counters::{Cause, SinkCounters};
pub use set::{SinkSet, SinkWriter};

use std::{
    io::{self, BufWriter, IsTerminal as _, Write},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{
    metrics::Registry,
    record::{MetricRecord, Record, Severity},
};

use config::{ConfigError, SinkConfig, SyslogTransport};

pub(crate) const RELAXED: Ordering = Ordering::Relaxed;

/// One record in a sink's format, without a trailing newline.
pub fn render(format: Format, r: &Record, host: &str, colour: bool) -> Vec<u8> {
    render_id(format, r, None, host, colour)
}

/// [`render`] with the record's id (ECS `event.id`, OCSF `metadata.uid`; tail shows none).
pub fn render_id(
    format: Format,
    r: &Record,
    id: Option<RecordId>,
    host: &str,
    colour: bool,
) -> Vec<u8> {
    match format {
        Format::Json => {
            let mut out = Vec::with_capacity(2048);
            json::write_record_id(&mut out, r, host, id.map(RecordId::text).as_deref());
            out
        }
        Format::Ocsf => {
            let mut v = ocsf::to_value(r, host);
            if let Some(id) = id {
                v["metadata"]["uid"] = json!(id.to_string());
            }
            serde_json::to_vec(&v).unwrap_or_default()
        }
        Format::Tail => tail::render(r, colour).unwrap_or_default().into_bytes(),
    }
}

/// A record's id: the same in every sink and in every re-send of the record, so a consumer
/// (or JetStream, through `Nats-Msg-Id`) can drop duplicates. `RUN-N`: RUN is 16 random hex
/// digits drawn when the agent starts, N counts the records it handed to its sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordId(pub u64);

impl RecordId {
    /// The next id of this run.
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        RecordId(NEXT.fetch_add(1, RELAXED))
    }
}

impl RecordId {
    /// As `to_string`, without the formatting machinery: every record's JSON carries one.
    pub fn text(self) -> String {
        let run = run_id();
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = self.0;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let mut s = String::with_capacity(run.len() + 1 + digits.len() - at);
        s.push_str(run);
        s.push('-');
        s.extend(digits[at..].iter().map(|&d| char::from(d)));
        s
    }
}

impl std::fmt::Display for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", run_id(), self.0)
    }
}

/// This run's random part of every record id.
pub fn run_id() -> &'static str {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let mut b = [0u8; 8];
        // SAFETY: fills the local buffer of the stated length.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n != b.len() as isize {
            // No entropy source: time and pid still differ between runs.
            let t = crate::clock::now_unix_ns() as u64 ^ ((std::process::id() as u64) << 40);
            b = t.to_be_bytes();
        }
        hex::encode(b)
    })
}

/// Which records an output takes.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub min_severity: Option<Severity>,
    pub alerts_only: bool,
    pub rules: Vec<String>,
    pub path_contains: Vec<String>,
}

impl Filter {
    /// What a configured sink takes.
    pub fn of(c: &SinkConfig) -> Filter {
        let o = c.options();
        Filter {
            min_severity: o.min_severity,
            alerts_only: o.alerts_only,
            rules: o.rules.clone(),
            path_contains: o.path_contains.clone(),
        }
    }

    pub fn accepts(&self, r: &Record) -> bool {
        match r {
            Record::Alert(a) => {
                self.min_severity.is_none_or(|m| a.severity >= m)
                    && (self.rules.is_empty() || self.rules.contains(&a.rule_id))
                    && self.path_ok(&a.event)
            }
            Record::Event(e) => {
                !self.alerts_only
                    && self.min_severity.is_none()
                    && self.rules.is_empty()
                    && self.path_ok(e)
            }
            Record::State(_) | Record::Metric(_) => true,
        }
    }
    fn path_ok(&self, e: &crate::event::Event) -> bool {
        if self.path_contains.is_empty() {
            return true;
        }
        let p = e
            .file
            .as_ref()
            .and_then(|f| f.path.as_ref())
            .map(|p| p.display())
            .unwrap_or_default();
        self.path_contains.iter().any(|x| p.contains(x.as_str()))
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SinkStats {
    pub received: u64,
    pub written: u64,
    pub filtered: u64,
    pub dropped: u64,
}

/// One synchronous output (offline tools such as `replay`; the agent uses [`SinkSet`]).
pub struct Output {
    pub format: Format,
    pub colour: bool,
    pub filter: Filter,
    pub writer: BufWriter<Box<dyn Write + Send>>,
    pub stats: SinkStats,
}

/// A write failed because the reader went away: stop quietly (ripgrep's rule).
#[derive(Debug, thiserror::Error)]
#[error("output closed")]
pub struct BrokenPipe;

impl Output {
    pub fn new(
        _name: impl Into<String>,
        format: Format,
        colour: bool,
        filter: Filter,
        w: Box<dyn Write + Send>,
    ) -> Self {
        Output {
            format,
            colour,
            filter,
            writer: BufWriter::new(w),
            stats: SinkStats::default(),
        }
    }

    pub fn emit(&mut self, r: &Record, host: &str) -> Result<(), BrokenPipe> {
        self.stats.received += 1;
        if !self.filter.accepts(r) {
            self.stats.filtered += 1;
            return Ok(());
        }
        let res = match self.format {
            Format::Json => json::write_line(&mut self.writer, r, host),
            Format::Tail => tail::write_line(&mut self.writer, r, self.colour),
            Format::Ocsf => {
                let mut b = render(Format::Ocsf, r, host, false);
                b.push(b'\n');
                self.writer.write_all(&b)
            }
        };
        self.account(res)
    }

    fn account(&mut self, res: io::Result<()>) -> Result<(), BrokenPipe> {
        match res {
            Ok(()) => {
                self.stats.written += 1;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(BrokenPipe),
            Err(_) => {
                self.stats.dropped += 1;
                Ok(())
            }
        }
    }

    pub fn flush(&mut self) -> Result<(), BrokenPipe> {
        match self.writer.flush() {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(BrokenPipe),
            _ => Ok(()),
        }
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Records for sink tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use crate::{
        classify::{Change, Classification},
        event::{Action, Ancestor, Bytes, Event, FileInfo, ProcessInfo, WriteInfo},
        record::{Alert, Record, Severity},
    };

    pub fn event(seq: u64) -> Event {
        Event {
            seq,
            ts_unix_ns: 1_795_887_000_123_000_000 + seq as i128 * 1_000_000,
            category: crate::event::Category::File,
            ecs_type: crate::event::EventType::Change,
            action: Action::Pwrite64,
            backend: snapmon_common::Backend::Tracepoint,
            process: ProcessInfo {
                pid: 4242,
                tid: 4242,
                ppid: 4000,
                uid: 0,
                ..ProcessInfo::with_names(crate::event::ProcessNames {
                    name: "python3".into(),
                    executable: Bytes(b"/usr/bin/python3.11".to_vec()),
                    args: vec![Bytes(b"python3".to_vec()), Bytes(b"-c".to_vec())],
                    entity_id: "ent-4242".into(),
                    parent: Some(Ancestor {
                        pid: 4000,
                        name: "bash".into(),
                        executable: "/usr/bin/bash".into(),
                        entity_id: "ent-4000".into(),
                    }),
                    ancestors: vec![
                        Ancestor {
                            pid: 4000,
                            name: "bash".into(),
                            ..Default::default()
                        },
                        Ancestor {
                            pid: 900,
                            name: "sshd".into(),
                            ..Default::default()
                        },
                    ]
                    .into(),
                    ..Default::default()
                })
            },
            file: Some(FileInfo {
                path: Some(Bytes(b"/var/lib/libvirt/images/vm1.qcow2".to_vec())),
                dev: (8 << 20) | 1,
                ino: 1234,
                size: Some(196_624),
            }),
            write: Some(WriteInfo {
                op: "pwrite64",
                offset: 60,
                length: 4,
                ..Default::default()
            }),
            classification: Some(Classification {
                format: crate::classify::Format::Qcow2,
                regions: vec!["header.nb_snapshots".into()],
                changes: vec![Change::new("nb_snapshots", "3", "0")],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn alert(seq: u64, sev: Severity) -> Record {
        Record::Alert(Box::new(Alert {
            rule_id: "SM001".into(),
            rule_name: "Snapshot table hidden".into(),
            severity: sev,
            technique: vec!["T1490".into()],
            message: "python3 (← bash ← sshd) set nb_snapshots 3→0 in vm1.qcow2".into(),
            event: event(seq),
            related_seq: vec![],
        }))
    }
}

#[cfg(test)]
mod schema_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::Event, record::Alert};

    #[test]
    fn record_id_text_is_its_display() {
        for n in [0, 1, 9, 10, 4242, 1 << 40, u64::MAX] {
            assert_eq!(RecordId(n).text(), RecordId(n).to_string());
        }
    }

    fn alert(sev: Severity) -> Record {
        Record::Alert(Box::new(Alert {
            rule_id: "SM001".into(),
            rule_name: "x".into(),
            severity: sev,
            technique: vec![],
            message: "m".into(),
            event: Event::default(),
            related_seq: vec![],
        }))
    }

    #[test]
    fn filters_by_severity_and_alerts_only() {
        let f = Filter {
            min_severity: Some(Severity::High),
            ..Default::default()
        };
        assert!(f.accepts(&alert(Severity::Critical)));
        assert!(!f.accepts(&alert(Severity::Medium)));
        assert!(!f.accepts(&Record::Event(Event::default())));
        let f = Filter {
            alerts_only: true,
            ..Default::default()
        };
        assert!(!f.accepts(&Record::Event(Event::default())));
        assert!(f.accepts(&alert(Severity::Info)));
    }

    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn broken_pipe_is_reported_for_a_quiet_exit() {
        let mut o = Output::new(
            "stdout",
            Format::Json,
            false,
            Filter::default(),
            Box::new(Closed),
        );
        // Buffered: the error surfaces at flush.
        assert!(o.emit(&Record::Event(Event::default()), "h").is_ok());
        assert!(o.flush().is_err());
    }

    /// A sink that blocks until released: stands in for a hung peer. Counts the writes it
    /// entered and the ones it finished.
    struct Stuck(Arc<std::sync::Barrier>, Arc<AtomicU64>, Arc<AtomicU64>);
    impl SinkWriter for Stuck {
        fn write(&mut self, _: &Record) {
            self.2.fetch_add(1, RELAXED);
            self.0.wait();
            self.1.fetch_add(1, RELAXED);
        }
        fn tick(&mut self) {}
        fn reopen(&mut self) {}
        fn close(&mut self) {}
    }

    /// Counts what reaches it, from its own thread.
    struct Counting(Arc<AtomicU64>, Arc<AtomicU64>);
    impl SinkWriter for Counting {
        fn write(&mut self, _: &Record) {
            self.0.fetch_add(1, RELAXED);
        }
        fn idle(&mut self) {
            self.1.fetch_add(1, RELAXED);
        }
        fn tick(&mut self) {}
        fn reopen(&mut self) {}
        fn close(&mut self) {}
    }

    #[test]
    fn a_batch_is_handed_over_once_when_it_ends_and_control_records_pass_a_full_queue() {
        let mut set = SinkSet::start(&[], "h".into()).unwrap();
        let (seen, wakes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let counters = Arc::new(SinkCounters::new(
            "count".into(),
            "test",
            Format::Json.as_str(),
        ));
        set.add_writer(
            Box::new(Counting(seen.clone(), wakes.clone())),
            Filter::default(),
            counters.clone(),
            150,
        )
        .unwrap();
        let wait_for = |n: u64| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while seen.load(RELAXED) < n {
                assert!(Instant::now() < deadline, "{} of {n}", seen.load(RELAXED));
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        set.batch(|| {
            for i in 0..100 {
                set.send_owned(Record::Event(fixtures::event(i))).unwrap();
            }
            // Held back until the batch ends.
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(seen.load(RELAXED), 0);
        });
        wait_for(100);
        assert_eq!(wakes.load(RELAXED), 1, "one wake-up for the whole batch");
        // The bound counts records: 150 fit, the rest of a burst is dropped and counted …
        set.batch(|| {
            for i in 0..200 {
                set.send(&Record::Event(fixtures::event(i))).unwrap();
            }
            // … but the record that reports the loss is not.
            let lost = set.loss_record().expect("loss record");
            assert_eq!(lost_count(&lost), 50);
            set.send_owned(lost).unwrap();
        });
        wait_for(100 + 151);
        assert_eq!(counters.dropped(Cause::QueueFull), 50);
        set.shutdown(Duration::from_secs(5));
        assert_eq!(
            counters.written.load(RELAXED),
            0,
            "the test writer does not count"
        );
        assert_eq!(seen.load(RELAXED), 251);
    }

    fn lost_count(r: &Record) -> u64 {
        match r {
            Record::Metric(m) => m.detail["sinks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["sink"] == "count" && d["cause"] == "queue_full")
                .filter_map(|d| d["count"].as_u64())
                .sum(),
            _ => 0,
        }
    }

    #[test]
    fn a_hung_sink_neither_blocks_send_nor_the_other_sinks() {
        let dir = crate::testutil::TmpDir::new("set");
        let path = dir.join("out.jsonl");
        let c = SinkConfig::parse_spec(&format!(
            "file:{},flush=record,chain=false,queue=100000",
            path.display()
        ))
        .unwrap();
        let mut set = SinkSet::start(&[c], "h".into()).unwrap();
        // Add a hung sink with a queue of 4 beside the file sink.
        let gate = Arc::new(std::sync::Barrier::new(2));
        let done = Arc::new(AtomicU64::new(0));
        let entered = Arc::new(AtomicU64::new(0));
        let counters = Arc::new(SinkCounters::new(
            "stuck".into(),
            "test",
            Format::Json.as_str(),
        ));
        set.add_writer(
            Box::new(Stuck(gate.clone(), done.clone(), entered.clone())),
            Filter::default(),
            counters.clone(),
            4,
        )
        .unwrap();
        // The first record hangs the sink thread in write; wait for that so the queue count
        // below does not depend on when a loaded machine schedules that thread.
        set.send(&Record::Event(fixtures::event(0))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while entered.load(RELAXED) == 0 {
            assert!(Instant::now() < deadline, "the sink thread never wrote");
            std::thread::sleep(Duration::from_millis(1));
        }
        let t0 = Instant::now();
        for i in 1..1000 {
            set.send(&Record::Event(fixtures::event(i))).unwrap();
        }
        assert!(t0.elapsed() < Duration::from_secs(2), "send blocked");
        // The hung sink holds one record in write, four in its queue, and dropped the rest.
        let drops = set.take_drops();
        let stuck: u64 = drops
            .iter()
            .filter(|d| d.0 == "stuck" && d.1 == "queue_full")
            .map(|d| d.2)
            .sum();
        assert_eq!(stuck, 995, "{drops:?}");
        assert!(set.take_drops().is_empty(), "deltas are reported once");
        // The file sink got everything meanwhile.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&path).unwrap().lines().count() < 1000 {
            assert!(Instant::now() < deadline, "file sink starved");
            std::thread::sleep(Duration::from_millis(10));
        }
        for i in 0..10 {
            set.send(&Record::Event(fixtures::event(1000 + i))).unwrap();
        }
        let Some(Record::Metric(m)) = set.loss_record() else {
            panic!("no loss record")
        };
        assert_eq!(m.action, "lost");
        assert_eq!(
            m.detail["sinks"],
            json!([{"sink": "stuck", "cause": "queue_full", "count": 10}]),
            "{}",
            m.detail
        );
        assert!(set.loss_record().is_none());
        // Release the hung sink so shutdown can finish; it must not wait past its timeout.
        std::thread::spawn(move || loop {
            gate.wait();
        });
        set.shutdown(Duration::from_secs(5));
        assert_eq!(counters.written.load(RELAXED), 0);
        assert!(done.load(RELAXED) >= 1);
        let st = set.stats();
        assert_eq!(st[format!("file:{}", path.display())]["written"], 1010);
    }
}
