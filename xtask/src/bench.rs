//! `cargo xtask bench`: the XDP path benchmark (tests/benches/xdp_paths.rs), which prints a
//! table and writes it as JSON.

use anyhow::bail;

use crate::cmd;

pub fn run(rounds: usize, packets: usize, json: &str) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the benchmark loads XDP programs and must run as root (`sudo -E cargo xtask bench`)");
    }
    let json = cmd::workspace_root().join(json);
    cmd::run(cmd::cargo().args(["bench", "-p", "lb-tests", "--bench", "xdp_paths", "--"]).args([
        "--rounds",
        &rounds.to_string(),
        "--packets",
        &packets.to_string(),
        "--json",
        &json.to_string_lossy(),
    ]))
}
