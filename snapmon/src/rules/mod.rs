//! Rules stage: the detection engine between classify and the sinks. Rules are indexed by
//! event kind; stateful ones (rates, sequences, timeouts) keep bounded state; each alert
//! names the rule, severity, ATT&CK technique, a one-sentence message, the triggering
//! events and the actor's lineage. Pure: no kernel, no clock but the event's own time.

pub mod ctx;
pub mod def;
pub mod engine;
pub mod family;
pub mod glob;
mod helpers;
pub mod policy;
pub mod qemu_tools;
pub mod registry;
pub mod replay;
pub mod state;
pub mod window;

pub use ctx::Kind;
pub use engine::Engine;

#[cfg(test)]
mod tests;
