//! Fixtures of fragmented datagrams to VIPs: the first fragment finds the backend, the later ones
//! follow it; a later fragment without its first is refused; other protocols' fragments too.

use std::net::IpAddr;

use anyhow::Context as _;
use lb_common::counters::Reason;
use lb_tests::packet::{Protocol, Shape, fix_ipv4_checksum, frame, get_u16, insert_ipv6_extension, l3_offset, set_u16};

use crate::fixture::{Body, Env, Expect, NOT_VIP4, VIP4, VIP6, check, expect_encap, expect_encap_to, flow};

pub fn cases() -> Vec<(&'static str, Body)> {
    vec![
        ("fragments/ipv4_later_fragments_follow_the_first", |e| follow(e, VIP4.into())),
        ("fragments/ipv6_later_fragments_follow_the_first", |e| follow(e, VIP6.into())),
        ("fragments/ipv4_later_before_first_dropped", |e| later_alone(e, VIP4.into(), 53, Reason::DropFragmentUnknown)),
        ("fragments/ipv6_later_before_first_dropped", |e| later_alone(e, VIP6.into(), 53, Reason::DropFragmentUnknown)),
        ("fragments/later_fragment_to_other_address_passes", |e| {
            later_alone(e, NOT_VIP4.into(), 53, Reason::PassNotVip)
        }),
        ("fragments/ipv6_atomic_fragment_served_as_a_packet", atomic_fragment),
        ("fragments/ipv6_fragment_header_past_the_payload_length_dropped", |e| {
            // Found by the fuzzer: the fragment header must lie inside the packet's payload
            // length, not merely in the frame.
            let f = flow(e, Protocol::Udp, VIP6.into(), 53);
            let mut input = frame(&f, &Shape::default());
            fragment(&mut input, false, 5, 10, true);
            set_u16(&mut input, 14 + 4, 1);
            check(e, &input, None, &Expect::drop(Reason::DropTruncated))
        }),
        ("fragments/icmp_fragment_to_vip_address_dropped", |e| {
            let mut f = Vec::new();
            etherparse::PacketBuilder::ethernet2(lb_tests::packet::CLIENT_MAC, lb_tests::packet::BALANCER_MAC)
                .ipv4(crate::fixture::CLIENT4.octets(), VIP4.octets(), 64)
                .icmpv4_echo_request(1, 1)
                .write(&mut f, &[0; 32])?;
            set_u16(&mut f, 14 + 6, 0x2000);
            fix_ipv4_checksum(&mut f, 14);
            check(e, &f, None, &Expect::drop(Reason::DropFragment))
        }),
    ]
}

const DATAGRAM_ID: u32 = 0x1234;

/// Makes the frame `f` (IPv4 or IPv6 UDP) fragment `offset` (in 8-byte units) of datagram
/// `id`, with more fragments to come if `more`.
fn fragment(f: &mut Vec<u8>, v4: bool, id: u32, offset: u16, more: bool) {
    let l3 = l3_offset(&Shape::default());
    if v4 {
        set_u16(f, l3 + 4, id as u16);
        set_u16(f, l3 + 6, (u16::from(more) << 13) | offset);
        fix_ipv4_checksum(f, l3);
    } else {
        let flags = (offset << 3) | u16::from(more);
        let [a, b, c, d] = id.to_be_bytes();
        let [hi, lo] = flags.to_be_bytes();
        insert_ipv6_extension(f, l3, 44, [0, 0, hi, lo, a, b, c, d]);
    }
}

/// A datagram's first fragment goes to its flow's backend as a new flow; its later fragments,
/// which carry no ports (the bytes where ports would be differ), go to the same backend.
fn follow(env: &mut Env, vip: IpAddr) -> anyhow::Result<()> {
    let v4 = vip.is_ipv4();
    let f = flow(env, Protocol::Udp, vip, 53);
    let shape = Shape { payload_len: 200, ..Shape::default() };
    let id = DATAGRAM_ID + u32::from(f.src_port);
    let mut first = frame(&f, &shape);
    fragment(&mut first, v4, id, 0, true);
    let expect = expect_encap(env, &f, &first, &shape, true)?;
    let Some((_, backend, _)) = expect.forwarded else { unreachable!("a forwarded expectation") };
    check(env, &first, None, &expect).context("the first fragment")?;
    for (offset, more) in [(26, true), (52, false)] {
        let mut later = frame(&f, &shape);
        // Bytes of the datagram's middle: nothing like the ports.
        let l4 = l3_offset(&shape) + if v4 { 20 } else { 40 };
        later[l4..l4 + 4].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        fragment(&mut later, v4, id, offset, more);
        let expect = expect_encap_to(env, &f, &later, &shape, backend, false)?;
        check(env, &later, None, &expect).with_context(|| format!("the fragment at offset {offset}"))?;
    }
    Ok(())
}

/// A later fragment of a datagram whose first was never seen.
fn later_alone(env: &mut Env, dst: IpAddr, port: u16, reason: Reason) -> anyhow::Result<()> {
    let f = flow(env, Protocol::Udp, dst, port);
    let mut later = frame(&f, &Shape::default());
    fragment(&mut later, dst.is_ipv4(), 0xdead_0000 + u32::from(f.src_port), 10, false);
    let expect = if reason == Reason::PassNotVip { Expect::pass(reason) } else { Expect::drop(reason) };
    check(env, &later, None, &expect)
}

/// An IPv6 fragment header with offset 0 and no more fragments (RFC 6946): a whole packet.
fn atomic_fragment(env: &mut Env) -> anyhow::Result<()> {
    let f = flow(env, Protocol::Udp, VIP6.into(), 53);
    let shape = Shape::default();
    let mut input = frame(&f, &shape);
    fragment(&mut input, false, 77, 0, false);
    let l3 = l3_offset(&shape);
    anyhow::ensure!(get_u16(&input, l3 + 4) > 8, "payload length");
    let expect = expect_encap(env, &f, &input, &shape, true)?;
    check(env, &input, None, &expect)
}
