//! `cargo xtask lab up|down` and `cargo xtask demo`: the balancer in the namespaced lab
//! (`lb-lab`) with real servers and real clients.

use std::{collections::BTreeMap, time::Duration};

use anyhow::bail;
use lb_lab::{BACKEND_NAMES, CLIENT, INSTANCE, Lab, VIP_V4, VIP_V6, ns};

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
