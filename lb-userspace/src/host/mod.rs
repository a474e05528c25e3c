//! The host around the data plane: what the kernel must do for XDP forwarding to work, and what
//! the agent learns from it.
//! - [`ethtool`]: the ethtool ioctl: feature strings, and driver statistics such as the XDP
//!   transmit errors that show frames the balancer sent but the interface could not deliver.
//! - [`vlan`]: receive VLAN offload turned off on the balancer's interfaces (tags stay in the frame).
//! - [`nexthop`]: backends' next hops from the kernel's route and neighbour tables (rtnetlink),
//!   and their neighbour entries kept resolved.
//! - this module: IP forwarding on the balancer's interfaces (the FIB lookup needs it).

pub mod ethtool;
pub mod nexthop;
pub mod vlan;

/// The FIB lookup of the data plane requires forwarding on the ingress interface.
pub fn enable_forwarding(interface: &str) {
    for family in ["ipv4", "ipv6"] {
        let path = format!("/proc/sys/net/{family}/conf/{interface}/forwarding");
        match std::fs::write(&path, "1") {
            Ok(()) => tracing::debug!(path, "enabled forwarding"),
            Err(e) => {
                tracing::warn!(path, error = %e, "could not enable forwarding; next hops then come from the fallback MAC");
            }
        }
    }
}
