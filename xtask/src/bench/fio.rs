//! fio runs for the overhead matrix: one job per run, JSON output parsed for throughput and clat p99.

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _};
use serde_json::Value;

/// One fio workload of the overhead matrix.
pub struct Job {
    pub name: &'static str,
    pub rw: &'static str,
    pub bs: &'static str,
    pub engine: &'static str,
    pub iodepth: u32,
    /// Also run against the on-disk files (the 4 KiB jobs: where a per-IO cost shows).
    pub on_disk: bool,
}

pub const JOBS: &[Job] = &[
    Job {
        name: "randwrite-4k-psync",
        rw: "randwrite",
        bs: "4k",
        engine: "psync",
        iodepth: 1,
        on_disk: true,
    },
    Job {
        name: "randwrite-4k-io_uring",
        rw: "randwrite",
        bs: "4k",
        engine: "io_uring",
        iodepth: 16,
        on_disk: true,
    },
    Job {
        name: "seqwrite-1m-psync",
        rw: "write",
        bs: "1m",
        engine: "psync",
        iodepth: 1,
        on_disk: false,
    },
];

/// Byte range fio writes: past the qcow2 metadata of the watched image, i.e. guest data clusters.
pub const OFFSET: u64 = 64 << 20;
pub const SIZE: u64 = 256 << 20;

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct FioResult {
    pub bw_bytes: f64,
    pub iops: f64,
    pub clat_p50_ns: f64,
    pub clat_p99_ns: f64,
    pub total_ios: u64,
    /// fio's own CPU (user+system) per I/O: the hooks' cost, far less sensitive than
    /// throughput to other load on a shared machine (stolen time is not charged to fio).
    pub cpu_us_per_io: f64,
}

pub fn version() -> String {
    Command::new("fio")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "fio not found".into())
}

/// The command line, also printed in the report so a run can be repeated by hand.
pub fn args(job: &Job, file: &Path, runtime: u64, out: &Path) -> Vec<String> {
    vec![
        "--name=bench".into(),
        format!("--filename={}", file.display()),
        format!("--rw={}", job.rw),
        format!("--bs={}", job.bs),
        format!("--ioengine={}", job.engine),
        format!("--iodepth={}", job.iodepth),
        format!("--offset={OFFSET}"),
        format!("--size={SIZE}"),
        "--direct=1".into(),
        // One process: the writer's pid is stable and no fork noise lands in the numbers.
        "--thread".into(),
        "--numjobs=1".into(),
        "--time_based".into(),
        format!("--runtime={runtime}"),
        "--ramp_time=1".into(),
        "--fallocate=none".into(),
        "--randrepeat=0".into(),
        "--output-format=json".into(),
        format!("--output={}", out.display()),
    ]
}

pub fn run(job: &Job, file: &Path, runtime: u64, out: &Path) -> anyhow::Result<FioResult> {
    let o = Command::new("fio")
        .args(args(job, file, runtime, out))
        .output()
        .context("spawning fio")?;
    if !o.status.success() {
        bail!(
            "fio {} on {} failed: {}",
            job.name,
            file.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let text = std::fs::read_to_string(out).context("reading fio output")?;
    // fio may print notes before the JSON document.
    let start = text.find('{').context("no JSON in fio output")?;
    let v: Value = serde_json::from_str(&text[start..]).context("parsing fio JSON")?;
    let w = &v["jobs"][0]["write"];
    let pct = |p: &str| w["clat_ns"]["percentile"][p].as_f64().unwrap_or(f64::NAN);
    let j = &v["jobs"][0];
    let total_ios = w["total_ios"].as_u64().unwrap_or(0);
    let cpu_frac = (j["usr_cpu"].as_f64().unwrap_or(f64::NAN)
        + j["sys_cpu"].as_f64().unwrap_or(f64::NAN))
        / 100.0;
    let run_s = j["job_runtime"].as_f64().unwrap_or(f64::NAN) / 1000.0;
    Ok(FioResult {
        cpu_us_per_io: cpu_frac * run_s / total_ios.max(1) as f64 * 1e6,
        bw_bytes: w["bw_bytes"]
            .as_f64()
            .context("fio JSON without write.bw_bytes")?,
        iops: w["iops"].as_f64().unwrap_or(f64::NAN),
        clat_p50_ns: pct("50.000000"),
        clat_p99_ns: pct("99.000000"),
        total_ios,
    })
}
