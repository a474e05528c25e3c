//! Map sizes and limits shared by the data plane and the agent.

/// Most VIPs one balancer instance serves (per-VIP arrays are sized by this).
pub const MAX_VIPS: u32 = 512;
/// Most QUIC server ids over all VIPs (one per backend of a QUIC VIP at most).
pub const MAX_QUIC_SERVERS: u32 = 8192;
/// Entries of the VIP counter map: below [`MAX_VIPS`], what the data plane counts for a VIP
/// itself (its packets that reach no backend); from [`MAX_VIPS`] on, per VIP index, the agent's
/// totals of the VIP's backends that were removed. A VIP's traffic is both plus its backends'.
pub const VIP_COUNTER_ENTRIES: u32 = 2 * MAX_VIPS;
/// Most backends across all VIPs (backend ids are indexes below this).
pub const MAX_BACKENDS: u32 = 8192;
// Flow-table entries keep backend ids in 16 bits (`crate::flow::FlowState::backend`).
const _: () = assert!(MAX_BACKENDS <= 1 << 16);
/// Largest Maglev table (a prime below 2^20): 100 entries per backend (about 1% imbalance, the
/// paper's M > 100 x N) for up to 10,485 backends.
pub const MAGLEV_MAX_TABLE_SIZE: u32 = 1_048_573;
/// Maglev table sizes a VIP gets when its configuration names none: the smallest that holds 100
/// entries per backend, 65537 at least (primes: 2^16 + 1, 2^17 - 1, the largest below 2^18,
/// 2^19 - 1, the largest below 2^20).
pub const MAGLEV_TABLE_SIZES: [u32; 5] = [65_537, 131_071, 262_139, 524_287, MAGLEV_MAX_TABLE_SIZE];
/// Longest round-robin sequence (weights are scaled down to fit).
pub const SEQUENCE_MAX_LEN: u32 = 65_537;
/// Tables per VIP: one live, one being written (see [`crate::vip::VipInfo::active_table`]).
pub const TABLES_PER_VIP: u32 = 2;
/// Entries of one table chunk (`crate::table`): tables are stored in chunks of this many backend
/// ids, so a VIP's table takes memory in proportion to its size.
pub const TABLE_CHUNK_ENTRIES: u32 = 4096;
/// Most table chunks of all VIPs together (both tables of each): 512 MiB of tables at most,
/// reserved only as chunks are written. 512 VIPs with tables of 65537 entries take 17,408.
pub const MAX_TABLE_CHUNKS: u32 = 32_768;
/// Default number of IPv4 flow-table entries.
pub const FLOW_TABLE_DEFAULT_ENTRIES: u32 = 1 << 20;
/// Default number of IPv6 flow-table entries: a quarter of IPv4's, as an IPv6 entry costs more
/// and most client traffic is still IPv4.
pub const IPV6_FLOW_TABLE_DEFAULT_ENTRIES: u32 = 1 << 18;
/// Per-source rate buckets (`crate::admission::SourceBucketKey`) kept at once, all VIPs
/// together; the least recently used one makes room for a new source.
pub const MAX_SOURCE_BUCKETS: u32 = 1 << 16;
/// Most source-list prefixes of all VIPs together.
pub const MAX_SOURCE_LIST_ENTRIES: u32 = 1 << 16;
/// Fragmented datagrams whose later fragments the balancer can steer at once (`FRAGMENTS`, an
/// LRU): a datagram's fragments arrive within milliseconds of each other.
pub const MAX_FRAGMENTED_DATAGRAMS: u32 = 1 << 14;
/// Most interfaces the balancer redirects to.
pub const MAX_EGRESS_INTERFACES: u32 = 64;

/// Bytes added in front of the inner packet by IPv4 (IPIP) encapsulation.
pub const IPV4_ENCAP_OVERHEAD: u16 = 20;
/// Bytes added in front of the inner packet by IPv6 (IP6IP6, IPv4-in-IPv6) encapsulation.
pub const IPV6_ENCAP_OVERHEAD: u16 = 40;
/// TTL / hop limit of the outer header the balancer adds.
pub const OUTER_TTL: u8 = 64;

/// Benchmark builds that stop the balancer's fast path after a stage (`cargo xtask bench
/// --ablation`): the build environment variable that names the stage, and the stages in path
/// order as (value, name). Each stage's cost is the difference between consecutive builds.
/// Shipped builds leave the variable unset and run the whole path.
pub mod ablation {
    /// The build environment variable naming the stage to stop after; unset: the whole path.
    pub const ENV: &str = "LB_BENCH_STOP_AFTER";
    /// The stages in path order, as (value of [`ENV`], name).
    pub const STAGES: [(u8, &str); 4] = [(1, "parse"), (2, "flow_lookup"), (3, "backend_record"), (4, "encapsulate")];
}
