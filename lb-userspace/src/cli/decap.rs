//! `lb decap`: the decapsulation program on a backend.

use std::net::IpAddr;

use clap::Subcommand;
use lb_common::{addr::to_key, decap::unlisted_source, vip::VipAddrKey};
use lb_userspace::{
    config::{Named as _, Prefix, XdpMode},
    dataplane::{Decap, PinDir},
};

#[derive(Subcommand)]
pub enum DecapCommand {
    /// Attach (or update) the decapsulation program for the given VIP addresses; it stays
    /// attached after this command exits.
    Attach {
        /// Name of this attachment (pins under /sys/fs/bpf/lb-decap/NAME).
        #[arg(long)]
        name: String,
        /// The backend's interface that receives the tunnel packets.
        #[arg(long)]
        interface: String,
        /// A VIP address served by this backend (repeat for several).
        #[arg(long = "vip", required = true)]
        vips: Vec<IpAddr>,
        /// A prefix the balancers' tunnel packets come from: their `encap_source_v4` and
        /// `encap_source_v6`, and their own addresses if they run tunnel health checks (repeat for
        /// several). Tunnel packets from anywhere else are not decapsulated.
        #[arg(long = "balancer-source", required = true, value_name = "PREFIX")]
        balancer_sources: Vec<Prefix>,
        /// What happens to a tunnel packet from another source: dropped, or passed untouched to
        /// this host's stack (for a host that terminates other tunnels itself).
        #[arg(long, value_enum, default_value = "drop")]
        unlisted_source: UnlistedSource,
        /// native, generic, or auto (native, else generic with a warning).
        #[arg(long, default_value = "auto", value_parser = XdpMode::parse)]
        xdp_mode: XdpMode,
    },
    /// Detach the decapsulation program and remove its pins.
    Detach {
        /// The attachment's name, as given to `attach`.
        #[arg(long)]
        name: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum UnlistedSource {
    Drop,
    Pass,
}

pub fn run(command: DecapCommand) -> anyhow::Result<()> {
    match command {
        DecapCommand::Attach { name, interface, vips, balancer_sources, unlisted_source, xdp_mode } => {
            let pins = PinDir::decap(&name);
            let mut decap = Decap::open_pinned(&pins)?;
            let addrs: Vec<VipAddrKey> = vips
                .iter()
                .map(|a| {
                    let (family, addr) = to_key(*a);
                    VipAddrKey::new(family, addr)
                })
                .collect();
            decap.set_vips(&addrs)?;
            let sources: Vec<(IpAddr, u8)> = balancer_sources.iter().map(|p| (p.network, p.len)).collect();
            let unlisted = match unlisted_source {
                UnlistedSource::Drop => unlisted_source::DROP,
                UnlistedSource::Pass => unlisted_source::PASS,
            };
            decap.set_sources(&sources, unlisted)?;
            let attached = decap.attach(&interface, xdp_mode, &pins)?;
            println!(
                "decapsulation on {interface} for {} VIP address(es), tunnels from {} balancer prefix(es): {attached:?}",
                addrs.len(),
                sources.len()
            );
        }
        DecapCommand::Detach { name } => {
            let pins = PinDir::decap(&name);
            anyhow::ensure!(pins.exists(), "nothing pinned at {}", pins.root().display());
            pins.remove()?;
            println!("detached decapsulation {name}");
        }
    }
    Ok(())
}
