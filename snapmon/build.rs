//! Build the eBPF object (nightly + bpf-linker) and leave it in OUT_DIR for `include_bytes!`;
//! stamp the commit and build date for `snapmon --version` and the `started` record.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    stamp_version();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .join("snapmon-ebpf");
    let root = root.to_str().context("non-UTF-8 workspace path")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "snapmon-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the eBPF programs failed; run `cargo xtask setup` first (needs rust-src for nightly and bpf-linker)")?;
    strip_debug();
    Ok(())
}

/// Drop the object's DWARF (three quarters of its 7.7 MB) and keep `.BTF`/`.BTF.ext`, which
/// is all the loader reads: the object is embedded in the agent, and parsing it at start put
/// the whole of it in the idle RSS. Without llvm-objcopy the object stays as built.
fn strip_debug() {
    println!("cargo:rerun-if-env-changed=SNAPMON_OBJCOPY");
    let Some(out) = std::env::var_os("OUT_DIR") else {
        return;
    };
    let obj = std::path::Path::new(&out).join("snapmon");
    let tool = std::env::var("SNAPMON_OBJCOPY").unwrap_or_else(|_| "llvm-objcopy".into());
    match std::process::Command::new(&tool)
        .arg("--strip-debug")
        .arg(&obj)
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => println!(
            "cargo:warning={tool} --strip-debug exited {s}: the eBPF object keeps its DWARF"
        ),
        Err(e) => println!("cargo:warning={tool} not run ({e}): the eBPF object keeps its DWARF"),
    }
}

fn git(args: &[&str]) -> Option<String> {
    let o = std::process::Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let s = String::from_utf8(o.stdout).ok()?.trim().to_string();
    (o.status.success() && !s.is_empty()).then_some(s)
}

/// SNAPMON_COMMIT (12 hex digits, or what the environment sets for a build outside git) and
/// SNAPMON_BUILD_DATE (UTC, from SOURCE_DATE_EPOCH when set, as reproducible builds do).
fn stamp_version() {
    println!("cargo:rerun-if-env-changed=SNAPMON_COMMIT");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    // A new commit (HEAD moves, or the branch it names does) stamps again.
    // (A path that does not exist would make cargo rebuild every time.)
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for p in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        if let Some(f) = git(&["rev-parse", "--git-path", p]) {
            if std::path::Path::new(&f).exists() {
                println!("cargo:rerun-if-changed={f}");
            }
        }
    }
    let commit = std::env::var("SNAPMON_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        });
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    println!("cargo:rustc-env=SNAPMON_COMMIT={commit}");
    println!("cargo:rustc-env=SNAPMON_BUILD_DATE={y:04}-{m:02}-{d:02}");
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}
