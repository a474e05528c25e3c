//! Fixtures of the flow table and the tables under change: flows that survive a rebuild, removed
//! and reused backend ids, drains, idle timeouts, and tables that span chunks.

use std::net::Ipv4Addr;

use anyhow::{Context as _, ensure};
use lb_common::{
    backend::Backend,
    counters::Reason,
    dataplane::DataplaneConfig,
    flow::flow_hash,
    maglev::{MaglevBackend, build_table, table_slot},
    vip::VipKey,
};
use lb_tests::packet::{
    BALANCER_MAC, Encap, FALLBACK_MAC, Protocol, Shape, TcpFlags, encapsulated, frame, key_addr, l3_offset,
};

use crate::fixture::{
    Body, Env, Expect, HASH_KEY, VIP4, VIP4_ALL_PORTS, VIP4_REBUILD, VIP4_REMOVAL, check, config, expect_encap, flow,
    maglev_vip,
};

pub fn cases() -> Vec<(&'static str, Body)> {
    vec![
        // Flow table and table changes.
        ("flows/hit_keeps_backend_after_table_rebuilt_without_it", flow_survives_rebuild),
        ("flows/removed_backend_is_rescheduled", removed_backend_rescheduled),
        ("tables/largest_table_spans_chunks", largest_table_spans_chunks),
        ("counters/removed_backend_keeps_vip_and_reason_totals", removed_backend_keeps_totals),
        ("flows/draining_backend_keeps_pinned_flows_down_backend_sheds_them", drain_keeps_down_sheds),
        ("flows/backend_id_reused_by_another_vip_reschedules", reused_id_of_another_vip_reschedules),
        ("flows/udp_idle_timeout_reschedules", udp_idle_timeout),
        ("flows/a_vips_udp_idle_timeout_replaces_the_instances", vip_udp_idle_timeout),
        ("flows/removed_vip_passes", |e| {
            let key = VipKey::new(lb_common::family::IPV4, key_addr(VIP4_ALL_PORTS.into()).1, 0, 6);
            e.balancer.remove_vip(&key)?;
            let f = flow(e, Protocol::Tcp, VIP4_ALL_PORTS.into(), 443);
            let result = check(e, &frame(&f, &Shape::default()), None, &Expect::pass(Reason::PassNotVip));
            let (index, table) = e.vips[&key].clone();
            e.balancer.install_vip(&key, &maglev_vip(index, &table))?;
            result
        }),
    ]
}

fn rebuild_key() -> VipKey {
    VipKey::new(lb_common::family::IPV4, key_addr(VIP4_REBUILD.into()).1, 80, 6)
}

/// A flow keeps its backend when the table is rebuilt without that backend's slots; a new flow
/// that the old table sent to that backend goes elsewhere.
fn flow_survives_rebuild(env: &mut Env) -> anyhow::Result<()> {
    let key = rebuild_key();
    let shape = Shape::default();
    let established = flow(env, Protocol::Tcp, VIP4_REBUILD.into(), 80);
    let input = frame(&established, &shape);
    let (_, owner, _) = env.predict(&established)?;
    check(env, &input, None, &expect_encap(env, &established, &input, &shape, true)?)?;
    let before = expect_encap(env, &established, &input, &shape, false)?;

    // A second flow the old table also gives to `owner`, not yet seen by the data plane.
    let mut newcomer = flow(env, Protocol::Tcp, VIP4_REBUILD.into(), 80);
    while env.predict(&newcomer)?.1 != owner {
        newcomer.src_port = env.port();
    }

    let (index, old_table) = env.vips[&key].clone();
    let remaining: Vec<MaglevBackend> = env
        .backends
        .iter()
        .filter(|(id, _)| (40..44).contains(*id) && **id != owner)
        .map(|(&id, &addr)| {
            let (family, a) = key_addr(addr);
            MaglevBackend { addr: a, family, weight: 1, id }
        })
        .collect();
    let new_table = build_table(&remaining, 251)?;
    env.balancer.install_vip(&key, &maglev_vip(index, &new_table))?;
    env.vips.insert(key, (index, new_table));

    let result = (|| {
        check(env, &input, None, &before).context("established flow after the rebuild")?;
        // A SYN on the same 5-tuple is a new connection (a reused source port): the scheduler
        // decides again, and the new table no longer has the old backend.
        let syn_shape = Shape { tcp: TcpFlags::Syn, ..shape };
        let syn = frame(&established, &syn_shape);
        let reopened = expect_encap(env, &established, &syn, &syn_shape, true)?;
        ensure!(reopened.forwarded.map(|f| f.1) != Some(owner), "the rebuilt table still picks {owner}");
        check(env, &syn, None, &reopened).context("a SYN reusing the established flow's 5-tuple")?;
        let input = frame(&newcomer, &shape);
        let expect = expect_encap(env, &newcomer, &input, &shape, true)?;
        ensure!(expect.forwarded.map(|f| f.1) != Some(owner), "the rebuilt table still picks {owner}");
        check(env, &input, None, &expect).context("new flow after the rebuild")
    })();
    env.balancer.install_vip(&key, &maglev_vip(index, &old_table))?;
    env.vips.insert(key, (index, old_table));
    result
}

/// The largest table, stored in 256 chunks: new flows whose slots fall in different chunks get
/// the backend of their slot (each chunk holds another backend), and going back to a small table
/// frees the large one's chunks.
fn largest_table_spans_chunks(env: &mut Env) -> anyhow::Result<()> {
    let key = rebuild_key();
    let shape = Shape::default();
    let (index, old_table) = env.vips[&key].clone();
    // Both of the VIP's tables hold the small table to begin with.
    for _ in 0..2 {
        env.balancer.install_vip(&key, &maglev_vip(index, &old_table))?;
    }
    let chunks_before = env.balancer.table_chunks()?;
    let ids = [40, 41, 42, 43];
    let size = lb_common::capacity::MAGLEV_MAX_TABLE_SIZE;
    let entries = lb_common::capacity::TABLE_CHUNK_ENTRIES;
    let large: Vec<u32> = (0..size).map(|slot| ids[(slot / entries) as usize % ids.len()]).collect();
    env.balancer.install_vip(&key, &maglev_vip(index, &large))?;
    env.vips.insert(key, (index, large));
    let result = (|| {
        ensure!(
            // The small table's one chunk in the table written becomes the first of 256.
            env.balancer.table_chunks()? == chunks_before + 255,
            "{} chunks after installing a table of 256 chunks over {chunks_before}",
            env.balancer.table_chunks()?
        );
        let mut chunks_seen = std::collections::BTreeSet::new();
        for _ in 0..64 {
            let f = flow(env, Protocol::Tcp, VIP4_REBUILD.into(), 80);
            chunks_seen.insert(table_slot(flow_hash(&f.key(), &HASH_KEY), size) / entries);
            let input = frame(&f, &shape);
            check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)
                .with_context(|| format!("new flow to slot {}", table_slot(flow_hash(&f.key(), &HASH_KEY), size)))?;
        }
        ensure!(chunks_seen.len() >= 32, "64 flows met only {} chunks", chunks_seen.len());
        Ok(())
    })();
    env.balancer.install_vip(&key, &maglev_vip(index, &old_table))?;
    env.vips.insert(key, (index, old_table.clone()));
    result?;
    // Both of the VIP's tables are small again: the large one's chunks were removed.
    env.balancer.install_vip(&key, &maglev_vip(index, &old_table))?;
    ensure!(
        env.balancer.table_chunks()? == chunks_before,
        "{} chunks, {chunks_before} before",
        env.balancer.table_chunks()?
    );
    Ok(())
}

/// A backend's traffic stays in its VIP's totals and in the reason totals when the backend is
/// removed and when its id is given to a new backend, which starts counting from zero.
fn removed_backend_keeps_totals(env: &mut Env) -> anyhow::Result<()> {
    let shape = Shape::default();
    let f = flow(env, Protocol::Tcp, VIP4_REBUILD.into(), 80);
    let input = frame(&f, &shape);
    let (vip, owner, _) = env.predict(&f)?;
    check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)?;
    let record = env.balancer.backend(owner)?;
    let totals =
        |env: &Env| -> anyhow::Result<_> { Ok((env.balancer.reason_counters()?, env.balancer.vip_counters(vip)?)) };
    let before = totals(env)?;
    ensure!(env.balancer.backend_counters(owner)?.packets > 0, "backend {owner} counted nothing");
    env.balancer.clear_backend(owner)?;
    let result = (|| {
        ensure!(totals(env)? == before, "totals changed when backend {owner} was removed");
        let newcomer = Backend::new(
            record.family,
            [198, 18, 10, 99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            record.vip_index,
            record.vip_tag,
        );
        env.balancer.set_backend(owner, &newcomer)?;
        ensure!(totals(env)? == before, "totals changed when id {owner} was given to a new backend");
        let counted = env.balancer.backend_counters(owner)?;
        ensure!(
            counted == lb_common::counters::TrafficCounters::default(),
            "the new backend at id {owner} starts at {counted:?}"
        );
        Ok(())
    })();
    env.balancer.set_backend(owner, &record)?;
    result
}

/// A flow pinned to a backend that is removed entirely is rescheduled as a new flow.
fn removed_backend_rescheduled(env: &mut Env) -> anyhow::Result<()> {
    let key = VipKey::new(lb_common::family::IPV4, key_addr(VIP4_REMOVAL.into()).1, 80, 6);
    let shape = Shape::default();
    let f = flow(env, Protocol::Tcp, VIP4_REMOVAL.into(), 80);
    let input = frame(&f, &shape);
    let (_, owner, _) = env.predict(&f)?;
    check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)?;

    let (index, _) = env.vips[&key].clone();
    let survivor = if owner == 50 { 51 } else { 50 };
    let (family, a) = key_addr(env.backends[&survivor]);
    let table = build_table(&[MaglevBackend { addr: a, family, weight: 1, id: survivor }], 251)?;
    env.balancer.clear_backend(owner)?;
    env.balancer.install_vip(&key, &maglev_vip(index, &table))?;
    env.vips.insert(key, (index, table));
    let expect = expect_encap(env, &f, &input, &shape, true)?;
    ensure!(expect.forwarded.map(|x| x.1) == Some(survivor), "prediction should be the survivor");
    check(env, &input, None, &expect)?;
    ensure!(
        env.balancer.flow(&f.key()).map(|s| u32::from(s.backend)) == Some(survivor),
        "flow entry not moved to the survivor"
    );
    Ok(())
}

/// A flow pinned to a backend id that was freed and given to a backend of another VIP is
/// rescheduled on its own VIP, never sent to the other VIP's backend.
fn reused_id_of_another_vip_reschedules(env: &mut Env) -> anyhow::Result<()> {
    let key = rebuild_key();
    let shape = Shape::default();
    let (index, old_table) = env.vips[&key].clone();
    let f = flow(env, Protocol::Tcp, VIP4_REBUILD.into(), 80);
    let input = frame(&f, &shape);
    let (_, owner, _) = env.predict(&f)?;
    let old_record = {
        let (family, a) = key_addr(env.backends[&owner]);
        Backend::new(family, a, index as u16, key.tag())
    };
    let remaining: Vec<MaglevBackend> = (40..44)
        .filter(|id| *id != owner)
        .map(|id| {
            let (family, addr) = key_addr(env.backends[&id]);
            MaglevBackend { addr, family, weight: 1, id }
        })
        .collect();
    let table = build_table(&remaining, 251)?;
    let result = (|| {
        check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)?;
        env.balancer.install_vip(&key, &maglev_vip(index, &table))?;
        env.vips.insert(key, (index, table.clone()));
        // The id now serves VIP 9, at another address.
        let vip9 = env.vips.iter().find(|(_, (i, _))| *i == 9).map(|(k, _)| k.tag()).context("no VIP 9")?;
        let other = Backend::new(lb_common::family::IPV4, key_addr(Ipv4Addr::new(198, 18, 13, 9).into()).1, 9, vip9);
        env.balancer.set_backend(owner, &other)?;
        let expect = expect_encap(env, &f, &input, &shape, true)?;
        ensure!(expect.forwarded.is_some_and(|x| x.1 != owner), "prediction should be a remaining backend");
        check(env, &input, None, &expect).context("the flow's packet after its id went to another VIP")
    })();
    env.balancer.set_backend(owner, &old_record)?;
    env.balancer.install_vip(&key, &maglev_vip(index, &old_table))?;
    env.vips.insert(key, (index, old_table));
    result
}

/// A draining backend (kept, out of the table) keeps its pinned flows; a down one (record
/// without the keeps-flows flag) sheds them to the table's choice on their next packet.
fn drain_keeps_down_sheds(env: &mut Env) -> anyhow::Result<()> {
    let key = rebuild_key();
    let shape = Shape::default();
    let (index, old_table) = env.vips[&key].clone();
    let drained_flow = flow(env, Protocol::Tcp, VIP4_REBUILD.into(), 80);
    let drained = env.predict(&drained_flow)?.1;
    let mut down_flow = flow(env, Protocol::Tcp, VIP4_REBUILD.into(), 80);
    while env.predict(&down_flow)?.1 == drained {
        down_flow.src_port = env.port();
    }
    let down = env.predict(&down_flow)?.1;
    for f in [&drained_flow, &down_flow] {
        let input = frame(f, &shape);
        check(env, &input, None, &expect_encap(env, f, &input, &shape, true)?)?;
    }
    let record = |env: &Env, id: u32| {
        let (family, a) = key_addr(env.backends[&id]);
        Backend::new(family, a, index as u16, key.tag())
    };
    let remaining: Vec<MaglevBackend> = (40..44)
        .filter(|id| *id != drained && *id != down)
        .map(|id| {
            let (family, addr) = key_addr(env.backends[&id]);
            MaglevBackend { addr, family, weight: 1, id }
        })
        .collect();
    let table = build_table(&remaining, 251)?;
    env.balancer.install_vip(&key, &maglev_vip(index, &table))?;
    let down_record = record(env, down);
    env.balancer.set_backend(down, &down_record.keeping_flows(false))?;
    env.vips.insert(key, (index, table));
    let result = (|| {
        let input = frame(&drained_flow, &shape);
        let mut keeps = expect_encap(env, &drained_flow, &input, &shape, false)?;
        // Still the drained backend: predict() now answers with the new table, so name it.
        let backend = env.backends[&drained];
        let encap = Encap {
            outer_src: Env::outer_src(&drained_flow, backend),
            outer_dst: backend,
            src_mac: BALANCER_MAC,
            dst_mac: FALLBACK_MAC,
            flow_hash: flow_hash(&drained_flow.key(), &HASH_KEY),
        };
        keeps.output = Some(encapsulated(&input, l3_offset(&shape), &encap));
        keeps.forwarded = Some((index, drained, false));
        check(env, &input, None, &keeps).context("the draining backend's flow")?;
        let input = frame(&down_flow, &shape);
        let moved = expect_encap(env, &down_flow, &input, &shape, true)?;
        ensure!(
            moved.forwarded.is_some_and(|f| f.1 != down && f.1 != drained),
            "the table still picks a removed backend"
        );
        check(env, &input, None, &moved).context("the down backend's flow")
    })();
    env.balancer.set_backend(down, &down_record)?;
    env.balancer.install_vip(&key, &maglev_vip(index, &old_table))?;
    env.vips.insert(key, (index, old_table));
    result
}

/// UDP flow entries older than the idle timeout are rescheduled (counted as new flows).
/// A VIP's own UDP idle timeout (in its backends' records) keeps its flows past the instance's.
fn vip_udp_idle_timeout(env: &mut Env) -> anyhow::Result<()> {
    let shape = Shape::default();
    let f = flow(env, Protocol::Udp, VIP4.into(), 53);
    let input = frame(&f, &shape);
    let ids = [101, 102, 103];
    let records = env.balancer.current()?.backends;
    let set = |env: &mut Env, secs: u16| -> anyhow::Result<()> {
        for id in ids {
            env.balancer.set_backend(id, &records[&id].with_udp_idle_timeout(secs))?;
        }
        Ok(())
    };
    env.balancer.set_config(&DataplaneConfig { udp_idle_timeout_ns: 1, ..config() })?;
    set(env, 3600)?;
    let result = (|| {
        check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)?;
        std::thread::sleep(std::time::Duration::from_millis(30));
        check(env, &input, None, &expect_encap(env, &f, &input, &shape, false)?)
            .context("second packet, within the VIP's timeout though past the instance's")
    })();
    set(env, 0)?;
    env.balancer.set_config(&config())?;
    result
}

fn udp_idle_timeout(env: &mut Env) -> anyhow::Result<()> {
    let shape = Shape::default();
    let f = flow(env, Protocol::Udp, VIP4.into(), 53);
    let input = frame(&f, &shape);
    env.balancer.set_config(&DataplaneConfig { udp_idle_timeout_ns: 1, ..config() })?;
    let result = (|| {
        check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)?;
        // The data plane reads the coarse clock (one tick per jiffy): wait several ticks.
        std::thread::sleep(std::time::Duration::from_millis(30));
        check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)
            .context("second packet after the timeout")
    })();
    env.balancer.set_config(&config())?;
    result?;
    check(env, &input, None, &expect_encap(env, &f, &input, &shape, false)?).context("within the timeout")
}
