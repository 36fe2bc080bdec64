//! Kernel side of the agent: BTF, offsets and the loader (the only code that touches eBPF).

pub mod btf;
pub mod loader;
pub mod offsets;
pub mod verify;
