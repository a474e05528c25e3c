//! Cost per packet and delivered rate of the balancer in native XDP on a veth pair, driven by
//! live frames (`lb_tests::live`), next to the minimal `XDP_TX` program in the same rounds.
//!
//! Each round runs every case once, in an order rotated per round, so that machine drift hits
//! them alike. A case's figures are medians over rounds of its per-round figures against the
//! minimal program of the same round and CPU count: net ns = case - minimal, and the ratio of
//! net ns to the minimal program's own ns, which carries over between machines.
//!
//! Usage: `cargo bench -p lb-tests --bench xdp_live -- [--rounds N] [--packets N] [--json FILE]
//! [--only NAME,...]`
//! (as root; `cargo xtask bench` does this).

use std::{net::IpAddr, process::Command};

use anyhow::{Context as _, ensure};
use aya::programs::{Xdp, xdp::XdpMode};
use lb_common::{capacity::ablation, vip::scheduler};
use lb_tests::{
    bench::{VIP4, VIP6, backend4, backend6, balancer, median, set_next_hops, small_frame, with_admission, write_json},
    live::{DUT_IF, GENERATOR_IF, Pipeline, Traffic},
    packet::Protocol,
    privileged::{enter_private_netns, require_root},
};
use lb_userspace::dataplane::{Balancer, load_xdp_tx_baseline, objects, program};

struct Options {
    rounds: usize,
    packets: u32,
    json: Option<String>,
    /// Only the cases named here (the minimal ones always run).
    only: Vec<String>,
    /// Balancer objects that stop after each stage (`stop-N.o`, built by `cargo xtask bench
    /// --ablation`).
    ablation: Option<std::path::PathBuf>,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options { rounds: 7, packets: 1_000_000, json: None, only: Vec::new(), ablation: None };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => o.rounds = args.next().context("--rounds needs a number")?.parse()?,
            "--packets" => o.packets = args.next().context("--packets needs a number")?.parse()?,
            "--json" => o.json = Some(args.next().context("--json needs a file")?),
            "--only" => {
                o.only = args.next().context("--only needs case names")?.split(',').map(str::to_string).collect();
            }
            "--ablation" => o.ablation = Some(args.next().context("--ablation needs a directory")?.into()),
            "--bench" => {} // passed by cargo bench
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    ensure!(o.rounds > 0 && o.packets > 0, "--rounds and --packets must be positive");
    Ok(o)
}

/// Which program a case runs on the far end of the veth pair.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dut {
    Minimal,
    /// Index into the balancers.
    Balancer(usize),
}

/// How the balancer finds the next hop in a case.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NextHop {
    /// The agent's resolved next hops (the balancer with them set; routes as for `Fib`).
    Resolved,
    /// The backends' subnet is routed with neighbour entries: the FIB answers.
    Fib,
    /// No route to the backends: the configured fallback MAC.
    Fallback,
}

/// A target from the issue: `ratio` of the net cost to the minimal program's, at most.
#[derive(Clone, Copy)]
enum Target {
    NetRatioAtMost(f64),
    RateRatioAtLeast(f64),
}

struct Case {
    name: String,
    dut: Dut,
    traffic: Traffic,
    cpus: usize,
    next_hop: NextHop,
    target: Option<Target>,
    /// Per round: (ns per packet, delivered Mpps).
    samples: Vec<(f64, f64)>,
}

/// Established flows per CPU in the established cases.
const FLOWS_PER_CPU: u32 = 1024;

fn traffic(protocol: Protocol, vip: IpAddr, flows: u32) -> Traffic {
    let frame = small_frame(protocol, vip);
    // Offsets of the IPv4 / IPv6 source address's last two bytes and of the source port.
    let (src_addr_tail_offset, src_port_offset) = match vip {
        IpAddr::V4(_) => (14 + 12 + 2, 14 + 20),
        IpAddr::V6(_) => (14 + 8 + 14, 14 + 40),
    };
    Traffic { frame, flows, src_port_offset, src_addr_tail_offset }
}

fn set_next_hop(next_hop: NextHop) -> anyhow::Result<()> {
    let ip = |args: &[&str]| lb_lab::run(Command::new("ip").args(args));
    let _ = ip(&["addr", "flush", "dev", DUT_IF]);
    if next_hop != NextHop::Fallback {
        ip(&["addr", "add", "198.18.10.254/24", "dev", DUT_IF])?;
        ip(&["-6", "addr", "add", "fd00:10::fe/64", "dev", DUT_IF, "nodad"])?;
        for i in 1..=10 {
            for addr in [backend4(i).to_string(), backend6(u16::from(i)).to_string()] {
                ip(&["neigh", "replace", &addr, "lladdr", "02:00:00:00:00:01", "dev", DUT_IF, "nud", "permanent"])?;
            }
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    require_root("the live XDP benchmark")?;
    enter_private_netns()?;
    lb_lab::run(Command::new("sysctl").args(["-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]))?;
    let cpus = std::thread::available_parallelism()?.get().min(2);
    let mut pipeline = Pipeline::new(cpus as u32)?;

    let mut minimal = load_xdp_tx_baseline()?;
    // Balancer 2 has the next hops the agent would resolve: lbgen's MAC, from lbdut.
    let hop = lb_common::nexthop::NextHop {
        ifindex: lb_userspace::dataplane::ifindex(DUT_IF)?,
        dst_mac: [2, 0, 0, 0, 0, 1],
        src_mac: [2, 0, 0, 0, 0, 2],
    };
    let mut balancers = balancers(&hop)?;
    let udp4 = traffic(Protocol::Udp, IpAddr::V4(VIP4), FLOWS_PER_CPU);
    let mut cases = cases(cpus, &udp4);
    // Builds that stop after a stage: each stage's cost is the difference to the one before.
    let mut stages = Vec::new();
    if let Some(dir) = &o.ablation {
        for (stage, name) in ablation::STAGES {
            let path = dir.join(format!("stop-{stage}.o"));
            let object = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let mut b = balancer(&object, 1 << 20, scheduler::MAGLEV, 0)?;
            set_next_hops(&mut b, &hop)?;
            balancers.push(b);
            let case_name = format!("stop_after_{name}");
            cases.push(case(&case_name, Dut::Balancer(balancers.len() - 1), &udp4, 1, NextHop::Resolved, None));
            stages.push((name, case_name));
        }
    }
    if !o.only.is_empty() {
        cases.retain(|c| c.dut == Dut::Minimal || o.only.contains(&c.name));
    }

    // Fill the small tables so that the new-flow cases evict from the first packet on.
    set_next_hop(NextHop::Fib)?;
    for i in [1, 3, 4, 5, 6] {
        let fill = traffic(Protocol::Udp, IpAddr::V4(VIP4), 0);
        let program = balancers[i].program()?;
        let link = program.attach(DUT_IF, XdpMode::Driver).context("attaching the balancer natively")?;
        pipeline.pass(program, &fill, 1, 8192, false)?;
        program.detach(link)?;
    }

    measure(&o, &mut pipeline, &mut minimal, &mut balancers, &mut cases)?;
    report(&o, &cases, &stages)
}

/// The balancers under test, in the order the cases name them.
fn balancers(hop: &lb_common::nexthop::NextHop) -> anyhow::Result<Vec<Balancer>> {
    let mut balancers: Vec<Balancer> = vec![
        balancer(objects::BALANCER, 1 << 20, scheduler::MAGLEV, 0)?,
        // A small flow table kept full, so that every new flow evicts one.
        balancer(objects::BALANCER, 4096, scheduler::MAGLEV, 0)?,
        balancer(objects::BALANCER, 1 << 20, scheduler::MAGLEV, 0)?,
        // The same full table with a flood budget far below the offered rate: flood mode.
        balancer(objects::BALANCER, 4096, scheduler::MAGLEV, 1000)?,
        // The other schedulers' new flows, the table full as above.
        balancer(objects::BALANCER, 4096, scheduler::SOURCE_HASH, 0)?,
        balancer(objects::BALANCER, 4096, scheduler::SEQUENCE, 0)?,
        balancer(objects::BALANCER, 4096, scheduler::LEAST_CONNECTIONS, 0)?,
        // Balancer 2 with admission: source lists and a per-source packet rate, each alone.
        balancer(objects::BALANCER, 1 << 16, scheduler::MAGLEV, 0)?,
        balancer(objects::BALANCER, 1 << 16, scheduler::MAGLEV, 0)?,
        balancer(objects::BALANCER, 1 << 16, scheduler::MAGLEV, 0)?,
    ];
    with_admission(&mut balancers[7], true, true)?;
    with_admission(&mut balancers[8], true, false)?;
    with_admission(&mut balancers[9], false, true)?;
    for b in balancers.iter_mut().skip(1) {
        set_next_hops(b, hop)?;
    }
    Ok(balancers)
}

fn case(name: &str, dut: Dut, traffic: &Traffic, cpus: usize, next_hop: NextHop, target: Option<Target>) -> Case {
    Case { name: name.to_string(), dut, traffic: traffic.clone(), cpus, next_hop, target, samples: Vec::new() }
}

/// The cases, with their targets (the two-CPU ones on a machine with two).
fn cases(cpus: usize, udp4: &Traffic) -> Vec<Case> {
    let mut cases = vec![
        case("minimal", Dut::Minimal, udp4, 1, NextHop::Fallback, None),
        case("established_udp4", Dut::Balancer(2), udp4, 1, NextHop::Resolved, Some(Target::NetRatioAtMost(2.2))),
        case(
            "established_udp4_admission",
            Dut::Balancer(7),
            udp4,
            1,
            NextHop::Resolved,
            Some(Target::NetRatioAtMost(2.2)),
        ),
        case("established_udp4_source_lists", Dut::Balancer(8), udp4, 1, NextHop::Resolved, None),
        case("established_udp4_packet_rate", Dut::Balancer(9), udp4, 1, NextHop::Resolved, None),
        case("established_udp4_fib", Dut::Balancer(0), udp4, 1, NextHop::Fib, None),
        case("established_udp4_fallback", Dut::Balancer(0), udp4, 1, NextHop::Fallback, None),
        case(
            "established_tcp4",
            Dut::Balancer(2),
            &traffic(Protocol::Tcp, IpAddr::V4(VIP4), FLOWS_PER_CPU),
            1,
            NextHop::Resolved,
            Some(Target::NetRatioAtMost(2.2)),
        ),
        case(
            "established_udp6",
            Dut::Balancer(2),
            &traffic(Protocol::Udp, IpAddr::V6(VIP6), FLOWS_PER_CPU),
            1,
            NextHop::Resolved,
            None,
        ),
        case(
            "new_flow_udp4_table_full",
            Dut::Balancer(1),
            &traffic(Protocol::Udp, IpAddr::V4(VIP4), 0),
            1,
            NextHop::Resolved,
            Some(Target::NetRatioAtMost(22.0)),
        ),
        case(
            "new_flow_udp4_flood_mode",
            Dut::Balancer(3),
            &traffic(Protocol::Udp, IpAddr::V4(VIP4), 0),
            1,
            NextHop::Resolved,
            Some(Target::NetRatioAtMost(15.0)),
        ),
    ];
    for (name, dut) in [
        ("new_flow_udp4_source_hash", Dut::Balancer(4)),
        ("new_flow_udp4_round_robin", Dut::Balancer(5)),
        ("new_flow_udp4_least_connections", Dut::Balancer(6)),
    ] {
        let new_flows = traffic(Protocol::Udp, IpAddr::V4(VIP4), 0);
        cases.push(case(name, dut, &new_flows, 1, NextHop::Resolved, Some(Target::NetRatioAtMost(22.0))));
    }
    if cpus > 1 {
        cases.push(case("minimal_2cpu", Dut::Minimal, udp4, cpus, NextHop::Fallback, None));
        cases.push(case(
            "established_udp4_2cpu",
            Dut::Balancer(2),
            udp4,
            cpus,
            NextHop::Resolved,
            Some(Target::RateRatioAtLeast(0.75)),
        ));
    }

    cases
}

/// Every case once per round, in a rotated order, timed and then rated.
fn measure(
    o: &Options,
    pipeline: &mut Pipeline,
    minimal: &mut aya::Ebpf,
    balancers: &mut [Balancer],
    cases: &mut [Case],
) -> anyhow::Result<()> {
    for round in 0..o.rounds {
        let n = cases.len();
        for k in 0..n {
            let c = &mut cases[(k + round) % n];
            let program: &mut Xdp = match c.dut {
                Dut::Minimal => program(minimal, "xdp_tx_baseline")?,
                Dut::Balancer(i) => balancers[i].program()?,
            };
            set_next_hop(c.next_hop)?;
            let link =
                program.attach(DUT_IF, XdpMode::Driver).with_context(|| format!("attaching {} natively", c.name))?;
            // Established cases: every flow of the case in the table before timing.
            pipeline.pass(program, &c.traffic, c.cpus, FLOWS_PER_CPU * 4, false)?;
            let timed = pipeline.pass(program, &c.traffic, c.cpus, o.packets, true)?;
            let rate = pipeline.pass(program, &c.traffic, c.cpus, o.packets, false)?;
            program.detach(link)?;
            // A veth ring overflows now and then on a busy machine, which the delivered rate
            // shows; a path that loses most frames does not deliver at all and measures nothing.
            ensure!(
                rate.received * 2 >= rate.sent,
                "{}: only {} of {} frames came back through {GENERATOR_IF}: the path does not deliver",
                c.name,
                rate.received,
                rate.sent
            );
            c.samples.push((timed.ns_per_packet, rate.delivered_mpps));
        }
    }

    Ok(())
}

/// Prints the medians and targets, and writes them as JSON if asked.
fn report(o: &Options, cases: &[Case], stages: &[(&str, String)]) -> anyhow::Result<()> {
    println!(
        "Live frames through a veth pair, program under test native on {DUT_IF}: {} rounds x {} packets per CPU",
        o.rounds, o.packets
    );
    println!("ns: kernel BPF statistics; Mpps: delivered to the sink with statistics off; net = case - minimal");
    println!("of the same round and CPU count; medians over rounds of the per-round figures");
    println!(
        "{:<32} {:>4} {:>8} {:>8} {:>10} {:>8} {:>10}  target",
        "case", "cpus", "ns", "net ns", "net/min", "Mpps", "Mpps/min"
    );
    let mut json = Vec::new();
    for c in cases {
        let base = cases
            .iter()
            .find(|b| b.dut == Dut::Minimal && b.cpus == c.cpus)
            .context("no minimal case for this CPU count")?;
        let ns = median(c.samples.iter().map(|s| s.0).collect());
        let mpps = median(c.samples.iter().map(|s| s.1).collect());
        let net = median(c.samples.iter().zip(&base.samples).map(|(s, b)| s.0 - b.0).collect());
        let net_ratio = median(c.samples.iter().zip(&base.samples).map(|(s, b)| (s.0 - b.0) / b.0).collect());
        let rate_ratio = median(c.samples.iter().zip(&base.samples).map(|(s, b)| s.1 / b.1).collect());
        let verdict = match c.target {
            None => String::new(),
            Some(Target::NetRatioAtMost(t)) => {
                format!("net <= {t}x minimal: {}", if net_ratio <= t { "met" } else { "MISSED" })
            }
            Some(Target::RateRatioAtLeast(t)) => {
                format!("rate >= {t}x minimal: {}", if rate_ratio >= t { "met" } else { "MISSED" })
            }
        };
        println!(
            "{:<32} {:>4} {:>8.1} {:>8.1} {:>10.2} {:>8.2} {:>10.2}  {verdict}",
            c.name, c.cpus, ns, net, net_ratio, mpps, rate_ratio
        );
        json.push(serde_json::json!({
            "case": c.name, "cpus": c.cpus, "median_ns": ns, "median_net_ns": net,
            "median_net_ratio": net_ratio, "median_mpps": mpps, "median_rate_ratio": rate_ratio,
            "target": verdict, "rounds": c.samples,
        }));
    }
    // Targets between cases, per round: ratios of two cases measured in the same round.
    let mut derived = Vec::new();
    let per_round = |a: &str, b: &str, f: fn(&(f64, f64), &(f64, f64)) -> f64| -> Option<f64> {
        let (a, b) = (cases.iter().find(|c| c.name == a)?, cases.iter().find(|c| c.name == b)?);
        Some(median(a.samples.iter().zip(&b.samples).map(|(x, y)| f(x, y)).collect()))
    };
    if let Some(r) = per_round("established_udp4_2cpu", "established_udp4", |x, y| x.1 / y.1) {
        derived.push(("2 CPUs / 1 CPU, delivered Mpps, established IPv4 UDP", r, ">= 1.8", r >= 1.8));
    }
    if let Some(r) = per_round("established_udp6", "established_udp4", |x, y| x.0 / y.0) {
        derived.push(("IPv6 / IPv4 ns per packet, established UDP", r, "<= 1.25", r <= 1.25));
    }
    for (what, r, target, met) in &derived {
        println!("{what}: {r:.2} (target {target}: {})", if *met { "met" } else { "MISSED" });
    }
    if !stages.is_empty() {
        println!("\nThe established IPv4 UDP path by stage (builds that stop after each; net ns, medians):");
        println!("{:<16} {:>10} {:>10}", "stage", "through it", "its cost");
        let net_of = |name: &str| json.iter().find(|c| c["case"] == name).and_then(|c| c["median_net_ns"].as_f64());
        let mut before = 0.0;
        let whole = ("next_hop_and_counters", "established_udp4".to_string());
        for (stage, case_name) in stages.iter().map(|(s, c)| (*s, c.clone())).chain(std::iter::once(whole)) {
            let Some(net) = net_of(&case_name) else { continue };
            println!("{stage:<16} {net:>10.1} {:>10.1}", net - before);
            before = net;
        }
    }
    if let Some(file) = &o.json {
        let derived: Vec<_> = derived
            .iter()
            .map(|(what, r, target, met)| serde_json::json!({ "what": what, "median_ratio": r, "target": target, "met": met }))
            .collect();
        let doc = serde_json::json!({ "method": "live frames, native XDP on veth, kernel BPF stats", "rounds": o.rounds, "packets_per_cpu": o.packets, "cases": json, "derived": derived });
        write_json(file, &doc)?;
    }
    Ok(())
}
