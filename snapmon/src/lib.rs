//! snapmon as a library: every stage of the flow (kernel hook → ring buffer → decode →
//! lineage/enrich → classify → rules → sinks), so tools, tests and fuzzers can drive them.

pub mod actions;
pub mod agent;
pub mod attack;
pub mod build_info;
pub mod classify;
pub mod cli;
pub mod clock;
pub mod config;
pub mod decode;
pub mod dirwatch;
pub mod dist;
pub mod doctor;
pub mod enforce;
pub mod enrich;
pub mod event;
pub mod evidence;
pub mod kernel;
pub mod lineage;
pub mod longpath;
pub mod metrics;
pub mod notify;
pub mod offline;
pub mod overlay;
pub mod paths;
pub mod pipeline;
pub mod policy_check;
pub mod record;
pub mod recover;
pub mod respond;
pub mod rules;
pub mod sink;
pub mod state;
#[cfg(test)]
pub(crate) mod testutil;
pub mod text;
pub mod vocab;
pub mod watch;
