//! File identity and path helpers shared by every layer: the kernel's dev_t encoding, the
//! superblock device of a path (btrfs subvolumes), lexical normalization. No state, no config.

use std::{
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

use snapmon_common::FileKey;

/// Kernel-internal dev_t (`MAJOR << 20 | MINOR`) from a userspace `st_dev`.
pub fn kernel_dev(st_dev: u64) -> u32 {
    let (ma, mi) = (libc::major(st_dev), libc::minor(st_dev));
    (ma << 20) | (mi & 0xfffff)
}

/// `MAJOR:MINOR` for display from a kernel dev_t.
pub fn dev_display(kdev: u32) -> String {
    format!("{}:{}", kdev >> 20, kdev & 0xfffff)
}

pub fn key_of(md: &std::fs::Metadata) -> FileKey {
    FileKey {
        dev: kernel_dev(md.dev()),
        _pad: 0,
        ino: md.ino(),
    }
}

/// Identity as the kernel sees it (`inode->i_sb->s_dev`). `stat` reports a per-subvolume
/// anonymous device on btrfs, so for anonymous devices (major 0) the superblock's device is
/// taken from the mount that holds `path` (mountinfo's MAJOR:MINOR is `sb->s_dev`).
pub fn key_for(path: &Path, md: &std::fs::Metadata) -> FileKey {
    let mut k = key_of(md);
    if libc::major(md.dev()) == 0 {
        if let Some(dev) = sb_dev_of(path) {
            k.dev = dev;
        }
    }
    k
}

/// Filesystems whose `FS_IOC_GETVERSION` is the inode's `i_generation` (`statfs` magics):
/// ext2/3/4, XFS, btrfs.
const GENERATION_FS: [i64; 3] = [0xef53, 0x5846_5342, 0x9123_683e];

/// The `i_generation` of the regular file at `p` (`FS_IOC_GETVERSION`), when it is still
/// identity `k`: with (dev, ino) it tells a file from a later one that reuses its inode
/// number. `None` where the filesystem does not tell it (tmpfs, overlayfs) or `p` is not
/// that regular file now.
///
/// Only a regular file is ever opened for reading: `p` is first held by an `O_PATH` fd, which
/// runs no driver's open. Opening a watched block device (an LV's node) would raise its open
/// count, and lvremove or a thin activation then finds the LV busy and gives up.
pub fn generation_of(p: &Path, k: FileKey) -> Option<u32> {
    use std::os::{fd::AsRawFd, unix::fs::OpenOptionsExt};
    let held = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(p)
        .ok()?;
    let md = held.metadata().ok()?;
    if !md.is_file() || key_for(p, &md) != k {
        return None;
    }
    // The same inode, reopened for the ioctl (an O_PATH fd takes none).
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{}", held.as_raw_fd()))
        .ok()?;
    // Only where the ioctl is the inode's own `i_generation`, which the kernel compares: a
    // FUSE server may answer it with anything, and a wrong one would blind the watch.
    // SAFETY: fstatfs fills the zeroed struct it is given.
    let mut sf: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut sf) } != 0
        || !GENERATION_FS.contains(&(sf.f_type as i64))
    {
        return None;
    }
    // The kernel stores an int through the `long *` the number is declared with.
    let mut g: libc::c_long = 0;
    // SAFETY: FS_IOC_GETVERSION writes at most a `long` to the pointer given.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETVERSION, &mut g) };
    (r == 0).then_some(g as u32)
}

/// Mount points and their superblock devs, longest first (read once).
fn mounts() -> &'static [(PathBuf, u32)] {
    static M: std::sync::OnceLock<Vec<(PathBuf, u32)>> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut v = parse_mountinfo(&text);
        // Of mounts stacked on one point the last listed is the one visible: it must win
        // the (stable) sort, or a tmpfs mounted over /dev/shm gets the hidden one's device.
        v.reverse();
        v.sort_by_key(|(p, _)| std::cmp::Reverse(p.as_os_str().len()));
        v
    })
}

/// `(mount point, MAJOR<<20|MINOR)` per mountinfo line; octal escapes (`\040`) decoded.
pub fn parse_mountinfo(text: &str) -> Vec<(PathBuf, u32)> {
    use std::os::unix::ffi::OsStringExt;
    let unescape = |s: &str| {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let octal = b
                .get(i + 1..i + 4)
                .is_some_and(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
            if b[i] == b'\\' && octal {
                out.push(
                    (b[i + 1] - b'0')
                        .wrapping_mul(64)
                        .wrapping_add((b[i + 2] - b'0') * 8 + (b[i + 3] - b'0')),
                );
                i += 4;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        PathBuf::from(std::ffi::OsString::from_vec(out))
    };
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_id, _parent, mm, _root, mp) =
                (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            let (ma, mi) = mm.split_once(':')?;
            let dev = (ma.parse::<u32>().ok()? << 20) | (mi.parse::<u32>().ok()? & 0xfffff);
            Some((unescape(mp), dev))
        })
        .collect()
}

fn sb_dev_of(path: &Path) -> Option<u32> {
    let p = std::fs::canonicalize(path).ok()?;
    mounts()
        .iter()
        .find(|(mp, _)| p.starts_with(mp))
        .map(|(_, d)| *d)
}

/// Lexically normalize an absolute path (`.`/`..`/`//`), without touching the filesystem.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(s) => out.push(s),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_gives_superblock_devs_with_escapes() {
        let t = "29 1 0:26 / /srv/snap\\040store rw - btrfs /dev/vdb rw\n30 1 8:1 / / rw - ext4 /dev/sda1 rw\n";
        let m = parse_mountinfo(t);
        assert_eq!(m[0], (PathBuf::from("/srv/snap store"), 26));
        assert_eq!(m[1], (PathBuf::from("/"), (8 << 20) | 1));
        assert!(parse_mountinfo("garbage\n\n1 2 x:y / /").is_empty());
    }

    #[test]
    fn kernel_dev_encoding() {
        let st = libc::makedev(8, 1);
        assert_eq!(kernel_dev(st), (8 << 20) | 1);
        assert_eq!(dev_display((8 << 20) | 1), "8:1");
    }

    /// The generation is read from the file the key names, never from what replaced it or
    /// a symlink to it.
    #[test]
    fn generation_of_reads_only_the_file_the_key_names() {
        use std::os::fd::AsRawFd;
        let d = std::env::temp_dir().join(format!("snapmon-gen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let (f, g, l) = (d.join("f"), d.join("g"), d.join("l"));
        std::fs::write(&f, b"x").unwrap();
        std::fs::write(&g, b"y").unwrap();
        std::os::unix::fs::symlink(&f, &l).unwrap();
        let key = |p: &Path| key_for(p, &std::fs::metadata(p).unwrap());
        let file = std::fs::File::open(&f).unwrap();
        let mut want: libc::c_long = 0;
        // SAFETY: FS_IOC_GETVERSION writes at most a `long`.
        let ok = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETVERSION, &mut want) } == 0;
        assert_eq!(generation_of(&f, key(&f)), ok.then_some(want as u32));
        assert_eq!(generation_of(&g, key(&f)), None, "another file at the name");
        assert_eq!(
            generation_of(&l, key(&f)),
            None,
            "a symlink is not followed"
        );
        assert_eq!(generation_of(&d, key(&d)), None, "not a regular file");
        let _ = std::fs::remove_dir_all(&d);
    }
}
