//! `lb config dump` and `lb reload`: the running configuration.

use clap::Subcommand;
use lb_userspace::agent::control::Request;

use super::AgentArgs;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print the running configuration, live changes included, as a configuration file.
    Dump {
        #[command(flatten)]
        agent: AgentArgs,
    },
}

#[derive(clap::Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    agent: AgentArgs,
}

pub fn run(command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Dump { agent } => print!("{}", agent.ask::<String>(Request::ConfigDump)?),
    }
    Ok(())
}

pub fn reload(args: ReloadArgs) -> anyhow::Result<()> {
    args.agent.change(Request::Reload)
}
