//! The userspace side of the load balancer.
//!
//! Layout:
//! - [`config`]: the TOML configuration, validated into types that cannot hold bad values.
//! - [`objects`]: the compiled XDP programs, embedded at build time (built by `build.rs`).
//! - [`dataplane`]: typed handles on the loaded balancer and decapsulation programs and their
//!   maps: configuration, VIPs, backends, atomic Maglev table installs, counters.
//! - [`reconcile`]: pure planning of map operations from desired and current state.
pub mod config;
pub mod dataplane;
pub mod objects;
pub mod reconcile;
