//! Health checks at scale: what 4000 (VIP, backend) checks at a 200 ms interval cost the agent.
//! In the namespaced lab the agent runs 40 UDP VIPs with the same 100 backends each (addresses
//! answered by responders of this process, see `lb_tests::scale`), in two cases: every VIP with
//! the same check (the agent runs one probe per backend, 100 in all, and counts each outcome for
//! the 40 pairs) and every VIP with its own payload (4000 probes). Once every check has
//! reported, the agent's CPU time (user + system, all threads, from /proc) is read over
//! `--windows` windows of `--seconds` each (the lab's side of the veth runs its NAPI in a
//! kernel thread, so the agent is not charged for delivering its probes into the other
//! namespaces). Prints the median share of one core against the target (<= 10%), the probes
//! answered per second and the agent's thread count.
//!
//! Usage: `cargo bench -p lb-tests --bench health_scale -- [--windows N] [--seconds S] [--json FILE]`
//! (as root; `cargo xtask bench` does this).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use lb_tests::{
    bench::write_json,
    e2e::{CONTROL_SOCKET, EQUAL, Env, Health, in_lab},
    scale::{self, Responders},
};
use lb_userspace::agent::{
    control::{self, Request},
    status::Status,
};

const TARGET_SHARE: f64 = 0.10;
/// The check of VIP `v`: the same for every VIP, or (`distinct`) with the VIP's own payload,
/// so that no two (VIP, backend) pairs can share a probe.
fn check(v: usize, distinct: bool) -> String {
    let payload = if distinct { format!("6c62{v:04x}") } else { "6c62".to_string() };
    format!(
        "kind = \"udp\"\npayload_hex = \"{payload}\"\nexpect_prefix_hex = \"6c62\"\ninterval_ms = 200\n\
         timeout_ms = 50\nrise = 2\nfall = 2"
    )
}

struct Options {
    windows: usize,
    seconds: u64,
    json: Option<String>,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options { windows: 5, seconds: 3, json: None };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--windows" => o.windows = args.next().context("--windows needs a number")?.parse()?,
            "--seconds" => o.seconds = args.next().context("--seconds needs a number")?.parse()?,
            "--json" => o.json = Some(args.next().context("--json needs a file")?),
            "--bench" => {} // passed by cargo bench
            other => bail!("unknown argument {other}"),
        }
    }
    ensure!(o.windows > 0 && o.seconds > 0, "--windows and --seconds must be positive");
    Ok(o)
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    let doc = in_lab("bench-health", Health::default(), |env| {
        let responders = Responders::start()?;
        let measured = measure(env, &responders, &o);
        responders.stop()?;
        measured
    })?;
    if let Some(file) = &o.json {
        write_json(file, &doc)?;
    }
    Ok(())
}

fn status() -> anyhow::Result<Status> {
    Ok(control::request(Path::new(CONTROL_SOCKET), &Request::Status)?.into_answer()?)
}

/// Both cases: VIPs sharing their probes, and every pair probing on its own.
fn measure(env: &mut Env, responders: &Responders, o: &Options) -> anyhow::Result<serde_json::Value> {
    // A veth delivers what the agent sends inside the agent's own send(): the bridge, the
    // backend's stack and the responder's wake-up would all count as the agent's CPU time. With
    // NAPI threaded on the veth's peer, sending ends at the veth's queue, as it ends at a NIC's
    // ring on a real host, and the lab's side runs in its own kernel thread.
    let port = lb_lab::BALANCER.trim_start_matches("lblab-");
    // `ip netns exec` mounts the namespace's own /sys, where the port is.
    lb_lab::run(std::process::Command::new("ip").args([
        "netns",
        "exec",
        lb_lab::SWITCH,
        "sh",
        "-c",
        &format!("echo 1 > /sys/class/net/{port}/threaded"),
    ]))?;
    let checks = scale::VIPS * scale::ADDRESSES;
    println!(
        "Health checks at scale: {checks} (VIP, backend) UDP checks every 200 ms; agent CPU, share of one core \
         (median of {} windows of {} s; target <= {:.0}%):",
        o.windows,
        o.seconds,
        TARGET_SHARE * 100.0
    );
    let mut rows = Vec::new();
    for distinct in [false, true] {
        rows.push(measure_case(env, responders, o, distinct)?);
    }
    Ok(serde_json::json!({ "checks": checks, "interval_ms": 200, "cases": rows }))
}

fn measure_case(
    env: &mut Env,
    responders: &Responders,
    o: &Options,
    distinct: bool,
) -> anyhow::Result<serde_json::Value> {
    env.health.more_vips = scale::vips_toml(|v| check(v, distinct));
    env.run_agent(&EQUAL)?;
    let checks = scale::VIPS * scale::ADDRESSES;
    lb_lab::wait_until(Duration::from_secs(30), "every check to report", || {
        status().is_ok_and(|s| {
            s.backends.iter().filter(|b| b.decision.vip.starts_with("scale") && b.check_latency_ms.is_some()).count()
                == checks
        })
    })?;
    let pid = env.agent.as_ref().context("no agent")?.id();
    // The lab's side on the other core, as if it were another host: the agent on CPU 0, the
    // veth's NAPI thread and this process (the responders) on CPU 1, so that waking them does
    // not preempt the agent.
    let port = lb_lab::BALANCER.trim_start_matches("lblab-");
    let napi = lb_lab::run(std::process::Command::new("pgrep").arg(format!("^napi/{port}-")))?;
    for (task, cpu) in std::iter::once((pid.to_string(), "0"))
        .chain(napi.split_whitespace().map(|t| (t.to_string(), "1")))
        .chain(std::iter::once((std::process::id().to_string(), "1")))
    {
        lb_lab::run(std::process::Command::new("taskset").args(["-a", "-p", "-c", cpu, &task]))?;
    }
    let mut shares = Vec::new();
    let answered_before = responders.answered();
    let measuring = Instant::now();
    for _ in 0..o.windows {
        shares.push(scale::cpu_share(pid, Duration::from_secs(o.seconds))?);
    }
    let probes_per_second = (responders.answered() - answered_before) as f64 / measuring.elapsed().as_secs_f64();
    let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim().to_string()))
        .unwrap_or_default();
    shares.sort_by(f64::total_cmp);
    let median = shares[shares.len() / 2];
    let met = median <= TARGET_SHARE;
    let case = if distinct { "every pair its own probe" } else { "VIPs share a backend's probe" };
    println!(
        "  {case:<28} {:5.1}% (min {:.1}%, max {:.1}%) {:<6} {probes_per_second:6.0} probes/s, {threads} agent threads",
        median * 100.0,
        shares[0] * 100.0,
        shares[shares.len() - 1] * 100.0,
        if met { "met" } else { "MISSED" }
    );
    Ok(serde_json::json!({
        "case": case,
        "cpu_share_median": median,
        "cpu_share_min": shares[0],
        "cpu_share_max": shares[shares.len() - 1],
        "probes_per_second": probes_per_second,
        "agent_threads": threads,
        "met": met,
    }))
}
