//! Counted reasons for every verdict, and traffic counters per VIP and per backend.

use crate::{assert_layout, userspace_pod};

/// Why a packet got its verdict. Every packet either program sees is counted under exactly one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed untouched.
    PassNotIp = 0,
    /// IP, but no VIP matches (address, port, protocol): passed untouched.
    PassNotVip,
    /// The frame ends before the IP destination can be read: passed; the kernel drops runts itself.
    PassUnparseable,
    /// Encapsulated and sent back out of the ingress interface to the backend's next hop as the
    /// agent resolved it (`crate::nexthop`).
    TxNextHop,
    /// Encapsulated and sent back out of the ingress interface, next hop from the FIB.
    TxFib,
    /// Encapsulated and sent back out of the ingress interface to the configured fallback MAC.
    TxFallback,
    /// Encapsulated and redirected to another interface (DEVMAP), next hop from the agent or the FIB.
    TxRedirect,
    /// A new flow of a VIP in flood mode (`crate::flood`): encapsulated and sent by the VIP's table
    /// like any other, without a flow-table entry.
    TxUntracked,
    /// Too big once encapsulated: turned into an ICMP "fragmentation needed" / `ICMPv6` "packet
    /// too big" to the client, sent back where it came from.
    TxIcmpTooBig,
    /// An ICMP echo request to a VIP address, answered from the VIP (instance `icmp_echo = "reply"`).
    TxIcmpEchoReply,
    /// An ICMP error about a VIP's flow (fragmentation needed, packet too big, unreachable),
    /// encapsulated to the flow's backend like the flow's packets.
    TxIcmpError,
    /// VIP traffic whose IP or L4 header is cut short.
    DropTruncated,
    /// VIP traffic with a malformed IP header (bad IHL, version or lengths).
    DropBadHeader,
    /// IPv4 packet with options to a VIP address.
    DropIpv4Options,
    /// IPv4 or IPv6 fragment of neither TCP nor UDP to a VIP address.
    DropFragment,
    /// A later fragment (no ports) to a VIP address whose datagram's first fragment was not seen
    /// (out of order, or forgotten): no backend is known for it.
    DropFragmentUnknown,
    /// IPv6 packet to a VIP address with an extension header before TCP/UDP.
    DropIpv6Extension,
    /// VIP traffic that arrived with TTL / hop limit 0.
    DropTtlExpired,
    /// Would exceed the MTU once encapsulated, and no ICMP error can be sent (IPv4 without DF),
    /// or exceeds the MTU of the route to the backend.
    DropTooBig,
    /// An ICMP echo request to a VIP address, dropped by the instance's `icmp_echo = "drop"`.
    DropIcmpEcho,
    /// An ICMP error to a VIP address that quotes no flow of it (not TCP/UDP, another source, a
    /// quote cut short).
    DropIcmpUnmatched,
    /// The VIP has no usable backend.
    DropNoBackend,
    /// VIP traffic from a source the VIP's lists deny (`crate::admission`).
    DropSourceDenied,
    /// A new flow to a VIP from a source no client can have: unspecified, loopback, multicast,
    /// broadcast, a VIP or the balancer's own encapsulation prefix.
    DropSpoofedSource,
    /// VIP traffic over its source prefix's packet rate.
    DropSourcePacketRate,
    /// A new flow over its source prefix's new-flow rate.
    DropSourceFlowRate,
    /// The packet could not be grown for the outer header.
    DropEncapFailed,
    /// The FIB's egress interface is not in the redirect map.
    DropNoEgress,
    /// Decapsulation program: an IPIP/IP6IP6 packet for a configured VIP, decapsulated and passed.
    DecapPass,
    /// Decapsulation program: not a tunnel packet; passed untouched.
    DecapPassNotTunnel,
    /// Decapsulation program: tunnel packet whose inner destination is not a configured VIP; passed untouched.
    DecapPassUnknownVip,
    /// Decapsulation program: tunnel packet from a source that is no balancer's; passed untouched.
    DecapPassUnknownSource,
    /// Decapsulation program: tunnel packet from a source that is no balancer's; dropped.
    DecapDropUnknownSource,
}

impl Reason {
    /// Number of reasons (size of the reason counter map).
    pub const COUNT: u32 = Reason::DecapDropUnknownSource as u32 + 1;

    /// Every reason, in counter-index order.
    pub const ALL: [Reason; Reason::COUNT as usize] = [
        Reason::PassNotIp,
        Reason::PassNotVip,
        Reason::PassUnparseable,
        Reason::TxNextHop,
        Reason::TxFib,
        Reason::TxFallback,
        Reason::TxRedirect,
        Reason::TxUntracked,
        Reason::TxIcmpTooBig,
        Reason::TxIcmpEchoReply,
        Reason::TxIcmpError,
        Reason::DropTruncated,
        Reason::DropBadHeader,
        Reason::DropIpv4Options,
        Reason::DropFragment,
        Reason::DropFragmentUnknown,
        Reason::DropIpv6Extension,
        Reason::DropTtlExpired,
        Reason::DropTooBig,
        Reason::DropIcmpEcho,
        Reason::DropIcmpUnmatched,
        Reason::DropNoBackend,
        Reason::DropSourceDenied,
        Reason::DropSpoofedSource,
        Reason::DropSourcePacketRate,
        Reason::DropSourceFlowRate,
        Reason::DropEncapFailed,
        Reason::DropNoEgress,
        Reason::DecapPass,
        Reason::DecapPassNotTunnel,
        Reason::DecapPassUnknownVip,
        Reason::DecapPassUnknownSource,
        Reason::DecapDropUnknownSource,
    ];

    /// Stable `snake_case` name, used by the CLI and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIp => "pass_not_ip",
            Reason::PassNotVip => "pass_not_vip",
            Reason::PassUnparseable => "pass_unparseable",
            Reason::TxNextHop => "tx_next_hop",
            Reason::TxFib => "tx_fib",
            Reason::TxFallback => "tx_fallback",
            Reason::TxRedirect => "tx_redirect",
            Reason::TxUntracked => "tx_untracked",
            Reason::TxIcmpTooBig => "tx_icmp_too_big",
            Reason::TxIcmpEchoReply => "tx_icmp_echo_reply",
            Reason::TxIcmpError => "tx_icmp_error",
            Reason::DropTruncated => "drop_truncated",
            Reason::DropBadHeader => "drop_bad_header",
            Reason::DropIpv4Options => "drop_ipv4_options",
            Reason::DropFragment => "drop_fragment",
            Reason::DropFragmentUnknown => "drop_fragment_unknown",
            Reason::DropIpv6Extension => "drop_ipv6_extension",
            Reason::DropTtlExpired => "drop_ttl_expired",
            Reason::DropTooBig => "drop_too_big",
            Reason::DropIcmpEcho => "drop_icmp_echo",
            Reason::DropIcmpUnmatched => "drop_icmp_unmatched",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropSourceDenied => "drop_source_denied",
            Reason::DropSpoofedSource => "drop_spoofed_source",
            Reason::DropSourcePacketRate => "drop_source_packet_rate",
            Reason::DropSourceFlowRate => "drop_source_flow_rate",
            Reason::DropEncapFailed => "drop_encap_failed",
            Reason::DropNoEgress => "drop_no_egress",
            Reason::DecapPass => "decap_pass",
            Reason::DecapPassNotTunnel => "decap_pass_not_tunnel",
            Reason::DecapPassUnknownVip => "decap_pass_unknown_vip",
            Reason::DecapPassUnknownSource => "decap_pass_unknown_source",
            Reason::DecapDropUnknownSource => "decap_drop_unknown_source",
        }
    }
}

/// Reasons under which a packet is sent to a backend. Such a packet also counts in its backend's
/// traffic counters, so the data plane counts all of them but [`Reason::TxNextHop`] (the hit
/// path's common case) in the reason map: a forwarded packet updates one counter. Readers take
/// `tx_next_hop` as the backends' totals less the other reasons here, plus its reason-map slot,
/// which holds the totals of backend counters that the agent zeroed to give their id to a new
/// backend.
pub const SENT_TO_BACKEND: [Reason; 6] = [
    Reason::TxNextHop,
    Reason::TxFib,
    Reason::TxFallback,
    Reason::TxRedirect,
    Reason::TxUntracked,
    Reason::TxIcmpError,
];

/// Traffic counters of one VIP or backend (per CPU in the data plane; userspace sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TrafficCounters {
    /// Packets of the VIP or backend.
    pub packets: u64,
    /// Bytes of those packets' frames as they arrived (before encapsulation).
    pub bytes: u64,
    /// Flows scheduled by the VIP's scheduler (flow-table misses).
    pub new_flows: u64,
}
assert_layout!(TrafficCounters, size = 24, packets = 0, bytes = 8, new_flows = 16);

/// Counter of one reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReasonCounter {
    /// Packets counted under the reason.
    pub packets: u64,
    /// Bytes of those packets' frames as they arrived.
    pub bytes: u64,
}
assert_layout!(ReasonCounter, size = 16, packets = 0, bytes = 8);
userspace_pod!(TrafficCounters, ReasonCounter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_reason_in_index_order() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{}", reason.name());
        }
    }
}
