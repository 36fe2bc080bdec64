//! A clean Debian 12 root (debootstrap, with systemd as init), built once and cached under
//! `target/vm-test/cache/rootfs/`: the package tests install the .deb into an overlay of it on
//! the host, and the systemd guest boots an ext4 image of it (under a throw-away qcow2).

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

use crate::{check, workspace};

/// Bump when the package list or the preparation changes: a new name is a new build.
const NAME: &str = "bookworm-systemd-v1";
/// minbase plus what a systemd host has and the guest tests drive (dd, setpriv: coreutils,
/// util-linux; ps: procps).
const INCLUDE: &str = "systemd,systemd-sysv,kmod,procps";
const MIRROR: &str = "http://deb.debian.org/debian";

fn cache() -> PathBuf {
    workspace().join("target/vm-test/cache/rootfs")
}

/// The pristine root directory (never modified after it is built).
pub fn root() -> anyhow::Result<PathBuf> {
    let dir = cache().join(NAME);
    if dir.join(".done").exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(cache())?;
    let tmp = cache().join(format!(".{NAME}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "rootfs: debootstrap {NAME} (once; cached in {})",
        cache().display()
    );
    let t0 = std::time::Instant::now();
    check(
        Command::new("debootstrap")
            .args([
                "--variant=minbase",
                &format!("--include={INCLUDE}"),
                "bookworm",
            ])
            .arg(&tmp)
            .arg(MIRROR),
    )
    .context("debootstrap (cargo xtask setup installs it)")?;
    // Nothing from the build host leaks in: the root has its own identity.
    std::fs::write(tmp.join("etc/hostname"), "snapmon-guest\n")?;
    let _ = std::fs::remove_file(tmp.join("etc/machine-id"));
    std::fs::write(tmp.join("etc/machine-id"), "")?;
    let _ = std::fs::remove_dir_all(tmp.join("var/cache/apt/archives"));
    std::fs::create_dir_all(tmp.join("var/cache/apt/archives/partial"))?;
    std::fs::write(
        tmp.join(".done"),
        format!("debootstrap {INCLUDE} in {} s\n", t0.elapsed().as_secs()),
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)?;
    println!("rootfs: built in {} s", t0.elapsed().as_secs());
    Ok(dir)
}

/// An ext4 image of the root (raw, sparse), for the systemd guest's disk.
pub fn ext4_image() -> anyhow::Result<PathBuf> {
    let dir = root()?;
    let img = cache().join(format!("{NAME}.ext4"));
    if img.exists() {
        return Ok(img);
    }
    let tmp = cache().join(format!(".{NAME}.ext4.tmp"));
    let _ = std::fs::remove_file(&tmp);
    check(
        Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-L", "snapmon-root", "-d"])
            .arg(&dir)
            .arg(&tmp)
            .arg("3G"),
    )
    .context("mke2fs -d (e2fsprogs)")?;
    std::fs::rename(&tmp, &img)?;
    Ok(img)
}

/// A copy-on-write overlay of the image for one boot: the cached image stays clean.
pub fn overlay(at: &std::path::Path) -> anyhow::Result<()> {
    let base = ext4_image()?;
    let _ = std::fs::remove_file(at);
    let o = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(at)
        .output()
        .context("qemu-img create")?;
    if !o.status.success() {
        bail!(
            "qemu-img create {}: {}",
            at.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}
