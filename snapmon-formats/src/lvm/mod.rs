//! LVM on-disk label/metadata-area and text metadata decoding.
//!
//! Layouts follow lvm2 `lib/label/label.h` and `lib/format_text/layout.h`; all
//! on-disk integers are little-endian. Every reader here is bounded and works
//! on captured byte buffers that may be short, stale or hostile.

mod base;
pub use base::*;

mod crc;
pub use crc::*;

mod label;
pub use label::*;

mod mda;
pub use mda::*;

mod config;
pub use config::*;

mod metadata;
pub use metadata::*;

mod diff;
pub use diff::*;

mod write;
pub use write::*;

#[cfg(test)]
mod tests;
