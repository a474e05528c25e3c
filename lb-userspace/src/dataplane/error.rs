//! What can go wrong with the kernel objects, and what the operator does about it.

use aya::{maps::MapError, programs::ProgramError};
use lb_common::capacity::{
    MAGLEV_MAX_TABLE_SIZE, MAX_BACKENDS, MAX_SOURCE_LIST_ENTRIES, MAX_TABLE_CHUNKS, MAX_VIPS, TABLE_CHUNK_ENTRIES,
};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program: {0}")]
    Program(#[from] ProgramError),
    #[error("eBPF map: {0}")]
    Map(#[from] MapError),
    #[error("redirect map: {0}")]
    Egress(#[from] aya::maps::xdp::XdpMapError),
    #[error("the eBPF object has no {kind} named {name}: was it built from this source tree?")]
    Missing { kind: &'static str, name: &'static str },
    #[error("VIP index {index} is out of range 0..{MAX_VIPS}")]
    VipIndex { index: u32 },
    #[error("backend id {id} is out of range 0..{MAX_BACKENDS}")]
    BackendId { id: u32 },
    #[error("Maglev table has {len} entries, more than {MAGLEV_MAX_TABLE_SIZE}")]
    TableSize { len: usize },
    #[error(
        "the VIPs' tables need more than {MAX_TABLE_CHUNKS} chunks of {TABLE_CHUNK_ENTRIES} entries: \
         give VIPs with many backends smaller table_size values, or fewer VIPs"
    )]
    TablesFull,
    #[error(
        "the source lists of all VIPs hold more than {MAX_SOURCE_LIST_ENTRIES} prefixes: list fewer, or \
         shorter prefixes"
    )]
    SourceListsFull,
    #[error("chunk {chunk} of the live table of VIP index {index} is missing")]
    TableChunkMissing { index: u32, chunk: u32 },
    #[error("VIP index {index} already belongs to another VIP")]
    VipIndexInUse { index: u32 },
    #[error("pinning map {name} again: {error}")]
    Repin { name: &'static str, error: String },
    #[error("XDP link: {0}")]
    Link(String),
    #[error("pin directory {path}: {error}")]
    Pins { path: std::path::PathBuf, error: std::io::Error },
    #[error(
        "map {name} pinned at {} has {}-byte keys and {}-byte values where this build needs {} and {}: \
         another version of the balancer created it. Remove the pinned data plane with `lb detach` \
         (established flows are forgotten) and start again",
        path.display(), found.0, found.1, expected.0, expected.1
    )]
    PinnedLayout { name: &'static str, path: std::path::PathBuf, found: (usize, usize), expected: (usize, usize) },
    #[error(
        "map {name} pinned at {} belongs to an older version of the balancer, whose data plane this \
         build no longer uses. Remove the pinned data plane with `lb detach` (established flows are \
         forgotten) and start again",
        path.display()
    )]
    PinnedRetired { name: &'static str, path: std::path::PathBuf },
    #[error(
        "map LB_REASON_STATS pinned at {} counts {found} reasons where this build counts {expected}: \
         another version of the balancer created it. Remove the pinned data plane with `lb detach` \
         (established flows are forgotten) and start again",
        path.display()
    )]
    PinnedReasons { path: std::path::PathBuf, found: u32, expected: u32 },
    #[error(
        "map {name} pinned at {} has {found} entries where this build needs {expected}: another version \
         of the balancer, with other limits, created it. Remove the pinned data plane with `lb detach` \
         (established flows are forgotten) and start again",
        path.display()
    )]
    PinnedCapacity { name: &'static str, path: std::path::PathBuf, found: u32, expected: u32 },
    #[error("reading a map's memory accounting: {0}")]
    MapMemory(std::io::Error),
    #[error("reading the flow table: {0}")]
    FlowScan(std::io::Error),
    #[error("reading the traffic counters: {0}")]
    Counters(std::io::Error),
    #[error("the CPUs of this host: {0}")]
    Cpus(std::io::Error),
    #[error("no interface named {0}")]
    NoInterface(String),
}
