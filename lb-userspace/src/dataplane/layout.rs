//! The balancer's maps by name, the layouts this build gives them, and the check that refuses
//! maps pinned by a build of another layout (aya would adopt them as they are).

use aya::maps::{MapData, lpm_trie::Key as LpmKey};
use lb_common::{
    admission::{AdmissionPolicy, REFUSAL_COUNTERS, SourceBucket, SourceBucketKey, SourceListKey},
    backend::Backend,
    capacity::{
        MAX_BACKENDS, MAX_FRAGMENTED_DATAGRAMS, MAX_SOURCE_BUCKETS, MAX_SOURCE_LIST_ENTRIES, MAX_TABLE_CHUNKS,
        MAX_VIPS, VIP_COUNTER_ENTRIES,
    },
    counters::{Reason, ReasonCounter, TrafficCounters},
    dataplane::DataplaneConfig,
    flood::FloodState,
    flow::{FlowKey, FlowKeyV4, FlowState, FragmentKey, FragmentOwner},
    nexthop::NextHop,
    table::TableChunk,
    vip::{VipAddrKey, VipInfo, VipKey},
};

use super::{DataplaneError, PinDir};

/// Names of the balancer's maps (each pinned under its name).
pub(super) const BALANCER_MAPS: [&str; 20] = [
    "VIPS",
    "VIP_ADDRS",
    "BACKENDS",
    "NEXT_HOPS",
    "BACKEND_TABLES",
    "FLOWS_V4",
    "FLOWS_V6",
    "CONFIG",
    "EGRESS",
    "REASON_STATS",
    "VIP_STATS",
    "BACKEND_STATS",
    "SEQUENCE_POSITIONS",
    "ACTIVE_FLOWS",
    "FLOOD",
    "ADMISSION",
    "SOURCE_LISTS",
    "SOURCE_BUCKETS",
    "REFUSALS",
    "FRAGMENTS",
];

/// Maps that older builds pinned and this one does not use (`FLOWS`: one flow table for both
/// families, before IPv4 got its own smaller one; `MAGLEV_TABLES`: every VIP's tables at the
/// largest size, before tables were stored in chunks).
const RETIRED_MAPS: [&str; 2] = ["FLOWS", "MAGLEV_TABLES"];

/// Key and value sizes of the balancer's maps whose layouts this build defines (`EGRESS` is
/// the kernel's).
fn map_layouts() -> [(&'static str, usize, usize); 19] {
    [
        ("VIPS", size_of::<VipKey>(), size_of::<VipInfo>()),
        ("VIP_ADDRS", size_of::<VipAddrKey>(), size_of::<u32>()),
        ("BACKENDS", size_of::<u32>(), size_of::<Backend>()),
        ("NEXT_HOPS", size_of::<u32>(), size_of::<NextHop>()),
        ("BACKEND_TABLES", size_of::<u32>(), size_of::<TableChunk>()),
        ("FLOWS_V4", size_of::<FlowKeyV4>(), size_of::<FlowState>()),
        ("FLOWS_V6", size_of::<FlowKey>(), size_of::<FlowState>()),
        ("CONFIG", size_of::<u32>(), size_of::<DataplaneConfig>()),
        ("REASON_STATS", size_of::<u32>(), size_of::<ReasonCounter>()),
        ("VIP_STATS", size_of::<u32>(), size_of::<TrafficCounters>()),
        ("BACKEND_STATS", size_of::<u32>(), size_of::<TrafficCounters>()),
        ("SEQUENCE_POSITIONS", size_of::<u32>(), size_of::<u32>()),
        ("ACTIVE_FLOWS", size_of::<u32>(), size_of::<i64>()),
        ("FLOOD", size_of::<u32>(), size_of::<FloodState>()),
        ("ADMISSION", size_of::<u32>(), size_of::<AdmissionPolicy>()),
        ("SOURCE_LISTS", size_of::<LpmKey<SourceListKey>>(), size_of::<u32>()),
        ("SOURCE_BUCKETS", size_of::<SourceBucketKey>(), size_of::<SourceBucket>()),
        ("REFUSALS", size_of::<u32>(), size_of::<u64>()),
        ("FRAGMENTS", size_of::<FragmentKey>(), size_of::<FragmentOwner>()),
    ]
}

/// Entries of the balancer's maps whose size is a limit of this build (the flow tables are sized
/// by the configuration, `REASON_STATS` is checked on its own).
fn fixed_capacities() -> [(&'static str, u32); 14] {
    [
        ("VIPS", MAX_VIPS),
        ("BACKENDS", MAX_BACKENDS),
        ("NEXT_HOPS", MAX_BACKENDS),
        ("BACKEND_TABLES", MAX_TABLE_CHUNKS),
        ("VIP_STATS", VIP_COUNTER_ENTRIES),
        ("BACKEND_STATS", MAX_BACKENDS),
        ("ACTIVE_FLOWS", MAX_BACKENDS),
        ("FLOOD", MAX_VIPS),
        ("SEQUENCE_POSITIONS", MAX_VIPS),
        ("ADMISSION", MAX_VIPS),
        ("SOURCE_LISTS", MAX_SOURCE_LIST_ENTRIES),
        ("SOURCE_BUCKETS", MAX_SOURCE_BUCKETS),
        ("REFUSALS", REFUSAL_COUNTERS),
        ("FRAGMENTS", MAX_FRAGMENTED_DATAGRAMS),
    ]
}

/// Refuses pinned maps of another layout, which aya would adopt as they are: a map created by
/// another version of the balancer.
pub(super) fn check_pinned_layouts(pins: &PinDir) -> Result<(), DataplaneError> {
    for name in RETIRED_MAPS {
        let path = pins.map(name);
        if path.exists() {
            return Err(DataplaneError::PinnedRetired { name, path });
        }
    }
    for (name, key, value) in map_layouts() {
        let path = pins.map(name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)?.info()?;
        let found = (info.key_size() as usize, info.value_size() as usize);
        if found != (key, value) {
            return Err(DataplaneError::PinnedLayout { name, path, found, expected: (key, value) });
        }
        // A reason counter per reason: a build with other reasons would count under the wrong names.
        if name == "REASON_STATS" && info.max_entries() != Reason::COUNT {
            return Err(DataplaneError::PinnedReasons { path, found: info.max_entries(), expected: Reason::COUNT });
        }
        // Maps indexed by backend id or VIP index: a smaller one, of a build with lower limits,
        // would refuse the ids this build hands out.
        if let Some(&(_, expected)) = fixed_capacities().iter().find(|(n, _)| *n == name)
            && info.max_entries() != expected
        {
            return Err(DataplaneError::PinnedCapacity { name, path, found: info.max_entries(), expected });
        }
    }
    Ok(())
}
