//! `lb`: the load balancer's agent and operator tool. Parses the command line and hands each
//! subcommand to its file in `cli/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lb_userspace::agent::control::ControlError;

mod cli;

use cli::{
    backend::BackendCommand,
    config::{ConfigCommand, ReloadArgs},
    decap::DecapCommand,
    fleet::FleetCommand,
    generate::GenerateCommand,
    node::NodeCommand,
    plan::PlanArgs,
    run::{CheckArgs, DetachArgs, RunArgs},
    stats::StatsArgs,
    status::StatusArgs,
    top::TopArgs,
    trace::TraceArgs,
    vip::VipCommand,
};

/// Exit statuses, the same for every subcommand.
const EXIT_STATUSES: &str = "Exit status: 0 done; 1 refused, invalid or failed (a configuration with errors, a change \
the agent refused, balancers that differ, a drain that did not end); 2 usage (unknown subcommand or flag); 3 the \
agent could not be reached (no `lb run` for the instance, or not root).";

/// The agent could not be reached.
const EXIT_UNREACHABLE: u8 = 3;

#[derive(Parser)]
#[command(name = "lb", version, about = "XDP Layer-4 load balancer", after_help = EXIT_STATUSES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: apply CONFIG to the data plane and keep it (SIGTERM leaves it forwarding).
    Run(RunArgs),
    /// Validate a configuration file exactly as `lb run` does; exit status 0 if valid, 1 if not.
    Check(CheckArgs),
    /// Remove an instance's data plane: detach its programs and delete its pinned maps.
    Detach(DetachArgs),
    /// VIPs, backends, health, weights and table fingerprints, from the running agent.
    Status(StatusArgs),
    /// Counters of an instance, read from its pinned maps (works while the agent is stopped).
    Stats(StatsArgs),
    /// A live view of an instance: rates per VIP, backend and verdict, with health and weights.
    Top(TopArgs),
    /// List, add or remove VIPs of the running agent.
    #[command(subcommand)]
    Vip(VipCommand),
    /// List, add, remove, reweight, drain, enable or disable backends of the running agent.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// The running configuration, live changes included, as a configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Reload the agent's configuration file (like SIGHUP); a file that fails validation changes nothing.
    Reload(ReloadArgs),
    /// Which backend a flow goes to now, and why (flow-table entry, or hash and table slot).
    Trace(TraceArgs),
    /// What applying NEWCONFIG would move: share of each VIP's hash space and tracked flows, and
    /// each backend's share before and after.
    Plan(PlanArgs),
    /// Backend side: the decapsulation program.
    #[command(subcommand)]
    Decap(DecapCommand),
    /// Several balancers: whether their tables are the same.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// This balancer in its fleet: withdraw its VIPs from the routers (drain) or announce them again.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Shell completions and man pages from this command line, the configuration reference from the configuration's types.
    #[command(subcommand)]
    Generate(GenerateCommand),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let done = match Cli::parse().command {
        Command::Run(args) => cli::run::run(args),
        Command::Check(args) => Ok(cli::run::check(args)),
        Command::Detach(args) => cli::run::detach(args),
        Command::Status(args) => cli::status::run(args).map(|()| ExitCode::SUCCESS),
        Command::Stats(args) => cli::stats::run(args).map(|()| ExitCode::SUCCESS),
        Command::Top(args) => cli::top::run(args).map(|()| ExitCode::SUCCESS),
        Command::Vip(command) => cli::vip::run(command).map(|()| ExitCode::SUCCESS),
        Command::Backend(command) => cli::backend::run(command).map(|()| ExitCode::SUCCESS),
        Command::Config(command) => cli::config::run(command).map(|()| ExitCode::SUCCESS),
        Command::Reload(args) => cli::config::reload(args).map(|()| ExitCode::SUCCESS),
        Command::Trace(args) => cli::trace::run(args).map(|()| ExitCode::SUCCESS),
        Command::Plan(args) => cli::plan::run(args).map(|()| ExitCode::SUCCESS),
        Command::Decap(command) => cli::decap::run(command).map(|()| ExitCode::SUCCESS),
        Command::Fleet(command) => cli::fleet::run(command),
        Command::Node(command) => cli::node::run(command),
        Command::Generate(command) => {
            cli::generate::run(command, <Cli as clap::CommandFactory>::command()).map(|()| ExitCode::SUCCESS)
        }
    };
    done.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        let unreachable = e
            .chain()
            .any(|cause| matches!(cause.downcast_ref::<ControlError>(), Some(ControlError::Unreachable { .. })));
        if unreachable { ExitCode::from(EXIT_UNREACHABLE) } else { ExitCode::FAILURE }
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// Every subcommand and every argument says what it is for in `--help`.
    #[test]
    fn every_subcommand_and_argument_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in command.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(path.clone());
                }
                for arg in sub.get_arguments().filter(|a| !["help", "version"].contains(&a.get_id().as_str())) {
                    if arg.get_help().is_none() && arg.get_long_help().is_none() {
                        missing.push(format!("{path} {}", arg.get_id()));
                    }
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "lb", &mut missing);
        assert!(missing.is_empty(), "subcommands and arguments without help:\n{}", missing.join("\n"));
    }
}
