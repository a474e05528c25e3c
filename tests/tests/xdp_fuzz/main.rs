//! The fuzzer: structure-aware packets ([`generate`]) run through the real balancer and
//! decapsulation programs with `BPF_PROG_RUN`, each checked against [`invariants`], and at the end
//! the reason counters checked to account for every packet run, each under the verdict it got.
//!
//! `LB_FUZZ_PACKETS` (packets run, default 50,000, what every CI run takes; generated frames
//! shorter than an Ethernet header, which `BPF_PROG_RUN` refuses, do not count) and `LB_FUZZ_SEED` (default a
//! fixed one, so CI is reproducible) set the run; `cargo xtask fuzz` runs a million with a fresh
//! seed. A failure names the seed, the packet's index, its template and bytes: the same seed
//! replays it. Needs root; never skips.

mod generate;
mod invariants;
mod model;

use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::{Context as _, ensure};
use invariants::Class;
use lb_common::counters::{Reason, ReasonCounter};
use lb_tests::{
    packet::hex,
    privileged::{enter_private_netns, require_root},
    xdp::run_once,
};
use lb_userspace::dataplane::{Balancer, BalancerSizes, Decap};
use libtest_mimic::{Arguments, Failed, Trial};

/// Packets of a run unless `LB_FUZZ_PACKETS` says otherwise.
const DEFAULT_PACKETS: u64 = 50_000;
const DEFAULT_SEED: u64 = 0x6c62_2d66_757a_7a31;
/// The kernel's `BPF_PROG_RUN` takes no XDP frame shorter than an Ethernet header.
const SHORTEST_FRAME: usize = 14;

fn main() -> anyhow::Result<()> {
    let args = Arguments::from_args();
    require_root("the fuzzer")?;
    enter_private_netns()?;
    let packets = env_number("LB_FUZZ_PACKETS")?.unwrap_or(DEFAULT_PACKETS);
    let seed = env_number("LB_FUZZ_SEED")?.unwrap_or(DEFAULT_SEED);
    let name = format!("fuzz/{packets}_packets_seed_{seed:#x}");
    let trial = Trial::test(name, move || fuzz(packets, seed).map_err(|e| Failed::from(format!("{e:#}"))));
    libtest_mimic::run(&args, vec![trial]).exit()
}

fn env_number(name: &str) -> anyhow::Result<Option<u64>> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) => {
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.map(Some).with_context(|| format!("{name}={v} is not a number"))
        }
    }
}

/// Verdict classes a reason counts under: `tx_` sent, `drop_` dropped, the rest passed.
fn class_of(reason: Reason) -> Class {
    let name = reason.name();
    if name.starts_with("tx_") {
        Class::Sent
    } else if name.contains("drop_") {
        Class::Drop
    } else {
        Class::Pass
    }
}

/// Packets per verdict class counted between two readings of a program's reason counters.
fn counted(before: &[ReasonCounter], after: &[ReasonCounter]) -> BTreeMap<Class, u64> {
    let mut by_class = BTreeMap::new();
    for (i, reason) in Reason::ALL.iter().enumerate() {
        *by_class.entry(class_of(*reason)).or_default() += after[i].packets - before[i].packets;
    }
    by_class.retain(|_, n| *n > 0);
    by_class
}

fn fuzz(packets: u64, seed: u64) -> anyhow::Result<()> {
    let model = model::Model::standard();
    let mut balancer = Balancer::load(BalancerSizes::flows(65_536))?;
    let mut decap = Decap::load()?;
    model.install(&mut balancer, &mut decap)?;
    let (balancer_before, decap_before) = (balancer.reason_counters()?, decap.reason_counters()?);
    let mut generator = generate::Generator::new(seed);
    let mut verdicts: BTreeMap<Class, u64> = BTreeMap::new();
    let mut decap_verdicts: BTreeMap<Class, u64> = BTreeMap::new();
    let mut templates: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut run, mut skipped, mut mutated) = (0u64, 0u64, 0u64);
    let mut index = 0u64;
    while run < packets {
        let packet = generator.next(&model);
        index += 1;
        if packet.bytes.len() < SHORTEST_FRAME {
            skipped += 1;
            continue;
        }
        run += 1;
        mutated += u64::from(packet.mutated);
        *templates.entry(packet.template).or_default() += 1;
        let fail = |program: &str, input: &[u8], verdict: u32, output: &[u8], error: String| {
            anyhow::anyhow!(
                "{program}: {error}\n  seed {seed:#x}, packet {run} (generated {index}, template {}, mutated {}): \
                 replay with LB_FUZZ_SEED={seed:#x} LB_FUZZ_PACKETS={run}\n  input:  {}\n  verdict {verdict}, output: {}",
                packet.template,
                packet.mutated,
                hex(input),
                hex(output)
            )
        };
        let out = run_once(balancer.program()?, &packet.bytes, None)?;
        let class = invariants::balancer(&model, &packet.bytes, out.verdict, &out.output)
            .map_err(|e| fail("balancer", &packet.bytes, out.verdict, &out.output, e))?;
        *verdicts.entry(class).or_default() += 1;
        // The backends' side: every encapsulation the balancer sent (a round trip), and the
        // generated frames themselves (tunnel packets from anyone, and anything else).
        let mut to_decap = vec![packet.bytes.clone()];
        if class == Class::Sent {
            to_decap.push(out.output);
        }
        for input in to_decap {
            let out = run_once(decap.program()?, &input, None)?;
            let class = invariants::decap(&model, &input, out.verdict, &out.output)
                .map_err(|e| fail("decap", &input, out.verdict, &out.output, e))?;
            *decap_verdicts.entry(class).or_default() += 1;
        }
    }
    let balancer_counted = counted(&balancer_before, &balancer.reason_counters()?);
    let decap_counted = counted(&decap_before, &decap.reason_counters()?);
    let mut report = format!(
        "    {run} packets run ({skipped} shorter than an Ethernet header skipped, {mutated} mutated), seed {seed:#x}\n"
    );
    let _ = writeln!(report, "    templates: {templates:?}");
    let _ = writeln!(report, "    balancer verdicts: {verdicts:?}; reason counters: {balancer_counted:?}");
    let _ = writeln!(report, "    decap verdicts: {decap_verdicts:?}; reason counters: {decap_counted:?}");
    let top = top_reasons(&balancer_before, &balancer.reason_counters()?);
    let _ = writeln!(report, "    balancer reasons: {top}");
    print!("{report}");
    ensure!(balancer_counted == verdicts, "the balancer's reason counters do not account for its verdicts\n{report}");
    ensure!(
        decap_counted == decap_verdicts,
        "the decapsulation's reason counters do not account for its verdicts\n{report}"
    );
    Ok(())
}

fn top_reasons(before: &[ReasonCounter], after: &[ReasonCounter]) -> String {
    let mut all: Vec<(u64, &str)> = Reason::ALL
        .iter()
        .enumerate()
        .map(|(i, r)| (after[i].packets - before[i].packets, r.name()))
        .filter(|(n, _)| *n > 0)
        .collect();
    all.sort_by(|a, b| b.cmp(a));
    all.iter().map(|(n, name)| format!("{name} {n}")).collect::<Vec<_>>().join(", ")
}
