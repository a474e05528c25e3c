//! The benchmarks' balancer set-up and traffic, shared by the `BPF_PROG_RUN` benchmark
//! (`benches/xdp_paths.rs`) and the live-frames one (`benches/xdp_live.rs`).
//!
//! One balancer serves UDP VIP [`VIP4`]:53 (backend ids 1..=10 at 198.18.10.1..10), the same
//! service over TCP (ids 101..=110, same addresses) and UDP VIP [`VIP6`]:53 (ids 11..=20 at
//! `fd00:10::1..10`). The IPv4 UDP VIP's scheduler is the caller's; the others use Maglev.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{
    backend::Backend,
    maglev::{MaglevBackend, build_table},
    nexthop::NextHop,
    sequence::{SequenceMember, smooth_sequence},
    vip::{VipKey, scheduler as vip_scheduler},
};
use lb_userspace::{
    dataplane::{Balancer, BalancerSizes},
    reconcile::{Scheduling, VipTable},
};

use crate::packet::{Flow, Protocol, Shape, frame, key_addr};

pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
pub const VIP_PORT: u16 = 53;
pub use crate::packet::FALLBACK_MAC;

/// IPv4 backend `i` (1..=10).
pub fn backend4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 10, i)
}

/// IPv6 backend `i` (1..=10).
pub fn backend6(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, i)
}

/// A balancer loaded from `object` whose IPv4 UDP VIP uses `scheduler` (one of
/// `lb_common::vip::scheduler`) and flood budget `new_flow_budget` (per CPU per window; 0: none).
pub fn balancer(
    object: &[u8],
    flow_table_entries: u32,
    scheduler: u8,
    new_flow_budget: u32,
) -> anyhow::Result<Balancer> {
    let mut b = Balancer::from_object(object, BalancerSizes::flows(flow_table_entries))?;
    b.set_config(&crate::packet::dataplane_config(lb_common::flow::PUBLIC_HASH_KEY))?;
    for (index, vip, backends) in [
        (0, IpAddr::V4(VIP4), (1..=10u32).map(|i| (i, IpAddr::V4(backend4(i as u8)))).collect::<Vec<_>>()),
        (1, IpAddr::V6(VIP6), (11..=20u32).map(|i| (i, IpAddr::V6(backend6(i as u16 - 10)))).collect()),
    ] {
        let (family, a) = key_addr(vip);
        let udp = VipKey::new(family, a, VIP_PORT, 17);
        let tcp = VipKey::new(family, a, VIP_PORT, 6);
        let mut maglev = Vec::new();
        for (id, addr) in backends {
            let (family, a) = key_addr(addr);
            b.set_backend(id, &Backend::new(family, a, index as u16, udp.tag()))?;
            maglev.push(MaglevBackend { addr: a, family, weight: 1, id });
        }
        let table = if index == 0 && scheduler == vip_scheduler::SEQUENCE {
            let members: Vec<SequenceMember> =
                maglev.iter().map(|m| SequenceMember { addr: m.addr, family: m.family, weight: 1, id: m.id }).collect();
            VipTable {
                index,
                scheduling: Scheduling { scheduler, new_flow_budget, ..Scheduling::default() },
                table: smooth_sequence(&members),
            }
        } else {
            let scheduling = if index == 0 {
                Scheduling { scheduler, source_prefix_len: 32, new_flow_budget, ..Scheduling::default() }
            } else {
                Scheduling::default()
            };
            VipTable { index, scheduling, table: build_table(&maglev, 65_537)? }
        };
        b.install_vip(&udp, &table)?;
        if index == 0 {
            // The same service over TCP, for the TCP hit path: another VIP, its own backend ids.
            let mut table = VipTable { index: 2, ..table };
            for id in &mut table.table {
                *id += 100;
            }
            for m in &maglev {
                b.set_backend(m.id + 100, &Backend::new(m.family, m.addr, 2, tcp.tag()))?;
            }
            b.install_vip(&tcp, &table)?;
        }
    }
    Ok(b)
}

/// Gives the IPv4 UDP VIP of [`balancer`] the admission stages that established flows run, as
/// asked: source lists (an allow list holding the benchmark's clients, 198.19.0.0/16, with a deny
/// entry inside it they miss) and a per-source packet rate far above what they send, so every
/// packet takes the lookups and the bucket and none is refused.
pub fn with_admission(b: &mut Balancer, lists: bool, packet_rate: bool) -> anyhow::Result<()> {
    use lb_common::admission::{AdmissionPolicy, Gcra, verdict};
    use std::collections::BTreeMap;

    use lb_userspace::reconcile::{ListedPrefix, VipAdmission};
    let listed = |addr: Ipv4Addr, len| {
        let (family, addr) = key_addr(IpAddr::V4(addr));
        ListedPrefix { family, addr, len }
    };
    let entries = [
        (listed(Ipv4Addr::new(198, 19, 0, 0), 16), verdict::ALLOW),
        (listed(Ipv4Addr::new(198, 19, 255, 0), 24), verdict::DENY),
    ];
    let entries = if lists { entries.into_iter().collect() } else { BTreeMap::default() };
    let packets = if packet_rate { Gcra::new(100_000_000, 100_000_000) } else { Gcra::default() };
    let unlisted = if lists { verdict::DENY } else { verdict::ALLOW };
    let policy = AdmissionPolicy::new(packets, Gcra::default(), unlisted, lists, 32, 64);
    b.set_admission(0, &VipAdmission { policy, lists: entries })?;
    let (family, a) = key_addr(IpAddr::V4(VIP4));
    let udp = VipKey::new(family, a, VIP_PORT, 17);
    for id in 1..=10u32 {
        let record = b.backend(id)?.with_admission(policy.checks);
        b.set_backend(id, &record)?;
    }
    let current = b.current()?;
    let mut table = current.vips[&udp].clone();
    table.scheduling.admission = policy.checks;
    b.install_vip(&udp, &table)?;
    Ok(())
}

/// Gives every backend of [`balancer`] the next hop `hop`, as the agent would resolve it.
pub fn set_next_hops(b: &mut Balancer, hop: &NextHop) -> anyhow::Result<()> {
    for id in (1..=20).chain(101..=110) {
        b.set_next_hop(id, hop)?;
    }
    Ok(())
}

/// `n` frames of `protocol` (TCP: ACKs of established connections) to `vip`, each from its own
/// client address and port (distinct flows).
pub fn frames(protocol: Protocol, vip: IpAddr, n: usize, salt: u32) -> Vec<Vec<u8>> {
    (0..n as u32)
        .map(|i| {
            let x = i.wrapping_mul(2_654_435_761).wrapping_add(salt);
            let src = match vip {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 19, (x >> 8) as u8, x as u8)),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, (x >> 16) as u16, x as u16)),
            };
            frame(
                &Flow { protocol, src, src_port: 1024 + (x % 60_000) as u16, dst: vip, dst_port: VIP_PORT },
                &Shape::default(),
            )
        })
        .collect()
}

/// A 60-byte IPv4 frame (80 bytes for IPv6) of `protocol` to `vip`, the size of the smallest
/// Ethernet frame: the worst case for packet rate.
pub fn small_frame(protocol: Protocol, vip: IpAddr) -> Vec<u8> {
    let src = match vip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 19, 0, 0)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 0)),
    };
    let payload_len = match protocol {
        Protocol::Udp => 18,
        Protocol::Tcp => 6,
    };
    frame(
        &Flow { protocol, src, src_port: 0, dst: vip, dst_port: VIP_PORT },
        &Shape { payload_len, ..Shape::default() },
    )
}

/// Writes a benchmark's results to `file` as pretty JSON, creating its directory.
/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn write_json(file: &str, doc: &serde_json::Value) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if let Some(dir) = std::path::Path::new(file).parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(file, serde_json::to_string_pretty(doc)?).with_context(|| format!("writing {file}"))?;
    println!("written to {file}");
    Ok(())
}
