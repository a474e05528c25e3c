//! `cargo xtask lab up|down` and `cargo xtask demo [--fleet]`: the balancer in the namespaced
//! lab (`lb-lab`) with real servers and real clients; with `--fleet`, two balancers behind a
//! router that learns the VIPs from them over BGP.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, bail};
use lb_lab::{BACKEND_NAMES, CLIENT, FAR_CLIENT, INSTANCE, Lab, ROUTER, VIP_V4, VIP_V6, fleet::MEMBERS, ns};

use crate::cmd;

/// Requests of each kind the demo sends.
const DEMO_REQUESTS: usize = 30;

pub fn lab() -> anyhow::Result<Lab> {
    if !cmd::is_root() {
        bail!("the lab creates network namespaces and loads XDP programs: run as root");
    }
    cmd::run(cmd::cargo().args(["build", "--quiet", "-p", "lb-userspace", "--bin", "lb"]))?;
    let root = cmd::workspace_root();
    Ok(Lab::new(&root.join("target/lab"), &root.join("target/debug/lb")))
}

pub fn up() -> anyhow::Result<()> {
    let lab = lab()?;
    lab.up()?;
    println!("lab up: namespaces {CLIENT}, lblab-lb, lblab-be1..4 on bridge namespace lblab-sw");
    println!("run the balancer:  nsenter --net=/run/netns/lblab-lb target/debug/lb run --config config/lab.toml");
    println!("send traffic:      ip netns exec {CLIENT} curl http://{VIP_V4}/");
    Ok(())
}

pub fn down() -> anyhow::Result<()> {
    lab()?.down();
    println!("lab down");
    Ok(())
}

pub fn demo() -> anyhow::Result<()> {
    let lab = lab()?;
    let result = demo_in(&lab);
    lab.down();
    result?;
    burst()
}

/// Packets per CPU of the demo's closing burst (well under a second per pass here).
const BURST_PACKETS: &str = "1000000";

/// The data plane's speed, as the lab's clients cannot show it: a bounded burst of live frames
/// through the balancer in native mode on a veth pair of its own (the live benchmark, one round,
/// established UDP flows), next to the minimal `XDP_TX` program measured the same way.
fn burst() -> anyhow::Result<()> {
    println!("\n== a burst of live frames through the balancer, next to a minimal XDP_TX program");
    cmd::run(cmd::cargo().args(["bench", "--profile", "dev", "-p", "lb-tests", "--bench", "xdp_live", "--"]).args([
        "--rounds",
        "1",
        "--packets",
        BURST_PACKETS,
        "--only",
        "established_udp4,established_udp4_2cpu",
    ]))
}

fn demo_in(lab: &Lab) -> anyhow::Result<()> {
    println!("== lab up");
    lab.up()?;
    let config = cmd::workspace_root().join("config/lab.toml");
    let log = lab.dir.join("lb.log");
    let _ = std::fs::remove_file(&log);
    println!("== lb run --config {}", config.display());
    let agent = lab.start_agent(&config, &log)?;
    // Health checks settle (rise) before traffic.
    std::thread::sleep(Duration::from_secs(1));
    let traffic = send_traffic();
    let stats = cmd::output(std::process::Command::new(&lab.lb).args(["stats", "--instance", INSTANCE]));
    let status = cmd::output(std::process::Command::new(&lab.lb).args(["status", "--instance", INSTANCE]));
    lab.stop_agent(agent)?;
    let tally = traffic;

    println!(
        "\n== which backend answered ({DEMO_REQUESTS} requests each, each a new flow; be4 is the lab's spare, not in lab.toml)"
    );
    print!("{:<34}", "service");
    for b in BACKEND_NAMES {
        print!("{b:>6}");
    }
    println!("{:>8}", "failed");
    let mut failures = 0;
    for (service, counts) in &tally {
        print!("{service:<34}");
        for b in BACKEND_NAMES {
            print!("{:>6}", counts.get(b).copied().unwrap_or(0));
        }
        let failed = counts.get("failed").copied().unwrap_or(0);
        failures += failed;
        println!("{failed:>8}");
    }
    println!(
        "\n== lb status --instance {INSTANCE} (from the agent)\n{}",
        status.unwrap_or_else(|| "(unavailable)".into())
    );
    println!(
        "== lb stats --instance {INSTANCE} (from the pinned maps)\n{}",
        stats.unwrap_or_else(|| "(unavailable)".into())
    );
    println!("agent log: {}", log.display());
    if failures > 0 {
        bail!("{failures} requests failed");
    }
    Ok(())
}

/// Service -> answering backend (or "failed") -> count.
fn send_traffic() -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut tally: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let services = [
        (
            format!("http://{VIP_V4}/ (curl)"),
            vec!["curl".to_string(), "-s".into(), "--max-time".into(), "3".into(), format!("http://{VIP_V4}/")],
        ),
        (
            format!("http://[{VIP_V6}]/ (curl)"),
            vec![
                "curl".into(),
                "-s".into(),
                "-g".into(),
                "--max-time".into(),
                "3".into(),
                format!("http://[{VIP_V6}]/"),
            ],
        ),
        (format!("dns {VIP_V4} whoami.lab (dig)"), dig(&VIP_V4.to_string())),
        (format!("dns {VIP_V6} whoami.lab (dig)"), dig(&VIP_V6.to_string())),
    ];
    for (service, command) in services {
        let counts = tally.entry(service).or_default();
        for _ in 0..DEMO_REQUESTS {
            let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
            let answer = ns(CLIENT, &command[0], &args).map(|out| out.trim().trim_matches('"').to_string());
            let key = match answer {
                Ok(a) if BACKEND_NAMES.contains(&a.as_str()) => a,
                _ => "failed".to_string(),
            };
            *counts.entry(key).or_default() += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    tally
}

fn dig(server: &str) -> Vec<String> {
    ["dig", "+short", "+time=2", "+tries=1", &format!("@{server}"), "whoami.lab", "TXT"]
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// New requests the fleet demo sends in each phase.
const FLEET_REQUESTS: usize = 60;

pub fn demo_fleet() -> anyhow::Result<()> {
    let lab = lab()?;
    let mut agents = Vec::new();
    let result = demo_fleet_in(&lab, &mut agents);
    for agent in agents.into_iter().flatten() {
        let _ = lab.stop_agent(agent);
    }
    lab.down();
    result
}

fn demo_fleet_in(lab: &Lab, agents: &mut Vec<Option<std::process::Child>>) -> anyhow::Result<()> {
    println!("== lab up, with a router (BIRD, AS 65000) and two balancers (BIRD, AS 65010) on its segment");
    lab.up()?;
    lab.fleet_up()?;
    let template = cmd::workspace_root().join("config/fleet.toml");
    for (i, member) in MEMBERS.iter().enumerate() {
        let config = lab.member_config(&template, i)?;
        let log = lab.member_log(i);
        let _ = std::fs::remove_file(&log);
        println!("== {}: lb run --config {}", member.instance, config.display());
        agents.push(Some(lab.start_member_agent(i, &config, &log)?));
    }
    let vip = std::net::IpAddr::V4(VIP_V4);
    let both: Vec<std::net::IpAddr> = MEMBERS.iter().map(|m| m.v4.into()).collect();
    lab.wait_for_next_hops(vip, &both, Duration::from_secs(30))?;
    println!("\n== the router's route to {VIP_V4} (learnt over BGP, ECMP over both members)");
    print!("{}", ns(ROUTER, "ip", &["route", "show", &VIP_V4.to_string()])?);
    let members_line = |lab: &Lab, label: &str| -> anyhow::Result<String> {
        let before = new_flows(lab)?;
        let failed = far_requests(FLEET_REQUESTS);
        let after = new_flows(lab)?;
        Ok(format!("{label:<44}{:>10}{:>10}{:>8}", after[0] - before[0], after[1] - before[1], failed))
    };
    let mut summary =
        vec![format!("{:<44}{:>10}{:>10}{:>8}", "phase (60 new connections each)", "fleet-a", "fleet-b", "failed")];
    summary.push(members_line(lab, "both members announce")?);

    println!("\n== lb fleet diff (the members' tables)");
    let sockets: Vec<String> = MEMBERS.iter().map(|m| format!("/run/lb/{}.sock", m.instance)).collect();
    print!(
        "{}",
        cmd::output(std::process::Command::new(&lab.lb).args(["fleet", "diff", &sockets[0], &sockets[1]]))
            .unwrap_or_default()
    );
    println!("\n== lb status --instance fleet-a");
    print!(
        "{}",
        cmd::output(std::process::Command::new(&lab.lb).args(["status", "--instance", "fleet-a"])).unwrap_or_default()
    );

    println!("\n== lb node drain --instance fleet-a --grace 10");
    let drained = std::process::Command::new(&lab.lb)
        .args(["node", "drain", "--instance", "fleet-a", "--grace", "10"])
        .status()?;
    print!("{}", ns(ROUTER, "ip", &["route", "show", &VIP_V4.to_string()])?);
    summary.push(members_line(lab, "fleet-a drained")?);
    println!("\n== lb node undrain --instance fleet-a");
    cmd::run(std::process::Command::new(&lab.lb).args(["node", "undrain", "--instance", "fleet-a"]))?;
    lab.wait_for_next_hops(vip, &both, Duration::from_secs(30))?;
    summary.push(members_line(lab, "fleet-a undrained")?);

    println!("\n== fleet-b dies the hard way: its agent SIGKILLed, its link down");
    if let Some(mut agent) = agents.get_mut(1).and_then(Option::take) {
        agent.kill()?;
        agent.wait()?;
    }
    lab.member_link(1, false)?;
    let detection = lab.wait_for_next_hops(vip, &both[..1], Duration::from_secs(10))?;
    println!("the router stopped using fleet-b {} ms after its link went down (BFD)", detection.as_millis());
    summary.push(members_line(lab, "fleet-b dead")?);

    println!("\n== summary: new flows per member, requests that failed");
    for line in &summary {
        println!("{line}");
    }
    println!("agent logs: {} and {}", lab.member_log(0).display(), lab.member_log(1).display());
    let failed: usize = summary[1..].iter().filter_map(|l| l.split_whitespace().last()?.parse::<usize>().ok()).sum();
    if failed > 0 || !drained.success() {
        bail!("{failed} requests failed{}", if drained.success() { "" } else { "; the drain did not complete" });
    }
    Ok(())
}

/// New flows each member's data plane counted, from `lb stats --json`.
fn new_flows(lab: &Lab) -> anyhow::Result<Vec<u64>> {
    MEMBERS
        .iter()
        .map(|m| {
            let out =
                cmd::output(std::process::Command::new(&lab.lb).args(["stats", "--instance", m.instance, "--json"]))
                    .with_context(|| format!("lb stats --instance {}", m.instance))?;
            let stats: serde_json::Value = serde_json::from_str(&out)?;
            Ok(stats["vips"].as_array().map_or(0, |vips| vips.iter().filter_map(|v| v["new_flows"].as_u64()).sum()))
        })
        .collect()
}

/// `count` new HTTP connections from the far client; how many failed.
fn far_requests(count: usize) -> usize {
    (0..count)
        .filter(|_| {
            ns(FAR_CLIENT, "curl", &["-s", "--max-time", "3", &format!("http://{VIP_V4}/")])
                .map_or(true, |answer| !BACKEND_NAMES.contains(&answer.trim()))
        })
        .count()
}
