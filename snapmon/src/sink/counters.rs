//! Per-sink counters and loss causes: written by the sink threads, read by the metrics
//! endpoint and the status records. A leaf, so metrics reads them without importing sinks.

use std::sync::{
    atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed},
    Mutex,
};

use serde_json::json;

pub(crate) const RELAXED: std::sync::atomic::Ordering = Relaxed;

/// Why a sink lost a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The sink's queue was full (the sink is slower than the event rate).
    QueueFull,
    /// The write failed (I/O error, permission, datagram refused).
    WriteError,
    /// The write failed for want of space (ENOSPC, EDQUOT).
    NoSpace,
    /// The peer was down and the spill reached its bound.
    SpillFull,
    /// The spill itself failed (disk error).
    SpillError,
    /// Still queued or spilled in memory when the agent stopped.
    Shutdown,
    /// The sink thread is gone.
    SinkDead,
}

impl Cause {
    pub const ALL: [Cause; 7] = [
        Cause::QueueFull,
        Cause::WriteError,
        Cause::NoSpace,
        Cause::SpillFull,
        Cause::SpillError,
        Cause::Shutdown,
        Cause::SinkDead,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::QueueFull => "queue_full",
            Cause::WriteError => "write_error",
            Cause::NoSpace => "no_space",
            Cause::SpillFull => "spill_full",
            Cause::SpillError => "spill_error",
            Cause::Shutdown => "shutdown",
            Cause::SinkDead => "sink_dead",
        }
    }
}

/// What one sink did, shared between its thread, the set and the metrics endpoint.
#[derive(Debug, Default)]
pub struct SinkCounters {
    pub name: String,
    pub kind: &'static str,
    pub format: String,
    /// Offered to the sink (accepted or filtered).
    pub received: AtomicU64,
    pub filtered: AtomicU64,
    pub written: AtomicU64,
    pub rotations: AtomicU64,
    pub disconnects: AtomicU64,
    pub spill_bytes: AtomicU64,
    pub(super) dropped: [AtomicU64; Cause::ALL.len()],
    /// Records in the channel right now.
    pub(super) queued: AtomicI64,
    /// Records handed to the thread, and those it has written and flushed by policy since
    /// (`SinkSet::settle` waits for the second to catch up).
    pub(super) handed: AtomicU64,
    pub(super) settled: AtomicU64,
    /// stdout's reader went away.
    pub closed: AtomicBool,
    pub(super) state: Mutex<String>,
}

impl SinkCounters {
    pub fn new(name: String, kind: &'static str, format: &str) -> Self {
        SinkCounters {
            name,
            kind,
            format: format.to_string(),
            state: Mutex::new("starting".into()),
            ..Default::default()
        }
    }
    pub fn lose(&self, c: Cause, n: u64) {
        self.dropped[c as usize].fetch_add(n, Relaxed);
    }
    pub fn dropped(&self, c: Cause) -> u64 {
        self.dropped[c as usize].load(Relaxed)
    }
    pub fn dropped_total(&self) -> u64 {
        Cause::ALL.iter().map(|c| self.dropped(*c)).sum()
    }
    pub fn set_state(&self, s: &str) {
        if let Ok(mut g) = self.state.lock() {
            if *g != s {
                *g = s.to_string();
            }
        }
    }
    pub fn state(&self) -> String {
        self.state.lock().map(|g| g.clone()).unwrap_or_default()
    }
    pub fn to_json(&self) -> serde_json::Value {
        let dropped: serde_json::Map<_, _> = Cause::ALL
            .iter()
            .filter(|c| self.dropped(**c) > 0)
            .map(|c| (c.as_str().to_string(), json!(self.dropped(*c))))
            .collect();
        json!({
            "type": self.kind,
            "format": self.format,
            "state": self.state(),
            "received": self.received.load(Relaxed),
            "filtered": self.filtered.load(Relaxed),
            "written": self.written.load(Relaxed),
            "dropped": self.dropped_total(),
            "dropped_by_cause": dropped,
            "queued": self.queued.load(Relaxed).max(0),
            "spill_bytes": self.spill_bytes.load(Relaxed),
            "rotations": self.rotations.load(Relaxed),
            "disconnects": self.disconnects.load(Relaxed),
        })
    }
}
