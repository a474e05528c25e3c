//! The balancer's maps by name, the layouts this build gives them, and the check that refuses
//! maps pinned by a build of another layout (aya would adopt them as they are).

use aya::maps::{MapData, lpm_trie::Key as LpmKey};
use lb_common::{
    admission::{AdmissionPolicy, REFUSAL_COUNTERS, SourceBucket, SourceBucketKey, SourceListKey},
    backend::Backend,
    capacity::{
        MAX_BACKENDS, MAX_FRAGMENTED_DATAGRAMS, MAX_QUIC_SERVERS, MAX_SOURCE_BUCKETS, MAX_SOURCE_LIST_ENTRIES,
        MAX_TABLE_CHUNKS, MAX_VIPS, VIP_COUNTER_ENTRIES,
    },
    counters::{Reason, ReasonCounter, TrafficCounters},
    dataplane::DataplaneConfig,
    flood::FloodState,
    flow::{FlowKey, FlowKeyV4, FlowState, FragmentKey, FragmentOwner},
    maps::{self as names, RETIRED},
    nexthop::NextHop,
    quic::QuicServerKey,
    session::SessionKey,
    table::TableChunk,
    vip::{VipAddrKey, VipInfo, VipKey},
};

use super::{DataplaneError, PinDir};

/// Key and value sizes of the balancer's maps whose layouts this build defines (`LB_EGRESS` is
/// the kernel's).
fn map_layouts() -> [(&'static str, usize, usize); 22] {
    [
        (names::VIPS, size_of::<VipKey>(), size_of::<VipInfo>()),
        (names::VIP_ADDRS, size_of::<VipAddrKey>(), size_of::<u32>()),
        (names::BACKENDS, size_of::<u32>(), size_of::<Backend>()),
        (names::NEXT_HOPS, size_of::<u32>(), size_of::<NextHop>()),
        (names::TABLE_CHUNKS, size_of::<u32>(), size_of::<TableChunk>()),
        (names::FLOWS_V4, size_of::<FlowKeyV4>(), size_of::<FlowState>()),
        (names::FLOWS_V6, size_of::<FlowKey>(), size_of::<FlowState>()),
        (names::CONFIG, size_of::<u32>(), size_of::<DataplaneConfig>()),
        (names::REASON_STATS, size_of::<u32>(), size_of::<ReasonCounter>()),
        (names::VIP_STATS, size_of::<u32>(), size_of::<TrafficCounters>()),
        (names::BACKEND_STATS, size_of::<u32>(), size_of::<TrafficCounters>()),
        (names::RR_POSITIONS, size_of::<u32>(), size_of::<u32>()),
        (names::ACTIVE_FLOWS, size_of::<u32>(), size_of::<i64>()),
        (names::FLOOD, size_of::<u32>(), size_of::<FloodState>()),
        (names::ADMISSION, size_of::<u32>(), size_of::<AdmissionPolicy>()),
        (names::SOURCE_LISTS, size_of::<LpmKey<SourceListKey>>(), size_of::<u32>()),
        (names::RATE_BUCKETS, size_of::<SourceBucketKey>(), size_of::<SourceBucket>()),
        (names::REFUSALS, size_of::<u32>(), size_of::<u64>()),
        (names::FRAGMENTS, size_of::<FragmentKey>(), size_of::<FragmentOwner>()),
        (names::SESSION_MISSES, size_of::<u32>(), size_of::<u64>()),
        (names::SESSION_KEYS, size_of::<u32>(), size_of::<SessionKey>()),
        (names::QUIC_SERVERS, size_of::<QuicServerKey>(), size_of::<u32>()),
    ]
}

/// Entries of the balancer's maps whose size is a limit of this build (the flow tables are sized
/// by the configuration, `LB_REASON_STATS` is checked on its own).
fn fixed_capacities() -> [(&'static str, u32); 17] {
    [
        (names::VIPS, MAX_VIPS),
        (names::BACKENDS, MAX_BACKENDS),
        (names::NEXT_HOPS, MAX_BACKENDS),
        (names::TABLE_CHUNKS, MAX_TABLE_CHUNKS),
        (names::VIP_STATS, VIP_COUNTER_ENTRIES),
        (names::BACKEND_STATS, MAX_BACKENDS),
        (names::ACTIVE_FLOWS, MAX_BACKENDS),
        (names::FLOOD, MAX_VIPS),
        (names::RR_POSITIONS, MAX_VIPS),
        (names::ADMISSION, MAX_VIPS),
        (names::SOURCE_LISTS, MAX_SOURCE_LIST_ENTRIES),
        (names::RATE_BUCKETS, MAX_SOURCE_BUCKETS),
        (names::REFUSALS, REFUSAL_COUNTERS),
        (names::FRAGMENTS, MAX_FRAGMENTED_DATAGRAMS),
        (names::SESSION_MISSES, MAX_VIPS),
        (names::SESSION_KEYS, MAX_VIPS),
        (names::QUIC_SERVERS, MAX_QUIC_SERVERS),
    ]
}

/// Adopts pins of the previous layout ([`names::RENAMED`]: the same maps without the prefix)
/// by renaming them, each after its layout is checked as the new name's: established flows,
/// tables and counters carry over. Returns how many were renamed.
pub(super) fn migrate_renamed(pins: &PinDir) -> Result<usize, DataplaneError> {
    let mut renamed = 0;
    for (old, new) in names::RENAMED {
        let from = pins.map(old);
        if !from.exists() {
            continue;
        }
        let to = pins.map(new);
        if to.exists() {
            // Both layouts pinned: not one instance's state. Refused, nothing changed.
            return Err(DataplaneError::PinnedRetired { name: old, path: from });
        }
        check_layout(new, &from)?;
        std::fs::rename(&from, &to).map_err(|error| DataplaneError::Pins { path: from.clone(), error })?;
        renamed += 1;
    }
    Ok(renamed)
}

/// Refuses pinned maps of another layout, which aya would adopt as they are: a map created by
/// another version of the balancer.
pub(super) fn check_pinned_layouts(pins: &PinDir) -> Result<(), DataplaneError> {
    for name in RETIRED {
        let path = pins.map(name);
        if path.exists() {
            return Err(DataplaneError::PinnedRetired { name, path });
        }
    }
    for name in names::BALANCER {
        let path = pins.map(name);
        if path.exists() {
            check_layout(name, &path)?;
        }
    }
    Ok(())
}

/// Whether the map pinned at `path` has the layout this build gives map `name`.
fn check_layout(name: &'static str, path: &std::path::Path) -> Result<(), DataplaneError> {
    let Some((_, key, value)) = map_layouts().into_iter().find(|(n, _, _)| *n == name) else {
        return Ok(());
    };
    let path = path.to_path_buf();
    let info = MapData::from_pin(&path)?.info()?;
    let found = (info.key_size() as usize, info.value_size() as usize);
    if found != (key, value) {
        return Err(DataplaneError::PinnedLayout { name, path, found, expected: (key, value) });
    }
    // A reason counter per reason: a build with other reasons would count under the wrong names.
    if name == names::REASON_STATS && info.max_entries() != Reason::COUNT {
        return Err(DataplaneError::PinnedReasons { path, found: info.max_entries(), expected: Reason::COUNT });
    }
    // Maps indexed by backend id or VIP index: a smaller one, of a build with lower limits,
    // would refuse the ids this build hands out.
    if let Some(&(_, expected)) = fixed_capacities().iter().find(|(n, _)| *n == name)
        && info.max_entries() != expected
    {
        return Err(DataplaneError::PinnedCapacity { name, path, found: info.max_entries(), expected });
    }
    Ok(())
}
