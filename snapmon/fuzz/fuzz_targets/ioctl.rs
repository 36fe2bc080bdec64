//! Fuzz target: ioctl argument decoding (dm, btrfs, zfs, clone, freeze) for any cmd.
#![no_main]
use snapmon_formats::ioctl;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let cmd = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let arg = &data[4..];
    // The raw cmd, and the families the decoder knows, so every branch gets bytes.
    for c in [cmd, 0xc138_fd00 | (cmd & 0x1f), 0x5000_9400 | (cmd & 0x7f), 0x5a00 | (cmd & 0xff)] {
        let info = ioctl::decode_ioctl(c, arg);
        let _ = info.to_string();
        let _ = serde_json::to_string(&info);
        let _ = (info.is_snapshot_destructive(), info.is_snapshot_create());
    }
});
