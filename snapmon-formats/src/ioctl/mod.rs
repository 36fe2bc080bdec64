//! Snapshot-related ioctl decoding (device-mapper, btrfs, ZFS, generic file).
//!
//! Input is the ioctl cmd plus the first bytes (normally 1024) the kernel
//! side copied from the argument pointer. Layouts follow the uapi headers
//! `linux/dm-ioctl.h`, `linux/btrfs.h`, `linux/fs.h` and OpenZFS
//! `sys/fs/zfs.h` (x86_64, little-endian). Arguments passed by value
//! (FICLONE's fd) are expected as their little-endian value. Nothing here
//! panics on short or hostile input: missing fields are `None` and the
//! result is marked `truncated`.

mod raw;
pub use raw::*;

mod ioc;
pub use ioc::*;

mod info;
pub use info::*;

mod dm;
pub use dm::*;

mod btrfs;
pub use btrfs::*;

mod zfs;
pub use zfs::*;

mod file;
pub use file::*;

mod loopdev;

mod decode;
pub use decode::*;

#[cfg(test)]
mod tests;
