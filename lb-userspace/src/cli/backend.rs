//! `lb backend`: list, add, remove, reweight, drain, enable or disable backends of the running
//! agent.

use std::fmt::Write as _;

use clap::Subcommand;
use lb_userspace::{
    agent::{control::Request, status::BackendStatus},
    config::{AdminState, Named as _},
};

use super::{AgentArgs, cell};

#[derive(Subcommand)]
pub enum BackendCommand {
    List {
        #[command(flatten)]
        agent: AgentArgs,
        /// Only this VIP's backends.
        vip: Option<String>,
    },
    Add {
        #[command(flatten)]
        agent: AgentArgs,
        vip: String,
        address: String,
        #[arg(long, allow_negative_numbers = true)]
        weight: Option<i64>,
    },
    Remove {
        #[command(flatten)]
        agent: AgentArgs,
        vip: String,
        address: String,
    },
    Weight {
        #[command(flatten)]
        agent: AgentArgs,
        vip: String,
        address: String,
        #[arg(allow_negative_numbers = true)]
        weight: i64,
    },
    /// No new flows; existing flows continue until they end or idle out.
    Drain(StateArgs),
    /// Back in service (undo drain or disable).
    Enable(StateArgs),
    /// Out of service: flows pinned to it move on their next packet.
    Disable(StateArgs),
}

#[derive(clap::Args)]
pub struct StateArgs {
    #[command(flatten)]
    agent: AgentArgs,
    vip: String,
    address: String,
}

impl StateArgs {
    fn set(self, state: AdminState) -> anyhow::Result<()> {
        self.agent.change(Request::BackendState { vip: self.vip, address: self.address, state })
    }
}

pub fn run(command: BackendCommand) -> anyhow::Result<()> {
    match command {
        BackendCommand::List { agent, vip } => {
            print!("{}", table(&agent.ask::<Vec<BackendStatus>>(Request::BackendList { vip })?));
            Ok(())
        }
        BackendCommand::Add { agent, vip, address, weight } => {
            agent.change(Request::BackendAdd { vip, address, weight })
        }
        BackendCommand::Remove { agent, vip, address } => agent.change(Request::BackendRemove { vip, address }),
        BackendCommand::Weight { agent, vip, address, weight } => {
            agent.change(Request::BackendWeight { vip, address, weight })
        }
        BackendCommand::Drain(args) => args.set(AdminState::Drain),
        BackendCommand::Enable(args) => args.set(AdminState::Up),
        BackendCommand::Disable(args) => args.set(AdminState::Disabled),
    }
}

pub fn table(rows: &[BackendStatus]) -> String {
    let mut s = format!(
        "{:<12} {:<26} {:<9} {:<10} {:>7} {:>9} {:<8} {:>7} {:>9}  {}\n",
        "VIP", "backend", "admin", "health", "weight", "effective", "flows", "active", "check ms", "last error"
    );
    for b in rows {
        let flows = if b.decision.in_table {
            "new+old"
        } else if b.decision.keeps_flows {
            "old only"
        } else {
            "moved"
        };
        let _ = writeln!(
            s,
            "{:<12} {:<26} {:<9} {:<10} {:>7} {:>9} {:<8} {:>7} {:>9}  {}",
            b.decision.vip,
            b.decision.address.to_string(),
            b.decision.admin.name(),
            b.decision.health.name(),
            b.decision.weight,
            b.decision.effective_weight,
            flows,
            cell(b.active_flows),
            cell(b.check_latency_ms.map(|m| format!("{m:.1}"))),
            cell(b.last_error.as_ref())
        );
    }
    s
}
