//! Fixtures of next hops: the FIB lookup (same interface, another one, a route's MTU, VLANs) and
//! the next hops the agent resolves from the kernel's tables.

use std::{
    net::{IpAddr, Ipv4Addr},
    process::Command,
};

use anyhow::{Context as _, ensure};
use lb_common::{backend::Backend, counters::Reason, flow::flow_hash, nexthop::NextHop};
use lb_lab::run;
use lb_tests::{
    packet::{BALANCER_MAC, Encap, FALLBACK_MAC, Flow, Protocol, Shape, encapsulated, frame, key_addr, l3_offset},
    xdp::{XDP_REDIRECT, XDP_TX},
};
use lb_userspace::host::nexthop::NextHops;

use crate::fixture::{Body, Env, Expect, HASH_KEY, VIP4_FIB_OTHER, VIP4_FIB_SAME, VIP4_FIB_SMALL_MTU, check, flow};

pub fn cases() -> Vec<(&'static str, Body)> {
    vec![
        // Next hop from the FIB, in links this test creates in its private namespace.
        ("nexthop/fib_same_interface_tx", fib_same_interface),
        ("nexthop/fib_other_interface_redirect", fib_other_interface),
        ("nexthop/fib_route_mtu_too_big", fib_route_mtu),
        ("nexthop/vlan_tagged_other_interface_uses_fallback", fib_vlan_other_interface),
        // Next hops the agent resolves from the kernel's tables (the same links), used without the FIB.
        ("nexthop/resolved_same_interface_tx", resolved_same_interface),
        ("nexthop/resolved_other_interface_redirect", resolved_other_interface),
        ("nexthop/vlan_tagged_resolved_elsewhere_uses_fallback", resolved_vlan_other_interface),
        ("nexthop/neighbour_gone_falls_back_to_the_fib", resolved_neighbour_gone),
        ("nexthop/readdressed_backend_forgets_its_next_hop", resolved_backend_readdressed),
    ]
}

/// Creates (once) the veth links of the FIB fixtures in the test's private namespace:
/// lbt0 (ingress, 198.18.50.1/24 and 198.18.80.0/24 with a locked route MTU of 1400) and lbt2 (198.18.60.1/24),
/// with permanent neighbour entries for the backends behind them.
fn fib_links(env: &mut Env) -> anyhow::Result<()> {
    if !env.links.is_empty() {
        return Ok(());
    }
    let ip = |args: &str| run(Command::new("ip").args(args.split_whitespace())).map(drop);
    ip("link add lbt0 address 02:00:00:00:50:01 type veth peer name lbt1")?;
    ip("link add lbt2 address 02:00:00:00:60:01 type veth peer name lbt3")?;
    for dev in ["lo", "lbt0", "lbt1", "lbt2", "lbt3"] {
        ip(&format!("link set {dev} up"))?;
    }
    ip("addr add 198.18.50.1/24 dev lbt0")?;
    ip("addr add 198.18.60.1/24 dev lbt2")?;
    ip("route add 198.18.80.0/24 dev lbt0 mtu lock 1400")?;
    ip("neigh replace 198.18.50.2 lladdr 02:00:00:00:50:02 dev lbt0 nud permanent")?;
    ip("neigh replace 198.18.60.2 lladdr 02:00:00:00:60:02 dev lbt2 nud permanent")?;
    ip("neigh replace 198.18.80.2 lladdr 02:00:00:00:80:02 dev lbt0 nud permanent")?;
    run(Command::new("sysctl").args(["-qw", "net.ipv4.conf.all.forwarding=1"]))?;
    for (name, mac) in [("lbt0", [2, 0, 0, 0, 0x50, 1]), ("lbt2", [2, 0, 0, 0, 0x60, 1])] {
        let cname = std::ffi::CString::new(name)?;
        // SAFETY: valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        ensure!(index != 0, "no interface {name}");
        env.links.insert(name, (index, mac));
    }
    let single = |id: u32, a: Ipv4Addr| (id, IpAddr::V4(a));
    env.vip(10, VIP4_FIB_SAME.into(), 80, Protocol::Tcp, &[single(60, Ipv4Addr::new(198, 18, 50, 2))], 251)?;
    env.vip(11, VIP4_FIB_OTHER.into(), 80, Protocol::Tcp, &[single(61, Ipv4Addr::new(198, 18, 60, 2))], 251)?;
    env.vip(12, VIP4_FIB_SMALL_MTU.into(), 80, Protocol::Tcp, &[single(62, Ipv4Addr::new(198, 18, 80, 2))], 251)?;
    Ok(())
}

/// The FIB fixtures' expectation: encapsulated to the predicted backend with `(src, dst)` MACs.
fn fib_expect(
    env: &Env,
    f: &Flow,
    input: &[u8],
    shape: &Shape,
    macs: ([u8; 6], [u8; 6]),
    verdict: (u32, Reason),
) -> anyhow::Result<Expect> {
    let (vip, id, backend) = env.predict(f)?;
    let (src_mac, dst_mac) = macs;
    let encap = Encap {
        outer_src: Env::outer_src(f, backend),
        outer_dst: backend,
        src_mac,
        dst_mac,
        flow_hash: flow_hash(&f.key(), &HASH_KEY),
    };
    Ok(Expect {
        verdict: verdict.0,
        reason: verdict.1,
        output: Some(encapsulated(input, l3_offset(shape), &encap)),
        forwarded: Some((vip, id, true)),
    })
}

fn fib_same_interface(env: &mut Env) -> anyhow::Result<()> {
    fib_links(env)?;
    let (ingress, mac) = env.links["lbt0"];
    let shape = Shape::default();
    let f = flow(env, Protocol::Tcp, VIP4_FIB_SAME.into(), 80);
    let input = frame(&f, &shape);
    let expect = fib_expect(env, &f, &input, &shape, (mac, [2, 0, 0, 0, 0x50, 2]), (XDP_TX, Reason::TxFib))?;
    check(env, &input, Some(ingress), &expect)
}

fn fib_other_interface(env: &mut Env) -> anyhow::Result<()> {
    fib_links(env)?;
    let (ingress, _) = env.links["lbt0"];
    let (egress, mac) = env.links["lbt2"];
    let shape = Shape::default();
    let f = flow(env, Protocol::Tcp, VIP4_FIB_OTHER.into(), 80);
    let input = frame(&f, &shape);
    // Not allowed as an egress yet: dropped and counted.
    let denied = Expect { forwarded: None, ..Expect::drop(Reason::DropNoEgress) };
    check(env, &input, Some(ingress), &denied).context("egress not in the redirect map")?;
    env.balancer.add_egress(egress)?;
    let f = flow(env, Protocol::Tcp, VIP4_FIB_OTHER.into(), 80);
    let input = frame(&f, &shape);
    let expect = fib_expect(env, &f, &input, &shape, (mac, [2, 0, 0, 0, 0x60, 2]), (XDP_REDIRECT, Reason::TxRedirect))?;
    check(env, &input, Some(ingress), &expect)
}

fn fib_route_mtu(env: &mut Env) -> anyhow::Result<()> {
    fib_links(env)?;
    let (ingress, mac) = env.links["lbt0"];
    let small = Shape { payload_len: 1400 - 20 - 20 - 20, ..Shape::default() };
    let f = flow(env, Protocol::Tcp, VIP4_FIB_SMALL_MTU.into(), 80);
    let input = frame(&f, &small);
    let expect = fib_expect(env, &f, &input, &small, (mac, [2, 0, 0, 0, 0x80, 2]), (XDP_TX, Reason::TxFib))?;
    check(env, &input, Some(ingress), &expect).context("at the route MTU")?;
    let big = Shape { payload_len: small.payload_len + 1, ..Shape::default() };
    let f = flow(env, Protocol::Tcp, VIP4_FIB_SMALL_MTU.into(), 80);
    check(env, &frame(&f, &big), Some(ingress), &Expect::drop(Reason::DropTooBig))
        .context("one byte over the route MTU")
}

fn fib_vlan_other_interface(env: &mut Env) -> anyhow::Result<()> {
    fib_links(env)?;
    let (ingress, _) = env.links["lbt0"];
    let shape = Shape { vlan: Some(10), ..Shape::default() };
    let f = flow(env, Protocol::Tcp, VIP4_FIB_OTHER.into(), 80);
    let input = frame(&f, &shape);
    let expect = fib_expect(env, &f, &input, &shape, (BALANCER_MAC, FALLBACK_MAC), (XDP_TX, Reason::TxFallback))?;
    check(env, &input, Some(ingress), &expect)
}

/// Resolves every backend's next hop as the agent does, from this namespace's tables; returns
/// how many changed.
fn resolve_next_hops(env: &mut Env) -> anyhow::Result<usize> {
    let backends = env.balancer.current()?.backends;
    let mut hops = NextHops::new()?;
    Ok(hops.refresh(&backends, &mut env.balancer)?.len())
}

fn resolved_same_interface(env: &mut Env) -> anyhow::Result<()> {
    fib_links(env)?;
    resolve_next_hops(env)?;
    let (ingress, mac) = env.links["lbt0"];
    ensure!(
        env.balancer.next_hop(60)? == NextHop { ifindex: ingress, dst_mac: [2, 0, 0, 0, 0x50, 2], src_mac: mac },
        "backend 198.18.50.2 resolved to {:?}",
        env.balancer.next_hop(60)?
    );
    // The FIB would answer the same MACs: make it unable to, so only the resolved hop can.
    run(Command::new("sysctl").args(["-qw", "net.ipv4.conf.all.forwarding=0"]))?;
    let shape = Shape::default();
    let f = flow(env, Protocol::Tcp, VIP4_FIB_SAME.into(), 80);
    let input = frame(&f, &shape);
    let expect = fib_expect(env, &f, &input, &shape, (mac, [2, 0, 0, 0, 0x50, 2]), (XDP_TX, Reason::TxNextHop))?;
    let result = check(env, &input, Some(ingress), &expect);
    run(Command::new("sysctl").args(["-qw", "net.ipv4.conf.all.forwarding=1"]))?;
    result
}

fn resolved_other_interface(env: &mut Env) -> anyhow::Result<()> {
    fib_links(env)?;
    resolve_next_hops(env)?;
    let (ingress, _) = env.links["lbt0"];
    let (egress, mac) = env.links["lbt2"];
    env.balancer.add_egress(egress)?;
    let shape = Shape::default();
    let f = flow(env, Protocol::Tcp, VIP4_FIB_OTHER.into(), 80);
    let input = frame(&f, &shape);
    let expect = fib_expect(env, &f, &input, &shape, (mac, [2, 0, 0, 0, 0x60, 2]), (XDP_REDIRECT, Reason::TxRedirect))?;
    check(env, &input, Some(ingress), &expect)
}

fn resolved_vlan_other_interface(env: &mut Env) -> anyhow::Result<()> {
    fib_links(env)?;
    resolve_next_hops(env)?;
    ensure!(env.balancer.next_hop(61)?.is_known(), "backend 198.18.60.2 has no next hop");
    let (ingress, _) = env.links["lbt0"];
    let shape = Shape { vlan: Some(10), ..Shape::default() };
    let f = flow(env, Protocol::Tcp, VIP4_FIB_OTHER.into(), 80);
    let input = frame(&f, &shape);
    let expect = fib_expect(env, &f, &input, &shape, (BALANCER_MAC, FALLBACK_MAC), (XDP_TX, Reason::TxFallback))?;
    check(env, &input, Some(ingress), &expect)
}

fn resolved_neighbour_gone(env: &mut Env) -> anyhow::Result<()> {
    fib_links(env)?;
    resolve_next_hops(env)?;
    ensure!(env.balancer.next_hop(60)?.is_known(), "backend 198.18.50.2 has no next hop");
    run(Command::new("ip").args(["neigh", "del", "198.18.50.2", "dev", "lbt0"]))?;
    let changed = resolve_next_hops(env);
    let hop = env.balancer.next_hop(60);
    let (ingress, _) = env.links["lbt0"];
    let shape = Shape::default();
    let f = flow(env, Protocol::Tcp, VIP4_FIB_SAME.into(), 80);
    let input = frame(&f, &shape);
    // Neither the cache nor the FIB has a neighbour: the configured fallback MAC.
    let expect = fib_expect(env, &f, &input, &shape, (BALANCER_MAC, FALLBACK_MAC), (XDP_TX, Reason::TxFallback));
    let result = expect.and_then(|expect| check(env, &input, Some(ingress), &expect));
    run(Command::new("ip").args([
        "neigh",
        "replace",
        "198.18.50.2",
        "lladdr",
        "02:00:00:00:50:02",
        "dev",
        "lbt0",
        "nud",
        "permanent",
    ]))?;
    ensure!(changed? == 1, "one next hop should have changed");
    ensure!(!hop?.is_known(), "the next hop of a backend without a neighbour entry is kept");
    result?;
    ensure!(resolve_next_hops(env)? == 1 && env.balancer.next_hop(60)?.is_known(), "the next hop did not come back");
    Ok(())
}

fn resolved_backend_readdressed(env: &mut Env) -> anyhow::Result<()> {
    fib_links(env)?;
    resolve_next_hops(env)?;
    ensure!(env.balancer.next_hop(62)?.is_known(), "backend 198.18.80.2 has no next hop");
    let (family, addr) = key_addr(IpAddr::V4(Ipv4Addr::new(198, 18, 80, 3)));
    let old = env.balancer.current()?.backends[&62];
    env.balancer.set_backend(62, &Backend::new(family, addr, old.vip_index, old.vip_tag))?;
    let forgot = env.balancer.next_hop(62)?;
    env.balancer.set_backend(62, &old)?;
    ensure!(!forgot.is_known(), "a backend id given another address kept the old neighbour's MAC: {forgot:?}");
    ensure!(!env.balancer.next_hop(62)?.is_known(), "the next hop is the resolver's to restore");
    Ok(())
}
