//! The balancer's maps, written by the agent and read here.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use lb_common::{
    admission::{AdmissionPolicy, REFUSAL_COUNTERS, SourceBucket, SourceBucketKey, SourceListKey, refusal_slot},
    backend::Backend,
    capacity::{
        FLOW_TABLE_DEFAULT_ENTRIES, IPV6_FLOW_TABLE_DEFAULT_ENTRIES, MAX_BACKENDS, MAX_EGRESS_INTERFACES,
        MAX_FRAGMENTED_DATAGRAMS, MAX_QUIC_SERVERS, MAX_SOURCE_BUCKETS, MAX_SOURCE_LIST_ENTRIES, MAX_TABLE_CHUNKS,
        MAX_VIPS, VIP_COUNTER_ENTRIES,
    },
    counters::{Reason, ReasonCounter, TrafficCounters},
    dataplane::DataplaneConfig,
    flood::FloodState,
    flow::{FlowKey, FlowKeyV4, FlowState, FragmentKey, FragmentOwner},
    nexthop::NextHop,
    quic::QuicServerKey,
    session::SessionKey,
    table::{TableChunk, chunk_key, locate},
    vip::{VipAddrKey, VipInfo, VipKey},
};

/// (address, port, protocol) -> VIP. Port 0 is an all-ports VIP.
#[map(name = "LB_VIPS")]
pub static VIPS: HashMap<VipKey, VipInfo> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Every address that has at least one VIP (value: how many).
#[map(name = "LB_VIP_ADDRS")]
pub static VIP_ADDRS: HashMap<VipAddrKey, u32> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Backend id -> backend.
#[map(name = "LB_BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Backend id -> its next hop, resolved and kept fresh by the agent (`lb_common::nexthop`).
#[map(name = "LB_NEXT_HOPS")]
pub static NEXT_HOPS: Array<NextHop> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Two tables of backend ids per VIP (Maglev tables or round-robin sequences) in chunks
/// (`lb_common::table`), allocated as the agent writes them (no preallocation): the agent writes
/// the table that is not live and switches tables with one `VIPS` update. Read for new flows only.
#[map(name = "LB_TABLE_CHUNKS")]
pub static TABLE_CHUNKS: HashMap<u32, TableChunk> = HashMap::with_max_entries(MAX_TABLE_CHUNKS, BPF_F_NO_PREALLOC);

/// Entry `slot` of table `table` (`VipInfo::live_table_slot`).
#[inline(always)]
pub fn table_entry(table: u32, slot: u32) -> Option<u32> {
    let (chunk, index) = locate(slot);
    // SAFETY: the agent writes chunks whole with map updates, which replace a value rather than
    // write into it; a copy of one entry is read.
    let chunk = unsafe { TABLE_CHUNKS.get(chunk_key(table, chunk)) }?;
    chunk.get(index).copied()
}

/// Flow tables, one per family: established flows keep their backend. The IPv4 one has a key
/// of 16 bytes where IPv6 needs 40, so IPv4 flows hash faster and cost less memory; a flood of
/// one family cannot evict the other's flows. Each table is shared by all CPUs, so a flow whose
/// packets move to another CPU still finds its entry, with one LRU list: per-CPU lists
/// (`BPF_F_NO_COMMON_LRU`) were not measurably faster with every CPU inserting (`cargo xtask
/// bench`, docs/dataplane.md) and would split the capacity per CPU, evicting live flows of a
/// busy CPU early.
#[map(name = "LB_FLOWS_V4")]
pub static FLOWS_V4: LruHashMap<FlowKeyV4, FlowState> = LruHashMap::with_max_entries(FLOW_TABLE_DEFAULT_ENTRIES, 0);

#[map(name = "LB_FLOWS_V6")]
pub static FLOWS_V6: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(IPV6_FLOW_TABLE_DEFAULT_ENTRIES, 0);

/// Fragmented datagrams -> their first fragment's backend (`crate::fragments`).
#[map(name = "LB_FRAGMENTS")]
pub static FRAGMENTS: LruHashMap<FragmentKey, FragmentOwner> =
    LruHashMap::with_max_entries(MAX_FRAGMENTED_DATAGRAMS, 0);

#[map(name = "LB_CONFIG")]
pub static CONFIG: Array<DataplaneConfig> = Array::with_max_entries(1, 0);

/// Interfaces the balancer may redirect to, keyed by ifindex.
#[map(name = "LB_EGRESS")]
pub static EGRESS: DevMapHash = DevMapHash::with_max_entries(MAX_EGRESS_INTERFACES, 0);

#[map(name = "LB_REASON_STATS")]
pub static REASON_STATS: PerCpuArray<ReasonCounter> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

/// Per VIP, its packets that reach no backend (`lb_common::capacity::VIP_COUNTER_ENTRIES`): a
/// packet sent to a backend counts in `BACKEND_STATS` alone, and readers add a VIP's backends.
#[map(name = "LB_VIP_STATS")]
pub static VIP_STATS: PerCpuArray<TrafficCounters> = PerCpuArray::with_max_entries(VIP_COUNTER_ENTRIES, 0);

#[map(name = "LB_BE_STATS")]
pub static BACKEND_STATS: PerCpuArray<TrafficCounters> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Backend id -> flows counted as active (see `lb_common::flow::stage`), shared by all CPUs and
/// changed with atomic adds. Signed: after the agent's periodic recount a flow counted before
/// it may still end and take one off, so a count may dip below zero until the next recount.
#[map(name = "LB_ACTIVE_FLOWS")]
pub static ACTIVE_FLOWS: Array<i64> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Adds `delta` to backend `id`'s active flows.
#[inline(always)]
pub fn add_active_flows(id: u32, delta: i64) {
    if let Some(count) = ACTIVE_FLOWS.get_ptr_mut(id) {
        // SAFETY: an aligned i64 in a map value; every writer in the data plane adds atomically.
        // The BPF target has no compare-and-swap, so core's atomic types lack `fetch_add`; the
        // intrinsic becomes BPF's atomic add.
        unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(count, delta) };
    }
}

/// Backend `id`'s active flows, negative dips read as none.
#[inline(always)]
pub fn active_flows(id: u32) -> u64 {
    ACTIVE_FLOWS.get(id).map_or(0, |count| (*count).max(0) as u64)
}

/// VIP index -> its admission settings (`lb_common::admission`).
#[map(name = "LB_ADMISSION")]
pub static ADMISSION: Array<AdmissionPolicy> = Array::with_max_entries(MAX_VIPS, 0);

/// (VIP index, family, client prefix) -> allow or deny (`lb_common::admission::verdict`).
#[map(name = "LB_SOURCE_LISTS")]
pub static SOURCE_LISTS: LpmTrie<SourceListKey, u32> = LpmTrie::with_max_entries(MAX_SOURCE_LIST_ENTRIES, 0);

/// (VIP index, client prefix) -> its rate buckets. Shared by all CPUs, as one client's flows
/// spread over them; two CPUs updating one bucket at once may each take the same token, so a
/// limit can be exceeded by a packet per CPU, never undercut.
#[map(name = "LB_RATE_BUCKETS")]
pub static RATE_BUCKETS: LruHashMap<SourceBucketKey, SourceBucket> =
    LruHashMap::with_max_entries(MAX_SOURCE_BUCKETS, 0);

/// Per CPU: packets admission refused, per VIP and reason (`lb_common::admission::refusal_slot`).
#[map(name = "LB_REFUSALS")]
pub static REFUSALS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REFUSAL_COUNTERS, 0);

/// Per CPU and VIP: packets too short for the VIP's session key (`lb_common::session`).
#[map(name = "LB_SESSION_MISS")]
pub static SESSION_MISSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

/// Per VIP index: its session key (`lb_common::session`; length 0: none).
#[map(name = "LB_SESSION_KEYS")]
pub static SESSION_KEYS: Array<SessionKey> = Array::with_max_entries(MAX_VIPS, 0);

/// (VIP index, QUIC server id) -> the backend id that server id names (`lb_common::quic`).
#[map(name = "LB_QUIC_SERVERS")]
pub static QUIC_SERVERS: HashMap<QuicServerKey, u32> = HashMap::with_max_entries(MAX_QUIC_SERVERS, 0);

/// Counts a packet to VIP `vip_index` that the VIP's session key could not be read from.
#[inline(always)]
pub fn count_session_miss(vip_index: u32) {
    if let Some(count) = SESSION_MISSES.get_ptr_mut(vip_index) {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe { *count += 1 };
    }
}

/// Counts a packet to VIP `vip_index` that reached no backend for `reason`: in the VIP's
/// traffic, and per VIP and reason if admission refused it.
#[inline(always)]
pub fn count_unsent(vip_index: u32, reason: Reason, bytes: u64) {
    count_traffic(&VIP_STATS, vip_index, bytes, false);
    if let Some(slot) = refusal_slot(vip_index, reason)
        && let Some(count) = REFUSALS.get_ptr_mut(slot)
    {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe { *count += 1 };
    }
}

/// Per CPU, per VIP: new flows counted against the VIP's flood budget (`lb_common::flood`).
#[map(name = "LB_FLOOD")]
pub static FLOOD: PerCpuArray<FloodState> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

/// Per CPU, per VIP: the position of the next new flow in a round-robin sequence.
#[map(name = "LB_RR_POSITIONS")]
pub static RR_POSITIONS: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

/// This CPU's next position in VIP `index`'s round-robin sequence of `len` entries.
#[inline(always)]
pub fn next_in_sequence(index: u32, len: u32) -> Option<u32> {
    let position = RR_POSITIONS.get_ptr_mut(index)?;
    // SAFETY: per-CPU value, only this CPU writes it.
    unsafe {
        let current = *position % len;
        *position = if current + 1 >= len { 0 } else { current + 1 };
        Some(current)
    }
}

#[inline(always)]
pub fn count_reason(reason: Reason, bytes: u64) {
    lb_ebpf::counters::count_reason(&REASON_STATS, reason, bytes);
}

#[inline(always)]
pub fn count_traffic(map: &PerCpuArray<TrafficCounters>, index: u32, bytes: u64, new_flow: bool) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            (*c).new_flows += u64::from(new_flow);
        }
    }
}
