//! xtask: setup, build, test and run helpers — the one entry point for developers and CI.

mod bench;
mod fuzz;
mod image;
mod lint;
mod package;
mod rootfs;
mod setup;
mod suites;
mod vm;
mod zfs;

use std::process::Command;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[allow(clippy::large_enum_variant, reason = "parsed once per run")]
#[derive(Subcommand)]
enum Cmd {
    /// Install everything the build and tests need (idempotent; fast when done).
    Setup,
    /// Build the agent (eBPF object embedded).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run all tests: unit tests, the privileged end-to-end suites on this kernel, then the
    /// same suites (plus LVM and enforcement) on stock Debian kernels under QEMU.
    Test {
        /// Skip the privileged end-to-end suites (and the VMs).
        #[arg(long)]
        unit_only: bool,
        /// Skip the stock-kernel VM runs (`cargo xtask vm-test`).
        #[arg(long)]
        no_vm: bool,
    },
    /// Run the end-to-end suites on stock Debian kernels under QEMU (TCG); see docs/vm-test.md.
    VmTest {
        /// Kernel series to boot (repeatable): 6.1, 6.12. Default: all.
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Integration-test binaries of snapmon-e2e to run (repeatable, or `all`). Default: every
        /// suite in tests/tests but the host-only ones (`// xtask-suite: host-only`), which run
        /// in the guests only when named here.
        #[arg(long = "test")]
        tests: Vec<String>,
        /// Seconds one kernel may take, boot to power-off.
        #[arg(long, default_value_t = 2400)]
        timeout: u64,
        /// Seconds the harness waits for the agent's `started` record (verification is slow under TCG).
        #[arg(long, default_value_t = 600)]
        start_timeout: u64,
        /// Copy the rule fixtures the guest's tests print (`SNAPMON-FIXTURE-*` blocks) into
        /// snapmon/tests/fixtures/rules/ (they always land in target/vm-test/<release>/fixtures/).
        #[arg(long)]
        save_fixtures: bool,
        /// Arguments for the test binaries (a name filter, --exact …).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Benchmarks (not part of the tests): overhead vs no agent and auditd, capacity, alert
    /// latency, footprint; writes docs/benchmarks.{md,json}. Root; about 15 minutes.
    Bench(bench::Args),
    /// Run the cargo-fuzz targets (qcow2, lvm, ioctl, libvirt); crashing inputs are kept as
    /// regression tests under snapmon/fuzz/regressions.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
        /// Only these targets.
        targets: Vec<String>,
    },
    /// Check that snapmon's modules import one way (no cycles) and that clippy is clean.
    Lint {
        /// Only the import-cycle check.
        #[arg(long)]
        no_clippy: bool,
        /// Print the imports inside each cycle, with a path that makes each.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Build the Debian package: target/debian/snapmon_<version>-1_amd64.deb (stripped binary,
    /// policy conffile, systemd unit, completions, man pages) and its -dbgsym package.
    Package,
    /// Build the OCI image (deploy/container/Containerfile) with buildah:
    /// target/oci/snapmon-<version>.oci.tar. Kubernetes manifests: deploy/kubernetes/.
    Image,
    /// Set up, build (release) and run the agent with the given arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Build { release } => build(release),
        Cmd::Test { unit_only, no_vm } => test(unit_only, no_vm),
        Cmd::VmTest {
            kernels,
            tests,
            timeout,
            start_timeout,
            save_fixtures,
            test_args,
        } => vm::vm_test(vm::Opts {
            kernels,
            timeout,
            start_timeout,
            tests,
            test_args,
            save_fixtures,
        }),
        Cmd::Bench(a) => bench::main(a),
        Cmd::Lint { no_clippy, verbose } => lint::lint(!no_clippy, verbose),
        Cmd::Package => package::package().map(|_| ()),
        Cmd::Image => image::image().map(|_| ()),
        Cmd::Fuzz { seconds, targets } => {
            setup::setup()?;
            fuzz::fuzz(seconds, &targets)
        }
        Cmd::Run { args } => {
            setup::setup()?;
            build(true)?;
            let bin = workspace().join("target/release/snapmon");
            let args = if args.is_empty() {
                vec!["run".to_string()]
            } else {
                args
            };
            let st = Command::new(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            std::process::exit(st.code().unwrap_or(1));
        }
    }
}

pub fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace());
    c
}

pub fn check(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn build(release: bool) -> anyhow::Result<()> {
    let mut c = cargo();
    c.args(["build", "-p", "snapmon"]);
    if release {
        c.arg("--release");
    }
    check(&mut c)
}

fn test(unit_only: bool, no_vm: bool) -> anyhow::Result<()> {
    setup::setup()?;
    let mut tally = Tally::default();
    println!("== unit tests (default members)");
    let unit = tally.run(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "snapmon-e2e",
        "--exclude",
        "snapmon-ebpf",
    ]));
    if unit.is_err() || unit_only {
        tally.print();
        return unit;
    }
    println!(
        "== privileged end-to-end tests on this kernel ({})",
        kernel_release()
    );
    build(false)?;
    // The package suite installs this tree's .deb into the cached clean root.
    println!("== the Debian package and a clean Debian 12 root for it");
    let pkg = package::package()?;
    let rootfs = rootfs::root()?;
    let oci = image::build(&pkg)?;
    // Serially (they share one agent per binary and assert on pids). VM-only suites (real
    // device-mapper, ZFS) run inside `cargo xtask vm-test` only; a suite with a host prefix runs
    // just those tests here (enforcement: the clear refusal on a kernel without BPF LSM);
    // host-only suites (userspace transport) run here and not in the guests.
    let suites = suites::discover()?;
    let mut res = Ok(());
    let plain: Vec<&str> = suites
        .iter()
        .filter(|s| !s.vm_only && !s.systemd && s.host_prefix.is_none())
        .flat_map(|s| ["--test", s.name.as_str()])
        .collect();
    let mut runs: Vec<(Vec<&str>, Option<&str>)> = vec![(plain, None)];
    for s in suites.iter().filter(|s| !s.vm_only) {
        if let Some(p) = &s.host_prefix {
            runs.push((vec!["--test", s.name.as_str()], Some(p.as_str())));
        }
    }
    for (targets, filter) in runs {
        let mut c = cargo();
        c.args(["test", "--no-fail-fast", "-p", "snapmon-e2e"])
            .args(&targets)
            .args(["--", "--test-threads=1"])
            .args(filter);
        c.env("SNAPMON_BIN", workspace().join("target/debug/snapmon"))
            .env("SNAPMON_DEB", &pkg.deb)
            .env("SNAPMON_ROOTFS", &rootfs)
            .env("SNAPMON_OCI", &oci)
            .env("SNAPMON_KUBERNETES_VALIDATE", setup::kubernetes_validate());
        res = res.and(tally.run(&mut c));
    }
    let vm = if no_vm {
        Ok(())
    } else {
        println!("== the same suites on stock distro kernels under QEMU (cargo xtask vm-test)");
        vm_suites(&mut tally)
    };
    tally.print();
    res.and(vm)
}

/// `vm-test` with its defaults (every suite but the host-only ones, which the host run above
/// covered), its suites counted in the tally (a kernel that did not boot or finish counts as
/// one failure).
fn vm_suites(tally: &mut Tally) -> anyhow::Result<()> {
    let rows = vm::vm_run(vm::Opts {
        kernels: vec![],
        timeout: 2400,
        start_timeout: 600,
        tests: vec![],
        test_args: vec![],
        save_fixtures: false,
    })?;
    for r in &rows {
        let suites = r["suites"].as_array().cloned().unwrap_or_default();
        for s in &suites {
            let n = |k: &str| s[k].as_u64().unwrap_or(0);
            tally.passed += n("passed");
            tally.failed += n("failed");
            tally.ignored += n("ignored");
        }
        if r["ok"] != true
            && suites
                .iter()
                .all(|s| s["failed"].as_u64().unwrap_or(0) == 0)
        {
            tally.failed += 1;
        }
    }
    let bad = vm::failed_kernels(&rows);
    if !bad.is_empty() {
        bail!("vm-test failed on {bad:?}");
    }
    Ok(())
}

/// Sums libtest's `test result:` lines across runs, for one closing summary line.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    fn run(&mut self, cmd: &mut Command) -> anyhow::Result<()> {
        use std::io::{BufRead as _, Write as _};
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        let out = child.stdout.take().context("test stdout")?;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                let num = |key: &str| {
                    rest.split(';')
                        .find_map(|p| {
                            p.trim()
                                .trim_start_matches("ok. ")
                                .trim_start_matches("FAILED. ")
                                .strip_suffix(key)
                        })
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .unwrap_or(0)
                };
                self.passed += num(" passed");
                self.failed += num(" failed");
                self.ignored += num(" ignored");
            }
        }
        let _ = std::io::stdout().flush();
        let st = child.wait()?;
        if !st.success() {
            bail!("{cmd:?} failed: {st}");
        }
        Ok(())
    }

    fn print(&self) {
        println!(
            "tests: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.ignored
        );
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
