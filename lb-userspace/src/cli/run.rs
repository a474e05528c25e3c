//! `lb run`, `lb check` and `lb detach`: an instance's life.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use lb_userspace::{agent, config::Config, dataplane::PinDir};

#[derive(clap::Args)]
pub struct RunArgs {
    #[arg(long, short)]
    config: PathBuf,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    config: PathBuf,
}

#[derive(clap::Args)]
pub struct DetachArgs {
    #[arg(long, short)]
    instance: String,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(agent::run(&args.config))?;
    Ok(ExitCode::SUCCESS)
}

pub fn check(args: CheckArgs) -> ExitCode {
    match Config::load(&args.config) {
        Ok(c) => {
            println!("{}: ok ({} VIPs, {} backends)", args.config.display(), c.vips.len(), c.backend_count());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

pub fn detach(args: DetachArgs) -> anyhow::Result<ExitCode> {
    let instance = args.instance;
    let pins = PinDir::instance(&instance);
    anyhow::ensure!(pins.exists(), "no instance {instance}: nothing pinned at {}", pins.root().display());
    pins.remove().with_context(|| format!("removing {}", pins.root().display()))?;
    println!("detached instance {instance} and removed {}", pins.root().display());
    Ok(ExitCode::SUCCESS)
}
