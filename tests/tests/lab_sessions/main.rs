//! End-to-end tests of game and device sessions in the namespaced lab, with real protocols: a
//! game-like UDP service whose clients rebind (`game`), an MQTT broker cluster (`mqtt`), and QUIC
//! servers that put their server id in their connection ids, with clients that migrate (`quic`).
//! Each shows its feature at work, and the same traffic without it failing, so the tests prove
//! the feature. Needs root; never skips; the lab is removed at the end.

mod game;
mod mqtt;
mod quic;

use anyhow::ensure;
use lb_tests::e2e::{Env, Health, Trial, run_trials, start};
use lb_userspace::agent::status::VipStatus;

/// The VIPs as `lb vip list --json` shows them.
fn vips(env: &Env) -> anyhow::Result<Vec<VipStatus>> {
    let out = std::process::Command::new(&env.lab.lb)
        .args(["vip", "list", "--instance", lb_lab::INSTANCE, "--json"])
        .output()?;
    ensure!(out.status.success(), "lb vip list: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn main() -> anyhow::Result<()> {
    let env = start("lab-sessions", Health::default())?;
    let trials: Vec<Trial> = vec![
        (
            "sessions/clients_keep_their_backend_through_10_nat_rebinds",
            game::clients_keep_their_backend_through_nat_rebinds,
        ),
        (
            "sessions/drained_backend_keeps_its_sessions_until_they_idle_out",
            game::drained_backend_keeps_its_sessions_until_they_idle_out,
        ),
        ("mqtt/cluster_behind_the_vip_delivers_and_survives_a_killed_broker", mqtt::mqtt_cluster_behind_the_vip),
        ("quic/connections_survive_10_client_migrations", quic::connections_survive_client_migrations),
    ];
    run_trials(env, trials)
}
