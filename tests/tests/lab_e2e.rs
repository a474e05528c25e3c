//! End-to-end tests in the namespaced lab (`lb-lab`): the real agent (`lb run`), the real data
//! plane in the balancer's namespace, real nginx and dnsmasq on the backends, and real TCP and
//! UDP clients in the client's namespace. Needs root; never skips. The lab is removed at the
//! end, also when tests fail.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Child,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use lb_lab::{BACKEND_NAMES, CLIENT, Lab, in_namespace, vip};
use lb_tests::{
    privileged::require_root,
    traffic::{Dns, Http, http_connection},
};
use libtest_mimic::{Arguments, Failed, Trial};

/// Concurrent client threads for bulk traffic.
const THREADS: usize = 4;

struct Env {
    lab: Lab,
    agent: Option<Child>,
    log: PathBuf,
    workspace: PathBuf,
}

impl Env {
    /// (Re)starts the agent on a configuration with `backends` (index into the lab's backends,
    /// weight) behind every VIP.
    fn run_agent(&mut self, backends: &[(usize, u32)]) -> anyhow::Result<()> {
        let config = self.lab.dir.join(format!(
            "e2e-{}.toml",
            backends.iter().map(|(i, w)| format!("{i}w{w}")).collect::<Vec<_>>().join("-")
        ));
        std::fs::write(&config, lab_config(&self.workspace, backends)?)?;
        if let Some(agent) = self.agent.take() {
            self.lab.stop_agent(agent)?;
        }
        self.agent = Some(self.lab.start_agent(&config, &self.log)?);
        Ok(())
    }
}

/// config/lab.toml's instance settings with the given backends behind each of its VIPs.
fn lab_config(workspace: &Path, backends: &[(usize, u32)]) -> anyhow::Result<String> {
    let lab = std::fs::read_to_string(workspace.join("config/lab.toml"))?;
    let instance = &lab[..lab.find("[[vip]]").context("config/lab.toml has no [[vip]]")?];
    let mut out = instance.to_string();
    for (name, address, port, protocol, v6) in [
        ("web", "198.18.100.1", 80, "tcp", false),
        ("dns", "198.18.100.1", 53, "udp", false),
        ("web6", "fd00:100::1", 80, "tcp", true),
        ("dns6", "fd00:100::1", 53, "udp", true),
    ] {
        out +=
            &format!("[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {port}\nprotocol = \"{protocol}\"\n");
        for (i, weight) in backends {
            let b = if v6 { lb_lab::backend_v6(*i).to_string() } else { lb_lab::backend_v4(*i).to_string() };
            out += &format!("[[vip.backend]]\naddress = \"{b}\"\nweight = {weight}\n");
        }
    }
    Ok(out)
}

/// Runs `count` calls of `one` over [`THREADS`] threads in the client's namespace and tallies
/// the answers by backend; any error fails the whole run.
fn tally(
    count: usize,
    one: fn(IpAddr) -> anyhow::Result<String>,
    target: IpAddr,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let n = count / THREADS + usize::from(t < count % THREADS);
            std::thread::spawn(move || {
                in_namespace(CLIENT, move || -> anyhow::Result<Vec<String>> { (0..n).map(|_| one(target)).collect() })?
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for h in handles {
        for name in h.join().map_err(|_| anyhow::anyhow!("client thread panicked"))?? {
            *counts.entry(name).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

/// Each backend's share is within `tolerance` (fraction) of its weight's share.
fn check_shares(counts: &BTreeMap<String, usize>, weights: &[(usize, u32)], tolerance: f64) -> anyhow::Result<()> {
    let total: usize = counts.values().sum();
    let weight_sum: u32 = weights.iter().map(|(_, w)| w).sum();
    let mut report = Vec::new();
    for (i, w) in weights {
        let got = counts.get(BACKEND_NAMES[*i]).copied().unwrap_or(0) as f64 / total as f64;
        let want = f64::from(*w) / f64::from(weight_sum);
        report.push(format!("{} {:.1}% (target {:.1}%)", BACKEND_NAMES[*i], got * 100.0, want * 100.0));
        ensure!((got - want).abs() <= tolerance, "shares out of bounds: {}", report.join(", "));
    }
    let unexpected: Vec<_> =
        counts.keys().filter(|k| !weights.iter().any(|(i, _)| BACKEND_NAMES[*i] == k.as_str())).collect();
    ensure!(unexpected.is_empty(), "answers from backends not configured: {unexpected:?}");
    println!("    shares over {total}: {}", report.join(", "));
    Ok(())
}

const EQUAL: [(usize, u32); 3] = [(0, 1), (1, 1), (2, 1)];

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

/// Long-lived TCP connections and UDP sessions, each with the backend that first answered it.
struct Sessions {
    tcp: Vec<(Http, String)>,
    udp: Vec<(Dns, String)>,
}

impl Sessions {
    fn open(tcp: usize, udp: usize) -> anyhow::Result<Self> {
        let mut s = Sessions { tcp: Vec::new(), udp: Vec::new() };
        for i in 0..tcp {
            let mut c = Http::connect(vip(i % 2 == 1))?;
            let name = c.get()?;
            s.tcp.push((c, name));
        }
        for i in 0..udp {
            let mut d = Dns::new(vip(i % 2 == 1))?;
            let name = d.ask()?;
            s.udp.push((d, name));
        }
        Ok(s)
    }

    /// One more request on every session: all must succeed, on the backend they started on.
    fn check(&mut self) -> anyhow::Result<()> {
        let (mut broken, mut moved) = (Vec::new(), Vec::new());
        for (i, (c, first)) in self.tcp.iter_mut().enumerate() {
            match c.get() {
                Ok(name) if name == *first => {}
                Ok(name) => moved.push(format!("tcp#{i} {first}->{name}")),
                Err(e) => broken.push(format!("tcp#{i} ({first}): {e:#}")),
            }
        }
        for (i, (d, first)) in self.udp.iter_mut().enumerate() {
            match d.ask() {
                Ok(name) if name == *first => {}
                Ok(name) => moved.push(format!("udp#{i} {first}->{name}")),
                Err(e) => broken.push(format!("udp#{i} ({first}): {e:#}")),
            }
        }
        ensure!(broken.is_empty() && moved.is_empty(), "broken: {broken:?}; moved: {moved:?}");
        Ok(())
    }
}

/// Runs `change` while the sessions keep sending; then every session must still work, unmoved.
fn under_load(tcp: usize, udp: usize, change: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let sessions = in_namespace(CLIENT, move || Sessions::open(tcp, udp))??;
    let sessions = Arc::new(Mutex::new(sessions));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (sessions, stop) = (Arc::clone(&sessions), Arc::clone(&stop));
        std::thread::spawn(move || {
            in_namespace(CLIENT, move || -> anyhow::Result<usize> {
                let mut rounds = 0;
                while !stop.load(Ordering::Relaxed) {
                    sessions.lock().expect("sessions").check()?;
                    rounds += 1;
                }
                Ok(rounds)
            })?
        })
    };
    let changed = change();
    stop.store(true, Ordering::Relaxed);
    let rounds = load.join().map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    changed?;
    let sessions = Arc::into_inner(sessions).context("sessions still shared")?;
    let mut sessions = sessions.into_inner().expect("sessions");
    let sessions = in_namespace(CLIENT, move || sessions.check().map(|()| sessions))??;
    println!(
        "    {} TCP connections and {} UDP sessions kept their backends through {rounds} rounds during the change",
        sessions.tcp.len(),
        sessions.udp.len()
    );
    Ok(())
}

fn table_change_under_load(env: &mut Env) -> anyhow::Result<()> {
    let result = under_load(50, 20, || env.run_agent(&[(0, 2), (1, 1), (2, 1), (3, 1)]));
    env.run_agent(&EQUAL)?;
    result
}

/// A steady UDP stream through an agent restart: every query is answered.
fn agent_restart_loses_nothing(env: &mut Env) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            in_namespace(CLIENT, move || -> anyhow::Result<(usize, usize)> {
                let mut session = Dns::new(vip(false))?;
                let (mut sent, mut answered) = (0, 0);
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) || start.elapsed() < Duration::from_secs(1) {
                    session.ask().with_context(|| format!("query {} of the stream", sent + 1))?;
                    sent += 1;
                    answered += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok((sent, answered))
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
    let (sent, answered) = stream.join().map_err(|_| anyhow::anyhow!("stream thread panicked"))??;
    restarted?;
    println!("    steady UDP stream through the restart: {sent} sent, {answered} answered");
    ensure!(sent == answered && sent > 100, "{sent} sent, {answered} answered");
    Ok(())
}

/// The `tx_icmp_too_big` counter of the lab instance, from `lb stats --json`.
fn icmp_too_big_sent(env: &Env) -> anyhow::Result<u64> {
    let out =
        std::process::Command::new(&env.lab.lb).args(["stats", "--instance", lb_lab::INSTANCE, "--json"]).output()?;
    ensure!(out.status.success(), "lb stats failed: {}", String::from_utf8_lossy(&out.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    stats["reasons"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["reason"] == "tx_icmp_too_big"))
        .and_then(|r| r["packets"].as_u64())
        .context("no tx_icmp_too_big counter in lb stats --json")
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

type Body = fn(&mut Env) -> anyhow::Result<()>;

fn trials() -> Vec<(&'static str, Body)> {
    vec![
        ("tcp4/3000_connections_equal_shares_one_backend_per_connection", |_| equal_shares_tcp(false)),
        ("tcp6/3000_connections_equal_shares_one_backend_per_connection", |_| equal_shares_tcp(true)),
        ("udp4/3000_flows_equal_shares", |_| equal_shares_udp(false)),
        ("udp6/3000_flows_equal_shares", |_| equal_shares_udp(true)),
        ("udp/one_5_tuple_keeps_its_backend", |_| udp_five_tuple_sticks()),
        ("weights/1_2_3_tcp4_and_udp4", weighted_shares),
        ("change/add_backend_and_change_weight_under_load", table_change_under_load),
        ("restart/agent_restart_under_load_loses_nothing", agent_restart_loses_nothing),
        ("mtu/full_size_segments_complete_through_icmp_too_big", path_mtu),
    ]
}

fn build_lb(workspace: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--quiet", "-p", "lb-userspace", "--bin", "lb"])
        .status()
        .context("building lb")?;
    if !status.success() {
        bail!("building lb failed");
    }
    Ok(workspace.join("target/debug/lb"))
}

fn main() -> anyhow::Result<()> {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    require_root("the end-to-end tests")?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace")?.to_path_buf();
    let lb = build_lb(&workspace)?;
    let lab = Lab::new(&workspace.join("target/lab-e2e"), &lb);
    let log = lab.dir.join("lb.log");
    let mut env = Env { lab, agent: None, log, workspace };
    let started = (|| {
        env.lab.up()?;
        let _ = std::fs::remove_file(&env.log);
        env.run_agent(&EQUAL)
    })();
    if let Err(e) = started {
        env.lab.down();
        return Err(e.context("bringing the lab up"));
    }
    let env = Arc::new(Mutex::new(env));
    let trials = trials()
        .into_iter()
        .map(|(name, body)| {
            let env = Arc::clone(&env);
            Trial::test(name, move || {
                let mut env = env.lock().map_err(|_| Failed::from("an earlier test panicked"))?;
                body(&mut env).map_err(|e| Failed::from(format!("{e:#}")))
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    let mut env = match Arc::try_unwrap(env) {
        Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
        Err(_) => bail!("test state still shared"),
    };
    if let Some(agent) = env.agent.take() {
        let _ = env.lab.stop_agent(agent);
    }
    env.lab.down();
    if conclusion.has_failed() {
        eprintln!("agent log: {}", env.log.display());
    }
    conclusion.exit()
}
