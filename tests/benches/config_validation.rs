//! Configuration validation: how long `Config::load` takes on a large valid file (2 MB: some
//! 480 VIPs with 28 backends each, every backend with its own health check) and how long it
//! takes to refuse a 100 MB one, each against the target (under a second). Host only, no root.
//!
//! Usage: `cargo bench -p lb-tests --bench config_validation -- [--rounds N] [--json FILE]`
//! (`cargo xtask bench` does this).

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use lb_tests::bench::write_json;
use lb_userspace::config::Config;

const TARGET: Duration = Duration::from_secs(1);
/// Backends of each VIP of the large configuration (so that 2 MB stays under 512 VIPs).
const BACKENDS_PER_VIP: usize = 28;

/// A valid configuration of at least `bytes` bytes.
fn large_config(bytes: usize) -> String {
    let mut text = String::from(
        "[instance]\nname = \"big\"\ninterfaces = [\"eth0\"]\nencap_source_v4 = \"198.18.200.0/24\"\n\
         encap_source_v6 = \"fd00:200::/112\"\n",
    );
    let mut v = 0;
    while text.len() < bytes {
        let _ = write!(
            text,
            "\n[[vip]]\nname = \"service-{v}\"\naddress = \"198.18.{}.{}\"\nport = 443\nprotocol = \"tcp\"\n\
             table_size = 1021\n[vip.health]\nkind = \"http\"\npath = \"/healthz\"\ninterval_ms = 2000\n",
            100 + v / 250,
            v % 250 + 1
        );
        for b in 0..BACKENDS_PER_VIP {
            let _ = write!(
                text,
                "[[vip.backend]]\naddress = \"198.19.{}.{}\"\nweight = {}\n[vip.backend.health]\nkind = \"tcp\"\n\
                 port = {}\ninterval_ms = 1000\ntimeout_ms = 300\nrise = 3\nfall = 2\n",
                v % 32,
                b + 1,
                1 + b % 4,
                8000 + b
            );
        }
        v += 1;
    }
    text
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut rounds = 5;
    let mut json = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => rounds = args.next().context("--rounds needs a number")?.parse()?,
            "--json" => json = Some(args.next().context("--json needs a file")?),
            "--bench" => {} // passed by cargo bench
            other => bail!("unknown argument {other}"),
        }
    }
    ensure!(rounds > 0, "--rounds must be positive");
    let dir = std::env::temp_dir().join(format!("lb-config-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let valid = dir.join("large.toml");
    let text = large_config(2 << 20);
    std::fs::write(&valid, &text)?;
    let huge = dir.join("huge.toml");
    // Sparse: 100 MB that the agent must refuse without reading.
    std::fs::File::create(&huge)?.set_len(100 << 20)?;
    let mut load_times = Vec::new();
    let mut refuse_times = Vec::new();
    let mut vips = 0;
    for _ in 0..rounds {
        let started = Instant::now();
        let config = Config::load(&valid).context("the large configuration is valid")?;
        load_times.push(started.elapsed());
        vips = config.vips.len();
        let started = Instant::now();
        let refused = Config::load(&huge).expect_err("a 100 MB file is refused");
        refuse_times.push(started.elapsed());
        ensure!(refused.to_string().contains("is larger than"), "{refused}");
    }
    std::fs::remove_dir_all(&dir)?;
    let (load, refuse) = (median(load_times), median(refuse_times));
    let verdict = |d: Duration| if d <= TARGET { "met" } else { "MISSED" };
    println!("Configuration validation (median of {rounds}; target < 1 s each):");
    println!(
        "  valid, {:.1} MB ({vips} VIPs, {} (VIP, backend) pairs): {:8.1} ms  {}",
        text.len() as f64 / 1e6,
        vips * BACKENDS_PER_VIP,
        load.as_secs_f64() * 1e3,
        verdict(load)
    );
    println!("  100 MB file refused:            {:8.3} ms  {}", refuse.as_secs_f64() * 1e3, verdict(refuse));
    if let Some(file) = json {
        write_json(
            &file,
            &serde_json::json!({
                "valid_bytes": text.len(),
                "valid_vips": vips,
                "valid_load_ms": load.as_secs_f64() * 1e3,
                "huge_refused_ms": refuse.as_secs_f64() * 1e3,
                "met": load <= TARGET && refuse <= TARGET,
            }),
        )?;
    }
    Ok(())
}
