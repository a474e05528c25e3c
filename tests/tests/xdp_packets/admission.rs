//! Fixtures of admission (`lb_common::admission`): source lists, anti-spoofing, per-source rates,
//! and the keyed flow hash.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, ensure};
use lb_common::{
    admission::{AdmissionPolicy, Gcra, REFUSALS, verdict},
    backend::Backend,
    counters::Reason,
    flow::{HashKey, flow_hash},
    maglev::table_slot,
    vip::VipKey,
};
use lb_tests::packet::{Flow, Protocol, Shape, frame, key_addr, l3_offset};
use lb_userspace::reconcile::{ListedPrefix, Scheduling, VipAdmission, VipTable};

use crate::fixture::{
    Body, CLIENT4, CLIENT6, Env, Expect, VIP4, VIP6, check, config, expect_encap, expect_encap_to, sent_to,
};

const VIP4_LISTS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 20);
const VIP6_LISTS: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x20);
const VIP4_PACKET_RATE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 21);
const VIP4_FLOW_RATE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 22);
const LISTS_INDEX: u32 = 30;
const LISTS6_INDEX: u32 = 31;
const PACKET_RATE_INDEX: u32 = 32;
const FLOW_RATE_INDEX: u32 = 33;

pub fn cases() -> Vec<(&'static str, Body)> {
    vec![
        ("admission/allow_list_serves_listed_sources", allow_list_serves_listed),
        ("admission/unlisted_source_denied_and_counted_for_its_vip", unlisted_denied),
        ("admission/longer_deny_inside_allow_wins", longer_deny_wins),
        ("admission/deny_cuts_an_established_flow_until_lifted", deny_cuts_established),
        ("admission/ipv6_lists", ipv6_lists),
        ("admission/spoofed_ipv4_sources_dropped", spoofed_v4),
        ("admission/spoofed_ipv6_sources_dropped", spoofed_v6),
        ("admission/packet_rate_per_source_prefix", packet_rate),
        ("admission/flow_rate_refuses_without_an_entry", flow_rate),
        ("hash/key_change_moves_new_flows_not_established", hash_key_change),
        ("hash/plan_shows_a_key_change_moving_new_flows", plan_key_change),
    ]
}

fn prefix(network: IpAddr, len: u8) -> ListedPrefix {
    let (family, addr) = key_addr(network);
    ListedPrefix { family, addr, len }
}

/// An admission with lists `allow` and `deny` and the given rates (None: unlimited).
fn admission(
    allow: &[(IpAddr, u8)],
    deny: &[(IpAddr, u8)],
    packets: Option<(u64, u64)>,
    flows: Option<(u64, u64)>,
    source_prefix_v4: u8,
) -> VipAdmission {
    let mut lists = BTreeMap::new();
    for &(network, len) in allow {
        lists.insert(prefix(network, len), verdict::ALLOW);
    }
    for &(network, len) in deny {
        lists.insert(prefix(network, len), verdict::DENY);
    }
    let rate = |r: Option<(u64, u64)>| r.map_or(Gcra::default(), |(rate, burst)| Gcra::new(rate, burst));
    let unlisted = if allow.is_empty() { verdict::ALLOW } else { verdict::DENY };
    let policy = AdmissionPolicy::new(rate(packets), rate(flows), unlisted, !lists.is_empty(), source_prefix_v4, 64);
    VipAdmission { policy, lists }
}

/// Installs (or reinstalls) a VIP on port 80/TCP with three backends from `first_id` and
/// `admission`, as the agent orders it: policy and lists, records, then the VIP.
fn admission_vip(
    env: &mut Env,
    index: u32,
    addr: IpAddr,
    first_id: u32,
    admission: &VipAdmission,
) -> anyhow::Result<()> {
    let backends: Vec<(u32, IpAddr)> = (0..3)
        .map(|i| {
            let b = match addr {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 18, 10, i as u8 + 1)),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 11 + i as u16)),
            };
            (first_id + i, b)
        })
        .collect();
    if !env.vips.contains_key(&vip_key(addr)) {
        env.vip(index, addr, 80, Protocol::Tcp, &backends, 251)?;
    }
    set_admission(env, index, addr, admission)
}

fn vip_key(addr: IpAddr) -> VipKey {
    let (family, a) = key_addr(addr);
    VipKey::new(family, a, 80, Protocol::Tcp.number())
}

/// Gives the VIP at `addr` `admission`, keeping its backends and table.
fn set_admission(env: &mut Env, index: u32, addr: IpAddr, admission: &VipAdmission) -> anyhow::Result<()> {
    let checks = admission.policy.checks;
    env.balancer.set_admission(index, admission)?;
    let key = vip_key(addr);
    let (_, table) = env.vips[&key].clone();
    for id in table.iter().copied().collect::<std::collections::BTreeSet<_>>() {
        let (family, a) = key_addr(env.backends[&id]);
        env.balancer.set_backend(id, &Backend::new(family, a, index as u16, key.tag()).with_admission(checks))?;
    }
    let scheduling = Scheduling { admission: checks, ..Scheduling::default() };
    env.balancer.install_vip(&key, &VipTable { index, scheduling, table })?;
    Ok(())
}

fn from(env: &mut Env, src: IpAddr, dst: IpAddr) -> Flow {
    Flow { protocol: Protocol::Tcp, src, src_port: env.port(), dst, dst_port: 80 }
}

/// A new flow from `src` to `dst` must be forwarded to its Maglev backend, and its second packet too.
fn served(env: &mut Env, src: IpAddr, dst: IpAddr) -> anyhow::Result<Flow> {
    let f = from(env, src, dst);
    let input = frame(&f, &Shape::default());
    for new_flow in [true, false] {
        let expect = expect_encap(env, &f, &input, &Shape::default(), new_flow)?;
        check(env, &input, None, &expect).with_context(|| format!("{src} -> {dst}, new flow {new_flow}"))?;
    }
    Ok(f)
}

/// A packet of `f` must be dropped for `reason`, and counted for VIP `index` under it.
fn refused(env: &mut Env, f: &Flow, index: u32, reason: Reason) -> anyhow::Result<()> {
    let before = env.balancer.refusals(index)?;
    let vip_before = env.balancer.vip_counters(index)?;
    let input = frame(f, &Shape::default());
    check(env, &input, None, &Expect::drop(reason)).with_context(|| format!("{} -> {}", f.src, f.dst))?;
    let after = env.balancer.refusals(index)?;
    for (i, r) in REFUSALS.iter().enumerate() {
        let want = before[i] + u64::from(*r == reason);
        ensure!(after[i] == want, "VIP {index} refusals {}: {} -> {}, expected {want}", r.name(), before[i], after[i]);
    }
    let vip_after = env.balancer.vip_counters(index)?;
    ensure!(vip_after.packets == vip_before.packets + 1, "VIP {index} packets {vip_before:?} -> {vip_after:?}");
    Ok(())
}

fn lists_vip(env: &mut Env) -> anyhow::Result<()> {
    // Serve 198.18.0.0/24 but its 198.18.0.64/26.
    let lists = admission(
        &[(Ipv4Addr::new(198, 18, 0, 0).into(), 24)],
        &[(Ipv4Addr::new(198, 18, 0, 64).into(), 26)],
        None,
        None,
        32,
    );
    admission_vip(env, LISTS_INDEX, VIP4_LISTS.into(), 1000, &lists)
}

fn allow_list_serves_listed(env: &mut Env) -> anyhow::Result<()> {
    lists_vip(env)?;
    served(env, CLIENT4.into(), VIP4_LISTS.into())?;
    served(env, Ipv4Addr::new(198, 18, 0, 200).into(), VIP4_LISTS.into())?;
    Ok(())
}

fn unlisted_denied(env: &mut Env) -> anyhow::Result<()> {
    lists_vip(env)?;
    let f = from(env, Ipv4Addr::new(198, 18, 5, 5).into(), VIP4_LISTS.into());
    refused(env, &f, LISTS_INDEX, Reason::DropSourceDenied)?;
    ensure!(env.balancer.flow(&f.key()).is_none(), "a denied source got a flow-table entry");
    // Other VIPs, without lists, still serve it.
    served(env, Ipv4Addr::new(198, 18, 5, 5).into(), VIP4.into())?;
    Ok(())
}

fn longer_deny_wins(env: &mut Env) -> anyhow::Result<()> {
    lists_vip(env)?;
    let f = from(env, Ipv4Addr::new(198, 18, 0, 70).into(), VIP4_LISTS.into());
    refused(env, &f, LISTS_INDEX, Reason::DropSourceDenied)
}

fn deny_cuts_established(env: &mut Env) -> anyhow::Result<()> {
    lists_vip(env)?;
    let client = Ipv4Addr::new(198, 18, 0, 11);
    let f = served(env, client.into(), VIP4_LISTS.into())?;
    let mut denied = admission(
        &[(Ipv4Addr::new(198, 18, 0, 0).into(), 24)],
        &[(Ipv4Addr::new(198, 18, 0, 64).into(), 26), (client.into(), 32)],
        None,
        None,
        32,
    );
    set_admission(env, LISTS_INDEX, VIP4_LISTS.into(), &denied)?;
    refused(env, &f, LISTS_INDEX, Reason::DropSourceDenied)?;
    ensure!(env.balancer.flow(&f.key()).is_some(), "the refused packet removed the flow's entry");
    // Lifted: the flow goes on where it was, as an established flow.
    denied.lists.remove(&prefix(client.into(), 32));
    set_admission(env, LISTS_INDEX, VIP4_LISTS.into(), &denied)?;
    let input = frame(&f, &Shape::default());
    let expect = expect_encap(env, &f, &input, &Shape::default(), false)?;
    check(env, &input, None, &expect)
}

fn ipv6_lists(env: &mut Env) -> anyhow::Result<()> {
    let lists = admission(&[], &[(Ipv6Addr::new(0xfd00, 0, 0, 0xbad, 0, 0, 0, 0).into(), 64)], None, None, 32);
    admission_vip(env, LISTS6_INDEX, VIP6_LISTS.into(), 1010, &lists)?;
    // A deny list alone: everyone else is served.
    served(env, CLIENT6.into(), VIP6_LISTS.into())?;
    let f = from(env, Ipv6Addr::new(0xfd00, 0, 0, 0xbad, 0, 0, 0, 7).into(), VIP6_LISTS.into());
    refused(env, &f, LISTS6_INDEX, Reason::DropSourceDenied)
}

fn spoofed_v4(env: &mut Env) -> anyhow::Result<()> {
    let sources: [Ipv4Addr; 8] = [
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::new(0, 1, 2, 3),
        Ipv4Addr::LOCALHOST,
        Ipv4Addr::new(224, 0, 0, 1),
        Ipv4Addr::new(240, 1, 1, 1),
        Ipv4Addr::BROADCAST,
        // The balancer's own encapsulation prefix (198.18.200.0/24 in these fixtures).
        Ipv4Addr::new(198, 18, 200, 9),
        // A VIP address.
        VIP4,
    ];
    for src in sources {
        let f = from(env, src.into(), VIP4.into());
        refused(env, &f, 0, Reason::DropSpoofedSource)?;
    }
    // Next to them, real clients.
    served(env, Ipv4Addr::new(198, 18, 201, 9).into(), VIP4.into())?;
    Ok(())
}

fn spoofed_v6(env: &mut Env) -> anyhow::Result<()> {
    let sources: [Ipv6Addr; 6] = [
        Ipv6Addr::UNSPECIFIED,
        Ipv6Addr::LOCALHOST,
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        Ipv4Addr::new(198, 18, 0, 10).to_ipv6_mapped(),
        // The encapsulation prefix fd00:200::/112.
        Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 0x99),
        VIP6,
    ];
    for src in sources {
        let f = from(env, src.into(), VIP6.into());
        refused(env, &f, 3, Reason::DropSpoofedSource)?;
    }
    served(env, Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 1, 0x99).into(), VIP6.into())?;
    Ok(())
}

fn packet_rate(env: &mut Env) -> anyhow::Result<()> {
    // One packet a second per /24, in bursts of 3: the test's packets come within milliseconds.
    let limited = admission(&[], &[], Some((1, 3)), None, 24);
    admission_vip(env, PACKET_RATE_INDEX, VIP4_PACKET_RATE.into(), 1020, &limited)?;
    let f = served(env, Ipv4Addr::new(198, 18, 30, 1).into(), VIP4_PACKET_RATE.into())?;
    let input = frame(&f, &Shape::default());
    let expect = expect_encap(env, &f, &input, &Shape::default(), false)?;
    check(env, &input, None, &expect).context("third packet of the burst")?;
    // The burst is spent: the established flow's next packet, and any of the same /24, are refused.
    refused(env, &f, PACKET_RATE_INDEX, Reason::DropSourcePacketRate)?;
    let neighbour = from(env, Ipv4Addr::new(198, 18, 30, 2).into(), VIP4_PACKET_RATE.into());
    refused(env, &neighbour, PACKET_RATE_INDEX, Reason::DropSourcePacketRate)?;
    ensure!(env.balancer.flow(&neighbour.key()).is_none(), "a refused new flow got a flow-table entry");
    // Another /24 has its own bucket.
    served(env, Ipv4Addr::new(198, 18, 31, 1).into(), VIP4_PACKET_RATE.into())?;
    Ok(())
}

fn flow_rate(env: &mut Env) -> anyhow::Result<()> {
    // Two new flows per client at once, then one a second; packets unlimited.
    let limited = admission(&[], &[], None, Some((1, 2)), 32);
    admission_vip(env, FLOW_RATE_INDEX, VIP4_FLOW_RATE.into(), 1030, &limited)?;
    let client: IpAddr = Ipv4Addr::new(198, 18, 40, 1).into();
    let first = served(env, client, VIP4_FLOW_RATE.into())?;
    served(env, client, VIP4_FLOW_RATE.into())?;
    let third = from(env, client, VIP4_FLOW_RATE.into());
    refused(env, &third, FLOW_RATE_INDEX, Reason::DropSourceFlowRate)?;
    ensure!(env.balancer.flow(&third.key()).is_none(), "a refused new flow got a flow-table entry");
    // Established flows of the client go on: the limit is on new flows.
    for _ in 0..3 {
        let input = frame(&first, &Shape::default());
        let expect = expect_encap(env, &first, &input, &Shape::default(), false)?;
        check(env, &input, None, &expect)?;
    }
    served(env, Ipv4Addr::new(198, 18, 40, 2).into(), VIP4_FLOW_RATE.into())?;
    Ok(())
}

/// `lb plan` of a configuration whose flow hash key differs from the running one says so, and
/// that about two thirds of a three-backend VIP's new flows move; with the same key, none do.
fn plan_key_change(env: &mut Env) -> anyhow::Result<()> {
    let config = |key: HashKey| {
        let backends: String = (1..=3).map(|i| format!("[[vip.backend]]\naddress = \"198.18.10.{i}\"\n")).collect();
        let text = format!(
            "[instance]\nname = \"fixtures\"\ninterfaces = [\"eth0\"]\nencap_source_v4 = \"198.18.200.0/24\"\n\
             encap_source_v6 = \"fd00:200::/112\"\nflow_hash_key = \"{:016x}{:016x}\"\n\
             [[vip]]\nname = \"web\"\naddress = \"{VIP4}\"\nport = 80\nprotocol = \"tcp\"\ntable_size = 65537\n{backends}",
            key[0], key[1]
        );
        lb_userspace::config::Config::parse(&text, "plan.toml").map_err(|e| anyhow::anyhow!("{e}"))
    };
    let web = |plan: &[lb_userspace::inspect::VipPlan]| -> anyhow::Result<(bool, f64)> {
        let v = plan.iter().find(|v| v.vip == format!("{VIP4}:80/tcp")).context("no plan for the web VIP")?;
        Ok((v.flow_hash_key_changes, v.hash_space_moved))
    };
    let changed = web(&lb_userspace::inspect::plan(&env.balancer, &config([7, 8])?)?)?;
    ensure!(changed.0 && (0.55..0.8).contains(&changed.1), "a new key: {changed:?}");
    let same = web(&lb_userspace::inspect::plan(&env.balancer, &config(crate::fixture::HASH_KEY)?)?)?;
    ensure!(!same.0 && same.1 < 0.01, "the same key: {same:?}");
    println!("    a new key moves {:.1}% of the VIP's hash space", changed.1 * 100.0);
    Ok(())
}

/// With another key, new flows take the slots the new key's hash gives, and their outer headers
/// carry it; established flows keep their backend and their hash.
fn hash_key_change(env: &mut Env) -> anyhow::Result<()> {
    let other: HashKey = [0x0bad_5eed_0bad_5eed, 0x1234_5678_9abc_def0];
    let established = served(env, CLIENT4.into(), VIP4.into())?;
    let (_, before_id, _) = env.predict(&established)?;
    let mut changed = config();
    changed.flow_hash_key = other;
    env.balancer.set_config(&changed)?;
    let result = (|| -> anyhow::Result<()> {
        let input = frame(&established, &Shape::default());
        let expect = expect_encap_to(env, &established, &input, &Shape::default(), before_id, false)?;
        check(env, &input, None, &expect).context("an established flow after the key change")?;
        let (index, table) = env.lookup_vip(&established).map(|(i, t)| (i, t.clone())).context("VIP")?;
        let mut moved = 0;
        for _ in 0..8 {
            let f = from(env, CLIENT4.into(), VIP4.into());
            let hash = flow_hash(&f.key(), &other);
            let id = table[table_slot(hash, table.len() as u32) as usize];
            moved += usize::from(id != env.predict(&f)?.1);
            let input = frame(&f, &Shape::default());
            let l3 = l3_offset(&Shape::default());
            let expect = sent_to(&input, l3, env.backends[&id], hash, Reason::TxFallback, (index, id, true));
            check(env, &input, None, &expect).context("a new flow hashed with the new key")?;
        }
        ensure!(moved > 0, "no new flow of 8 moved with the key: the key is not used");
        Ok(())
    })();
    env.balancer.set_config(&config())?;
    result
}
