//! The balancer: XDP fast path of the load balancer.
//!
//! A straight line of small stages: link and IP parsing (`lb_ebpf::l2`, `lb_ebpf::l3`) ->
//! flow table ([`continue_flow`]: an established flow needs no VIP lookup), else VIP lookup,
//! admission ([`admission`]: source lists, anti-spoofing, per-source rates) and the VIP's
//! scheduler ([`schedule`], with flood mode) -> MTU check
//! ([`icmp`] answers packets too big to encapsulate) -> encapsulation ([`encap`]) -> next hop and
//! verdict ([`nexthop`]: the backend's next hop as the agent resolved it, else the FIB) -> counters
//! ([`maps`]). ICMP to a VIP address goes to [`icmp_in`], later fragments follow their first
//! ([`fragments`]).
//! Every packet ends in one [`verdict`] and is counted under exactly one [`Reason`]; nothing is
//! logged per packet.
#![no_std]
#![no_main]
// Atomic add on map values (`maps::add_active_flows`).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod admission;
mod encap;
mod fragments;
mod icmp;
mod icmp_in;
mod maps;
mod nexthop;
mod session;
mod verdict;

use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_coarse_ns, macros::xdp, programs::XdpContext};
use lb_common::{
    backend::Backend,
    counters::Reason,
    dataplane::DataplaneConfig,
    family,
    flow::{FLOW_TRACKS_TIME, FlowKey, FlowState, flow_clock, flow_hash, source_hash, stage},
    least_connections::{candidates, second_wins},
    maglev::table_slot,
    vip::{VipAddrKey, VipInfo, scheduler},
};
use lb_ebpf::{
    access::frame_len,
    l2::{self, Link},
    l3::{self, IPPROTO_TCP, IPPROTO_UDP, Ip, L3, Segment, fragment},
};

use crate::{
    icmp_in::Icmp,
    maps::{BACKEND_STATS, BACKENDS, CONFIG, FLOOD, FLOWS_V4, FLOWS_V6, NEXT_HOPS, VIP_ADDRS, VIP_STATS, VIPS},
    verdict::Verdict,
};

/// Benchmark builds only (`lb_common::capacity::ablation`): the stage after which the path returns
/// `XDP_TX` with the frame as it stands. 0, in every shipped build: the whole path. A constant, so
/// the checks compile away.
const STOP_AFTER: u8 = match option_env!("LB_BENCH_STOP_AFTER") {
    Some(stage) => stage.as_bytes()[0] - b'0',
    None => 0,
};

#[inline(always)]
fn stop_after(stage: u8) -> bool {
    STOP_AFTER == stage
}

// Named for `bpftool prog`: the balancer's, beside other XDP programs on the host.
#[xdp]
pub fn lb_balancer(ctx: XdpContext) -> u32 {
    let bytes = frame_len(&ctx) as u64;
    let (action, reason) = balance(&ctx, bytes);
    // Packets sent to their next hop count in their backend's counters alone
    // (`lb_common::counters::SENT_TO_BACKEND`).
    if reason != Reason::TxNextHop {
        maps::count_reason(reason, bytes);
    }
    action
}

#[inline(always)]
fn balance(ctx: &XdpContext, bytes: u64) -> Verdict {
    let (ether_type, l3_offset) = match l2::parse(ctx) {
        Link::Ip { ether_type, l3_offset } => (ether_type, l3_offset),
        Link::Other => return verdict::pass(Reason::PassNotIp),
        Link::Truncated => return verdict::pass(Reason::PassUnparseable),
    };
    let mut ip = match l3::parse(ctx, ether_type, l3_offset) {
        L3::Ip(ip) => ip,
        L3::Truncated => return verdict::pass(Reason::PassUnparseable),
    };
    if let Some(anomaly) = ip.anomaly {
        return refuse_if_vip_address(&ip, anomaly);
    }
    if ip.fragment == fragment::LATER {
        return later_fragment(ctx, &ip, bytes);
    }
    if ip.flow.protocol != IPPROTO_TCP && ip.flow.protocol != IPPROTO_UDP {
        let icmp = if ip.flow.family == family::IPV4 { l3::IPPROTO_ICMP } else { l3::IPPROTO_ICMPV6 };
        if ip.flow.protocol != icmp {
            return verdict::pass(Reason::PassNotVip);
        }
        return icmp_to_vip(ctx, &ip, bytes);
    }
    let Some(segment) = l3::ports(ctx, &mut ip) else {
        return refuse_if_vip_address(&ip, Reason::DropTruncated);
    };
    if stop_after(1) {
        return verdict::tx(Reason::TxNextHop);
    }
    let Some(cfg) = CONFIG.get(0) else {
        return verdict::drop(Reason::DropNoEgress);
    };

    // A datagram to a VIP with a session key is found and scheduled by its session; only while
    // some VIP has one do datagrams look their VIP up first.
    let found = if cfg.session_keys != 0 && ip.flow.protocol == IPPROTO_UDP {
        session::lookup(ctx, &ip)
    } else {
        session::Found::FIVE_TUPLE
    };
    // Established flows first: their entry and their backend's record hold all the fast path
    // needs, so a packet of one takes no VIP lookup. Anything else looks its VIP up.
    let entry = if found.what == session::found::FIVE_TUPLE {
        flow_entry(&ip.flow)
    } else if found.entry.is_null() {
        None
    } else {
        Some(found.entry)
    };
    // A miss goes on, so that the build's first packets fill the table its timed ones hit.
    if stop_after(2) && entry.is_some() {
        return verdict::tx(Reason::TxNextHop);
    }
    let established = match entry {
        Some(state) => continue_flow(state, &ip.flow, segment, cfg.udp_idle_timeout_ns),
        None => Continued::Rescheduled,
    };
    let target = match established {
        Continued::Stays(target) => target,
        Continued::Refused(vip_index, reason) => {
            maps::count_unsent(vip_index, reason, bytes);
            return verdict::drop(reason);
        }
        Continued::Rescheduled => {
            // SAFETY: null, or a VIP record in its map.
            let Some(vip) = (unsafe { found.vip.as_ref() }).or_else(|| find_vip(&ip.flow)) else {
                return verdict::pass(Reason::PassNotVip);
            };
            // Admission judges the client's flow; the scheduler, its session where it has one.
            // The session's key is made again here rather than carried from the lookup, so that
            // established flows' packets carry none: that cost each of them 10 to 17 ns.
            let mut key = ip.flow;
            if found.what == session::found::SESSION {
                session::rekey(ctx, &ip, vip, &mut key);
            }
            session::untrack(&mut key, ip.flow.src_port[1]);
            (key.family, key.protocol) = (ip.flow.family, ip.flow.protocol);
            let scheduled = admission::new_flow(&ip.flow, vip, cfg).and_then(|()| schedule(entry, &key, vip, segment));
            match scheduled {
                Ok(target) => target,
                Err(reason) => {
                    maps::count_unsent(vip.index, reason, bytes);
                    return verdict::drop(reason);
                }
            }
        }
    };
    fragments::remember_first(&ip, target.id, target.hash, target.backend.vip_tag);
    forward(ctx, cfg, &ip, &target, bytes)
}

/// A later fragment of a TCP/UDP datagram: to its first fragment's backend, as a packet of an
/// established flow (admission included), if that backend still serves the VIP.
#[inline(always)]
fn later_fragment(ctx: &XdpContext, ip: &Ip, bytes: u64) -> Verdict {
    let Some(owner) = fragments::owner(ip) else {
        return refuse_if_vip_address(ip, Reason::DropFragmentUnknown);
    };
    let (Some(cfg), Some(backend)) = (CONFIG.get(0), BACKENDS.get(owner.backend)) else {
        return refuse_if_vip_address(ip, Reason::DropFragmentUnknown);
    };
    if !backend.keeps_flows() || backend.vip_tag != owner.vip_tag {
        return refuse_if_vip_address(ip, Reason::DropFragmentUnknown);
    }
    let vip_index = u32::from(backend.vip_index);
    if backend.admission != 0
        && let Err(reason) = admission::established(&ip.flow, vip_index, backend.admission)
    {
        maps::count_unsent(vip_index, reason, bytes);
        return verdict::drop(reason);
    }
    let target = Target { vip_index, id: owner.backend, backend, hash: owner.hash, kind: Flow::Known };
    forward(ctx, cfg, ip, &target, bytes)
}

/// Where a packet goes: backend `id` of VIP `vip_index`, with the flow's hash. The backend's
/// record is referred to in its map rather than copied: a copy would take 32 bytes of the fast
/// path's stack frame, which the verifier adds to every callee's within 512 bytes.
struct Target {
    vip_index: u32,
    id: u32,
    backend: &'static Backend,
    hash: u32,
    kind: Flow,
}

/// Encapsulates the packet to its backend and sends it to the backend's next hop, counting it
/// for the backend; a packet that reaches no backend counts for its VIP.
#[inline(always)]
fn forward(ctx: &XdpContext, cfg: &DataplaneConfig, ip: &Ip, target: &Target, bytes: u64) -> Verdict {
    let new_flow = target.kind == Flow::New || target.kind == Flow::Untracked;
    if stop_after(3) {
        return verdict::tx(Reason::TxNextHop);
    }
    let unsent = |verdict: Verdict| {
        maps::count_traffic(&VIP_STATS, target.vip_index, bytes, new_flow);
        verdict
    };
    let inner_mtu = encap::inner_mtu(target.backend, cfg);
    if ip.packet_len > inner_mtu {
        // Never an ICMP error about an ICMP error.
        if target.kind == Flow::IcmpError {
            return unsent(verdict::drop(Reason::DropTooBig));
        }
        return unsent(icmp::too_big(ctx, ip, inner_mtu));
    }
    let outer_len = match encap::encapsulate(ctx, cfg, ip, target.backend, target.hash) {
        Ok(len) => len,
        Err(reason) => return unsent(verdict::drop(reason)),
    };
    if stop_after(4) {
        return verdict::tx(Reason::TxNextHop);
    }
    let resolved = NEXT_HOPS.get(target.id).and_then(|hop| nexthop::to_resolved(ctx, hop, ip.l3_offset));
    let verdict = match resolved {
        Some(verdict) => verdict,
        None => nexthop::from_fib(ctx, target.backend, ip.l3_offset, outer_len),
    };
    if verdict.0 == xdp_action::XDP_DROP {
        return unsent(verdict);
    }
    maps::count_traffic(&BACKEND_STATS, target.id, bytes, new_flow);
    match target.kind {
        Flow::Untracked => (verdict.0, Reason::TxUntracked),
        Flow::IcmpError => (verdict.0, Reason::TxIcmpError),
        _ => verdict,
    }
}

/// ICMP to a VIP address (`icmp_in`): echo by the instance's policy, errors about a VIP's flow to
/// the flow's backend.
#[inline(always)]
fn icmp_to_vip(ctx: &XdpContext, ip: &Ip, bytes: u64) -> Verdict {
    let Some(cfg) = CONFIG.get(0) else {
        return verdict::pass(Reason::PassNotVip);
    };
    let flow = match icmp_in::to_vip(ctx, ip, cfg) {
        Icmp::Pass => return verdict::pass(Reason::PassNotVip),
        Icmp::Done(verdict) => return verdict,
        Icmp::Steer(flow) => flow,
    };
    match error_owner(&flow, cfg) {
        Ok(target) => forward(ctx, cfg, ip, &target, bytes),
        Err((Some(vip_index), reason)) => {
            maps::count_unsent(vip_index, reason, bytes);
            verdict::drop(reason)
        }
        Err((None, reason)) => verdict::drop(reason),
    }
}

/// The backend that owns `flow` (as the client sends it), for an ICMP error about it: its
/// flow-table entry's, else the one the VIP's table gives its hash, as for a flow in flood mode.
/// Nothing is inserted: an error opens no flow. Errs with the VIP index, if any, and the reason.
#[inline(always)]
fn error_owner(flow: &FlowKey, cfg: &DataplaneConfig) -> Result<Target, (Option<u32>, Reason)> {
    if let Some(state) = flow_entry(flow) {
        // SAFETY: LRU values are plain data, copied out.
        let known = unsafe { *state };
        let id = u32::from(known.backend);
        if let Some(backend) = BACKENDS.get(id)
            && backend.keeps_flows()
            && backend.vip_tag == known.vip_tag
        {
            let vip_index = u32::from(backend.vip_index);
            return Ok(Target { vip_index, id, backend, hash: known.hash, kind: Flow::IcmpError });
        }
    }
    let vip = find_vip(flow).ok_or((None, Reason::DropIcmpUnmatched))?;
    let no_backend = (Some(vip.index), Reason::DropNoBackend);
    if vip.table_size == 0 {
        return Err(no_backend);
    }
    let hash = flow_hash(flow, &cfg.flow_hash_key);
    let slot_hash = if vip.scheduler == scheduler::SOURCE_HASH {
        source_hash(flow, vip.source_prefix_len, &cfg.flow_hash_key)
    } else {
        hash
    };
    let id = maps::table_entry(vip.live_table_slot(), table_slot(slot_hash, vip.table_size)).ok_or(no_backend)?;
    let backend = BACKENDS.get(id).filter(|b| b.keeps_flows()).ok_or(no_backend)?;
    Ok(Target { vip_index: vip.index, id, backend, hash, kind: Flow::IcmpError })
}

/// How a packet's flow was found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Its flow-table entry.
    Known,
    /// Scheduled now, and remembered.
    New,
    /// Scheduled now by the VIP's table alone, not remembered: the VIP is in flood mode.
    Untracked,
    /// An ICMP error about the flow, sent to the flow's backend.
    IcmpError,
}

/// A packet the balancer cannot serve: dropped if it is addressed to a VIP, passed otherwise.
#[inline(always)]
fn refuse_if_vip_address(ip: &Ip, reason: Reason) -> Verdict {
    // SAFETY: plain lookup; the value is not used.
    if unsafe { VIP_ADDRS.get(VipAddrKey::new(ip.flow.family, ip.flow.dst_addr)) }.is_some() {
        verdict::drop(reason)
    } else {
        verdict::pass(Reason::PassNotVip)
    }
}

/// The VIP for (destination, port, protocol), falling back to the address's all-ports VIP. A
/// subprogram returning the record in its map: the key and a copy of the record would otherwise
/// take the fast path's stack, under every callee's within the 512 bytes a call chain may take.
#[inline(never)]
fn find_vip(flow: &FlowKey) -> Option<&'static VipInfo> {
    // SAFETY: VIPS values are plain data; the agent replaces a record with one map update.
    lb_common::vip::find_vip(flow, |key| unsafe { VIPS.get(key) })
}

/// The flow's entry in its family's flow table.
#[inline(always)]
fn flow_entry(key: &FlowKey) -> Option<*mut FlowState> {
    if key.family == family::IPV4 { FLOWS_V4.get_ptr_mut(key.v4()) } else { FLOWS_V6.get_ptr_mut(key) }
}

/// What became of a packet whose flow has an entry.
enum Continued {
    /// It goes to the entry's backend.
    Stays(Target),
    /// Its VIP's admission refuses it (VIP index, why); the entry is left as it was.
    Refused(u32, Reason),
    /// It is scheduled as a new flow.
    Rescheduled,
}

/// Where a packet of a flow with entry `state` goes. It stays on the entry's backend if that
/// still takes flows and serves the VIP the flow was scheduled for (tags agree: an id or a VIP
/// index given to another VIP since fails this), and the packet neither opens a new connection nor
/// comes after the UDP idle timeout ([`stays_pinned`]), and the VIP's admission lets it through
/// (`admission::established`). Keeps the entry's stage and packet time, and the backend's count
/// of active flows (see [`stage`]).
#[inline(always)]
fn continue_flow(state: *mut FlowState, key: &FlowKey, segment: Segment, udp_idle_timeout_ns: u64) -> Continued {
    // SAFETY: LRU values are plain data; a concurrent update at worst yields a stale backend id,
    // which is validated here.
    let known = unsafe { *state };
    let id = u32::from(known.backend);
    let Some(backend) = BACKENDS.get(id) else {
        return Continued::Rescheduled;
    };
    if !backend.keeps_flows() || backend.vip_tag != known.vip_tag {
        return Continued::Rescheduled;
    }
    // The VIP's own UDP idle timeout, where it has one.
    let udp_idle_timeout_ns = backend.udp_idle_timeout_ns(udp_idle_timeout_ns);
    // Packet times cost a clock read: kept only where they are used (`FLOW_TRACKS_TIME`).
    // SAFETY: helper without arguments.
    let now = if known.tracks_time() { unsafe { bpf_ktime_get_coarse_ns() } } else { 0 };
    if !stays_pinned(&known, key.protocol, segment, now, udp_idle_timeout_ns) {
        return Continued::Rescheduled;
    }
    if backend.admission != 0
        && let Err(reason) = admission::established(key, u32::from(backend.vip_index), backend.admission)
    {
        return Continued::Refused(u32::from(backend.vip_index), reason);
    }
    let stage = next_stage(known.stage, segment);
    // SAFETY: as above; this CPU's packet of the flow updates its own entry.
    unsafe {
        // Written only when it moved by a granularity: a write per packet would dirty the
        // entry's cache line on every packet of the flow.
        if known.tracks_time() && known.idle_ns(now) > last_seen_granularity(udp_idle_timeout_ns) {
            (*state).last_seen = flow_clock(now);
        }
        if stage != known.stage {
            (*state).stage = stage;
        }
    }
    match (known.stage, stage) {
        (stage::OPENING, stage::ACTIVE) => maps::add_active_flows(id, 1),
        (stage::ACTIVE, stage::ENDED) => maps::add_active_flows(id, -1),
        _ => {}
    }
    Continued::Stays(Target {
        vip_index: u32::from(backend.vip_index),
        id,
        backend,
        hash: known.hash,
        kind: Flow::Known,
    })
}

/// A backend for a flow of `vip` that has no entry, or whose entry `entry` does not stand
/// ([`continue_flow`]): the VIP's scheduler chooses, and the entry is written (replaced in place,
/// or inserted). A TCP SYN on an entry past its handshake comes here too: a client reusing a
/// source port opens a new connection and must not inherit the old one's backend. In flood mode
/// a flow without an entry is sent where the VIP's table says by its hash alone and not inserted
/// (see `lb_common::flood`). Returns where the flow goes, or [`Reason::DropNoBackend`].
#[inline(always)]
fn schedule(entry: Option<*mut FlowState>, key: &FlowKey, vip: &VipInfo, segment: Segment) -> Result<Target, Reason> {
    let choice = choose(entry.unwrap_or(core::ptr::null_mut()), key, vip, segment);
    // SAFETY: a backend record in its array map, or null.
    match unsafe { choice.backend.as_ref() } {
        Some(backend) => {
            Ok(Target { vip_index: vip.index, id: choice.id, backend, hash: choice.hash, kind: choice.kind })
        }
        None => Err(Reason::DropNoBackend),
    }
}

/// [`choose`]'s answer. A plain struct with a nullable pointer: BPF type information (BTF) has
/// no form for an `Option` of a tuple holding a reference, and the kernel refused the whole
/// object's type information over one.
#[repr(C)]
struct Choice {
    /// The backend's record in `BACKENDS`; null: none.
    backend: *const Backend,
    id: u32,
    hash: u32,
    kind: Flow,
}

/// The scheduler proper. A subprogram of its own: the hash's state and the scheduler's
/// temporaries would otherwise sit in the fast path's frame, under every callee's within the
/// 512 bytes of stack a call chain may take. (BPF passes at most five arguments, the result's
/// place among them, so the entry is a nullable pointer: an `Option` of one takes two.)
#[inline(never)]
fn choose(entry: *mut FlowState, key: &FlowKey, vip: &VipInfo, segment: Segment) -> Choice {
    let entry = if entry.is_null() { None } else { Some(entry) };
    match pick(entry, key, vip, segment) {
        Some(Picked { id, backend, hash, kind }) => Choice { backend, id, hash, kind },
        None => Choice { backend: core::ptr::null(), id: 0, hash: 0, kind: Flow::New },
    }
}

/// The scheduler's pick: backend `id` and its record, the flow's hash, and whether the flow
/// got an entry.
struct Picked {
    id: u32,
    backend: &'static Backend,
    hash: u32,
    kind: Flow,
}

/// The backend `vip`'s scheduler picks for the flow, with its entry written (see [`schedule`]).
#[inline(always)]
fn pick(entry: Option<*mut FlowState>, key: &FlowKey, vip: &VipInfo, segment: Segment) -> Option<Picked> {
    if let Some(state) = entry {
        // SAFETY: as in `continue_flow`.
        let known = unsafe { *state };
        // The entry is replaced below; if no backend is found it stays, uncounted until a later
        // packet finds its backend back. Either way the flow stops counting here, once.
        if known.stage == stage::ACTIVE {
            maps::add_active_flows(u32::from(known.backend), -1);
            // SAFETY: as above.
            unsafe { (*state).stage = stage::OPENING };
        }
    }
    if vip.table_size == 0 {
        return None;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // A stale entry is replaced in place; only an insert is what flood mode saves.
    let tracked = entry.is_some()
        || FLOOD.get_ptr_mut(vip.index).is_none_or(|state| {
            // SAFETY: per-CPU value, only this CPU writes it.
            unsafe { (*state).track_new_flow(vip.new_flow_budget, now) }
        });
    let hashes = hashes(key, vip);
    let (hash, slot_hash) = ((hashes >> 32) as u32, hashes as u32);
    let table = vip.live_table_slot();
    let id = match vip.scheduler {
        scheduler::SOURCE_HASH => maps::table_entry(table, table_slot(slot_hash, vip.table_size))?,
        // Untracked flows need a choice that every packet of the flow repeats: the hash's slot.
        scheduler::SEQUENCE if tracked => maps::table_entry(table, maps::next_in_sequence(vip.index, vip.table_size)?)?,
        // A TCP packet without an entry that is no SYN belongs to a connection whose entry was
        // evicted or that began on another balancer: its likeliest backend is the Maglev
        // candidate, which every balancer computes alike and which won every tie.
        scheduler::LEAST_CONNECTIONS if tracked && (key.protocol == IPPROTO_UDP || segment == Segment::Opens) => {
            fewer_active_flows(table, hash, vip.table_size)?
        }
        _ => maps::table_entry(table, table_slot(hash, vip.table_size))?,
    };
    let backend = BACKENDS.get(id)?;
    if !backend.keeps_flows() {
        return None;
    }
    if !tracked {
        return Some(Picked { id, backend, hash, kind: Flow::Untracked });
    }
    let stage = match segment {
        Segment::Ends => stage::ENDED,
        Segment::Continues if key.protocol == IPPROTO_UDP => stage::ACTIVE,
        // TCP counts from its second packet: a lone packet without an entry, SYN or not, may be
        // spoofed (SYN and ACK floods); a connection first seen mid-stream counts from its next.
        _ => stage::OPENING,
    };
    if stage == stage::ACTIVE {
        maps::add_active_flows(id, 1);
    }
    // Packet times are kept for UDP idle expiry and for least connections' TCP idle time (the
    // agent's recount).
    let tracks_time = key.protocol == IPPROTO_UDP || vip.scheduler == scheduler::LEAST_CONNECTIONS;
    let flags = if tracks_time { FLOW_TRACKS_TIME } else { 0 };
    // Backend ids stay below `MAX_BACKENDS`, so they fit the entry's 16 bits.
    let fresh = FlowState::new(id as u16, hash, now, stage, flags, vip.tag);
    match entry {
        // SAFETY: as above.
        Some(state) => unsafe { *state = fresh },
        // A full table evicts its least recently used entry; an insert error only costs stickiness.
        None if key.family == family::IPV4 => {
            let _ = FLOWS_V4.insert(key.v4(), fresh, 0);
        }
        None => {
            let _ = FLOWS_V6.insert(key, fresh, 0);
        }
    }
    Some(Picked { id, backend, hash, kind: Flow::New })
}

/// A new flow's hash (high half) and the hash its table slot is taken by (low half: the source
/// hash for source-hash VIPs, else the flow hash), both keyed with the instance's key. A
/// subprogram of its own, returning in a register: `SipHash`'s state would otherwise sit in the
/// scheduler's frame, under the fast path's within the 512 bytes of stack a call chain may take.
#[inline(never)]
fn hashes(key: &FlowKey, vip: &VipInfo) -> u64 {
    let Some(cfg) = CONFIG.get(0) else { return 0 };
    let hash = flow_hash(key, &cfg.flow_hash_key);
    let slot_hash = if vip.scheduler == scheduler::SOURCE_HASH {
        source_hash(key, vip.source_prefix_len, &cfg.flow_hash_key)
    } else {
        hash
    };
    (u64::from(hash) << 32) | u64::from(slot_hash)
}

/// How far a flow entry's packet time may lag behind its last packet: 1/16 of the UDP idle
/// timeout, at most about a second. A flow may so be taken for idle up to that much early.
#[inline(always)]
fn last_seen_granularity(udp_idle_timeout_ns: u64) -> u64 {
    (udp_idle_timeout_ns >> 4).min(1 << 30)
}

/// Whether a packet of a flow with entry `known` stays on the entry's backend: not when a SYN
/// opens a new connection on an entry past its handshake (a SYN in the handshake is a
/// retransmission and stays), nor when a UDP flow was idle past its timeout.
#[inline(always)]
fn stays_pinned(known: &FlowState, protocol: u8, segment: Segment, now: u64, udp_idle_timeout_ns: u64) -> bool {
    if segment == Segment::Opens {
        return known.stage == stage::OPENING;
    }
    protocol != IPPROTO_UDP || known.idle_ns(now) <= udp_idle_timeout_ns
}

/// The stage a flow in `stage` moves to with a packet that does `segment`.
#[inline(always)]
fn next_stage(stage: u8, segment: Segment) -> u8 {
    match (stage, segment) {
        (stage::ENDED, _) | (_, Segment::Ends) => stage::ENDED,
        (stage::OPENING, Segment::Opens) => stage::OPENING,
        _ => stage::ACTIVE,
    }
}

/// Least connections by the power of two choices (`lb_common::least_connections`).
#[inline(never)]
fn fewer_active_flows(table: u32, hash: u32, table_size: u32) -> Option<u32> {
    let (first, second) = candidates(hash, table_size, |slot| maps::table_entry(table, slot))?;
    let Some(second) = second else { return Some(first) };
    let (first_weight, second_weight) = (BACKENDS.get(first)?.weight, BACKENDS.get(second)?.weight);
    let wins = second_wins(maps::active_flows(first), first_weight, maps::active_flows(second), second_weight);
    Some(if wins { second } else { first })
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
