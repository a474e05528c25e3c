//! The userspace side of the load balancer.
//!
//! Layout:
//! - [`config`]: the TOML configuration, validated into types that cannot hold bad values.
//! - [`pins`]: where pinned maps and links live (bpffs), so the data plane outlives the agent.
//! - [`attach`]: attaching through pinned links, and replacing the program inside them atomically.
//! - [`objects`]: the compiled XDP programs, embedded at build time (built by `build.rs`).
//! - [`dataplane`]: typed handles on the loaded balancer and decapsulation programs and their
//!   maps: configuration, VIPs, backends, atomic Maglev table installs, counters.
//! - [`vlan`]: receive VLAN offload turned off on the balancer's interfaces (tags stay in the frame).
//! - [`nexthop`]: backends' next hops from the kernel's route and neighbour tables (rtnetlink).
//! - [`batch`]: reading a whole hash map in a few syscalls.
//! - [`active`]: active flows per backend (least connections), recounted from the flow table.
//! - [`policy`]: health, admin state, guard rails and slow start turned into desired state.
//! - [`reconcile`]: pure planning of map operations from desired and current state.
//! - [`health`]: health check probes (TCP, HTTP, UDP, and through the tunnel).
//! - [`control`]: the control API over a Unix socket, and live changes validated like files.
//! - [`agent`]: `lb run`, which applies a configuration and leaves the data plane running.
//! - [`inspect`]: `lb trace` and `lb plan`, computed with the data plane's own code.
//! - [`stats`]: counters read from the pinned maps.
//! - [`metrics`]: Prometheus metrics over HTTP.
//! - [`label`]: how addresses and VIPs are named for people.
pub mod active;
pub mod agent;
pub mod attach;
pub mod batch;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod health;
pub mod inspect;
pub mod label;
pub mod metrics;
pub mod nexthop;
pub mod objects;
pub mod pins;
pub mod policy;
pub mod reconcile;
pub mod stats;
pub mod vlan;
