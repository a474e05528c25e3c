//! Developer workflows: `cargo xtask <command>`.
//!
//! Layout:
//! - [`deps`]: installs what a fresh machine lacks (Debian packages, rust-src, bpf-linker), idempotently.
//! - [`test`]: every test tier (lint, host unit tests, in-kernel packet tests), with a summary.
//! - [`bench`]: the benchmark suite (`BPF_PROG_RUN` and live frames, optionally by stage).
//! - [`perfdoc`]: docs/performance.md from the benchmarks' results.
//! - [`lab`]: the namespaced lab and the demo.
//! - [`package`]: the Debian package and its install check.
//! - [`cmd`]: running commands with readable failures.
mod bench;
mod cmd;
mod deps;
mod lab;
mod package;
mod perfdoc;
mod perfplot;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Set-up, tests and benchmarks of the XDP load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks to build and test the project (Debian packages, rust-src, bpf-linker).
    Deps,
    /// Run every test tier: lint, unit, packet (in-kernel; needs root). `--tier` runs one.
    Test {
        #[arg(long, value_enum)]
        tier: Option<test::Tier>,
    },
    /// The fuzzer: structure-aware packets through the real XDP programs, checked against the
    /// data plane's invariants (needs root). A failure prints the seed that replays it.
    Fuzz {
        /// Packets to run.
        #[arg(long, default_value_t = 1_000_000)]
        packets: u64,
        /// Seed (decimal or 0x-hex); a fresh one if absent.
        #[arg(long, value_parser = parse_seed)]
        seed: Option<u64>,
    },
    /// The balancer in the namespaced lab with real servers and clients, then a summary (needs root).
    Demo {
        /// Two balancers behind a BGP router instead: ECMP, a drain and a member's death.
        #[arg(long)]
        fleet: bool,
    },
    /// Build the Debian package (`target/package/lb_VERSION_ARCH.deb`): lb, its systemd unit, an
    /// example /etc/lb/lb.toml, shell completions and man pages.
    Package,
    /// Bring the namespaced lab up or down (needs root).
    Lab {
        #[arg(value_enum)]
        action: LabAction,
    },
    /// The benchmark suite: ns per packet of the balancer's paths (`BPF_PROG_RUN` and live frames in
    /// native mode) next to a minimal `XDP_TX` program, in the same rounds (needs root). Results
    /// as tables and as JSON under target/bench/.
    Bench {
        /// Fewer, shorter rounds (about 3 minutes).
        #[arg(long)]
        quick: bool,
        /// Also measure builds that stop after each stage of the fast path (its cost by stage).
        #[arg(long)]
        ablation: bool,
        /// Then write docs/performance.md from the results.
        #[arg(long)]
        write_docs: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LabAction {
    Up,
    Down,
}

fn parse_seed(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|_| format!("\"{s}\" is not a seed (a decimal or 0x-hexadecimal number)"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    std::env::set_current_dir(cmd::workspace_root())?;
    match cli.command {
        Command::Deps => deps::ensure(),
        Command::Test { tier } => {
            deps::ensure()?;
            test::run(tier)
        }
        Command::Fuzz { packets, seed } => {
            deps::ensure()?;
            test::fuzz(packets, seed)
        }
        Command::Demo { fleet } => {
            deps::ensure()?;
            if fleet { lab::demo_fleet() } else { lab::demo() }
        }
        Command::Package => {
            deps::ensure()?;
            package::build().map(drop)
        }
        Command::Lab { action } => {
            deps::ensure()?;
            match action {
                LabAction::Up => lab::up(),
                LabAction::Down => lab::down(),
            }
        }
        Command::Bench { quick, ablation, write_docs } => {
            deps::ensure()?;
            let options = if quick {
                bench::Options::quick(ablation)
            } else {
                bench::Options {
                    rounds: 15,
                    packets: 2000,
                    live_rounds: 7,
                    live_packets: 1_000_000,
                    ablation,
                    control_changes: 100,
                    tcp_rounds: 3,
                    proxy_seconds: 1.0,
                    health_windows: 5,
                }
            };
            bench::run(&options)?;
            if write_docs {
                let root = cmd::workspace_root();
                let command = if quick { "cargo xtask bench --quick" } else { "cargo xtask bench" };
                let command = format!("{command}{} --write-docs", if ablation { " --ablation" } else { "" });
                perfdoc::write(&root.join("target/bench"), &root.join("docs/performance.md"), &command)?;
            }
            Ok(())
        }
    }
}
