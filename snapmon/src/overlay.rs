//! Overlayfs side door: overlay mounts whose upper dir holds a store, and the merged-view
//! identities (overlay `st_dev`, inode) the kernel sees for the store's files through them.
//!
//! A write through the merged view reaches the upper file from inside the kernel; the
//! syscall hooks see the overlay inode, which is not in `WATCHED_FILES`. Each such overlay
//! inode of a watched image (and of each watched directory, so creates through the view
//! are seen) goes into the kernel's maps as an alias, and its records are the real file's;
//! paths through the view name the files below the upper dir. Overlays the agent's mount
//! table does not show (other mount namespaces) are caught by the open hook on an image's
//! inode number and confirmed here from the opener's own mount table. Lower layers get no
//! alias: a write through the view copies the file up and leaves the lower file untouched.

use std::{
    collections::HashMap,
    os::unix::{ffi::OsStrExt as _, ffi::OsStringExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use snapmon_common::{dir_flags, FileKey};

use crate::paths::normalize;
use crate::watch::{WatchMaps, WatchSet};

/// The agent's mount table; it signals changes with `POLLPRI`.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// An overlay mount as `/proc/PID/mountinfo` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayMount {
    /// Mount id (field 1): a bind of the same overlay is another mount with the same `dev`.
    pub id: u32,
    /// The overlay superblock's device, kernel encoding (`MAJOR << 20 | MINOR`).
    pub dev: u32,
    /// The directory of the overlay this mount shows (field 4; `/` unless a bind of a subdir).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub upper: Option<PathBuf>,
    /// Lower layers, top first: `lowerdir=` split at `:`, or `lowerdir+=`/`datadir+=`.
    pub lowers: Vec<PathBuf>,
}

/// Why a mountinfo line was not read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MountinfoError {
    #[error("mountinfo line has {0} fields before the separator, at least 6 needed")]
    Short(usize),
    #[error("mountinfo line has no ` - ` separator")]
    NoSeparator,
    #[error("mountinfo line has no filesystem type after the separator")]
    NoFsType,
    #[error("mountinfo mount id {0:?} is not a number")]
    BadId(String),
    #[error("mountinfo device {0:?} is not MAJOR:MINOR")]
    BadDev(String),
}

/// Decode mountinfo's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash, `\054` comma, `\075` equals); any other byte is kept as it is.
pub fn unescape_octal(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let octal =
            |d: &[u8]| (b'0'..=b'3').contains(&d[0]) && d.iter().all(|c| (b'0'..=b'7').contains(c));
        match s.get(i + 1..i + 4) {
            Some(d) if s[i] == b'\\' && octal(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            _ => {
                out.push(s[i]);
                i += 1;
            }
        }
    }
    out
}

fn path_of(b: Vec<u8>) -> PathBuf {
    PathBuf::from(std::ffi::OsString::from_vec(b))
}

/// Split an (unescaped) `lowerdir=` value into layers: `:` separates them, `::` starts the
/// data-only layers, and `\` makes the next byte literal (a `:` in a name).
pub fn split_lowerdir(v: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut it = v.iter();
    while let Some(&c) = it.next() {
        match c {
            b'\\' => {
                if let Some(&n) = it.next() {
                    cur.push(n);
                }
            }
            b':' => {
                if !cur.is_empty() {
                    out.push(path_of(std::mem::take(&mut cur)));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(path_of(cur));
    }
    out
}

/// One mountinfo line: `Ok(None)` for a mount that is not an overlay.
pub fn parse_line(line: &str) -> Result<Option<OverlayMount>, MountinfoError> {
    let (head, tail) = line.split_once(" - ").ok_or(MountinfoError::NoSeparator)?;
    let f: Vec<&str> = head.split(' ').collect();
    if f.len() < 6 {
        return Err(MountinfoError::Short(f.len()));
    }
    let mut t = tail.split(' ');
    let fstype = t
        .next()
        .filter(|s| !s.is_empty())
        .ok_or(MountinfoError::NoFsType)?;
    if fstype != "overlay" {
        return Ok(None);
    }
    let id = f[0]
        .parse::<u32>()
        .map_err(|_| MountinfoError::BadId(f[0].into()))?;
    let bad_dev = || MountinfoError::BadDev(f[2].into());
    let (ma, mi) = f[2].split_once(':').ok_or_else(bad_dev)?;
    let ma = ma.parse::<u32>().map_err(|_| bad_dev())?;
    let mi = mi.parse::<u32>().map_err(|_| bad_dev())?;
    let mut m = OverlayMount {
        id,
        dev: (ma << 20) | (mi & 0xfffff),
        root: path_of(unescape_octal(f[3].as_bytes())),
        mount_point: path_of(unescape_octal(f[4].as_bytes())),
        upper: None,
        lowers: Vec::new(),
    };
    // Source, then the super options (a cut line has none: an overlay with no known layers).
    let opts = t.nth(1).unwrap_or("");
    let mut lower_eq = None;
    let mut lower_plus = Vec::new();
    // The kernel escapes `,` and `=` inside values, so these splits are safe.
    for o in opts.split(',') {
        let (k, v) = o.split_once('=').unwrap_or((o, ""));
        let v = unescape_octal(v.as_bytes());
        match k {
            "upperdir" if !v.is_empty() => m.upper = Some(path_of(v)),
            "lowerdir" => lower_eq = Some(split_lowerdir(&v)),
            "lowerdir+" | "datadir+" if !v.is_empty() => lower_plus.push(path_of(v)),
            _ => {}
        }
    }
    m.lowers = lower_eq.unwrap_or(lower_plus);
    Ok(Some(m))
}

/// Every overlay mount in a mountinfo text, and the lines that could not be read.
pub fn parse(text: &str) -> (Vec<OverlayMount>, Vec<MountinfoError>) {
    let mut mounts = Vec::new();
    let mut errors = Vec::new();
    for l in text.lines().filter(|l| !l.is_empty()) {
        match parse_line(l) {
            Ok(Some(m)) => mounts.push(m),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    (mounts, errors)
}

/// A merged-view identity of a watched file or directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// The file (or directory) in the upper dir.
    pub real: FileKey,
    pub real_path: PathBuf,
    /// Its path through the overlay (as the agent's mount namespace sees it).
    pub merged: PathBuf,
    pub mount_point: PathBuf,
    pub is_dir: bool,
}

/// An overlay over a store, with the aliases made through it.
#[derive(Debug, Clone)]
struct Tracked {
    m: OverlayMount,
    /// The upper dir, canonical (as the watch roots are).
    upper: PathBuf,
    aliases: Vec<FileKey>,
}

/// What a rescan of the mount table changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rescan {
    /// (mount point, upper dir, aliases made) of overlays newly seen over a store.
    pub added: Vec<(PathBuf, PathBuf, usize)>,
    /// Mount points of overlays over a store that went.
    pub removed: Vec<PathBuf>,
    /// Aliases the kernel's file map refused.
    pub refused: usize,
    /// Files and directories found below a new overlay's upper dir that the agent had not
    /// seen made: made through the merged view before the mount table said so (the hooks saw
    /// them on an overlay inode that had no alias yet). Now watched; their shadows want
    /// loading, so their first change diffs against what is there now.
    pub found: Vec<(FileKey, PathBuf)>,
    pub errors: Vec<MountinfoError>,
}

/// Overlay mounts over stores and their merged-view aliases.
#[derive(Debug, Default)]
pub struct Overlays {
    mounts: HashMap<u32, Tracked>,
    /// Overlay mount ids over no store: a mount's layers never change, so they are judged
    /// once (a container host mounts and unmounts overlays all day).
    ignored: std::collections::HashSet<u32>,
    /// Merged-view identity → the real file or directory (tracked and foreign overlays).
    aliases: HashMap<FileKey, Alias>,
}

impl Overlays {
    /// The real file or directory behind a merged-view identity.
    pub fn alias(&self, k: &FileKey) -> Option<&Alias> {
        if self.aliases.is_empty() {
            return None;
        }
        self.aliases.get(k)
    }

    /// The path below the upper dir that `p`, a path through the merged view of a tracked
    /// overlay, names (whether or not it exists there).
    pub fn real_of(&self, p: &Path) -> Option<PathBuf> {
        let t = self
            .mounts
            .values()
            .filter(|t| p.starts_with(&t.m.mount_point))
            .max_by_key(|t| t.m.mount_point.as_os_str().len())?;
        let rel = p.strip_prefix(&t.m.mount_point).ok()?;
        let root = t.m.root.strip_prefix("/").unwrap_or(&t.m.root);
        let mut real = t.upper.clone();
        // Component by component: `join("")` would leave a trailing slash.
        real.extend(root.components().chain(rel.components()));
        Some(real)
    }

    /// Overlays over a store now tracked (mount points).
    pub fn mounts(&self) -> impl Iterator<Item = &Path> {
        self.mounts.values().map(|t| t.m.mount_point.as_path())
    }

    /// Bring the tracked overlays in line with mount table `text`: aliases for overlays new
    /// over a store, none left for those gone (overlayfs refuses new layers on a remount).
    pub fn rescan(&mut self, text: &str, ws: &mut WatchSet, maps: &mut dyn WatchMaps) -> Rescan {
        let (found, errors) = parse(text);
        let mut r = Rescan {
            errors,
            ..Default::default()
        };
        let gone: Vec<u32> = self
            .mounts
            .keys()
            .filter(|id| !found.iter().any(|m| m.id == **id))
            .copied()
            .collect();
        for id in gone {
            if let Some(t) = self.mounts.remove(&id) {
                for k in t.aliases {
                    self.drop_alias(k, ws, maps);
                }
                r.removed.push(t.m.mount_point);
            }
        }
        self.ignored.retain(|id| found.iter().any(|m| m.id == *id));
        for m in found {
            if self.mounts.contains_key(&m.id) || self.ignored.contains(&m.id) {
                continue;
            }
            let upper = m
                .upper
                .as_ref()
                .map(|u| std::fs::canonicalize(u).unwrap_or_else(|_| normalize(u)));
            // A store in the upper dir, or the upper dir in a store.
            let Some(upper) = upper.filter(|u| {
                ws.roots
                    .iter()
                    .any(|root| u.starts_with(root) || root.starts_with(u))
            }) else {
                self.ignored.insert(m.id);
                continue;
            };
            // Namespace changes by absolute path through the view (unlink, rename, mkdir,
            // truncate) reach the syscall hooks' prefix filter too; the agent maps them to
            // the upper dir ([`Overlays::real_of`]).
            let _ = maps.add_prefix(snapmon_common::fnv1a(m.mount_point.as_os_str().as_bytes()));
            let mut t = Tracked {
                m,
                upper,
                aliases: Vec::new(),
            };
            let refused = self.alias_all(&mut t, ws, maps, &mut r.found);
            r.refused += refused;
            r.added
                .push((t.m.mount_point.clone(), t.upper.clone(), t.aliases.len()));
            self.mounts.insert(t.m.id, t);
        }
        r
    }

    /// Alias every watched directory and image under the overlay's upper dir, and watch (and
    /// alias) what is there but was never seen made; returns how many the file map refused.
    fn alias_all(
        &mut self,
        t: &mut Tracked,
        ws: &mut WatchSet,
        maps: &mut dyn WatchMaps,
        found: &mut Vec<(FileKey, PathBuf)>,
    ) -> usize {
        let under = Self::known_under(&t.upper, ws);
        let dirs: Vec<PathBuf> = under
            .iter()
            .filter(|(k, _)| ws.dirs.contains(k))
            .map(|(_, p)| p.clone())
            .collect();
        let mut refused = self.alias_each(t, under, ws, maps);
        // Only now, with the directories aliased (so a create through the view from here on
        // reaches the hooks as one in a watched directory), look for what was made through
        // the view before: an entry on disk the watch set does not name.
        let mut new = Vec::new();
        for d in dirs {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for p in rd.flatten().map(|e| e.path()) {
                if ws.key_at(&p).is_none() && ws.observe_new_path(&p, maps).is_some() {
                    new.extend(Self::known_under(&p, ws));
                }
            }
        }
        found.extend(new.iter().filter(|(k, _)| !ws.dirs.contains(k)).cloned());
        refused += self.alias_each(t, new, ws, maps);
        refused
    }

    /// The watch set's entries at and below `top`.
    fn known_under(top: &Path, ws: &WatchSet) -> Vec<(FileKey, PathBuf)> {
        let mut head = top.as_os_str().as_bytes().to_vec();
        if !head.ends_with(b"/") {
            head.push(b'/');
        }
        let mut under: Vec<(FileKey, PathBuf)> = ws
            .named_with_prefix(&head)
            .map(|(k, p)| (*k, p.clone()))
            .collect();
        if let Some(k) = ws.key_at(top) {
            under.push((k, top.to_path_buf()));
        }
        under
    }

    /// Alias each of `under` through `t`; returns how many the file map refused.
    fn alias_each(
        &mut self,
        t: &mut Tracked,
        under: Vec<(FileKey, PathBuf)>,
        ws: &mut WatchSet,
        maps: &mut dyn WatchMaps,
    ) -> usize {
        let mut refused = 0;
        for (k, p) in under {
            if !ws.covers(&p) {
                continue; // an ancestor of a store, not watched itself
            }
            match self.make_alias(&t.m, &t.upper, k, &p, ws, maps) {
                Some(a) => t.aliases.push(a),
                None if ws.precious.admits(&p) && !ws.dirs.contains(&k) => refused += 1,
                None => {}
            }
        }
        refused
    }

    /// The merged-view path of `real` (below the upper dir) through mount `m`, if it shows it.
    fn merged_path(m: &OverlayMount, upper: &Path, real: &Path) -> Option<PathBuf> {
        let rel = real.strip_prefix(upper).ok()?;
        // A bind of a subdirectory of the overlay shows only what is below its root.
        let root = m.root.strip_prefix("/").unwrap_or(&m.root);
        let rel = rel.strip_prefix(root).ok()?;
        Some(if rel.as_os_str().is_empty() {
            m.mount_point.clone()
        } else {
            m.mount_point.join(rel)
        })
    }

    /// Alias `real` (identity `k`, a watched directory or image) through mount `m`.
    fn make_alias(
        &mut self,
        m: &OverlayMount,
        upper: &Path,
        k: FileKey,
        real: &Path,
        ws: &mut WatchSet,
        maps: &mut dyn WatchMaps,
    ) -> Option<FileKey> {
        let is_dir = ws.dirs.contains(&k);
        // Images and metadata only: an alias of every junk file would take their room.
        if !is_dir && !ws.precious.admits(real) {
            return None;
        }
        let merged = Self::merged_path(m, upper, real)?;
        let md = std::fs::symlink_metadata(&merged).ok()?;
        if md.is_dir() != is_dir || (!is_dir && !md.is_file()) {
            return None;
        }
        // The overlay superblock's device, from the mount table: `stat` may report the
        // lower filesystem's for a non-directory on some layer layouts.
        let alias = FileKey {
            dev: m.dev,
            _pad: 0,
            ino: md.ino(),
        };
        if alias == k || self.aliases.contains_key(&alias) {
            return None;
        }
        if is_dir {
            let meta = if ws.precious.meta_dir(real) {
                dir_flags::METADATA
            } else {
                0
            };
            maps.add_dir(alias, dir_flags::WATCHED | meta).ok()?;
        } else if !ws.watch_alias(alias, None, real, maps) {
            return None;
        }
        self.aliases.insert(
            alias,
            Alias {
                real: k,
                real_path: real.to_path_buf(),
                merged,
                mount_point: m.mount_point.clone(),
                is_dir,
            },
        );
        Some(alias)
    }

    fn drop_alias(&mut self, k: FileKey, ws: &mut WatchSet, maps: &mut dyn WatchMaps) {
        if let Some(a) = self.aliases.remove(&k) {
            if a.is_dir {
                maps.remove_dir(k);
            } else {
                ws.unwatch_alias(k, maps);
            }
        }
    }

    /// A file was just created with merged-view identity `k`: an alias of `k` is a freed
    /// file's, whose inode number the new one got. Dropped, so the new file gets its own.
    pub fn reborn(&mut self, k: FileKey, ws: &mut WatchSet, maps: &mut dyn WatchMaps) {
        if self.aliases.get(&k).is_some_and(|a| !a.is_dir) {
            self.drop_alias(k, ws, maps);
            for t in self.mounts.values_mut() {
                t.aliases.retain(|a| *a != k);
            }
        }
    }

    /// A watched file appeared at `real` (created in a store): alias it through every
    /// tracked overlay whose upper dir holds it.
    pub fn appeared(
        &mut self,
        k: FileKey,
        real: &Path,
        ws: &mut WatchSet,
        maps: &mut dyn WatchMaps,
    ) {
        if self.mounts.is_empty() {
            return;
        }
        let ids: Vec<u32> = self
            .mounts
            .values()
            .filter(|t| real.starts_with(&t.upper))
            .map(|t| t.m.id)
            .collect();
        for id in ids {
            let Some(t) = self.mounts.get(&id).cloned() else {
                continue;
            };
            if let Some(a) = self.make_alias(&t.m, &t.upper, k, real, ws, maps) {
                if let Some(t) = self.mounts.get_mut(&id) {
                    t.aliases.push(a);
                }
            }
        }
    }

    /// A file was opened (created) as `merged`, a path through the merged view of a tracked
    /// overlay, with overlay identity `k`: the real file is below the upper dir, watched and
    /// aliased here. Returns the alias.
    pub fn created(
        &mut self,
        merged: &Path,
        k: FileKey,
        ws: &mut WatchSet,
        maps: &mut dyn WatchMaps,
    ) -> Option<Alias> {
        let real = self.real_of(merged)?;
        let t = self
            .mounts
            .values()
            .filter(|t| t.m.dev == k.dev && merged.starts_with(&t.m.mount_point))
            .max_by_key(|t| t.m.mount_point.as_os_str().len())?
            .clone();
        let id = t.m.id;
        let real_key = ws.observe_new_path(&real, maps)?;
        match self.make_alias(&t.m, &t.upper, real_key, &real, ws, maps) {
            Some(a) => {
                if let Some(t) = self.mounts.get_mut(&id) {
                    t.aliases.push(a);
                }
            }
            // Not an image (no alias of its own): still the real file's, this once; the
            // kernel's entry for the overlay inode (taken at create) goes.
            None if !self.aliases.contains_key(&k) => {
                maps.remove_file(k);
                return Some(Alias {
                    real: real_key,
                    real_path: real,
                    merged: merged.to_path_buf(),
                    mount_point: t.m.mount_point,
                    is_dir: false,
                });
            }
            None => {}
        }
        self.aliases.get(&k).cloned()
    }
}

/// What `/proc/PID` says of a file opened through an overlay: the path used (in the
/// opener's mount namespace), the overlay's mount point there, and the file in its upper dir.
struct Seen {
    used: PathBuf,
    mount_point: PathBuf,
    real: std::fs::Metadata,
}

/// The file behind fd `fd` of `tgid`, on overlay device `dev`, in the opener's own mount
/// namespace. `Err` when the process or its fd is gone; `Ok(None)` when it is not a file of
/// an overlay with an upper dir (a lower layer's file, copied up, is not the image).
fn seen_by(tgid: u32, fd: i32, dev: u32) -> Result<Option<Seen>, ()> {
    let used = std::fs::read_link(format!("/proc/{tgid}/fd/{fd}")).map_err(|_| ())?;
    let text = std::fs::read_to_string(format!("/proc/{tgid}/mountinfo")).map_err(|_| ())?;
    let (mounts, _) = parse(&text);
    let Some(m) = mounts
        .iter()
        .filter(|m| m.dev == dev && used.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
    else {
        return Ok(None);
    };
    let Some(upper) = &m.upper else {
        return Ok(None);
    };
    let rel = used.strip_prefix(&m.mount_point).unwrap_or(Path::new(""));
    let root = m.root.strip_prefix("/").unwrap_or(&m.root);
    let real = upper.join(root).join(rel);
    // Through the opener's root: its mount namespace may show other directories there.
    let via =
        Path::new(&format!("/proc/{tgid}/root")).join(real.strip_prefix("/").unwrap_or(&real));
    match std::fs::metadata(&via) {
        Ok(real) => Ok(Some(Seen {
            used,
            mount_point: m.mount_point.clone(),
            real,
        })),
        Err(_) => Err(()),
    }
}

impl Overlays {
    /// An open for write the kernel took for a merged-view alias of an image by its inode
    /// number alone (`open_watch::OVERLAY`: an overlay the agent has no alias for, in
    /// another mount namespace or mounted a moment ago). Confirmed when the opener's mount
    /// table maps the file to the image in the upper dir; withdrawn when it maps it
    /// elsewhere (a lower layer's image copied up: the image is untouched). When the opener
    /// is gone already, taken as the image's if exactly one image has that number.
    pub fn foreign_open(
        &mut self,
        tgid: u32,
        fd: i32,
        file: FileKey,
        named: &Path,
        ws: &mut WatchSet,
        maps: &mut dyn WatchMaps,
    ) -> Option<Alias> {
        let images: Vec<(FileKey, PathBuf)> = ws
            .known()
            .filter(|(k, p)| {
                k.ino == file.ino
                    && **k != file
                    && !self.aliases.contains_key(k)
                    && !ws.dirs.contains(k)
                    && ws.precious.admits(p)
            })
            .map(|(k, p)| (*k, p.clone()))
            .collect();
        let alias = match seen_by(tgid, fd, file.dev) {
            Ok(Some(seen)) => images
                .iter()
                .find(|(_, p)| {
                    std::fs::metadata(p)
                        .is_ok_and(|md| md.dev() == seen.real.dev() && md.ino() == seen.real.ino())
                })
                .map(|(k, p)| Alias {
                    real: *k,
                    real_path: p.clone(),
                    merged: seen.used.clone(),
                    mount_point: seen.mount_point.clone(),
                    is_dir: false,
                }),
            Ok(None) => None,
            Err(()) if images.len() == 1 => Some(Alias {
                real: images[0].0,
                real_path: images[0].1.clone(),
                merged: named.to_path_buf(),
                mount_point: PathBuf::from("?"),
                is_dir: false,
            }),
            Err(()) => None,
        };
        match alias {
            Some(a) if ws.watch_alias(file, None, &a.real_path, maps) => {
                self.aliases.insert(file, a.clone());
                Some(a)
            }
            _ => {
                maps.remove_file(file);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::MemMaps;

    const OVL: &str = "49 27 0:41 / /srv/merged rw,relatime shared:1 - overlay overlay rw,lowerdir=/srv/lower,upperdir=/srv/upper,workdir=/srv/work,uuid=on";

    #[test]
    fn reads_an_overlay_line() {
        let m = parse_line(OVL).unwrap().unwrap();
        assert_eq!(
            m,
            OverlayMount {
                id: 49,
                dev: 41,
                root: "/".into(),
                mount_point: "/srv/merged".into(),
                upper: Some("/srv/upper".into()),
                lowers: vec!["/srv/lower".into()],
            }
        );
        // Other filesystems are no error, and no overlay.
        assert_eq!(
            parse_line("30 1 8:1 / / rw - ext4 /dev/sda1 rw").unwrap(),
            None
        );
    }

    #[test]
    fn every_cut_of_a_line_is_an_error_or_a_prefix_of_the_truth() {
        let full = parse_line(OVL).unwrap().unwrap();
        for cut in 0..OVL.len() {
            match parse_line(&OVL[..cut]) {
                Err(_) | Ok(None) => {}
                Ok(Some(m)) => {
                    // Cut inside the options: the mount is known, its layers maybe not all,
                    // and what is there is a prefix of the truth (never another path).
                    let head = |a: &Path, b: &Path| {
                        b.as_os_str()
                            .as_bytes()
                            .starts_with(a.as_os_str().as_bytes())
                    };
                    assert_eq!(
                        (m.id, m.dev, &m.root, &m.mount_point),
                        (full.id, full.dev, &full.root, &full.mount_point),
                        "cut {cut}"
                    );
                    if let Some(u) = &m.upper {
                        assert!(head(u, full.upper.as_ref().unwrap()), "cut {cut}");
                    }
                    assert!(m.lowers.len() <= full.lowers.len(), "cut {cut}");
                    for (a, b) in m.lowers.iter().zip(&full.lowers) {
                        assert!(head(a, b), "cut {cut}");
                    }
                }
            }
        }
        assert_eq!(parse_line(""), Err(MountinfoError::NoSeparator));
        assert_eq!(
            parse_line("1 2 0:4 / /m rw - "),
            Err(MountinfoError::NoFsType)
        );
        assert_eq!(
            parse_line("1 2 0:4 / - overlay"),
            Err(MountinfoError::Short(4))
        );
        assert_eq!(
            parse_line("x 2 0:4 / /m rw - overlay o rw"),
            Err(MountinfoError::BadId("x".into()))
        );
        assert_eq!(
            parse_line("1 2 04 / /m rw - overlay o rw"),
            Err(MountinfoError::BadDev("04".into()))
        );
        assert_eq!(
            parse_line("1 2 0:z / /m rw - overlay o rw"),
            Err(MountinfoError::BadDev("0:z".into()))
        );
    }

    #[test]
    fn escapes_in_paths_and_options_are_decoded() {
        let l = r"50 27 0:42 / /srv/my\040merged rw - overlay overlay rw,lowerdir=/a\054b:/c\134\072d,upperdir=/srv/up\040per\075x,workdir=/w";
        let m = parse_line(l).unwrap().unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/srv/my merged"));
        assert_eq!(m.upper, Some(PathBuf::from("/srv/up per=x")));
        // `\134` is the backslash the user typed to keep `:` in a name.
        assert_eq!(m.lowers, vec![PathBuf::from("/a,b"), PathBuf::from("/c:d")]);
        assert_eq!(unescape_octal(br"\040\011\012\134"), b" \t\n\\");
        // Not an escape: kept as it is (digits out of range, or cut short).
        assert_eq!(unescape_octal(br"\8\400\04"), br"\8\400\04");
    }

    #[test]
    fn several_lower_layers_data_layers_and_the_new_style_options() {
        assert_eq!(
            split_lowerdir(b"/l1:/l2::/d1"),
            vec![PathBuf::from("/l1"), "/l2".into(), "/d1".into()]
        );
        assert!(split_lowerdir(b"").is_empty());
        let l = r"51 27 0:43 / /m rw - overlay overlay rw,lowerdir+=/l1,lowerdir+=/l\0542,datadir+=/d,upperdir=/u,workdir=/w";
        let m = parse_line(l).unwrap().unwrap();
        assert_eq!(
            m.lowers,
            vec![PathBuf::from("/l1"), "/l,2".into(), "/d".into()]
        );
        assert_eq!(m.upper, Some("/u".into()));
        // Read-only overlay (no upper dir): lower layers only.
        let m = parse_line("52 27 0:44 / /ro ro - overlay overlay ro,lowerdir=/a:/b")
            .unwrap()
            .unwrap();
        assert_eq!((m.upper, m.lowers.len()), (None, 2));
    }

    #[test]
    fn a_text_gives_its_overlays_and_its_bad_lines() {
        let t = format!("30 1 8:1 / / rw - ext4 /dev/sda1 rw\n{OVL}\ngarbage\n\n");
        let (m, e) = parse(&t);
        assert_eq!(m.len(), 1);
        assert_eq!(e, vec![MountinfoError::NoSeparator]);
    }

    #[test]
    fn paths_through_a_tracked_view_map_to_the_upper_dir() {
        let mut ws = WatchSet::default();
        ws.roots = vec![PathBuf::from("/srv/store")];
        let mut maps = MemMaps::default();
        let mut o = Overlays::default();
        let line = OVL.replace("upperdir=/srv/upper", "upperdir=/srv/store");
        o.rescan(&line, &mut ws, &mut maps);
        assert!(maps
            .prefixes
            .contains(&snapmon_common::fnv1a(b"/srv/merged")));
        assert_eq!(
            o.real_of(Path::new("/srv/merged/a/v.qcow2")),
            Some("/srv/store/a/v.qcow2".into())
        );
        assert_eq!(
            o.real_of(Path::new("/srv/merged")),
            Some("/srv/store".into())
        );
        assert_eq!(o.real_of(Path::new("/srv/merged2/v.qcow2")), None);
        assert_eq!(o.real_of(Path::new("/elsewhere")), None);
    }

    #[test]
    fn a_bind_of_a_subdir_maps_only_what_is_below_its_root() {
        let mut m = parse_line(OVL).unwrap().unwrap();
        let up = Path::new("/srv/upper");
        assert_eq!(
            Overlays::merged_path(&m, up, Path::new("/srv/upper/a/v.qcow2")),
            Some("/srv/merged/a/v.qcow2".into())
        );
        assert_eq!(
            Overlays::merged_path(&m, up, up),
            Some("/srv/merged".into())
        );
        m.root = "/a".into();
        assert_eq!(
            Overlays::merged_path(&m, up, Path::new("/srv/upper/a/v.qcow2")),
            Some("/srv/merged/v.qcow2".into())
        );
        assert_eq!(
            Overlays::merged_path(&m, up, Path::new("/srv/upper/b/w.qcow2")),
            None
        );
        assert_eq!(
            Overlays::merged_path(&m, up, Path::new("/elsewhere/x")),
            None
        );
    }

    /// The bookkeeping of mounts (aliases need a real overlay, hence root: the e2e suite
    /// `tests/tests/overlay.rs` makes them).
    #[test]
    fn overlays_not_over_a_store_are_ignored_and_gone_ones_dropped() {
        let mut ws = WatchSet::default();
        ws.roots = vec![PathBuf::from("/srv/store")];
        let mut maps = MemMaps::default();
        let mut o = Overlays::default();
        let r = o.rescan(OVL, &mut ws, &mut maps);
        assert!(r.added.is_empty() && o.mounts().next().is_none());
        // Another mount (a mount's layers never change: id 49 is not looked at again).
        let over = OVL
            .replace("49 27", "50 27")
            .replace("upperdir=/srv/upper", "upperdir=/srv/store/up");
        assert_eq!(o.rescan(OVL, &mut ws, &mut maps), Rescan::default());
        assert!(o.ignored.contains(&49));
        let r = o.rescan(&over, &mut ws, &mut maps);
        assert_eq!(
            r.added,
            vec![("/srv/merged".into(), "/srv/store/up".into(), 0)]
        );
        // Seen again: nothing new.
        assert_eq!(o.rescan(&over, &mut ws, &mut maps), Rescan::default());
        let r = o.rescan("", &mut ws, &mut maps);
        assert_eq!(r.removed, vec![PathBuf::from("/srv/merged")]);
    }

    /// The mount table trails the mount: an image made through the view before the rescan
    /// left no record the agent could see (its create hit an overlay inode with no alias).
    /// The rescan finds it below the upper dir and watches it, its directories' contents too.
    #[test]
    fn what_was_made_before_the_rescan_is_found_and_watched() {
        let t = crate::testutil::TmpDir::new("ovl-found");
        let store = std::fs::canonicalize(&*t).unwrap().join("store");
        std::fs::create_dir_all(&store).unwrap();
        let mut ws = WatchSet::default();
        let mut maps = MemMaps::default();
        ws.add_root(&store, &mut maps).unwrap();
        std::fs::write(store.join("made.qcow2"), b"QFI\xfb").unwrap();
        std::fs::create_dir(store.join("sub")).unwrap();
        std::fs::write(store.join("sub/deep.qcow2"), b"QFI\xfb").unwrap();
        std::fs::write(store.join("notes.txt"), b"junk").unwrap();
        assert!(ws.key_at(&store.join("made.qcow2")).is_none());
        let line = OVL.replace(
            "upperdir=/srv/upper",
            &format!("upperdir={}", store.display()),
        );
        let mut o = Overlays::default();
        let r = o.rescan(&line, &mut ws, &mut maps);
        assert_eq!(r.added.len(), 1, "{r:?}");
        let mut found: Vec<PathBuf> = r.found.iter().map(|(_, p)| p.clone()).collect();
        found.sort();
        // Every file, as a store's are at the start (ordinary ones within their share).
        assert_eq!(
            found,
            vec![
                store.join("made.qcow2"),
                store.join("notes.txt"),
                store.join("sub/deep.qcow2")
            ]
        );
        for (k, p) in &r.found {
            assert_eq!(ws.key_at(p), Some(*k));
            assert!(maps.has_file(*k), "{} not in the file map", p.display());
        }
        // Seen again: nothing new is found.
        assert!(o.rescan(&line, &mut ws, &mut maps).found.is_empty());
    }
}
