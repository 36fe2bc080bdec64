//! `cargo xtask setup`: make a fresh Debian 12 machine able to build and test snapmon.
//! Every step checks before it acts, so a second run takes about a second.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

use crate::check;

/// Debian packages the build, the tests and the VM harness drive.
const PACKAGES: &[&str] = &[
    "fio",
    "btrfs-progs",
    "lvm2",
    "strace",
    "bpftool",
    "jq",
    "python3",
    "e2fsprogs",
    "util-linux",
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
    "thin-provisioning-tools",
    "rsyslog",
    // The sink tests' JetStream cluster.
    "nats-server",
    // syslog-ng's libraries: the daemon itself conflicts with rsyslog as a package, so it is
    // unpacked beside it (`syslog_ng` below); these are what it links against.
    "libivykis0",
    "libnet1",
    "libjson-c5",
    "libwrap0",
    "libpcre3",
    "libglib2.0-0",
    "auditd",
    // The metrics test: promtool's strict parser and a real server scraping the endpoint.
    "prometheus",
    // pahole: 6.12's kbuild generates BTF for out-of-tree modules (the vm-test ZFS build).
    "dwarves",
    // llvm-objcopy: snapmon's build.rs strips the DWARF from the embedded eBPF object.
    "llvm",
];
/// Packaging and its tests (`cargo xtask package`, tests/tests/package.rs): objcopy/strip and
/// dpkg-shlibdeps for cargo-deb, debootstrap for the clean install root and the systemd guest,
/// systemd for `systemd-analyze security`, buildah/skopeo for the OCI image.
const PACKAGING_PACKAGES: &[&str] = &[
    "binutils",
    "dpkg-dev",
    "debootstrap",
    "systemd",
    "buildah",
    "skopeo",
    // A venv for kubernetes-validate (PyPI), which checks deploy/kubernetes against the schema.
    "python3-venv",
];
/// kubernetes-validate (PyPI; bundles the Kubernetes OpenAPI-derived schemas), pinned.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// cargo-deb, pinned: `cargo xtask package` builds the .deb with it.
const CARGO_DEB_VERSION: &str = "3.8.0";
/// From bookworm-backports: qemu-utils 10 (plain bookworm's qemu-system-x86 7.2 would remove it).
const BACKPORTS: &[&str] = &["qemu-utils", "qemu-system-x86"];
const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/snapmon-backports.list";

pub fn setup() -> anyhow::Result<()> {
    apt()?;
    syslog_ng()?;
    rust_src()?;
    bpf_linker()?;
    cargo_deb()?;
    kubernetes_validate_venv()?;
    mounts()?;
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn qemu_img_major() -> Option<u32> {
    let o = Command::new("qemu-img").arg("--version").output().ok()?;
    let s = String::from_utf8_lossy(&o.stdout);
    s.split("version ").nth(1)?.split('.').next()?.parse().ok()
}

fn apt() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .chain(PACKAGING_PACKAGES)
        .copied()
        .filter(|p| !installed(p))
        .collect();
    let bp_missing =
        BACKPORTS.iter().any(|p| !installed(p)) || qemu_img_major().is_none_or(|v| v < 10);
    if missing.is_empty() && !bp_missing {
        return Ok(());
    }
    println!(
        "setup: installing Debian packages: {missing:?}{}",
        if bp_missing {
            " + qemu from bookworm-backports"
        } else {
            ""
        }
    );
    let has_bp = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|rd| {
            rd.flatten().any(|e| {
                std::fs::read_to_string(e.path()).is_ok_and(|s| s.contains("bookworm-backports"))
            })
        })
        .unwrap_or(false)
        || std::fs::read_to_string("/etc/apt/sources.list")
            .is_ok_and(|s| s.contains("bookworm-backports"));
    if !has_bp {
        std::fs::write(
            BACKPORTS_LIST,
            "deb http://deb.debian.org/debian bookworm-backports main\n",
        )
        .with_context(|| format!("writing {BACKPORTS_LIST} (run as root)"))?;
    }
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        check(&mut c)
    };
    apt(&["update", "-q"])?;
    if bp_missing {
        let mut a = vec!["install", "-y", "-q", "-t", "bookworm-backports"];
        a.extend(BACKPORTS);
        apt(&a)?;
    }
    if !missing.is_empty() {
        let mut a = vec!["install", "-y", "-q"];
        a.extend(&missing);
        apt(&a)?;
    }
    if qemu_img_major().is_none_or(|v| v < 10) {
        bail!(
            "qemu-img 10 is required (bookworm-backports); found {:?}",
            qemu_img_major()
        );
    }
    Ok(())
}

/// Where `syslog_ng` unpacks Debian's syslog-ng-core (the sink tests start it from there).
pub const SYSLOG_NG_ROOT: &str = "/opt/snapmon-test/syslog-ng";

/// A stock syslog-ng for the sink tests, next to rsyslog: Debian's two syslog daemons conflict
/// as packages (both provide `system-log-daemon`), so syslog-ng-core is unpacked, not
/// installed (`dpkg-deb -x`), and run from there with its own module path.
fn syslog_ng() -> anyhow::Result<()> {
    let root = std::path::Path::new(SYSLOG_NG_ROOT);
    if root.join("usr/sbin/syslog-ng").exists() {
        return Ok(());
    }
    println!("setup: unpacking syslog-ng-core into {SYSLOG_NG_ROOT}");
    let tmp = std::env::temp_dir().join(format!("snapmon-setup-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    check(
        Command::new("apt-get")
            .args(["download", "-q", "syslog-ng-core"])
            .current_dir(&tmp),
    )?;
    let deb = std::fs::read_dir(&tmp)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download syslog-ng-core left no .deb")?;
    std::fs::create_dir_all(root)?;
    check(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root))?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn rust_src() -> anyhow::Result<()> {
    let o = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("rustup is required")?;
    if !o.status.success() {
        bail!("no nightly toolchain: the eBPF programs need `nightly` (with rust-src)");
    }
    if !String::from_utf8_lossy(&o.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        println!("setup: adding rust-src to nightly");
        check(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// LLVM major and the nightly's libLLVM file, read from the toolchain (never hard-coded).
fn nightly_llvm() -> anyhow::Result<(String, PathBuf)> {
    let vv = Command::new("rustc")
        .args(["+nightly", "-vV"])
        .output()
        .context("rustc +nightly -vV")?;
    let vv = String::from_utf8_lossy(&vv.stdout).to_string();
    let ver = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("no LLVM version in `rustc +nightly -vV`")?;
    let major = ver.split('.').next().unwrap_or_default().to_string();
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()?;
    let lib = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim()).join("lib");
    let so = std::fs::read_dir(&lib)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            n.starts_with(&format!("libLLVM.so.{major}"))
                || (n.starts_with("libLLVM-")
                    && n.ends_with(".so")
                    && std::fs::metadata(p).is_ok_and(|m| m.len() > 1 << 20))
        })
        .with_context(|| format!("no libLLVM {major} shared library in {}", lib.display()))?;
    Ok((major, so))
}

fn bpf_linker() -> anyhow::Result<()> {
    let (major, so) = nightly_llvm()?;
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let prefix = PathBuf::from(home).join(format!(".local/share/snapmon/llvm-{major}"));
    let stamp = prefix.join("bpf-linker.stamp");
    let want = format!("{}\n", so.display());
    let works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works && std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return Ok(());
    }
    if works && std::env::var_os("SNAPMON_TRUST_BPF_LINKER").is_some() {
        return Ok(());
    }
    println!(
        "setup: building bpf-linker against the nightly's LLVM {major} ({})",
        so.display()
    );
    let libdir = prefix.join("lib");
    std::fs::create_dir_all(&libdir)?;
    let file_name = so.file_name().context("libLLVM file name")?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), file_name] {
        let link = libdir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&so, &link)?;
    }
    check(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                "0.13.0",
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )?;
    std::fs::write(&stamp, want)?;
    Ok(())
}

/// `cargo deb` at the pinned version (built once with `cargo install`, a few minutes).
fn cargo_deb() -> anyhow::Result<()> {
    let have = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if have.ends_with(CARGO_DEB_VERSION) {
        return Ok(());
    }
    println!("setup: installing cargo-deb {CARGO_DEB_VERSION}");
    check(Command::new("cargo").args([
        "install",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
        "--locked",
    ]))
}

/// The kubernetes-validate executable in its venv.
pub fn kubernetes_validate() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".local/share/snapmon/kubernetes-validate/bin/kubernetes-validate")
}

fn kubernetes_validate_venv() -> anyhow::Result<()> {
    let exe = kubernetes_validate();
    let venv = exe.parent().and_then(|b| b.parent()).context("venv dir")?;
    let stamp = venv.join("snapmon.stamp");
    if exe.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == KUBERNETES_VALIDATE) {
        return Ok(());
    }
    println!("setup: {KUBERNETES_VALIDATE} into {}", venv.display());
    // Debian's python3, not a pyenv shim: the venv must outlive shell set-ups.
    check(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(venv),
    )?;
    check(Command::new(venv.join("bin/pip")).args(["install", "-q", KUBERNETES_VALIDATE]))?;
    std::fs::write(stamp, KUBERNETES_VALIDATE)?;
    Ok(())
}

fn mounted(fstype: &str, at: &str) -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            l.split_whitespace().nth(1) == Some(at) && l.split_whitespace().nth(2) == Some(fstype)
        })
    })
}

fn mounts() -> anyhow::Result<()> {
    for (fs, at) in [("tracefs", "/sys/kernel/tracing"), ("bpf", "/sys/fs/bpf")] {
        if !mounted(fs, at) {
            println!("setup: mounting {fs} at {at}");
            check(Command::new("mount").args(["-t", fs, fs, at]))?;
        }
    }
    Ok(())
}
