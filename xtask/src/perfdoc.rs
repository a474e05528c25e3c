//! `cargo xtask bench --write-docs`: docs/performance.md, written from the JSON the benchmarks
//! leave under target/bench/, so that no figure in it is typed by hand.

use std::{fmt::Write as _, path::Path};

use anyhow::Context as _;
use serde_json::Value;

use crate::perfplot::{self, Bar};

fn read(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (run `cargo xtask bench` first)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The ratio of a "net <= 2.2x minimal: ..." target.
fn net_target(target: &str) -> Option<f64> {
    target.strip_prefix("net <= ")?.split('x').next()?.parse().ok()
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Writes `doc` from the benchmark results in `results` (`xdp_live.json`, `xdp_paths.json`).
pub fn write(results: &Path, doc: &Path, command: &str) -> anyhow::Result<()> {
    let live = read(&results.join("xdp_live.json"))?;
    let paths = read(&results.join("xdp_paths.json"))?;
    let figure_dir = doc.parent().context("docs/performance.md has no directory")?;
    let cases = live["cases"].as_array().cloned().unwrap_or_default();
    let mut s = live_table(&live, command, &cases);
    s += &live_figure(&cases, figure_dir)?;
    s += &derived_table(&live);
    s += &stages_section(&cases, figure_dir)?;
    s += &paths_table(&paths);
    s += &paths_extras(&paths);
    s += &other_benches(results, &live);
    std::fs::write(doc, s).with_context(|| format!("writing {}", doc.display()))?;
    println!("written {}", doc.display());
    Ok(())
}

/// The title, and the live frames' table, case by case.
fn live_table(live: &Value, command: &str, cases: &[Value]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Performance\n");
    let _ = writeln!(
        s,
        "Written by `{command}` from its own measurements (target/bench/*.json); do not edit by hand. \
         The machines are shared and noisy: compare the ratios, which are measured side by side in one run.\n"
    );
    let _ = writeln!(s, "## Live frames, native XDP on a veth pair\n");
    let _ = writeln!(
        s,
        "A generator program driven by BPF_PROG_RUN with live frames sends through a veth pair to the \
         program under test, attached natively, which sends back to a sink (`tests/src/live.rs`). \
         ns: kernel BPF statistics of the program under test; Mpps: frames the sink received, in a second \
         pass with statistics off; net = case minus the minimal XDP_TX program of the same round and CPU \
         count. {} rounds x {} packets per CPU; medians over rounds.\n",
        live["rounds"], live["packets_per_cpu"]
    );
    let _ = writeln!(s, "| case | CPUs | ns | net ns | net / minimal | Mpps | Mpps / minimal | target |");
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for c in cases {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {} |",
            c["case"].as_str().unwrap_or(""),
            c["cpus"],
            num(&c["median_ns"]),
            num(&c["median_net_ns"]),
            num(&c["median_net_ratio"]),
            num(&c["median_mpps"]),
            num(&c["median_rate_ratio"]),
            c["target"].as_str().unwrap_or("")
        );
    }
    s
}

/// The figure: net cost over the minimal program's, each net target marked.
fn live_figure(cases: &[Value], figure_dir: &Path) -> anyhow::Result<String> {
    let mut s = String::new();
    let bars: Vec<Bar> = cases
        .iter()
        .filter_map(|c| {
            let name = c["case"].as_str()?;
            if name.starts_with("minimal") || name.starts_with("stop_after_") {
                return None;
            }
            let target = c["target"].as_str().and_then(net_target);
            Some(Bar { label: name.to_string(), value: num(&c["median_net_ratio"]), target })
        })
        .collect();
    perfplot::bars(
        &figure_dir.join("perf-live.png"),
        "Live frames: net ns per packet / minimal program's ns (black: target)",
        "net / minimal",
        &bars,
    )?;
    let net_targets: Vec<String> = cases
        .iter()
        .filter_map(|c| Some((c["case"].as_str()?, c["target"].as_str().filter(|t| t.starts_with("net"))?)))
        .map(|(name, target)| format!("{name}: {target}"))
        .collect();
    let _ = writeln!(
        s,
        "
![net cost per case over the minimal program's](perf-live.png)

Targets in the figure: {}.",
        net_targets.join("; ")
    );
    Ok(s)
}

/// Figures derived between cases of the same rounds.
fn derived_table(live: &Value) -> String {
    let mut s = String::new();
    let derived = live["derived"].as_array().cloned().unwrap_or_default();
    if !derived.is_empty() {
        let _ = writeln!(s, "\nBetween cases of the same rounds:\n");
        let _ = writeln!(s, "| figure | median | target |");
        let _ = writeln!(s, "| --- | ---: | --- |");
        for d in &derived {
            let met = if d["met"].as_bool() == Some(true) { "met" } else { "MISSED" };
            let _ = writeln!(
                s,
                "| {} | {:.2} | {} ({met}) |",
                d["what"].as_str().unwrap_or(""),
                num(&d["median_ratio"]),
                d["target"].as_str().unwrap_or("")
            );
        }
    }
    s
}

/// The ablation builds: the established IPv4 UDP path stage by stage.
fn stages_section(cases: &[Value], figure_dir: &Path) -> anyhow::Result<String> {
    let mut s = String::new();
    let stages: Vec<&Value> =
        cases.iter().filter(|c| c["case"].as_str().is_some_and(|n| n.starts_with("stop_after_"))).collect();
    if !stages.is_empty() {
        let _ = writeln!(s, "\n## The established IPv4 UDP path by stage\n");
        let _ = writeln!(
            s,
            "Builds of the balancer that stop after each stage (`cargo xtask bench --ablation`); a stage's \
             cost is the difference to the build before it.\n"
        );
        let _ = writeln!(s, "| stage | net ns through it | its cost |");
        let _ = writeln!(s, "| --- | ---: | ---: |");
        let whole = cases.iter().find(|c| c["case"] == "established_udp4");
        let mut before = 0.0;
        let mut bars = Vec::new();
        for c in stages.iter().copied().chain(whole) {
            let name = c["case"].as_str().unwrap_or("").trim_start_matches("stop_after_");
            let name = if name == "established_udp4" { "next hop and counters (whole path)" } else { name };
            let net = num(&c["median_net_ns"]);
            let _ = writeln!(s, "| {name} | {net:.1} | {:.1} |", net - before);
            bars.push(Bar { label: name.to_string(), value: (net - before).max(0.0), target: None });
            before = net;
        }
        perfplot::bars(
            &figure_dir.join("perf-stages.png"),
            "Established IPv4 UDP: each stage's cost, ns per packet",
            "ns",
            &bars,
        )?;
        let _ = writeln!(
            s,
            "
![each stage's cost](perf-stages.png)

No target per stage: the whole path's is the net \
             target above (established_udp4)."
        );
    }
    Ok(s)
}

/// Single `BPF_PROG_RUN` calls per path.
fn paths_table(paths: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## Single BPF_PROG_RUN calls\n");
    let _ = writeln!(
        s,
        "Each path through BPF_PROG_RUN with repeat = 1 (fresh input bytes every run), next to the minimal \
         program (`tests/benches/xdp_paths.rs`). The kernel's per-run time includes a fixed timer overhead \
         that the baseline carries too. {} rounds x {} packets.\n",
        paths["rounds"], paths["packets_per_round"]
    );
    let _ = writeln!(s, "| path | ns/packet | x baseline | ns over baseline |");
    let _ = writeln!(s, "| --- | ---: | ---: | ---: |");
    for p in paths["paths"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.2} | {:.1} |",
            p["path"].as_str().unwrap_or(""),
            num(&p["median_ns"]),
            num(&p["median_ratio_to_baseline"]),
            num(&p["median_ns_over_baseline"])
        );
    }
    s
}

/// The recount, the flow tables' memory, the Maglev builder and the tables' memory.
fn paths_extras(paths: &Value) -> String {
    let mut s = String::new();
    if let Some(r) = paths.get("recount") {
        let _ = writeln!(
            s,
            "\nThe agent's recount of active flows read {} flow-table entries in {:.1} ms.",
            r["entries"],
            num(&r["median_ms"])
        );
    }
    if let Some(m) = paths.get("flow_memory") {
        let met = if m["met"].as_bool() == Some(true) { "met" } else { "MISSED" };
        let _ = writeln!(
            s,
            "\n## Memory and Maglev\n\nIPv4 flow table: {} bytes for {} entries as the kernel accounts them, {:.1} B \
             per tracked flow (target <= 100 B: {met}); the IPv6 one (40-byte keys) {:.1} B per flow.\n",
            m["bytes"],
            m["entries"],
            num(&m["bytes_per_flow"]),
            num(&m["ipv6_bytes_per_flow"])
        );
    }
    if let Some(m) = paths.get("maglev") {
        let _ = writeln!(s, "| Maglev | figure | target |");
        let _ = writeln!(s, "| --- | ---: | --- |");
        for b in m["builds"].as_array().into_iter().flatten() {
            let ms = num(&b["median_ms"]);
            let target = match b["target_ms"].as_f64() {
                Some(t) => format!("<= {t} ms: {}", if ms <= t { "met" } else { "MISSED" }),
                None => String::new(),
            };
            let _ = writeln!(
                s,
                "| build, {} backends, {} entries | {ms:.2} ms | {target} |",
                b["backends"], b["table_size"]
            );
        }
        for d in m["disruption"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "| slots moved, {} (65537 entries) | {:.2}% | |",
                d["change"].as_str().unwrap_or(""),
                num(&d["moved_share"]) * 100.0
            );
        }
    }
    if let Some(t) = paths.get("table_memory") {
        let _ = writeln!(
            s,
            "\nThe VIPs' tables, as the kernel accounts them (chunks allocated as tables are written, both tables \
             of each VIP), with tables of {} entries:\n",
            t["table_size"]
        );
        let _ = writeln!(s, "| VIPs | table memory |");
        let _ = writeln!(s, "| ---: | ---: |");
        for p in t["points"].as_array().into_iter().flatten() {
            let _ = writeln!(s, "| {} | {:.1} MiB |", p["vips"], num(&p["bytes"]) / (1024.0 * 1024.0));
        }
        if let Some(ms) = t["read_back_ms"].as_f64() {
            let _ = writeln!(
                s,
                "\nReading the data plane's state back with all of them, every table whole, as the agent does once \
                 when it starts or adopts a data plane (`Balancer::current`; later changes work from its own \
                 copy): {ms:.1} ms."
            );
        }
    }
    s
}

/// The benchmarks of the agent and the lab: control latency, TCP throughput, the UDP proxy.
fn other_benches(results: &Path, live: &Value) -> String {
    let mut s = String::new();
    if let Ok(control) = read(&results.join("control_latency.json")) {
        let _ = writeln!(
            s,
            "\n## Control-plane latency\n\nIn the namespaced lab, a change sent to the agent's control socket until \
             the pinned backend record shows it (`tests/benches/control_latency.rs`), {} changes of each kind.\n",
            control["changes"]
        );
        let _ = writeln!(s, "| change | p50 ms | p99 ms | max ms | target |");
        let _ = writeln!(s, "| --- | ---: | ---: | ---: | --- |");
        for c in control["latency"].as_array().into_iter().flatten() {
            let met = if c["met"].as_bool() == Some(true) { "met" } else { "MISSED" };
            let _ = writeln!(
                s,
                "| {} | {:.2} | {:.2} | {:.2} | p99 <= 50 ms: {met} |",
                c["change"].as_str().unwrap_or(""),
                num(&c["p50_ms"]),
                num(&c["p99_ms"]),
                num(&c["max_ms"])
            );
        }
    }
    if let Ok(tcp) = read(&results.join("tcp_throughput.json")) {
        let met = if tcp["met"].as_bool() == Some(true) { "met" } else { "MISSED" };
        let _ = writeln!(
            s,
            "\n## TCP through the VIP\n\nIn the namespaced lab, the balancer native: iperf3 from the client, {} streams \
             x {} s, {} rounds alternated (`tests/benches/tcp_throughput.rs`). Through a VIP with one backend: {:.2} \
             Gbit/s; straight to that backend: {:.2} Gbit/s; {:.2}x (target >= 0.9x: {met}). Both paths share the \
             machine's two cores with the client and the server, and the VIP's path crosses the lab's bridge twice \
             more (client to balancer, balancer to backend).",
            tcp["streams"].as_str().unwrap_or(""),
            tcp["seconds"],
            tcp["rounds"],
            num(&tcp["median_via_vip_gbps"]),
            num(&tcp["median_direct_gbps"]),
            num(&tcp["ratio"])
        );
    }
    if let Ok(proxy) = read(&results.join("udp_proxy.json")) {
        let balancer = live["cases"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["case"] == "established_udp4_2cpu")
            .map(|c| num(&c["median_mpps"]) * 1e6);
        let _ = writeln!(
            s,
            "\n## Against a userspace UDP proxy\n\nnginx `stream` (2 workers) between a sender and a counting sink on \
             the loopback of a private namespace, all on the same two cores (`tests/benches/udp_proxy.rs`): the highest \
             offered rate that loses at most 1%, each rate held {} s (the sender alone sends {:.0}/s). The balancer's \
             figure is its delivered rate on two CPUs in the live-frames pipeline above (established IPv4 UDP), \
             generator and sink on the same cores.\n",
            proxy["seconds_per_rate"],
            num(&proxy["sender_per_second"])
        );
        let _ = writeln!(s, "| nginx configuration | nginx datagrams/s | balancer / nginx | target |");
        let _ = writeln!(s, "| --- | ---: | ---: | --- |");
        for p in proxy["proxies"].as_array().into_iter().flatten() {
            let served = num(&p["served_per_second"]);
            let (ratio, verdict) = match balancer {
                Some(b) if served > 0.0 => {
                    (format!("{:.0}x", b / served), if b / served >= 100.0 { "met" } else { "MISSED" })
                }
                _ => ("-".to_string(), "not measured"),
            };
            let _ = writeln!(
                s,
                "| {} | {served:.0} | {ratio} | >= 100x: {verdict} |",
                p["config"].as_str().unwrap_or("").replace('_', " ")
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::net_target;

    #[test]
    fn net_targets_are_read_from_the_bench_verdicts() {
        assert_eq!(net_target("net <= 2.2x minimal: met"), Some(2.2));
        assert_eq!(net_target("net <= 22x minimal: MISSED"), Some(22.0));
        assert_eq!(net_target("rate >= 0.75x minimal: MISSED"), None);
        assert_eq!(net_target(""), None);
    }
}
