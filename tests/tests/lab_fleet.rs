//! End-to-end tests of a fleet: two balancers (`config/fleet.toml`) announce their VIPs over
//! BGP through BIRD to a router running BIRD, which spreads the far client's flows over both by
//! ECMP with an L4 hash (`lb_lab::fleet`). Members are killed hard, brought back, drained, and
//! made to differ, while long-lived TCP connections and UDP sessions run. Needs root; never
//! skips; the lab is removed at the end.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use lb_common::{addr::to_key, flow::FlowKey};
use lb_lab::{
    FAR_CLIENT, FLEET_LC_PORT, FLEET_RR_PORT, Lab, VIP_V4,
    fleet::{MEMBERS, ROUTER_ASN},
    in_namespace,
};
use lb_tests::{
    e2e::{Trial, run_trials_on},
    traffic::{Dns, Http},
};
use lb_userspace::{
    agent::{
        control::{self, Request},
        status::Status,
    },
    dataplane::{BalancerMaps, PinDir},
    inspect::PinnedStats,
};

/// How long the router may take to use both members once their agents run (BGP's first
/// connection and BFD).
const CONVERGE: Duration = Duration::from_secs(30);
/// New connections that measure the members' shares.
const CONNECTIONS: usize = 300;

struct Fleet {
    lab: Lab,
    configs: [PathBuf; 2],
    agents: [Option<Child>; 2],
}

impl Fleet {
    fn start_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let log = self.lab.member_log(i);
        self.agents[i] = Some(self.lab.start_member_agent(i, &self.configs[i], &log)?);
        Ok(())
    }

    /// Runs `lb ARGS`; its output, or a failure with its stderr.
    fn lb(&self, args: &[&str]) -> anyhow::Result<String> {
        lb_lab::run(Command::new(&self.lab.lb).args(args))
    }

    fn status(i: usize) -> anyhow::Result<Status> {
        Ok(control::request(&MEMBERS[i].control_socket(), &Request::Status)?.into_answer()?)
    }

    /// New flows member `i`'s data plane counted, over all VIPs.
    fn new_flows(i: usize) -> anyhow::Result<u64> {
        let stats = PinnedStats::open(&PinDir::instance(MEMBERS[i].instance))?;
        Ok(stats.snapshot()?.vips.iter().map(|v| v.new_flows).sum())
    }

    /// The members' addresses, as the router's next hops to the VIPs.
    fn hops(members: &[usize]) -> Vec<IpAddr> {
        members.iter().map(|&i| IpAddr::V4(MEMBERS[i].v4)).collect()
    }

    /// Member `i`'s Prometheus metrics.
    fn metrics(i: usize) -> anyhow::Result<String> {
        lb_lab::ns(MEMBERS[i].netns, "curl", &["-s", "--max-time", "3", "http://127.0.0.1:9120/metrics"])
    }
}

/// A long-lived connection or session of the far client and the backend that first answered.
struct Tcp {
    vip: &'static str,
    port: u16,
    local: std::net::SocketAddr,
    conn: Http,
    first: String,
    /// Why it stopped working: broken, or answered by another backend.
    fault: Option<String>,
}

struct Udp {
    dns: Dns,
    first: String,
    /// Queries that got no answer (lost while the routers moved the session).
    lost: usize,
    moved: Option<String>,
}

struct Load {
    tcp: Vec<Tcp>,
    udp: Vec<Udp>,
    rounds: usize,
}

impl Load {
    /// `tcp`: (VIP name, port, connections); `udp` DNS sessions. Call in the far client's namespace.
    fn open(tcp: &[(&'static str, u16, usize)], udp: usize) -> anyhow::Result<Self> {
        let mut load = Load { tcp: Vec::new(), udp: Vec::new(), rounds: 0 };
        for &(vip, port, count) in tcp {
            for _ in 0..count {
                let mut conn =
                    Http::connect_port(IpAddr::V4(VIP_V4), port).with_context(|| format!("connecting to {vip}"))?;
                let first = conn.get()?;
                let local = conn.local_addr()?;
                load.tcp.push(Tcp { vip, port, local, conn, first, fault: None });
            }
        }
        for _ in 0..udp {
            let mut dns = Dns::with_timeout(IpAddr::V4(VIP_V4), Duration::from_millis(300))?;
            let first = dns.ask()?;
            load.udp.push(Udp { dns, first, lost: 0, moved: None });
        }
        Ok(load)
    }

    /// Per connection: whether member `i`'s flow table has its entry.
    fn carried_by(&self, i: usize) -> anyhow::Result<Vec<bool>> {
        let maps = BalancerMaps::open_pinned(&PinDir::instance(MEMBERS[i].instance))?;
        let (_, vip) = to_key(IpAddr::V4(VIP_V4));
        Ok(self
            .tcp
            .iter()
            .map(|t| {
                let (family, client) = to_key(t.local.ip());
                maps.flow(&FlowKey::new(family, 6, client, t.local.port(), vip, t.port)).is_some()
            })
            .collect())
    }

    /// One request on every connection that still works and one query per session.
    fn round(&mut self) {
        for t in self.tcp.iter_mut().filter(|t| t.fault.is_none()) {
            match t.conn.get() {
                Ok(name) if name == t.first => {}
                Ok(name) => t.fault = Some(format!("moved {} -> {name}", t.first)),
                Err(e) => t.fault = Some(format!("broken ({}): {e:#}", t.first)),
            }
        }
        for u in &mut self.udp {
            match u.dns.ask() {
                Ok(name) if name == u.first => {}
                Ok(name) => u.moved = Some(format!("moved {} -> {name}", u.first)),
                Err(_) => u.lost += 1,
            }
        }
        self.rounds += 1;
    }

    /// Per VIP: (connections, connections that kept working on their backend).
    fn survival(&self) -> BTreeMap<&'static str, (usize, usize)> {
        let mut out: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
        for t in &self.tcp {
            let e = out.entry(t.vip).or_default();
            e.0 += 1;
            e.1 += usize::from(t.fault.is_none());
        }
        out
    }

    fn report(&self) -> String {
        let mut parts: Vec<String> =
            self.survival().iter().map(|(vip, (n, kept))| format!("{vip} {kept}/{n} TCP kept")).collect();
        let moved = self.udp.iter().filter(|u| u.moved.is_some()).count();
        let lost: usize = self.udp.iter().map(|u| u.lost).sum();
        parts.push(format!(
            "dns {}/{} UDP kept their backend ({lost} queries lost)",
            self.udp.len() - moved,
            self.udp.len()
        ));
        format!("{} over {} rounds", parts.join(", "), self.rounds)
    }

    fn faults(&self, vip: &str) -> Vec<String> {
        self.tcp.iter().filter(|t| t.vip == vip).filter_map(|t| t.fault.clone()).take(5).collect()
    }

    fn moved_udp(&self) -> Vec<String> {
        self.udp.iter().filter_map(|u| u.moved.clone()).collect()
    }
}

/// Runs `change` while `load` goes round in the far client's namespace; returns the load after
/// one more round, and what `change` returned.
fn under_load<T>(load: Load, change: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(Load, T)> {
    let load = Arc::new(Mutex::new(load));
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let (load, stop) = (Arc::clone(&load), Arc::clone(&stop));
        std::thread::spawn(move || {
            in_namespace(FAR_CLIENT, move || {
                while !stop.load(Ordering::Relaxed) {
                    load.lock().expect("load").round();
                }
            })
        })
    };
    let changed = change();
    stop.store(true, Ordering::Relaxed);
    runner.join().map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    let changed = changed?;
    let mut load = Arc::into_inner(load).context("load still shared")?.into_inner().expect("load");
    let load = in_namespace(FAR_CLIENT, move || {
        load.round();
        load
    })?;
    Ok((load, changed))
}

/// Both members build identical tables, announce every VIP to an established session, and
/// each receives at least 30% of 300 new connections.
fn identical_tables_and_shares(f: &mut Fleet) -> anyhow::Result<()> {
    let sockets: Vec<String> = MEMBERS.iter().map(|m| m.control_socket().display().to_string()).collect();
    let same = f.lb(&["fleet", "diff", &sockets[0], &sockets[1]])?;
    ensure!(same.contains("every table is the same"), "lb fleet diff said: {same}");
    let json: serde_json::Value =
        serde_json::from_str(&f.lb(&["fleet", "diff", "--json", &sockets[0], &sockets[1]])?)?;
    ensure!(
        json["same"] == true && json["vips"] == 5 && json["members"].as_array().is_some_and(|m| m.len() == 2),
        "{json}"
    );
    let vips: serde_json::Value =
        serde_json::from_str(&f.lb(&["vip", "list", "--instance", MEMBERS[0].instance, "--json"])?)?;
    ensure!(
        vips.as_array().is_some_and(|v| v.len() == 5 && v[0]["fingerprint"].is_string()),
        "lb vip list --json: {vips}"
    );
    let backends: serde_json::Value =
        serde_json::from_str(&f.lb(&["backend", "list", "--instance", MEMBERS[0].instance, "--json", "web"])?)?;
    ensure!(
        backends.as_array().is_some_and(|b| b.len() == 3 && b.iter().all(|b| b["vip"] == "web" && b["health"] == "up")),
        "lb backend list --json web: {backends}"
    );
    let statuses = [Fleet::status(0)?, Fleet::status(1)?];
    for (m, s) in MEMBERS.iter().zip(&statuses) {
        let bgp = s.bgp.as_ref().context("no bgp in the status")?;
        ensure!(bgp.routes.iter().all(|r| r.withdrawn.is_none()), "{}: {:?}", m.instance, bgp.routes);
        ensure!(
            bgp.speaking.sessions.len() == 2
                && bgp.speaking.sessions.iter().all(|p| p.established() && p.asn == ROUTER_ASN),
            "{}: sessions {:?}",
            m.instance,
            bgp.speaking.sessions
        );
        ensure!(
            bgp.speaking.sessions.iter().all(|p| p.bfd.as_deref() == Some("Up")),
            "{}: BFD {:?}",
            m.instance,
            bgp.speaking.sessions
        );
    }
    let prints = |s: &Status| s.vips.iter().map(|v| (v.name.clone(), v.fingerprint.clone())).collect::<Vec<_>>();
    ensure!(
        prints(&statuses[0]) == prints(&statuses[1]),
        "fingerprints differ: {:?} / {:?}",
        prints(&statuses[0]),
        prints(&statuses[1])
    );
    for i in 0..2 {
        let metrics = Fleet::metrics(i)?;
        for expected in [
            "lb_vip_announced{address=\"198.18.100.1\",reason=\"\"} 1",
            "lb_bgp_session_established{address=\"198.18.0.254\",peer=\"lb_fleet_",
            "lb_node_drained 0",
            "lb_bgp_applied 1",
        ] {
            ensure!(metrics.contains(expected), "member {i}'s metrics lack {expected}");
        }
    }

    let before = [Fleet::new_flows(0)?, Fleet::new_flows(1)?];
    in_namespace(FAR_CLIENT, || -> anyhow::Result<()> {
        for _ in 0..CONNECTIONS {
            Http::connect(IpAddr::V4(VIP_V4))?.get()?;
        }
        Ok(())
    })??;
    let counts = [Fleet::new_flows(0)? - before[0], Fleet::new_flows(1)? - before[1]];
    let total = counts[0] + counts[1];
    println!("    {CONNECTIONS} new connections: fleet-a {} and fleet-b {} new flows", counts[0], counts[1]);
    ensure!(total >= CONNECTIONS as u64, "the members counted {total} new flows for {CONNECTIONS} connections");
    for (m, n) in MEMBERS.iter().zip(counts) {
        ensure!(n * 10 >= total * 3, "{} took {n} of {total} new flows, under 30%", m.instance);
    }
    Ok(())
}

/// Restarting a member's agent (SIGTERM, then SIGKILL as a crash or a careless upgrade would)
/// withdraws nothing: the router keeps the member in its route throughout, BIRD keeps the
/// routes it learnt from it (their age shows), and the agent's file is not rewritten.
fn agent_restart_withdraws_nothing(f: &mut Fleet) -> anyhow::Result<()> {
    let include = lb_userspace::bgp::include_path(MEMBERS[0].instance);
    let written = std::fs::metadata(&include)?.modified()?;
    let learnt = f.lab.router_bird("show route 198.18.100.1/32")?;
    let load = in_namespace(FAR_CLIENT, || Load::open(&[("web", 80, 100)], 20))??;
    let (load, samples) = under_load(load, || {
        let watching = Arc::new(AtomicBool::new(true));
        let watcher = {
            let (watching, router) = (Arc::clone(&watching), Lab::new(&f.lab.dir, &f.lab.lb));
            std::thread::spawn(move || -> anyhow::Result<usize> {
                let mut samples = 0;
                while watching.load(Ordering::Relaxed) {
                    let hops = router.router_next_hops(IpAddr::V4(VIP_V4))?;
                    ensure!(hops.contains(&IpAddr::V4(MEMBERS[0].v4)), "the router's route lost fleet-a: {hops:?}");
                    samples += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(samples)
            })
        };
        let restarted = (|| -> anyhow::Result<()> {
            let agent = f.agents[0].take().context("fleet-a's agent is not running")?;
            f.lab.stop_agent(agent)?;
            f.start_agent(0)?;
            std::thread::sleep(Duration::from_secs(2));
            let mut agent = f.agents[0].take().context("fleet-a's agent is not running")?;
            agent.kill()?;
            agent.wait()?;
            f.start_agent(0)?;
            std::thread::sleep(Duration::from_secs(2));
            Ok(())
        })();
        watching.store(false, Ordering::Relaxed);
        let samples = watcher.join().map_err(|_| anyhow::anyhow!("watcher panicked"))??;
        restarted?;
        Ok(samples)
    })?;
    println!("    two restarts of fleet-a's agent: the router's route kept it in {samples} samples 5 ms apart");
    println!("    {}", load.report());
    ensure!(load.faults("web").is_empty(), "connections broke: {:?}", load.faults("web"));
    ensure!(std::fs::metadata(&include)?.modified()? == written, "the agent rewrote {}", include.display());
    let relearnt = f.lab.router_bird("show route 198.18.100.1/32")?;
    // BIRD shows when it learnt each path, recomputed from its clock: it may differ by a
    // millisecond between two readings.
    let (before, after) = (learnt_at(&learnt), learnt_at(&relearnt));
    let same = before.len() == 2
        && before.len() == after.len()
        && before.iter().zip(&after).all(|((p, t), (q, u))| p == q && (t - u).abs() < 0.01);
    ensure!(same, "the router's BIRD learnt the route anew:\n{learnt}\nthen\n{relearnt}");
    Ok(())
}

/// Each path of a route in BIRD's `show route`: the protocol it came from and when it was learnt
/// (seconds of the day).
fn learnt_at(show_route: &str) -> Vec<(String, f64)> {
    show_route
        .lines()
        .filter_map(|l| {
            let inside = &l[l.find('[')? + 1..l.find(']')?];
            let (protocol, time) = inside.split_once(' ')?;
            let mut parts = time.split(':').map(|p| p.parse::<f64>().ok());
            let seconds = parts.next()?? * 3600.0 + parts.next()?? * 60.0 + parts.next()??;
            Some((protocol.to_string(), seconds))
        })
        .collect()
}

/// A member's BIRD crashes: the router stops using the member once BFD notices, `lb status`
/// says BIRD cannot be reached, and BIRD started again announces from the agent's file alone.
fn bird_crash_and_restart(f: &mut Fleet) -> anyhow::Result<()> {
    let load = in_namespace(FAR_CLIENT, || Load::open(&[("web", 80, 100)], 20))??;
    let (load, (gone, noticed, back)) = under_load(load, || {
        std::thread::sleep(Duration::from_millis(500));
        f.lab.kill_member_bird(0);
        let gone = f.lab.wait_for_next_hops(IpAddr::V4(VIP_V4), &Fleet::hops(&[1]), Duration::from_secs(10))?;
        let start = Instant::now();
        lb_lab::wait_until(Duration::from_secs(5), "fleet-a's status to say BIRD cannot be reached", || {
            Fleet::status(0)
                .ok()
                .and_then(|s| s.bgp)
                .and_then(|b| b.speaking.sessions_problem)
                .is_some_and(|p| p.contains("cannot reach BIRD"))
        })?;
        let noticed = start.elapsed();
        ensure!(Fleet::metrics(0)?.contains("lb_bgp_applied 1"), "BIRD's crash is not a refusal of the plan");
        f.lab.start_member_bird(0)?;
        let back = f.lab.wait_for_next_hops(IpAddr::V4(VIP_V4), &Fleet::hops(&[0, 1]), CONVERGE)?;
        std::thread::sleep(Duration::from_secs(1));
        Ok((gone, noticed, back))
    })?;
    println!(
        "    fleet-a's BIRD killed: the router stopped using fleet-a {} ms later, the agent said so {} ms after that; \
         BIRD restarted: in the route again {} ms later, from the file alone",
        gone.as_millis(),
        noticed.as_millis(),
        back.as_millis()
    );
    println!("    {}", load.report());
    ensure!(load.faults("web").is_empty(), "connections broke: {:?}", load.faults("web"));
    ensure!(load.moved_udp().is_empty(), "UDP sessions moved: {:?}", load.moved_udp());
    Ok(())
}

/// A member dies the hard way (agent killed by `SIGKILL`, link down): the router stops using it once BFD
/// notices, and the survivor keeps the Maglev VIPs' connections on their backends.
fn member_killed_hard(f: &mut Fleet) -> anyhow::Result<()> {
    let load = in_namespace(FAR_CLIENT, || {
        Load::open(&[("web", 80, 200), ("web-lc", FLEET_LC_PORT, 100), ("web-rr", FLEET_RR_PORT, 100)], 50)
    })??;
    // Which connections the survivor carries from their start: those with its flow-table entry.
    let on_survivor = load.carried_by(0)?;
    let (load, detection) = under_load(load, || {
        std::thread::sleep(Duration::from_secs(1));
        let mut agent = f.agents[1].take().context("fleet-b's agent is not running")?;
        agent.kill()?;
        agent.wait()?;
        f.lab.member_link(1, false)?;
        let detection = f.lab.wait_for_next_hops(IpAddr::V4(VIP_V4), &Fleet::hops(&[0]), Duration::from_secs(10))?;
        // Everything now runs through fleet-a.
        std::thread::sleep(Duration::from_secs(3));
        Ok(detection)
    })?;
    println!("    the router stopped sending to the dead member {} ms after its link went down", detection.as_millis());
    println!("    {}", load.report());
    let survival = load.survival();
    let (n, kept) = survival["web"];
    ensure!(kept * 100 >= n * 99, "only {kept} of {n} Maglev connections survived: {:?}", load.faults("web"));
    ensure!(load.moved_udp().is_empty(), "UDP sessions moved: {:?}", load.moved_udp());
    // The survivor's own connections never move, whatever the scheduler. Of those the dead
    // member carried, least connections keeps those whose Maglev candidate won, round robin those
    // that happen to meet their backend again.
    let broken_own: Vec<String> =
        load.tcp.iter().zip(&on_survivor).filter(|(_, own)| **own).filter_map(|(t, _)| t.fault.clone()).collect();
    ensure!(broken_own.is_empty(), "connections the survivor carried all along broke: {broken_own:?}");
    for vip in ["web", "web-lc", "web-rr"] {
        let moved: Vec<&Tcp> =
            load.tcp.iter().zip(&on_survivor).filter(|(t, own)| t.vip == vip && !**own).map(|(t, _)| t).collect();
        let kept = moved.iter().filter(|t| t.fault.is_none()).count();
        println!(
            "    {vip}: {} carried by the survivor all along; of the {} the dead member carried, {kept} kept their backend",
            survival[vip].0 - moved.len(),
            moved.len()
        );
    }
    Ok(())
}

/// The dead member comes back as after a reboot (no data plane, no announcements, BIRD empty):
/// the router uses it only once its agent attached and announced, and no connection breaks.
fn member_returns(f: &mut Fleet) -> anyhow::Result<()> {
    ensure!(f.agents[1].is_none(), "run after fleet/member_killed_hard");
    let withdrew = f.lb(&["detach", "--instance", MEMBERS[1].instance])?;
    ensure!(withdrew.contains("withdrew its VIPs"), "lb detach said: {withdrew}");
    // As a reboot leaves it: no data plane (detached), nothing in /run, BIRD started afresh.
    std::fs::remove_file(lb_userspace::bgp::include_path(MEMBERS[1].instance))?;
    f.lab.kill_member_bird(1);
    f.lab.member_link(1, true)?;
    std::thread::sleep(Duration::from_millis(200));
    f.lab.start_member_bird(1)?;
    let load = in_namespace(FAR_CLIENT, || Load::open(&[("web", 80, 100)], 20))??;
    let (load, (attached, announced)) = under_load(load, || {
        // BIRD runs without the agent's file: no session, nothing announced (a sanity check of the lab).
        std::thread::sleep(Duration::from_secs(3));
        ensure!(
            f.lab.router_next_hops(IpAddr::V4(VIP_V4))? == Fleet::hops(&[0]),
            "the router uses fleet-b before its agent runs"
        );
        let start = Instant::now();
        f.start_agent(1)?;
        let attached = start.elapsed();
        let announced = f.lab.wait_for_next_hops(IpAddr::V4(VIP_V4), &Fleet::hops(&[0, 1]), CONVERGE)? + attached;
        std::thread::sleep(Duration::from_secs(2));
        Ok((attached, announced))
    })?;
    println!(
        "    fleet-b's agent reported running {} ms after its start; the router used it again {} ms after its start",
        attached.as_millis(),
        announced.as_millis()
    );
    println!("    {}", load.report());
    ensure!(load.faults("web").is_empty(), "connections broke as the member came back: {:?}", load.faults("web"));
    ensure!(load.moved_udp().is_empty(), "UDP sessions moved: {:?}", load.moved_udp());
    let status = Fleet::status(1)?;
    ensure!(status.data_plane.problem.is_none(), "fleet-b's data plane: {:?}", status.data_plane.problem);
    Ok(())
}

/// `lb node drain` withdraws a member: its new flows stop within the grace period and no
/// connection breaks; `lb node undrain` brings it back into the route.
fn drain_and_undrain(f: &mut Fleet) -> anyhow::Result<()> {
    let load = in_namespace(FAR_CLIENT, || Load::open(&[("web", 80, 100)], 20))??;
    let instance = MEMBERS[0].instance;
    // New connections all along, one every 20 ms: the drained member must see them stop.
    let opening = Arc::new(AtomicBool::new(true));
    let opener = {
        let opening = Arc::clone(&opening);
        std::thread::spawn(move || {
            in_namespace(FAR_CLIENT, move || {
                let (mut opened, mut failed) = (0, 0);
                while opening.load(Ordering::Relaxed) {
                    match Http::connect(IpAddr::V4(VIP_V4)).and_then(|mut c| c.get()) {
                        Ok(_) => opened += 1,
                        Err(_) => failed += 1,
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                (opened, failed)
            })
        })
    };
    let drained = under_load(load, || {
        std::thread::sleep(Duration::from_millis(500));
        let start = Instant::now();
        let said = f.lb(&["node", "drain", "--instance", instance, "--grace", "15"])?;
        let took = start.elapsed();
        ensure!(
            f.lab.router_next_hops(IpAddr::V4(VIP_V4))? == Fleet::hops(&[1]),
            "the router still uses the drained member"
        );
        let before = [Fleet::new_flows(0)?, Fleet::new_flows(1)?];
        std::thread::sleep(Duration::from_secs(2));
        let after = [Fleet::new_flows(0)?, Fleet::new_flows(1)?];
        ensure!(
            after[0] == before[0],
            "the drained member counted {} new flows after the drain ended",
            after[0] - before[0]
        );
        ensure!(after[1] > before[1], "the other member took no new flows either: the test's new connections stopped");
        Ok(format!("{said}(drain took {} ms)", took.as_millis()))
    });
    opening.store(false, Ordering::Relaxed);
    let (opened, failed) = opener.join().map_err(|_| anyhow::anyhow!("opener panicked"))??;
    let (load, said) = drained?;
    println!("    {opened} new connections during the drain, {failed} failed");
    ensure!(failed == 0, "{failed} new connections failed during the drain");
    let rate_before: u64 = said
        .lines()
        .find_map(|l| l.trim().strip_prefix("before the withdrawal: ")?.split(' ').next()?.parse().ok())
        .context("lb node drain did not say the rate before the withdrawal")?;
    ensure!(rate_before > 0, "the member took no new flows before the drain, so the drain proves nothing:\n{said}");
    println!("    lb node drain said:\n{}", said.lines().map(|l| format!("      {l}")).collect::<Vec<_>>().join("\n"));
    println!("    {}", load.report());
    ensure!(load.faults("web").is_empty(), "connections broke in the drain: {:?}", load.faults("web"));
    ensure!(load.moved_udp().is_empty(), "UDP sessions moved: {:?}", load.moved_udp());
    let status = Fleet::status(0)?;
    let bgp = status.bgp.context("no bgp in the status")?;
    ensure!(bgp.drained && bgp.routes.iter().all(|r| r.withdrawn.is_some()), "status after drain: {bgp:?}");
    ensure!(Fleet::metrics(0)?.contains("lb_node_drained 1"), "lb_node_drained is not 1");

    let said = f.lb(&["node", "undrain", "--instance", instance])?;
    ensure!(said.contains("announcing 198.18.100.1"), "lb node undrain said: {said}");
    let back = f.lab.wait_for_next_hops(IpAddr::V4(VIP_V4), &Fleet::hops(&[0, 1]), CONVERGE)?;
    println!("    undrained: the router used fleet-a again {} ms later", back.as_millis());
    Ok(())
}

/// A backend removed on one member only: `lb fleet diff` names the VIP and why, and the
/// members' table metrics differ; put back, the tables agree again.
fn backend_removed_on_one_member(f: &mut Fleet) -> anyhow::Result<()> {
    let sockets: Vec<String> = MEMBERS.iter().map(|m| m.control_socket().display().to_string()).collect();
    f.lb(&["backend", "remove", "--instance", MEMBERS[0].instance, "web", "198.18.0.23"])?;
    let out = Command::new(&f.lab.lb).args(["fleet", "diff", &sockets[0], &sockets[1]]).output()?;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.code() == Some(1), "lb fleet diff exited with {} and said: {said}", out.status);
    ensure!(said.contains("web") && said.contains("198.18.0.23"), "lb fleet diff said: {said}");
    let out = Command::new(&f.lab.lb).args(["fleet", "diff", "--json", &sockets[0], &sockets[1]]).output()?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(out.status.code() == Some(1) && json["same"] == false && json["differences"][0]["vip"] == "web", "{json}");
    println!("    lb fleet diff:\n{}", said.lines().map(|l| format!("      {l}")).collect::<Vec<_>>().join("\n"));
    let fingerprint = |metrics: &str, vip: &str| -> Option<String> {
        let line =
            metrics.lines().find(|l| l.starts_with("lb_vip_table_info{") && l.contains(&format!("vip=\"{vip}\"")))?;
        let start = line.find("fingerprint=\"")? + "fingerprint=\"".len();
        Some(line[start..].split('"').next()?.to_string())
    };
    let (a, b) = (Fleet::metrics(0)?, Fleet::metrics(1)?);
    ensure!(fingerprint(&a, "web") != fingerprint(&b, "web"), "web's lb_vip_table_info is the same on both members");
    ensure!(
        fingerprint(&a, "dns").is_some() && fingerprint(&a, "dns") == fingerprint(&b, "dns"),
        "dns's tables differ"
    );
    f.lb(&["backend", "add", "--instance", MEMBERS[0].instance, "web", "198.18.0.23"])?;
    let same = f.lb(&["fleet", "diff", &sockets[0], &sockets[1]])?;
    ensure!(same.contains("every table is the same"), "after putting the backend back, lb fleet diff said: {same}");
    Ok(())
}

/// A VIP removed on one member (its address's only VIP) is withdrawn there and the router routes
/// the address to the other member alone; a reload of the file brings it back.
fn removed_vip_is_withdrawn(f: &mut Fleet) -> anyhow::Result<()> {
    let web6: IpAddr = "fd00:100::1".parse()?;
    let both: Vec<IpAddr> = MEMBERS.iter().map(|m| IpAddr::V6(m.v6)).collect();
    f.lab.wait_for_next_hops(web6, &both, CONVERGE)?;
    f.lb(&["vip", "remove", "--instance", MEMBERS[0].instance, "web6"])?;
    let withdrawn = f.lab.wait_for_next_hops(web6, &both[1..], Duration::from_secs(10))?;
    let status = Fleet::status(0)?;
    let routes = status.bgp.context("no bgp in the status")?.routes;
    ensure!(routes.iter().all(|r| r.address != web6), "fleet-a still lists a route for {web6}: {routes:?}");
    f.lb(&["reload", "--instance", MEMBERS[0].instance])?;
    let back = f.lab.wait_for_next_hops(web6, &both, CONVERGE)?;
    println!(
        "    web6 removed on fleet-a: the router routed {web6} to fleet-b alone {} ms later; reloaded: to both {} ms later",
        withdrawn.as_millis(),
        back.as_millis()
    );
    Ok(())
}

/// Every metric the Grafana dashboard (docs/grafana/lb-dashboard.json) queries is one a fleet
/// member exports.
fn dashboard_queries_exported_metrics(_f: &mut Fleet) -> anyhow::Result<()> {
    fn exprs<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v.as_str()) {
                        ("expr", Some(expr)) => out.push(expr),
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana/lb-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?)?;
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    // The metric names in the queries: identifiers starting with lb_, outside quoted label values.
    let mut queried = std::collections::BTreeSet::new();
    for query in &queries {
        let unquoted: String = query.split('"').step_by(2).collect::<Vec<_>>().join(" ");
        for word in unquoted.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("lb_") {
                queried.insert(word.to_string());
            }
        }
    }
    let metrics = Fleet::metrics(0)?;
    let exported: std::collections::BTreeSet<&str> =
        metrics.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
    let missing: Vec<&String> = queried.iter().filter(|q| !exported.contains(q.as_str())).collect();
    ensure!(missing.is_empty(), "the dashboard queries metrics fleet-a does not export: {missing:?}");
    ensure!(queried.len() >= 20, "the dashboard queries only {} metrics: {queried:?}", queried.len());
    println!("    the dashboard's {} queries use {} metrics, all exported", queries.len(), queried.len());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    lb_tests::privileged::require_root("the fleet tests")?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace")?.to_path_buf();
    let lb = lb_tests::e2e::build_lb(&workspace)?;
    let lab = Lab::new(&workspace.join("target/lab-fleet"), &lb);
    let mut fleet = Fleet { lab, configs: [PathBuf::new(), PathBuf::new()], agents: [None, None] };
    let started = (|| -> anyhow::Result<()> {
        fleet.lab.up()?;
        fleet.lab.fleet_up()?;
        let template = workspace.join("config/fleet.toml");
        for i in 0..MEMBERS.len() {
            fleet.configs[i] = fleet.lab.member_config(&template, i)?;
            let _ = std::fs::remove_file(fleet.lab.member_log(i));
            fleet.start_agent(i)?;
        }
        let converged = fleet.lab.wait_for_next_hops(IpAddr::V4(VIP_V4), &Fleet::hops(&[0, 1]), CONVERGE)?;
        println!(
            "fleet up: the router routes {VIP_V4} over both members {} ms after the agents ran",
            converged.as_millis()
        );
        // And every session (IPv6 too) as the agents report them (BIRD is read every second).
        lb_lab::wait_until(CONVERGE, "every member's sessions and BFD to be up", || {
            (0..MEMBERS.len()).all(|i| {
                Fleet::status(i).ok().and_then(|s| s.bgp).is_some_and(|b| {
                    b.speaking.sessions.len() == 2
                        && b.speaking.sessions.iter().all(|p| p.established() && p.bfd.as_deref() == Some("Up"))
                })
            })
        })
    })();
    if let Err(e) = started {
        fleet.lab.down();
        bail!("bringing the fleet lab up: {e:#}");
    }
    let trials: Vec<Trial<Fleet>> = vec![
        ("fleet/identical_tables_and_shares", identical_tables_and_shares),
        ("fleet/dashboard_queries_exported_metrics", dashboard_queries_exported_metrics),
        ("fleet/agent_restart_withdraws_nothing", agent_restart_withdraws_nothing),
        ("fleet/bird_crash_and_restart", bird_crash_and_restart),
        ("fleet/member_killed_hard", member_killed_hard),
        ("fleet/member_returns", member_returns),
        ("fleet/drain_and_undrain", drain_and_undrain),
        ("fleet/backend_removed_on_one_member", backend_removed_on_one_member),
        ("fleet/removed_vip_is_withdrawn", removed_vip_is_withdrawn),
    ];
    run_trials_on(fleet, trials, |mut fleet, failed| {
        for agent in fleet.agents.iter_mut().filter_map(Option::take) {
            let _ = fleet.lab.stop_agent(agent);
        }
        fleet.lab.down();
        if failed {
            eprintln!("agent logs: {} and {}", fleet.lab.member_log(0).display(), fleet.lab.member_log(1).display());
        }
    })
}
