//! Installs what a fresh machine of this project's kind lacks. Idempotent; says what it did.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cmd::{self, output, run};

/// Debian packages the build and the tests use, and why.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links the eBPF programs with LLVM 22, the LLVM of rustc 1.95"),
    ("libpolly-22-dev", "needed to link bpf-linker against LLVM 22"),
    ("bpftool", "inspecting loaded programs and maps"),
    ("ethtool", "veth offload settings in the namespaced lab"),
    ("iproute2", "network namespaces, veth pairs, routes and neighbours in tests"),
    ("procps", "sysctl in test namespaces"),
    ("util-linux", "nsenter: running lb in a lab namespace while pinning on the machine's bpffs"),
    ("nginx", "the lab backends' HTTP servers"),
    ("dnsmasq-base", "the lab backends' DNS servers"),
    ("mosquitto", "the lab backends' MQTT brokers, bridged into a cluster (lab_sessions)"),
    ("curl", "the lab client's HTTP requests"),
    ("bind9-dnsutils", "dig, the lab client's DNS queries"),
    ("iperf3", "the benchmark's TCP throughput through the VIP in the lab"),
    ("libnginx-mod-stream", "the benchmark's userspace UDP proxy (nginx stream) next to the balancer"),
    ("bird2", "the BGP daemon: the balancer's VIP announcements and the fleet lab's router"),
    ("prometheus", "promtool, which checks the agent's metrics exposition in a test"),
    ("tmux", "the terminal multiplexer `lb top` is tested in"),
    ("systemd", "systemd-analyze, which verifies the package's unit in the package tier"),
    ("fonts-dejavu-core", "the text of the benchmark's figures in docs/performance.md"),
];

/// Keeps Debian from starting installed services (nginx) on the machine itself: the lab runs
/// its own servers inside its namespaces.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn ensure() -> anyhow::Result<()> {
    let mut did = Vec::new();
    let missing: Vec<&str> = DEBIAN_PACKAGES.iter().map(|(p, _)| *p).filter(|p| !debian_installed(p)).collect();
    if !missing.is_empty() {
        if !cmd::is_root() {
            bail!("missing Debian packages {}; run `cargo xtask deps` as root to install them", missing.join(", "));
        }
        for (p, why) in DEBIAN_PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
            println!("deps: installing {p}: {why}");
        }
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        let own_policy = !std::path::Path::new(POLICY_RC_D).exists();
        if own_policy {
            std::fs::write(POLICY_RC_D, "#!/bin/sh\nexit 101\n").context("writing policy-rc.d")?;
            std::fs::set_permissions(POLICY_RC_D, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        }
        let installed = run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"));
        if own_policy {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
        installed?;
        did.push(format!("installed {}", missing.join(", ")));
    }

    let toolchain = toolchain()?;
    let has_rust_src =
        output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", &toolchain]))
            .is_some_and(|list| list.lines().any(|l| l.trim() == "rust-src"));
    if !has_rust_src {
        println!("deps: adding rust-src to {toolchain}: the eBPF build compiles core itself (-Z build-std)");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", &toolchain]))?;
        did.push("added rust-src".into());
    }

    let linker = output(Command::new("bpf-linker").arg("--version"));
    if linker.as_deref().map(str::trim) != Some(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
        println!(
            "deps: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (found: {}); takes about a minute",
            linker.as_deref().map_or("none", str::trim)
        );
        run(cmd::cargo()
            .args(["install", "--locked", &format!("bpf-linker@{BPF_LINKER_VERSION}")])
            .args(["--no-default-features", "--features", "llvm-22", "--force"])
            .env("LLVM_PREFIX", LLVM_PREFIX))?;
        did.push(format!("installed bpf-linker {BPF_LINKER_VERSION}"));
    }

    if did.is_empty() {
        println!("deps: everything is installed");
    } else {
        println!("deps: {}", did.join("; "));
    }
    Ok(())
}

fn debian_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.trim() == "install ok installed")
}

/// The toolchain named in rust-toolchain.toml (also the one the eBPF programs are built with).
fn toolchain() -> anyhow::Result<String> {
    let file = cmd::workspace_root().join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("channel = ").map(|v| v.trim_matches('"').to_string()))
        .with_context(|| format!("{}: no `channel = \"...\"` line", file.display()))
}
