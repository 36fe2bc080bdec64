//! What every sink implements: its thread's side of the output (write, tick, reopen, close).

use super::render::RecordId;
use crate::record::Record;

/// One sink's output side, driven by its thread.
pub trait SinkWriter: Send {
    /// Write (or spill) one record; failures are counted by the writer, never returned.
    fn write(&mut self, r: &Record);
    /// As `write`, for a record stamped with its id (what the sink thread calls). Writers that
    /// put the id on the wire override it.
    fn write_id(&mut self, id: RecordId, r: &Record) {
        let _ = id;
        self.write(r)
    }
    /// The queue is empty for now: flush what interactive readers should see.
    fn idle(&mut self) {}
    /// Periodic work: flush/fsync by policy, time rotation, reconnect, spill replay.
    fn tick(&mut self);
    /// Reopen the file / reconnect (SIGHUP, SIGUSR1).
    fn reopen(&mut self);
    /// Last flush at shutdown.
    fn close(&mut self);
    /// Work is pending that should not wait for the next tick (spill replay).
    fn backlog(&self) -> bool {
        false
    }
}
