//! Makes cargo rebuild the eBPF object when bpf-linker changes (it is the object's real linker).
use which::which;

fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
