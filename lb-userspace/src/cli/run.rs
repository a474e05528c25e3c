//! `lb run`, `lb check` and `lb detach`: an instance's life.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use lb_userspace::{
    agent, bgp,
    config::{CheckReport, Config},
    dataplane::PinDir,
};

#[derive(clap::Args)]
pub struct RunArgs {
    /// The configuration file (TOML); reloaded on SIGHUP and when it changes.
    #[arg(long, short)]
    config: PathBuf,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The configuration file to validate.
    config: PathBuf,
    /// Print the result as JSON (a `config::CheckReport`): for editors and deployment pipelines.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct DetachArgs {
    /// The instance to remove (its pins are under /sys/fs/bpf/lb/INSTANCE).
    #[arg(long, short)]
    instance: String,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(agent::run(&args.config))?;
    Ok(ExitCode::SUCCESS)
}

pub fn check(args: CheckArgs) -> ExitCode {
    let loaded = Config::load(&args.config);
    let valid = loaded.is_ok();
    if args.json {
        let report = CheckReport::of(&args.config, &loaded);
        println!("{}", serde_json::to_string_pretty(&report).expect("a report serializes"));
    } else {
        match &loaded {
            Ok(c) => println!("{}: ok ({} VIPs, {} backends)", args.config.display(), c.vips.len(), c.backend_count()),
            Err(e) => eprintln!("{e}"),
        }
    }
    if valid { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

pub fn detach(args: DetachArgs) -> anyhow::Result<ExitCode> {
    let instance = args.instance;
    let pins = PinDir::instance(&instance);
    anyhow::ensure!(pins.exists(), "no instance {instance}: nothing pinned at {}", pins.root().display());
    // Withdrawn first: VIPs still announced without a data plane behind them would lose their
    // traffic. Once the file says nothing, BIRD reads nothing else, now or when it restarts.
    let withdrawn = withdraw(&instance);
    pins.remove().with_context(|| format!("removing {}", pins.root().display()))?;
    println!("detached instance {instance} and removed {}", pins.root().display());
    match withdrawn {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Withdraws the instance's announcements, if it made any: its file for BIRD is left without
/// sessions or routes, and BIRD is told to read it.
fn withdraw(instance: &str) -> anyhow::Result<()> {
    let include = bgp::include_path(instance);
    let Ok(text) = std::fs::read_to_string(&include) else { return Ok(()) };
    let Some(socket) = bgp::render::socket_of(&text).map(std::path::Path::to_path_buf) else {
        anyhow::bail!("{} is not a file lb wrote; its announcements were left alone", include.display());
    };
    let detached = bgp::render::render_detached(instance, &socket);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime
        .block_on(bgp::hand_over(&include, &detached, &socket))
        .with_context(|| format!("withdrawing the VIPs of {}", include.display()))?;
    println!("withdrew its VIPs from BGP (BIRD at {})", socket.display());
    Ok(())
}
