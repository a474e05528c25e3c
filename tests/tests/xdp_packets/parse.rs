//! Fixtures of parsing: traffic that is not the balancer's passes untouched, malformed traffic is
//! dropped with its reason, and truncation at every byte is caught.

use std::net::{IpAddr, Ipv6Addr};

use anyhow::Context as _;
use lb_common::counters::Reason;
use lb_tests::packet::{
    BALANCER_MAC, CLIENT_MAC, Protocol, Shape, fix_ipv4_checksum, frame, get_u16, insert_ipv6_extension, l3_offset,
    set_u16,
};

use crate::fixture::{
    Body, CLIENT4, Env, Expect, NOT_VIP4, NOT_VIP6, VIP4, VIP4_EMPTY, VIP6, arp_frame, check, edited_case,
    expect_encap, flow, icmpv6_frame,
};

pub fn cases() -> Vec<(&'static str, Body)> {
    vec![
        // Not for a VIP: passed byte for byte.
        ("pass/arp", |e| check(e, &arp_frame(), None, &Expect::pass(Reason::PassNotIp))),
        ("pass/lldp", |e| {
            let mut f = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e];
            f.extend_from_slice(&CLIENT_MAC);
            f.extend_from_slice(&[0x88, 0xcc, 0x02, 0x07, 0x04, 0, 0, 0, 0, 0, 1, 0, 0]);
            check(e, &f, None, &Expect::pass(Reason::PassNotIp))
        }),
        ("pass/vlan_tagged_arp", |e| {
            let mut f = arp_frame();
            f.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
            check(e, &f, None, &Expect::pass(Reason::PassNotIp))
        }),
        ("pass/qinq_to_vip_never_forwarded_with_a_tag_unparsed", |e| {
            // Two tags (802.1ad outer, 802.1Q inner): the program parses one, so the frame is
            // the kernel's, never sent on with the inner tag alone.
            let f = flow(e, Protocol::Tcp, VIP4.into(), 80);
            let mut input = frame(&f, &Shape { vlan: Some(100), ..Shape::default() });
            input.splice(12..12, [0x88, 0xa8, 0x00, 0xc8]);
            check(e, &input, None, &Expect::pass(Reason::PassNotIp))
        }),
        ("pass/ipv6_neighbour_solicitation", |e| {
            let target = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 1);
            check(e, &icmpv6_frame(135, target), None, &Expect::pass(Reason::PassNotVip))
        }),
        ("pass/ipv6_neighbour_advertisement_to_vip_address", |e| {
            check(e, &icmpv6_frame(136, VIP6), None, &Expect::pass(Reason::PassNotVip))
        }),
        ("pass/icmp_timestamp_to_vip_address", |e| {
            // ICMP other than echo and errors about flows (`icmp/...`) is the kernel's.
            let mut f = Vec::new();
            etherparse::PacketBuilder::ethernet2(CLIENT_MAC, BALANCER_MAC)
                .ipv4(CLIENT4.octets(), VIP4.octets(), 64)
                .icmpv4_raw(13, 0, [0; 4])
                .write(&mut f, &[0; 12])?;
            check(e, &f, None, &Expect::pass(Reason::PassNotVip))
        }),
        ("pass/tcp4_not_a_vip", |e| {
            let f = flow(e, Protocol::Tcp, NOT_VIP4.into(), 80);
            check(e, &frame(&f, &Shape::default()), None, &Expect::pass(Reason::PassNotVip))
        }),
        ("pass/tcp6_not_a_vip", |e| {
            let f = flow(e, Protocol::Tcp, NOT_VIP6.into(), 80);
            check(e, &frame(&f, &Shape::default()), None, &Expect::pass(Reason::PassNotVip))
        }),
        ("pass/vip_address_other_port", |e| {
            let f = flow(e, Protocol::Tcp, VIP4.into(), 81);
            check(e, &frame(&f, &Shape::default()), None, &Expect::pass(Reason::PassNotVip))
        }),
        ("pass/vip_port_other_protocol", |e| {
            let f = flow(e, Protocol::Udp, VIP4.into(), 80);
            check(e, &frame(&f, &Shape::default()), None, &Expect::pass(Reason::PassNotVip))
        }),
        ("pass/ipv4_options_not_for_a_vip", |e| {
            edited_case(e, Protocol::Tcp, NOT_VIP4.into(), 80, add_ipv4_options, Expect::pass(Reason::PassNotVip))
        }),
        ("pass/ipv4_fragment_not_for_a_vip", |e| {
            edited_case(
                e,
                Protocol::Udp,
                NOT_VIP4.into(),
                53,
                |f, l3| {
                    set_u16(f, l3 + 6, 0x2000);
                    fix_ipv4_checksum(f, l3);
                },
                Expect::pass(Reason::PassNotVip),
            )
        }),
        // Policy drops for VIP addresses.
        ("drop/ipv4_options", |e| {
            edited_case(e, Protocol::Tcp, VIP4.into(), 80, add_ipv4_options, Expect::drop(Reason::DropIpv4Options))
        }),
        ("drop/ipv6_hop_by_hop_header", |e| {
            edited_case(
                e,
                Protocol::Tcp,
                VIP6.into(),
                80,
                |f, l3| insert_ipv6_extension(f, l3, 0, [0, 0, 1, 4, 0, 0, 0, 0]),
                Expect::drop(Reason::DropIpv6Extension),
            )
        }),
        ("drop/ipv4_ihl_4", |e| {
            edited_case(
                e,
                Protocol::Tcp,
                VIP4.into(),
                80,
                |f, l3| {
                    f[l3] = 0x44;
                    fix_ipv4_checksum(f, l3);
                },
                Expect::drop(Reason::DropBadHeader),
            )
        }),
        ("drop/ipv4_version_5", |e| {
            edited_case(
                e,
                Protocol::Tcp,
                VIP4.into(),
                80,
                |f, l3| {
                    f[l3] = 0x55;
                    fix_ipv4_checksum(f, l3);
                },
                Expect::drop(Reason::DropBadHeader),
            )
        }),
        ("drop/ipv4_total_length_below_header", |e| {
            edited_case(
                e,
                Protocol::Tcp,
                VIP4.into(),
                80,
                |f, l3| {
                    set_u16(f, l3 + 2, 19);
                    fix_ipv4_checksum(f, l3);
                },
                Expect::drop(Reason::DropBadHeader),
            )
        }),
        ("drop/ipv4_total_length_beyond_frame", |e| {
            edited_case(
                e,
                Protocol::Tcp,
                VIP4.into(),
                80,
                |f, l3| {
                    let l = get_u16(f, l3 + 2);
                    set_u16(f, l3 + 2, l + 1);
                    fix_ipv4_checksum(f, l3);
                },
                Expect::drop(Reason::DropTruncated),
            )
        }),
        ("drop/ipv4_total_length_cuts_tcp_header", |e| {
            edited_case(
                e,
                Protocol::Tcp,
                VIP4.into(),
                80,
                |f, l3| {
                    set_u16(f, l3 + 2, 20 + 19);
                    fix_ipv4_checksum(f, l3);
                },
                Expect::drop(Reason::DropTruncated),
            )
        }),
        ("drop/ipv4_total_length_cuts_udp_header", |e| {
            edited_case(
                e,
                Protocol::Udp,
                VIP4.into(),
                53,
                |f, l3| {
                    set_u16(f, l3 + 2, 20 + 7);
                    fix_ipv4_checksum(f, l3);
                },
                Expect::drop(Reason::DropTruncated),
            )
        }),
        ("drop/ipv6_payload_length_beyond_frame", |e| {
            edited_case(
                e,
                Protocol::Udp,
                VIP6.into(),
                53,
                |f, l3| {
                    let l = get_u16(f, l3 + 4);
                    set_u16(f, l3 + 4, l + 1);
                },
                Expect::drop(Reason::DropTruncated),
            )
        }),
        ("drop/ipv6_version_4_in_ipv6_frame", |e| {
            edited_case(
                e,
                Protocol::Udp,
                VIP6.into(),
                53,
                |f, l3| f[l3] = 0x40 | (f[l3] & 0x0f),
                Expect::drop(Reason::DropBadHeader),
            )
        }),
        ("drop/ipv4_ttl_0", |e| {
            edited_case(
                e,
                Protocol::Tcp,
                VIP4.into(),
                80,
                |f, l3| {
                    f[l3 + 8] = 0;
                    fix_ipv4_checksum(f, l3);
                },
                Expect::drop(Reason::DropTtlExpired),
            )
        }),
        ("drop/ipv6_hop_limit_0", |e| {
            edited_case(e, Protocol::Udp, VIP6.into(), 53, |f, l3| f[l3 + 7] = 0, Expect::drop(Reason::DropTtlExpired))
        }),
        ("drop/vip_without_backends", |e| {
            let f = flow(e, Protocol::Tcp, VIP4_EMPTY.into(), 80);
            check(e, &frame(&f, &Shape::default()), None, &Expect::drop(Reason::DropNoBackend))
        }),
        // Truncation at every byte of the headers (BPF_PROG_RUN refuses frames under 14 bytes).
        ("truncated/tcp4_every_cut", |e| truncation_sweep(e, Protocol::Tcp, VIP4.into(), 80, None)),
        ("truncated/udp4_every_cut", |e| truncation_sweep(e, Protocol::Udp, VIP4.into(), 53, None)),
        ("truncated/tcp6_every_cut", |e| truncation_sweep(e, Protocol::Tcp, VIP6.into(), 80, None)),
        ("truncated/udp6_every_cut", |e| truncation_sweep(e, Protocol::Udp, VIP6.into(), 53, None)),
        ("truncated/vlan_tcp4_every_cut", |e| truncation_sweep(e, Protocol::Tcp, VIP4.into(), 80, Some(7))),
        ("truncated/vlan_udp6_every_cut", |e| truncation_sweep(e, Protocol::Udp, VIP6.into(), 53, Some(7))),
        ("truncated/not_a_vip_every_cut_passes", |e| {
            let f = flow(e, Protocol::Tcp, NOT_VIP4.into(), 80);
            let full = frame(&f, &Shape::default());
            for cut in 14..full.len() {
                let reason = if cut < 14 + 20 { Reason::PassUnparseable } else { Reason::PassNotVip };
                check(e, &full[..cut], None, &Expect::pass(reason)).with_context(|| format!("cut at {cut} bytes"))?;
            }
            Ok(())
        }),
    ]
}

fn add_ipv4_options(f: &mut Vec<u8>, l3: usize) {
    f[l3] = 0x46;
    let len = get_u16(f, l3 + 2);
    set_u16(f, l3 + 2, len + 4);
    f.splice(l3 + 20..l3 + 20, [1, 1, 1, 0]); // NOP, NOP, NOP, end of options
    fix_ipv4_checksum(f, l3);
}

/// Cuts a VIP packet at every length from 14 bytes up: before the IP addresses are readable it
/// passes (nothing to judge), after that it is a truncated VIP packet and is dropped.
fn truncation_sweep(
    env: &mut Env,
    protocol: Protocol,
    dst: IpAddr,
    port: u16,
    vlan: Option<u16>,
) -> anyhow::Result<()> {
    let f = flow(env, protocol, dst, port);
    let shape = Shape { vlan, payload_len: 8, ..Shape::default() };
    let full = frame(&f, &shape);
    let ip_header = if dst.is_ipv4() { 20 } else { 40 };
    let readable = l3_offset(&shape) + ip_header;
    for cut in 14..full.len() {
        let expect =
            if cut < readable { Expect::pass(Reason::PassUnparseable) } else { Expect::drop(Reason::DropTruncated) };
        check(env, &full[..cut], None, &expect).with_context(|| format!("cut at {cut} of {} bytes", full.len()))?;
    }
    let expect = expect_encap(env, &f, &full, &shape, true)?;
    check(env, &full, None, &expect).context("whole frame")
}
