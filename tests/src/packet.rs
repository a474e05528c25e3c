//! Test frames, built with etherparse (an implementation independent of the data plane's), and
//! the exact bytes the balancer is expected to send for them.

use std::net::IpAddr;

use etherparse::{
    IpHeaders, IpNumber, Ipv4Dscp, Ipv4Ecn, Ipv4Extensions, Ipv4Header, Ipv6Extensions, Ipv6FlowLabel, Ipv6Header,
    PacketBuilder, VlanId,
};
pub use lb_common::addr::to_key as key_addr;
use lb_common::{
    dataplane::{DataplaneConfig, icmp_echo},
    flow::{FlowKey, HashKey},
};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The next hop the balancer falls back to when the FIB has no answer.
pub const FALLBACK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// The instance settings of the packet tests, the fuzzer and the benchmarks: encapsulation
/// sources 198.18.200.0/24 and `fd00:200::/112`, MTU 1500, the fallback MAC, echo answered, a UDP
/// idle timeout of 30 s, and flow hash key `key`.
pub fn dataplane_config(key: HashKey) -> DataplaneConfig {
    DataplaneConfig {
        udp_idle_timeout_ns: 30_000_000_000,
        encap_src_v6: std::net::Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 0).octets(),
        encap_src_v4: [198, 18, 200, 0],
        mtu: 1500,
        encap_src_v4_host_bits: 8,
        encap_src_v6_host_bits: 16,
        fallback_dst_mac: FALLBACK_MAC,
        icmp_echo: icmp_echo::REPLY,
        session_keys: 0,
        flow_hash_key: key,
    }
}
pub const BALANCER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const ETH_LEN: usize = 14;
pub const VLAN_LEN: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// A flow as the client sends it.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub protocol: Protocol,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
}

impl Flow {
    pub fn key(&self) -> FlowKey {
        let (family, src) = key_addr(self.src);
        let (_, dst) = key_addr(self.dst);
        FlowKey::new(family, self.protocol.number(), src, self.src_port, dst, self.dst_port)
    }
}

/// Header fields a test may vary.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub vlan: Option<u16>,
    pub ttl: u8,
    /// TOS / traffic class (DSCP << 2 | ECN).
    pub tos: u8,
    pub dont_fragment: bool,
    pub payload_len: usize,
    /// TCP flags of the segment.
    pub tcp: TcpFlags,
}

/// TCP segments the balancer tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpFlags {
    /// A connection's first packet.
    Syn,
    /// An established connection's packet.
    Ack,
    /// The client closes.
    FinAck,
    /// The client aborts.
    Rst,
}

impl Default for Shape {
    fn default() -> Self {
        Self { vlan: None, ttl: 64, tos: 0, dont_fragment: true, payload_len: 32, tcp: TcpFlags::Ack }
    }
}

/// A client frame of `flow` with valid checksums.
pub fn frame(flow: &Flow, shape: &Shape) -> Vec<u8> {
    frame_with_payload(flow, shape, &vec![0x5a; shape.payload_len])
}

/// A frame of `flow` shaped by `shape` carrying `payload` (`shape.payload_len` is not used).
pub fn frame_with_payload(flow: &Flow, shape: &Shape, payload: &[u8]) -> Vec<u8> {
    let ip = match (flow.src, flow.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = Ipv4Header::new(0, shape.ttl, IpNumber(flow.protocol.number()), s.octets(), d.octets())
                .expect("valid header");
            h.dscp = Ipv4Dscp::try_new(shape.tos >> 2).expect("6 bits");
            h.ecn = Ipv4Ecn::try_new(shape.tos & 3).expect("2 bits");
            h.dont_fragment = shape.dont_fragment;
            IpHeaders::Ipv4(h, Ipv4Extensions::default())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => IpHeaders::Ipv6(
            Ipv6Header {
                traffic_class: shape.tos,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: 0,
                next_header: IpNumber(flow.protocol.number()),
                hop_limit: shape.ttl,
                source: s.octets(),
                destination: d.octets(),
            },
            Ipv6Extensions::default(),
        ),
        _ => panic!("flow mixes address families"),
    };
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, BALANCER_MAC);
    let mut out = Vec::new();
    let l3 = match shape.vlan {
        Some(id) => eth.single_vlan(VlanId::try_new(id).expect("12-bit VLAN id")).ip(ip),
        None => eth.ip(ip),
    };
    match flow.protocol {
        Protocol::Tcp => {
            let tcp = l3.tcp(flow.src_port, flow.dst_port, 1000, 64_000);
            match shape.tcp {
                TcpFlags::Syn => tcp.syn(),
                TcpFlags::Ack => tcp.ack(1),
                TcpFlags::FinAck => tcp.fin().ack(1),
                TcpFlags::Rst => tcp.rst(),
            }
            .write(&mut out, payload)
        }
        Protocol::Udp => l3.udp(flow.src_port, flow.dst_port).write(&mut out, payload),
    }
    .expect("frame fits");
    out
}

/// Offset of the IP header in a frame built by [`frame`].
pub fn l3_offset(shape: &Shape) -> usize {
    ETH_LEN + if shape.vlan.is_some() { VLAN_LEN } else { 0 }
}

/// Recomputes the IPv4 header checksum of a frame after a test edited the header.
pub fn fix_ipv4_checksum(frame: &mut [u8], l3: usize) {
    let ihl = usize::from(frame[l3] & 0x0f) * 4;
    frame[l3 + 10] = 0;
    frame[l3 + 11] = 0;
    let mut sum = 0u32;
    for pair in frame[l3..l3 + ihl.max(20)].chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let check = !(sum as u16);
    frame[l3 + 10..l3 + 12].copy_from_slice(&check.to_be_bytes());
}

/// What the encapsulated frame must carry.
#[derive(Clone, Copy, Debug)]
pub struct Encap {
    pub outer_src: IpAddr,
    pub outer_dst: IpAddr,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// Flow hash, whose low 20 bits are the outer IPv6 flow label.
    pub flow_hash: u32,
}

/// The exact frame the balancer must send for `input` (whose IP header is at `l3`).
pub fn encapsulated(input: &[u8], l3: usize, e: &Encap) -> Vec<u8> {
    let inner = &input[l3..];
    let inner_is_v4 = inner[0] >> 4 == 4;
    let (inner_protocol, tos, dont_fragment) = if inner_is_v4 {
        (IpNumber(4), inner[1], inner[6] & 0x40 != 0)
    } else {
        (IpNumber(41), (inner[0] << 4) | (inner[1] >> 4), true)
    };
    let mut out = Vec::new();
    out.extend_from_slice(&e.dst_mac);
    out.extend_from_slice(&e.src_mac);
    out.extend_from_slice(&input[12..l3 - 2]); // VLAN tag, if any
    match (e.outer_src, e.outer_dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut h = Ipv4Header::new(inner.len() as u16, 64, inner_protocol, s.octets(), d.octets()).expect("valid");
            h.dscp = Ipv4Dscp::try_new(tos >> 2).expect("6 bits");
            h.ecn = Ipv4Ecn::try_new(tos & 3).expect("2 bits");
            h.dont_fragment = dont_fragment;
            h.header_checksum = h.calc_header_checksum();
            out.extend_from_slice(&h.to_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.extend_from_slice(&0x86ddu16.to_be_bytes());
            let h = Ipv6Header {
                traffic_class: tos,
                flow_label: Ipv6FlowLabel::try_new(e.flow_hash & 0xf_ffff).expect("20 bits"),
                payload_length: inner.len() as u16,
                next_header: inner_protocol,
                hop_limit: 64,
                source: s.octets(),
                destination: d.octets(),
            };
            out.extend_from_slice(&h.to_bytes());
        }
        _ => panic!("outer addresses mix families"),
    }
    out.extend_from_slice(inner);
    out
}

/// The exact ICMP "fragmentation needed" (IPv4) or `ICMPv6` "packet too big" the balancer must
/// send back for the too-big client frame `input` (IP header at `l3`), announcing `mtu`.
pub fn too_big_answer(input: &[u8], l3: usize, mtu: u16) -> Vec<u8> {
    use etherparse::{Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, icmpv4::DestUnreachableHeader};
    let mut out = Vec::new();
    out.extend_from_slice(&input[6..12]);
    out.extend_from_slice(&input[0..6]);
    out.extend_from_slice(&input[12..l3]); // VLAN tag if any, and the ethertype
    let ip = &input[l3..];
    if ip[0] >> 4 == 4 {
        let quote = &ip[..28];
        let icmp = Icmpv4Header::with_checksum(
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu }),
            quote,
        );
        let (client, vip): ([u8; 4], [u8; 4]) = (ip[12..16].try_into().expect("4"), ip[16..20].try_into().expect("4"));
        let mut h = Ipv4Header::new(8 + 28, 64, IpNumber(1), vip, client).expect("valid");
        h.dont_fragment = false;
        h.header_checksum = h.calc_header_checksum();
        out.extend_from_slice(&h.to_bytes());
        out.extend_from_slice(&icmp.to_bytes());
        out.extend_from_slice(quote);
    } else {
        let quote = &ip[..48];
        let (client, vip): ([u8; 16], [u8; 16]) =
            (ip[8..24].try_into().expect("16"), ip[24..40].try_into().expect("16"));
        let icmp = Icmpv6Header::with_checksum(Icmpv6Type::PacketTooBig { mtu: u32::from(mtu) }, vip, client, quote)
            .expect("fits");
        let h = Ipv6Header {
            traffic_class: 0,
            flow_label: Ipv6FlowLabel::ZERO,
            payload_length: 8 + 48,
            next_header: IpNumber(58),
            hop_limit: 64,
            source: vip,
            destination: client,
        };
        out.extend_from_slice(&h.to_bytes());
        out.extend_from_slice(&icmp.to_bytes());
        out.extend_from_slice(quote);
    }
    out
}

/// Bytes as hex, for failure messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a big-endian u16 at `at`.
pub fn set_u16(frame: &mut [u8], at: usize, value: u16) {
    frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// Reads a big-endian u16 at `at`.
pub fn get_u16(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

/// Inserts an IPv6 extension header of type `ext` right after the fixed header.
pub fn insert_ipv6_extension(frame: &mut Vec<u8>, l3: usize, ext: u8, body: [u8; 8]) {
    let mut header = body;
    header[0] = frame[l3 + 6]; // next header of the extension = the original next header
    frame[l3 + 6] = ext;
    let payload = get_u16(frame, l3 + 4);
    set_u16(frame, l3 + 4, payload + 8);
    let at = l3 + 40;
    frame.splice(at..at, header);
}
