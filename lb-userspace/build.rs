//! Builds the eBPF programs (crate `lb-ebpf`) for the BPF target and leaves the objects in `OUT_DIR`,
//! where `lb_userspace::dataplane::objects` embeds them.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root_dir = std::path::Path::new(&manifest_dir).join("../lb-ebpf");
    let root_dir = root_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", root_dir.display()))?;
    // The eBPF crate is built with the project's pinned stable toolchain (rust-toolchain.toml);
    // `-Z build-std=core` needs RUSTC_BOOTSTRAP for that nested build only.
    let toolchain_file = std::path::Path::new(&manifest_dir).join("../rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", toolchain_file.display());
    let toolchain = std::fs::read_to_string(&toolchain_file)
        .with_context(|| format!("reading {}", toolchain_file.display()))?
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = ").map(|v| v.trim_matches('"').to_string()))
        .ok_or_else(|| anyhow!("{}: no `channel = \"...\"` line", toolchain_file.display()))?;
    // SAFETY: build scripts are single-threaded; the variable is for the nested cargo only.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf([Package { name: "lb-ebpf", root_dir, ..Default::default() }], Toolchain::Custom(&toolchain))
}
