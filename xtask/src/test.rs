//! The test tiers. `cargo xtask test` runs them all and fails if any fails, or if the privileged
//! tiers could not run (they need root and never skip).

use std::time::Instant;

use anyhow::bail;

use crate::cmd::{self, run_tee};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tier {
    /// rustfmt and clippy, host crates and the eBPF crate on its target.
    Lint,
    /// Host unit tests: hashing, Maglev, layouts, parsing helpers.
    Unit,
    /// The Debian package: built, installed with dpkg, checked, purged (root).
    Package,
    /// In-kernel packet tests: the compiled XDP programs through `BPF_PROG_RUN` (root).
    Packet,
    /// End-to-end tests in the namespaced lab with real servers and clients (root).
    E2e,
}

/// Fewest in-kernel packet fixtures that make the tier count (guards against a filter or a
/// harness change silently running fewer).
const MIN_PACKET_FIXTURES: usize = 80;
/// Fewest end-to-end tests that make the tier count.
const MIN_E2E_TESTS: usize = 25;

struct Outcome {
    tier: Tier,
    passed: usize,
    seconds: f64,
    error: Option<String>,
}

pub fn run(only: Option<Tier>) -> anyhow::Result<()> {
    let tiers = match only {
        Some(t) => vec![t],
        None => vec![Tier::Lint, Tier::Unit, Tier::Package, Tier::Packet, Tier::E2e],
    };
    let mut outcomes = Vec::new();
    for tier in tiers {
        println!("\n=== tier: {tier:?} ===");
        let start = Instant::now();
        let result = run_tier(tier);
        let seconds = start.elapsed().as_secs_f64();
        outcomes.push(match result {
            Ok(passed) => Outcome { tier, passed, seconds, error: None },
            Err(e) => Outcome { tier, passed: 0, seconds, error: Some(format!("{e:#}")) },
        });
    }
    println!("\n=== summary ===");
    for o in &outcomes {
        match &o.error {
            None => println!("{:<8} ok      {:>4} passed  {:>6.1} s", format!("{:?}", o.tier), o.passed, o.seconds),
            Some(e) => println!("{:<8} FAILED  {e}", format!("{:?}", o.tier)),
        }
    }
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    let passed: usize = outcomes.iter().map(|o| o.passed).sum();
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} test tier(s) failed");
    }
    Ok(())
}

fn run_tier(tier: Tier) -> anyhow::Result<usize> {
    match tier {
        Tier::Lint => lint(),
        Tier::Unit => {
            let mut passed = cargo_test(&["-p", "lb-common", "--features", "user"])?;
            passed += cargo_test(&["-p", "lb-userspace", "-p", "xtask"])?;
            Ok(passed)
        }
        Tier::Package => crate::package::check(&crate::package::build()?),
        Tier::Packet => {
            if !cmd::is_root() {
                bail!(
                    "the packet tier loads XDP programs and must run as root (`sudo -E cargo xtask test`); it is never skipped"
                );
            }
            let passed = cargo_test(&["-p", "lb-tests", "--test", "xdp_packets"])?;
            if passed < MIN_PACKET_FIXTURES {
                bail!("only {passed} packet fixtures ran, expected at least {MIN_PACKET_FIXTURES}");
            }
            // The fuzzer's CI run: its default packets and seed (`cargo xtask fuzz` runs more).
            Ok(passed + cargo_test(&["-p", "lb-tests", "--test", "xdp_fuzz", "--", "--nocapture"])?)
        }
        Tier::E2e => {
            if !cmd::is_root() {
                bail!(
                    "the e2e tier builds network namespaces and must run as root (`sudo -E cargo xtask test`); it is never skipped"
                );
            }
            let mut passed = 0;
            for binary in ["lab_e2e", "lab_control", "lab_schedulers", "lab_hostile", "lab_fleet", "lab_sessions"] {
                passed += cargo_test(&["-p", "lb-tests", "--test", binary])?;
            }
            if passed < MIN_E2E_TESTS {
                bail!("only {passed} end-to-end tests ran, expected at least {MIN_E2E_TESTS}");
            }
            Ok(passed)
        }
    }
}

/// Runs the fuzzer (`tests/tests/xdp_fuzz`) on `packets` packets from `seed` (a fresh one if
/// none), in a release build: a million packets take about a minute.
pub fn fuzz(packets: u64, seed: Option<u64>) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the fuzzer loads XDP programs and must run as root (`sudo -E cargo xtask fuzz`)");
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    println!(
        "fuzzing {packets} packets from seed {seed:#x} (replay: cargo xtask fuzz --packets {packets} --seed {seed:#x})"
    );
    cmd::run(
        cmd::cargo()
            .args(["test", "--release", "-p", "lb-tests", "--test", "xdp_fuzz", "--", "--nocapture"])
            .env("LB_FUZZ_PACKETS", packets.to_string())
            .env("LB_FUZZ_SEED", format!("{seed:#x}")),
    )
}

/// Runs `cargo test ARGS`; returns how many tests passed.
fn cargo_test(args: &[&str]) -> anyhow::Result<usize> {
    let (ok, out) = run_tee(cmd::cargo().arg("test").args(args))?;
    if !ok {
        bail!("cargo test {} failed", args.join(" "));
    }
    Ok(passed_count(&out))
}

/// Sum of "N passed" over libtest's "test result:" lines.
fn passed_count(output: &str) -> usize {
    output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("test result: "))
        .filter_map(|rest| rest.split(';').next())
        .filter_map(|first| first.split_whitespace().nth(1))
        .filter_map(|n| n.parse::<usize>().ok())
        .sum()
}

fn lint() -> anyhow::Result<usize> {
    cmd::run(cmd::cargo().args(["fmt", "--all", "--", "--check"]))?;
    cmd::run(cmd::cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    cmd::run(cmd::cargo().args([
        "clippy",
        "-p",
        "lb-common",
        "--features",
        "user",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate on its own target, built like aya-build builds it.
    cmd::run(
        cmd::cargo()
            .current_dir(cmd::workspace_root().join("lb-ebpf"))
            .args(["clippy", "--target", "bpfel-unknown-none", "-Z", "build-std=core", "--bins", "--release"])
            .args(["--target-dir", "../target/ebpf-clippy", "--", "-D", "warnings"])
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_ENCODED_RUSTFLAGS", "--cfg=bpf_target_arch=\"x86_64\""),
    )?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::passed_count;

    #[test]
    fn counts_passed_tests_over_result_lines() {
        let out = "test a ... ok\ntest result: ok. 12 passed; 0 failed; 0 ignored\n\
                   test result: ok. 0 passed; 0 failed\ntest result: FAILED. 3 passed; 1 failed\n";
        assert_eq!(passed_count(out), 15);
    }
}
