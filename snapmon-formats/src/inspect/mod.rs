//! Offline qcow2 integrity inspector and file baselines.
//!
//! The inspector never fails: every problem, including an unreadable or
//! unparsable file, becomes a `Finding`.

mod inspector;
pub use inspector::*;

mod baseline;
pub use baseline::*;

#[cfg(test)]
mod tests;
