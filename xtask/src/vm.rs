//! `cargo xtask vm-test`: run the end-to-end suites on stock Debian kernels under QEMU TCG.
//!
//! Per kernel: fetch the newest `linux-image-*` .deb of a series (cached under
//! `target/vm-test/cache`), extract it and `depmod` it, build a busybox initramfs that loads the
//! 9p modules, mounts the host root read-only and chroots into it (`xtask/vm/init.sh`), where
//! `xtask/vm/guest.sh` runs every integration-test binary of `snapmon-e2e`. The host streams
//! the serial console, parses the `SNAPMON-VM-*` markers and libtest's summaries, enforces a
//! timeout, and writes a per-kernel table to stdout and `target/vm-test/results.json`.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use std::os::unix::fs::PermissionsExt as _;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::{cargo, check, workspace};

/// A kernel series: a label for `--kernel` and how to recognise its image package names.
struct Series {
    label: &'static str,
    /// Package name = prefix + <number> + suffix; the newest number wins.
    prefix: &'static str,
    suffix: &'static str,
}

/// Debian 12's own kernel and the newest stable series bookworm carries (security/backports).
const SERIES: &[Series] = &[
    Series {
        label: "6.1",
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64",
    },
    Series {
        label: "6.12",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-amd64",
    },
];

/// Modules the initramfs loads (with their dependencies) to mount the host root.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];
/// And for the systemd guest's own root disk.
const SYSTEMD_BOOT_MODULES: &[&str] = &["virtio_blk", "ext4"];

/// What the guest boots into.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Guest {
    /// A busybox init that chroots into the host root read-only (`init.sh`, `guest.sh`).
    Chroot,
    /// systemd as PID 1 on a throw-away overlay of the debootstrap root (`init-systemd.sh`,
    /// `systemd-guest.sh`): the suites marked `// xtask-suite: systemd`.
    Systemd,
}

pub struct Opts {
    pub kernels: Vec<String>,
    pub timeout: u64,
    pub start_timeout: u64,
    pub tests: Vec<String>,
    pub test_args: Vec<String>,
    /// Also copy the fixtures the guest emitted into `snapmon/tests/fixtures/rules/`.
    pub save_fixtures: bool,
}

struct Kernel {
    series: &'static str,
    package: String,
    /// `uname -r` of the guest.
    release: String,
    root: PathBuf,
    /// More `vm.env` entries (the ZFS build, or why there is none).
    env: Vec<(&'static str, String)>,
}

#[derive(Default)]
struct Suite {
    name: String,
    rc: Option<i32>,
    passed: u32,
    failed: u32,
    ignored: u32,
    failures: Vec<String>,
    in_failures: bool,
    secs: u64,
}

pub fn vm_test(o: Opts) -> anyhow::Result<()> {
    let rows = vm_run(o)?;
    let bad = failed_kernels(&rows);
    if !bad.is_empty() {
        bail!("vm-test failed on {bad:?}");
    }
    Ok(())
}

/// Kernels whose run failed, timed out or did not finish a suite.
pub fn failed_kernels(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .filter(|r| r["ok"] != true)
        .map(|r| r["kernel"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Boot each kernel, run the suites, print and save the table; one row per kernel.
pub fn vm_run(o: Opts) -> anyhow::Result<Vec<Value>> {
    crate::setup::setup()?;
    let out = workspace().join("target/vm-test");
    let cache = out.join("cache");
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;

    let series: Vec<&Series> = SERIES
        .iter()
        .filter(|s| o.kernels.is_empty() || o.kernels.iter().any(|k| k == s.label))
        .collect();
    if series.is_empty() {
        let known: Vec<_> = SERIES.iter().map(|s| s.label).collect();
        bail!("--kernel {:?} matches none of {known:?}", o.kernels);
    }

    println!("== vm-test: building the agent and the end-to-end test binaries");
    // The guests run the release agent, as shipped: under TCG a debug agent spends seconds of
    // every start parsing BTF and relocating the object, and lags the tests' writes.
    check(cargo().args(["build", "--release", "-p", "snapmon"]))?;
    let all_tests = test_binaries(&o.tests)?;
    let suites = crate::suites::discover()?;
    // Host-only suites (userspace transport: another kernel adds nothing) are left to the
    // host run of `cargo xtask test`, unless named with `--test`.
    let (skipped, all_tests): (Vec<_>, Vec<_>) = all_tests.into_iter().partition(|(n, _)| {
        suites.iter().any(|s| s.host_only && &s.name == n) && !o.tests.iter().any(|t| t == n)
    });
    if !skipped.is_empty() {
        let names: Vec<&str> = skipped.iter().map(|(n, _)| n.as_str()).collect();
        println!(
            "== vm-test: not in the guests (xtask-suite: host-only): {}",
            names.join(", ")
        );
    }
    if all_tests.is_empty() {
        bail!("every selected suite is host-only (name it with --test to run it in the guests)");
    }
    let newest_only: Vec<String> = suites
        .iter()
        .filter(|s| s.newest_guest)
        .map(|s| s.name.clone())
        .collect();
    let systemd_suites: Vec<String> = suites
        .into_iter()
        .filter(|s| s.systemd)
        .map(|s| s.name)
        .collect();
    let (systemd_tests, tests): (Vec<_>, Vec<_>) = all_tests
        .into_iter()
        .partition(|(n, _)| systemd_suites.contains(n));
    // The systemd guest installs the package: build it (and the guest's disk) first.
    let systemd_env = if systemd_tests.is_empty() {
        None
    } else {
        Some(systemd_prepare(&out)?)
    };

    let mut rows = vec![];
    let first_series = series.first().map(|s| s.label);
    let last_series = series.last().map(|s| s.label);
    for s in series {
        let t0 = Instant::now();
        let mut k = fetch_kernel(s, &cache)?;
        let fetched = t0.elapsed();
        // `newest-guest` suites run in the last kernel selected only (see suites.rs).
        let (here, later): (Vec<_>, Vec<_>) = tests
            .iter()
            .cloned()
            .partition(|(n, _)| last_series == Some(s.label) || !newest_only.contains(n));
        if !later.is_empty() {
            let names: Vec<&str> = later.iter().map(|(n, _)| n.as_str()).collect();
            println!(
                "== vm-test [{}] left to the newest guest (xtask-suite: newest-guest): {}",
                s.label,
                names.join(", ")
            );
        }
        // A guest that runs the zfs suite on a series with an OpenZFS must get it (a failed
        // build fails its zfs suite); other series run the suite as a printed skip. No other
        // guest builds it: a module build costs minutes of the CI budget.
        let mut zfs_built = None;
        if here.iter().any(|(n, _)| n == "zfs") {
            match crate::zfs::unsupported(s.label) {
                Some(why) => k.env.push(("VM_ZFS_SKIP", why)),
                None => match crate::zfs::prepare(s.label, &k.release, &cache) {
                    Ok(z) => {
                        println!(
                            "== vm-test [{}] OpenZFS {} ({})",
                            s.label,
                            z.version,
                            z.built_secs
                                .map_or("cached".into(), |b| format!("built in {b} s"))
                        );
                        zfs_built = Some(json!({"version": z.version, "build_secs": z.built_secs}));
                        k.env.push(("VM_ZFS", z.dir.display().to_string()));
                    }
                    // The other suites still run; the zfs suite fails with this.
                    Err(e) => {
                        let why = format!("OpenZFS for {}: {e:#}", k.release);
                        println!("vm-test: {why}");
                        zfs_built = Some(json!({"error": why}));
                        k.env.push(("VM_ZFS_ERROR", why));
                    }
                },
            }
        }
        println!(
            "== vm-test [{}] {} ({}, ready in {:.1} s)",
            s.label,
            k.release,
            k.package,
            fetched.as_secs_f64()
        );
        let dir = out.join(&k.release);
        std::fs::create_dir_all(&dir)?;
        if !here.is_empty() {
            let row = match boot(&o, &k, &here, &dir, Guest::Chroot) {
                Ok(r) => r,
                Err(e) => json!({"kernel": k.release, "ok": false, "error": format!("{e:#}")}),
            };
            let mut row = row;
            row["series"] = json!(k.series);
            row["package"] = json!(k.package);
            if let Some(z) = zfs_built {
                row["zfs"] = z;
            }
            row["secs"] = json!(t0.elapsed().as_secs());
            rows.push(row);
        }
        // The systemd guest boots once, on the first kernel selected (Debian 12's own by
        // default): what it tests is the package and the unit, not the kernel's hooks.
        if let (Some(env), true) = (&systemd_env, first_series == Some(s.label)) {
            let t1 = Instant::now();
            let mut k = k;
            k.env.extend(env.iter().cloned());
            let sdir = dir.join("systemd");
            std::fs::create_dir_all(&sdir)?;
            let row = match boot(&o, &k, &systemd_tests, &sdir, Guest::Systemd) {
                Ok(r) => r,
                Err(e) => json!({"kernel": k.release, "ok": false, "error": format!("{e:#}")}),
            };
            let mut row = row;
            row["kernel"] = json!(format!("{} (systemd)", k.release));
            row["series"] = json!(k.series);
            row["package"] = json!(k.package);
            row["secs"] = json!(t1.elapsed().as_secs());
            rows.push(row);
        }
    }

    let results = out.join("results.json");
    std::fs::write(&results, serde_json::to_string_pretty(&rows)? + "\n")
        .with_context(|| format!("writing {}", results.display()))?;
    summary(&rows);
    println!("(details: {})", results.display());
    Ok(rows)
}

/// Integration-test executables of `snapmon-e2e`, as (target name, path).
fn test_binaries(only: &[String]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let o = cargo()
        .args([
            "test",
            "-p",
            "snapmon-e2e",
            "--tests",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !o.status.success() {
        bail!("building the end-to-end tests failed");
    }
    let mut v = vec![];
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        let Ok(m) = serde_json::from_str::<Value>(l) else {
            continue;
        };
        let is_test = m["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|x| x == "test"));
        if m["reason"] != "compiler-artifact" || !is_test {
            continue;
        }
        if let (Some(name), Some(exe)) = (m["target"]["name"].as_str(), m["executable"].as_str()) {
            // By default every suite in tests/tests (each is one integration-test target).
            let wanted = if only.is_empty() {
                true
            } else {
                only.iter().any(|t| t == name || t == "all")
            };
            if wanted {
                v.push((name.to_string(), PathBuf::from(exe)));
            }
        }
    }
    v.sort();
    if v.is_empty() {
        bail!("no end-to-end test binaries selected (--test {only:?})");
    }
    Ok(v)
}

/// Newest package of the series known to apt, else the newest already in the cache.
fn fetch_kernel(s: &'static Series, cache: &Path) -> anyhow::Result<Kernel> {
    let num = |name: &str| -> Option<u64> {
        name.strip_prefix(s.prefix)?
            .strip_suffix(s.suffix)?
            .parse()
            .ok()
    };
    let o = Command::new("apt-cache")
        .args(["pkgnames", s.prefix])
        .output()
        .context("apt-cache pkgnames")?;
    let mut names: Vec<(u64, String)> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|n| num(n).map(|v| (v, n.to_string())))
        .collect();
    // What is cached counts too, so an offline second run still works.
    for e in std::fs::read_dir(cache)?.flatten() {
        let f = e.file_name().to_string_lossy().into_owned();
        if let Some(p) = f
            .strip_suffix("_amd64.deb")
            .and_then(|f| f.split('_').next())
        {
            if let Some(v) = num(p) {
                names.push((v, p.to_string()));
            }
        }
    }
    names.sort();
    names.dedup();
    let mut last_err = None;
    for (_, pkg) in names.iter().rev() {
        match deb(pkg, cache).and_then(|d| extract(&d, pkg, cache)) {
            Ok((release, root)) => {
                return Ok(Kernel {
                    series: s.label,
                    package: pkg.clone(),
                    release,
                    root,
                    env: vec![],
                })
            }
            Err(e) => {
                println!("vm-test: {pkg} unusable ({e:#}); trying an older one");
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| {
        anyhow::anyhow!(
            "no {}*{} package known to apt (run `apt-get update`)",
            s.prefix,
            s.suffix
        )
    }))
}

fn cached_deb(pkg: &str, cache: &Path) -> Option<PathBuf> {
    std::fs::read_dir(cache).ok()?.flatten().find_map(|e| {
        let f = e.file_name().to_string_lossy().into_owned();
        (f.starts_with(&format!("{pkg}_")) && f.ends_with(".deb")).then(|| e.path())
    })
}

pub(crate) fn deb(pkg: &str, cache: &Path) -> anyhow::Result<PathBuf> {
    if let Some(d) = cached_deb(pkg, cache) {
        return Ok(d);
    }
    println!("vm-test: downloading {pkg}");
    let o = Command::new("apt-get")
        .args(["download", "-q", pkg])
        .current_dir(cache)
        .output()
        .context("apt-get download")?;
    if !o.status.success() {
        bail!(
            "apt-get download {pkg}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    cached_deb(pkg, cache).with_context(|| format!("apt-get download left no {pkg}_*.deb"))
}

/// Extract once into `cache/<pkg>/` (atomically, via a temp dir) and depmod it.
fn extract(deb: &Path, pkg: &str, cache: &Path) -> anyhow::Result<(String, PathBuf)> {
    let root = cache.join(pkg);
    if !root.join(".done").exists() {
        let tmp = cache.join(format!(".{pkg}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        check(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
        let rel = release_of(&tmp)?;
        // The .deb ships no modules.dep: the guest's modprobe and our dependency walk need it.
        check(Command::new("depmod").arg("-b").arg(&tmp).arg(&rel))?;
        let _ = std::fs::remove_dir_all(&root);
        std::fs::rename(&tmp, &root)?;
        std::fs::write(root.join(".done"), "")?;
    }
    Ok((release_of(&root)?, root))
}

fn release_of(root: &Path) -> anyhow::Result<String> {
    let d = root.join("lib/modules");
    let rel = std::fs::read_dir(&d)
        .with_context(|| format!("reading {}", d.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .with_context(|| format!("no kernel in {}", d.display()))?;
    Ok(rel)
}

/// Boot modules with dependencies, in load order, as paths (builtins drop out).
fn boot_modules(k: &Kernel, guest: Guest) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = vec![];
    let extra = if guest == Guest::Systemd {
        SYSTEMD_BOOT_MODULES
    } else {
        &[]
    };
    for m in BOOT_MODULES.iter().chain(extra) {
        let o = Command::new("modprobe")
            .arg("--show-depends")
            .arg("-d")
            .arg(&k.root)
            .args(["-S", &k.release, m])
            .output()
            .context("modprobe --show-depends (kmod)")?;
        if !o.status.success() {
            bail!(
                "modprobe --show-depends {m}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            if let Some(p) = l.strip_prefix("insmod ") {
                let p = PathBuf::from(p.trim());
                if !v.contains(&p) {
                    v.push(p);
                }
            }
        }
    }
    Ok(v)
}

fn initramfs(
    o: &Opts,
    k: &Kernel,
    tests: &[(String, PathBuf)],
    dir: &Path,
    guest: Guest,
) -> anyhow::Result<PathBuf> {
    let stage = dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&stage);
    for d in ["bin", "mods", "proc", "sys", "dev"] {
        std::fs::create_dir_all(stage.join(d))?;
    }
    std::fs::copy("/bin/busybox", stage.join("bin/busybox"))
        .context("copying /bin/busybox (busybox-static)")?;
    let vm = workspace().join("xtask/vm");
    let (init, script) = match guest {
        Guest::Chroot => ("init.sh", "guest.sh"),
        Guest::Systemd => ("init-systemd.sh", "systemd-guest.sh"),
    };
    std::fs::copy(vm.join(init), stage.join("init"))?;
    // The kernel execs /init: it must be executable whatever the checkout's modes are.
    std::fs::set_permissions(stage.join("init"), std::fs::Permissions::from_mode(0o755))?;
    let mut order = String::new();
    for p in boot_modules(k, guest)? {
        let file = p.file_name().unwrap().to_string_lossy().into_owned();
        let name = file
            .trim_end_matches(".xz")
            .trim_end_matches(".zst")
            .trim_end_matches(".ko")
            .to_string();
        let dst = stage.join(format!("mods/{name}.ko"));
        // Busybox insmod wants plain ELF: decompress on the host.
        if file.ends_with(".xz") || file.ends_with(".zst") {
            let tool = if file.ends_with(".xz") { "xz" } else { "zstd" };
            let out = Command::new(tool)
                .arg("-dc")
                .arg(&p)
                .output()
                .with_context(|| format!("{tool} -dc {}", p.display()))?;
            if !out.status.success() {
                bail!("{tool} -dc {} failed", p.display());
            }
            std::fs::write(&dst, out.stdout)?;
        } else {
            std::fs::copy(&p, &dst)?;
        }
        order += &format!("{name}\n");
    }
    std::fs::write(stage.join("mods/order"), order)?;
    let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let specs: Vec<String> = tests
        .iter()
        .map(|(n, p)| format!("{n}={}", p.display()))
        .collect();
    let env = [
        ("VM_KVER", k.release.clone()),
        // Canonical: the systemd guest sees the host root under /host, where an absolute
        // symlink (target/vm-test/cache is one in worktrees) would point out of it.
        (
            "VM_MODROOT",
            std::fs::canonicalize(&k.root)
                .unwrap_or_else(|_| k.root.clone())
                .display()
                .to_string(),
        ),
        ("VM_GUEST_SCRIPT", vm.join(script).display().to_string()),
        ("VM_WORKSPACE", workspace().display().to_string()),
        (
            "VM_SNAPMON_BIN",
            workspace()
                .join("target/release/snapmon")
                .display()
                .to_string(),
        ),
        ("VM_START_TIMEOUT", o.start_timeout.to_string()),
        ("VM_TESTS", specs.join(" ")),
        ("VM_TEST_ARGS", o.test_args.join(" ")),
    ];
    // A suite's host-only tests (`xtask-suite: host-prefix=P`) are skipped in the guest.
    let skips: Vec<(String, String)> = crate::suites::discover()?
        .into_iter()
        .filter_map(|s| Some((format!("VM_SKIP_{}", s.name), s.host_prefix?)))
        .collect();
    let env: String = env
        .iter()
        .map(|(k, v)| (*k, v))
        .chain(k.env.iter().map(|(k, v)| (*k, v)))
        .chain(skips.iter().map(|(k, v)| (k.as_str(), v)))
        .map(|(k, v)| format!("{k}={}\n", q(v)))
        .collect();
    std::fs::write(stage.join("vm.env"), env)?;

    let img = dir.join("initramfs.cpio");
    let f = std::fs::File::create(&img)?;
    let mut c = Command::new("sh")
        .args(["-c", "find . | sort | cpio -o -H newc --quiet"])
        .current_dir(&stage)
        .stdout(f)
        .spawn()
        .context("cpio")?;
    if !c.wait()?.success() {
        bail!("building {} failed", img.display());
    }
    Ok(img)
}

fn boot(
    o: &Opts,
    k: &Kernel,
    tests: &[(String, PathBuf)],
    dir: &Path,
    guest: Guest,
) -> anyhow::Result<Value> {
    let initrd = initramfs(o, k, tests, dir, guest)?;
    let log_path = dir.join("console.log");
    let mut log = std::fs::File::create(&log_path)?;
    let vmlinuz = k.root.join(format!("boot/vmlinuz-{}", k.release));
    let mut cmd = Command::new("qemu-system-x86_64");
    // TCG, not KVM: /dev/kvm is present on CI hosts but unusable (it hangs).
    cmd.args([
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-m",
        "4G",
        "-smp",
        "2",
    ])
    .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
    .args(["-no-reboot", "-kernel"])
    .arg(&vmlinuz)
    .arg("-initrd")
    .arg(&initrd)
    .args(["-append", "console=ttyS0 panic=-1 quiet"])
    .args([
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on",
    ]);
    if guest == Guest::Systemd {
        let disk = dir.join("root.qcow2");
        crate::rootfs::overlay(&disk)?;
        cmd.arg("-drive").arg(format!(
            "file={},if=virtio,format=qcow2,cache=unsafe",
            disk.display()
        ));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let (tx, rx) = mpsc::channel::<String>();
    for r in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut buf = vec![];
            while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let l = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                if tx.send(l).is_err() {
                    break;
                }
                buf.clear();
            }
        });
    }
    drop(tx);

    let deadline = t0 + Duration::from_secs(o.timeout);
    let (mut suites, mut cur): (Vec<Suite>, Option<Suite>) = (vec![], None);
    let (mut done, mut timed_out, mut booted) = (false, false, None);
    let mut fatal = vec![];
    let (mut fixture, mut fixtures): (Option<(String, Vec<String>)>, Vec<String>) = (None, vec![]);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        let l = match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        writeln!(log, "{l}")?;
        let plain = strip_ansi(&l);
        let l = plain.trim_start();
        if let Some((rel, lines)) = fixture.as_mut() {
            if let Some(rest) = l.strip_prefix("SNAPMON-FIXTURE-END ") {
                match save_fixture(o, dir, rel, lines, rest) {
                    Ok(p) => {
                        println!("[{}] fixture {rel}: {} lines", k.series, lines.len());
                        fixtures.push(p);
                    }
                    Err(e) => fatal.push(format!("fixture {rel}: {e:#}")),
                }
                fixture = None;
            } else {
                lines.push(l.to_string());
            }
            continue;
        }
        // Keep CI logs readable: the full console is in console.log.
        let shown: String = plain.chars().take(400).collect();
        println!("[{}] {shown}", k.series);
        if let Some(rel) = l.strip_prefix("SNAPMON-FIXTURE-BEGIN ") {
            fixture = Some((rel.trim().to_string(), vec![]));
        } else if l.starts_with("SNAPMON-VM-GUEST") {
            booted = Some(t0.elapsed().as_secs_f64());
        } else if let Some(n) = l.strip_prefix("SNAPMON-VM-BEGIN ") {
            cur = Some(Suite {
                name: n.trim().to_string(),
                ..Default::default()
            });
        } else if let Some(rest) = l.strip_prefix("SNAPMON-VM-END ") {
            if let Some(mut s) = cur.take() {
                for kv in rest.split_whitespace() {
                    match kv.split_once('=') {
                        Some(("rc", v)) => s.rc = v.parse().ok(),
                        Some(("secs", v)) => s.secs = v.parse().unwrap_or(0),
                        _ => {}
                    }
                }
                suites.push(s);
            }
        } else if l.starts_with("SNAPMON-VM-DONE") {
            done = true;
        } else if l.starts_with("SNAPMON-VM-FATAL") || l.contains("Kernel panic") {
            fatal.push(l.to_string());
        } else if let Some(s) = cur.as_mut() {
            parse_libtest(s, &plain);
        }
    }
    if timed_out {
        let _ = child.kill();
    }
    let _ = child.wait();
    let secs = t0.elapsed().as_secs_f64();
    let all_ran = suites.len() == tests.len();
    let ok = done
        && !timed_out
        && all_ran
        && suites.iter().all(|s| s.rc == Some(0))
        && !fatal.iter().any(|f| f.starts_with("fixture "));
    let mut err = fatal;
    if timed_out {
        err.push(format!("timed out after {} s (--timeout)", o.timeout));
    }
    if let Some(s) = cur {
        err.push(format!("suite {} did not finish", s.name));
    }
    if let Some((rel, _)) = fixture {
        err.push(format!("fixture {rel} was cut off"));
    }
    if !done && !timed_out {
        err.push("guest stopped before SNAPMON-VM-DONE".into());
    }
    Ok(json!({
        "kernel": k.release,
        "ok": ok,
        "boot_secs": booted,
        "vm_secs": secs,
        "console": log_path,
        "errors": err,
        "fixtures": fixtures,
        "suites": suites.iter().map(|s| json!({
            "name": s.name, "rc": s.rc, "passed": s.passed, "failed": s.failed,
            "ignored": s.ignored, "secs": s.secs, "failures": s.failures,
        })).collect::<Vec<_>>(),
    }))
}

/// For the systemd guest: the package (built now, so the guest installs this tree's), the
/// debootstrap root's disk image, and a qcow2 with snapshots for its libvirt store.
fn systemd_prepare(out: &Path) -> anyhow::Result<Vec<(&'static str, String)>> {
    let built = crate::package::package()?;
    crate::rootfs::ext4_image()?;
    let qcow2 = out.join("systemd-vm1.qcow2");
    let _ = std::fs::remove_file(&qcow2);
    check(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&qcow2)
            .arg("64M"),
    )?;
    for snap in ["s1", "s2", "s3"] {
        check(
            Command::new("qemu-img")
                .args(["snapshot", "-c", snap])
                .arg(&qcow2),
        )?;
    }
    Ok(vec![
        ("VM_DEB", built.deb.display().to_string()),
        ("VM_QCOW2", qcow2.display().to_string()),
    ])
}

/// Check one fixture the guest printed (complete, every line JSON, a sane relative name) and
/// write it under `<dir>/fixtures/`, and into the source tree with `--save-fixtures`.
fn save_fixture(
    o: &Opts,
    dir: &Path,
    rel: &str,
    lines: &[String],
    end: &str,
) -> anyhow::Result<String> {
    let (end_rel, n) = end
        .trim()
        .rsplit_once(" lines=")
        .context("END marker without lines=N")?;
    if end_rel != rel || n.parse::<usize>().ok() != Some(lines.len()) {
        bail!("END says {end:?}, got {} lines", lines.len());
    }
    let (group, name) = rel.split_once('/').context("not <RULE-ID>/<file>")?;
    let word = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !word(group) || !word(name) || !(name.ends_with(".jsonl") || name.ends_with(".json")) {
        bail!("refusing fixture name {rel:?}");
    }
    for (i, l) in lines.iter().enumerate() {
        serde_json::from_str::<Value>(l)
            .with_context(|| format!("line {} is not JSON (console noise?)", i + 1))?;
    }
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let mut dsts = vec![dir.join("fixtures").join(rel)];
    if o.save_fixtures {
        dsts.push(workspace().join("snapmon/tests/fixtures/rules").join(rel));
    }
    for d in &dsts {
        std::fs::create_dir_all(d.parent().unwrap())?;
        std::fs::write(d, &body).with_context(|| format!("writing {}", d.display()))?;
    }
    Ok(dsts.last().unwrap().display().to_string())
}

/// libtest's closing `failures:` list (the `test NAME ... FAILED` lines interleave with the
/// agent's stderr, the list does not) and its `test result:` summary.
fn parse_libtest(s: &mut Suite, raw: &str) {
    let l = raw.trim();
    if l == "failures:" {
        s.in_failures = true;
        return;
    }
    if s.in_failures {
        let name = raw.strip_prefix("    ").unwrap_or("");
        let is_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        if is_name && !s.failures.iter().any(|f| f == name) {
            s.failures.push(name.to_string());
        }
    }
    if let Some(r) = l.strip_prefix("test result: ") {
        s.in_failures = false;
        let num = |what: &str| -> u32 {
            r.split(';')
                .find_map(|p| {
                    p.trim()
                        .strip_suffix(what)?
                        .trim()
                        .rsplit(' ')
                        .next()?
                        .parse()
                        .ok()
                })
                .unwrap_or(0)
        };
        s.passed += num("passed");
        s.failed += num("failed");
        s.ignored += num("ignored");
    }
}

fn summary(rows: &[Value]) {
    // serde_json's Display ignores width: render cells as plain strings first.
    let cell = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    };
    println!();
    println!(
        "{:<24} {:<6} {:<8} {:>6} {:>6} {:>7} {:>6}  failed tests / errors",
        "kernel", "result", "suite", "passed", "failed", "ignored", "secs"
    );
    for r in rows {
        let kernel = cell(&r["kernel"]);
        let res = if r["ok"] == true { "PASS" } else { "FAIL" };
        for s in r["suites"].as_array().into_iter().flatten() {
            let fails: Vec<String> = s["failures"]
                .as_array()
                .into_iter()
                .flatten()
                .map(cell)
                .collect();
            println!(
                "{kernel:<24} {res:<6} {:<8} {:>6} {:>6} {:>7} {:>6}  {}",
                cell(&s["name"]),
                cell(&s["passed"]),
                cell(&s["failed"]),
                cell(&s["ignored"]),
                cell(&s["secs"]),
                if s["rc"] == 0 {
                    String::new()
                } else {
                    format!("rc={} {}", cell(&s["rc"]), fails.join(", "))
                }
            );
        }
        let errs: Vec<String> = r["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(cell)
            .chain(r["error"].as_str().map(String::from))
            .collect();
        println!(
            "{kernel:<24} {res:<6} total {} s, guest up after {} s{}",
            cell(&r["secs"]),
            r["boot_secs"]
                .as_f64()
                .map(|b| format!("{b:.1}"))
                .unwrap_or("-".into()),
            if errs.is_empty() {
                String::new()
            } else {
                format!("; {}", errs.join("; "))
            }
        );
    }
}

/// Drop ANSI escape sequences (colour from the guest's tools) before matching markers.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            if it.peek() == Some(&'[') {
                it.next();
                for d in it.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}
