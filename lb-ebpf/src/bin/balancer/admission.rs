//! Admission (`lb_common::admission`): source lists, anti-spoofing and per-source rates, run
//! before a packet reaches the flow table's insert or its backend. Flood mode, the last stage,
//! is the scheduler's (`crate::schedule`).

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, maps::lpm_trie::Key};
use lb_common::{
    admission::{
        AdmissionPolicy, SOURCE_LIST_FIXED_BITS, SourceBucket, SourceBucketKey, SourceListKey, checks,
        is_spoofed_source, verdict,
    },
    counters::Reason,
    dataplane::DataplaneConfig,
    flow::FlowKey,
    vip::{VipAddrKey, VipInfo},
};

use crate::maps::{ADMISSION, RATE_BUCKETS, SOURCE_LISTS, VIP_ADDRS};

/// A packet of an established flow of VIP `vip_index`, whose backend record carries `checks`
/// (`checks::ESTABLISHED`, not 0).
///
/// The stages are functions of their own (BPF subprograms): their many branches would
/// otherwise multiply the verifier's states through the rest of the path.
#[inline(never)]
pub fn established(flow: &FlowKey, vip_index: u32, checks: u8) -> Result<(), Reason> {
    let Some(policy) = ADMISSION.get(vip_index) else {
        return Ok(());
    };
    if checks & checks::SOURCE_LISTS != 0 {
        source_lists(flow, vip_index, policy)?;
    }
    if checks & checks::PACKET_RATE != 0 {
        rates(flow, vip_index, policy, checks::PACKET_RATE)?;
    }
    Ok(())
}

/// A packet to `vip` that has no flow (or whose flow must be scheduled again).
#[inline(never)]
pub fn new_flow(flow: &FlowKey, vip: &VipInfo, config: &DataplaneConfig) -> Result<(), Reason> {
    let policy = if vip.admission != 0 { ADMISSION.get(vip.index) } else { None };
    if let Some(policy) = policy
        && vip.admission & checks::SOURCE_LISTS != 0
    {
        source_lists(flow, vip.index, policy)?;
    }
    if is_spoofed_source(flow.family, &flow.src_addr, config) || is_vip_address(flow) {
        return Err(Reason::DropSpoofedSource);
    }
    if let Some(policy) = policy
        && vip.admission & (checks::PACKET_RATE | checks::FLOW_RATE) != 0
    {
        rates(flow, vip.index, policy, vip.admission)?;
    }
    Ok(())
}

#[inline(always)]
fn is_vip_address(flow: &FlowKey) -> bool {
    // SAFETY: plain lookup; the value is not used.
    unsafe { VIP_ADDRS.get(VipAddrKey::new(flow.family, flow.src_addr)) }.is_some()
}

/// The longest listed prefix holding the client decides; none: the VIP's default. This and
/// [`rates`] are subprograms of their own: their keys would otherwise sit in the caller's frame,
/// under the fast path's, within the 512 bytes of stack a call chain may take.
#[inline(never)]
fn source_lists(flow: &FlowKey, vip_index: u32, policy: &AdmissionPolicy) -> Result<(), Reason> {
    // IPv4 addresses fill the first 4 bytes and zeros the rest, so one full-length lookup serves
    // both families.
    let key = Key::new(SOURCE_LIST_FIXED_BITS + 128, SourceListKey::new(vip_index, flow.family, flow.src_addr));
    let found = SOURCE_LISTS.get(&key).copied().unwrap_or(policy.unlisted);
    if found == verdict::DENY { Err(Reason::DropSourceDenied) } else { Ok(()) }
}

/// The client prefix's buckets: a packet token for every packet (`checks::PACKET_RATE`), a
/// flow token for a new flow (`checks::FLOW_RATE`), as `checks` asks. A packet refused for its
/// flow rate has still taken its packet token: it was sent.
#[inline(never)]
// By reference (clippy would pass the key and value by value): a moved copy takes another
// stack slot, and this subprogram's stack adds to the caller's within BPF's 512 bytes.
#[allow(clippy::needless_borrows_for_generic_args)]
fn rates(flow: &FlowKey, vip_index: u32, policy: &AdmissionPolicy, checks: u8) -> Result<(), Reason> {
    // The coarse clock: buckets tolerate at least its tick (`lb_common::admission::CLOCK_TICK_NS`).
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // Built in place: an address built apart and copied in would take another 16 bytes of stack.
    let mut key = SourceBucketKey::new(vip_index as u16, flow.family, flow.src_addr);
    policy.cut_to_source_prefix(flow.family, &mut key.addr);
    let Some(bucket) = RATE_BUCKETS.get_ptr_mut(&key) else {
        // A new client prefix starts with full buckets: this packet takes a token of each.
        let fresh = SourceBucket {
            packets_tat: now + policy.packet_rate.interval_ns,
            flows_tat: if checks & checks::FLOW_RATE != 0 { now + policy.flow_rate.interval_ns } else { 0 },
        };
        // A failed insert (the LRU could not make room) admits the packet unlimited this once.
        let _ = RATE_BUCKETS.insert(&key, &fresh, 0);
        return Ok(());
    };
    // SAFETY: LRU values are plain data, updated in place; concurrent CPUs at worst lose a token
    // update (see the map).
    let bucket = unsafe { &mut *bucket };
    if checks & checks::PACKET_RATE != 0 && !policy.packet_rate.admit(&mut bucket.packets_tat, now) {
        return Err(Reason::DropSourcePacketRate);
    }
    if checks & checks::FLOW_RATE != 0 && !policy.flow_rate.admit(&mut bucket.flows_tat, now) {
        return Err(Reason::DropSourceFlowRate);
    }
    Ok(())
}
