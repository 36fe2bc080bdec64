//! Rules stage, the default rules by family: each file holds its rules' definitions next to their
//! evaluation; `registry` puts them in order.

pub mod blinding;
pub mod deletion;
pub mod hiding;
pub mod kernel;
pub mod lineage;
pub mod metadata;
pub mod qcow2;
pub mod ransom;
pub mod timestamps;
