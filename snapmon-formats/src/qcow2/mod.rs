//! qcow2 format intelligence — parse, region map, shadow diff.
//!
//! Everything here treats the image as hostile: sizes are capped (mirroring
//! QEMU's own limits), arithmetic saturates, and loops are bounded by counts
//! read from the header *after* those counts were capped.

mod base;
pub use base::*;

mod header;
pub use header::*;

mod extension;
pub use extension::*;

mod reader;
pub use reader::*;

mod snapshot;
pub use snapshot::*;

mod bitmap;
pub use bitmap::*;

mod region;
pub use region::*;

mod image;
pub use image::*;

mod diff;
pub use diff::*;

mod shadow;
pub use shadow::*;

#[cfg(any(test, feature = "testutil"))]
pub mod testutil;

#[cfg(test)]
mod tests;
