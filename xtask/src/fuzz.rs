//! `cargo xtask fuzz`: run every cargo-fuzz target for a while and keep what crashed.
//!
//! Crashing inputs are copied to `snapmon/fuzz/regressions/<target>/`, where the unit test
//! `classify::fuzz_regressions` replays them on every `cargo xtask test`.

use std::process::Command;

use anyhow::{bail, Context as _};

use crate::{check, workspace};

pub const TARGETS: &[&str] = &["qcow2", "lvm", "ioctl", "libvirt"];

pub fn fuzz(seconds: u64, only: &[String]) -> anyhow::Result<()> {
    let fuzz_dir = workspace().join("snapmon/fuzz");
    if Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        check(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let mut failed = Vec::new();
    for t in TARGETS
        .iter()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == *t))
    {
        let corpus = fuzz_dir.join("corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        // Fuzz into a scratch copy so the committed seeds stay small.
        let work = workspace().join("target/fuzz-corpus").join(t);
        std::fs::create_dir_all(&work)?;
        for e in std::fs::read_dir(&corpus)?.flatten() {
            std::fs::copy(e.path(), work.join(e.file_name()))?;
        }
        println!("== fuzz {t} for {seconds} s");
        let st = Command::new("cargo")
            .current_dir(&fuzz_dir)
            .args(["+nightly", "fuzz", "run", t])
            .arg(&work)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-rss_limit_mb=2048",
                "-max_len=262144",
            ])
            .status()
            .with_context(|| format!("running cargo fuzz for {t}"))?;
        let artifacts = fuzz_dir.join("artifacts").join(t);
        let regress = fuzz_dir.join("regressions").join(t);
        if let Ok(rd) = std::fs::read_dir(&artifacts) {
            for e in rd.flatten() {
                std::fs::create_dir_all(&regress)?;
                std::fs::copy(e.path(), regress.join(e.file_name()))?;
                println!(
                    "kept crashing input {}",
                    regress.join(e.file_name()).display()
                );
            }
        }
        if !st.success() {
            failed.push(*t);
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets found crashes: {failed:?} (inputs kept under snapmon/fuzz/regressions)"
        );
    }
    Ok(())
}
