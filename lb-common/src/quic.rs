//! QUIC routing by server id (QUIC-LB's plaintext algorithm): each backend encodes its server
//! id at a fixed place in the connection ids it issues. A short-header packet carries the
//! destination connection id right after its first byte, so the balancer reads the server id
//! there and sends the packet to that backend, whatever the client's address and port now are
//! (connection migration, NAT rebinding), on every balancer of a fleet alike: the data plane
//! points the packet's 5-tuple entry at that backend, and the packet continues as one of an
//! established flow. Long-header packets (Initial, 0-RTT, Handshake: the connection's first,
//! whose destination id the client chose) go by their 5-tuple, and so does a short-header
//! packet whose server id no backend has.
//!
//! Where the server id is is the VIP's [`crate::session::SessionKey`] of kind
//! [`crate::session::kind::QUIC_SERVER_ID`]; `LB_QUIC_SERVERS` maps (VIP, server id) to the
//! backend's id.

use crate::{assert_layout, flow::FlowKey, hash::fmix32, userspace_pod};

/// The most bytes a server id has.
pub const MAX_SERVER_ID_LEN: usize = 8;
/// The longest connection id (RFC 9000): a server id ends within it.
pub const MAX_CID_LEN: usize = 20;
/// The first byte's header form bit: set in long headers, clear in short ones.
pub const LONG_HEADER: u8 = 0x80;

/// Key of `LB_QUIC_SERVERS`: a VIP's index and a server id (zero past its length).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct QuicServerKey {
    /// The VIP's index.
    pub vip_index: u32,
    /// Explicit padding, always zero.
    pub _pad: [u8; 4],
    /// The server id, zero past the VIP's server id length.
    pub server_id: [u8; MAX_SERVER_ID_LEN],
}
assert_layout!(QuicServerKey, size = 16, vip_index = 0, _pad = 4, server_id = 8);
userspace_pod!(QuicServerKey);

impl QuicServerKey {
    /// VIP `vip_index`'s server id `server_id`.
    pub const fn new(vip_index: u32, server_id: [u8; MAX_SERVER_ID_LEN]) -> Self {
        Self { vip_index, _pad: [0; 4], server_id }
    }
}

/// The hash a QUIC flow routed by its server id gets (its entry's, which varies the outer source
/// address per flow so that the backend's NIC spreads flows over its queues): a mix of the
/// client's address and port, cheaper than the flow hash, since the server id already chose the
/// backend.
#[inline(always)]
pub fn client_hash(flow: &FlowKey) -> u32 {
    let (a, p) = (flow.src_addr, flow.src_port);
    fmix32(u32::from_le_bytes([a[0] ^ a[4] ^ a[12], a[1] ^ a[5] ^ a[13], a[2] ^ p[0], a[3] ^ p[1]]))
}
