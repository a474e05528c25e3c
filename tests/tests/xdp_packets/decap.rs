//! Fixtures of the backends' decapsulation program: every tunnel family, ECN, what passes
//! untouched, unknown tunnel sources, and a round trip through the balancer's output.

use std::net::IpAddr;

use anyhow::{bail, ensure};
use lb_common::{counters::Reason, decap::unlisted_source};
use lb_tests::{
    packet::{Encap, Protocol, Shape, encapsulated, fix_ipv4_checksum, frame, hex},
    xdp::{XDP_DROP, XDP_PASS, XDP_TX, run_once, verdict_name},
};

use crate::fixture::{BALANCER_SOURCES, Body, Env, VIP4, VIP4_ALL_PORTS, VIP6, arp_frame, check_reason, flow};

pub fn cases() -> Vec<(&'static str, Body)> {
    vec![
        // Backend-side decapsulation.
        ("decap/ipip", |e| decap_case(e, VIP4.into(), "198.18.10.1", 0, 0, true)),
        ("decap/ip6ip6", |e| decap_case(e, VIP6.into(), "fd00:10::1", 0, 0, true)),
        ("decap/ipv4_in_ipv6", |e| decap_case(e, VIP4.into(), "fd00:10::1", 0, 0, true)),
        ("decap/ipv6_in_ipv4", |e| decap_case(e, VIP6.into(), "198.18.10.1", 0, 0, true)),
        ("decap/ce_copied_to_ect_inner_v4", |e| decap_case(e, VIP4.into(), "198.18.10.1", 0b10, 0b11, true)),
        ("decap/ce_copied_to_ect_inner_v6", |e| decap_case(e, VIP6.into(), "fd00:10::1", 0b01, 0b11, true)),
        ("decap/ce_not_copied_to_not_ect_inner", |e| decap_case(e, VIP4.into(), "198.18.10.1", 0, 0b11, true)),
        ("decap/ce_inner_under_ce_is_left_as_it_is", ce_inner_left_as_it_is),
        ("decap/unknown_inner_vip_passes_untouched", |e| {
            decap_case(e, VIP4_ALL_PORTS.into(), "198.18.10.1", 0, 0, false)
        }),
        ("decap/plain_traffic_passes_untouched", |e| {
            let f = flow(e, Protocol::Tcp, VIP4.into(), 80);
            decap_check(e, &frame(&f, &Shape::default()), None, Reason::DecapPassNotTunnel)
        }),
        ("decap/arp_passes_untouched", |e| decap_check(e, &arp_frame(), None, Reason::DecapPassNotTunnel)),
        ("decap/truncated_inner_header_passes", |e| {
            let f = flow(e, Protocol::Tcp, VIP4.into(), 80);
            let input = frame(&f, &Shape::default());
            let tunnel = encapsulated(&input, 14, &encap_to("198.18.10.1"));
            decap_check(e, &tunnel[..14 + 20 + 19], None, Reason::PassUnparseable)
        }),
        ("decap/balancer_output_round_trips", balancer_decap_round_trip),
        ("decap/unknown_ipv4_source_dropped", |e| decap_from(e, "198.18.50.1", "198.18.10.1", unlisted_source::DROP)),
        ("decap/unknown_ipv6_source_dropped", |e| decap_from(e, "fd00:50::1", "fd00:10::1", unlisted_source::DROP)),
        ("decap/unknown_source_passed_untouched_if_configured", |e| {
            decap_from(e, "198.18.201.1", "198.18.10.1", unlisted_source::PASS)
        }),
    ]
}

fn encap_to(backend: &str) -> Encap {
    let dst: IpAddr = backend.parse().expect("address");
    let src = if dst.is_ipv4() { "198.18.200.1".parse().expect("v4") } else { "fd00:200::1".parse().expect("v6") };
    Encap {
        outer_src: src,
        outer_dst: dst,
        src_mac: [2, 0, 0, 0, 0, 0xaa],
        dst_mac: [2, 0, 0, 0, 0, 0xbb],
        flow_hash: 0x12345,
    }
}

/// Runs the decapsulation program once and checks verdict (PASS, but for a dropped unknown
/// source), output and counters.
fn decap_check(env: &mut Env, input: &[u8], want: Option<&[u8]>, reason: Reason) -> anyhow::Result<()> {
    let before = env.decap.reason_counters()?;
    let run = run_once(env.decap.program()?, input, None)?;
    let verdict = if reason == Reason::DecapDropUnknownSource { XDP_DROP } else { XDP_PASS };
    ensure!(run.verdict == verdict, "verdict {}", verdict_name(run.verdict));
    let want = want.unwrap_or(input);
    if verdict == XDP_PASS && run.output != want {
        bail!("output differs\n  got:  {}\n  want: {}", hex(&run.output), hex(want));
    }
    check_reason(&before, &env.decap.reason_counters()?, reason, input.len())
}

/// A tunnel packet for a VIP from `source`, no balancer's: refused as `unlisted` says, and never
/// decapsulated. Anyone could otherwise reach the service from the VIP's address past the
/// balancer's policy.
fn decap_from(env: &mut Env, source: &str, backend: &str, unlisted: u32) -> anyhow::Result<()> {
    env.decap.set_sources(&BALANCER_SOURCES, unlisted)?;
    let vip: IpAddr = if backend.contains(':') { VIP6.into() } else { VIP4.into() };
    let f = flow(env, Protocol::Tcp, vip, 80);
    let input = frame(&f, &Shape::default());
    let encap = Encap { outer_src: source.parse().expect("address"), ..encap_to(backend) };
    let tunnel = encapsulated(&input, 14, &encap);
    let reason =
        if unlisted == unlisted_source::DROP { Reason::DecapDropUnknownSource } else { Reason::DecapPassUnknownSource };
    let result = decap_check(env, &tunnel, None, reason);
    env.decap.set_sources(&BALANCER_SOURCES, unlisted_source::DROP)?;
    result
}

/// A tunnel packet from `backend`'s point of view; `inner_ecn`/`outer_ecn` set the ECN bits.
fn decap_case(
    env: &mut Env,
    vip: IpAddr,
    backend: &str,
    inner_ecn: u8,
    outer_ecn: u8,
    decapsulates: bool,
) -> anyhow::Result<()> {
    let f = flow(env, Protocol::Tcp, vip, 80);
    let shape = Shape { tos: 0x20 | inner_ecn, ..Shape::default() };
    let input = frame(&f, &shape);
    let mut tunnel = encapsulated(&input, 14, &encap_to(backend));
    // Set the outer ECN bits.
    if backend.contains(':') {
        tunnel[15] = (tunnel[15] & !0x30) | (outer_ecn << 4);
    } else {
        tunnel[15] = (tunnel[15] & !0x03) | outer_ecn;
        fix_ipv4_checksum(&mut tunnel, 14);
    }
    if !decapsulates {
        return decap_check(env, &tunnel, None, Reason::DecapPassUnknownVip);
    }
    let ce = outer_ecn == 0b11 && inner_ecn != 0;
    let inner_shape = Shape { tos: if ce { 0x20 | 0b11 } else { shape.tos }, ..shape };
    let want = frame(&f, &inner_shape);
    let mut expected = tunnel[..12].to_vec();
    expected.extend_from_slice(&want[12..]);
    decap_check(env, &tunnel, Some(&expected), Reason::DecapPass)
}

/// An inner packet already marked CE is not written: rewriting its unchanged TOS would turn a
/// header checksum of 0xffff into 0x0000 (the fuzzer found one).
fn ce_inner_left_as_it_is(env: &mut Env) -> anyhow::Result<()> {
    let f = flow(env, Protocol::Tcp, VIP4.into(), 80);
    let mut input = frame(&f, &Shape { tos: 0x20 | 0b11, ..Shape::default() });
    input[14 + 10..14 + 12].copy_from_slice(&[0xff, 0xff]);
    let mut tunnel = encapsulated(&input, 14, &encap_to("198.18.10.1"));
    tunnel[15] |= 0b11;
    fix_ipv4_checksum(&mut tunnel, 14);
    let mut expected = tunnel[..12].to_vec();
    expected.extend_from_slice(&input[12..]);
    decap_check(env, &tunnel, Some(&expected), Reason::DecapPass)
}

/// The balancer's real output, fed to the decapsulation program, gives back the client's packet.
fn balancer_decap_round_trip(env: &mut Env) -> anyhow::Result<()> {
    for (protocol, vip, port) in [(Protocol::Tcp, IpAddr::V4(VIP4), 80), (Protocol::Udp, IpAddr::V6(VIP6), 53)] {
        let f = flow(env, protocol, vip, port);
        let input = frame(&f, &Shape::default());
        let encapsulated = run_once(env.balancer.program()?, &input, None)?;
        ensure!(encapsulated.verdict == XDP_TX, "balancer verdict {}", verdict_name(encapsulated.verdict));
        let decapsulated = run_once(env.decap.program()?, &encapsulated.output, None)?;
        ensure!(decapsulated.verdict == XDP_PASS, "decap verdict {}", verdict_name(decapsulated.verdict));
        ensure!(
            decapsulated.output[12..] == input[12..],
            "round trip changed the packet\n  got:  {}\n  sent: {}",
            hex(&decapsulated.output),
            hex(&input)
        );
    }
    Ok(())
}
