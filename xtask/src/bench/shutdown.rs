//! Idle shutdown (issue #19 item 5): SIGINT to process gone for a release agent that has
//! been idle since `started`, over several stops; the target is ≤0.5 s every time, with the
//! `stopped` record written.

use std::{path::Path, time::Duration};

use super::{agent, Shutdown};

/// Idle time after `started` before each stop.
const IDLE: Duration = Duration::from_secs(2);
/// Pause between stops: the kernel finishes detaching a stopped agent's hooks (in a
/// workqueue, after the agent has gone) before the next one loads its own.
const BETWEEN: Duration = Duration::from_secs(3);

/// `stops` agents on an empty store, each idle for IDLE and stopped with SIGINT.
pub fn phase(bin: &Path, policy: &Path, dir: &Path, stops: usize) -> anyhow::Result<Vec<Shutdown>> {
    let store = dir.join("shutdown-store");
    std::fs::create_dir_all(&store)?;
    let out = dir.join("shutdown.jsonl");
    let mut res = Vec::with_capacity(stops);
    for i in 1..=stops {
        let ag = agent::Agent::start(
            bin,
            policy,
            &[&store],
            &out,
            &dir.join("agent-shutdown.log"),
        )?;
        std::thread::sleep(IDLE);
        let (detail, exit, took) = ag.stop()?;
        println!(
            "bench: idle stop {i}/{stops}: exited in {:.3} s ({exit})",
            took.as_secs_f64()
        );
        res.push(Shutdown {
            exit_s: took.as_secs_f64(),
            exit,
            stopped_record: !detail.is_null(),
        });
        if i < stops {
            std::thread::sleep(BETWEEN);
        }
    }
    Ok(res)
}
