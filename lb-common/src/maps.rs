//! The data plane's map names, as `bpftool map` and the pins on bpffs show them.
//!
//! Every name carries the [`PREFIX`] that says the map is the balancer's and fits the kernel's
//! [`MAX_NAME_LEN`] (longer names are cut, and two cut names could collide). The eBPF programs
//! name their maps with the same literals (`#[map(name = "...")]` takes only a literal); the
//! agent takes each map by these constants, so a name that differs fails every load, and the
//! packet tests compare each program's maps with [`BALANCER`] and [`DECAP`].

/// What every map name starts with.
pub const PREFIX: &str = "LB_";
/// The kernel keeps 15 characters of a map's name (`BPF_OBJ_NAME_LEN` less the NUL).
pub const MAX_NAME_LEN: usize = 15;

/// (address, port, protocol) -> VIP.
pub const VIPS: &str = "LB_VIPS";
/// Addresses that have a VIP.
pub const VIP_ADDRS: &str = "LB_VIP_ADDRS";
/// Backend id -> backend.
pub const BACKENDS: &str = "LB_BACKENDS";
/// Backend id -> next hop.
pub const NEXT_HOPS: &str = "LB_NEXT_HOPS";
/// The VIPs' tables of backend ids (Maglev tables and round-robin sequences), in chunks.
pub const TABLE_CHUNKS: &str = "LB_TABLE_CHUNKS";
/// The IPv4 flow table.
pub const FLOWS_V4: &str = "LB_FLOWS_V4";
/// The IPv6 flow table.
pub const FLOWS_V6: &str = "LB_FLOWS_V6";
/// Fragmented datagrams -> their first fragment's backend.
pub const FRAGMENTS: &str = "LB_FRAGMENTS";
/// The instance-wide data plane configuration.
pub const CONFIG: &str = "LB_CONFIG";
/// Interfaces the balancer may redirect to.
pub const EGRESS: &str = "LB_EGRESS";
/// Per CPU: packets and bytes per verdict reason (the decapsulation program has its own).
pub const REASON_STATS: &str = "LB_REASON_STATS";
/// Per CPU, per VIP: traffic that reached no backend.
pub const VIP_STATS: &str = "LB_VIP_STATS";
/// Per CPU, per backend: traffic sent to it ("BE" for backend: the full word does not fit).
pub const BACKEND_STATS: &str = "LB_BE_STATS";
/// Per backend: active flows (least connections).
pub const ACTIVE_FLOWS: &str = "LB_ACTIVE_FLOWS";
/// Per CPU, per VIP: flood mode state.
pub const FLOOD: &str = "LB_FLOOD";
/// Per CPU, per VIP: the position of the next new flow in a round-robin sequence.
pub const RR_POSITIONS: &str = "LB_RR_POSITIONS";
/// Per VIP: admission settings.
pub const ADMISSION: &str = "LB_ADMISSION";
/// Per VIP: allowed and denied client prefixes.
pub const SOURCE_LISTS: &str = "LB_SOURCE_LISTS";
/// Per client prefix: its rate buckets.
pub const RATE_BUCKETS: &str = "LB_RATE_BUCKETS";
/// Per CPU, per VIP and reason: packets admission refused.
pub const REFUSALS: &str = "LB_REFUSALS";
/// Per CPU and VIP: packets too short for the VIP's session key (balanced by their 5-tuple).
pub const SESSION_MISSES: &str = "LB_SESSION_MISS";
/// Per VIP index: its session key (`crate::session`), in a map of its own so that the VIP
/// record keeps the layout of the releases before session keys (an upgrade adopts it).
pub const SESSION_KEYS: &str = "LB_SESSION_KEYS";
/// (VIP index, QUIC server id) -> backend id (`crate::quic`).
pub const QUIC_SERVERS: &str = "LB_QUIC_SERVERS";

/// VIP addresses a backend decapsulates for.
pub const DECAP_VIPS: &str = "LB_DECAP_VIPS";
/// Tunnel sources a backend accepts (the balancers' prefixes).
pub const DECAP_SOURCES: &str = "LB_DECAP_SRCS";
/// What the decapsulation program does with other sources' tunnels.
pub const DECAP_CONFIG: &str = "LB_DECAP_CONFIG";

/// Every map of the balancer program.
pub const BALANCER: [&str; 23] = [
    VIPS,
    VIP_ADDRS,
    BACKENDS,
    NEXT_HOPS,
    TABLE_CHUNKS,
    FLOWS_V4,
    FLOWS_V6,
    FRAGMENTS,
    CONFIG,
    EGRESS,
    REASON_STATS,
    VIP_STATS,
    BACKEND_STATS,
    ACTIVE_FLOWS,
    FLOOD,
    RR_POSITIONS,
    ADMISSION,
    SOURCE_LISTS,
    RATE_BUCKETS,
    REFUSALS,
    SESSION_MISSES,
    SESSION_KEYS,
    QUIC_SERVERS,
];

/// Every map of the decapsulation program.
pub const DECAP: [&str; 4] = [DECAP_VIPS, DECAP_SOURCES, DECAP_CONFIG, REASON_STATS];

/// Maps of older builds that this one has no counterpart for (`FLOWS`: one flow table for both
/// families; `MAGLEV_TABLES`: tables at their largest size, before chunks): an agent refuses to
/// adopt a pin directory that holds one.
pub const RETIRED: [&str; 2] = ["FLOWS", "MAGLEV_TABLES"];

/// (name in the previous layout, name now), for every map of either program. The previous
/// layout pinned the same maps without the [`PREFIX`]; an agent adopts such pins by renaming
/// them, flows and counters kept.
pub const RENAMED: [(&str, &str); 23] = [
    ("VIPS", VIPS),
    ("VIP_ADDRS", VIP_ADDRS),
    ("BACKENDS", BACKENDS),
    ("NEXT_HOPS", NEXT_HOPS),
    ("BACKEND_TABLES", TABLE_CHUNKS),
    ("FLOWS_V4", FLOWS_V4),
    ("FLOWS_V6", FLOWS_V6),
    ("FRAGMENTS", FRAGMENTS),
    ("CONFIG", CONFIG),
    ("EGRESS", EGRESS),
    ("REASON_STATS", REASON_STATS),
    ("VIP_STATS", VIP_STATS),
    ("BACKEND_STATS", BACKEND_STATS),
    ("ACTIVE_FLOWS", ACTIVE_FLOWS),
    ("FLOOD", FLOOD),
    ("SEQUENCE_POSITIONS", RR_POSITIONS),
    ("ADMISSION", ADMISSION),
    ("SOURCE_LISTS", SOURCE_LISTS),
    ("SOURCE_BUCKETS", RATE_BUCKETS),
    ("REFUSALS", REFUSALS),
    ("DECAP_VIPS", DECAP_VIPS),
    ("DECAP_SOURCES", DECAP_SOURCES),
    ("DECAP_CONFIG", DECAP_CONFIG),
];

const fn starts_with(name: &str, prefix: &str) -> bool {
    let (name, prefix) = (name.as_bytes(), prefix.as_bytes());
    if name.len() < prefix.len() {
        return false;
    }
    let mut i = 0;
    while i < prefix.len() {
        if name[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

const fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && starts_with(a, b)
}

/// Every name fits, has the prefix, and appears once in its program.
const fn valid(names: &[&str]) -> bool {
    let mut i = 0;
    while i < names.len() {
        if names[i].len() > MAX_NAME_LEN || !starts_with(names[i], PREFIX) {
            return false;
        }
        let mut j = i + 1;
        while j < names.len() {
            if equal(names[i], names[j]) {
                return false;
            }
            j += 1;
        }
        i += 1;
    }
    true
}

const _: () = assert!(valid(&BALANCER) && valid(&DECAP));
