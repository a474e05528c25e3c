//! The fleet lab: the lab's balancer and a second one behind a router that learns the VIPs over
//! BGP from both and spreads flows between them by ECMP, as a data-centre fabric would.
//!
//! ```text
//!   far 198.18.50.10 ── rt (BIRD, AS 65000, kernel ECMP, L4 multipath hash)
//!                          │ 198.18.0.254 / fd00::fe on br0
//!          ┌───────────────┴───────────────┐
//!   lb  198.18.0.2 (fleet-a)        lb2 198.18.0.3 (fleet-b)     each: lb run + BIRD, AS 65010
//!          └───────── be1..be4 (shared backends, direct return to far via rt) ─────────┘
//! ```
//!
//! Each member runs its own BIRD in its namespace, whose `bird.conf` holds only what an operator
//! writes (logging, the device protocol) and includes the file its agent writes. The router's
//! BIRD peers with both members over IPv4 and IPv6 with BFD, accepts only VIP host routes, and
//! exports what it learnt to the kernel with `merge paths` (one route, a next hop per member).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Child,
    time::Duration,
};

use anyhow::Context as _;

use super::{
    BALANCER, BALANCER_V4, BALANCER_V6, Lab, ROUTER, ROUTER_V4, SWITCH, WIDE_MTU, attach_pass_program, in_netns, ip,
    ns, quiet_kill_pid_file,
};

/// The second balancer.
pub const BALANCER_B: &str = "lblab-lb2";
pub const BALANCER_B_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
pub const BALANCER_B_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
pub const ROUTER_ASN: u32 = 65000;
pub const FLEET_ASN: u32 = 65010;

/// One balancer of the fleet.
#[derive(Debug, Clone, Copy)]
pub struct Member {
    pub netns: &'static str,
    pub instance: &'static str,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

pub const MEMBERS: [Member; 2] = [
    Member { netns: BALANCER, instance: "fleet-a", v4: BALANCER_V4, v6: BALANCER_V6 },
    Member { netns: BALANCER_B, instance: "fleet-b", v4: BALANCER_B_V4, v6: BALANCER_B_V6 },
];

impl Member {
    /// The control socket of the member's BIRD (config/fleet.toml names it).
    pub fn bird_socket(&self) -> PathBuf {
        PathBuf::from(format!("/run/lb/{}.bird.ctl", self.instance))
    }

    /// The member's agent's control socket (the default for its instance).
    pub fn control_socket(&self) -> PathBuf {
        PathBuf::from(format!("/run/lb/{}.sock", self.instance))
    }
}

impl Lab {
    /// Adds the router, the far client behind it and the second balancer to a lab that is up,
    /// and starts BIRD on the router and on both members (each member's BIRD announces nothing
    /// until its agent writes the file it includes).
    pub fn fleet_up(&self) -> anyhow::Result<()> {
        super::router_up(false)?;
        let port = BALANCER_B.trim_start_matches("lblab-");
        ip(&["netns", "add", BALANCER_B])?;
        crate::no_duplicate_address_detection(BALANCER_B)?;
        ip(&["link", "add", "eth0", "netns", BALANCER_B, "type", "veth", "peer", "name", port, "netns", SWITCH])?;
        ns(SWITCH, "ip", &["link", "set", port, "master", "br0", "mtu", &WIDE_MTU.to_string(), "up"])?;
        ns(BALANCER_B, "ip", &["link", "set", "lo", "up"])?;
        ns(BALANCER_B, "ip", &["link", "set", "eth0", "mtu", &WIDE_MTU.to_string(), "up"])?;
        ns(BALANCER_B, "ip", &["addr", "add", &format!("{BALANCER_B_V4}/24"), "dev", "eth0"])?;
        ns(BALANCER_B, "ip", &["addr", "add", &format!("{BALANCER_B_V6}/64"), "dev", "eth0", "nodad"])?;
        attach_pass_program(SWITCH, port).context("attaching an XDP program to the second balancer's bridge port")?;
        for (key, value) in [
            // Flows spread by their ports too, not only by addresses (one far client).
            ("net.ipv4.fib_multipath_hash_policy", "1"),
            ("net.ipv6.fib_multipath_hash_policy", "1"),
        ] {
            ns(ROUTER, "sysctl", &["-qw", &format!("{key}={value}")])?;
        }
        // A member's link that goes down and up keeps its IPv6 address (and so its IPv6 session),
        // as a network manager would arrange.
        for member in &MEMBERS {
            ns(member.netns, "sysctl", &["-qw", "net.ipv6.conf.eth0.keep_addr_on_down=1"])?;
        }
        self.start_router_bird()?;
        for member in 0..MEMBERS.len() {
            self.start_member_bird(member)?;
        }
        Ok(())
    }

    fn bird_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    fn start_router_bird(&self) -> anyhow::Result<()> {
        let dir = self.bird_dir("router-bird")?;
        let mut conf = format!(
            "log \"{log}\" all;\nrouter id {ROUTER_V4};\nprotocol device {{}}\n\
             protocol bfd {{ interface \"*\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}\n\
             protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
             protocol kernel {{ ipv6 {{ import none; export all; }}; merge paths on; }}\n\
             filter vips4 {{ if net ~ [ 198.18.100.0/24{{32,32}} ] then accept; reject; }}\n\
             filter vips6 {{ if net ~ [ fd00:100::/64{{128,128}} ] then accept; reject; }}\n",
            log = dir.join("bird.log").display()
        );
        for member in &MEMBERS {
            let name = member.instance.replace('-', "_");
            for (family, n, address) in [("ipv4", 4, IpAddr::V4(member.v4)), ("ipv6", 6, IpAddr::V6(member.v6))] {
                conf += &format!(
                    "protocol bgp {name}_v{n} {{ local as {ROUTER_ASN}; neighbor {address} as {FLEET_ASN}; bfd on; \
                     hold time 9; keepalive time 3; connect retry time 1; error wait time 1, 5; \
                     {family} {{ import filter vips{n}; export none; }}; }}\n"
                );
            }
        }
        let conf_path = dir.join("bird.conf");
        std::fs::write(&conf_path, conf)?;
        start_bird(ROUTER, &conf_path, &dir.join("bird.ctl"), &dir.join("bird.pid"))
    }

    /// Starts member `i`'s BIRD; its configuration includes what the member's agent writes.
    pub fn start_member_bird(&self, i: usize) -> anyhow::Result<()> {
        let member = &MEMBERS[i];
        let dir = self.bird_dir(&format!("{}-bird", member.instance))?;
        // What an operator writes; the glob matches nothing until the agent has written its file.
        let conf = format!(
            "log \"{}\" all;\nprotocol device {{}}\ninclude \"/run/lb/{}.bird.conf*\";\n",
            dir.join("bird.log").display(),
            member.instance
        );
        let conf_path = dir.join("bird.conf");
        std::fs::write(&conf_path, conf)?;
        std::fs::create_dir_all("/run/lb")?;
        start_bird(member.netns, &conf_path, &member.bird_socket(), &dir.join("bird.pid"))
    }

    /// Stops member `i`'s BIRD at once (SIGKILL, as a crash): its sessions end without a word.
    pub fn kill_member_bird(&self, i: usize) {
        let dir = self.dir.join(format!("{}-bird", MEMBERS[i].instance));
        quiet_kill_pid_file(&dir.join("bird.pid"), libc::SIGKILL);
    }

    /// What the router's BIRD answers to `command` (`birdc`).
    pub fn router_bird(&self, command: &str) -> anyhow::Result<String> {
        let socket = self.dir.join("router-bird").join("bird.ctl");
        let mut args = vec!["-s", socket.to_str().context("socket path")?];
        args.extend(command.split_whitespace());
        ns(ROUTER, "birdc", &args)
    }

    /// The next hops of the router's route to `vip`, as the kernel holds it.
    pub fn router_next_hops(&self, vip: IpAddr) -> anyhow::Result<Vec<IpAddr>> {
        let family = if vip.is_ipv4() { "-4" } else { "-6" };
        let out = ns(ROUTER, "ip", &[family, "route", "show", &vip.to_string()])?;
        let words: Vec<&str> = out.split_whitespace().collect();
        Ok(words.windows(2).filter(|w| w[0] == "via").filter_map(|w| w[1].parse().ok()).collect())
    }

    /// Waits until the router's route to `vip` has exactly the next hops `hops` (looking every
    /// 5 ms); how long that took.
    pub fn wait_for_next_hops(&self, vip: IpAddr, hops: &[IpAddr], limit: Duration) -> anyhow::Result<Duration> {
        let start = std::time::Instant::now();
        let mut wanted = hops.to_vec();
        wanted.sort();
        loop {
            let mut now = self.router_next_hops(vip)?;
            now.sort();
            if now == wanted {
                return Ok(start.elapsed());
            }
            anyhow::ensure!(
                start.elapsed() < limit,
                "the router's route to {vip} is via {now:?}, not {wanted:?}, after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Writes member `i`'s configuration, `template` (config/fleet.toml, member fleet-a's) with
    /// its instance name, into the lab's directory; returns its path.
    pub fn member_config(&self, template: &Path, i: usize) -> anyhow::Result<PathBuf> {
        let text = std::fs::read_to_string(template).with_context(|| format!("reading {}", template.display()))?;
        anyhow::ensure!(
            text.contains(MEMBERS[0].instance),
            "{} is not member {}'s configuration",
            template.display(),
            MEMBERS[0].instance
        );
        let path = self.dir.join(format!("{}.toml", MEMBERS[i].instance));
        std::fs::write(&path, text.replace(MEMBERS[0].instance, MEMBERS[i].instance))?;
        Ok(path)
    }

    /// Where member `i`'s agent logs.
    pub fn member_log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log", MEMBERS[i].instance))
    }

    /// Starts `lb run` in member `i`'s namespace, as [`Lab::start_agent`] does in the balancer's.
    pub fn start_member_agent(&self, i: usize, config: &Path, log: &Path) -> anyhow::Result<Child> {
        self.start_agent_in(MEMBERS[i].netns, config, log)
    }

    /// Sets member `i`'s link down or up.
    pub fn member_link(&self, i: usize, up: bool) -> anyhow::Result<()> {
        in_netns(MEMBERS[i].netns, "ip", &["link", "set", "eth0", if up { "up" } else { "down" }])
    }
}

fn start_bird(netns: &str, conf: &Path, socket: &Path, pid: &Path) -> anyhow::Result<()> {
    let (conf, socket, pid) = (conf.to_string_lossy(), socket.to_string_lossy(), pid.to_string_lossy());
    ns(netns, "bird", &["-c", &conf, "-s", &socket, "-P", &pid])
        .with_context(|| format!("starting BIRD in {netns}"))?;
    Ok(())
}
