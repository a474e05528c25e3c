//! The compiled XDP programs, embedded at build time by `build.rs` (through aya-build).

/// The balancer (program `balancer`).
pub static BALANCER: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer"));
/// The backend-side decapsulation program (program `decap`).
pub static DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/decap"));
/// The minimal XDP_TX program benchmarks compare against (program `xdp_tx_baseline`).
pub static XDP_TX_BASELINE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-tx-baseline"));
/// The benchmark's live-frames traffic generator (program `bench_generator`).
pub static BENCH_GENERATOR: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-generator"));
/// The benchmark's sink, counting and dropping what comes back (program `bench_sink`).
pub static BENCH_SINK: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-sink"));
