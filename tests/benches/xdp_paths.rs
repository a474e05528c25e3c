//! Cost per packet of the balancer's paths, next to the minimal `XDP_TX` program, in one run.
//!
//! Method: `BPF_PROG_RUN` with repeat = 1 for every packet, so each run sees fresh input bytes
//! (with repeat > 1 the kernel re-runs the program on its own output, and an encapsulating
//! program then times the wrong path). The kernel reports each run's duration, which includes a
//! fixed timer overhead that the baseline carries too. Rounds of every path are interleaved with
//! rounds of the baseline so that machine noise hits all of them alike; each figure is the median
//! over rounds of the mean ns per packet within a round.
//!
//! Usage: `cargo bench -p lb-tests --bench xdp_paths -- [--rounds N] [--packets N] [--json FILE]`
//! (as root; `cargo xtask bench` does this).

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use aya::programs::Xdp;
use lb_common::{
    capacity::MAX_VIPS,
    dataplane::DataplaneConfig,
    family,
    flow::PUBLIC_HASH_KEY,
    maglev::{MaglevBackend, build_table, default_table_size},
    maps::FLOWS_V4,
    nexthop::NextHop,
    session::SessionKey,
    vip::{VipKey, scheduler as vip_scheduler},
};
use lb_tests::{
    bench::{VIP_PORT, VIP4, VIP6, balancer as balancer_from, frames as frames_of, median, set_next_hops, write_json},
    packet::{Flow, Protocol, Shape, dataplane_config, frame_with_payload, key_addr},
    pin_to_cpu,
    privileged::{enter_private_netns, require_root},
    xdp::{XDP_PASS, XDP_TX, run_once},
};
use lb_userspace::{
    agent::active::{self, IdleTimeouts, RecountPlan},
    dataplane::{Balancer, BalancerSizes, load_xdp_tx_baseline, objects, program},
    reconcile::{Scheduling, VipTable},
};

struct Options {
    rounds: usize,
    packets: usize,
    json: Option<String>,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options { rounds: 15, packets: 2000, json: None };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => o.rounds = args.next().context("--rounds needs a number")?.parse()?,
            "--packets" => o.packets = args.next().context("--packets needs a number")?.parse()?,
            "--json" => o.json = Some(args.next().context("--json needs a file")?),
            "--bench" => {} // passed by cargo bench
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    ensure!(o.rounds > 0 && o.packets > 0, "--rounds and --packets must be positive");
    Ok(o)
}

fn balancer(flow_table_entries: u32) -> anyhow::Result<Balancer> {
    resolved(objects::BALANCER, flow_table_entries, vip_scheduler::MAGLEV)
}

/// The benchmark balancer (`lb_tests::bench::balancer`) with every backend's next hop resolved,
/// as the agent leaves it, on the loopback device that `BPF_PROG_RUN` receives on.
fn resolved(object: &[u8], flow_table_entries: u32, scheduler: u8) -> anyhow::Result<Balancer> {
    let mut b = balancer_from(object, flow_table_entries, scheduler, 0)?;
    set_next_hops(
        &mut b,
        &NextHop { ifindex: LOOPBACK_IFINDEX, dst_mac: [2, 0, 0, 0, 0, 1], src_mac: [2, 0, 0, 0, 0, 2] },
    )?;
    Ok(b)
}

/// The benchmark balancer whose IPv4 UDP VIP balances by a 32-bit session id at the start of
/// the payload (`lb_common::session`); its IPv6 VIP has none.
fn keyed() -> anyhow::Result<Balancer> {
    let mut b = balancer(1 << 20)?;
    let (family, a) = key_addr(IpAddr::V4(VIP4));
    let key = VipKey::new(family, a, VIP_PORT, 17);
    let mut vip = b.current()?.vips.get(&key).context("the benchmark's IPv4 UDP VIP")?.clone();
    vip.scheduling.session_key = SessionKey::new(0, 4, [0xff; 16]);
    b.install_vip(&key, &vip)?;
    b.set_config(&DataplaneConfig { session_keys: 1, ..dataplane_config(PUBLIC_HASH_KEY) })?;
    Ok(b)
}

/// The benchmark balancer whose IPv4 UDP VIP routes QUIC short headers by a 2-byte server id at
/// byte 1 of the connection id (`lb_common::quic`), one per backend; its flow table is small
/// (the paths measured insert at most a round's packets per round).
fn quic() -> anyhow::Result<(Balancer, [u8; 2])> {
    let mut b = balancer(1 << 17)?;
    let (family, a) = key_addr(IpAddr::V4(VIP4));
    let key = VipKey::new(family, a, VIP_PORT, 17);
    let mut vip = b.current()?.vips.get(&key).context("the benchmark's IPv4 UDP VIP")?.clone();
    vip.scheduling.session_key = SessionKey::quic(1, 2);
    b.install_vip(&key, &vip)?;
    let ids: std::collections::BTreeSet<u32> = vip.table.iter().copied().collect();
    let servers = ids.iter().enumerate().map(|(n, id)| ([0x51, n as u8 + 1, 0, 0, 0, 0, 0, 0], *id)).collect();
    b.set_quic_servers(vip.index, &servers)?;
    b.set_config(&DataplaneConfig { session_keys: 1, ..dataplane_config(PUBLIC_HASH_KEY) })?;
    Ok((b, [0x51, 1]))
}

/// `n` QUIC short-header datagrams to the IPv4 VIP carrying `server_id`, from one client whose
/// source port starts at `first_port` and moves by `step` with every datagram.
fn short_headers(server_id: [u8; 2], first_port: u16, step: u16, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let client = Flow {
                protocol: Protocol::Udp,
                src: IpAddr::V4(Ipv4Addr::new(198, 19, 0, 2)),
                src_port: first_port.wrapping_add(step.wrapping_mul(i as u16)),
                dst: IpAddr::V4(VIP4),
                dst_port: VIP_PORT,
            };
            let payload = [&[0x41, 0x07][..], &server_id, &[0x5e; 5], &[0x17; 40]].concat();
            frame_with_payload(&client, &Shape::default(), &payload)
        })
        .collect()
}

/// `n` datagrams to the keyed IPv4 VIP from one client, carrying session ids from `first`.
fn sessions(first: u32, n: usize) -> Vec<Vec<u8>> {
    let client = Flow {
        protocol: Protocol::Udp,
        src: IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)),
        src_port: 40_000,
        dst: IpAddr::V4(VIP4),
        dst_port: VIP_PORT,
    };
    (0..n as u32)
        .map(|i| {
            frame_with_payload(
                &client,
                &Shape::default(),
                &[&first.wrapping_add(i).to_be_bytes()[..], &[0x5a; 14]].concat(),
            )
        })
        .collect()
}

/// The loopback device's index in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// `n` UDP frames to `vip`, each from its own client address and port (distinct flows).
fn frames(vip: IpAddr, n: usize, salt: u32) -> Vec<Vec<u8>> {
    frames_of(Protocol::Udp, vip, n, salt)
}

/// The balancer object with the flow table's map flags replaced, to measure the alternative.
fn with_flow_table_flags(flags: u32) -> anyhow::Result<Vec<u8>> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let file = object::File::parse(objects::BALANCER)?;
    let symbol = file.symbols().find(|s| s.name() == Ok(FLOWS_V4)).context("no flow table map symbol")?;
    let section = file.section_by_index(symbol.section_index().context("the flow table has no section")?)?;
    let (offset, _) = section.file_range().context("the maps section has no file data")?;
    // struct bpf_map_def { type, key_size, value_size, max_entries, map_flags, ... }
    let at = usize::try_from(offset + symbol.address() - section.address())? + 16;
    let mut patched = objects::BALANCER.to_vec();
    patched[at..at + 4].copy_from_slice(&flags.to_le_bytes());
    Ok(patched)
}

/// Runs one round of new flows on each CPU at once (each thread pinned); returns the mean of
/// the per-CPU means.
fn concurrent_round(program: &Xdp, per_cpu_inputs: &[Vec<Vec<u8>>]) -> anyhow::Result<f64> {
    let means = std::thread::scope(|scope| {
        let handles: Vec<_> = per_cpu_inputs
            .iter()
            .enumerate()
            .map(|(cpu, inputs)| {
                scope.spawn(move || {
                    pin_to_cpu(cpu)?;
                    round(program, inputs, XDP_TX)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("bench thread panicked")).collect::<anyhow::Result<Vec<f64>>>()
    })?;
    Ok(means.iter().sum::<f64>() / means.len() as f64)
}

/// Mean ns per packet over one pass of `inputs`, checking every verdict.
fn round(program: &Xdp, inputs: &[Vec<u8>], verdict: u32) -> anyhow::Result<f64> {
    let mut total = Duration::ZERO;
    for input in inputs {
        let run = run_once(program, input, None)?;
        ensure!(run.verdict == verdict, "verdict {} where {verdict} was expected", run.verdict);
        total += run.duration;
    }
    Ok(total.as_nanos() as f64 / inputs.len() as f64)
}

/// Flow-table entries for the recount measurement.
const RECOUNT_ENTRIES: usize = 200_000;

/// The agent's recount of active flows reads the whole flow table: its cost per entry, on a
/// table `balancer` fills with new flows (median of 5 reads).
fn recount_cost(balancer: &mut Balancer) -> anyhow::Result<serde_json::Value> {
    round(balancer.program()?, &frames(IpAddr::V4(VIP4), RECOUNT_ENTRIES, 0xabcd), XDP_TX)?;
    let idle = IdleTimeouts { tcp_ns: 900_000_000_000, udp_ns: 30_000_000_000 };
    let plan = RecountPlan::new(&balancer.current()?, idle);
    let mut samples = Vec::new();
    let mut entries = 0;
    for _ in 0..5 {
        let started = Instant::now();
        entries = active::recount(balancer, &plan)?;
        samples.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let ms = median(samples);
    println!(
        "agent recount of active flows: {entries} flow-table entries read in {ms:.1} ms ({:.0} ns per entry)",
        ms * 1e6 / entries as f64
    );
    Ok(serde_json::json!({ "entries": entries, "median_ms": ms }))
}

/// The flow tables' memory per flow, from the kernel's own accounting of each map; the target is
/// for IPv4 flows.
fn flow_memory(balancer: &Balancer) -> anyhow::Result<serde_json::Value> {
    let (bytes, entries) = balancer.flow_table_memory(family::IPV4)?;
    let per_flow = bytes as f64 / f64::from(entries);
    println!("IPv4 flow table: {bytes} bytes for {entries} entries ({per_flow:.1} B per flow; target <= 100)");
    let (bytes_v6, entries_v6) = balancer.flow_table_memory(family::IPV6)?;
    let per_flow_v6 = bytes_v6 as f64 / f64::from(entries_v6);
    println!("IPv6 flow table: {bytes_v6} bytes for {entries_v6} entries ({per_flow_v6:.1} B per flow)");
    Ok(serde_json::json!({
        "bytes": bytes, "entries": entries, "bytes_per_flow": per_flow, "met": per_flow <= 100.0,
        "ipv6_bytes_per_flow": per_flow_v6,
    }))
}

/// Maglev: build time (median of 5) for 10, 100 and 1000 backends at 65537 entries and for 5000
/// and 8192 backends at their default sizes (100 entries per backend), and the share of slots that
/// move when one backend of 100 or 1000 goes or one is added.
fn maglev() -> anyhow::Result<serde_json::Value> {
    let backends = |n: u32| -> Vec<MaglevBackend> {
        (0..n)
            .map(|i| MaglevBackend {
                addr: key_addr(IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i))).1,
                family: family::IPV4,
                weight: 1,
                id: i,
            })
            .collect()
    };
    let mut builds = Vec::new();
    for (n, size, target_ms) in [
        (10, 65_537, None),
        (100, 65_537, None),
        (1000, 65_537, Some(2.0)),
        (5000, default_table_size(5000), Some(20.0)),
        (8192, default_table_size(8192), None),
    ] {
        let set = backends(n);
        let mut samples = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            build_table(&set, size)?;
            samples.push(started.elapsed().as_secs_f64() * 1e3);
        }
        let ms = median(samples);
        let target = target_ms.map(|t| format!(" (target <= {t} ms)")).unwrap_or_default();
        println!("Maglev build, {n} backends, {size} entries: {ms:.2} ms{target}");
        builds.push(serde_json::json!({ "backends": n, "table_size": size, "median_ms": ms, "target_ms": target_ms }));
    }
    let moved = |a: &[u32], b: &[u32]| a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64;
    let mut disruption = Vec::new();
    for (what, before, after) in [
        ("1 of 100 removed", backends(100), backends(100)[1..].to_vec()),
        ("1 of 1000 removed", backends(1000), backends(1000)[1..].to_vec()),
        ("1 added to 100", backends(100), backends(101)),
    ] {
        let share = moved(&build_table(&before, 65_537)?, &build_table(&after, 65_537)?);
        println!("Maglev disruption, {what}: {:.2}% of slots moved", share * 100.0);
        disruption.push(serde_json::json!({ "change": what, "moved_share": share }));
    }
    Ok(serde_json::json!({ "builds": builds, "disruption": disruption }))
}

/// What the VIPs' tables cost in kernel memory (allocated as chunks are written): none, one VIP
/// with a default table, and 512 such VIPs (the most an instance serves), in a balancer of its own.
fn table_memory() -> anyhow::Result<serde_json::Value> {
    let mut balancer = Balancer::load(BalancerSizes::flows(1024))?;
    let empty = balancer.table_memory()?;
    let table: Vec<u32> = (0..65_537u32).map(|slot| slot % 3).collect();
    let mut points = vec![serde_json::json!({ "vips": 0, "bytes": empty })];
    for index in 0..MAX_VIPS {
        let key =
            VipKey::new(family::IPV4, [198, 18, 101, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], index as u16 + 1, 17);
        let vip = VipTable { index, scheduling: Scheduling::default(), table: table.clone() };
        // Twice: both of the VIP's tables written, as after its first change.
        balancer.install_vip(&key, &vip)?;
        balancer.install_vip(&key, &vip)?;
        if index == 0 || index + 1 == MAX_VIPS {
            let bytes = balancer.table_memory()?;
            println!("tables of {} VIPs (65537 entries, both tables): {bytes} bytes", index + 1);
            points.push(serde_json::json!({ "vips": index + 1, "bytes": bytes }));
        }
    }
    // What the agent reads back once as it starts or adopts a data plane (`Balancer::current`),
    // with all 512 VIPs; later changes work from its own copy.
    let started = Instant::now();
    let current = balancer.current()?;
    let read_ms = started.elapsed().as_secs_f64() * 1e3;
    ensure!(current.vips.len() == MAX_VIPS as usize, "{} VIPs read back", current.vips.len());
    println!("reading the data plane's state back with {MAX_VIPS} VIPs: {read_ms:.1} ms");
    Ok(serde_json::json!({ "table_size": 65_537, "points": points, "read_back_ms": read_ms }))
}

struct Path {
    name: &'static str,
    samples: Vec<f64>,
}

/// The flow table's flag for per-CPU LRU lists.
const BPF_F_NO_COMMON_LRU: u32 = 2;

fn main() -> anyhow::Result<()> {
    let o = options()?;
    require_root("the XDP benchmark")?;
    enter_private_netns()?;

    let mut baseline_ebpf = load_xdp_tx_baseline()?;
    let mut hit = balancer(1 << 20)?;
    let mut fresh = balancer(1 << 20)?;
    // A small table kept full, so every new flow evicts one.
    let mut evicting = balancer(4096)?;
    let mut source_hashed = resolved(objects::BALANCER, 1 << 20, vip_scheduler::SOURCE_HASH)?;
    let mut dealt = resolved(objects::BALANCER, 1 << 20, vip_scheduler::SEQUENCE)?;
    let mut least = resolved(objects::BALANCER, 1 << 20, vip_scheduler::LEAST_CONNECTIONS)?;
    // The shipped flow table (one LRU list shared by all CPUs) against per-CPU LRU lists
    // (BPF_F_NO_COMMON_LRU), with every CPU inserting new flows at once.
    let mut shared_lru = balancer(1 << 20)?;
    ensure!(shared_lru.flow_table_flags()? == 0, "the shipped flow table is expected to have one LRU list");
    let mut percpu_lru = resolved(&with_flow_table_flags(BPF_F_NO_COMMON_LRU)?, 1 << 20, vip_scheduler::MAGLEV)?;
    ensure!(percpu_lru.flow_table_flags()? == BPF_F_NO_COMMON_LRU, "patching the flow table's flags did not take");
    let cpus = std::thread::available_parallelism()?.get();

    let hit4 = frames(IpAddr::V4(VIP4), 1, 1);
    let hit6 = frames(IpAddr::V6(VIP6), 1, 1);
    let hit4 = vec![hit4[0].clone(); o.packets];
    let hit6 = vec![hit6[0].clone(); o.packets];
    let hit4_tcp = vec![frames_of(Protocol::Tcp, IpAddr::V4(VIP4), 1, 1)[0].clone(); o.packets];
    let pass: Vec<Vec<u8>> =
        frames(IpAddr::V4(Ipv4Addr::new(198, 18, 9, 9)), 1, 1).into_iter().cycle().take(o.packets).collect();
    for warm in [&hit4[..1], &hit6[..1], &hit4_tcp[..1]] {
        round(hit.program()?, warm, XDP_TX)?;
    }
    round(evicting.program()?, &frames(IpAddr::V4(VIP4), 8192, 7), XDP_TX)?;
    let mut keyed = keyed()?;
    // One session, its client changing port with every datagram in the worst case: a session's
    // datagram never has a 5-tuple entry, so each looks its VIP up and its session's entry.
    let session_hit = sessions(7, 1).into_iter().cycle().take(o.packets).collect::<Vec<_>>();
    round(keyed.program()?, &session_hit[..1], XDP_TX)?;
    round(keyed.program()?, &hit6[..1], XDP_TX)?;
    let (mut quic, server_id) = quic()?;
    // A connection's short headers from one address: the 5-tuple's entry already names the
    // server, so each takes the VIP lookup, the server id's, and the flow's.
    let quic_hit = short_headers(server_id, 40_000, 0, o.packets);
    round(quic.program()?, &quic_hit[..1], XDP_TX)?;

    let mut paths = vec![
        Path { name: "xdp_tx_baseline", samples: vec![] },
        Path { name: "pass_not_vip", samples: vec![] },
        Path { name: "flow_hit_ipv4", samples: vec![] },
        Path { name: "flow_hit_ipv6", samples: vec![] },
        Path { name: "new_flow_ipv4", samples: vec![] },
        Path { name: "new_flow_ipv6", samples: vec![] },
        Path { name: "new_flow_ipv4_evicting", samples: vec![] },
        Path { name: "new_flow_all_cpus_shared_lru", samples: vec![] },
        Path { name: "new_flow_all_cpus_percpu_lru", samples: vec![] },
        Path { name: "new_flow_ipv4_source_hash", samples: vec![] },
        Path { name: "new_flow_ipv4_round_robin", samples: vec![] },
        Path { name: "new_flow_ipv4_least_conns", samples: vec![] },
        Path { name: "flow_hit_ipv4_tcp", samples: vec![] },
        Path { name: "session_hit_ipv4", samples: vec![] },
        Path { name: "new_session_ipv4", samples: vec![] },
        Path { name: "flow_hit_ipv6_beside_session_vip", samples: vec![] },
        Path { name: "quic_short_header_ipv4", samples: vec![] },
        Path { name: "quic_migrated_ipv4", samples: vec![] },
    ];
    for r in 0..o.rounds {
        let salt = 1000 + r as u32 * 7919;
        let new4 = frames(IpAddr::V4(VIP4), o.packets, salt);
        let new6 = frames(IpAddr::V6(VIP6), o.packets, salt);
        let evict = frames(IpAddr::V4(VIP4), o.packets, salt ^ 0x5555_5555);
        let baseline = program(&mut baseline_ebpf, "xdp_tx_baseline")?;
        paths[0].samples.push(round(baseline, &hit4, XDP_TX)?);
        paths[1].samples.push(round(hit.program()?, &pass, XDP_PASS)?);
        paths[2].samples.push(round(hit.program()?, &hit4, XDP_TX)?);
        paths[3].samples.push(round(hit.program()?, &hit6, XDP_TX)?);
        paths[4].samples.push(round(fresh.program()?, &new4, XDP_TX)?);
        paths[5].samples.push(round(fresh.program()?, &new6, XDP_TX)?);
        paths[6].samples.push(round(evicting.program()?, &evict, XDP_TX)?);
        let per_cpu: Vec<Vec<Vec<u8>>> =
            (0..cpus).map(|cpu| frames(IpAddr::V4(VIP4), o.packets, salt ^ (cpu as u32 + 1) << 20)).collect();
        paths[7].samples.push(concurrent_round(shared_lru.program()?, &per_cpu)?);
        paths[8].samples.push(concurrent_round(percpu_lru.program()?, &per_cpu)?);
        paths[9].samples.push(round(source_hashed.program()?, &new4, XDP_TX)?);
        paths[10].samples.push(round(dealt.program()?, &new4, XDP_TX)?);
        paths[11].samples.push(round(least.program()?, &new4, XDP_TX)?);
        paths[12].samples.push(round(hit.program()?, &hit4_tcp, XDP_TX)?);
        paths[13].samples.push(round(keyed.program()?, &session_hit, XDP_TX)?);
        paths[14].samples.push(round(keyed.program()?, &sessions(salt << 12, o.packets), XDP_TX)?);
        paths[15].samples.push(round(keyed.program()?, &hit6, XDP_TX)?);
        paths[16].samples.push(round(quic.program()?, &quic_hit, XDP_TX)?);
        // Every datagram from a port not seen before (a migration each): its entry is written.
        let migrated = short_headers(server_id, (salt as u16) ^ 0x8000, 1, o.packets);
        paths[17].samples.push(round(quic.program()?, &migrated, XDP_TX)?);
    }

    let json = report(&o, &paths);
    let recount = recount_cost(&mut least)?;
    let memory = flow_memory(&hit)?;
    let maglev = maglev()?;
    let tables = table_memory()?;
    if let Some(file) = o.json {
        let doc = serde_json::json!({ "method": "BPF_PROG_RUN repeat=1, kernel-reported duration", "rounds": o.rounds, "packets_per_round": o.packets, "paths": json, "recount": recount, "flow_memory": memory, "maglev": maglev, "table_memory": tables });
        write_json(&file, &doc)?;
    }
    Ok(())
}

/// Prints each path's medians against the baseline; returns them as JSON rows.
fn report(o: &Options, paths: &[Path]) -> Vec<serde_json::Value> {
    let baseline = paths[0].samples.clone();
    println!("XDP path cost, BPF_PROG_RUN repeat=1, {} rounds x {} packets", o.rounds, o.packets);
    println!("ns/packet: median of round means, including the kernel's fixed per-run timer overhead,");
    println!("which the baseline carries too; ratio and difference: median over rounds of each round's");
    println!("figure against the baseline round measured just before it (robust to machine drift)");
    println!("{:<30} {:>10} {:>12} {:>14}", "path", "ns/packet", "x baseline", "ns over base");
    let mut json = Vec::new();
    for p in paths {
        let m = median(p.samples.clone());
        let ratio = median(p.samples.iter().zip(&baseline).map(|(x, b)| x / b).collect());
        let over = median(p.samples.iter().zip(&baseline).map(|(x, b)| x - b).collect());
        println!("{:<30} {:>10.1} {:>12.2} {:>14.1}", p.name, m, ratio, over);
        json.push(serde_json::json!({
            "path": p.name,
            "median_ns": m,
            "median_ratio_to_baseline": ratio,
            "median_ns_over_baseline": over,
            "round_means_ns": p.samples,
        }));
    }
    json
}
