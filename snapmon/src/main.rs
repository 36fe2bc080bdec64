//! snapmon: entry point. Thin: parse, run, map errors to one clear message.

mod agent;
mod classify;
mod cli;
mod config;
mod decode;
mod doctor;
mod enforce;
mod enrich;
mod event;
mod kernel;
mod lineage;
mod lineage_bridge;
mod metrics;
mod offline;
mod pipeline;
mod record;
mod rules;
mod sink;
mod watch;

use clap::Parser as _;

fn main() {
    let cli = cli::Cli::parse();
    if let Err(e) = cli::run(cli) {
        // A closed stdout is how pipelines say "enough"; not an error (ripgrep's rule).
        if e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        }) {
            std::process::exit(0);
        }
        eprintln!("snapmon: {e:#}");
        std::process::exit(1);
    }
}
