//! `cargo xtask bench`: the benchmark suite. The `BPF_PROG_RUN` benchmark
//! (`tests/benches/xdp_paths.rs`), the live-frames one (`tests/benches/xdp_live.rs`), and in the lab
//! the control-plane latency (`tests/benches/control_latency.rs`) and TCP throughput through the
//! VIP (`tests/benches/tcp_throughput.rs`), nginx's UDP proxy for scale
//! (`tests/benches/udp_proxy.rs`), and the agent's CPU for 4000 health checks
//! (`tests/benches/health_scale.rs`), plus validation of a large configuration
//! (`tests/benches/config_validation.rs`), each printing a table and writing JSON under
//! target/bench/; with `--ablation`, the live one also measures balancer
//! builds that stop after each stage of the fast path (built here).

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};
use lb_common::capacity::ablation;

use crate::cmd;

pub struct Options {
    pub rounds: usize,
    pub packets: usize,
    pub live_rounds: usize,
    pub live_packets: usize,
    pub ablation: bool,
    pub control_changes: usize,
    pub tcp_rounds: usize,
    /// How long the UDP proxy benchmark holds each offered rate.
    pub proxy_seconds: f64,
    /// Windows over which the health-check benchmark reads the agent's CPU time.
    pub health_windows: usize,
}

impl Options {
    /// The `--quick` variant: fewer and shorter rounds.
    pub fn quick(ablation: bool) -> Self {
        Self {
            rounds: 3,
            packets: 500,
            live_rounds: 3,
            live_packets: 300_000,
            ablation,
            control_changes: 30,
            tcp_rounds: 1,
            proxy_seconds: 0.5,
            health_windows: 3,
        }
    }
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the benchmark loads XDP programs and must run as root (`sudo -E cargo xtask bench`)");
    }
    let out = cmd::workspace_root().join("target/bench");
    let ablation_dir = out.join("ablation");
    if o.ablation {
        build_ablation_objects(&ablation_dir)?;
    }
    // Built before timing anything: never a build next to a benchmark.
    cmd::run(cmd::cargo().args(["bench", "-p", "lb-tests", "--no-run"]))?;
    let rounds = o.rounds.to_string();
    let packets = o.packets.to_string();
    cmd::run(&mut bench("config_validation", &out, &[]))?;
    cmd::run(&mut bench("xdp_paths", &out, &["--rounds", &rounds, "--packets", &packets]))?;
    let (live_rounds, live_packets) = (o.live_rounds.to_string(), o.live_packets.to_string());
    let mut live = bench("xdp_live", &out, &["--rounds", &live_rounds, "--packets", &live_packets]);
    if o.ablation {
        live.arg("--ablation").arg(&ablation_dir);
    }
    cmd::run(&mut live)?;
    cmd::run(&mut bench("control_latency", &out, &["--changes", &o.control_changes.to_string()]))?;
    cmd::run(&mut bench("tcp_throughput", &out, &["--rounds", &o.tcp_rounds.to_string()]))?;
    cmd::run(&mut bench("udp_proxy", &out, &["--seconds", &o.proxy_seconds.to_string()]))?;
    cmd::run(&mut bench("health_scale", &out, &["--windows", &o.health_windows.to_string()]))
}

/// `cargo bench` of lb-tests' benchmark `name` with `args`, writing its JSON to `out/NAME.json`.
fn bench(name: &str, out: &Path, args: &[&str]) -> Command {
    let mut command = cmd::cargo();
    command.args(["bench", "-p", "lb-tests", "--bench", name, "--"]).args(args);
    command.arg("--json").arg(out.join(format!("{name}.json")));
    command
}

/// Builds the balancer once per fast-path stage, stopping after it, as `stop-N.o` in `dir`: the
/// same build as lb-userspace's build.rs (aya-build) makes, with the stage in the environment.
fn build_ablation_objects(dir: &Path) -> anyhow::Result<()> {
    let root = cmd::workspace_root();
    let toolchain = std::fs::read_to_string(root.join("rust-toolchain.toml"))
        .context("reading rust-toolchain.toml")?
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = ").map(|v| v.trim_matches('"').to_string()))
        .context("rust-toolchain.toml has no `channel = \"...\"` line")?;
    let target_dir = dir.join("target");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (stage, name) in ablation::STAGES {
        println!("== balancer stopping after {name}");
        cmd::run(
            Command::new("rustup")
                .args(["run", &toolchain, "cargo", "build", "--package", "lb-ebpf", "--bin", "balancer", "--release"])
                .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core", "--target-dir"])
                .arg(&target_dir)
                .current_dir(&root)
                .env_remove("RUSTC")
                .env_remove("RUSTC_WORKSPACE_WRAPPER")
                .env("RUSTC_BOOTSTRAP", "1")
                .env("CARGO_ENCODED_RUSTFLAGS", "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf")
                .env(ablation::ENV, stage.to_string()),
        )?;
        let built = target_dir.join("bpfel-unknown-none/release/balancer");
        let object = dir.join(format!("stop-{stage}.o"));
        std::fs::copy(&built, &object)
            .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    }
    Ok(())
}
