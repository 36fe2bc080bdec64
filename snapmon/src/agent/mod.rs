//! The running agent: kernel → ring buffer → decode → enrich → classify → rules → sinks,
//! driven by one async loop that also handles signals and periodic loss reporting.
//! Start-up (`startup`) hands the loop (`event_loop`) what it runs on; SIGHUP reloads
//! (`reload`). The parts import downwards only: mod → event_loop → reload → startup →
//! the leaves (kernel_maps, mounts, output, memory).

mod event_loop;
mod kernel_maps;
mod memory;
mod mounts;
mod output;
mod reload;
mod startup;

pub use kernel_maps::KernelMaps;
pub use memory::tune_allocator;
pub use startup::RunOptions;

use crate::sink::SinkSet;

pub async fn run(opts: RunOptions, sinks: SinkSet) -> anyhow::Result<()> {
    let Some(running) = startup::start(&opts, &sinks)? else {
        return Ok(());
    };
    event_loop::run(&opts, sinks, running).await
}
