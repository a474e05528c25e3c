//! The userspace side of the load balancer.
//!
//! Layout:
//! - [`objects`]: the compiled XDP programs, embedded at build time (built by `build.rs`).
//! - [`dataplane`]: typed handles on the loaded balancer and decapsulation programs and their
//!   maps: configuration, VIPs, backends, atomic Maglev table installs, counters.
pub mod dataplane;
pub mod objects;
