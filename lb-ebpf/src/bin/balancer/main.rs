//! The balancer: XDP fast path of the load balancer.
//!
//! A straight line of small stages: link and IP parsing (`lb_ebpf::l2`, `lb_ebpf::l3`) ->
//! VIP lookup -> flow table, or the VIP's scheduler for new flows ([`choose_backend`]) -> MTU check
//! ([`icmp`] answers packets too big to encapsulate) -> encapsulation ([`encap`]) -> next hop and
//! verdict ([`nexthop`]) -> counters ([`maps`]).
//! Every packet is counted under exactly one [`Reason`]; nothing is logged per packet.
#![no_std]
#![no_main]

mod encap;
mod icmp;
mod maps;
mod nexthop;

use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_coarse_ns, macros::xdp, programs::XdpContext};
use lb_common::{
    backend::Backend,
    counters::Reason,
    flow::{FlowKey, FlowState, flow_hash, source_hash},
    maglev::table_slot,
    vip::{VipAddrKey, VipInfo, VipKey, scheduler},
};
use lb_ebpf::{
    access::frame_len,
    l2::{self, Link},
    l3::{self, IPPROTO_TCP, IPPROTO_UDP, Ip, L3},
};

use crate::maps::{BACKEND_STATS, BACKENDS, CONFIG, FLOWS, MAGLEV_TABLES, VIP_ADDRS, VIP_STATS, VIPS};

#[xdp]
pub fn balancer(ctx: XdpContext) -> u32 {
    let bytes = frame_len(&ctx) as u64;
    let (action, reason) = balance(&ctx, bytes);
    maps::count_reason(reason, bytes);
    action
}

#[inline(always)]
fn balance(ctx: &XdpContext, bytes: u64) -> (u32, Reason) {
    let (ether_type, l3_offset) = match l2::parse(ctx) {
        Link::Ip { ether_type, l3_offset } => (ether_type, l3_offset),
        Link::Other => return (xdp_action::XDP_PASS, Reason::PassNotIp),
        Link::Truncated => return (xdp_action::XDP_PASS, Reason::PassUnparseable),
    };
    let mut ip = match l3::parse(ctx, ether_type, l3_offset) {
        L3::Ip(ip) => ip,
        L3::Truncated => return (xdp_action::XDP_PASS, Reason::PassUnparseable),
    };
    if let Some(anomaly) = ip.anomaly {
        return refuse_if_vip_address(&ip, anomaly);
    }
    if ip.flow.protocol != IPPROTO_TCP && ip.flow.protocol != IPPROTO_UDP {
        return (xdp_action::XDP_PASS, Reason::PassNotVip);
    }
    let Some(opens_connection) = l3::ports(ctx, &mut ip) else {
        return refuse_if_vip_address(&ip, Reason::DropTruncated);
    };
    let Some(vip) = find_vip(&ip.flow) else {
        return (xdp_action::XDP_PASS, Reason::PassNotVip);
    };
    let Some(cfg) = CONFIG.get(0) else {
        return (xdp_action::XDP_DROP, Reason::DropNoEgress);
    };

    let Some((backend_id, backend, hash, new_flow)) =
        choose_backend(&ip.flow, &vip, cfg.udp_idle_timeout_ns, opens_connection)
    else {
        maps::count_traffic(&VIP_STATS, vip.index, bytes, false);
        return (xdp_action::XDP_DROP, Reason::DropNoBackend);
    };
    maps::count_traffic(&VIP_STATS, vip.index, bytes, new_flow);

    let inner_mtu = encap::inner_mtu(&backend, cfg);
    if ip.packet_len > inner_mtu {
        return icmp::too_big(ctx, &ip, inner_mtu);
    }
    let outer_len = match encap::encapsulate(ctx, &ip, &backend, hash) {
        Ok(len) => len,
        Err(reason) => return (xdp_action::XDP_DROP, reason),
    };
    let verdict = nexthop::forward(ctx, &backend, ip.l3_offset, outer_len);
    if verdict.0 != xdp_action::XDP_DROP {
        maps::count_traffic(&BACKEND_STATS, backend_id, bytes, new_flow);
    }
    verdict
}

/// A packet the balancer cannot serve: dropped if it is addressed to a VIP, passed otherwise.
#[inline(always)]
fn refuse_if_vip_address(ip: &Ip, reason: Reason) -> (u32, Reason) {
    // SAFETY: plain lookup; the value is not used.
    if unsafe { VIP_ADDRS.get(VipAddrKey::new(ip.flow.family, ip.flow.dst_addr)) }.is_some() {
        (xdp_action::XDP_DROP, reason)
    } else {
        (xdp_action::XDP_PASS, Reason::PassNotVip)
    }
}

/// The VIP for (destination, port, protocol), falling back to the address's all-ports VIP.
#[inline(always)]
fn find_vip(flow: &FlowKey) -> Option<VipInfo> {
    let mut key =
        VipKey { addr: flow.dst_addr, port: flow.dst_port, protocol: flow.protocol, family: flow.family, _pad: [0; 4] };
    // SAFETY: VIPS values are plain data, copied out at once.
    if let Some(vip) = unsafe { VIPS.get(key) } {
        return Some(*vip);
    }
    key.port = [0; 2];
    unsafe { VIPS.get(key) }.copied()
}

/// The flow's backend: its flow-table entry if it has a live one, else the scheduler's choice,
/// then remembered. A TCP SYN always asks the scheduler and replaces the entry: a client reusing
/// a source port opens a new connection and must not inherit the old one's backend.
/// Returns (backend id, backend, flow hash, whether this is a new flow).
#[inline(always)]
fn choose_backend(
    key: &FlowKey,
    vip: &VipInfo,
    udp_idle_timeout_ns: u64,
    opens_connection: bool,
) -> Option<(u32, Backend, u32, bool)> {
    let is_udp = key.protocol == IPPROTO_UDP;
    let mut now = 0;
    if !opens_connection && let Some(state) = FLOWS.get_ptr_mut(key) {
        // SAFETY: LRU values are plain data; a concurrent update at worst yields a stale backend id,
        // which is validated below.
        let (id, hash) = unsafe { ((*state).backend, (*state).hash) };
        if let Some(backend) = BACKENDS.get(id)
            && backend.keeps_flows()
        {
            if !is_udp {
                return Some((id, *backend, hash, false));
            }
            // SAFETY: as above.
            now = unsafe { bpf_ktime_get_coarse_ns() };
            let last_seen = unsafe { (*state).last_seen_ns };
            if now.wrapping_sub(last_seen) <= udp_idle_timeout_ns {
                unsafe { (*state).last_seen_ns = now };
                return Some((id, *backend, hash, false));
            }
        }
    }

    if vip.table_size == 0 {
        return None;
    }
    let hash = flow_hash(key);
    let slot = match vip.scheduler {
        scheduler::SOURCE_HASH => table_slot(source_hash(key, vip.source_prefix_len), vip.table_size),
        scheduler::SEQUENCE => maps::next_in_sequence(vip.index, vip.table_size)?,
        _ => table_slot(hash, vip.table_size),
    };
    let table = MAGLEV_TABLES.get(vip.live_table_slot())?;
    let id = *table.get(slot as usize)?;
    let backend = BACKENDS.get(id)?;
    if !backend.keeps_flows() {
        return None;
    }
    if is_udp && now == 0 {
        // SAFETY: helper without arguments.
        now = unsafe { bpf_ktime_get_coarse_ns() };
    }
    // A full table evicts its least recently used entry; an insert error only costs stickiness.
    let _ = FLOWS.insert(key, FlowState::new(id, hash, now), 0);
    Some((id, *backend, hash, true))
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
