//! `lb stats`: an instance's counters, from its pinned maps (works while the agent is stopped).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use lb_userspace::{dataplane::PinDir, inspect::PinnedStats};

#[derive(clap::Args)]
pub struct StatsArgs {
    /// The instance whose pinned maps are read.
    #[arg(long, short)]
    instance: String,
    /// The counters (or rates) as JSON.
    #[arg(long)]
    json: bool,
    /// Refresh every second (every interval with --rate).
    #[arg(long)]
    watch: bool,
    /// Per-second rates over an interval (like `ipvsadm --rate`) instead of totals.
    #[arg(long)]
    rate: bool,
    /// The interval of --rate, in seconds.
    #[arg(long, default_value_t = 1.0, value_parser = interval)]
    interval: f64,
}

/// An interval of 0.1 s to an hour.
pub(super) fn interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(secs) if (0.1..=3600.0).contains(&secs) => Ok(secs),
        _ => Err(format!("\"{s}\" is not an interval of 0.1 to 3600 seconds")),
    }
}

pub fn run(args: StatsArgs) -> anyhow::Result<()> {
    let pins = PinDir::instance(&args.instance);
    let stats =
        PinnedStats::open(&pins).with_context(|| format!("opening the maps pinned at {}", pins.root().display()))?;
    let mut earlier = args.rate.then(|| stats.snapshot().map(|s| (s, Instant::now()))).transpose()?;
    loop {
        let text = if let Some((then, at)) = &mut earlier {
            std::thread::sleep(Duration::from_secs_f64(args.interval));
            let (now, now_at) = (stats.snapshot()?, Instant::now());
            let rates = now.rates_since(then, now_at - *at);
            (*then, *at) = (now, now_at);
            if args.json { serde_json::to_string_pretty(&rates)? + "\n" } else { rates.table() }
        } else {
            let snapshot = stats.snapshot()?;
            if args.json { serde_json::to_string_pretty(&snapshot)? + "\n" } else { snapshot.table() }
        };
        if args.watch && !args.json {
            print!("\x1b[2J\x1b[H");
        }
        print!("{text}");
        if !args.watch {
            return Ok(());
        }
        if earlier.is_none() {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}
