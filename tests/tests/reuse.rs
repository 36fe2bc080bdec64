//! A reused inode number is never judged as the freed watched file (#14 item 7): an image
//! deleted by a route the agent does not see as an unlink of its name (here a symlinked
//! directory) leaves its (dev, ino) in the kernel's watch map; the next file with that number
//! is another inode generation and is not watched. The images themselves still alert, on
//! ext4 and tmpfs, whether the agent's scan or the kernel's open hook watched them.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use serde_json::Value;
use snapmon_e2e::{agent_with, as_nobody, line, nobody_py, python, run, Agent, Expect};

fn sh(cmd: &str) {
    let st = Command::new("bash").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An ext4 small enough to hand a freed inode number to the next file (without checksums,
/// which refuse `chattr -v`), and a tmpfs; each
/// with a watched `store` (images made before the agent started in it) and an open `out`.
struct Fs {
    base: PathBuf,
    ext4: PathBuf,
    tmpfs: PathBuf,
}

static FS: OnceLock<Fs> = OnceLock::new();

extern "C" fn unmount_at_exit() {
    if let Some(fs) = FS.get() {
        for m in [&fs.ext4, &fs.tmpfs] {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        let _ = std::fs::remove_dir_all(&fs.base);
    }
}

/// A qcow2 image with one internal snapshot.
fn qcow2(img: &Path) {
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(img), "16M"]);
    run("qemu-img", &["snapshot", "-c", "s1", s(img)]);
}

const BEFORE: [&str; 2] = ["pre-gone.qcow2", "pre-kept.qcow2"];

/// Appended to by [`barrier`]; made with the images, before the agent starts.
const BARRIER: &str = "barrier.img";

fn fs() -> (&'static Fs, std::sync::MutexGuard<'static, Agent>) {
    let fs = FS.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("snapmon-reuse-{}", std::process::id()));
        let (ext4, tmpfs) = (base.join("ext4"), base.join("tmpfs"));
        std::fs::create_dir_all(&ext4).unwrap();
        std::fs::create_dir_all(&tmpfs).unwrap();
        let img = base.join("fs.img");
        sh(&format!(
            "truncate -s 32M {0} && mkfs.ext4 -q -F -N 64 -O ^metadata_csum {0} && mount -o loop {0} {1} && mount -t tmpfs -o size=64M tmpfs {2}",
            s(&img),
            s(&ext4),
            s(&tmpfs)
        ));
        unsafe { libc::atexit(unmount_at_exit) };
        for m in [&ext4, &tmpfs] {
            std::fs::create_dir_all(m.join("store")).unwrap();
            std::fs::create_dir_all(m.join("out")).unwrap();
            sh(&format!("chmod 1777 {}", s(&m.join("out"))));
            for name in BEFORE {
                qcow2(&m.join("store").join(name));
            }
            std::fs::write(m.join("store").join(BARRIER), b"").unwrap();
        }
        // An image's first cluster, with its snapshot, for nobody to copy.
        qcow2(&ext4.join("out/header.qcow2"));
        Fs { base, ext4, tmpfs }
    });
    let a = agent_with(&[fs.ext4.join("store"), fs.tmpfs.join("store")]);
    (fs, a)
}

/// Everything since `mark` by processes `pids`, naming `path`, or about inode `ino` by
/// anything but qemu-img (whose late records of the image itself may still come).
fn about_any(a: &mut Agent, mark: u64, pids: &[u32], ino: u64, path: &Path) -> Vec<Value> {
    let ino = ino.to_string();
    a.since(mark)
        .into_iter()
        .filter(|v| {
            pids.iter().any(|p| v["process"]["pid"] == *p)
                || v.to_string().contains(s(path))
                || (v["file"]["inode"].as_str() == Some(&ino) && v["process"]["name"] != "qemu-img")
        })
        .collect()
}

/// A write the agent must report, after everything before it: what it did not report by
/// then it will not. To a file made at setup: a new one would take the freed inode number
/// the test waits to see reused.
fn barrier(a: &mut Agent, store: &Path) {
    let f = store.join(BARRIER);
    let mark = a.mark();
    let r = python(&format!("open('{}', 'ab').write(b'x')", s(&f)));
    a.expect(
        Expect::event("write").pid(r.pid).path(&f).since(mark),
        Duration::from_secs(20),
    );
}

/// Delete watched image `img` through a symlink to its store, which no hook matches as a
/// watched name; have nobody create files in `out` until one gets its inode number, make
/// it an image and hide its snapshot. Nothing may be said about it.
fn freed_unseen_then_reused(a: &mut Agent, mnt: &Path, img: &Path, tag: &str) {
    let ino = std::fs::metadata(img).unwrap().ino();
    let via = mnt.join(format!("via-{tag}"));
    std::os::unix::fs::symlink(mnt.join("store"), &via).unwrap();
    run("rm", &[s(&via.join(img.file_name().unwrap()))]);
    // The mark goes after the delete's own records (where a hook sees it) and before the
    // touches: theirs count too (touch sets the times of the file it made), however late.
    barrier(a, &mnt.join("store"));
    let mark = a.mark();
    let out = mnt.join("out");
    let mut reused = None;
    for i in 0..32 {
        let f = out.join(format!("{tag}-{i}.qcow2"));
        as_nobody("touch", &[s(&f)]);
        if std::fs::metadata(&f).unwrap().ino() == ino {
            reused = Some(f);
            break;
        }
    }
    let f = reused.unwrap_or_else(|| panic!("inode {ino} not reused in 32 files"));
    // Make it an image, then hide its snapshot: SM-Q002 had the old image been watched.
    let made = nobody_py(&format!(
        "d = open('{}', 'rb').read(65536); f = open('{}', 'r+b'); f.write(d); f.flush()",
        s(&out.join("header.qcow2")),
        s(&f)
    ));
    let hid = nobody_py(&format!(
        "import os; fd = os.open('{}', os.O_RDWR); os.pwrite(fd, (0).to_bytes(4, 'big'), 60)",
        s(&f)
    ));
    barrier(a, &mnt.join("store"));
    let said = about_any(a, mark, &[made.pid, hid.pid], ino, &f);
    assert!(
        said.is_empty(),
        "nobody's file {} (inode {ino} of the freed {}) was judged as the image:\n{}",
        f.display(),
        img.display(),
        said.iter().map(line).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn an_image_the_scan_watched_freed_unseen_lends_its_inode_to_nobody_unjudged() {
    let (fs, mut a) = fs();
    let img = fs.ext4.join("store").join(BEFORE[0]);
    freed_unseen_then_reused(&mut a, &fs.ext4, &img, "scanned");
}

#[test]
fn an_image_the_kernel_watched_freed_unseen_lends_its_inode_to_nobody_unjudged() {
    let (fs, mut a) = fs();
    let img = fs.ext4.join("store").join("made.qcow2");
    let mark = a.mark();
    qcow2(&img);
    // The kernel watched it at create: the snapshot's header write is reported.
    a.expect(
        Expect::any_event()
            .path(&img)
            .change("nb_snapshots", "1")
            .since(mark),
        Duration::from_secs(20),
    );
    freed_unseen_then_reused(&mut a, &fs.ext4, &img, "made");
}

/// Drop `img`'s snapshot count to 0 (root, not qemu): SM-Q002 must still fire.
fn hide_snapshots(a: &mut Agent, img: &Path) {
    let mark = a.mark();
    let r = python(&format!(
        "import os; fd = os.open('{}', os.O_RDWR); os.pwrite(fd, (0).to_bytes(4, 'big'), 60)",
        s(img)
    ));
    a.expect(
        Expect::alert("SM-Q002").pid(r.pid).path(img).since(mark),
        Duration::from_secs(20),
    );
}

#[test]
fn images_on_ext4_and_tmpfs_still_alert_whoever_watched_them() {
    let (fs, mut a) = fs();
    for mnt in [&fs.ext4, &fs.tmpfs] {
        let store = mnt.join("store");
        // Watched by the agent's scan (its generation from FS_IOC_GETVERSION, or none).
        hide_snapshots(&mut a, &store.join(BEFORE[1]));
        // Watched by the kernel at create (its generation read in the open hook).
        let made = store.join("fresh.qcow2");
        let mark = a.mark();
        qcow2(&made);
        a.expect(
            Expect::any_event().write().path(&made).since(mark),
            Duration::from_secs(20),
        );
        hide_snapshots(&mut a, &made);
    }
}

/// The owner can give an inode a new generation (`chattr -v`, `FS_IOC_SETVERSION`): the
/// file stays watched, and hiding its snapshots after that still alerts.
#[test]
fn a_generation_changed_by_its_owner_does_not_unwatch_the_image() {
    let (fs, mut a) = fs();
    let img = fs.ext4.join("store/renumbered.qcow2");
    let mark = a.mark();
    qcow2(&img);
    a.expect(
        Expect::any_event().write().path(&img).since(mark),
        Duration::from_secs(20),
    );
    run("chattr", &["-v", "12345", s(&img)]);
    hide_snapshots(&mut a, &img);
}
