//! Virtual services: how a packet is matched to a VIP and which Maglev table the VIP uses.

use crate::{
    assert_layout,
    flow::FlowKey,
    hash::{le_words, murmur3_words},
    userspace_pod,
};

/// The VIP a packet of `flow` belongs to, as the data plane matches it: the VIP of its
/// destination, port and protocol, else its destination's all-ports VIP (port 0). `lookup` reads
/// whatever holds the VIPs (the data plane's map, the agent's copy, a test's model) and returns
/// what the caller wants of a match. The one definition the XDP program, `lb trace`, the recount
/// and the tests share.
#[inline(always)]
pub fn find_vip<V>(flow: &FlowKey, mut lookup: impl FnMut(&VipKey) -> Option<V>) -> Option<V> {
    let mut key =
        VipKey { addr: flow.dst_addr, port: flow.dst_port, protocol: flow.protocol, family: flow.family, _pad: [0; 4] };
    if let Some(found) = lookup(&key) {
        return Some(found);
    }
    key.port = [0; 2];
    lookup(&key)
}

/// VIP match key: destination address, port (network order; 0 = all ports) and protocol.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VipKey {
    /// VIP address, network byte order (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// Destination port, network byte order; 0: all ports.
    pub port: [u8; 2],
    /// IP protocol number.
    pub protocol: u8,
    /// Address family ([`crate::family`]).
    pub family: u8,
    /// Explicit padding, always zero: it is part of the key the map compares.
    pub _pad: [u8; 4],
}
assert_layout!(VipKey, size = 24, addr = 0, port = 16, protocol = 18, family = 19, _pad = 20);

impl VipKey {
    /// The key of the VIP at `addr`, `port` (host byte order; 0: all ports) and `protocol`.
    #[inline(always)]
    pub const fn new(family: u8, addr: [u8; 16], port: u16, protocol: u8) -> Self {
        Self { addr, port: port.to_be_bytes(), protocol, family, _pad: [0; 4] }
    }

    /// A 32-bit name of this VIP, carried by its backend records and by the flow-table entries
    /// of its flows, so that a packet of an established flow is checked to still belong to the
    /// VIP its backend serves without looking the VIP up (see [`crate::backend::Backend::vip_tag`]).
    pub fn tag(&self) -> u32 {
        let mut bytes = [0u8; 24];
        bytes[..16].copy_from_slice(&self.addr);
        bytes[16..18].copy_from_slice(&self.port);
        bytes[18] = self.protocol;
        bytes[19] = self.family;
        murmur3_words(&le_words::<6>(&bytes), VIP_TAG_SEED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family;

    #[test]
    fn find_vip_takes_the_exact_port_then_all_ports() {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[198, 18, 1, 1]);
        let exact = VipKey::new(family::IPV4, addr, 80, 6);
        let all = VipKey::new(family::IPV4, addr, 0, 6);
        let flow = |port| FlowKey::new(family::IPV4, 6, [0; 16], 1234, addr, port);
        let both = |k: &VipKey| [exact, all].contains(k).then_some(*k);
        assert_eq!(find_vip(&flow(80), both), Some(exact));
        assert_eq!(find_vip(&flow(443), both), Some(all));
        let only_exact = |k: &VipKey| (*k == exact).then_some(*k);
        assert_eq!(find_vip(&flow(443), only_exact), None);
        let udp = FlowKey::new(family::IPV4, 17, [0; 16], 1234, addr, 80);
        assert_eq!(find_vip(&udp, both), None, "another protocol is another VIP");
    }
}

/// Seed of [`VipKey::tag`].
pub const VIP_TAG_SEED: u32 = 0x4c42_5654; // "LBVT"

/// Key of the set of VIP addresses. Packets to these addresses that the balancer cannot serve
/// (fragments, IPv4 options, malformed headers) are dropped with a reason rather than passed on.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VipAddrKey {
    /// VIP address, network byte order (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// Address family ([`crate::family`]).
    pub family: u8,
    /// Explicit padding, always zero: it is part of the key the map compares.
    pub _pad: [u8; 7],
}
assert_layout!(VipAddrKey, size = 24, addr = 0, family = 16, _pad = 17);

impl VipAddrKey {
    /// The key of VIP address `addr` of `family`.
    #[inline(always)]
    pub const fn new(family: u8, addr: [u8; 16]) -> Self {
        Self { addr, family, _pad: [0; 7] }
    }
}

/// How a VIP's new flows get a backend ([`VipInfo::scheduler`]). Every scheduler reads the VIP's
/// table of backend ids; they differ in how they pick the entry.
pub mod scheduler {
    /// Maglev: the flow hash of the 5-tuple picks the slot of a Maglev table.
    pub const MAGLEV: u8 = 0;
    /// Source hash: a hash of the client address (its first `source_prefix_len` bits) picks the
    /// slot of a Maglev table, so every flow of a client (or of its /24, /64, ...) lands together.
    pub const SOURCE_HASH: u8 = 1;
    /// Round robin (plain or weighted): each CPU deals the table, a sequence of backend ids, in
    /// turn.
    pub const SEQUENCE: u8 = 2;
    /// Least connections: two distinct backends drawn from a Maglev table (the first by the
    /// flow hash), the one with fewer active flows per unit of weight wins.
    pub const LEAST_CONNECTIONS: u8 = 3;
}

/// What the data plane knows about a VIP.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipInfo {
    /// Index of the VIP's counters and tables, below [`crate::capacity::MAX_VIPS`].
    pub index: u32,
    /// Entries of the VIP's table in use (a prime for Maglev tables).
    pub table_size: u32,
    /// Which of the VIP's two tables is live (0 or 1). The agent writes the other one and then
    /// replaces this record in one map update, so a packet sees either the old or the new table,
    /// never a half-written one.
    pub active_table: u32,
    /// One of [`scheduler`].
    pub scheduler: u8,
    /// Source hash: how many leading bits of the client address are hashed.
    pub source_prefix_len: u8,
    /// The admission stages the VIP runs (`crate::admission::checks`).
    pub admission: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 1],
    /// New flows per CPU per flood window past which the VIP is in flood mode
    /// ([`crate::flood`]); 0: never.
    pub new_flow_budget: u32,
    /// [`VipKey::tag`] of the VIP's key, given to the flow-table entries of its new flows.
    pub tag: u32,
}
assert_layout!(
    VipInfo,
    size = 24,
    index = 0,
    table_size = 4,
    active_table = 8,
    scheduler = 12,
    source_prefix_len = 13,
    admission = 14,
    _pad = 15,
    new_flow_budget = 16,
    tag = 20
);
userspace_pod!(VipKey, VipAddrKey, VipInfo);

impl VipInfo {
    /// A VIP's record with no admission stages (see [`VipInfo::with_admission`]).
    pub const fn new(
        index: u32,
        table_size: u32,
        active_table: u32,
        scheduler: u8,
        source_prefix_len: u8,
        new_flow_budget: u32,
        tag: u32,
    ) -> Self {
        Self {
            index,
            table_size,
            active_table,
            scheduler,
            source_prefix_len,
            admission: 0,
            _pad: [0; 1],
            new_flow_budget,
            tag,
        }
    }

    /// The same VIP running admission stages `checks` (`crate::admission::checks`).
    pub const fn with_admission(mut self, checks: u8) -> Self {
        self.admission = checks;
        self
    }

    /// The live table ([`crate::table::chunk_key`]).
    #[inline(always)]
    pub const fn live_table_slot(&self) -> u32 {
        self.index * crate::capacity::TABLES_PER_VIP + (self.active_table & 1)
    }
}
