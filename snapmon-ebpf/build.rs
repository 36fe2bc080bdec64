//! Rebuild the BPF object when the linker changes (it embeds the nightly's LLVM).
fn main() {
    if let Ok(p) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}
