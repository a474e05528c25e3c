//! The userspace side of the load balancer: the agent (`lb run`) and everything the `lb` command
//! line reads or changes. Rooms, each depending only on those listed before it:
//! - [`label`]: how addresses and VIPs are named for people.
//! - [`config`]: the TOML configuration, validated into types that cannot hold bad values.
//! - [`reconcile`]: pure and host-tested. The policy turns configuration and health into desired
//!   map contents; the planner turns desired and current contents into map operations.
//! - [`dataplane`]: everything that touches kernel objects: the embedded programs, typed handles
//!   on their maps, pins on bpffs, attachment through pinned links.
//! - [`host`]: the kernel around the data plane: forwarding, neighbours, next hops, VLAN offload.
//! - [`bgp`]: announcing VIPs through BIRD: the file the agent writes for it, its control socket.
//! - [`inspect`]: the read-only views (`lb trace`, `lb plan`, `lb stats`), from the pinned maps.
//! - [`agent`]: the long-running process: its loop, the control socket, health checks, the
//!   active-flow recount and the metrics server.
//!
//! The `lb` binary's command line lives beside this library, in `src/cli/`.
pub mod agent;
pub mod bgp;
pub mod config;
pub mod dataplane;
pub mod host;
pub mod inspect;
pub mod label;
pub mod reconcile;
