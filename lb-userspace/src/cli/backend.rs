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
    /// Backends with their admin state, health, weights and active flows.
    List {
        #[command(flatten)]
        agent: AgentArgs,
        /// Only this VIP's backends.
        vip: Option<String>,
        /// The list as JSON (docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Add a backend to a VIP (checked by the VIP's health check, if it has one).
    Add {
        #[command(flatten)]
        agent: AgentArgs,
        /// The VIP's name.
        vip: String,
        /// The backend's IP address (of the VIP's family).
        address: String,
        /// Its weight (0..=65535; default 1; 0 keeps it configured but gives it no new flows).
        #[arg(long, allow_negative_numbers = true)]
        weight: Option<i64>,
    },
    /// Remove a backend from a VIP: its share of the table moves to the others.
    Remove {
        #[command(flatten)]
        agent: AgentArgs,
        /// The VIP's name.
        vip: String,
        /// The backend's IP address.
        address: String,
    },
    /// Set a backend's weight.
    Weight {
        #[command(flatten)]
        agent: AgentArgs,
        /// The VIP's name.
        vip: String,
        /// The backend's IP address.
        address: String,
        /// The new weight (0..=65535; 0 gives it no new flows).
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
    /// The VIP's name.
    vip: String,
    /// The backend's IP address.
    address: String,
}

impl StateArgs {
    fn set(self, state: AdminState) -> anyhow::Result<()> {
        self.agent.change(Request::BackendState { vip: self.vip, address: self.address, state })
    }
}

pub fn run(command: BackendCommand) -> anyhow::Result<()> {
    match command {
        BackendCommand::List { agent, vip, json } => {
            let backends = agent.ask::<Vec<BackendStatus>>(Request::BackendList { vip })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&backends)?);
            } else {
                print!("{}", table(&backends));
            }
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
