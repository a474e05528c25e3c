//! Fixtures of ICMP addressed to VIPs: echo by policy, errors about a VIP's flows steered to the
//! flow's backend (path-MTU discovery on the direct-return path).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;
use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, icmpv4::DestUnreachableHeader};
use lb_common::{counters::Reason, dataplane::icmp_echo, flow::flow_hash};
use lb_tests::{
    packet::{BALANCER_MAC, CLIENT_MAC, Flow, Protocol, Shape, frame},
    xdp::XDP_TX,
};

use crate::fixture::{
    Body, CLIENT4, CLIENT6, Env, Expect, HASH_KEY, NOT_VIP4, VIP4, VIP6, check, config, expect_encap, flow, sent_to,
};

/// The router on the direct-return path that sends the errors.
const ROUTER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xfe);

pub fn cases() -> Vec<(&'static str, Body)> {
    vec![
        ("icmp/echo_to_vip4_answered", |e| echo_answered(e, VIP4.into())),
        ("icmp/echo_to_vip6_answered", |e| echo_answered(e, VIP6.into())),
        ("icmp/echo_policy_drop_and_pass", echo_policy),
        ("icmp/echo_to_other_address_passes", |e| {
            let input = echo(CLIENT4.into(), NOT_VIP4.into());
            check(e, &input, None, &Expect::pass(Reason::PassNotVip))
        }),
        ("icmp/frag_needed_reaches_the_flows_backend", |e| {
            error_reaches_owner(e, Protocol::Tcp, VIP4.into(), 80, true)
        }),
        ("icmp/frag_needed_of_an_unknown_flow_reaches_its_maglev_backend", |e| {
            error_reaches_owner(e, Protocol::Udp, VIP4.into(), 53, false)
        }),
        ("icmp/packet_too_big_reaches_the_flows_backend", |e| {
            error_reaches_owner(e, Protocol::Tcp, VIP6.into(), 80, true)
        }),
        ("icmp/packet_too_big_of_an_unknown_flow_reaches_its_maglev_backend", |e| {
            error_reaches_owner(e, Protocol::Udp, VIP6.into(), 53, false)
        }),
        ("icmp/error_quoting_another_source_dropped", error_quoting_another_source),
        ("icmp/error_whose_quote_lies_past_its_ip_length_dropped", |e| {
            // Found by the fuzzer: the quote must be read inside the error's IP packet, not from
            // bytes after it in the frame.
            let f = flow(e, Protocol::Tcp, VIP4.into(), 80);
            let mut input = error_about(&f);
            input[14 + 2..14 + 4].copy_from_slice(&28u16.to_be_bytes());
            lb_tests::packet::fix_ipv4_checksum(&mut input, 14);
            check(e, &input, None, &Expect::drop(Reason::DropIcmpUnmatched))
        }),
        ("icmp/echo_past_its_ip_length_dropped", |e| {
            // Found by the fuzzer: an IPv4 packet of 20 bytes holds no ICMP header, whatever
            // the frame carries after it.
            let mut input = echo(CLIENT4.into(), VIP4.into());
            input[14 + 2..14 + 4].copy_from_slice(&20u16.to_be_bytes());
            lb_tests::packet::fix_ipv4_checksum(&mut input, 14);
            check(e, &input, None, &Expect::drop(Reason::DropTruncated))
        }),
        ("icmp/error_to_other_address_passes", |e| {
            let f = flow(e, Protocol::Tcp, VIP4.into(), 80);
            let mut input = error_about(&f);
            // Addressed to a host that is no VIP: the kernel's business.
            input[14 + 16..14 + 20].copy_from_slice(&NOT_VIP4.octets());
            lb_tests::packet::fix_ipv4_checksum(&mut input, 14);
            check(e, &input, None, &Expect::pass(Reason::PassNotVip))
        }),
    ]
}

fn echo(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let mut out = Vec::new();
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, BALANCER_MAC);
    let payload = b"lb echo payload";
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            builder.ipv4(s.octets(), d.octets(), 61).icmpv4_echo_request(7, 1).write(&mut out, payload)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            builder.ipv6(s.octets(), d.octets(), 61).icmpv6_echo_request(7, 1).write(&mut out, payload)
        }
        _ => unreachable!("one family"),
    }
    .expect("frame fits");
    out
}

fn echo_answered(env: &mut Env, vip: IpAddr) -> anyhow::Result<()> {
    let client: IpAddr = if vip.is_ipv4() { CLIENT4.into() } else { CLIENT6.into() };
    let input = echo(client, vip);
    let mut reply = Vec::new();
    let builder = PacketBuilder::ethernet2(BALANCER_MAC, CLIENT_MAC);
    let payload = b"lb echo payload";
    match (vip, client) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            builder.ipv4(s.octets(), d.octets(), 64).icmpv4_echo_reply(7, 1).write(&mut reply, payload)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            builder.ipv6(s.octets(), d.octets(), 64).icmpv6_echo_reply(7, 1).write(&mut reply, payload)
        }
        _ => unreachable!("one family"),
    }
    .expect("frame fits");
    check(
        env,
        &input,
        None,
        &Expect { verdict: XDP_TX, reason: Reason::TxIcmpEchoReply, output: Some(reply), forwarded: None },
    )
}

fn echo_policy(env: &mut Env) -> anyhow::Result<()> {
    let input = echo(CLIENT4.into(), VIP4.into());
    let result = (|| {
        for (policy, expect) in
            [(icmp_echo::DROP, Expect::drop(Reason::DropIcmpEcho)), (icmp_echo::PASS, Expect::pass(Reason::PassNotVip))]
        {
            env.balancer.set_config(&lb_common::dataplane::DataplaneConfig { icmp_echo: policy, ..config() })?;
            check(env, &input, None, &expect).with_context(|| format!("policy {policy}"))?;
        }
        Ok(())
    })();
    env.balancer.set_config(&config())?;
    result
}

/// An ICMP error from the router about the reply of `f` (from the VIP back to the client): a
/// "fragmentation needed" (IPv4) or "packet too big" (IPv6) announcing MTU 1400.
fn error_about(f: &Flow) -> Vec<u8> {
    let reply = Flow { protocol: f.protocol, src: f.dst, src_port: f.dst_port, dst: f.src, dst_port: f.src_port };
    let reply_frame = frame(&reply, &Shape { payload_len: 1200, ..Shape::default() });
    let mut out = Vec::new();
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, BALANCER_MAC);
    match f.dst {
        IpAddr::V4(vip) => {
            // RFC 792: the IP header and the first 8 bytes of the datagram.
            let quote = &reply_frame[14..14 + 28];
            let kind =
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 });
            builder.ipv4(ROUTER4.octets(), vip.octets(), 63).icmpv4(kind).write(&mut out, quote)
        }
        IpAddr::V6(vip) => {
            // RFC 4443: as much of the packet as fits 1280 bytes.
            let quote = &reply_frame[14..(14 + 1280 - 48).min(reply_frame.len())];
            builder
                .ipv6(ROUTER6.octets(), vip.octets(), 63)
                .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1400 })
                .write(&mut out, quote)
        }
    }
    .expect("frame fits");
    out
}

/// An error about a flow to `vip` reaches the flow's backend, encapsulated like the flow's own
/// packets: the flow-table entry's backend (`established`) or the one its hash picks.
fn error_reaches_owner(
    env: &mut Env,
    protocol: Protocol,
    vip: IpAddr,
    port: u16,
    established: bool,
) -> anyhow::Result<()> {
    let f = flow(env, protocol, vip, port);
    if established {
        let input = frame(&f, &Shape::default());
        let expect = expect_encap(env, &f, &input, &Shape::default(), true)?;
        check(env, &input, None, &expect).context("the flow's first packet")?;
    }
    let (index, id, backend) = env.predict(&f)?;
    let input = error_about(&f);
    let hash = flow_hash(&f.key(), &HASH_KEY);
    let expect = sent_to(&input, 14, backend, hash, Reason::TxIcmpError, (index, id, false));
    check(env, &input, None, &expect)?;
    anyhow::ensure!(established || env.balancer.flow(&f.key()).is_none(), "an ICMP error created a flow entry");
    Ok(())
}

fn error_quoting_another_source(env: &mut Env) -> anyhow::Result<()> {
    let f = flow(env, Protocol::Tcp, VIP4.into(), 80);
    let mut input = error_about(&f);
    // The quoted packet claims another source than the VIP the error is addressed to.
    let quoted_src = 14 + 20 + 8 + 12;
    input[quoted_src..quoted_src + 4].copy_from_slice(&[198, 18, 1, 99]);
    check(env, &input, None, &Expect::drop(Reason::DropIcmpUnmatched))
}
