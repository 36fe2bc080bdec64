//! Bounded parsers for the formats snapmon watches (qcow2, LVM, snapshot ioctls, libvirt XML)
//! and the offline qcow2 inspector. Pure decoding over captured bytes or files: nothing here
//! knows about the agent, its events or its pipeline.

pub mod bytes;
pub mod change;
pub mod file;
pub mod format;
pub mod inspect;
pub mod ioctl;
pub mod libvirt;
pub mod lvm;
pub mod qcow2;
pub mod severity;
#[cfg(any(test, feature = "testutil"))]
pub mod testutil;
pub mod text;

pub use change::FieldChange;
pub use format::Format;
pub use severity::Severity;
