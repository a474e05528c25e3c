//! Fixtures of forwarded traffic: the exact encapsulated bytes, what is copied from the inner
//! header, and packets too big to encapsulate answered with ICMP.

use std::net::IpAddr;

use lb_common::counters::Reason;
use lb_tests::{
    packet::{Protocol, Shape, frame, l3_offset, too_big_answer},
    xdp::XDP_TX,
};

use crate::fixture::{
    Body, Env, Expect, MTU, VIP4, VIP4_ALL_PORTS, VIP4_V6_BACKENDS, VIP6, VIP6_V4_BACKENDS, check, encap_case, flow,
};

pub fn cases() -> Vec<(&'static str, Body)> {
    vec![
        // Forwarded traffic: exact encapsulated bytes, counters, and a flow-table hit.
        ("encap/tcp4_to_vip", |e| encap_case(e, Protocol::Tcp, VIP4.into(), 80, Shape::default())),
        ("encap/udp4_to_vip", |e| encap_case(e, Protocol::Udp, VIP4.into(), 53, Shape::default())),
        ("encap/tcp6_to_vip", |e| encap_case(e, Protocol::Tcp, VIP6.into(), 80, Shape::default())),
        ("encap/udp6_to_vip", |e| encap_case(e, Protocol::Udp, VIP6.into(), 53, Shape::default())),
        ("encap/all_ports_vip_port_8443", |e| {
            encap_case(e, Protocol::Tcp, VIP4_ALL_PORTS.into(), 8443, Shape::default())
        }),
        ("encap/all_ports_vip_port_22", |e| encap_case(e, Protocol::Tcp, VIP4_ALL_PORTS.into(), 22, Shape::default())),
        ("encap/ipv4_vip_ipv6_backends", |e| {
            encap_case(e, Protocol::Tcp, VIP4_V6_BACKENDS.into(), 80, Shape::default())
        }),
        ("encap/ipv6_vip_ipv4_backends", |e| {
            encap_case(e, Protocol::Tcp, VIP6_V4_BACKENDS.into(), 80, Shape::default())
        }),
        ("encap/vlan_tagged_tcp4_keeps_tag", |e| {
            encap_case(e, Protocol::Tcp, VIP4.into(), 80, Shape { vlan: Some(100), ..Shape::default() })
        }),
        ("encap/vlan_tagged_udp6_keeps_tag", |e| {
            encap_case(e, Protocol::Udp, VIP6.into(), 53, Shape { vlan: Some(4094), ..Shape::default() })
        }),
        ("encap/dscp_and_ecn_copied_v4", |e| {
            encap_case(e, Protocol::Udp, VIP4.into(), 53, Shape { tos: 0xb8 | 0b10, ..Shape::default() })
        }),
        ("encap/traffic_class_copied_v6", |e| {
            encap_case(e, Protocol::Tcp, VIP6.into(), 80, Shape { tos: 0x28 | 0b01, ..Shape::default() })
        }),
        ("encap/df_clear_copied", |e| {
            encap_case(e, Protocol::Udp, VIP4.into(), 53, Shape { dont_fragment: false, ..Shape::default() })
        }),
        ("encap/ttl_1_forwarded_unchanged", |e| {
            encap_case(e, Protocol::Tcp, VIP4.into(), 80, Shape { ttl: 1, ..Shape::default() })
        }),
        ("encap/hop_limit_1_forwarded_unchanged", |e| {
            encap_case(e, Protocol::Udp, VIP6.into(), 53, Shape { ttl: 1, ..Shape::default() })
        }),
        ("mtu/ipv4_exactly_at_mtu_forwarded", |e| {
            encap_case(e, Protocol::Tcp, VIP4.into(), 80, Shape { payload_len: 1440, ..Shape::default() })
        }),
        ("mtu/ipv6_exactly_at_mtu_forwarded", |e| {
            encap_case(e, Protocol::Tcp, VIP6.into(), 80, Shape { payload_len: 1400, ..Shape::default() })
        }),
        ("mtu/ipv4_one_byte_over_answered_with_fragmentation_needed", |e| {
            too_big_case(e, Protocol::Tcp, VIP4.into(), 80, Shape { payload_len: 1441, ..Shape::default() }, MTU - 20)
        }),
        ("mtu/ipv6_one_byte_over_answered_with_packet_too_big", |e| {
            too_big_case(e, Protocol::Tcp, VIP6.into(), 80, Shape { payload_len: 1401, ..Shape::default() }, MTU - 40)
        }),
        ("mtu/ipv4_to_ipv6_backends_announces_their_overhead", |e| {
            too_big_case(
                e,
                Protocol::Tcp,
                VIP4_V6_BACKENDS.into(),
                80,
                Shape { payload_len: 1421, ..Shape::default() },
                MTU - 40,
            )
        }),
        ("mtu/vlan_tagged_udp6_answered_with_its_tag", |e| {
            let shape = Shape { vlan: Some(33), payload_len: 1413, ..Shape::default() };
            too_big_case(e, Protocol::Udp, VIP6.into(), 53, shape, MTU - 40)
        }),
        ("mtu/ipv4_without_df_over_mtu_dropped", |e| {
            let f = flow(e, Protocol::Udp, VIP4.into(), 53);
            let shape = Shape { payload_len: 1453, dont_fragment: false, ..Shape::default() };
            check(e, &frame(&f, &shape), None, &Expect::drop(Reason::DropTooBig))
        }),
    ]
}

/// A packet too big to encapsulate: answered in place with an ICMP error announcing `mtu`.
fn too_big_case(
    env: &mut Env,
    protocol: Protocol,
    dst: IpAddr,
    port: u16,
    shape: Shape,
    mtu: u16,
) -> anyhow::Result<()> {
    let f = flow(env, protocol, dst, port);
    let input = frame(&f, &shape);
    let output = too_big_answer(&input, l3_offset(&shape), mtu);
    check(
        env,
        &input,
        None,
        &Expect { verdict: XDP_TX, reason: Reason::TxIcmpTooBig, output: Some(output), forwarded: None },
    )
}
