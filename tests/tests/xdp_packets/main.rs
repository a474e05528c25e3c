//! In-kernel packet tests: the real compiled XDP programs run through `BPF_PROG_RUN` (repeat = 1)
//! on table-driven fixtures. Each fixture gives input bytes and expects a verdict, exact output
//! bytes and exact counter changes (one reason counter up by one packet, nothing else; VIP and
//! backend counters where traffic is forwarded).
//!
//! The process moves into a private network namespace first, so FIB lookups see only what these
//! tests create, and nothing can reach the machine's interfaces. Needs root; never skips.
//!
//! One file per concern, each with its `cases()`: [`parse`] (what passes, what is dropped,
//! truncation), [`encap`] (forwarded bytes, MTU), [`flows`] (the flow table under change),
//! [`schedulers`], [`nexthop`] (FIB and resolved next hops), [`flood`], [`admission`], [`icmp`],
//! [`fragments`], [`sessions`] (session keys), [`decap`] (the backends' program) and [`kernel`] (verifier budget, pinned maps,
//! VLAN offload). [`fixture`] is their harness: the loaded programs, the VIPs every fixture starts
//! from, and the checks; frame builders shared with the fuzzer are in `lb_tests::packet`.

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use lb_tests::privileged::{enter_private_netns, require_root};
use libtest_mimic::{Arguments, Failed, Trial};

use fixture::{Env, Shared};

mod admission;
mod decap;
mod encap;
mod fixture;
mod flood;
mod flows;
mod fragments;
mod icmp;
mod kernel;
mod nexthop;
mod parse;
mod schedulers;
mod sessions;

fn main() -> anyhow::Result<()> {
    let mut args = Arguments::from_args();
    // One loaded program and shared counters: fixtures run one at a time.
    args.test_threads = Some(1);
    require_root("the in-kernel packet tests")?;
    enter_private_netns()?;
    // Round-robin positions are per CPU: keep every run on one CPU so the sequence is predictable.
    pin_to_cpu0()?;
    let env: Shared = Arc::new(Mutex::new(Env::new().context("loading the XDP programs")?));
    let trials = parse::cases()
        .into_iter()
        .chain(encap::cases())
        .chain(flows::cases())
        .chain(schedulers::cases())
        .chain(nexthop::cases())
        .chain(flood::cases())
        .chain(decap::cases())
        .chain(kernel::cases())
        .chain(admission::cases())
        .chain(icmp::cases())
        .chain(fragments::cases())
        .chain(sessions::cases())
        .map(|(name, body)| {
            let env = Arc::clone(&env);
            Trial::test(name, move || {
                let mut env = env.lock().map_err(|_| Failed::from("an earlier fixture panicked"))?;
                body(&mut env).map_err(|e| Failed::from(format!("{e:#}")))
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}

fn pin_to_cpu0() -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}
