//! VLAN tags kept in the frame for XDP. A NIC with receive VLAN offload strips the (outer) tag
//! into the packet's metadata before XDP runs; the balancer would then send the packet back
//! untagged, or with only the inner tag of a `QinQ` frame, onto the wrong VLAN. So the agent turns
//! both receive offloads (802.1Q and 802.1ad) off on the interfaces it attaches to, and reports an
//! interface where that cannot be done.
//!
//! Through the kernel's ethtool ioctl (`ETHTOOL_SFEATURES`): features are named by strings whose
//! positions the kernel tells (`ETHTOOL_GSTRINGS`), so no bit is assumed.

use super::ethtool::{ETH_SS_FEATURES, ioctl, socket, string_set};

const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;

/// The receive VLAN offloads, by the names `ethtool -k` shows them under (`rx-vlan-offload`,
/// `rx-vlan-stag-hw-parse`).
pub const RECEIVE_VLAN_OFFLOADS: [&str; 2] = ["rx-vlan-hw-parse", "rx-vlan-stag-hw-parse"];

#[derive(Debug, thiserror::Error)]
pub enum VlanError {
    #[error("{interface}: reading its offload features: {error}")]
    Ioctl { interface: String, error: std::io::Error },
    #[error(
        "{interface} strips VLAN tags before XDP ({feature} cannot be turned off): tagged traffic would leave \
         without its tag; use an interface whose driver lets it be turned off, or untagged traffic only"
    )]
    Fixed { interface: String, feature: &'static str },
}

/// Turns the receive VLAN offloads off on `interface`; returns those it turned off (it leaves
/// them off when the agent stops: tags in the frame are what the data plane needs). A feature
/// the driver does not have at all is no concern: the tags stay in the frame.
pub fn keep_vlan_tags(interface: &str) -> Result<Vec<&'static str>, VlanError> {
    let io = |error| VlanError::Ioctl { interface: interface.to_string(), error };
    let socket = socket().map_err(io)?;
    let names = string_set(&socket, interface, ETH_SS_FEATURES).map_err(io)?;
    let mut turned_off = Vec::new();
    for feature in RECEIVE_VLAN_OFFLOADS {
        let Some(bit) = names.iter().position(|n| n == feature) else { continue };
        let state = features(&socket, interface, names.len()).map_err(io)?;
        if !state.active(bit) {
            continue;
        }
        if !state.available(bit) {
            return Err(VlanError::Fixed { interface: interface.to_string(), feature });
        }
        set_feature(&socket, interface, names.len(), bit, false).map_err(io)?;
        if features(&socket, interface, names.len()).map_err(io)?.active(bit) {
            return Err(VlanError::Fixed { interface: interface.to_string(), feature });
        }
        turned_off.push(feature);
    }
    Ok(turned_off)
}

/// Whether `feature` (one of [`RECEIVE_VLAN_OFFLOADS`]) is on for `interface`; None if the
/// interface has no such feature.
pub fn receive_offload(interface: &str, feature: &str) -> std::io::Result<Option<bool>> {
    let socket = socket()?;
    let names = string_set(&socket, interface, ETH_SS_FEATURES)?;
    let Some(bit) = names.iter().position(|n| n == feature) else { return Ok(None) };
    Ok(Some(features(&socket, interface, names.len())?.active(bit)))
}

/// The features' words: per 32 features, (available, requested, active, never changed).
struct Features(Vec<[u32; 4]>);

impl Features {
    fn word(&self, bit: usize) -> [u32; 4] {
        self.0.get(bit / 32).copied().unwrap_or_default()
    }
    fn available(&self, bit: usize) -> bool {
        self.word(bit)[0] & (1 << (bit % 32)) != 0
    }
    fn active(&self, bit: usize) -> bool {
        self.word(bit)[2] & (1 << (bit % 32)) != 0
    }
}

fn blocks(count: usize) -> usize {
    count.div_ceil(32)
}

fn features(socket: &std::net::UdpSocket, interface: &str, count: usize) -> std::io::Result<Features> {
    // struct ethtool_gfeatures: cmd, size, features[size] of 4 u32.
    let size = blocks(count);
    let mut buf = vec![0u32; 2 + 4 * size];
    buf[0] = ETHTOOL_GFEATURES;
    buf[1] = size as u32;
    ioctl(socket, interface, buf.as_mut_ptr().cast())?;
    Ok(Features(buf[2..].chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect()))
}

fn set_feature(
    socket: &std::net::UdpSocket,
    interface: &str,
    count: usize,
    bit: usize,
    on: bool,
) -> std::io::Result<()> {
    // struct ethtool_sfeatures: cmd, size, features[size] of (valid, requested).
    let size = blocks(count);
    let mut buf = vec![0u32; 2 + 2 * size];
    buf[0] = ETHTOOL_SFEATURES;
    buf[1] = size as u32;
    buf[2 + 2 * (bit / 32)] = 1 << (bit % 32);
    if on {
        buf[3 + 2 * (bit / 32)] = 1 << (bit % 32);
    }
    ioctl(socket, interface, buf.as_mut_ptr().cast())
}
