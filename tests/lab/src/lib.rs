//! The namespaced lab: a client, the balancer and four backends on one bridged segment, built
//! only from network namespaces, veth pairs and a bridge in a namespace of its own. Nothing is
//! created in, or connected to, the machine's own network namespace.
//!
//! ```text
//!   client 198.18.0.10  fd00::10  ─┐
//!   lb     198.18.0.2   fd00::2   ─┤
//!   be1..4 198.18.0.21… fd00::21… ─┼─ br0 (namespace lblab-sw, bridge netfilter off)
//!   rt     198.18.0.254 fd00::fe  ─┘  (rt and far: only where a test adds them)
//!    └─ eth1 198.18.50.1 fd00:50::1, MTU 1400 ── far 198.18.50.10 fd00:50::10 (MTU 1500)
//! ```
//!
//! The far client sits behind a router whose link to it is narrower than the far client's own
//! MTU: replies to it are what path-MTU discovery on the direct-return path is tested with (the
//! router's "fragmentation needed" goes to the VIP, that is to the balancer). Tests that need
//! them add the two with [`Lab::far_client_up`]. The balancer's
//! and backends' links to the bridge take 1600 bytes, so a client's full-size packet still fits
//! once encapsulated (the backends' routes keep their own packets at 1500).
//!
//! The balancer runs native XDP; a frame it sends back out of its veth (`XDP_TX`) is delivered
//! only if the veth's peer, its bridge port, runs an XDP program too: the lab gives it one that
//! passes every frame.
//! The client routes the VIPs (198.18.100.0/24, `fd00:100::/64`) through the balancer. Backends
//! hold the VIPs on `lo` (`arp_ignore/arp_announce` so they never answer for them), run the
//! project's decapsulation program on `eth0`, and serve HTTP (nginx) and DNS (dnsmasq) on the
//! VIPs (and on their own addresses, for plain health checks), each answering with its own
//! name, so a reply tells which backend served it.
//! `config/lab.toml` uses be1..be3; be4 is the spare that tests add to a running service.
//!
//! [`fleet`] adds a second balancer and a router that learns the VIPs from both over BGP.
//!
//! Used by `cargo xtask lab|demo` and by the end-to-end tests.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

pub mod fleet;

pub const PREFIX: &str = "lblab";
pub const SWITCH: &str = "lblab-sw";
pub const CLIENT: &str = "lblab-client";
/// The router in front of the far client.
pub const ROUTER: &str = "lblab-rt";
/// A client behind [`ROUTER`], on a narrower link.
pub const FAR_CLIENT: &str = "lblab-far";
pub const BALANCER: &str = "lblab-lb";
pub const BACKENDS: [&str; 4] = ["lblab-be1", "lblab-be2", "lblab-be3", "lblab-be4"];
/// Backend names as their servers answer them, in [`BACKENDS`] order.
pub const BACKEND_NAMES: [&str; 4] = ["be1", "be2", "be3", "be4"];
pub const INSTANCE: &str = "lab";

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const FAR_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 50, 10);
pub const FAR_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x10);
/// The MTU of the router's link to the far client.
pub const FAR_LINK_MTU: u32 = 1400;
/// The MTU of the balancer's and backends' links to the bridge.
pub const WIDE_MTU: u32 = 1600;
/// Bytes of `/big` on every backend's HTTP server.
pub const BIG_REPLY_LEN: usize = 256 * 1024;
/// The backends' HTTPS port (their own addresses only), with certificates for [`TLS_NAME`].
pub const HTTPS_PORT: u16 = 443;
pub const TLS_NAME: &str = "web.lab";
/// The backends' MQTT port ([`Lab::start_mqtt_cluster`]).
pub const MQTT_PORT: u16 = 1883;
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10);
/// The balancer's encapsulation source prefixes, as config/lab.toml sets them.
pub const LAB_ENCAP_SOURCE_V4: &str = "198.18.200.0/24";
pub const LAB_ENCAP_SOURCE_V6: &str = "fd00:200::/112";
pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xfe);
const ROUTER_FAR_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 50, 1);
const ROUTER_FAR_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 1);
pub const BALANCER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const BALANCER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);

/// Ports of the fleet's least-connections and round-robin VIPs (config/fleet.toml) at
/// [`VIP_V4`]; every backend's HTTP server listens on them.
pub const FLEET_LC_PORT: u16 = 8180;
pub const FLEET_RR_PORT: u16 = 8181;

pub fn backend_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 21 + i as u8)
}

pub fn backend_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x21 + i as u16)
}

/// The lab's working files (server configurations, pid files, logs).
pub struct Lab {
    pub dir: PathBuf,
    /// The `lb` binary.
    pub lb: PathBuf,
}

impl Lab {
    pub fn new(dir: &Path, lb: &Path) -> Self {
        Self { dir: dir.to_path_buf(), lb: lb.to_path_buf() }
    }

    /// Builds the topology, starts the servers and attaches decapsulation on the backends.
    /// Anything left from an earlier lab is removed first.
    pub fn up(&self) -> anyhow::Result<()> {
        self.down();
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        ip(&["netns", "add", SWITCH])?;
        // The bridge must not filter what it forwards (malformed traffic must reach the
        // balancer): bridge netfilter off, on the bridge and, where br_netfilter is loaded, in
        // the namespace.
        #[rustfmt::skip]
        ns(SWITCH, "ip", &["link", "add", "br0", "type", "bridge",
            "nf_call_iptables", "0", "nf_call_ip6tables", "0", "nf_call_arptables", "0"])?;
        ns(
            SWITCH,
            "sh",
            &[
                "-c",
                "[ ! -d /proc/sys/net/bridge ] || sysctl -qw net.bridge.bridge-nf-call-iptables=0 \
            net.bridge.bridge-nf-call-ip6tables=0 net.bridge.bridge-nf-call-arptables=0",
            ],
        )?;
        ns(SWITCH, "ip", &["link", "set", "br0", "up"])?;
        let hosts: Vec<(&str, Vec<String>)> = [
            (CLIENT, vec![format!("{CLIENT_V4}/24"), format!("{CLIENT_V6}/64")]),
            (BALANCER, vec![format!("{BALANCER_V4}/24"), format!("{BALANCER_V6}/64")]),
        ]
        .into_iter()
        .chain(
            BACKENDS
                .iter()
                .enumerate()
                .map(|(i, b)| (*b, vec![format!("{}/24", backend_v4(i)), format!("{}/64", backend_v6(i))])),
        )
        .collect();
        for (host, addrs) in &hosts {
            let port = host.trim_start_matches("lblab-");
            ip(&["netns", "add", host])?;
            no_duplicate_address_detection(host)?;
            ip(&["link", "add", "eth0", "netns", host, "type", "veth", "peer", "name", port, "netns", SWITCH])?;
            ns(SWITCH, "ip", &["link", "set", port, "master", "br0", "up"])?;
            ns(host, "ip", &["link", "set", "lo", "up"])?;
            ns(host, "ip", &["link", "set", "eth0", "up"])?;
            for a in addrs {
                let mut args = vec!["addr", "add", a.as_str(), "dev", "eth0"];
                if a.contains(':') {
                    args.push("nodad");
                }
                ns(host, "ip", &args)?;
            }
        }
        for host in std::iter::once(&BALANCER).chain(BACKENDS.iter()) {
            let port = host.trim_start_matches("lblab-");
            ns(SWITCH, "ip", &["link", "set", port, "mtu", &WIDE_MTU.to_string()])?;
            ns(host, "ip", &["link", "set", "eth0", "mtu", &WIDE_MTU.to_string()])?;
        }
        // UDP from a namespace leaves a veth with a partial checksum that XDP cannot carry.
        ns(CLIENT, "ethtool", &["-K", "eth0", "tx", "off"])?;
        // The client opens thousands of connections a second in some tests: ports in TIME_WAIT
        // are reused (with timestamps) instead of running out.
        ns(CLIENT, "sysctl", &["-qw", "net.ipv4.tcp_tw_reuse=1"])?;
        ns(CLIENT, "ip", &["route", "add", "198.18.100.0/24", "via", &BALANCER_V4.to_string()])?;
        ns(CLIENT, "ip", &["-6", "route", "add", "fd00:100::/64", "via", &BALANCER_V6.to_string()])?;
        let ca = self.certificate_authority()?;
        for (i, backend) in BACKENDS.iter().enumerate() {
            self.backend_up(i, backend, &ca).with_context(|| format!("setting up {backend}"))?;
        }
        // After the backends' decapsulation programs, whose attachment mounted bpffs.
        self.balancer_port_runs_xdp(true)?;
        wait_until(Duration::from_secs(10), "the backends' servers to answer", || {
            BACKENDS.iter().all(|b| {
                ns(b, "curl", &["-s", "--max-time", "1", "-o", "/dev/null", &format!("http://{VIP_V4}/")]).is_ok()
            })
        })
    }

    /// Deletes the balancer's interface and creates it again as `up` did (a new ifindex, no
    /// XDP program), as a network manager that rebuilds an interface would.
    pub fn recreate_balancer_interface(&self) -> anyhow::Result<()> {
        let port = BALANCER.trim_start_matches("lblab-");
        ns(BALANCER, "ip", &["link", "del", "eth0"])?;
        ip(&["link", "add", "eth0", "netns", BALANCER, "type", "veth", "peer", "name", port, "netns", SWITCH])?;
        ns(SWITCH, "ip", &["link", "set", port, "master", "br0", "mtu", &WIDE_MTU.to_string(), "up"])?;
        ns(BALANCER, "ip", &["link", "set", "eth0", "mtu", &WIDE_MTU.to_string(), "up"])?;
        ns(BALANCER, "ip", &["addr", "add", &format!("{BALANCER_V4}/24"), "dev", "eth0"])?;
        ns(BALANCER, "ip", &["addr", "add", &format!("{BALANCER_V6}/64"), "dev", "eth0", "nodad"])?;
        self.balancer_port_runs_xdp(true)
    }

    /// Gives the balancer's bridge port (its veth's peer) its pass program, or takes it away:
    /// without one, the veth cannot deliver the frames the balancer sends back out natively.
    pub fn balancer_port_runs_xdp(&self, on: bool) -> anyhow::Result<()> {
        let port = BALANCER.trim_start_matches("lblab-");
        if on {
            attach_pass_program(SWITCH, port).context("attaching an XDP program to the balancer's bridge port")
        } else {
            in_netns(SWITCH, "ip", &["link", "set", "dev", port, "xdpdrv", "off"])
        }
    }

    /// Adds the router and the far client behind it to a lab that is up. Only the tests that use
    /// them do: an IPv6 router on the segment made the first connections of a thousand fresh
    /// client addresses stall (as a lab-wide change it made the source-hash test flaky).
    pub fn far_client_up(&self) -> anyhow::Result<()> {
        router_up(true)
    }

    /// The lab's CA, whose certificate is [`Lab::ca_file`]: it signs each backend's certificate.
    fn certificate_authority(&self) -> anyhow::Result<rcgen::CertifiedIssuer<'static, rcgen::KeyPair>> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "lb lab CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate()?)?;
        std::fs::write(self.ca_file(), ca.pem())?;
        Ok(ca)
    }

    /// The PEM file of the CA that signed the backends' HTTPS certificates (valid for
    /// [`TLS_NAME`] and each backend's addresses).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn backend_up(
        &self,
        i: usize,
        backend: &str,
        ca: &rcgen::CertifiedIssuer<'_, rcgen::KeyPair>,
    ) -> anyhow::Result<()> {
        ns(backend, "ip", &["addr", "add", &format!("{VIP_V4}/32"), "dev", "lo"])?;
        ns(backend, "ip", &["-6", "addr", "add", &format!("{VIP_V6}/128"), "dev", "lo"])?;
        // Its link takes the balancer's encapsulated full-size packets; what it sends stays at
        // the clients' 1500.
        let (own_v4, own_v6) = (backend_v4(i).to_string(), backend_v6(i).to_string());
        ns(backend, "ip", &["route", "replace", "198.18.0.0/24", "dev", "eth0", "src", &own_v4, "mtu", "1500"])?;
        // The kernel's own IPv6 route (metric 256), replaced: a second one would lose to it.
        #[rustfmt::skip]
        ns(backend, "ip", &["-6", "route", "replace", "fd00::/64", "dev", "eth0", "proto", "kernel", "metric", "256",
            "src", &own_v6, "mtu", "1500"])?;
        let (router_v4, router_v6) = (ROUTER_V4.to_string(), ROUTER_V6.to_string());
        ns(backend, "ip", &["route", "add", "198.18.50.0/24", "via", &router_v4, "mtu", "1500"])?;
        ns(backend, "ip", &["-6", "route", "add", "fd00:50::/64", "via", &router_v6, "mtu", "1500"])?;
        for (key, value) in [
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.eth0.rp_filter", "0"),
        ] {
            ns(backend, "sysctl", &["-qw", &format!("{key}={value}")])?;
        }
        let name = BACKEND_NAMES[i];
        let (own_v4, own_v6) = (backend_v4(i), backend_v6(i));
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let d = dir.display();
        // A large reply, for path-MTU discovery.
        std::fs::write(dir.join("big"), vec![b'x'; BIG_REPLY_LEN])?;
        // A status page run through SSI, which nginx sends chunked (its length is unknown).
        std::fs::write(dir.join("status"), format!("{name} <!--# echo var=\"server_port\" --> ok\n"))?;
        let key = rcgen::KeyPair::generate()?;
        let certificate =
            rcgen::CertificateParams::new(vec![TLS_NAME.to_string(), own_v4.to_string(), own_v6.to_string()])?
                .signed_by(&key, ca)?;
        std::fs::write(dir.join("cert.pem"), certificate.pem())?;
        std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
        let nginx_conf = dir.join("nginx.conf");
        std::fs::write(
            &nginx_conf,
            format!(
                "daemon on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 keepalive_timeout 65;\n  keepalive_requests 1000000;\n\
                 server {{\n    listen {VIP_V4}:80;\n    listen [{VIP_V6}]:80;\n    listen {own_v4}:80;\n    listen [{own_v6}]:80;\n\
                 listen {FLEET_LC_PORT};\n    listen {FLEET_RR_PORT};\n\
                 listen {own_v4}:{HTTPS_PORT} ssl;\n    listen [{own_v6}]:{HTTPS_PORT} ssl;\n\
                 ssl_certificate {d}/cert.pem;\n    ssl_certificate_key {d}/key.pem;\n\
                 location / {{ default_type text/plain; return 200 \"{name}\\n\"; }}\n\
                 location = /status {{ default_type text/plain; ssi on; ssi_types *; alias {d}/status; }}\n\
                 location = /big {{ default_type application/octet-stream; alias {d}/big; }}\n\
                 }}\n}}\n"
            ),
        )?;
        self.start_http(i)?;
        self.start_dns(i)?;
        self.attach_decap(i)
    }

    /// Starts backend `i`'s HTTP server (nginx daemonizes).
    pub fn start_http(&self, i: usize) -> anyhow::Result<()> {
        let dir = self.dir.join(BACKEND_NAMES[i]);
        ns(BACKENDS[i], "nginx", &["-c", &dir.join("nginx.conf").to_string_lossy(), "-p", &dir.to_string_lossy()])
            .map(drop)
    }

    /// Stops backend `i`'s HTTP server and waits until it is gone.
    pub fn stop_http(&self, i: usize) -> anyhow::Result<()> {
        self.stop(i, "nginx", libc::SIGTERM)
    }

    /// Starts backend `i`'s DNS server (dnsmasq daemonizes), answering `whoami.lab` with its name.
    pub fn start_dns(&self, i: usize) -> anyhow::Result<()> {
        let name = BACKEND_NAMES[i];
        let pid_file = self.dir.join(name).join("dnsmasq.pid");
        let args = [
            "--conf-file=/dev/null".to_string(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--bind-interfaces".into(),
            format!("--listen-address={VIP_V4}"),
            format!("--listen-address={VIP_V6}"),
            format!("--listen-address={}", backend_v4(i)),
            format!("--listen-address={}", backend_v6(i)),
            format!("--txt-record=whoami.lab,{name}"),
            format!("--pid-file={}", pid_file.display()),
            "--user=root".into(),
        ];
        ns(BACKENDS[i], "dnsmasq", &args.iter().map(String::as_str).collect::<Vec<_>>()).map(drop)
    }

    /// Starts an MQTT broker (mosquitto, port [`MQTT_PORT`] on every address) on each of the
    /// first three backends, bridged into one cluster: backends 2 and 3 bridge every topic both
    /// ways to backend 1 (a star has no loops; `try_private` keeps a bridged message from coming
    /// back), so a message published on any broker reaches the subscribers of all. The brokers
    /// run as root, like the lab's other servers (as another user they could not write the lab's
    /// directory).
    pub fn start_mqtt_cluster(&self) -> anyhow::Result<()> {
        for (i, name) in BACKEND_NAMES[..3].iter().enumerate() {
            let dir = self.dir.join(name);
            let d = dir.display();
            let mut conf = format!(
                "user root\npid_file {d}/mosquitto.pid\nlog_dest file {d}/mosquitto.log\npersistence false\n\
                 listener {MQTT_PORT}\nallow_anonymous true\n"
            );
            if i > 0 {
                conf += &format!(
                    // Its own client id at the hub: the namespaces share one host name, which the
                    // default id is made of, and a second bridge of that id would take the first's.
                    "connection hub\nremote_clientid bridge-{name}\naddress {}:{MQTT_PORT}\ntopic # both 1\ntry_private true\ncleansession true\n\
                     notifications false\nrestart_timeout 1\nbridge_protocol_version mqttv311\n",
                    backend_v4(0)
                );
            }
            std::fs::write(dir.join("mosquitto.conf"), conf)?;
            self.start_mqtt(i)?;
        }
        Ok(())
    }

    /// Starts backend `i`'s MQTT broker (configured by [`Lab::start_mqtt_cluster`]).
    pub fn start_mqtt(&self, i: usize) -> anyhow::Result<()> {
        let conf = self.dir.join(BACKEND_NAMES[i]).join("mosquitto.conf");
        ns(BACKENDS[i], "mosquitto", &["-d", "-c", &conf.to_string_lossy()]).map(drop)
    }

    /// Kills backend `i`'s MQTT broker (SIGKILL, a crash) and waits until it is gone.
    pub fn kill_mqtt(&self, i: usize) -> anyhow::Result<()> {
        self.stop(i, "mosquitto", libc::SIGKILL)
    }

    /// Stops backend `i`'s DNS server and waits until it is gone.
    pub fn stop_dns(&self, i: usize) -> anyhow::Result<()> {
        self.stop(i, "dnsmasq", libc::SIGTERM)
    }

    /// Gives backend `i`'s interface another MAC, as a replaced host or NIC would have; it
    /// announces nothing (no gratuitous ARP, no unsolicited neighbour advertisement).
    pub fn set_backend_mac(&self, i: usize, mac: &str) -> anyhow::Result<()> {
        in_netns(BACKENDS[i], "ip", &["link", "set", "dev", "eth0", "address", mac])
    }

    /// Freezes backend `i`'s DNS server (SIGSTOP), or lets it run again (SIGCONT): a failure
    /// that begins at a known instant, since the server stops answering at once and the
    /// health checks' probes time out.
    pub fn freeze_dns(&self, i: usize, frozen: bool) -> anyhow::Result<()> {
        let pid_file = self.dir.join(BACKEND_NAMES[i]).join("dnsmasq.pid");
        let pid: i32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
        // SAFETY: signalling the lab's own server by its pid file.
        if unsafe { libc::kill(pid, if frozen { libc::SIGSTOP } else { libc::SIGCONT }) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("signalling dnsmasq {pid}"));
        }
        Ok(())
    }

    fn stop(&self, i: usize, server: &str, signal: i32) -> anyhow::Result<()> {
        let pid_file = self.dir.join(BACKEND_NAMES[i]).join(format!("{server}.pid"));
        let pid: i32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
        // SAFETY: signalling the lab's own server by its pid file.
        unsafe { libc::kill(pid, signal) };
        // SAFETY: signal 0 only probes for existence.
        wait_until(Duration::from_secs(5), &format!("{server} to stop"), || unsafe { libc::kill(pid, 0) } != 0)
    }

    /// Attaches the decapsulation program on backend `i` for both VIPs, taking tunnel packets
    /// from the balancer's encapsulation prefixes (config/lab.toml) and, for its tunnel health
    /// checks, its own addresses.
    pub fn attach_decap(&self, i: usize) -> anyhow::Result<()> {
        let lb = self.lb.to_string_lossy().into_owned();
        let name = decap_name(i);
        let (v4, v6) = (VIP_V4.to_string(), VIP_V6.to_string());
        let (own4, own6) = (BALANCER_V4.to_string(), BALANCER_V6.to_string());
        let (b4, b6) = (fleet::BALANCER_B_V4.to_string(), fleet::BALANCER_B_V6.to_string());
        #[rustfmt::skip]
        let args = [
            "decap", "attach", "--name", &name, "--interface", "eth0", "--vip", &v4, "--vip", &v6,
            "--balancer-source", LAB_ENCAP_SOURCE_V4, "--balancer-source", LAB_ENCAP_SOURCE_V6,
            "--balancer-source", &own4, "--balancer-source", &own6,
            "--balancer-source", &b4, "--balancer-source", &b6,
        ];
        in_netns(BACKENDS[i], &lb, &args)
    }

    /// Removes backend `i`'s decapsulation program: tunnelled traffic then never reaches its servers.
    pub fn detach_decap(&self, i: usize) -> anyhow::Result<()> {
        run(Command::new(&self.lb).args(["decap", "detach", "--name", &decap_name(i)])).map(drop)
    }

    /// Gives the client `count` more IPv6 addresses (`fd00::1:0` and up), so tests can open flows
    /// from many clients.
    pub fn add_client_addresses(&self, count: u16) -> anyhow::Result<Vec<Ipv6Addr>> {
        let addrs: Vec<Ipv6Addr> = (0..count).map(|i| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, i)).collect();
        let batch: String = addrs.iter().map(|a| format!("addr add {a}/128 dev eth0 nodad\n")).collect();
        let file = self.dir.join("client-addresses.batch");
        std::fs::write(&file, batch)?;
        ns(CLIENT, "ip", &["-batch", &file.to_string_lossy()])?;
        Ok(addrs)
    }

    /// Starts `lb run` in the balancer's namespace (pins stay on the machine's bpffs), appending
    /// its log to `log`, and waits until it reports that it runs.
    pub fn start_agent(&self, config: &Path, log: &Path) -> anyhow::Result<Child> {
        self.start_agent_in(BALANCER, config, log)
    }

    fn start_agent_in(&self, netns: &str, config: &Path, log: &Path) -> anyhow::Result<Child> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let logged_before = out.metadata()?.len() as usize;
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg(&self.lb)
            .args(["run", "--config"])
            .arg(config)
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting lb run")?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("lb run exited with {status}; see {}", log.display());
            }
            let text = std::fs::read(log).unwrap_or_default();
            if String::from_utf8_lossy(&text[logged_before.min(text.len())..]).contains(" running") {
                return Ok(child);
            }
            ensure!(
                start.elapsed() < Duration::from_secs(20),
                "lb run did not report running within 20 s; see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops an agent with SIGTERM (the data plane keeps forwarding) and waits for it.
    pub fn stop_agent(&self, mut agent: Child) -> anyhow::Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while agent.try_wait()?.is_none() {
            if start.elapsed() > Duration::from_secs(10) {
                agent.kill()?;
                bail!("lb run did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Removes everything the lab created. Never fails: it is also the clean-up after failures.
    pub fn down(&self) {
        for (i, _) in BACKENDS.iter().enumerate() {
            let _ = quiet(Command::new(&self.lb).args(["decap", "detach", "--name", &decap_name(i)]));
        }
        for instance in std::iter::once(INSTANCE).chain(fleet::MEMBERS.iter().map(|m| m.instance)) {
            let _ = quiet(Command::new(&self.lb).args(["detach", "--instance", instance]));
        }
        for m in &fleet::MEMBERS {
            for file in ["bird.conf", "bird.ctl"].map(|suffix| format!("{}.{suffix}", m.instance)) {
                let _ = std::fs::remove_file(Path::new("/run/lb").join(file));
            }
            // `lb node drain`'s mark, which outlives reboots.
            let _ = std::fs::remove_file(format!("/var/lib/lb/{}.drained", m.instance));
        }
        for name in BACKEND_NAMES {
            for pid_file in ["nginx.pid", "dnsmasq.pid", "mosquitto.pid"] {
                quiet_kill_pid_file(&self.dir.join(name).join(pid_file), libc::SIGTERM);
            }
        }
        // Anything still running inside the lab's namespaces.
        for host in [CLIENT, BALANCER, fleet::BALANCER_B, ROUTER, FAR_CLIENT].iter().chain(BACKENDS.iter()) {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", host]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: as above.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for host in [SWITCH, CLIENT, BALANCER, fleet::BALANCER_B, ROUTER, FAR_CLIENT].iter().chain(BACKENDS.iter()) {
            let _ = quiet(Command::new("ip").args(["netns", "del", host]));
        }
    }
}

/// The router and the far client; the router routes the VIPs to the balancer if
/// `static_vip_routes`, else it learns them (the fleet lab's BGP).
fn router_up(static_vip_routes: bool) -> anyhow::Result<()> {
    ip(&["netns", "add", ROUTER])?;
    no_duplicate_address_detection(ROUTER)?;
    ip(&["link", "add", "eth0", "netns", ROUTER, "type", "veth", "peer", "name", "rt", "netns", SWITCH])?;
    ns(SWITCH, "ip", &["link", "set", "rt", "master", "br0", "up"])?;
    ns(ROUTER, "ip", &["link", "set", "lo", "up"])?;
    ns(ROUTER, "ip", &["link", "set", "eth0", "up"])?;
    ns(ROUTER, "ip", &["addr", "add", &format!("{ROUTER_V4}/24"), "dev", "eth0"])?;
    ns(ROUTER, "ip", &["addr", "add", &format!("{ROUTER_V6}/64"), "dev", "eth0", "nodad"])?;
    ip(&["netns", "add", FAR_CLIENT])?;
    no_duplicate_address_detection(FAR_CLIENT)?;
    ip(&["link", "add", "eth1", "netns", ROUTER, "type", "veth", "peer", "name", "eth0", "netns", FAR_CLIENT])?;
    for (key, value) in [("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1")] {
        ns(ROUTER, "sysctl", &["-qw", &format!("{key}={value}")])?;
    }
    let far_mtu = FAR_LINK_MTU.to_string();
    ns(ROUTER, "ip", &["link", "set", "eth1", "mtu", &far_mtu, "up"])?;
    ns(ROUTER, "ip", &["addr", "add", &format!("{ROUTER_FAR_V4}/24"), "dev", "eth1"])?;
    ns(ROUTER, "ip", &["addr", "add", &format!("{ROUTER_FAR_V6}/64"), "dev", "eth1", "nodad"])?;
    if static_vip_routes {
        ns(ROUTER, "ip", &["route", "add", "198.18.100.0/24", "via", &BALANCER_V4.to_string()])?;
        ns(ROUTER, "ip", &["-6", "route", "add", "fd00:100::/64", "via", &BALANCER_V6.to_string()])?;
    }
    ns(FAR_CLIENT, "ip", &["link", "set", "lo", "up"])?;
    ns(FAR_CLIENT, "ip", &["link", "set", "eth0", "up"])?;
    ns(FAR_CLIENT, "ip", &["addr", "add", &format!("{FAR_CLIENT_V4}/24"), "dev", "eth0"])?;
    ns(FAR_CLIENT, "ip", &["addr", "add", &format!("{FAR_CLIENT_V6}/64"), "dev", "eth0", "nodad"])?;
    ns(FAR_CLIENT, "ip", &["route", "add", "default", "via", &ROUTER_FAR_V4.to_string()])?;
    ns(FAR_CLIENT, "ip", &["-6", "route", "add", "default", "via", &ROUTER_FAR_V6.to_string()])?;
    ns(FAR_CLIENT, "ethtool", &["-K", "eth0", "tx", "off"]).map(drop)
}

/// The lab's addresses are unique by construction: interfaces made in `netns` from now on skip
/// duplicate address detection, for their link-local addresses too (every address added is
/// `nodad`), also when a link comes back up. Otherwise a link that comes up cannot solicit
/// neighbours for a second (the kernel solicits from the link-local address, tentative meanwhile).
pub fn no_duplicate_address_detection(netns: &str) -> anyhow::Result<()> {
    ns(netns, "sysctl", &["-qw", "net.ipv6.conf.default.accept_dad=0"]).map(drop)
}

fn decap_name(i: usize) -> String {
    format!("{PREFIX}-{}", BACKEND_NAMES[i])
}

/// Runs `program ARGS` inside namespace `netns` (`ip netns exec`), failing with its stderr.
pub fn ns(netns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(["netns", "exec", netns, program]).args(args))
}

/// Runs `program ARGS` in namespace `netns`'s network only (`nsenter --net`), keeping the
/// machine's mounts: pins made there land on the machine's bpffs and outlive the command.
pub fn in_netns(netns: &str, program: &str, args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("nsenter").arg(format!("--net=/run/netns/{netns}")).arg(program).args(args)).map(drop)
}

/// Sends `signal` to the process a pid file names, if there is one.
fn quiet_kill_pid_file(pid_file: &Path, signal: i32) {
    if let Some(pid) = std::fs::read_to_string(pid_file).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
        // SAFETY: signalling a process of the lab's by its pid file.
        unsafe { libc::kill(pid, signal) };
    }
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

/// Runs `command`; its stdout, or a failure with its stderr.
pub fn run(command: &mut Command) -> anyhow::Result<String> {
    let what = format!("{command:?}");
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}: is it installed? (`cargo xtask deps`)"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn quiet(command: &mut Command) -> std::io::Result<std::process::ExitStatus> {
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status()
}

/// Polls `ready` until it holds or `limit` passes.
pub fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !ready() {
        ensure!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Runs `f` on a thread that has joined network namespace `netns` (sockets it opens live there).
pub fn in_namespace<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || -> anyhow::Result<T> {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on this thread only, with a valid namespace fd.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {path}"));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {netns} panicked"))?
}

/// Starts `f` on a thread that has joined network namespace `netns`, and returns at once.
pub fn spawn_in_namespace(
    netns: &str,
    f: impl FnOnce() + Send + 'static,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on this thread only, with a valid namespace fd.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {path}"));
        }
        f();
        Ok(())
    })
}

/// The address of a VIP family.
pub fn vip(v6: bool) -> IpAddr {
    if v6 { IpAddr::V6(VIP_V6) } else { IpAddr::V4(VIP_V4) }
}

/// Attaches, natively, an XDP program that passes every frame to `interface` in `netns`, where
/// it stays until the interface goes. Two instructions, loaded with the bpf syscall: the lab
/// needs no compiled object for it.
fn attach_pass_program(netns: &str, interface: &str) -> anyhow::Result<()> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    // r0 = XDP_PASS (2); exit.
    const PROGRAM: [u64; 2] =
        [u64::from_le_bytes([0xb7, 0, 0, 0, 2, 0, 0, 0]), u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0])];
    let license = c"GPL";
    // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license; the rest zero.
    let mut attr = [0u64; 16];
    attr[0] = u64::from(BPF_PROG_TYPE_XDP) | ((PROGRAM.len() as u64) << 32);
    attr[1] = PROGRAM.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    // SAFETY: attr is a zeroed bpf_attr with valid pointers for the duration of the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), size_of_val(&attr)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("loading the pass program");
    }
    // SAFETY: a new file descriptor of ours.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let pin = Path::new("/sys/fs/bpf/lblab-pass");
    let _ = std::fs::remove_file(pin);
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u64; 2];
    attr[0] = path.as_ptr() as u64;
    attr[1] = fd.as_raw_fd() as u64;
    // SAFETY: as above (BPF_OBJ_PIN: pathname, bpf_fd).
    if unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_ptr(), size_of_val(&attr)) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning the pass program at {}", pin.display()));
    }
    // The attachment holds the program; the pin only carries it into the namespace's `ip`.
    let attached =
        in_netns(netns, "ip", &["link", "set", "dev", interface, "xdpdrv", "pinned", &pin.to_string_lossy()]);
    let _ = std::fs::remove_file(pin);
    attached
}
