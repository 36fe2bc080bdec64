//! Host-side stub so the workspace builds; the real programs live in `main.rs` (BPF target).
#![no_std]
