//! Build settings of the eBPF programs.
use which::which;

fn main() {
    // bpf-linker asks LLVM to keep memcpy/memset for an in-order expansion that only memcpy gets;
    // memset then becomes a call to a byte loop (64 iterations for a FIB lookup's parameters).
    // Without it LLVM inlines both as a few wide stores.
    println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
    // bpf-linker is the programs' real linker: rebuild them when it changes.
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
