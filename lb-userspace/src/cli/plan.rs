//! `lb plan`: what applying a configuration would move.

use std::{fmt::Write as _, path::PathBuf};

use lb_userspace::{
    config::Config,
    dataplane::{BalancerMaps, PinDir},
    inspect::{self, VipPlan},
};

#[derive(clap::Args)]
pub struct PlanArgs {
    /// The new configuration, compared with what its instance's pinned maps hold now.
    config: PathBuf,
    /// The plan as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let maps = BalancerMaps::open_pinned(&PinDir::instance(&config.instance.name))?;
    let plan = inspect::plan(&maps, &config)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", table(&plan));
    }
    Ok(())
}

fn table(plan: &[VipPlan]) -> String {
    let mut s = String::new();
    if plan.iter().any(|v| v.flow_hash_key_changes) {
        s += "the flow hash key changes: every new flow is hashed anew and most move to another backend; \
              flows in the flow table keep theirs. Change the key on every balancer of the fleet together.\n";
    }
    for v in plan {
        let _ = writeln!(
            s,
            "{}: {:.2}% of the hash space moves; {} of {} tracked flows move",
            v.vip,
            v.hash_space_moved * 100.0,
            v.tracked_flows_moved,
            v.tracked_flows
        );
        for (backend, (before, after)) in &v.shares {
            let _ = writeln!(s, "    {backend:<40} {:>6.2}% -> {:>6.2}%", before * 100.0, after * 100.0);
        }
    }
    s
}
