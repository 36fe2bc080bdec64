//! Real images from the installed qemu-img, in per-test temp dirs.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
pub use crate::testutil::TmpDir;

/// `tool ARGS` as it ran, whatever its exit status; a missing tool fails the test saying which
/// package these tests need.
pub fn tool_output(tool: &str, args: &[&str]) -> std::process::Output {
    Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("`{tool}` is required by these tests (apt-get install qemu-utils) but could not run: {e}")
    })
}

fn run(tool: &str, args: &[&str]) -> String {
    let out = tool_output(tool, args);
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn qemu_img(args: &[&str]) -> String {
    run("qemu-img", args)
}

/// `qemu-img rebase -u -F qcow2 -b BACKING IMG`: only the header changes.
pub fn rebase_unsafe(img: &str, backing: &str) {
    qemu_img(&["rebase", "-u", "-F", "qcow2", "-b", backing, img]);
}

pub fn qemu_io(img: &str, cmd: &str) {
    run("qemu-io", &["-f", "qcow2", "-c", cmd, img]);
}

pub fn info(p: &Path) -> serde_json::Value {
    serde_json::from_str(&qemu_img(&[
        "info",
        "--output=json",
        "-U",
        &p.display().to_string(),
    ]))
    .expect("qemu-img info json")
}

pub fn load(p: &Path) -> Qcow2Image {
    Qcow2Image::read_from(&mut std::fs::File::open(p).unwrap()).unwrap()
}

pub fn shadow(p: &Path) -> Qcow2Shadow {
    Qcow2Shadow::load(&mut std::fs::File::open(p).unwrap()).unwrap()
}

pub fn patch(p: &Path, off: u64, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(bytes).unwrap();
}

/// v3 image with guest data (so L2 tables exist) and two snapshots.
pub fn image_with_snapshots(d: &TmpDir, name: &str, extra: &[&str]) -> PathBuf {
    let p = d.s(name);
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[&p, "64M"]);
    qemu_img(&args);
    qemu_io(&p, "write -P 0xab 0 128k");
    qemu_img(&["snapshot", "-c", "s1", &p]);
    qemu_io(&p, "write -P 0xcd 32M 64k");
    qemu_img(&["snapshot", "-c", "s2", &p]);
    d.path(name)
}

/// 4 KiB-cluster image whose metadata all fits in its first 64 KiB:
/// backing name, two snapshots, a bitmap.
pub fn small_seed_image(d: &TmpDir) -> PathBuf {
    let p = d.s("seed.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &d.s("base.qcow2"), "16M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        &p,
        "16M",
    ]);
    qemu_io(&p, "write -P 0xab 0 4k");
    qemu_img(&["snapshot", "-c", "s1", &p]);
    qemu_io(&p, "write -P 0xcd 8M 4k");
    qemu_img(&["snapshot", "-c", "s2", &p]);
    d.path("seed.qcow2")
}

pub struct XorShift(pub u64);
impl XorShift {
    #[allow(
        clippy::should_implement_trait,
        reason = "a test RNG that never ends, not an iterator"
    )]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
