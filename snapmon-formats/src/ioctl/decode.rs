//! The entry point: which decoder a cmd goes to.

use std::fmt;

use super::btrfs::{decode_btrfs, BTRFS_IOCTL_TYPE};
use super::dm::{decode_dm, DmIoctl, DmMessageKind, DM_IOCTL_TYPE, DM_NAMES};
use super::file::decode_file;
use super::info::{IoctlDetail, IoctlInfo};
use super::ioc::IocSplit;
use super::loopdev::decode_loop;
use super::raw::read_cstr;
use super::zfs::{zfs_name, ZFS_DESTRUCTIVE, ZFS_MAXNAMELEN};
use crate::Format;

/// Decode an ioctl from its cmd and the captured argument bytes.
pub fn decode_ioctl(cmd: u32, arg: &[u8]) -> IoctlInfo {
    let mut truncated = false;
    // Exact file ioctls first: FICLONE/FICLONERANGE/FIDEDUPERANGE share
    // btrfs's 0x94 type.
    if let Some((name, detail)) = decode_file(cmd, arg, &mut truncated) {
        return IoctlInfo {
            cmd,
            family: Format::File,
            name,
            truncated,
            detail,
        };
    }
    if let Some((name, detail)) = decode_loop(cmd, arg, &mut truncated) {
        return IoctlInfo {
            cmd,
            family: Format::Loop,
            name,
            truncated,
            detail,
        };
    }
    let split = IocSplit::of(cmd);
    if split.ty == DM_IOCTL_TYPE {
        // Type + nr identify dm; the size field is not trusted.
        let name = DM_NAMES
            .get(split.nr as usize)
            .copied()
            .unwrap_or("DM_UNKNOWN");
        let d = decode_dm(split.nr, arg, &mut truncated);
        return IoctlInfo {
            cmd,
            family: Format::Dm,
            name,
            truncated,
            detail: IoctlDetail::Dm(d),
        };
    }
    if split.ty == BTRFS_IOCTL_TYPE {
        let (name, detail) = decode_btrfs(cmd, arg, &mut truncated);
        return IoctlInfo {
            cmd,
            family: Format::Btrfs,
            name,
            truncated,
            detail,
        };
    }
    if let Some(name) = zfs_name(cmd) {
        let (zc_name, t) = read_cstr(arg, 0, ZFS_MAXNAMELEN);
        return IoctlInfo {
            cmd,
            family: Format::Zfs,
            name,
            truncated: t,
            detail: IoctlDetail::Zfs {
                zc_name,
                destructive: ZFS_DESTRUCTIVE.contains(&name),
            },
        };
    }
    IoctlInfo {
        cmd,
        family: Format::Unknown,
        name: "UNKNOWN",
        truncated: false,
        detail: IoctlDetail::Unknown(split),
    }
}

impl IoctlInfo {
    fn dm(&self) -> Option<&DmIoctl> {
        match &self.detail {
            IoctlDetail::Dm(d) => Some(d),
            _ => None,
        }
    }

    /// Removes, rolls back, merges away or unprotects a snapshot.
    ///
    /// dm: thin `delete` message, a `snapshot-merge` table, REMOVE_ALL, or
    /// DEV_REMOVE of an LVM `-cow` device. btrfs: SNAP_DESTROY(_V2) or
    /// clearing a subvolume's read-only flag. ZFS: the destructive list.
    pub fn is_snapshot_destructive(&self) -> bool {
        match self.family {
            Format::Dm => {
                let Some(d) = self.dm() else { return false };
                match self.name {
                    "DM_TARGET_MSG" => d
                        .message
                        .as_ref()
                        .is_some_and(|m| m.kind == DmMessageKind::Delete),
                    "DM_TABLE_LOAD" => d
                        .targets
                        .iter()
                        .any(|t| t.target_type.bytes == b"snapshot-merge"),
                    "DM_REMOVE_ALL" => true,
                    "DM_DEV_REMOVE" => d.name.bytes.ends_with(b"-cow"),
                    _ => false,
                }
            }
            Format::Btrfs => {
                matches!(
                    self.name,
                    "BTRFS_IOC_SNAP_DESTROY" | "BTRFS_IOC_SNAP_DESTROY_V2"
                ) || matches!(
                    self.detail,
                    IoctlDetail::BtrfsSubvolFlags {
                        readonly: Some(false),
                        ..
                    }
                )
            }
            Format::Zfs => matches!(
                self.detail,
                IoctlDetail::Zfs {
                    destructive: true,
                    ..
                }
            ),
            _ => false,
        }
    }

    /// Creates a snapshot: dm thin `create_snap` or a `snapshot` table,
    /// btrfs SNAP_CREATE(_V2), ZFS SNAPSHOT / POOL_CHECKPOINT.
    pub fn is_snapshot_create(&self) -> bool {
        match self.family {
            Format::Dm => {
                let Some(d) = self.dm() else { return false };
                match self.name {
                    "DM_TARGET_MSG" => d
                        .message
                        .as_ref()
                        .is_some_and(|m| m.kind == DmMessageKind::CreateSnap),
                    "DM_TABLE_LOAD" => d.targets.iter().any(|t| t.target_type.bytes == b"snapshot"),
                    _ => false,
                }
            }
            Format::Btrfs => matches!(
                self.name,
                "BTRFS_IOC_SNAP_CREATE" | "BTRFS_IOC_SNAP_CREATE_V2"
            ),
            Format::Zfs => matches!(self.name, "ZFS_IOC_SNAPSHOT" | "ZFS_IOC_POOL_CHECKPOINT"),
            _ => false,
        }
    }
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "?".to_string(),
    }
}

impl fmt::Display for IoctlInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)?;
        match &self.detail {
            IoctlDetail::None => {}
            IoctlDetail::Dm(d) => {
                if !d.name.is_empty() {
                    write!(f, " {}", d.name)?;
                } else if !d.uuid.is_empty() {
                    write!(f, " uuid={}", d.uuid)?;
                } else if let Some((ma, mi)) = d.dev_major_minor.filter(|&d| d != (0, 0)) {
                    // libdm addresses a device it just created by number (dmsetup create).
                    write!(f, " dev={ma}:{mi}")?;
                }
                for t in &d.targets {
                    if t.params.is_empty() {
                        write!(f, " [{}]", t.target_type)?;
                    } else {
                        write!(f, " [{} {}]", t.target_type, t.params)?;
                    }
                }
                if let Some(m) = &d.message {
                    write!(f, " sector={} \"{}\"", m.sector, m.text)?;
                }
                if let Some(n) = &d.new_name {
                    write!(f, " -> {n}")?;
                }
                if let Some(g) = &d.geometry {
                    write!(f, " geometry=\"{g}\"")?;
                }
            }
            IoctlDetail::BtrfsVolArgs { name, .. } => write!(f, " name={name}")?,
            IoctlDetail::BtrfsVolArgsV2 {
                name,
                subvolid,
                readonly,
                ..
            } => {
                if let Some(n) = name {
                    write!(f, " name={n}")?;
                }
                if let Some(id) = subvolid {
                    write!(f, " subvolid={id}")?;
                }
                if *readonly {
                    f.write_str(" readonly")?;
                }
            }
            IoctlDetail::BtrfsSubvolFlags { flags, readonly } => match readonly {
                Some(true) => write!(f, " readonly=set flags={:#x}", flags.unwrap_or(0))?,
                Some(false) => write!(f, " readonly=cleared flags={:#x}", flags.unwrap_or(0))?,
                None => f.write_str(" flags=?")?,
            },
            IoctlDetail::BtrfsDefaultSubvol { subvolid } => {
                write!(f, " subvolid={}", opt(subvolid))?
            }
            IoctlDetail::Zfs { zc_name, .. } => write!(f, " {zc_name}")?,
            IoctlDetail::Clone { src_fd } => write!(f, " src_fd={}", opt(src_fd))?,
            IoctlDetail::Loop {
                offset, read_only, ..
            } => {
                if let Some(o) = offset {
                    write!(f, " offset={o}")?;
                }
                if *read_only == Some(true) {
                    f.write_str(" read-only")?;
                }
            }
            IoctlDetail::CloneRange {
                src_fd,
                src_offset,
                src_length,
                dest_offset,
            } => write!(
                f,
                " src_fd={} src_offset={} src_length={} dest_offset={}",
                opt(src_fd),
                opt(src_offset),
                opt(src_length),
                opt(dest_offset)
            )?,
            IoctlDetail::DedupeRange {
                src_offset,
                src_length,
                dest_count,
                dests,
            } => {
                write!(
                    f,
                    " src_offset={} src_length={} dest_count={} dests=[",
                    opt(src_offset),
                    opt(src_length),
                    opt(dest_count)
                )?;
                for (i, d) in dests.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{}@{}", d.dest_fd, d.dest_offset)?;
                }
                f.write_str("]")?;
            }
            IoctlDetail::FsFlags { flags, flag_names } => {
                match flags {
                    Some(v) => write!(f, " flags={v:#x}")?,
                    None => f.write_str(" flags=?")?,
                }
                write!(f, " [{}]", flag_names.join(","))?;
            }
            IoctlDetail::FsXattr {
                xflags,
                xflag_names,
                projid,
                ..
            } => {
                match xflags {
                    Some(v) => write!(f, " xflags={v:#x}")?,
                    None => f.write_str(" xflags=?")?,
                }
                write!(f, " [{}] projid={}", xflag_names.join(","), opt(projid))?;
            }
            IoctlDetail::Unknown(s) => write!(
                f,
                " cmd={:#010x} dir={} type={:#04x} nr={:#04x} size={}",
                self.cmd, s.dir, s.ty, s.nr, s.size
            )?,
        }
        if self.truncated {
            f.write_str(" (truncated)")?;
        }
        Ok(())
    }
}
