//! Fixtures of flood mode: a VIP past its new-flow budget forwards new flows without flow-table
//! entries, and leaves flood mode when the rate falls.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context as _, ensure};
use lb_common::{counters::Reason, flood::FLOOD_WINDOW_NS, vip::VipKey};
use lb_tests::{
    packet::{Flow, Protocol, Shape, frame, key_addr},
    xdp::{run_once, verdict_name},
};
use lb_userspace::{
    dataplane::VipFlood,
    reconcile::{Scheduling, VipTable},
};

use crate::fixture::{Body, Env, Expect, check, expect_encap, flow};

pub fn cases() -> Vec<(&'static str, Body)> {
    vec![
        // Flood mode: past a VIP's new-flow budget, new flows are forwarded without entries.
        ("flood/past_the_budget_new_flows_get_no_entry_established_flows_stay", flood_enters),
        ("flood/a_quiet_window_ends_flood_mode", flood_leaves),
    ]
}

/// The flood fixtures' VIP: UDP, 3 backends, 4 new flows per CPU per window.
const VIP4_FLOOD: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 9);

const FLOOD_VIP_INDEX: u32 = 20;

const FLOOD_BUDGET: u32 = 4;

fn flood_vip(env: &mut Env) -> anyhow::Result<()> {
    let (family, a) = key_addr(VIP4_FLOOD.into());
    let key = VipKey::new(family, a, 5000, Protocol::Udp.number());
    if env.vips.contains_key(&key) {
        return Ok(());
    }
    let backends: Vec<(u32, IpAddr)> =
        (0..3).map(|i| (170 + i, IpAddr::V4(Ipv4Addr::new(198, 18, 10, 70 + i as u8)))).collect();
    env.vip(FLOOD_VIP_INDEX, VIP4_FLOOD.into(), 5000, Protocol::Udp, &backends, 251)?;
    let table = env.vips[&key].1.clone();
    let scheduling = Scheduling { new_flow_budget: FLOOD_BUDGET, ..Scheduling::default() };
    env.balancer.install_vip(&key, &VipTable { index: FLOOD_VIP_INDEX, scheduling, table })?;
    Ok(())
}

/// A packet of `f` to the flood VIP; `untracked` expects it forwarded without an entry.
fn flood_packet(env: &mut Env, f: &Flow, new_flow: bool, untracked: bool) -> anyhow::Result<()> {
    let shape = Shape::default();
    let input = frame(f, &shape);
    let mut expect = expect_encap(env, f, &input, &shape, new_flow)?;
    if untracked {
        expect.reason = Reason::TxUntracked;
    }
    check(env, &input, None, &expect)?;
    let entry = env.balancer.flow(&f.key()).is_some();
    ensure!(entry != untracked, "flow-table entry {entry}, untracked {untracked}");
    Ok(())
}

fn flood_enters(env: &mut Env) -> anyhow::Result<()> {
    // Flood state is per CPU: every packet of this fixture on one.
    lb_tests::pin_to_cpu(0)?;
    flood_vip(env)?;
    let first: Vec<Flow> = (0..FLOOD_BUDGET).map(|_| flow(env, Protocol::Udp, VIP4_FLOOD.into(), 5000)).collect();
    // Within one flood window (100 ms): outputs and entries only, the counters' readers take
    // longer than a window in a debug build.
    let shape = Shape::default();
    let expected: Vec<(Vec<u8>, Expect)> = first
        .iter()
        .map(|f| {
            let input = frame(f, &shape);
            let expect = expect_encap(env, f, &input, &shape, true)?;
            Ok((input, expect))
        })
        .collect::<anyhow::Result<_>>()?;
    for (i, (f, (input, expect))) in first.iter().zip(&expected).enumerate() {
        let run = run_once(env.balancer.program()?, input, None)?;
        ensure!(
            run.verdict == expect.verdict
                && Some(&run.output) == expect.output.as_ref()
                && env.balancer.flow(&f.key()).is_some(),
            "new flow {} of a budget of {FLOOD_BUDGET}: verdict {}, entry {}",
            i + 1,
            verdict_name(run.verdict),
            env.balancer.flow(&f.key()).is_some()
        );
    }
    let over = flow(env, Protocol::Udp, VIP4_FLOOD.into(), 5000);
    flood_packet(env, &over, true, true).context("the first new flow over the budget")?;
    flood_packet(env, &over, true, true).context("its second packet: still no entry, same backend")?;
    ensure!(env.balancer.flood(FLOOD_VIP_INDEX)? == VipFlood { flooding_cpus: 1, untracked: 2 });
    for f in &first {
        flood_packet(env, f, false, false).context("an established flow during the flood")?;
    }
    Ok(())
}

fn flood_leaves(env: &mut Env) -> anyhow::Result<()> {
    lb_tests::pin_to_cpu(0)?;
    flood_vip(env)?;
    let over: Vec<Flow> = (0..=FLOOD_BUDGET).map(|_| flow(env, Protocol::Udp, VIP4_FLOOD.into(), 5000)).collect();
    for f in &over[..FLOOD_BUDGET as usize] {
        run_once(env.balancer.program()?, &frame(f, &Shape::default()), None)?;
    }
    flood_packet(env, &over[FLOOD_BUDGET as usize], true, true).context("over the budget")?;
    // More than a whole window without a new flow.
    std::thread::sleep(std::time::Duration::from_nanos(3 * FLOOD_WINDOW_NS));
    let after = flow(env, Protocol::Udp, VIP4_FLOOD.into(), 5000);
    flood_packet(env, &after, true, false).context("the first new flow after a quiet window")?;
    ensure!(env.balancer.flood(FLOOD_VIP_INDEX)?.flooding_cpus == 0, "still in flood mode");
    Ok(())
}
