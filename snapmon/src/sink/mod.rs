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

mod filter;
mod output;
mod render;
mod writer;

pub use config::Format;
pub use counters::{Cause, SinkCounters};
pub use filter::Filter;
pub use identity::hostname;
pub use output::{BrokenPipe, Output, SinkStats};
pub use render::{render, render_id, run_id, RecordId};
pub use set::SinkSet;
pub use writer::SinkWriter;

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
                op: crate::event::WriteOp::Pwrite64,
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
    use std::{
        io::{self, Write},
        sync::{atomic::AtomicU64, Arc},
        time::{Duration, Instant},
    };

    use serde_json::json;

    use super::{config::SinkConfig, counters::RELAXED, *};
    use crate::{
        event::Event,
        record::{Alert, Record, Severity},
    };

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
