//! snapmon: entry point. Thin: parse, run, map errors to one clear message.

use clap::Parser as _;

/// Records are allocated by the reader thread and freed by the sink threads; glibc malloc
/// serialises those cross-thread frees on the reader's arena lock (a fifth of a sink
/// thread's time in the capacity bench). mimalloc frees them to the owning thread lock-free.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    snapmon::agent::tune_allocator();
    let cli = snapmon::cli::Cli::parse();
    if let Err(e) = snapmon::cli::run(cli) {
        // A closed stdout is how pipelines say "enough"; not an error (ripgrep's rule).
        if e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        }) {
            std::process::exit(0);
        }
        eprintln!("snapmon: {}", snapmon::cli::one_sentence(&e));
        // 1: findings (a check that ran and found something); 2: usage or read error.
        let findings = e.downcast_ref::<snapmon::cli::Findings>().is_some();
        std::process::exit(if findings { 1 } else { 2 });
    }
}
