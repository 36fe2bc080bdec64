//! `cargo xtask package`: the Debian package (cargo-deb) with the release binary stripped to
//! `/usr/sbin/snapmon` (debug info in `snapmon-dbgsym`), the policy conffile, the systemd unit,
//! completions and man pages generated from the CLI itself.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::{cargo, check, workspace};

/// What `package` made.
pub struct Built {
    pub deb: PathBuf,
}

/// Header of `/etc/snapmon/snapmon.toml`, above the embedded default policy.
const CONFFILE_HEADER: &str = "\
# /etc/snapmon/snapmon.toml: the policy snapmon.service runs with (snapmon package).
# It starts as the embedded default policy below. After an edit:
#   snapmon policy check /etc/snapmon/snapmon.toml   # no side effects; file:line:col errors
#   systemctl reload snapmon                         # a bad file is refused, the old rules stay
# The agent's output goes to /var/log/snapmon/snapmon.jsonl (see snapmon.service).
#
";

pub fn package() -> anyhow::Result<Built> {
    crate::setup::setup()?;
    let ws = workspace();
    println!("== package: release build");
    check(cargo().args(["build", "--release", "-p", "snapmon"]))?;
    let bin = ws.join("target/release/snapmon");
    let dist = ws.join("target/release/dist");
    let _ = std::fs::remove_dir_all(&dist);
    std::fs::create_dir_all(&dist)?;
    check(
        std::process::Command::new(&bin)
            .arg("dist-assets")
            .arg(&dist),
    )?;
    // Debian ships man pages gzipped (-n: no name or time stamp, so the package is stable).
    for e in std::fs::read_dir(dist.join("man"))?.flatten() {
        check(
            std::process::Command::new("gzip")
                .args(["-9nf"])
                .arg(e.path()),
        )?;
    }
    let policy = std::process::Command::new(&bin)
        .args(["policy", "default"])
        .output()
        .context("snapmon policy default")?;
    if !policy.status.success() {
        bail!("snapmon policy default failed");
    }
    let conf = dist.join("snapmon.toml");
    let mut text = CONFFILE_HEADER.as_bytes().to_vec();
    text.extend_from_slice(&policy.stdout);
    std::fs::write(&conf, text)?;
    // The conffile must be one the agent accepts as it is.
    check(
        std::process::Command::new(&bin)
            .args(["policy", "check"])
            .arg(&conf)
            .stdout(std::process::Stdio::null()),
    )?;

    println!("== package: cargo deb");
    let out = ws.join("target/debian");
    // Only this build's packages in target/debian: `dpkg -i target/debian/snapmon_*.deb`
    // must match one file.
    if let Ok(rd) = std::fs::read_dir(&out) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("snapmon") && (n.ends_with(".deb") || n.ends_with(".ddeb")) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    check(cargo().args([
        "deb",
        "-p",
        "snapmon",
        "--no-build",
        "--compress-debug-symbols=zlib",
    ]))?;
    let found = |suffix: &str, dbg: bool| -> Option<PathBuf> {
        std::fs::read_dir(&out)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                let n = p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                n.ends_with(suffix) && n.contains("-dbgsym") == dbg
            })
    };
    let deb = found(".deb", false).context("cargo deb left no snapmon_*.deb")?;
    let dbgsym = found(".ddeb", true).or_else(|| found(".deb", true));
    report(&deb, dbgsym.as_deref(), &bin)?;
    Ok(Built { deb })
}

/// Sizes: the unstripped build, the package, the installed binary.
fn report(deb: &Path, dbgsym: Option<&Path>, bin: &Path) -> anyhow::Result<()> {
    let mib = |p: &Path| std::fs::metadata(p).map(|m| m.len() as f64 / (1 << 20) as f64);
    let o = std::process::Command::new("dpkg-deb")
        .args(["-f"])
        .arg(deb)
        .arg("Installed-Size")
        .output()?;
    let installed_kib: u64 = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    println!(
        "package: {} ({:.1} MiB; installed {:.1} MiB; target/release/snapmon unstripped {:.1} MiB)",
        deb.display(),
        mib(deb)?,
        installed_kib as f64 / 1024.0,
        mib(bin)?
    );
    if let Some(d) = dbgsym {
        println!("debug info: {} ({:.1} MiB)", d.display(), mib(d)?);
    }
    Ok(())
}
