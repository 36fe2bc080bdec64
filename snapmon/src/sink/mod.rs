//! Sink stage: fan records out to outputs, each with its own format and filter, counting
//! what each received, wrote and dropped.
//!
//! [`SinkSet`] runs every configured sink on its own thread behind a bounded channel: `send`
//! never blocks (a full queue is a counted `queue_full` drop for that sink only), so a slow
//! or dead sink cannot stall the ring-buffer reader or the other sinks. [`Sinks`]/[`Output`]
//! are the synchronous single-thread form for offline tools.

pub mod chain;
pub mod config;
pub mod file;
pub mod json;
pub mod net;
pub mod ocsf;
mod set;
pub mod spill;
mod stdout;
pub mod syslog;
pub mod tail;

pub use set::{Cause, SinkCounters, SinkSet, SinkWriter, StartError};

use std::{
    io::{self, BufWriter, IsTerminal as _, Write},
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
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

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON Lines, ECS field names.
    Json,
    /// Human lines.
    Tail,
    /// JSON Lines, OCSF 1.1 (File System Activity and friends).
    Ocsf,
}

/// One record in a sink's format, without a trailing newline.
pub fn render(format: Format, r: &Record, host: &str, colour: bool) -> Vec<u8> {
    match format {
        Format::Json => serde_json::to_vec(&json::to_value(r, host)).unwrap_or_default(),
        Format::Ocsf => serde_json::to_vec(&ocsf::to_value(r, host)).unwrap_or_default(),
        Format::Tail => tail::render(r, colour).unwrap_or_default().into_bytes(),
    }
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
    pub fn accepts(&self, r: &Record) -> bool {
        match r {
            Record::Alert(a) => {
                self.min_severity.is_none_or(|m| a.severity >= m)
                    && (self.rules.is_empty() || self.rules.iter().any(|x| *x == a.rule_id))
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

pub struct Output {
    pub name: String,
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
        name: impl Into<String>,
        format: Format,
        colour: bool,
        filter: Filter,
        w: Box<dyn Write + Send>,
    ) -> Self {
        Output {
            name: name.into(),
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

pub struct Sinks {
    pub outputs: Vec<Output>,
    pub host: String,
}

impl Sinks {
    pub fn emit(&mut self, r: &Record) -> Result<(), BrokenPipe> {
        for o in &mut self.outputs {
            o.emit(r, &self.host)?;
        }
        Ok(())
    }
    pub fn flush(&mut self) -> Result<(), BrokenPipe> {
        for o in &mut self.outputs {
            o.flush()?;
        }
        Ok(())
    }
    pub fn stats(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.outputs
                .iter()
                .map(|o| {
                    (
                        o.name.clone(),
                        serde_json::to_value(&o.stats).unwrap_or_default(),
                    )
                })
                .collect(),
        )
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::Event, record::Alert};

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
}
