//! Backends as the data plane reads them.
//!
//! Backend ids belong to one (VIP, backend address) pair, so health, drain and counters are per
//! VIP. A record keeps its id while the backend is configured; whether flows already pinned to it
//! may continue is a flag, so a backend that fails its health checks sheds its flows at their
//! next packet while a draining one keeps them.

use crate::{assert_layout, userspace_pod};

/// Flag: this id is in use.
pub const BACKEND_ASSIGNED: u8 = 1;
/// Flag: flows pinned to this backend continue (it is up or draining). Without it (down,
/// disabled) a pinned flow is scheduled again on its next packet.
pub const BACKEND_KEEPS_FLOWS: u8 = 2;

/// A backend: the outer destination of encapsulated packets.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Backend {
    /// Backend address, network byte order (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// Address family ([`crate::family`]).
    pub family: u8,
    /// [`BACKEND_ASSIGNED`] and [`BACKEND_KEEPS_FLOWS`].
    pub flags: u8,
    /// Index of the VIP this id serves.
    pub vip_index: u16,
    /// Weight of new flows (as in the VIP's table; 0 while drained or disabled): least
    /// connections compares active flows per unit of weight.
    pub weight: u32,
    /// The served VIP's [`crate::vip::VipKey::tag`]. A flow-table entry names its backend by
    /// id; a packet of the flow continues there only while the tags agree, so an id (or a VIP
    /// index) given to another VIP since never receives the old VIP's flows, and the fast path
    /// needs no VIP lookup for established flows.
    pub vip_tag: u32,
    /// The admission stages the served VIP runs on established flows' packets
    /// (`crate::admission::checks::ESTABLISHED`), which take no VIP lookup.
    pub admission: u8,
    /// Explicit padding, always zero.
    pub _pad: u8,
    /// The served VIP's UDP idle timeout in seconds, read by established flows' packets (which
    /// take no VIP lookup); 0: the instance's.
    pub udp_idle_timeout_secs: u16,
}
assert_layout!(
    Backend,
    size = 32,
    addr = 0,
    family = 16,
    flags = 17,
    vip_index = 18,
    weight = 20,
    vip_tag = 24,
    admission = 28,
    _pad = 29,
    udp_idle_timeout_secs = 30
);
userspace_pod!(Backend);

impl Backend {
    /// An assigned backend of the VIP with index `vip_index` and tag `vip_tag`, with weight 1,
    /// whose flows continue.
    pub const fn new(family: u8, addr: [u8; 16], vip_index: u16, vip_tag: u32) -> Self {
        Self {
            addr,
            family,
            flags: BACKEND_ASSIGNED | BACKEND_KEEPS_FLOWS,
            vip_index,
            weight: 1,
            vip_tag,
            admission: 0,
            _pad: 0,
            udp_idle_timeout_secs: 0,
        }
    }

    /// The same backend of a VIP whose UDP flows idle out after `secs` seconds (0: the
    /// instance's timeout).
    pub const fn with_udp_idle_timeout(mut self, secs: u16) -> Self {
        self.udp_idle_timeout_secs = secs;
        self
    }

    /// The UDP idle timeout of this backend's flows: its VIP's, else `instance_ns`.
    #[inline(always)]
    pub const fn udp_idle_timeout_ns(&self, instance_ns: u64) -> u64 {
        if self.udp_idle_timeout_secs == 0 { instance_ns } else { self.udp_idle_timeout_secs as u64 * 1_000_000_000 }
    }

    /// The same backend of a VIP whose admission stages are `checks`: it keeps those that apply
    /// to established flows.
    pub const fn with_admission(mut self, checks: u8) -> Self {
        self.admission = checks & crate::admission::checks::ESTABLISHED;
        self
    }

    /// The same backend with weight `weight`.
    pub const fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The same backend with flows pinned to it moved away (`keeps` false) or kept.
    pub const fn keeping_flows(mut self, keeps: bool) -> Self {
        self.flags = if keeps { BACKEND_ASSIGNED | BACKEND_KEEPS_FLOWS } else { BACKEND_ASSIGNED };
        self
    }

    /// Whether this id is in use ([`BACKEND_ASSIGNED`]).
    #[inline(always)]
    pub const fn is_assigned(&self) -> bool {
        self.flags & BACKEND_ASSIGNED != 0
    }

    /// Whether a flow pinned to this backend may stay on it.
    #[inline(always)]
    pub const fn keeps_flows(&self) -> bool {
        self.flags & (BACKEND_ASSIGNED | BACKEND_KEEPS_FLOWS) == BACKEND_ASSIGNED | BACKEND_KEEPS_FLOWS
    }
}
