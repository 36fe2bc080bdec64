//! Watch set: turns configured paths into the kernel's (dev, inode) and path-hash filters,
//! and keeps the identity → path table that the enrich stage uses to name files.

use std::{
    collections::{HashMap, HashSet},
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Component, Path, PathBuf},
};

use snapmon_common::{dir_flags, fnv1a, FileKey};

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

/// Where the filter entries go: the kernel maps in production, memory in tests.
pub trait WatchMaps {
    fn add_file(&mut self, key: FileKey) -> Result<(), String>;
    fn add_dir(&mut self, key: FileKey, flags: u32) -> Result<(), String>;
    fn add_prefix(&mut self, hash: u64) -> Result<(), String>;
    /// Publish (or with None withdraw) the in-kernel write filter of a classified file.
    fn set_write_filter(
        &mut self,
        _key: FileKey,
        _filter: Option<&snapmon_common::WriteFilter>,
    ) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Default, Debug)]
pub struct MemMaps {
    pub files: HashSet<FileKey>,
    pub dirs: HashMap<FileKey, u32>,
    pub prefixes: HashSet<u64>,
    pub filters: HashMap<FileKey, snapmon_common::WriteFilter>,
}

impl WatchMaps for MemMaps {
    fn add_file(&mut self, key: FileKey) -> Result<(), String> {
        self.files.insert(key);
        Ok(())
    }
    fn add_dir(&mut self, key: FileKey, flags: u32) -> Result<(), String> {
        *self.dirs.entry(key).or_default() |= flags;
        Ok(())
    }
    fn add_prefix(&mut self, hash: u64) -> Result<(), String> {
        self.prefixes.insert(hash);
        Ok(())
    }
    fn set_write_filter(
        &mut self,
        key: FileKey,
        filter: Option<&snapmon_common::WriteFilter>,
    ) -> Result<(), String> {
        match filter {
            Some(f) => self.filters.insert(key, *f),
            None => self.filters.remove(&key),
        };
        Ok(())
    }
}

/// Counts of what a registration put into the filters.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct WatchStats {
    pub roots: usize,
    pub files: usize,
    pub dirs: usize,
    pub skipped: Vec<String>,
    /// Directories not descended into: deeper than the scan depth below their root.
    pub too_deep: usize,
}

/// Limits that keep a registration bounded on a huge or looping tree. The depth is
/// `[agent] scan_depth` (default: as deep as short names reach within PATH_MAX).
pub const DEFAULT_SCAN_DEPTH: usize = 256;
pub const MAX_ENTRIES: usize = 60_000;

/// The userspace half of the watch set.
#[derive(Default)]
pub struct WatchSet {
    /// Canonical roots (files and directories).
    pub roots: Vec<PathBuf>,
    /// Known identities → current path.
    pub paths: HashMap<FileKey, PathBuf>,
    pub dirs: HashSet<FileKey>,
    pub stats: WatchStats,
    /// Directory levels registered below a root or a new directory (None: the default).
    pub scan_depth: Option<usize>,
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

impl WatchSet {
    /// Register `path` (file, dir or device). Missing paths are reported, not fatal.
    pub fn add_root(&mut self, path: &Path, maps: &mut dyn WatchMaps) -> Result<(), String> {
        let canon = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let md = std::fs::metadata(&canon).map_err(|e| format!("{}: {e}", canon.display()))?;
        self.stats.roots += 1;
        // Hash both spellings so either absolute path matches in the kernel.
        for p in [normalize(path), canon.clone()] {
            if p.is_absolute() {
                maps.add_prefix(fnv1a(p.as_os_str().as_bytes()))?;
            }
        }
        // Ancestors: relative multi-component paths starting there may reach the root.
        let mut anc = canon.parent();
        while let Some(a) = anc {
            if let Ok(m) = std::fs::metadata(a) {
                maps.add_dir(key_for(a, &m), dir_flags::ANCESTOR)?;
                self.paths
                    .entry(key_for(a, &m))
                    .or_insert_with(|| a.to_path_buf());
            }
            anc = a.parent();
        }
        self.roots.push(canon.clone());
        if md.is_dir() {
            self.add_tree(&canon, maps, 0)
        } else {
            self.add_file(&canon, &md, maps)
        }
    }

    fn add_file(
        &mut self,
        p: &Path,
        md: &std::fs::Metadata,
        maps: &mut dyn WatchMaps,
    ) -> Result<(), String> {
        let key = key_for(p, md);
        maps.add_file(key)?;
        self.paths.insert(key, p.to_path_buf());
        self.stats.files += 1;
        Ok(())
    }

    /// Register a directory and everything below it (bounded).
    pub fn add_tree(
        &mut self,
        dir: &Path,
        maps: &mut dyn WatchMaps,
        depth: usize,
    ) -> Result<(), String> {
        let md = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let key = key_for(dir, &md);
        if !self.dirs.insert(key) {
            return Ok(()); // already known (bind mount or loop)
        }
        maps.add_dir(key, dir_flags::WATCHED)?;
        self.paths.insert(key, dir.to_path_buf());
        self.stats.dirs += 1;
        let max = self.scan_depth.unwrap_or(DEFAULT_SCAN_DEPTH);
        if depth >= max {
            self.stats.too_deep += 1;
            self.stats
                .skipped
                .push(format!("{}: deeper than {max} levels", dir.display()));
            return Ok(());
        }
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => {
                self.stats.skipped.push(format!("{}: {e}", dir.display()));
                return Ok(());
            }
        };
        for ent in rd.flatten() {
            if self.stats.files + self.stats.dirs >= MAX_ENTRIES {
                self.stats.skipped.push(format!(
                    "{}: more than {MAX_ENTRIES} entries",
                    dir.display()
                ));
                break;
            }
            let p = ent.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                self.add_tree(&p, maps, depth + 1)?;
            } else if !m.file_type().is_symlink() {
                self.add_file(&p, &m, maps)?;
            }
        }
        Ok(())
    }

    /// Is `p` (absolute, normalized) inside a watched root?
    pub fn covers(&self, p: &Path) -> bool {
        self.roots.iter().any(|r| p.starts_with(r))
    }

    /// A path appeared (create, mkdir, rename target): watch it if it lies in a root.
    pub fn observe_new_path(&mut self, p: &Path, maps: &mut dyn WatchMaps) -> Option<FileKey> {
        if !self.covers(p) {
            return None;
        }
        let md = std::fs::symlink_metadata(p).ok()?;
        if md.is_dir() {
            let _ = self.add_tree(p, maps, 0);
        } else if !md.file_type().is_symlink() {
            let _ = self.add_file(p, &md, maps);
        }
        Some(key_for(p, &md))
    }

    pub fn path_of(&self, key: &FileKey) -> Option<&PathBuf> {
        self.paths.get(key)
    }

    /// A name went away (unlink/rmdir): drop every identity known by it.
    pub fn forget_path(&mut self, p: &Path) {
        self.paths.retain(|_, v| v.as_path() != p);
    }

    pub fn learn(&mut self, key: FileKey, p: PathBuf) {
        self.paths.insert(key, p);
    }

    /// A rename or link put identity `key` at `p` (the classifier saw it there): watch it
    /// under that name. After a rename no other identity keeps the name; a link adds one.
    pub fn placed(&mut self, p: &Path, key: (u32, u64), link: bool, maps: &mut dyn WatchMaps) {
        if !self.covers(p) || !std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()) {
            return;
        }
        let k = FileKey {
            dev: key.0,
            _pad: 0,
            ino: key.1,
        };
        if !link {
            self.paths.retain(|kk, v| *kk == k || v.as_path() != p);
        }
        let _ = maps.add_file(k);
        if !(link && self.paths.contains_key(&k)) {
            self.paths.insert(k, p.to_path_buf());
        }
    }

    /// A rename moved `from` to `to`: fix every known path under it.
    pub fn renamed(&mut self, from: &Path, to: &Path) {
        for v in self.paths.values_mut() {
            if let Ok(rest) = v.strip_prefix(from) {
                *v = if rest.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rest)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("snapmon-watch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn registers_tree_ancestors_and_prefix_hashes() {
        let d = tmpdir("tree");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("a.qcow2"), b"x").unwrap();
        std::fs::write(d.join("sub/b.qcow2"), b"y").unwrap();
        let mut maps = MemMaps::default();
        let mut ws = WatchSet::default();
        ws.add_root(&d, &mut maps).unwrap();
        let key = key_of(&std::fs::metadata(d.join("sub/b.qcow2")).unwrap());
        assert!(maps.files.contains(&key));
        assert_eq!(ws.path_of(&key).unwrap(), &d.join("sub/b.qcow2"));
        let dkey = key_of(&std::fs::metadata(&d).unwrap());
        assert_eq!(maps.dirs[&dkey] & dir_flags::WATCHED, dir_flags::WATCHED);
        let root = key_of(&std::fs::metadata("/").unwrap());
        assert_eq!(maps.dirs[&root], dir_flags::ANCESTOR);
        assert!(maps.prefixes.contains(&fnv1a(d.as_os_str().as_bytes())));
        assert!(ws.covers(&d.join("new")));
        assert!(!ws.covers(Path::new("/etc/passwd")));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn trees_deeper_than_sixteen_levels_are_registered_to_the_scan_depth() {
        let d = tmpdir("deep");
        let mut leaf = d.clone();
        for i in 0..20 {
            leaf = leaf.join(format!("l{i}"));
        }
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(leaf.join("vm.qcow2"), b"x").unwrap();
        let key = key_of(&std::fs::metadata(leaf.join("vm.qcow2")).unwrap());
        let mut maps = MemMaps::default();
        let mut ws = WatchSet::default();
        ws.add_root(&d, &mut maps).unwrap();
        assert!(maps.files.contains(&key));
        assert_eq!((ws.stats.too_deep, ws.stats.skipped.len()), (0, 0));
        // A lower depth is honoured, and counted where the agent warns from.
        let mut maps = MemMaps::default();
        let mut ws = WatchSet {
            scan_depth: Some(10),
            ..Default::default()
        };
        ws.add_root(&d, &mut maps).unwrap();
        assert!(!maps.files.contains(&key));
        assert_eq!(ws.stats.too_deep, 1);
        assert!(ws.stats.skipped[0].contains("deeper than 10 levels"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_root_is_an_error_not_a_panic() {
        let mut ws = WatchSet::default();
        let e = ws
            .add_root(Path::new("/nonexistent/snapmon"), &mut MemMaps::default())
            .unwrap_err();
        assert!(e.contains("/nonexistent/snapmon"));
    }

    #[test]
    fn normalizes_and_tracks_renames() {
        assert_eq!(normalize(Path::new("/a/./b//../c")), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/../x")), PathBuf::from("/x"));
        let mut ws = WatchSet::default();
        let k = FileKey {
            dev: 1,
            _pad: 0,
            ino: 2,
        };
        ws.learn(k, PathBuf::from("/s/dir/f"));
        ws.renamed(Path::new("/s/dir"), Path::new("/s/moved"));
        assert_eq!(ws.path_of(&k).unwrap(), Path::new("/s/moved/f"));
    }

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
}
