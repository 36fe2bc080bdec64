//! Lineage stage seam: the enrich stage asks "who is tgid X at time T" through [`Lineage`];
//! the process table answers from fork/exec/exit records and a `/proc` seed.

use crate::{decode::RawEvent, event::ProcessInfo};

pub trait Lineage: Send {
    /// Feed every record (process records update the table; others may refresh it).
    fn observe(&mut self, raw: &RawEvent);
    /// The process image that was running `tgid` at `ts_ns` (CLOCK_BOOTTIME).
    fn process(&mut self, tgid: u32, tid: u32, ts_ns: u64, hdr: &snapmon_common::Header) -> ProcessInfo;
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
    fn process(&mut self, _tgid: u32, _tid: u32, _ts: u64, hdr: &snapmon_common::Header) -> ProcessInfo {
        crate::enrich::header_process(hdr)
    }
}

/// The lineage implementation the agent runs with.
pub fn default_lineage() -> Box<dyn Lineage> {
    Box::new(HeaderOnly)
}
