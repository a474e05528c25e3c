//! End-to-end tests of the schedulers in the namespaced lab (a fresh lab, so no earlier flow is
//! in the flow table): round robin and weighted round robin deal new flows in proportion,
//! source hash keeps every flow of a client on one backend and spreads many clients evenly, and
//! switching a VIP's scheduler live breaks no established flow. Needs root; never skips.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use lb_lab::{BACKEND_NAMES, CLIENT, in_namespace, vip};
use lb_tests::{
    e2e::{EQUAL, Env, Health, Trial, check_shares, run_trials, start, tally, under_load},
    traffic::http_connection,
};
use lb_userspace::control::{self, Request};

/// Restarts the agent with `web_extra` / `web6_extra` settings for the web VIPs.
fn with(env: &mut Env, web_extra: &str, web6_extra: &str, weights: &[(usize, u32)]) -> anyhow::Result<()> {
    env.health.web_extra = web_extra.into();
    env.health.web6_extra = web6_extra.into();
    env.run_agent(weights)
}

/// Round robin: `n` new connections over three equal backends are dealt `n / 3` each. Per-CPU
/// positions allow each CPU one partial pass: at most one flow per CPU off, per backend.
fn round_robin(env: &mut Env) -> anyhow::Result<()> {
    with(env, "scheduler = \"round-robin\"\n", "", &EQUAL)?;
    let counts = tally(300, |vip| http_connection(vip, 1), vip(false))?;
    let cpus = std::thread::available_parallelism()?.get();
    for name in &BACKEND_NAMES[..3] {
        let got = counts.get(*name).copied().unwrap_or(0);
        ensure!(got.abs_diff(100) <= cpus, "round robin dealt {counts:?}, more than {cpus} off 100");
    }
    println!("    300 new connections: {counts:?} (bound: 100 +/- {cpus}, one partial pass per CPU)");
    Ok(())
}

fn weighted_round_robin(env: &mut Env) -> anyhow::Result<()> {
    let weights = [(0, 1), (1, 2), (2, 3)];
    with(env, "scheduler = \"weighted-round-robin\"\n", "", &weights)?;
    let counts = tally(600, |vip| http_connection(vip, 1), vip(false))?;
    check_shares(&counts, &weights, 0.03)
}

/// One connection from `source` to the IPv6 web VIP; the backend that answered.
fn from(source: std::net::Ipv6Addr) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(IpAddr::V6(source), 0).into())?;
    socket.connect_timeout(&SocketAddr::new(vip(true), 80).into(), Duration::from_secs(3))?;
    let mut stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response.split("\r\n\r\n").nth(1).context("no body")?;
    Ok(body.trim().to_string())
}

fn source_hash(env: &mut Env) -> anyhow::Result<()> {
    with(env, "", "scheduler = \"source-hash\"\n", &EQUAL)?;
    let clients = env.lab.add_client_addresses(1000)?;
    let (one_client, shares) =
        in_namespace(CLIENT, move || -> anyhow::Result<(Vec<String>, BTreeMap<String, usize>)> {
            let one: Vec<String> = (0..20).map(|_| from(clients[0])).collect::<anyhow::Result<_>>()?;
            let mut counts = BTreeMap::new();
            for c in &clients {
                *counts.entry(from(*c)?).or_insert(0) += 1;
            }
            Ok((one, counts))
        })??;
    ensure!(one_client.iter().all(|b| *b == one_client[0]), "one client reached several backends: {one_client:?}");
    println!("    20 connections of one client all to {}; 1000 clients:", one_client[0]);
    check_shares(&shares, &EQUAL, 0.05)
}

/// Switching the web VIP's scheduler (by reloading the file) under load: nothing breaks or moves.
fn switch_live(env: &mut Env) -> anyhow::Result<()> {
    with(env, "", "", &EQUAL)?;
    let socket = Path::new("/run/lb/lab.sock");
    let status = control::request(socket, &Request::Status)?.body;
    let config = status["config"].as_str().context("config path")?.to_string();
    let original = std::fs::read_to_string(&config)?;
    let mut switched = Vec::new();
    under_load(40, 10, || {
        for scheduler in ["round-robin", "source-hash", "weighted-round-robin", "maglev"] {
            let text = original.replacen(
                "protocol = \"tcp\"\n",
                &format!("protocol = \"tcp\"\nscheduler = \"{scheduler}\"\n"),
                1,
            );
            std::fs::write(&config, text)?;
            let answer = control::request(socket, &Request::Reload)?;
            if let Some(e) = answer.error {
                bail!("switching to {scheduler}: {e}");
            }
            switched.push(scheduler);
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(())
    })?;
    std::fs::write(&config, original)?;
    println!("    switched web through {switched:?} under load");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let env = start("lab-schedulers", Health::default())?;
    let trials: Vec<Trial> = vec![
        ("schedulers/round_robin_300_flows_100_each", round_robin),
        ("schedulers/weighted_round_robin_1_2_3", weighted_round_robin),
        ("schedulers/source_hash_one_client_one_backend_1000_clients_balanced", source_hash),
        ("schedulers/switching_live_breaks_no_flow", switch_live),
    ];
    run_trials(env, trials)
}
