//! The host around the data plane: what the kernel must do for XDP forwarding to work, and what
//! the agent learns from it.
//! - [`ethtool`]: the ethtool ioctl: feature strings, and driver statistics such as the XDP
//!   transmit errors that show frames the balancer sent but the interface could not deliver.
//! - [`vlan`]: receive VLAN offload turned off on the balancer's interfaces (tags stay in the frame).
//! - [`nexthop`]: backends' next hops from the kernel's route and neighbour tables (rtnetlink).
//! - this module: IP forwarding on the balancer's interfaces (the FIB lookup needs it) and
//!   neighbour entries kept warm for the backends.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, UdpSocket},
};

use crate::config::Config;

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

/// The data plane needs a neighbour entry for each backend (or its gateway) to address frames,
/// and the kernel only keeps entries that traffic uses, which XDP bypasses. An empty datagram to
/// the discard port makes the kernel resolve and refresh the entry.
pub fn warm_neighbours(config: &Config) {
    let backends: BTreeSet<IpAddr> = config.vips.iter().flat_map(|v| v.backends.iter().map(|b| b.address)).collect();
    warm(backends);
}

/// Makes the kernel resolve (or refresh) the neighbour entries of `addresses`.
pub fn warm(addresses: impl IntoIterator<Item = IpAddr>) {
    for address in addresses {
        let bind: SocketAddr = if address.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
        let sent = UdpSocket::bind(bind).and_then(|s| s.send_to(&[], SocketAddr::new(address, 9)));
        if let Err(e) = sent {
            tracing::debug!(%address, error = %e, "neighbour refresh failed");
        }
    }
}
