//! Control-plane latency: how long a live change takes to reach the data plane. In the namespaced
//! lab, with the agent running on its lab configuration, an operator's change goes in through the
//! control socket (`lb backend state`, `lb backend weight`) while this process polls the pinned
//! backend record until the change shows there. Backend down and up, weight up and down, each
//! `--changes` times; p50, p99 and the worst, against the target (p99 <= 50 ms).
//!
//! Usage: `cargo bench -p lb-tests --bench control_latency -- [--changes N] [--json FILE]`
//! (as root; `cargo xtask bench` does this).

use std::{
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use lb_common::{addr::to_key, backend::Backend, family, vip::VipKey};
use lb_tests::{
    bench::write_json,
    e2e::{CONTROL_SOCKET, Health, in_lab},
};
use lb_userspace::{
    agent::control::{self, Request},
    config::AdminState,
    dataplane::BalancerMaps,
    dataplane::pins::PinDir,
};

/// Where a change must have shown by, or the run fails.
const LIMIT: Duration = Duration::from_secs(5);
const TARGET_P99_MS: f64 = 50.0;

struct Options {
    changes: usize,
    json: Option<String>,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options { changes: 100, json: None };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--changes" => o.changes = args.next().context("--changes needs a number")?.parse()?,
            "--json" => o.json = Some(args.next().context("--json needs a file")?),
            "--bench" => {} // passed by cargo bench
            other => bail!("unknown argument {other}"),
        }
    }
    ensure!(o.changes > 0, "--changes must be positive");
    Ok(o)
}

/// The id of the web VIP's record for backend `address`, from the pinned backends map.
fn backend_id(maps: &BalancerMaps, address: IpAddr) -> anyhow::Result<u32> {
    let (fam, addr) = to_key(address);
    let web = VipKey::new(family::IPV4, to_key(lb_lab::vip(false)).1, 80, 6).tag();
    maps.current()?
        .backends
        .iter()
        .find(|(_, b)| b.is_assigned() && b.family == fam && b.addr == addr && b.vip_tag == web)
        .map(|(id, _)| *id)
        .with_context(|| format!("no backend record of the web VIP for {address}"))
}

/// Sends `request` on another thread and returns how long until `shows` holds for the record
/// `id`, polled from here.
fn time_change(
    maps: &BalancerMaps,
    id: u32,
    request: Request,
    shows: impl Fn(&Backend) -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let sender = std::thread::spawn(move || control::request(Path::new(CONTROL_SOCKET), &request));
    let took = loop {
        if shows(&maps.backend(id)?) {
            break started.elapsed();
        }
        if started.elapsed() > LIMIT {
            bail!("the change did not reach the data plane within {LIMIT:?}");
        }
        std::hint::spin_loop();
    };
    let response = sender.join().map_err(|_| anyhow::anyhow!("the request thread panicked"))??;
    if let Some(e) = response.error {
        bail!("the agent refused the change: {e}");
    }
    Ok(took)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    let doc = in_lab("bench-control", Health::default(), |_| measure(&o))?;
    if let Some(file) = &o.json {
        write_json(file, &doc)?;
    }
    Ok(())
}

fn measure(o: &Options) -> anyhow::Result<serde_json::Value> {
    let maps = BalancerMaps::open_pinned(&PinDir::instance("lab"))?;
    let address = IpAddr::V4(lb_lab::backend_v4(0));
    let id = backend_id(&maps, address)?;
    let (vip, backend) = ("web".to_string(), address.to_string());
    let mut kinds: Vec<(&str, Vec<f64>)> = vec![("down", vec![]), ("up", vec![]), ("weight", vec![])];
    for i in 0..o.changes {
        let state = |state| Request::BackendState { vip: vip.clone(), address: backend.clone(), state };
        let down = time_change(&maps, id, state(AdminState::Disabled), |b| !b.keeps_flows())?;
        let up = time_change(&maps, id, state(AdminState::Up), Backend::keeps_flows)?;
        // Weights alternate between 2 and 1, so that every request changes the record.
        let weight = if i % 2 == 0 { 2 } else { 1 };
        let request = Request::BackendWeight { vip: vip.clone(), address: backend.clone(), weight };
        let reweighted = time_change(&maps, id, request, |b| b.weight == weight as u32)?;
        for (k, took) in [(0, down), (1, up), (2, reweighted)] {
            kinds[k].1.push(took.as_secs_f64() * 1e3);
        }
    }
    println!(
        "Control-plane latency, request to backend record, {} changes each (target p99 <= {TARGET_P99_MS} ms):",
        o.changes
    );
    let mut out = Vec::new();
    for (kind, mut ms) in kinds {
        ms.sort_by(f64::total_cmp);
        let (p50, p99, max) = (percentile(&ms, 0.5), percentile(&ms, 0.99), ms[ms.len() - 1]);
        let met = p99 <= TARGET_P99_MS;
        println!(
            "  {kind:<7} p50 {p50:6.2} ms  p99 {p99:6.2} ms  max {max:6.2} ms  {}",
            if met { "met" } else { "MISSED" }
        );
        out.push(serde_json::json!({ "change": kind, "p50_ms": p50, "p99_ms": p99, "max_ms": max, "met": met }));
    }
    Ok(serde_json::json!({ "changes": o.changes, "latency": out }))
}
