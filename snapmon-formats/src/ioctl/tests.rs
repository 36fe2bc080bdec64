//! Tests with argument structs laid out as the kernel copies them, cut at every length.

use super::*;

// ---- builders ----------------------------------------------------------

fn ioc(dir: u32, ty: u32, nr: u32, size: u32) -> u32 {
    (dir << 30) | (size << 16) | (ty << 8) | nr
}

fn dm_cmd(nr: u32) -> u32 {
    ioc(IOC_READ | IOC_WRITE, 0xfd, nr, DM_IOCTL_SIZE as u32)
}

fn put(b: &mut Vec<u8>, off: usize, bytes: &[u8]) {
    if b.len() < off + bytes.len() {
        b.resize(off + bytes.len(), 0);
    }
    b[off..off + bytes.len()].copy_from_slice(bytes);
}

/// struct dm_ioctl, field by field.
fn dm_header(name: &[u8], uuid: &[u8], flags: u32, dev: u64) -> Vec<u8> {
    let mut b = vec![0u8; 312];
    put(&mut b, 0, &4u32.to_le_bytes());
    put(&mut b, 4, &0u32.to_le_bytes());
    put(&mut b, 8, &0u32.to_le_bytes());
    put(&mut b, 16, &312u32.to_le_bytes()); // data_start
    put(&mut b, 24, &1i32.to_le_bytes()); // open_count
    put(&mut b, 28, &flags.to_le_bytes());
    put(&mut b, 32, &7u32.to_le_bytes()); // event_nr
    put(&mut b, 40, &dev.to_le_bytes());
    put(&mut b, 48, name);
    put(&mut b, 176, uuid);
    b
}

fn finish_dm(mut b: Vec<u8>, target_count: u32) -> Vec<u8> {
    let size = b.len() as u32;
    put(&mut b, 12, &size.to_le_bytes());
    put(&mut b, 20, &target_count.to_le_bytes());
    b
}

/// Append dm_target_specs as libdevmapper does (next aligned to 8).
fn dm_table(name: &[u8], targets: &[(u64, u64, &[u8], &[u8])]) -> Vec<u8> {
    let mut b = dm_header(name, b"LVM-abcdef", 0, 0);
    for (start, len, ty, params) in targets {
        let pos = b.len();
        let mut spec = vec![0u8; 40];
        spec[0..8].copy_from_slice(&start.to_le_bytes());
        spec[8..16].copy_from_slice(&len.to_le_bytes());
        spec[24..24 + ty.len()].copy_from_slice(ty);
        let total = 40 + params.len() + 1;
        let next = total.div_ceil(8) * 8;
        spec[20..24].copy_from_slice(&(next as u32).to_le_bytes());
        put(&mut b, pos, &spec);
        put(&mut b, pos + 40, params);
        b.resize(pos + next, 0);
    }
    finish_dm(b, targets.len() as u32)
}

fn dm_msg(name: &[u8], sector: u64, msg: &[u8]) -> Vec<u8> {
    let mut b = dm_header(name, b"", 0, 0);
    put(&mut b, DM_IOCTL_SIZE, &sector.to_le_bytes());
    put(&mut b, DM_IOCTL_SIZE + 8, msg);
    b.push(0);
    finish_dm(b, 0)
}

fn vol_args(fd: i64, name: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    put(&mut b, 0, &fd.to_le_bytes());
    put(&mut b, 8, name);
    b
}

fn vol_args_v2(fd: i64, flags: u64, name: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    put(&mut b, 0, &fd.to_le_bytes());
    put(&mut b, 8, &0u64.to_le_bytes());
    put(&mut b, 16, &flags.to_le_bytes());
    put(&mut b, 56, name);
    b
}

struct Xorshift(u64);
impl Xorshift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

// ---- dm ----------------------------------------------------------------

#[test]
fn cmd_constants_match_ioc_encoding() {
    assert_eq!(dm_cmd(9), 0xc138_fd09);
    assert_eq!(ioc(1, 0x94, 1, 4096), BTRFS_IOC_SNAP_CREATE);
    assert_eq!(ioc(1, 0x94, 23, 4096), BTRFS_IOC_SNAP_CREATE_V2);
    assert_eq!(ioc(1, 0x94, 63, 4096), BTRFS_IOC_SNAP_DESTROY_V2);
    assert_eq!(ioc(2, 0x94, 25, 8), BTRFS_IOC_SUBVOL_GETFLAGS);
    assert_eq!(ioc(1, 0x94, 26, 8), BTRFS_IOC_SUBVOL_SETFLAGS);
    assert_eq!(ioc(1, 0x94, 19, 8), BTRFS_IOC_DEFAULT_SUBVOL);
    assert_eq!(ioc(1, 0x94, 9, 4), FICLONE);
    assert_eq!(ioc(1, 0x94, 13, 32), FICLONERANGE);
    assert_eq!(ioc(3, 0x94, 54, 24), FIDEDUPERANGE);
    assert_eq!(ioc(3, b'X' as u32, 119, 4), FIFREEZE);
    assert_eq!(ioc(3, b'X' as u32, 120, 4), FITHAW);
    assert_eq!(ioc(2, b'f' as u32, 1, 8), FS_IOC_GETFLAGS);
    assert_eq!(ioc(1, b'f' as u32, 2, 8), FS_IOC_SETFLAGS);
    assert_eq!(ioc(2, b'X' as u32, 31, 28), FS_IOC_FSGETXATTR);
    assert_eq!(ioc(1, b'X' as u32, 32, 28), FS_IOC_FSSETXATTR);
}

#[test]
fn dm_table_load_snapshot() {
    let arg = dm_table(b"vg-snap", &[(0, 8192, b"snapshot", b"253:3 253:4 P 8")]);
    let info = decode_ioctl(0xc138_fd09, &arg);
    assert_eq!(info.family, "dm");
    assert_eq!(info.name, "DM_TABLE_LOAD");
    assert!(!info.truncated);
    assert_eq!(
        info.to_string(),
        "DM_TABLE_LOAD vg-snap [snapshot 253:3 253:4 P 8]"
    );
    let IoctlDetail::Dm(d) = &info.detail else {
        panic!()
    };
    assert_eq!(d.version, Some([4, 0, 0]));
    assert_eq!(d.data_start, Some(312));
    assert_eq!(d.target_count, Some(1));
    assert_eq!(d.event_nr, Some(7));
    assert_eq!(d.uuid.to_string(), "LVM-abcdef");
    assert_eq!(d.targets[0].length, 8192);
    assert!(d.targets[0].is_snapshot_target());
    assert!(info.is_snapshot_create());
    assert!(!info.is_snapshot_destructive());
}

#[test]
fn dm_table_load_multiple_targets_and_merge() {
    let arg = dm_table(
        b"vg-base",
        &[
            (0, 2048, b"linear", b"8:16 2048"),
            (2048, 4096, b"snapshot-merge", b"253:3 253:4 P 8"),
            (6144, 10, b"error", b""),
        ],
    );
    let info = decode_ioctl(dm_cmd(9), &arg);
    let IoctlDetail::Dm(d) = &info.detail else {
        panic!()
    };
    assert_eq!(d.targets.len(), 3);
    assert_eq!(d.targets[1].sector_start, 2048);
    assert_eq!(d.targets[2].target_type.to_string(), "error");
    assert!(!d.targets_truncated);
    assert_eq!(
        info.to_string(),
        "DM_TABLE_LOAD vg-base [linear 8:16 2048] [snapshot-merge 253:3 253:4 P 8] [error]"
    );
    assert!(info.is_snapshot_destructive());
    assert!(!info.is_snapshot_create());
    assert!(!is_snapshot_target(b"linear"));
    for t in [
        "snapshot",
        "snapshot-origin",
        "snapshot-merge",
        "thin",
        "thin-pool",
    ] {
        assert!(is_snapshot_target(t.as_bytes()));
    }
}

#[test]
fn dm_target_walk_rejects_bad_next() {
    let good = dm_table(
        b"x",
        &[(0, 1, b"linear", b"8:0 0"), (1, 1, b"linear", b"8:0 1")],
    );
    // next = 0: would not advance.
    let mut b = good.clone();
    put(&mut b, DM_IOCTL_SIZE + 20, &0u32.to_le_bytes());
    let i = decode_ioctl(dm_cmd(9), &b);
    let IoctlDetail::Dm(d) = &i.detail else {
        panic!()
    };
    assert_eq!(d.targets.len(), 1);
    assert!(d.targets_truncated && i.truncated);
    // next points back into the previous params.
    let mut b = good.clone();
    put(&mut b, DM_IOCTL_SIZE + 20, &41u32.to_le_bytes());
    let IoctlDetail::Dm(d) = decode_ioctl(dm_cmd(9), &b).detail else {
        panic!()
    };
    assert_eq!(d.targets.len(), 1);
    assert!(d.targets_truncated);
    // next huge: beyond the buffer.
    let mut b = good.clone();
    put(&mut b, DM_IOCTL_SIZE + 20, &u32::MAX.to_le_bytes());
    let IoctlDetail::Dm(d) = decode_ioctl(dm_cmd(9), &b).detail else {
        panic!()
    };
    assert!(d.targets_truncated);
    // target_count larger than what is there.
    let mut b = good.clone();
    put(&mut b, 20, &1000u32.to_le_bytes());
    let IoctlDetail::Dm(d) = decode_ioctl(dm_cmd(9), &b).detail else {
        panic!()
    };
    assert_eq!(d.targets.len(), 2);
    assert!(d.targets_truncated);
    // data_start inside the header.
    let mut b = good.clone();
    put(&mut b, 16, &48u32.to_le_bytes());
    let IoctlDetail::Dm(d) = decode_ioctl(dm_cmd(9), &b).detail else {
        panic!()
    };
    assert!(d.targets.is_empty() && d.targets_truncated);
    // Capture cut inside the second params string.
    let cut = &good[..good.len() - 6];
    let i = decode_ioctl(dm_cmd(9), cut);
    let IoctlDetail::Dm(d) = &i.detail else {
        panic!()
    };
    assert_eq!(d.targets.len(), 2);
    assert!(!d.targets[1].params.terminated);
    assert!(i.truncated);
    assert!(i.to_string().ends_with("(truncated)"));
}

#[test]
fn dm_target_msg() {
    let arg = dm_msg(b"vg-pool-tpool", 0, b"create_snap 2 1");
    let i = decode_ioctl(dm_cmd(0x0e), &arg);
    assert_eq!(i.name, "DM_TARGET_MSG");
    let IoctlDetail::Dm(d) = &i.detail else {
        panic!()
    };
    let m = d.message.as_ref().unwrap();
    assert_eq!(m.kind, DmMessageKind::CreateSnap);
    assert_eq!(m.text.to_string(), "create_snap 2 1");
    assert_eq!(
        i.to_string(),
        "DM_TARGET_MSG vg-pool-tpool sector=0 \"create_snap 2 1\""
    );
    assert!(i.is_snapshot_create());
    let del = decode_ioctl(dm_cmd(0x0e), &dm_msg(b"vg-pool-tpool", 0, b"delete 2"));
    assert!(del.is_snapshot_destructive());
    assert!(!del.is_snapshot_create());
    assert_eq!(
        dm_message_kind(b"  create_thin 3"),
        DmMessageKind::CreateThin
    );
    assert_eq!(
        dm_message_kind(b"set_transaction_id 1 2"),
        DmMessageKind::SetTransactionId
    );
    assert_eq!(
        dm_message_kind(b"reserve_metadata_snap"),
        DmMessageKind::ReserveMetadataSnap
    );
    assert_eq!(
        dm_message_kind(b"release_metadata_snap"),
        DmMessageKind::ReleaseMetadataSnap
    );
    assert_eq!(dm_message_kind(b"deletex 1"), DmMessageKind::Other);
    assert_eq!(dm_message_kind(b""), DmMessageKind::Other);
}

#[test]
fn dm_header_fields_rename_remove_and_any_size() {
    // dev 253:3 in huge_encode_dev form; flags SUSPEND|UUID.
    let dev = (253u64 << 8) | 3;
    let mut arg = dm_header(b"vg-snap-cow", b"LVM-xyz-cow", 2 | (1 << 14), dev);
    arg = finish_dm(arg, 0);
    // A nonstandard size field still decodes as dm.
    let i = decode_ioctl(ioc(3, 0xfd, 4, 400), &arg);
    assert_eq!(i.name, "DM_DEV_REMOVE");
    let IoctlDetail::Dm(d) = &i.detail else {
        panic!()
    };
    assert_eq!(d.dev_major_minor, Some((253, 3)));
    assert_eq!(d.flag_names, ["SUSPEND", "UUID"]);
    assert_eq!(d.open_count, Some(1));
    assert!(i.is_snapshot_destructive());
    let plain = finish_dm(dm_header(b"vg-data", b"", 0, 0), 0);
    assert!(!decode_ioctl(dm_cmd(4), &plain).is_snapshot_destructive());
    assert!(decode_ioctl(dm_cmd(1), &plain).is_snapshot_destructive());
    // Big minor numbers use the high bits.
    let mut b = dm_header(
        b"x",
        b"",
        0,
        (0x12345u64 << 12 & 0xfff0_0000) | (8 << 8) | 0x45,
    );
    b = finish_dm(b, 0);
    let IoctlDetail::Dm(d) = decode_ioctl(dm_cmd(7), &b).detail else {
        panic!()
    };
    assert_eq!(d.dev_major_minor, Some((8, 0x12345)));
    // Addressed by number only (libdm right after DEV_CREATE): the number names it.
    let by_dev = finish_dm(dm_header(b"", b"", 0, dev), 0);
    assert_eq!(
        decode_ioctl(dm_cmd(9), &by_dev).to_string(),
        "DM_TABLE_LOAD dev=253:3"
    );
    // Rename carries the new name after the header.
    let mut r = dm_header(b"vg-old", b"", 0, 0);
    put(&mut r, DM_IOCTL_SIZE, b"vg-new\0");
    let r = finish_dm(r, 0);
    let i = decode_ioctl(dm_cmd(5), &r);
    assert_eq!(i.to_string(), "DM_DEV_RENAME vg-old -> vg-new");
    // Unknown dm nr.
    assert_eq!(decode_ioctl(dm_cmd(0x40), &plain).name, "DM_UNKNOWN");
}

#[test]
fn dm_non_utf8_names_escape_losslessly() {
    let arg = finish_dm(dm_header(b"a\\b\xff\x01c\xc3\xa9", b"", 0, 0), 0);
    let i = decode_ioctl(dm_cmd(7), &arg);
    assert_eq!(i.to_string(), "DM_DEV_STATUS a\\\\b\\xff\\u{1}cé");
    let js = serde_json::to_value(&i).unwrap();
    assert_eq!(js["detail"]["name"], "a\\\\b\\xff\\u{1}cé");
    assert_eq!(js["family"], "dm");
    // Unterminated name field (128 bytes, no NUL) is kept but flagged.
    let mut b = dm_header(b"", b"", 0, 0);
    put(&mut b, 48, &[b'n'; 128]);
    let IoctlDetail::Dm(d) = decode_ioctl(dm_cmd(7), &finish_dm(b, 0)).detail else {
        panic!()
    };
    assert_eq!(d.name.bytes.len(), DM_NAME_LEN);
    assert!(!d.name.terminated);
}

// ---- btrfs -------------------------------------------------------------

#[test]
fn btrfs_snap_create_v1_and_v2() {
    let i = decode_ioctl(BTRFS_IOC_SNAP_CREATE, &vol_args(5, b"snap0\0"));
    assert_eq!(
        (i.family.as_str(), i.name),
        ("btrfs", "BTRFS_IOC_SNAP_CREATE")
    );
    assert_eq!(
        i.detail,
        IoctlDetail::BtrfsVolArgs {
            fd: Some(5),
            name: RawStr {
                bytes: b"snap0".to_vec(),
                terminated: true
            }
        }
    );
    assert!(i.is_snapshot_create());
    let i = decode_ioctl(
        BTRFS_IOC_SNAP_CREATE_V2,
        &vol_args_v2(3, BTRFS_SUBVOL_RDONLY, b"snap1\0"),
    );
    assert_eq!(
        i.to_string(),
        "BTRFS_IOC_SNAP_CREATE_V2 name=snap1 readonly"
    );
    let IoctlDetail::BtrfsVolArgsV2 { fd, flag_names, .. } = &i.detail else {
        panic!()
    };
    assert_eq!(*fd, Some(3));
    assert_eq!(flag_names, &["RDONLY"]);
    assert!(i.is_snapshot_create() && !i.is_snapshot_destructive());
    let i = decode_ioctl(BTRFS_IOC_SUBVOL_CREATE_V2, &vol_args_v2(3, 0, b"vol\0"));
    assert_eq!(i.to_string(), "BTRFS_IOC_SUBVOL_CREATE_V2 name=vol");
    assert!(!i.is_snapshot_create());
    let i = decode_ioctl(BTRFS_IOC_SUBVOL_CREATE, &vol_args(-1, b"v\0"));
    assert_eq!(i.name, "BTRFS_IOC_SUBVOL_CREATE");
}

#[test]
fn btrfs_destroy_v1_v2_by_name_and_id() {
    let i = decode_ioctl(BTRFS_IOC_SNAP_DESTROY, &vol_args(0, b"old\0"));
    assert_eq!(i.to_string(), "BTRFS_IOC_SNAP_DESTROY name=old");
    assert!(i.is_snapshot_destructive());
    let i = decode_ioctl(BTRFS_IOC_SNAP_DESTROY_V2, &vol_args_v2(0, 0, b"old2\0"));
    assert_eq!(i.to_string(), "BTRFS_IOC_SNAP_DESTROY_V2 name=old2");
    let i = decode_ioctl(
        BTRFS_IOC_SNAP_DESTROY_V2,
        &vol_args_v2(0, BTRFS_SUBVOL_SPEC_BY_ID, &257u64.to_le_bytes()),
    );
    assert_eq!(i.to_string(), "BTRFS_IOC_SNAP_DESTROY_V2 subvolid=257");
    assert!(i.is_snapshot_destructive());
}

#[test]
fn btrfs_flags_and_default() {
    let set = decode_ioctl(BTRFS_IOC_SUBVOL_SETFLAGS, &2u64.to_le_bytes());
    assert_eq!(
        set.to_string(),
        "BTRFS_IOC_SUBVOL_SETFLAGS readonly=set flags=0x2"
    );
    assert!(!set.is_snapshot_destructive());
    let clr = decode_ioctl(BTRFS_IOC_SUBVOL_SETFLAGS, &0u64.to_le_bytes());
    assert_eq!(
        clr.to_string(),
        "BTRFS_IOC_SUBVOL_SETFLAGS readonly=cleared flags=0x0"
    );
    assert!(clr.is_snapshot_destructive());
    let short = decode_ioctl(BTRFS_IOC_SUBVOL_SETFLAGS, &[2, 0]);
    assert!(short.truncated && !short.is_snapshot_destructive());
    let g = decode_ioctl(BTRFS_IOC_SUBVOL_GETFLAGS, &[0xff; 8]);
    assert_eq!(g.detail, IoctlDetail::None);
    let d = decode_ioctl(BTRFS_IOC_DEFAULT_SUBVOL, &256u64.to_le_bytes());
    assert_eq!(d.to_string(), "BTRFS_IOC_DEFAULT_SUBVOL subvolid=256");
    let o = decode_ioctl(ioc(3, 0x94, 0x70, 16), &[]);
    assert_eq!((o.family.as_str(), o.name), ("btrfs", "BTRFS_IOC_OTHER"));
}

#[test]
fn btrfs_long_name_capture_truncated() {
    // Name fills the whole 1024-byte capture: the field is 4088 long.
    let mut b = vol_args(1, b"");
    for x in &mut b[8..] {
        *x = b'a';
    }
    let i = decode_ioctl(BTRFS_IOC_SNAP_CREATE, &b);
    assert!(i.truncated);
    let IoctlDetail::BtrfsVolArgs { name, .. } = &i.detail else {
        panic!()
    };
    assert_eq!(name.bytes.len(), 1016);
}

// ---- zfs ---------------------------------------------------------------

#[test]
fn zfs_names_and_flags() {
    let table = [
        (0x5a16, "ZFS_IOC_SET_PROP", false),
        (0x5a18, "ZFS_IOC_DESTROY", true),
        (0x5a19, "ZFS_IOC_ROLLBACK", true),
        (0x5a1a, "ZFS_IOC_RENAME", true),
        (0x5a1b, "ZFS_IOC_RECV", true),
        (0x5a22, "ZFS_IOC_PROMOTE", true),
        (0x5a23, "ZFS_IOC_SNAPSHOT", false),
        (0x5a30, "ZFS_IOC_HOLD", false),
        (0x5a31, "ZFS_IOC_RELEASE", false),
        (0x5a3b, "ZFS_IOC_DESTROY_SNAPS", true),
        (0x5a42, "ZFS_IOC_CLONE", false),
        (0x5a45, "ZFS_IOC_DESTROY_BOOKMARKS", false),
        (0x5a48, "ZFS_IOC_CHANNEL_PROGRAM", true),
        (0x5a4e, "ZFS_IOC_POOL_DISCARD_CHECKPOINT", true),
        (0x5a81, "ZFS_IOC_EVENTS_NEXT", false),
        (0x5a7f, "ZFS_IOC_OTHER", false),
    ];
    let mut arg = vec![0u8; 1024];
    put(&mut arg, 0, b"tank/vm@daily\0");
    for (cmd, name, destructive) in table {
        let i = decode_ioctl(cmd, &arg);
        assert_eq!((i.family.as_str(), i.name), ("zfs", name), "{cmd:#x}");
        assert_eq!(i.is_snapshot_destructive(), destructive, "{name}");
        assert!(!i.truncated);
    }
    let i = decode_ioctl(0x5a23, &arg);
    assert_eq!(i.to_string(), "ZFS_IOC_SNAPSHOT tank/vm@daily");
    assert!(i.is_snapshot_create());
    // 0x5a with _IOC size/dir bits is not ZFS.
    assert_eq!(decode_ioctl(ioc(1, 0x5a, 0x18, 8), &arg).family, "unknown");
}

#[test]
fn zfs_name_truncated_by_capture() {
    let arg = vec![b'p'; 1024];
    let i = decode_ioctl(0x5a18, &arg);
    assert!(i.truncated);
    assert!(i.is_snapshot_destructive());
    let IoctlDetail::Zfs { zc_name, .. } = &i.detail else {
        panic!()
    };
    assert_eq!(zc_name.bytes.len(), 1024);
    assert!(!zc_name.terminated);
}

// ---- file --------------------------------------------------------------

#[test]
fn file_clone_and_range() {
    let i = decode_ioctl(FICLONE, &7i32.to_le_bytes());
    assert_eq!(
        (i.family.as_str(), i.to_string()),
        ("file", "FICLONE src_fd=7".into())
    );
    let i = decode_ioctl(FICLONE, &9i64.to_le_bytes());
    assert_eq!(i.detail, IoctlDetail::Clone { src_fd: Some(9) });
    let mut b = Vec::new();
    put(&mut b, 0, &3i64.to_le_bytes());
    put(&mut b, 8, &4096u64.to_le_bytes());
    put(&mut b, 16, &65536u64.to_le_bytes());
    put(&mut b, 24, &8192u64.to_le_bytes());
    let i = decode_ioctl(FICLONERANGE, &b);
    assert_eq!(
        i.to_string(),
        "FICLONERANGE src_fd=3 src_offset=4096 src_length=65536 dest_offset=8192"
    );
    let i = decode_ioctl(FICLONERANGE, &b[..20]);
    assert_eq!(
        i.to_string(),
        "FICLONERANGE src_fd=3 src_offset=4096 src_length=? dest_offset=? (truncated)"
    );
    assert!(!i.is_snapshot_create() && !i.is_snapshot_destructive());
}

#[test]
fn file_dedupe() {
    let mut b = Vec::new();
    put(&mut b, 0, &0u64.to_le_bytes());
    put(&mut b, 8, &131072u64.to_le_bytes());
    put(&mut b, 16, &2u16.to_le_bytes());
    for (k, (fd, off)) in [(4i64, 0u64), (5, 65536)].iter().enumerate() {
        let o = 24 + k * 32;
        put(&mut b, o, &fd.to_le_bytes());
        put(&mut b, o + 8, &off.to_le_bytes());
        put(&mut b, o + 16, &0u64.to_le_bytes());
        put(&mut b, o + 24, &[0u8; 8]);
    }
    let i = decode_ioctl(FIDEDUPERANGE, &b);
    assert_eq!(
        i.to_string(),
        "FIDEDUPERANGE src_offset=0 src_length=131072 dest_count=2 dests=[4@0,5@65536]"
    );
    // dest_count claims more than captured (and more than the cap).
    let mut big = b.clone();
    put(&mut big, 16, &u16::MAX.to_le_bytes());
    big.resize(1024, 0);
    let i = decode_ioctl(FIDEDUPERANGE, &big);
    assert!(i.truncated);
    let IoctlDetail::DedupeRange { dests, .. } = &i.detail else {
        panic!()
    };
    assert_eq!(dests.len(), (1024 - 24) / 32);
}

#[test]
fn file_flags_freeze_xattr() {
    let i = decode_ioctl(
        FS_IOC_SETFLAGS,
        &(FS_IMMUTABLE_FL | FS_APPEND_FL | FS_NOCOW_FL).to_le_bytes(),
    );
    assert_eq!(
        i.to_string(),
        "FS_IOC_SETFLAGS flags=0x800030 [IMMUTABLE,APPEND,NOCOW]"
    );
    let i = decode_ioctl(FS_IOC32_SETFLAGS, &0x80000u32.to_le_bytes());
    assert_eq!(i.to_string(), "FS_IOC32_SETFLAGS flags=0x80000 [EXTENT]");
    assert_eq!(
        decode_ioctl(FS_IOC_GETFLAGS, &[]).to_string(),
        "FS_IOC_GETFLAGS"
    );
    assert_eq!(decode_ioctl(FIFREEZE, &[]).to_string(), "FIFREEZE");
    assert_eq!(decode_ioctl(FITHAW, &[1]).to_string(), "FITHAW");
    let mut x = vec![0u8; 28];
    put(&mut x, 0, &(0x8u32 | 0x10).to_le_bytes());
    put(&mut x, 12, &42u32.to_le_bytes());
    let i = decode_ioctl(FS_IOC_FSSETXATTR, &x);
    assert_eq!(
        i.to_string(),
        "FS_IOC_FSSETXATTR xflags=0x18 [IMMUTABLE,APPEND] projid=42"
    );
    assert_eq!(
        decode_ioctl(FS_IOC_FSGETXATTR, &x).detail,
        IoctlDetail::None
    );
    assert!(decode_ioctl(FS_IOC_SETFLAGS, &[1, 2]).truncated);
}

#[test]
fn unknown_split() {
    let i = decode_ioctl(0x8010_1234, &[]);
    assert_eq!(i.family, "unknown");
    assert_eq!(
        i.detail,
        IoctlDetail::Unknown(IocSplit {
            dir: "r",
            ty: 0x12,
            nr: 0x34,
            size: 16
        })
    );
    assert_eq!(
        i.to_string(),
        "UNKNOWN cmd=0x80101234 dir=r type=0x12 nr=0x34 size=16"
    );
    let js = serde_json::to_value(&i).unwrap();
    assert_eq!(js["detail"]["type"], 0x12);
    assert_eq!(js["detail"]["kind"], "unknown");
}

// ---- robustness --------------------------------------------------------

fn corpus() -> Vec<(u32, Vec<u8>)> {
    vec![
        (
            dm_cmd(9),
            dm_table(
                b"vg-snap",
                &[
                    (0, 8, b"snapshot", b"253:3 253:4 P 8"),
                    (8, 8, b"linear", b"8:0 0"),
                ],
            ),
        ),
        (dm_cmd(0x0e), dm_msg(b"pool", 0, b"create_snap 1 0")),
        (dm_cmd(5), {
            let mut r = dm_header(b"a", b"", 0, 0);
            put(&mut r, DM_IOCTL_SIZE, b"b\0");
            finish_dm(r, 0)
        }),
        (BTRFS_IOC_SNAP_CREATE, vol_args(3, b"s\0")),
        (
            BTRFS_IOC_SNAP_DESTROY_V2,
            vol_args_v2(3, 0x10, &[1, 1, 0, 0, 0, 0, 0, 0]),
        ),
        (BTRFS_IOC_SNAP_CREATE_V2, vol_args_v2(3, 2, b"snap\0")),
        (BTRFS_IOC_SUBVOL_SETFLAGS, 2u64.to_le_bytes().to_vec()),
        (BTRFS_IOC_DEFAULT_SUBVOL, 5u64.to_le_bytes().to_vec()),
        (0x5a18, b"tank/a@b\0".to_vec()),
        (FICLONE, 3i32.to_le_bytes().to_vec()),
        (FICLONERANGE, vec![1u8; 32]),
        (FIDEDUPERANGE, {
            let mut b = vec![0u8; 24 + 64];
            b[16] = 2;
            b
        }),
        (FS_IOC_SETFLAGS, 0x10u32.to_le_bytes().to_vec()),
        (FS_IOC_FSSETXATTR, vec![0x8u8; 28]),
    ]
}

#[test]
fn every_prefix_never_panics() {
    for (cmd, arg) in corpus() {
        let full = decode_ioctl(cmd, &arg);
        assert!(!full.truncated, "{full}");
        for n in 0..arg.len() {
            let i = decode_ioctl(cmd, &arg[..n]);
            let _ = i.to_string();
            let _ = serde_json::to_string(&i).unwrap();
            let _ = (i.is_snapshot_create(), i.is_snapshot_destructive());
            assert_eq!(i.family, full.family);
            assert_eq!(i.name, full.name);
        }
    }
}

#[test]
fn truncation_reported_for_short_structs() {
    // Cut inside fixed fields (strings excluded) must flag truncation.
    let dm = dm_table(b"v", &[(0, 8, b"linear", b"8:0 0")]);
    for n in [0, 10, 100, 311, DM_IOCTL_SIZE + 20] {
        assert!(decode_ioctl(dm_cmd(9), &dm[..n]).truncated, "dm prefix {n}");
    }
    let v2 = vol_args_v2(3, 2, b"snap\0");
    for n in [0, 8, 20, 56, 58] {
        assert!(
            decode_ioctl(BTRFS_IOC_SNAP_CREATE_V2, &v2[..n]).truncated,
            "v2 {n}"
        );
    }
}

#[test]
fn mutation_loop_no_panic() {
    let mut rng = Xorshift(0xdead_beef_cafe_f00d);
    let corpus = corpus();
    let mut cmds: Vec<u32> = corpus.iter().map(|(c, _)| *c).collect();
    cmds.extend([
        dm_cmd(0),
        dm_cmd(0x11),
        0x5a23,
        FS_IOC_GETFLAGS,
        0xffff_ffff,
        0,
    ]);
    for it in 0..2000 {
        let (cmd, base) = &corpus[it % corpus.len()];
        let mut v = base.clone();
        for _ in 0..1 + rng.next() % 6 {
            if v.is_empty() {
                break;
            }
            let j = (rng.next() % v.len() as u64) as usize;
            match rng.next() % 4 {
                0 => v[j] = rng.next() as u8,
                1 => {
                    let x = (rng.next() as u32).to_le_bytes();
                    let n = (v.len() - j).min(4);
                    v[j..j + n].copy_from_slice(&x[..n]);
                }
                2 => v.truncate(j),
                _ => v[j] = 0,
            }
        }
        let c = if rng.next().is_multiple_of(8) {
            cmds[(rng.next() % cmds.len() as u64) as usize]
        } else {
            *cmd
        };
        let i = decode_ioctl(c, &v);
        let _ = i.to_string();
        let _ = serde_json::to_string(&i).unwrap();
        let _ = (i.is_snapshot_create(), i.is_snapshot_destructive());
        // Random cmds against random bytes too.
        let r: Vec<u8> = (0..rng.next() % 1100).map(|_| rng.next() as u8).collect();
        let _ = decode_ioctl(rng.next() as u32, &r).to_string();
        let _ = decode_ioctl(dm_cmd((rng.next() % 0x14) as u32), &r).to_string();
    }
}
