//! `cargo xtask image`: the OCI image (deploy/container/Containerfile) with the .deb's binary
//! and conffile on Debian 12's glibc, built by buildah from Debian (vfs storage, chroot
//! isolation, no daemon, no registry) into `target/oci/snapmon-<version>.oci.tar`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::{check, workspace};

pub fn image() -> anyhow::Result<PathBuf> {
    build(&crate::package::package()?)
}

/// The image of an already built package.
pub fn build(built: &crate::package::Built) -> anyhow::Result<PathBuf> {
    let root = crate::rootfs::root()?;
    let oci = workspace().join("target/oci");
    let ctx = oci.join("context");
    let _ = std::fs::remove_dir_all(&ctx);
    let rootfs = ctx.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    println!("== image: staging {}", rootfs.display());
    check(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&built.deb)
            .arg(&rootfs),
    )?;
    // Only what runs: the binary and the policy (no unit, man pages or completions).
    for d in ["usr/share", "usr/lib/systemd"] {
        let _ = std::fs::remove_dir_all(rootfs.join(d));
    }
    for d in ["tmp", "var/log/snapmon", "etc/snapmon/policy"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    // The libraries the binary links, from the clean Debian 12 root (not this host's).
    for lib in linked_libraries(&rootfs.join("usr/sbin/snapmon"))? {
        let rel = lib.strip_prefix("/").unwrap_or(&lib);
        let src = resolve_in(&root, &lib)
            .with_context(|| format!("{} in {}", lib.display(), root.display()))?;
        let dst = rootfs.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap())?;
        std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
    }
    let version = package_version(&built.deb)?;
    let commit = commit();
    let epoch = commit_epoch().unwrap_or(0);
    let tag = format!(
        "localhost/snapmon:{}",
        version.split('-').next().unwrap_or(&version)
    );
    let archive = oci.join(format!("snapmon-{version}.oci.tar"));
    let storage = |c: &mut Command| {
        c.arg("--root")
            .arg(oci.join("storage"))
            .arg("--runroot")
            .arg(oci.join("run"))
            .args(["--storage-driver", "vfs"]);
    };
    println!("== image: buildah bud {tag}");
    let mut b = Command::new("buildah");
    storage(&mut b);
    b.args([
        "bud",
        "--isolation",
        "chroot",
        "--layers=false",
        "--format",
        "oci",
    ])
    .arg("--timestamp")
    .arg(epoch.to_string())
    .arg("--label")
    .arg(format!("org.opencontainers.image.version={version}"))
    .arg("--label")
    .arg(format!("org.opencontainers.image.revision={commit}"))
    .arg("-f")
    .arg(workspace().join("deploy/container/Containerfile"))
    .args(["-t", &tag])
    .arg(&ctx);
    check(&mut b).context("buildah bud (cargo xtask setup installs buildah)")?;
    let _ = std::fs::remove_file(&archive);
    let mut p = Command::new("buildah");
    storage(&mut p);
    p.args(["push", &tag])
        .arg(format!("oci-archive:{}:{tag}", archive.display()));
    check(&mut p)?;
    println!(
        "image: {} ({:.1} MiB)",
        archive.display(),
        std::fs::metadata(&archive)?.len() as f64 / (1 << 20) as f64
    );
    Ok(archive)
}

/// `ldd`'s resolved paths for `bin` (the dynamic loader included).
fn linked_libraries(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let o = Command::new("ldd").arg(bin).output().context("ldd")?;
    if !o.status.success() {
        bail!(
            "ldd {}: {}",
            bin.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let mut v = vec![];
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        let l = l.trim();
        let path = match l.split_once(" => ") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => l.split_whitespace().next().filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            v.push(PathBuf::from(p));
        }
    }
    if v.is_empty() {
        bail!("ldd named no libraries for {}", bin.display());
    }
    Ok(v)
}

/// Follow `path`'s symlinks inside `root` (absolute links are relative to `root`).
fn resolve_in(root: &Path, path: &Path) -> std::io::Result<PathBuf> {
    let mut p = root.join(path.strip_prefix("/").unwrap_or(path));
    for _ in 0..40 {
        match std::fs::read_link(&p) {
            Ok(t) if t.is_absolute() => p = root.join(t.strip_prefix("/").unwrap()),
            Ok(t) => p = p.parent().unwrap().join(t),
            Err(_) => break,
        }
    }
    Ok(p)
}

fn package_version(deb: &Path) -> anyhow::Result<String> {
    let o = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(deb)
        .arg("Version")
        .output()?;
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn commit() -> String {
    Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(workspace())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The commit's time: the image's timestamps, so a rebuild of one commit is the same image.
fn commit_epoch() -> Option<u64> {
    let o = Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(workspace())
        .output()
        .ok()?;
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}
