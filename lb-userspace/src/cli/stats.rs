//! `lb stats`: an instance's counters, from its pinned maps (works while the agent is stopped).

use anyhow::Context as _;
use lb_userspace::{dataplane::PinDir, inspect::PinnedStats};

#[derive(clap::Args)]
pub struct StatsArgs {
    /// The instance whose pinned maps are read.
    #[arg(long, short)]
    instance: String,
    /// The counters as JSON.
    #[arg(long)]
    json: bool,
    /// Refresh every second.
    #[arg(long)]
    watch: bool,
}

pub fn run(args: StatsArgs) -> anyhow::Result<()> {
    let pins = PinDir::instance(&args.instance);
    let stats =
        PinnedStats::open(&pins).with_context(|| format!("opening the maps pinned at {}", pins.root().display()))?;
    loop {
        let snapshot = stats.snapshot()?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&snapshot)?);
        } else {
            if args.watch {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", snapshot.table());
        }
        if !args.watch {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
