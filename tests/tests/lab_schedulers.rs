//! End-to-end tests of the schedulers in the namespaced lab (a fresh lab, so no earlier flow is
//! in the flow table): round robin and weighted round robin deal new flows in proportion,
//! source hash keeps every flow of a client on one backend and spreads many clients evenly,
//! least connections steers new flows away from a backend holding many, least response time away
//! from a slow one, and switching a VIP's scheduler live breaks no established flow. Needs root; never skips.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use lb_common::{addr::to_key, vip::VipKey};
use lb_lab::{BACKEND_NAMES, BACKENDS, CLIENT, CLIENT_V4, in_namespace, spawn_in_namespace, vip};
use lb_tests::{
    e2e::{EQUAL, Env, Health, Trial, check_shares, run_trials, start, tally, under_load},
    traffic::{Http, http_connection},
};
use lb_userspace::{
    agent::{
        control::{self, Request},
        status::Status,
    },
    config::{AdminState, Protocol},
    dataplane::BalancerMaps,
    dataplane::pins::PinDir,
    inspect::trace,
};

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

/// One connection from `source` (address and port; port 0: any) to the web VIP of its family;
/// the backend that answered.
fn from(source: SocketAddr) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let domain = if source.is_ipv6() { socket2::Domain::IPV6 } else { socket2::Domain::IPV4 };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    socket.bind(&source.into())?;
    socket.connect_timeout(&SocketAddr::new(vip(source.is_ipv6()), 80).into(), Duration::from_secs(3))?;
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
            let one: Vec<String> =
                (0..20).map(|_| from(SocketAddr::new(clients[0].into(), 0))).collect::<anyhow::Result<_>>()?;
            let mut counts = BTreeMap::new();
            for c in &clients {
                *counts.entry(from(SocketAddr::new((*c).into(), 0))?).or_insert(0) += 1;
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
    let status: Status = control::request(socket, &Request::Status)?.into_answer()?;
    let config = status.config;
    let original = std::fs::read_to_string(&config)?;
    let mut switched = Vec::new();
    under_load(40, 10, || {
        for scheduler in ["round-robin", "source-hash", "least-connections", "weighted-round-robin", "maglev"] {
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

/// Opens `count` keep-alive connections to the web VIP, one after the other; each with the
/// backend that answered its first request.
fn hold(count: usize) -> anyhow::Result<Vec<(Http, String)>> {
    in_namespace(CLIENT, move || {
        (0..count)
            .map(|_| {
                let mut c = Http::connect(vip(false))?;
                let name = c.get()?;
                Ok((c, name))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?
}

fn by_backend(held: &[(Http, String)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, name) in held {
        *counts.entry(name.clone()).or_insert(0) += 1;
    }
    counts
}

/// The lab name of the IPv4 backend address `address`.
fn backend_name(address: IpAddr) -> Option<&'static str> {
    (0..3).find(|i| IpAddr::V4(lb_lab::backend_v4(*i)) == address).map(|i| BACKEND_NAMES[i])
}

/// Active flows per backend of the web VIP, as `lb status` shows them.
fn active_flows(socket: &Path) -> anyhow::Result<BTreeMap<String, i64>> {
    let status: Status = control::request(socket, &Request::Status)?.into_answer()?;
    let mut out = BTreeMap::new();
    for b in status.backends.iter().filter(|b| b.decision.vip == "web") {
        let name = backend_name(b.decision.address).context("not a lab backend")?;
        out.insert(name.to_string(), b.active_flows.context("active_flows")?);
    }
    Ok(out)
}

/// The backend id of lab backend `i` in the web VIP.
fn web_backend_id(maps: &BalancerMaps, i: usize) -> anyhow::Result<u32> {
    let current = maps.current()?;
    let (family, vip_addr) = to_key(vip(false));
    let index = current.vips.get(&VipKey::new(family, vip_addr, 80, 6)).context("web VIP")?.index as u16;
    let (family, addr) = to_key(IpAddr::V4(lb_lab::backend_v4(i)));
    current
        .backends
        .iter()
        .find(|(_, b)| b.vip_index == index && b.family == family && b.addr == addr)
        .map(|(id, _)| *id)
        .context("no such backend in the web VIP")
}

fn set_state(socket: &Path, address: IpAddr, state: AdminState) -> anyhow::Result<()> {
    let request = Request::BackendState { vip: "web".into(), address: address.to_string(), state };
    if let Some(e) = control::request(socket, &request)?.error {
        bail!("setting {address} {state:?}: {e}");
    }
    Ok(())
}

/// least-connections: be1 holds 60 long-lived connections (opened while be2 and be3 drained);
/// at least 90% of the next 60 go to be2 and be3. Once be1's connections close, be1 wins new
/// ones again. A count knocked off by hand is put right by the agent's recount.
fn least_connections(env: &mut Env) -> anyhow::Result<()> {
    with(env, "scheduler = \"least-connections\"\n", "", &EQUAL)?;
    let socket = Path::new("/run/lb/lab.sock");
    let (a, others) = (BACKEND_NAMES[0], [1, 2].map(|i| IpAddr::V4(lb_lab::backend_v4(i))));
    for address in others {
        set_state(socket, address, AdminState::Drain)?;
    }
    let on_a = hold(60);
    for address in others {
        set_state(socket, address, AdminState::Up)?;
    }
    let on_a = on_a?;
    ensure!(by_backend(&on_a).get(a) == Some(&60), "while the others drained: {:?}", by_backend(&on_a));
    let counted = active_flows(socket)?;
    ensure!(counted.get(a) == Some(&60), "lb status counts {counted:?}, expected 60 on {a}");

    let next = hold(60)?;
    let shares = by_backend(&next);
    let to_a = shares.get(a).copied().unwrap_or(0);
    ensure!(to_a <= 6, "{to_a} of 60 new connections went to {a}, which holds 60: {shares:?}");
    println!("    {a} holds 60 connections; the next 60: {shares:?}");
    let mut held = by_backend(&on_a);
    for (name, n) in &shares {
        *held.entry(name.clone()).or_insert(0) += n;
    }
    let counted = active_flows(socket)?;
    ensure!(
        held.iter().all(|(name, n)| counted.get(name) == Some(&(*n as i64))),
        "lb status counts {counted:?}, the client holds {held:?}"
    );

    // `lb trace` predicts a new connection's backend from the same candidates and counts.
    let maps = BalancerMaps::open_pinned(&PinDir::instance("lab"))?;
    let port = 61_000;
    let predicted = trace(&maps, Protocol::Tcp, IpAddr::V4(CLIENT_V4), port, vip(false), 80, None)?;
    ensure!(predicted.why.contains("least connections"), "trace: {}", predicted.why);
    let predicted_name = predicted
        .backend
        .as_deref()
        .and_then(|b| b.parse().ok())
        .and_then(backend_name)
        .context("trace named no lab backend")?;
    let answered = in_namespace(CLIENT, move || from(SocketAddr::new(CLIENT_V4.into(), port)))??;
    ensure!(answered == predicted_name, "trace predicted {predicted_name} ({}), {answered} answered", predicted.why);
    println!("    lb trace: {}", predicted.why);

    // The recount: a count knocked off (as a flow the balancer never saw end would) comes back.
    let mut maps = maps;
    let be2 = web_backend_id(&maps, 1)?;
    maps.set_active_flows(be2, 10_000)?;
    let knocked = Instant::now();
    // The traced connection closed; its FIN ended it.
    let truth = by_backend(&next).get(BACKEND_NAMES[1]).copied().unwrap_or(0) as i64;
    while active_flows(socket)?.get(BACKEND_NAMES[1]) != Some(&truth) {
        ensure!(knocked.elapsed() < Duration::from_secs(8), "the recount did not restore {truth} on be2 within 8 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("    a count knocked to 10000 was recounted to {truth} after {:.1} s", knocked.elapsed().as_secs_f64());

    drop(on_a);
    std::thread::sleep(Duration::from_millis(200));
    let counted = active_flows(socket)?;
    // What stays on it: those of the next 60 it took.
    let still = to_a as i64;
    ensure!(
        counted.get(a) == Some(&still),
        "after {a}'s first clients closed, lb status counts {counted:?}, expected {still}"
    );
    let after = hold(45)?;
    let shares = by_backend(&after);
    let to_a = shares.get(a).copied().unwrap_or(0);
    // be1 wins every pair it is drawn into until it catches up; pairs without it go elsewhere:
    // about two thirds, against the one third an equal scheduler would give it.
    ensure!(to_a >= 18, "only {to_a} of 45 new connections went to {a} after its connections closed: {shares:?}");
    println!("    {a}'s connections closed; the next 45: {shares:?}");
    drop((next, after));
    Ok(())
}

/// Port of the test's own HTTP servers, whose answers can be slowed down.
const DELAY_PORT: u16 = 8080;

/// One small HTTP server per backend (in its namespace, on every address, port 8080) that
/// answers with the backend's name after that backend's delay.
struct DelayServers {
    delays: Vec<Arc<AtomicU64>>,
    stop: Arc<AtomicBool>,
}

impl DelayServers {
    fn start() -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut delays = Vec::new();
        for (i, netns) in BACKENDS[..3].iter().enumerate() {
            let delay = Arc::new(AtomicU64::new(0));
            delays.push(Arc::clone(&delay));
            let stop = Arc::clone(&stop);
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            spawn_in_namespace(netns, move || {
                let listener = match std::net::TcpListener::bind(("::", DELAY_PORT)) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = listener.set_nonblocking(true);
                let _ = ready_tx.send(Ok(()));
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let ms = delay.load(Ordering::Relaxed);
                            std::thread::spawn(move || answer(stream, BACKEND_NAMES[i], ms));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            });
            ready_rx.recv()?.map_err(|e| anyhow::anyhow!("delay server in {netns}: {e}"))?;
        }
        Ok(Self { delays, stop })
    }
}

impl Drop for DelayServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer(mut stream: std::net::TcpStream, name: &str, delay_ms: u64) {
    use std::io::{Read as _, Write as _};
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.ends_with(b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    std::thread::sleep(Duration::from_millis(delay_ms));
    let body = format!("{name}\n");
    let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
}

/// New connections to the delay servers' VIP; the share of each backend.
fn delay_vip_shares(count: usize) -> anyhow::Result<BTreeMap<String, usize>> {
    tally(
        count,
        |v| {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect_timeout(&SocketAddr::new(v, DELAY_PORT), Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out.split("\r\n\r\n").nth(1).context("no body")?.trim().to_string())
        },
        vip(false),
    )
}

/// New connections per measurement window of the least-response-time test.
const WINDOW: usize = 300;

/// least-response-time: a backend answering 50 ms slower loses its new flows within 10 s, and
/// wins them back when it is fast again.
fn least_response_time(env: &mut Env) -> anyhow::Result<()> {
    let servers = DelayServers::start()?;
    let mut more = format!(
        "[[vip]]\nname = \"lrt\"\naddress = \"198.18.100.1\"\nport = {DELAY_PORT}\nprotocol = \"tcp\"\n\
         scheduler = \"least-response-time\"\n[vip.health]\nkind = \"http\"\ninterval_ms = 200\ntimeout_ms = 150\nrise = 2\nfall = 2\n"
    );
    for i in 0..3 {
        more += &format!("[[vip.backend]]\naddress = \"{}\"\n", lb_lab::backend_v4(i));
    }
    env.health.more_vips = more;
    with(env, "", "", &EQUAL)?;
    let share = |counts: &BTreeMap<String, usize>| {
        counts.get(BACKEND_NAMES[2]).copied().unwrap_or(0) as f64 / counts.values().sum::<usize>().max(1) as f64
    };
    let result = (|| {
        std::thread::sleep(Duration::from_secs(2));
        let before = share(&delay_vip_shares(150)?);
        servers.delays[2].store(50, Ordering::Relaxed);
        let slowed = Instant::now();
        let (mut low, mut trace) = (None, Vec::new());
        while slowed.elapsed() < Duration::from_secs(10) {
            let s = share(&delay_vip_shares(WINDOW)?);
            trace.push(format!("{:.1}s {:.0}%", slowed.elapsed().as_secs_f64(), s * 100.0));
            if s < 0.15 {
                low = Some(slowed.elapsed());
                break;
            }
        }
        let low = low.with_context(|| format!("be3's share never fell below 15% within 10 s: {}", trace.join(", ")))?;
        servers.delays[2].store(0, Ordering::Relaxed);
        let fast = Instant::now();
        let (mut back, mut above) = (None, 0);
        while fast.elapsed() < Duration::from_secs(15) {
            let s = share(&delay_vip_shares(WINDOW)?);
            trace.push(format!("fast {:.1}s {:.0}%", fast.elapsed().as_secs_f64(), s * 100.0));
            // Two windows in a row, so one lucky window does not count as recovered.
            above = if s > 0.25 { above + 1 } else { 0 };
            if above == 2 {
                back = Some(fast.elapsed());
                break;
            }
        }
        let back =
            back.with_context(|| format!("be3's share did not recover above 25% within 15 s: {}", trace.join(", ")))?;
        println!(
            "    be3 share {:.0}% before; 50 ms slower: below 15% after {:.1} s; fast again: above 25% after {:.1} s (last windows: {})",
            before * 100.0,
            low.as_secs_f64(),
            back.as_secs_f64(),
            trace[trace.len().saturating_sub(4)..].join(", ")
        );
        Ok(())
    })();
    env.health.more_vips = String::new();
    drop(servers);
    result
}

fn main() -> anyhow::Result<()> {
    let env = start("lab-schedulers", Health::default())?;
    let trials: Vec<Trial> = vec![
        ("schedulers/round_robin_300_flows_100_each", round_robin),
        ("schedulers/weighted_round_robin_1_2_3", weighted_round_robin),
        ("schedulers/source_hash_one_client_one_backend_1000_clients_balanced", source_hash),
        ("schedulers/switching_live_breaks_no_flow", switch_live),
        ("schedulers/least_response_time_sheds_and_regains_a_slow_backend", least_response_time),
        ("schedulers/least_connections_avoids_a_loaded_backend", least_connections),
    ];
    run_trials(env, trials)
}
