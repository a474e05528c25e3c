//! Real TCP through the VIP against the same traffic straight to the backend, in the namespaced
//! lab with the balancer native: iperf3 (4 streams) from the client to a VIP with one backend,
//! then to that backend's own address, alternated over rounds; the ratio of the medians against
//! the target (>= 0.9).
//!
//! Usage: `cargo bench -p lb-tests --bench tcp_throughput -- [--rounds N] [--seconds N] [--json FILE]`
//! (as root; `cargo xtask bench` does this).

use std::{net::IpAddr, path::Path};

use anyhow::{Context as _, bail, ensure};
use lb_lab::{BACKENDS, CLIENT, VIP_V4, backend_v4, ns};
use lb_tests::{
    bench::{median, write_json},
    e2e::{CONTROL_SOCKET, Health, in_lab},
};
use lb_userspace::agent::control::{self, Request};

const PORT: u16 = 5201;
const STREAMS: &str = "4";
const TARGET: f64 = 0.9;

struct Options {
    rounds: usize,
    seconds: u32,
    json: Option<String>,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options { rounds: 3, seconds: 4, json: None };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => o.rounds = args.next().context("--rounds needs a number")?.parse()?,
            "--seconds" => o.seconds = args.next().context("--seconds needs a number")?.parse()?,
            "--json" => o.json = Some(args.next().context("--json needs a file")?),
            "--bench" => {} // passed by cargo bench
            other => bail!("unknown argument {other}"),
        }
    }
    ensure!(o.rounds > 0 && o.seconds > 0, "--rounds and --seconds must be positive");
    Ok(o)
}

fn ask(request: Request) -> anyhow::Result<()> {
    let response = control::request(Path::new(CONTROL_SOCKET), &request)?;
    match response.error {
        Some(e) => bail!("the agent refused {request:?}: {e}"),
        None => Ok(()),
    }
}

/// Gbit/s the server received from one iperf3 run of the client to `to`.
fn iperf(to: IpAddr, seconds: u32) -> anyhow::Result<f64> {
    let out = ns(
        CLIENT,
        "iperf3",
        &["-c", &to.to_string(), "-p", &PORT.to_string(), "-P", STREAMS, "-t", &seconds.to_string(), "-J"],
    )?;
    let report: serde_json::Value = serde_json::from_str(&out).context("iperf3's JSON report")?;
    let bits = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 reported no received rate: {}", report["error"]))?;
    Ok(bits / 1e9)
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    let doc = in_lab("bench-tcp", Health::default(), |_| {
        let result = measure(&o);
        // The server daemonized in the backend's namespace, which it would outlive.
        let _ = ns(BACKENDS[0], "pkill", &["-f", "iperf3 -s"]);
        result
    })?;
    if let Some(file) = &o.json {
        write_json(file, &doc)?;
    }
    Ok(())
}

fn measure(o: &Options) -> anyhow::Result<serde_json::Value> {
    // A VIP of its own with the first backend alone, so both paths end at the same server.
    let backend = backend_v4(0);
    ask(Request::VipAdd {
        name: "iperf".into(),
        address: VIP_V4.to_string(),
        port: i64::from(PORT),
        protocol: "tcp".into(),
        table_size: None,
    })?;
    ask(Request::BackendAdd { vip: "iperf".into(), address: backend.to_string(), weight: None })?;
    ns(BACKENDS[0], "iperf3", &["-s", "-D", "-p", &PORT.to_string()])?;
    lb_lab::wait_until(std::time::Duration::from_secs(5), "iperf3 to listen", || {
        ns(BACKENDS[0], "ss", &["-Htln", &format!("sport = :{PORT}")]).is_ok_and(|out| !out.trim().is_empty())
    })?;
    let (mut via_vip, mut direct) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        // Order alternated per round, so that drift hits both alike.
        for first in [round % 2 == 0, round % 2 != 0] {
            if first {
                via_vip.push(iperf(IpAddr::V4(VIP_V4), o.seconds)?);
            } else {
                direct.push(iperf(IpAddr::V4(backend), o.seconds)?);
            }
        }
    }
    let (vip_gbps, direct_gbps) = (median(via_vip.clone()), median(direct.clone()));
    let ratio = vip_gbps / direct_gbps;
    let met = ratio >= TARGET;
    println!(
        "TCP, iperf3 {STREAMS} streams x {} s, {} rounds: through the VIP {vip_gbps:.2} Gbit/s, straight to the \
         backend {direct_gbps:.2} Gbit/s: {ratio:.2}x (target >= {TARGET}: {})",
        o.seconds,
        o.rounds,
        if met { "met" } else { "MISSED" }
    );
    Ok(serde_json::json!({
        "streams": STREAMS, "seconds": o.seconds, "rounds": o.rounds,
        "via_vip_gbps": via_vip, "direct_gbps": direct,
        "median_via_vip_gbps": vip_gbps, "median_direct_gbps": direct_gbps, "ratio": ratio, "met": met,
    }))
}
