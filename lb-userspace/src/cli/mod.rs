//! The `lb` command line, one file per subcommand family. Each file holds its arguments (clap)
//! and what the command does; `main.rs` only parses and dispatches.
//! - [`run`]: `lb run`, `lb check` and `lb detach`: an instance's life.
//! - [`status`], [`vip`], [`backend`], [`config`]: the running agent, asked over its control socket.
//! - [`stats`], [`trace`], [`plan`]: read-only views from the pinned maps; [`top`] the live one.
//! - [`decap`]: the backends' decapsulation program.
//! - [`fleet`]: comparing the tables of several balancers.
//! - [`node`]: draining this balancer out of the fleet and back.
//! - [`generate`]: shell completions and man pages.

use std::path::PathBuf;

use lb_userspace::agent::{
    control::{self, Request},
    status::Changed,
};
use serde::de::DeserializeOwned;

pub mod backend;
pub mod config;
pub mod decap;
pub mod fleet;
pub mod generate;
pub mod node;
pub mod plan;
pub mod run;
pub mod stats;
pub mod status;
pub mod top;
pub mod trace;
pub mod vip;

/// Which running agent to ask.
#[derive(clap::Args, Clone)]
pub struct AgentArgs {
    /// The agent's instance name (its control socket is /run/lb/INSTANCE.sock).
    #[arg(long, short)]
    instance: String,
    /// The control socket, if not the default.
    #[arg(long)]
    socket: Option<PathBuf>,
}

impl AgentArgs {
    /// Sends `request` and reads the answer as the type the request answers with.
    fn ask<T: DeserializeOwned>(&self, request: Request) -> anyhow::Result<T> {
        let socket = self.socket.clone().unwrap_or_else(|| PathBuf::from(format!("/run/lb/{}.sock", self.instance)));
        Ok(control::request(&socket, &request)?.into_answer()?)
    }

    /// Sends a change and says what it did.
    fn change(&self, request: Request) -> anyhow::Result<()> {
        match self.ask::<Option<Changed>>(request)? {
            Some(c) => println!("applied (data plane generation {})", c.generation),
            None => println!("nothing to change"),
        }
        Ok(())
    }
}

/// A table cell: the value, or "-" when there is none.
fn cell(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}
