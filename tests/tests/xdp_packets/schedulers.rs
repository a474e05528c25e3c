//! Fixtures of the schedulers other than Maglev: source hash, round robin and least connections
//! (its active-flow counts and its choice).

use std::net::IpAddr;

use anyhow::{Context as _, ensure};
use lb_common::{
    backend::Backend, counters::Reason, dataplane::DataplaneConfig, flow::flow_hash, least_connections::candidates,
    maglev::table_slot, vip::VipKey,
};
use lb_tests::packet::{Flow, Protocol, Shape, TcpFlags, frame, key_addr};
use lb_userspace::reconcile::VipTable;

use crate::fixture::{
    Body, Env, Expect, HASH_KEY, VIP4_LEAST_CONNECTIONS, VIP4_ROUND_ROBIN, VIP4_SOURCE_HASH, check, config,
    expect_encap, expect_encap_to, flow, tag_of,
};

pub fn cases() -> Vec<(&'static str, Body)> {
    vec![
        ("schedulers/source_hash_keeps_a_clients_prefix_on_one_backend", source_hash_case),
        ("schedulers/weighted_round_robin_deals_the_sequence_in_turn", round_robin_case),
        ("schedulers/least_connections_counts_tcp_from_ack_to_fin", least_connections_tcp_counts),
        ("schedulers/least_connections_counts_udp_until_idle", least_connections_udp_counts),
        ("schedulers/least_connections_fewer_active_flows_per_weight_wins", least_connections_choice),
    ]
}

/// Every flow of clients in one /24 goes to the backend the source hash picks.
fn source_hash_case(env: &mut Env) -> anyhow::Result<()> {
    let shape = Shape::default();
    let mut seen = std::collections::BTreeSet::new();
    for client in [[198, 18, 0, 10], [198, 18, 0, 99], [198, 18, 0, 10]] {
        for _ in 0..3 {
            let f = Flow {
                protocol: Protocol::Tcp,
                src: IpAddr::V4(client.into()),
                src_port: env.port(),
                dst: VIP4_SOURCE_HASH.into(),
                dst_port: 80,
            };
            let input = frame(&f, &shape);
            let expect = expect_encap(env, &f, &input, &shape, true)?;
            seen.insert(expect.forwarded.map(|x| x.1));
            check(env, &input, None, &expect)?;
        }
    }
    ensure!(seen.len() == 1, "one /24 reached several backends: {seen:?}");
    Ok(())
}

/// Consecutive new flows are dealt the weighted sequence (1:2:3) in turn.
fn round_robin_case(env: &mut Env) -> anyhow::Result<()> {
    let shape = Shape::default();
    let key = VipKey::new(lb_common::family::IPV4, key_addr(VIP4_ROUND_ROBIN.into()).1, 80, 6);
    let mut dealt = Vec::new();
    for _ in 0..12 {
        let f = flow(env, Protocol::Tcp, VIP4_ROUND_ROBIN.into(), 80);
        let input = frame(&f, &shape);
        let expect = expect_encap(env, &f, &input, &shape, true)?;
        let backend = expect.forwarded.map_or(0, |x| x.1);
        dealt.push(backend);
        check(env, &input, None, &expect)?;
        env.dealt(key);
        // The flow's second packet stays with its backend, and does not advance the turn.
        let again = expect_encap_to(env, &f, &input, &shape, backend, false)?;
        check(env, &input, None, &again)?;
    }
    let count = |id| dealt.iter().filter(|&&d| d == id).count();
    ensure!((count(80), count(81), count(82)) == (2, 4, 6), "dealt {dealt:?}");
    // Smooth: never three in a row (two only where one pass of the sequence ends and the next begins).
    ensure!(dealt.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])), "a burst of one backend: {dealt:?}");
    Ok(())
}

fn least_connections_key(port: u16, protocol: Protocol) -> VipKey {
    VipKey::new(lb_common::family::IPV4, key_addr(VIP4_LEAST_CONNECTIONS.into()).1, port, protocol.number())
}

/// Active flows of backends `ids`.
fn active(env: &Env, ids: std::ops::Range<u32>) -> anyhow::Result<Vec<i64>> {
    ids.map(|id| Ok(env.balancer.active_flows(id)?)).collect()
}

/// A TCP flow counts from the client's first ACK to its FIN or RST: spoofed SYNs never count, a
/// retransmitted SYN keeps its backend, a SYN after the end is a new connection.
fn least_connections_tcp_counts(env: &mut Env) -> anyhow::Result<()> {
    let ids = 90..93;
    for id in ids.clone() {
        env.balancer.set_active_flows(id, 0)?;
    }
    let segment = |flags| Shape { tcp: flags, ..Shape::default() };
    // A SYN flood: twenty SYNs from different ports, none answered.
    for _ in 0..20 {
        let f = flow(env, Protocol::Tcp, VIP4_LEAST_CONNECTIONS.into(), 80);
        let (shape, input) = (segment(TcpFlags::Syn), frame(&f, &segment(TcpFlags::Syn)));
        check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)?;
    }
    ensure!(active(env, ids.clone())? == [0, 0, 0], "SYNs counted: {:?}", active(env, ids.clone())?);

    let f = flow(env, Protocol::Tcp, VIP4_LEAST_CONNECTIONS.into(), 80);
    let (_, owner, _) = env.predict(&f)?;
    let mut counts = [0i64; 3];
    let slot = (owner - 90) as usize;
    for (step, flags, new_flow, delta) in [
        ("SYN", TcpFlags::Syn, true, 0),
        ("retransmitted SYN", TcpFlags::Syn, false, 0),
        ("handshake ACK", TcpFlags::Ack, false, 1),
        ("data ACK", TcpFlags::Ack, false, 0),
        ("client FIN", TcpFlags::FinAck, false, -1),
        ("last ACK", TcpFlags::Ack, false, 0),
        ("FIN again", TcpFlags::FinAck, false, 0),
    ] {
        let shape = segment(flags);
        let input = frame(&f, &shape);
        let expect = expect_encap_to(env, &f, &input, &shape, owner, new_flow)?;
        check(env, &input, None, &expect).with_context(|| step.to_string())?;
        counts[slot] += delta;
        ensure!(
            active(env, ids.clone())? == counts,
            "after the {step}: {:?}, expected {counts:?}",
            active(env, ids.clone())?
        );
    }
    // The same ports again: a new connection, scheduled afresh (and not counted before its ACK).
    let shape = segment(TcpFlags::Syn);
    let input = frame(&f, &shape);
    check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?).context("SYN after the end")?;
    ensure!(active(env, ids.clone())? == [0, 0, 0], "a reopened connection counted before its ACK");

    // An ACK flood: twenty lone ACKs from different ports, as spoofed ones would be.
    for _ in 0..20 {
        let f = flow(env, Protocol::Tcp, VIP4_LEAST_CONNECTIONS.into(), 80);
        let (shape, input) = (Shape::default(), frame(&f, &Shape::default()));
        check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)?;
    }
    ensure!(active(env, ids.clone())? == [0, 0, 0], "lone ACKs counted: {:?}", active(env, ids.clone())?);

    // A connection first seen mid-stream (its entry was evicted, or it began on another
    // balancer) counts from its second packet; the client's RST ends it.
    let g = flow(env, Protocol::Tcp, VIP4_LEAST_CONNECTIONS.into(), 80);
    let (_, owner, _) = env.predict(&g)?;
    let shape = Shape::default();
    let input = frame(&g, &shape);
    check(env, &input, None, &expect_encap(env, &g, &input, &shape, true)?)?;
    check(env, &input, None, &expect_encap_to(env, &g, &input, &shape, owner, false)?)?;
    ensure!(env.balancer.active_flows(owner)? == 1, "mid-connection flow not counted at its second packet");
    let shape = segment(TcpFlags::Rst);
    let input = frame(&g, &shape);
    check(env, &input, None, &expect_encap_to(env, &g, &input, &shape, owner, false)?).context("RST")?;
    ensure!(active(env, ids)? == [0, 0, 0], "RST did not end the flow");
    Ok(())
}

/// A UDP flow counts from its first datagram; rescheduled after its idle timeout, it moves its
/// count to the new backend's.
fn least_connections_udp_counts(env: &mut Env) -> anyhow::Result<()> {
    let ids = 93..96;
    for id in ids.clone() {
        env.balancer.set_active_flows(id, 0)?;
    }
    let shape = Shape::default();
    let f = flow(env, Protocol::Udp, VIP4_LEAST_CONNECTIONS.into(), 53);
    let input = frame(&f, &shape);
    let (_, owner, _) = env.predict(&f)?;
    check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)?;
    ensure!(env.balancer.active_flows(owner)? == 1, "first datagram not counted");
    check(env, &input, None, &expect_encap_to(env, &f, &input, &shape, owner, false)?)?;
    ensure!(active(env, ids.clone())?.iter().sum::<i64>() == 1, "{:?}", active(env, ids.clone())?);

    // Its backend goes down while the VIP has no other: the flow stops counting, once, however
    // many datagrams then find no backend.
    let key = least_connections_key(53, Protocol::Udp);
    let (index, table) = env.vips[&key].clone();
    let record = {
        let (family, a) = key_addr(env.backends[&owner]);
        Backend::new(family, a, index as u16, key.tag())
    };
    env.balancer.set_backend(owner, &record.keeping_flows(false))?;
    env.balancer.install_vip(&key, &VipTable { index, scheduling: env.schedulings[&key], table: Vec::new() })?;
    let dropped = (0..3).try_for_each(|_| check(env, &input, None, &Expect::drop(Reason::DropNoBackend)));
    env.balancer.set_backend(owner, &record)?;
    env.balancer.install_vip(&key, &VipTable { index, scheduling: env.schedulings[&key], table })?;
    dropped.context("datagrams without a backend")?;
    ensure!(
        active(env, ids.clone())? == [0, 0, 0],
        "counts after the flow lost its backend: {:?}",
        active(env, ids.clone())?
    );
    // Back up: the flow's entry still names it, and its next datagram counts there again.
    check(env, &input, None, &expect_encap_to(env, &f, &input, &shape, owner, false)?)
        .context("datagram after the backend came back")?;
    ensure!(env.balancer.active_flows(owner)? == 1, "{:?}", active(env, ids.clone())?);

    env.balancer.set_config(&DataplaneConfig { udp_idle_timeout_ns: 1, ..config() })?;
    let result = (|| {
        std::thread::sleep(std::time::Duration::from_millis(30));
        // The expired entry stops counting before the choice: every count is 0 then, so the
        // tie goes to the Maglev choice.
        let table = &env.vips[&least_connections_key(53, Protocol::Udp)].1;
        let now = table[table_slot(flow_hash(&f.key(), &HASH_KEY), table.len() as u32) as usize];
        let expect = expect_encap_to(env, &f, &input, &shape, now, true)?;
        check(env, &input, None, &expect).context("datagram after the idle timeout")?;
        let counts = active(env, ids.clone())?;
        ensure!(
            counts.iter().sum::<i64>() == 1 && counts[(now - 93) as usize] == 1,
            "counts after rescheduling: {counts:?}"
        );
        Ok(())
    })();
    env.balancer.set_config(&config())?;
    result
}

/// The candidate with fewer active flows per unit of weight wins a SYN, unless the Maglev choice
/// is within an eighth of it (a tie keeps the Maglev choice), and a TCP packet without an entry
/// that is no SYN takes the Maglev choice.
fn least_connections_choice(env: &mut Env) -> anyhow::Result<()> {
    let key = least_connections_key(80, Protocol::Tcp);
    let (index, table) = env.vips[&key].clone();
    let syn = Shape { tcp: TcpFlags::Syn, ..Shape::default() };
    let candidates_of = |f: &Flow| {
        let at = |slot: u32| table.get(slot as usize).copied();
        candidates(flow_hash(&f.key(), &HASH_KEY), table.len() as u32, at)
    };
    let (first, second) = loop {
        let f = flow(env, Protocol::Tcp, VIP4_LEAST_CONNECTIONS.into(), 80);
        if let Some((first, Some(second))) = candidates_of(&f) {
            break (first, second);
        }
    };
    let third = (90..93).find(|id| *id != first && *id != second).context("three backends")?;
    // A new flow with the same two candidates.
    let with_both_candidates = |env: &mut Env| loop {
        let f = flow(env, Protocol::Tcp, VIP4_LEAST_CONNECTIONS.into(), 80);
        if candidates_of(&f) == Some((first, Some(second))) {
            break f;
        }
    };
    let result = (|| {
        // (first's active flows, second's, second's weight) -> winner.
        for (a, b, weight, winner) in [
            (0, 0, 1, first),
            (5, 5, 1, first),
            (5, 4, 1, second),
            (4, 5, 1, first),
            // Within an eighth, the Maglev candidate keeps it.
            (18, 16, 1, first),
            (19, 16, 1, second),
            (4, 8, 2, first),
            (4, 7, 2, second),
            (0, 0, 0, first),
        ] {
            env.balancer.set_active_flows(first, a)?;
            env.balancer.set_active_flows(second, b)?;
            env.balancer.set_active_flows(third, 1000)?;
            let (family, addr) = key_addr(env.backends[&second]);
            let tag = tag_of(env, second)?;
            env.balancer.set_backend(second, &Backend::new(family, addr, index as u16, tag).with_weight(weight))?;
            env.weights.insert(second, weight);
            let f = with_both_candidates(env);
            let input = frame(&f, &syn);
            let expect = expect_encap(env, &f, &input, &syn, true)?;
            ensure!(
                expect.forwarded.map(|x| x.1) == Some(winner),
                "prediction {:?} for {a} vs {b} at weight {weight}",
                expect.forwarded
            );
            check(env, &input, None, &expect)
                .with_context(|| format!("{a} active vs {b} active at weight {weight}"))?;
            ensure!(env.balancer.flow(&f.key()).map(|s| u32::from(s.backend)) == Some(winner), "flow entry");
        }
        // Mid-connection (no entry, no SYN): the Maglev candidate, though the other has fewer.
        env.balancer.set_active_flows(first, 5)?;
        env.balancer.set_active_flows(second, 0)?;
        let f = with_both_candidates(env);
        let shape = Shape::default();
        let input = frame(&f, &shape);
        let expect = expect_encap_to(env, &f, &input, &shape, first, true)?;
        check(env, &input, None, &expect).context("a mid-connection packet without an entry")?;
        Ok(())
    })();
    let (family, addr) = key_addr(env.backends[&second]);
    let tag = tag_of(env, second)?;
    env.balancer.set_backend(second, &Backend::new(family, addr, index as u16, tag))?;
    env.weights.remove(&second);
    for id in 90..93 {
        env.balancer.set_active_flows(id, 0)?;
    }
    result
}
