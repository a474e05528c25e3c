//! Fixtures of session keys (`lb_common::session`): UDP VIPs that balance and keep flows by bytes
//! of the payload, so a client that changes port or address stays on its backend; keys at the
//! payload's start, in its middle under a mask, past its end (the 5-tuple, counted), and IPv6.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::ensure;
use lb_common::{
    counters::Reason,
    dataplane::DataplaneConfig,
    flow::flow_hash,
    maglev::table_slot,
    session::{MAX_KEY_LEN, SessionKey, session_flow},
    vip::VipKey,
};
use lb_tests::packet::{Flow, Protocol, Shape, frame_with_payload, key_addr, l3_offset};
use lb_userspace::reconcile::{Scheduling, VipTable};

use crate::fixture::{
    Body, Env, Expect, HASH_KEY, VIP4, check, config, encap_case, expect_encap, flow, sent_to, v4_backends, v6_backends,
};

const VIP4_SESSION: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 20);
const VIP4_MASKED: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 21);
const VIP6_SESSION: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x20);
const PORT: u16 = 7777;

/// A 32-bit session id at the payload's start.
const AT_START: SessionKey = SessionKey::new(0, 4, [0xff; MAX_KEY_LEN]);
/// Bytes 6..10 of the payload, the last one masked out (a sequence counter, say).
const MASKED: SessionKey = SessionKey::new(6, 4, [0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);

pub fn cases() -> Vec<(&'static str, Body)> {
    vec![
        ("sessions/key_at_payload_start_keeps_the_backend_when_the_client_moves", |e| with_sessions(e, client_moves)),
        ("sessions/masked_key_in_the_middle", |e| with_sessions(e, masked_key_in_the_middle)),
        ("sessions/payload_too_short_is_balanced_by_its_5_tuple_and_counted", |e| with_sessions(e, too_short)),
        ("sessions/ipv6_client_moves", |e| with_sessions(e, ipv6_client_moves)),
        ("sessions/other_udp_vips_keep_their_5_tuples", |e| with_sessions(e, other_vips_unchanged)),
        ("sessions/not_looked_for_unless_the_config_says_a_vip_has_one", not_looked_for),
        ("quic/short_header_goes_to_the_server_its_id_names_from_any_address", |e| with_sessions(e, quic_routed)),
        ("quic/long_header_goes_by_its_5_tuple", |e| with_sessions(e, quic_long_header)),
        ("quic/unknown_server_id_goes_by_its_5_tuple_and_is_counted", |e| with_sessions(e, quic_unknown_server_id)),
        ("quic/truncated_short_header_goes_by_its_5_tuple_and_is_counted", |e| with_sessions(e, quic_truncated)),
        ("counters/a_vip_new_at_a_freed_index_counts_from_zero", |e| with_sessions(e, new_vip_counts_from_zero)),
    ]
}

const VIP4_QUIC: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 22);
const QUIC_INDEX: u32 = 43;
/// Backend ids of the QUIC VIP; server ids 0xab01, 0xab02, 0xab03.
const QUIC_FIRST_ID: u32 = 1131;

/// The QUIC VIP: server ids of 2 bytes at byte 1 of the connection id, one per backend.
fn quic_vip(env: &mut Env) -> anyhow::Result<VipKey> {
    let vip = session_vip(env, QUIC_INDEX, VIP4_QUIC.into(), QUIC_FIRST_ID, SessionKey::quic(1, 2))?;
    let servers = (0..3u8).map(|i| ([0xab, i + 1, 0, 0, 0, 0, 0, 0], QUIC_FIRST_ID + u32::from(i))).collect();
    env.balancer.set_quic_servers(QUIC_INDEX, &servers)?;
    Ok(vip)
}

/// A short-header packet whose connection id (8 bytes: a first octet, the server id, the rest)
/// carries `server_id`.
fn short_header(server_id: [u8; 2]) -> Vec<u8> {
    [&[0x41, 0x07][..], &server_id, &[0x5e; 5], b"protected payload"].concat()
}

/// Short headers go to the backend their server id names, as packets of an established flow,
/// from the first client address and port and from any other (migration).
fn quic_routed(env: &mut Env) -> anyhow::Result<()> {
    quic_vip(env)?;
    let first = flow(env, Protocol::Udp, VIP4_QUIC.into(), PORT);
    let migrated = Flow { src: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 99)), src_port: env.port(), ..first };
    for (f, id) in [(&first, QUIC_FIRST_ID + 1), (&migrated, QUIC_FIRST_ID + 1), (&first, QUIC_FIRST_ID + 2)] {
        let server_id = [0xab, (id - QUIC_FIRST_ID + 1) as u8];
        let input = frame_with_payload(f, &Shape::default(), &short_header(server_id));
        let hash = lb_common::quic::client_hash(&f.key());
        let expect = sent_to(
            &input,
            l3_offset(&Shape::default()),
            env.backends[&id],
            hash,
            Reason::TxFallback,
            (QUIC_INDEX, id, false),
        );
        check(env, &input, None, &expect)?;
    }
    Ok(())
}

/// A long header (an Initial) goes by its 5-tuple, uncounted.
fn quic_long_header(env: &mut Env) -> anyhow::Result<()> {
    quic_vip(env)?;
    let before = env.balancer.session_misses(QUIC_INDEX)?;
    let f = flow(env, Protocol::Udp, VIP4_QUIC.into(), PORT);
    let shape = Shape::default();
    let initial = [&[0xc3, 0, 0, 0, 1, 8][..], &[0xab, 0x02, 0, 0, 0, 0, 0, 0], b"initial"].concat();
    let input = frame_with_payload(&f, &shape, &initial);
    check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)?;
    ensure!(env.balancer.session_misses(QUIC_INDEX)? == before, "a long header was counted as a miss");
    Ok(())
}

/// A server id no backend has goes by the 5-tuple, and is counted.
fn quic_unknown_server_id(env: &mut Env) -> anyhow::Result<()> {
    quic_miss(env, &short_header([0x99, 0x99]))
}

/// A short header that ends before its server id goes by the 5-tuple, and is counted.
fn quic_truncated(env: &mut Env) -> anyhow::Result<()> {
    quic_miss(env, &[0x41, 0x07, 0xab])
}

/// A datagram with `payload` to the QUIC VIP is a new flow by its 5-tuple, counted as a miss.
fn quic_miss(env: &mut Env, payload: &[u8]) -> anyhow::Result<()> {
    quic_vip(env)?;
    let before = env.balancer.session_misses(QUIC_INDEX)?;
    let f = flow(env, Protocol::Udp, VIP4_QUIC.into(), PORT);
    let shape = Shape::default();
    let input = frame_with_payload(&f, &shape, payload);
    check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)?;
    ensure!(env.balancer.session_misses(QUIC_INDEX)? == before + 1);
    Ok(())
}

/// A VIP removed, and one installed at its index (the agent gives freed indexes again), starts
/// with none of the old one's counts: its misses, its traffic.
fn new_vip_counts_from_zero(env: &mut Env) -> anyhow::Result<()> {
    quic_truncated(env)?;
    ensure!(env.balancer.session_misses(QUIC_INDEX)? > 0 && env.balancer.vip_counters(QUIC_INDEX)?.packets > 0);
    // Removed as the agent removes a VIP: the record, then its backends.
    let key = quic_vip(env)?;
    env.balancer.remove_vip(&key)?;
    for id in QUIC_FIRST_ID..QUIC_FIRST_ID + 3 {
        env.balancer.clear_backend(id)?;
    }
    quic_vip(env)?;
    let (misses, traffic) = (env.balancer.session_misses(QUIC_INDEX)?, env.balancer.vip_counters(QUIC_INDEX)?);
    ensure!(misses == 0, "the new VIP starts with {misses} misses");
    ensure!(traffic.packets == 0, "the new VIP starts with {} packets", traffic.packets);
    // An installed VIP that is written again (a changed table) keeps its counts.
    quic_truncated(env)?;
    quic_vip(env)?;
    ensure!(env.balancer.session_misses(QUIC_INDEX)? == 1, "a VIP written again lost its counts");
    Ok(())
}

/// Runs `body` with the instance's flag that some VIP has a session key (as the agent sets it).
fn with_sessions(env: &mut Env, body: Body) -> anyhow::Result<()> {
    env.balancer.set_config(&DataplaneConfig { session_keys: 1, ..config() })?;
    let result = body(env);
    env.balancer.set_config(&config())?;
    result
}

/// Installs a UDP VIP with session key `spec` at `addr` (index `index`, backends from
/// `first_id`); its key.
fn session_vip(env: &mut Env, index: u32, addr: IpAddr, first_id: u32, spec: SessionKey) -> anyhow::Result<VipKey> {
    let backends = if addr.is_ipv4() { v4_backends(first_id) } else { v6_backends(first_id) };
    env.vip(index, addr, PORT, Protocol::Udp, &backends, 251)?;
    let (family, a) = key_addr(addr);
    let key = VipKey::new(family, a, PORT, Protocol::Udp.number());
    let table = env.vips[&key].1.clone();
    let scheduling = Scheduling { session_key: spec, ..Scheduling::default() };
    env.balancer.install_vip(&key, &VipTable { index, scheduling, table })?;
    env.schedulings.insert(key, scheduling);
    Ok(key)
}

/// A datagram of `flow` whose payload is `payload`: encapsulated to the backend the session's
/// key chooses, with the session's hash.
fn expect_session(
    env: &Env,
    vip: &VipKey,
    spec: SessionKey,
    flow: &Flow,
    input: &[u8],
    payload: &[u8],
    new_flow: bool,
) -> anyhow::Result<(Expect, u32)> {
    let key = spec.extract(payload).ok_or_else(|| anyhow::anyhow!("payload too short for the key"))?;
    let hash = flow_hash(&session_flow(key, &flow.key(), &HASH_KEY), &HASH_KEY);
    let (index, table) = &env.vips[vip];
    let id = table[table_slot(hash, table.len() as u32) as usize];
    let shape = Shape::default();
    Ok((sent_to(input, l3_offset(&shape), env.backends[&id], hash, Reason::TxFallback, (*index, id, new_flow)), id))
}

/// Sends `payload` from `flow` and expects the session's backend; returns it.
fn send(env: &mut Env, vip: &VipKey, spec: SessionKey, f: &Flow, payload: &[u8], new: bool) -> anyhow::Result<u32> {
    let input = frame_with_payload(f, &Shape::default(), payload);
    let (expect, id) = expect_session(env, vip, spec, f, &input, payload, new)?;
    check(env, &input, None, &expect)?;
    Ok(id)
}

fn payload(session: [u8; 4]) -> Vec<u8> {
    let mut p = session.to_vec();
    p.extend_from_slice(b" player input");
    p
}

/// The client's NAT rebinds its port, then the client moves to another address: the session's
/// entry keeps its backend (no new flow), as the key's hash chose it. Another session has its
/// own entry.
fn client_moves(env: &mut Env) -> anyhow::Result<()> {
    let vip = session_vip(env, 40, VIP4_SESSION.into(), 1101, AT_START)?;
    let first = flow(env, Protocol::Udp, VIP4_SESSION.into(), PORT);
    let id = send(env, &vip, AT_START, &first, &payload([0xde, 0xad, 0xbe, 0xef]), true)?;
    let rebound = Flow { src_port: env.port(), ..first };
    ensure!(send(env, &vip, AT_START, &rebound, &payload([0xde, 0xad, 0xbe, 0xef]), false)? == id);
    let moved = Flow { src: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 77)), src_port: env.port(), ..first };
    ensure!(send(env, &vip, AT_START, &moved, &payload([0xde, 0xad, 0xbe, 0xef]), false)? == id);
    // The same 5-tuple with another session id is another session.
    send(env, &vip, AT_START, &first, &payload([0, 0, 0, 1]), true)?;
    Ok(())
}

/// The key's masked-out bits do not tell sessions apart; its other bits do.
fn masked_key_in_the_middle(env: &mut Env) -> anyhow::Result<()> {
    let vip = session_vip(env, 41, VIP4_MASKED.into(), 1111, MASKED)?;
    let with = |last: u8| -> Vec<u8> { [b"header".as_slice(), &[7, 8, 9, last], b"rest of the datagram"].concat() };
    let a = flow(env, Protocol::Udp, VIP4_MASKED.into(), PORT);
    let id = send(env, &vip, MASKED, &a, &with(0x10), true)?;
    let b = Flow { src_port: env.port(), ..a };
    ensure!(send(env, &vip, MASKED, &b, &with(0x99), false)? == id, "a masked bit made another session");
    let c = Flow { src_port: env.port(), ..a };
    let other = [b"header".as_slice(), &[7, 8, 10, 0x10], b"rest"].concat();
    send(env, &vip, MASKED, &c, &other, true)?;
    Ok(())
}

/// A datagram that ends before the key is balanced by its 5-tuple (and keeps a 5-tuple entry),
/// and counted per VIP.
fn too_short(env: &mut Env) -> anyhow::Result<()> {
    let vip = session_vip(env, 40, VIP4_SESSION.into(), 1101, AT_START)?;
    let before = env.balancer.session_misses(40)?;
    let f = flow(env, Protocol::Udp, VIP4_SESSION.into(), PORT);
    let shape = Shape::default();
    for new in [true, false] {
        let input = frame_with_payload(&f, &shape, &[0xde, 0xad, 0xbe]);
        let expect = expect_encap(env, &f, &input, &shape, new)?;
        check(env, &input, None, &expect)?;
    }
    let after = env.balancer.session_misses(40)?;
    ensure!(after == before + 2, "session key misses {before} -> {after}, 2 expected");
    // Exactly long enough is enough.
    send(env, &vip, AT_START, &f, &[1, 2, 3, 4], true)?;
    ensure!(env.balancer.session_misses(40)? == after);
    Ok(())
}

/// A UDP VIP without a session key is balanced by the 5-tuple, also while others have one.
fn other_vips_unchanged(env: &mut Env) -> anyhow::Result<()> {
    encap_case(env, Protocol::Udp, VIP4.into(), 53, Shape::default())
}

/// Without the instance's flag, even a VIP with a session key is balanced by the 5-tuple:
/// the flag is what makes UDP datagrams look their VIP up first.
fn not_looked_for(env: &mut Env) -> anyhow::Result<()> {
    session_vip(env, 40, VIP4_SESSION.into(), 1101, AT_START)?;
    let f = flow(env, Protocol::Udp, VIP4_SESSION.into(), PORT);
    let shape = Shape::default();
    let input = frame_with_payload(&f, &shape, &payload([9, 9, 9, 9]));
    let expect = expect_encap(env, &f, &input, &shape, true)?;
    check(env, &input, None, &expect)
}

fn ipv6_client_moves(env: &mut Env) -> anyhow::Result<()> {
    let vip = session_vip(env, 42, VIP6_SESSION.into(), 1121, AT_START)?;
    let first = flow(env, Protocol::Udp, VIP6_SESSION.into(), PORT);
    let id = send(env, &vip, AT_START, &first, &payload([1, 2, 3, 4]), true)?;
    let moved = Flow { src: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x77)), src_port: env.port(), ..first };
    ensure!(send(env, &vip, AT_START, &moved, &payload([1, 2, 3, 4]), false)? == id);
    Ok(())
}
