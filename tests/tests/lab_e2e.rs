//! End-to-end tests in the namespaced lab (`lb-lab`): the real agent (`lb run`), the real data
//! plane in the balancer's namespace, real nginx and dnsmasq on the backends, and real TCP and
//! UDP clients in the client's namespace. Needs root; never skips. The lab is removed at the
//! end, also when tests fail.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use lb_lab::{CLIENT, in_namespace, vip};
use lb_tests::{
    e2e::{EQUAL, Env, Health, Trial, check_shares, reason_count, run_trials, start, tally, under_load},
    traffic::{Dns, Http, http_connection},
};
use lb_userspace::{
    agent::control::{self, Request},
    dataplane::BalancerMaps,
};

fn equal_shares_tcp(v6: bool) -> anyhow::Result<()> {
    let counts = tally(3000, |vip| http_connection(vip, 2), vip(v6))?;
    check_shares(&counts, &EQUAL, 0.05)
}

fn equal_shares_udp(v6: bool) -> anyhow::Result<()> {
    let counts = tally(3000, |vip| Dns::new(vip)?.ask(), vip(v6))?;
    check_shares(&counts, &EQUAL, 0.05)
}

/// One 5-tuple keeps reaching one backend while the table is unchanged.
fn udp_five_tuple_sticks() -> anyhow::Result<()> {
    for v6 in [false, true] {
        in_namespace(CLIENT, move || -> anyhow::Result<()> {
            for _ in 0..20 {
                let mut session = Dns::new(vip(v6))?;
                let first = session.ask()?;
                for _ in 0..10 {
                    let again = session.ask()?;
                    ensure!(again == first, "one UDP 5-tuple answered by {first}, then by {again}");
                }
            }
            Ok(())
        })??;
    }
    Ok(())
}

fn weighted_shares(env: &mut Env) -> anyhow::Result<()> {
    let weights = [(0, 1), (1, 2), (2, 3)];
    env.run_agent(&weights)?;
    let result = (|| {
        let counts = tally(3000, |vip| http_connection(vip, 1), vip(false))?;
        check_shares(&counts, &weights, 0.05)?;
        let counts = tally(3000, |vip| Dns::new(vip)?.ask(), vip(false))?;
        check_shares(&counts, &weights, 0.05)
    })();
    env.run_agent(&EQUAL)?;
    result
}

fn table_change_under_load(env: &mut Env) -> anyhow::Result<()> {
    let result = under_load(50, 20, || env.run_agent(&[(0, 2), (1, 1), (2, 1), (3, 1)]));
    env.run_agent(&EQUAL)?;
    result
}

/// A steady UDP stream through an agent restart: every query is answered.
/// An upgrade from the previous layout (the same maps, pinned without the `LB_` prefix) under
/// load: the agent is stopped, its pins put back as the previous release left them, and this
/// build started over them. It renames and adopts them, and every connection and session keeps
/// its backend.
fn upgrade_from_the_previous_layout_loses_nothing(env: &mut Env) -> anyhow::Result<()> {
    let pins = lb_userspace::dataplane::PinDir::instance(lb_lab::INSTANCE);
    let (mut adopted, mut made) = (0, 0);
    under_load(30, 10, || {
        std::thread::sleep(Duration::from_millis(300));
        if let Some(agent) = env.agent.take() {
            env.lab.stop_agent(agent)?;
        }
        let mut put_back = 0;
        for (old, new) in lb_common::maps::RENAMED {
            if pins.map(new).exists() {
                std::fs::rename(pins.map(new), pins.map(old))?;
                put_back += 1;
            }
        }
        // Maps added since that layout have no previous name: the agent creates them.
        let renamable =
            lb_common::maps::RENAMED.iter().filter(|(_, new)| lb_common::maps::BALANCER.contains(new)).count();
        ensure!(put_back == renamable, "only {put_back} of {renamable} maps of the previous layout were pinned");
        env.run_agent(&EQUAL)?;
        std::thread::sleep(Duration::from_millis(300));
        // The old maps adopted under their new names, the new ones made.
        let pinned = lb_common::maps::BALANCER.iter().filter(|n| pins.map(n).exists()).count();
        let total = lb_common::maps::BALANCER.len();
        ensure!(pinned == total, "{pinned} of {total} maps pinned under their new names");
        (adopted, made) = (put_back, total - put_back);
        Ok(())
    })?;
    println!(
        "    upgrade from the previous layout under load: its {adopted} maps adopted, {made} new ones made, nothing broke"
    );
    Ok(())
}

/// The agent killed (SIGKILL) while it rewrites tables (weights changing as fast as it applies them):
/// every live table in the maps is whole (each slot a backend of its own VIP), the restarted
/// agent adopts them, and every connection and session keeps its backend.
fn sigkill_during_table_changes_leaves_whole_tables(env: &mut Env) -> anyhow::Result<()> {
    let pins = lb_userspace::dataplane::PinDir::instance(lb_lab::INSTANCE);
    let mut changes = 0;
    under_load(20, 10, || {
        let stop = Arc::new(AtomicBool::new(false));
        let changer = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let socket = std::path::Path::new(lb_tests::e2e::CONTROL_SOCKET);
                let mut applied = 0;
                for weight in (1..=4).cycle() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let address = lb_lab::backend_v4(weight as usize % 3).to_string();
                    let request = Request::BackendWeight { vip: "web".into(), address, weight };
                    if control::request(socket, &request).is_ok_and(|r| r.error.is_none()) {
                        applied += 1;
                    }
                }
                applied
            })
        };
        std::thread::sleep(Duration::from_millis(400));
        let mut agent = env.agent.take().context("no agent")?;
        agent.kill()?;
        agent.wait()?;
        stop.store(true, Ordering::Relaxed);
        changes = changer.join().map_err(|_| anyhow::anyhow!("changer panicked"))?;
        let current = BalancerMaps::open_pinned(&pins)?.current().context("reading the tables after the kill")?;
        for (key, vip) in &current.vips {
            let foreign = vip
                .table
                .iter()
                .filter(|id| current.backends.get(id).is_none_or(|b| u32::from(b.vip_index) != vip.index));
            ensure!(foreign.count() == 0, "the live table of VIP index {} ({key:?}) holds other ids", vip.index);
            ensure!(!vip.table.is_empty(), "the live table of VIP index {} is empty", vip.index);
        }
        env.run_agent(&EQUAL)
    })?;
    println!("    SIGKILL after {changes} weight changes applied: every live table whole, the restart adopted them");
    ensure!(changes > 3, "only {changes} changes before the kill: the test proves nothing");
    Ok(())
}

fn agent_restart_loses_nothing(env: &mut Env) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            // Each query waits for its answer; a lost query or answer fails the stream.
            in_namespace(CLIENT, move || -> anyhow::Result<usize> {
                let mut session = Dns::new(vip(false))?;
                let mut answered = 0;
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) || start.elapsed() < Duration::from_secs(1) {
                    session.ask().with_context(|| format!("query {} of the stream", answered + 1))?;
                    answered += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(answered)
            })?
        })
    };
    let restarted = under_load(20, 10, || {
        std::thread::sleep(Duration::from_millis(300));
        env.run_agent(&EQUAL)?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    });
    stop.store(true, Ordering::Relaxed);
    let answered = stream.join().map_err(|_| anyhow::anyhow!("stream thread panicked"))??;
    restarted?;
    println!("    steady UDP stream through the restart: {answered} queries, every one answered");
    ensure!(answered > 100, "only {answered} queries: the stream did not span the restart");
    Ok(())
}

fn icmp_too_big_sent(env: &Env) -> anyhow::Result<u64> {
    reason_count(env, "tx_icmp_too_big")
}

/// A client sending full-size segments (its MTU is the segment's, 1500) through a tunnel that
/// adds 20 or 40 bytes: the balancer answers with ICMP "too big", the client's stack lowers its
/// path MTU for the VIP, and the transfer completes.
fn path_mtu(env: &mut Env) -> anyhow::Result<()> {
    let before = icmp_too_big_sent(env)?;
    for v6 in [false, true] {
        in_namespace(CLIENT, move || -> anyhow::Result<()> {
            let mut c = Http::connect(vip(v6))?;
            let first = c.post(64 * 1024).with_context(|| format!("64 KiB POST over IPv{}", if v6 { 6 } else { 4 }))?;
            let again = c.post(64 * 1024)?;
            ensure!(first == again, "one connection answered by {first} and {again}");
            Ok(())
        })??;
    }
    let sent = icmp_too_big_sent(env)? - before;
    ensure!(sent > 0, "the transfers completed without any ICMP too-big: the test did not exercise the path MTU");
    println!("    two 64 KiB POSTs per family completed; the balancer sent {sent} ICMP too-big messages");
    Ok(())
}

fn trials() -> Vec<Trial> {
    vec![
        ("tcp4/3000_connections_equal_shares_one_backend_per_connection", |_| equal_shares_tcp(false)),
        ("tcp6/3000_connections_equal_shares_one_backend_per_connection", |_| equal_shares_tcp(true)),
        ("udp4/3000_flows_equal_shares", |_| equal_shares_udp(false)),
        ("udp6/3000_flows_equal_shares", |_| equal_shares_udp(true)),
        ("udp/one_5_tuple_keeps_its_backend", |_| udp_five_tuple_sticks()),
        ("weights/1_2_3_tcp4_and_udp4", weighted_shares),
        ("change/add_backend_and_change_weight_under_load", table_change_under_load),
        ("restart/agent_restart_under_load_loses_nothing", agent_restart_loses_nothing),
        ("restart/sigkill_during_table_changes_leaves_whole_tables", sigkill_during_table_changes_leaves_whole_tables),
        (
            "restart/upgrade_from_the_previous_layout_under_load_loses_nothing",
            upgrade_from_the_previous_layout_loses_nothing,
        ),
        ("mtu/full_size_segments_complete_through_icmp_too_big", path_mtu),
    ]
}

fn main() -> anyhow::Result<()> {
    let env = start("lab-e2e", Health::default())?;
    run_trials(env, trials())
}
