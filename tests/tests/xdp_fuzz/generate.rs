//! Structure-aware packet generation: frames built from templates of everything a balancer's
//! NIC receives (VIP traffic of both families and protocols, ICMP echo and errors quoting
//! anything, fragments, IPv6 extension chains, tunnels, VLAN stacks, other ethertypes), then
//! mutated at the fields' edges, truncated or extended. Deterministic for a seed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_tests::packet::{
    BALANCER_MAC, CLIENT_MAC, Flow, Protocol, Shape, TcpFlags, fix_ipv4_checksum, frame, frame_with_payload,
};
use rand::{Rng, RngCore, seq::IndexedRandom};
use rand_chacha::ChaCha8Rng;

use crate::model::Model;

/// A generated frame and the template it came from (for failure reports).
pub struct Generated {
    pub bytes: Vec<u8>,
    pub template: &'static str,
    pub mutated: bool,
}

/// The generator: the seeded RNG and a memory of recent flows, so that errors quote and
/// fragments continue what was sent before.
pub struct Generator {
    rng: ChaCha8Rng,
    recent: Vec<Flow>,
    fragment_ids: Vec<(Flow, u32)>,
}

const SOURCES_V4: [Ipv4Addr; 8] = [
    Ipv4Addr::new(198, 18, 0, 10),
    Ipv4Addr::new(198, 18, 0, 66),
    Ipv4Addr::new(198, 18, 7, 1),
    Ipv4Addr::new(198, 19, 255, 254),
    Ipv4Addr::LOCALHOST,
    Ipv4Addr::new(224, 0, 0, 1),
    Ipv4Addr::BROADCAST,
    Ipv4Addr::new(198, 18, 200, 7),
];

impl Generator {
    pub fn new(seed: u64) -> Self {
        use rand::SeedableRng as _;
        Self { rng: ChaCha8Rng::seed_from_u64(seed), recent: Vec::new(), fragment_ids: Vec::new() }
    }

    pub fn next(&mut self, model: &Model) -> Generated {
        let roll = self.rng.random_range(0..100);
        let (mut bytes, template) = match roll {
            0..45 => (self.flow_packet(model), "flow"),
            45..52 => (self.fragment(model), "fragment"),
            52..60 => (self.icmp_error(model), "icmp_error"),
            60..65 => (self.echo(model), "icmp_echo"),
            65..72 => (self.extension_chain(model), "ipv6_extensions"),
            72..78 => (self.tunnel(model), "tunnel"),
            78..84 => (self.vlan_stack(model), "vlan_stack"),
            84..92 => (self.other_ethertype(), "other_ethertype"),
            _ => (self.junk(), "junk"),
        };
        let mutated = self.rng.random_bool(0.35);
        if mutated {
            for _ in 0..self.rng.random_range(1..4) {
                self.mutate(&mut bytes);
            }
        }
        Generated { bytes, template, mutated }
    }

    fn client(&mut self, v4: bool) -> IpAddr {
        if v4 {
            let base = *SOURCES_V4.choose(&mut self.rng).expect("sources");
            if self.rng.random_bool(0.5) {
                let mut o = base.octets();
                o[3] = self.rng.random();
                return IpAddr::V4(o.into());
            }
            IpAddr::V4(base)
        } else {
            let choices = [
                Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, self.rng.random()),
                Ipv6Addr::new(0xfd00, 0, 0, 0xbad, 0, 0, 0, self.rng.random()),
                Ipv6Addr::new(0x2001, 0xdb8, self.rng.random(), 0, 0, 0, 0, 1),
                Ipv6Addr::LOCALHOST,
                Ipv6Addr::UNSPECIFIED,
                Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
                Ipv4Addr::new(198, 18, 0, 10).to_ipv6_mapped(),
                Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, self.rng.random()),
            ];
            IpAddr::V6(*choices.choose(&mut self.rng).expect("sources"))
        }
    }

    /// A destination: mostly a VIP's (its port, or another), sometimes any address.
    fn destination(&mut self, model: &Model) -> (IpAddr, u16, Protocol) {
        let protocol = if self.rng.random_bool(0.5) { Protocol::Tcp } else { Protocol::Udp };
        if self.rng.random_bool(0.85) {
            let vip = model.vips.choose(&mut self.rng).expect("VIPs");
            let port = if self.rng.random_bool(0.8) && vip.port != 0 { vip.port } else { self.rng.random() };
            let protocol = if self.rng.random_bool(0.9) { vip.protocol } else { protocol };
            return (vip.address, port, protocol);
        }
        let dst = if self.rng.random_bool(0.5) {
            IpAddr::V4(Ipv4Addr::new(198, 18, 9, self.rng.random()))
        } else {
            IpAddr::V6(Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, self.rng.random()))
        };
        (dst, self.rng.random(), protocol)
    }

    fn shape(&mut self) -> Shape {
        let ttl = *[0u8, 1, 2, 64, 255].choose(&mut self.rng).expect("ttls");
        let payload_len = match self.rng.random_range(0..10) {
            0 => 0,
            1 => self.rng.random_range(1400..1600),
            _ => self.rng.random_range(1..300),
        };
        let tcp =
            *[TcpFlags::Syn, TcpFlags::Ack, TcpFlags::FinAck, TcpFlags::Rst].choose(&mut self.rng).expect("flags");
        Shape {
            vlan: if self.rng.random_bool(0.15) { Some(self.rng.random_range(1..4095)) } else { None },
            ttl,
            tos: self.rng.random(),
            dont_fragment: self.rng.random_bool(0.8),
            payload_len,
            tcp,
        }
    }

    fn flow(&mut self, model: &Model) -> Flow {
        // Half the time, another packet of a recent flow.
        if !self.recent.is_empty() && self.rng.random_bool(0.5) {
            return *self.recent.choose(&mut self.rng).expect("recent");
        }
        let (dst, dst_port, protocol) = self.destination(model);
        let src = self.client(dst.is_ipv4());
        let flow = Flow { protocol, src, src_port: self.rng.random(), dst, dst_port };
        if self.recent.len() < 512 {
            self.recent.push(flow);
        } else {
            let i = self.rng.random_range(0..512);
            self.recent[i] = flow;
        }
        flow
    }

    fn flow_packet(&mut self, model: &Model) -> Vec<u8> {
        let flow = self.flow(model);
        let shape = self.shape();
        if flow.protocol != Protocol::Udp || self.rng.random_bool(0.5) {
            return frame(&flow, &shape);
        }
        // A payload a session key or a QUIC header reads: a first byte of either header form
        // (or any), then ids from a small set, so that sessions and server ids recur.
        let first = *[0x40, 0x41, 0x7f, 0xc3, 0x80, self.rng.random()].choose(&mut self.rng).expect("first bytes");
        let mut payload = vec![first];
        for _ in 0..8 {
            payload.push(*[0, 1, 2, 3, 0xff, self.rng.random()].choose(&mut self.rng).expect("id bytes"));
        }
        payload.resize(shape.payload_len, 0x5a);
        frame_with_payload(&flow, &shape, &payload)
    }

    /// A first or later fragment of a datagram, IPv4 or IPv6.
    fn fragment(&mut self, model: &Model) -> Vec<u8> {
        let (flow, id, later) = if !self.fragment_ids.is_empty() && self.rng.random_bool(0.6) {
            let (flow, id) = *self.fragment_ids.choose(&mut self.rng).expect("ids");
            (flow, id, true)
        } else {
            let flow = self.flow(model);
            let id = self.rng.random::<u32>() & if flow.dst.is_ipv4() { 0xffff } else { u32::MAX };
            if self.fragment_ids.len() < 256 {
                self.fragment_ids.push((flow, id));
            }
            (flow, id, self.rng.random_bool(0.2))
        };
        let shape = Shape { vlan: None, ..self.shape() };
        let mut f = frame(&flow, &Shape { payload_len: shape.payload_len.max(16), ..shape });
        let offset: u16 = if later { self.rng.random_range(1..400) } else { 0 };
        let more = self.rng.random_bool(0.7);
        if flow.dst.is_ipv4() {
            f[14 + 4..14 + 6].copy_from_slice(&(id as u16).to_be_bytes());
            f[14 + 6..14 + 8].copy_from_slice(&((u16::from(more) << 13) | offset).to_be_bytes());
            fix_ipv4_checksum(&mut f, 14);
        } else {
            let flags = (offset << 3) | u16::from(more);
            let [hi, lo] = flags.to_be_bytes();
            let [a, b, c, d] = id.to_be_bytes();
            insert_extension(&mut f, 44, [0, 0, hi, lo, a, b, c, d]);
        }
        f
    }

    /// An ICMP error to a VIP address (mostly) quoting the reply of a flow (mostly a recent one),
    /// of a kind chosen among unreachable, too big, time exceeded and parameter problems.
    fn icmp_error(&mut self, model: &Model) -> Vec<u8> {
        let flow = self.flow(model);
        let reply = Flow {
            protocol: flow.protocol,
            src: flow.dst,
            src_port: flow.dst_port,
            dst: flow.src,
            dst_port: flow.src_port,
        };
        let quoted = frame(&reply, &Shape { payload_len: self.rng.random_range(0..1300), ..Shape::default() });
        let quote_len = match self.rng.random_range(0..6) {
            0 => self.rng.random_range(0..28),
            _ => {
                if flow.dst.is_ipv4() {
                    28
                } else {
                    (quoted.len() - 14).min(1232)
                }
            }
        };
        let quote = &quoted[14..(14 + quote_len).min(quoted.len())];
        let router = self.client(flow.dst.is_ipv4());
        let mut out = Vec::new();
        let eth = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, BALANCER_MAC);
        let kinds4 = [(3u8, 4u8), (3, 1), (3, 3), (11, 0), (12, 0)];
        let kinds6 = [(2u8, 0u8), (1, 4), (1, 0), (3, 0), (4, 0)];
        match (router, flow.dst) {
            (IpAddr::V4(r), IpAddr::V4(vip)) => {
                let (kind, code) = *kinds4.choose(&mut self.rng).expect("kinds");
                let rest = [0, 0, 0x05, 0x78];
                eth.ipv4(r.octets(), vip.octets(), 64).icmpv4_raw(kind, code, rest).write(&mut out, quote)
            }
            (IpAddr::V6(r), IpAddr::V6(vip)) => {
                let (kind, code) = *kinds6.choose(&mut self.rng).expect("kinds");
                eth.ipv6(r.octets(), vip.octets(), 64).icmpv6_raw(kind, code, [0, 0, 0x05, 0x78]).write(&mut out, quote)
            }
            _ => unreachable!("one family"),
        }
        .expect("frame fits");
        out
    }

    fn echo(&mut self, model: &Model) -> Vec<u8> {
        let (dst, _, _) = self.destination(model);
        let src = self.client(dst.is_ipv4());
        let payload = vec![0x61; self.rng.random_range(0..100)];
        let mut out = Vec::new();
        let eth = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, BALANCER_MAC);
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                eth.ipv4(s.octets(), d.octets(), 64).icmpv4_echo_request(1, 2).write(&mut out, &payload)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                eth.ipv6(s.octets(), d.octets(), 64).icmpv6_echo_request(1, 2).write(&mut out, &payload)
            }
            _ => unreachable!("one family"),
        }
        .expect("frame fits");
        out
    }

    /// An IPv6 packet to a VIP with a chain of one to three extension headers.
    fn extension_chain(&mut self, model: &Model) -> Vec<u8> {
        let v6 = model.vips.iter().filter(|v| v.address.is_ipv6()).collect::<Vec<_>>();
        let vip = v6.choose(&mut self.rng).expect("IPv6 VIPs");
        let protocol = vip.protocol;
        let flow = Flow {
            protocol,
            src: self.client(false),
            src_port: self.rng.random(),
            dst: vip.address,
            dst_port: if vip.port == 0 { self.rng.random() } else { vip.port },
        };
        let mut f = frame(&flow, &Shape { vlan: None, ..self.shape() });
        for _ in 0..self.rng.random_range(1..4) {
            let ext = *[0u8, 43, 44, 60, 51, 135, 139, 140].choose(&mut self.rng).expect("extensions");
            let mut body = [0u8; 8];
            self.rng.fill_bytes(&mut body[1..]);
            body[1] = 0; // length: 8 bytes
            insert_extension(&mut f, ext, body);
        }
        f
    }

    /// IPIP / IP6IP6 / mixed tunnel packets, as a backend's decapsulation sees them, with outer
    /// sources from the balancers' prefixes or anywhere.
    fn tunnel(&mut self, model: &Model) -> Vec<u8> {
        let inner_flow = self.flow(model);
        let inner = frame(&inner_flow, &Shape::default());
        let inner_ip = &inner[14..];
        let outer_v4 = self.rng.random_bool(0.5);
        let src: IpAddr = match (outer_v4, self.rng.random_bool(0.6)) {
            (true, true) => IpAddr::V4(Ipv4Addr::new(198, 18, 200, self.rng.random())),
            (true, false) => self.client(true),
            (false, true) => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, self.rng.random())),
            (false, false) => self.client(false),
        };
        let dst: IpAddr = if outer_v4 {
            Ipv4Addr::new(198, 18, 10, 1).into()
        } else {
            Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 11).into()
        };
        let protocol = if inner_flow.dst.is_ipv4() { 4 } else { 41 };
        let mut out = Vec::new();
        let eth = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, BALANCER_MAC);
        let number = etherparse::IpNumber(protocol);
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let h = etherparse::Ipv4Header::new(0, 64, number, s.octets(), d.octets()).expect("header");
                eth.ip(etherparse::IpHeaders::Ipv4(h, etherparse::Ipv4Extensions::default()))
                    .write(&mut out, number, inner_ip)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let h = etherparse::Ipv6Header {
                    next_header: number,
                    hop_limit: 64,
                    source: s.octets(),
                    destination: d.octets(),
                    ..Default::default()
                };
                eth.ip(etherparse::IpHeaders::Ipv6(h, etherparse::Ipv6Extensions::default()))
                    .write(&mut out, number, inner_ip)
            }
            _ => unreachable!("one family"),
        }
        .expect("frame fits");
        out
    }

    /// A VIP's packet under two VLAN tags (`QinQ`), or one 802.1ad tag.
    fn vlan_stack(&mut self, model: &Model) -> Vec<u8> {
        let flow = self.flow(model);
        let mut f = frame(&flow, &Shape { vlan: None, ..self.shape() });
        let tags = self.rng.random_range(1..3);
        for i in 0..tags {
            let tpid: u16 =
                if i == 0 && tags == 2 { 0x8100 } else { *[0x8100u16, 0x88a8].choose(&mut self.rng).expect("tpids") };
            let tci: u16 = self.rng.random();
            let mut tag = tpid.to_be_bytes().to_vec();
            tag.extend_from_slice(&tci.to_be_bytes());
            f.splice(12..12, tag);
        }
        f
    }

    fn other_ethertype(&mut self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&BALANCER_MAC);
        f.extend_from_slice(&CLIENT_MAC);
        let ether_type = *[0x0806u16, 0x88cc, 0x8847, 0x0800, 0x86dd, 0x8100].choose(&mut self.rng).expect("types");
        f.extend_from_slice(&ether_type.to_be_bytes());
        let len = self.rng.random_range(0..80);
        f.extend((0..len).map(|_| self.rng.random::<u8>()));
        f
    }

    fn junk(&mut self) -> Vec<u8> {
        let len = self.rng.random_range(0..128);
        (0..len).map(|_| self.rng.random::<u8>()).collect()
    }

    /// One mutation: a byte of the headers set to an edge or a random value, a 16-bit header
    /// field set to an edge, a truncation, or junk appended.
    fn mutate(&mut self, f: &mut Vec<u8>) {
        if f.is_empty() {
            return;
        }
        let head = f.len().min(96);
        match self.rng.random_range(0..5) {
            0 => {
                let at = self.rng.random_range(0..head);
                f[at] = *[0u8, 1, 0x0f, 0x40, 0x45, 0x46, 0x4f, 0x60, 0x7f, 0x80, 0xfe, 0xff]
                    .choose(&mut self.rng)
                    .expect("edges");
            }
            1 => {
                let at = self.rng.random_range(0..head);
                f[at] = self.rng.random();
            }
            2 if head >= 2 => {
                let at = self.rng.random_range(0..head - 1);
                let len = f.len() as u16;
                let v = *[
                    0u16,
                    1,
                    20,
                    40,
                    len.wrapping_sub(14),
                    len.wrapping_sub(13),
                    len.wrapping_sub(15),
                    0x3fff,
                    0x2000,
                    0xffff,
                ]
                .choose(&mut self.rng)
                .expect("edges");
                f[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
            3 => {
                let keep = self.rng.random_range(0..f.len());
                f.truncate(keep);
            }
            _ => {
                let extra = self.rng.random_range(1..64);
                f.extend((0..extra).map(|_| self.rng.random::<u8>()));
            }
        }
    }
}

/// Inserts an IPv6 extension header of type `ext` right after the fixed header of an untagged
/// frame (its next-header byte takes the fixed header's).
fn insert_extension(frame: &mut Vec<u8>, ext: u8, body: [u8; 8]) {
    let l3 = 14;
    if frame.len() < l3 + 40 {
        return;
    }
    let mut header = body;
    header[0] = frame[l3 + 6];
    frame[l3 + 6] = ext;
    let payload = u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]);
    frame[l3 + 4..l3 + 6].copy_from_slice(&(payload + 8).to_be_bytes());
    frame.splice(l3 + 40..l3 + 40, header);
}
