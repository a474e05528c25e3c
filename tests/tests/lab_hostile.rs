//! End-to-end tests of hostile and awkward traffic in the namespaced lab (`lb-lab`), with the
//! real agent, data plane, servers and clients: one source flooding new flows among well-behaved
//! ones, a random-source SYN flood against established connections, path-MTU discovery on the
//! direct-return path through a narrower router, and fragmented datagrams. Needs root; never
//! skips. The lab is removed at the end, also when tests fail.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use lb_common::flow::FlowKey;
use lb_lab::{
    BACKEND_NAMES, BACKENDS, BIG_REPLY_LEN, CLIENT, CLIENT_V6, FAR_CLIENT, INSTANCE, VIP_V4, in_namespace, ns, vip,
};
use lb_tests::{
    e2e::{Env, Health, Trial, reason_count, run_trials, start},
    traffic::{Dns, Http},
};
use lb_userspace::dataplane::{BalancerMaps, PinDir};

/// New flows per second each client address may open on the DNS VIPs.
const FLOWS_PER_SOURCE: u32 = 100;
/// The web VIP's new-flow budget (flood mode past it).
const WEB_FLOW_BUDGET: u32 = 2000;
/// A UDP service of the test's own on the backends, behind the `frag` VIPs.
const FRAG_PORT: u16 = 9000;
const DATAGRAM_LEN: usize = 4096;

fn main() -> anyhow::Result<()> {
    let frag_vips: String = [("frag", VIP_V4.to_string()), ("frag6", lb_lab::VIP_V6.to_string())]
        .iter()
        .map(|(name, addr)| {
            let backends: String = (0..3)
                .map(|i| {
                    let b = if addr.contains(':') {
                        lb_lab::backend_v6(i).to_string()
                    } else {
                        lb_lab::backend_v4(i).to_string()
                    };
                    format!("[[vip.backend]]\naddress = \"{b}\"\n")
                })
                .collect();
            format!(
                "[[vip]]\nname = \"{name}\"\naddress = \"{addr}\"\nport = {FRAG_PORT}\nprotocol = \"udp\"\n{backends}"
            )
        })
        .collect();
    let health = Health {
        web_extra: format!("new_flow_budget = {WEB_FLOW_BUDGET}\n"),
        // Per client address (a /128: the lab's client addresses share one /64).
        dns_extra: format!(
            "[vip.admission]\nnew_flows_per_second = {FLOWS_PER_SOURCE}\nnew_flow_burst = 50\nsource_prefix_v6 = 128\n"
        ),
        // A client's full-size fragment fits once encapsulated (the lab's links take 1600).
        mtu: Some(1600),
        more_vips: frag_vips,
        ..Health::default()
    };
    let env = start("lab-hostile", health)?;
    if let Err(e) = env.lab.far_client_up() {
        env.lab.down();
        return Err(e.context("adding the router and the far client"));
    }
    let trials: Vec<Trial> = vec![
        ("hostile/one_source_flooding_new_udp_flows_leaves_the_others_served", flood_from_one_source),
        ("hostile/random_source_syn_flood_evicts_no_established_flow", syn_flood),
        ("hostile/path_mtu_discovery_on_the_direct_return_path", path_mtu_through_router),
        ("hostile/fragmented_4k_datagrams_all_delivered", fragmented_datagrams),
    ];
    run_trials(env, trials)
}

/// 20 client addresses open 10 DNS flows each while one address opens ten times as many: the
/// flooder is held to its per-source rate, the others are served.
fn flood_from_one_source(env: &mut Env) -> anyhow::Result<()> {
    let sources = env.lab.add_client_addresses(20)?;
    let refused_before = reason_count(env, "drop_source_flow_rate")?;
    let vip6 = vip(true);
    let stop = Arc::new(AtomicBool::new(false));
    let flood_sent = Arc::new(AtomicU64::new(0));
    let flooder = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&flood_sent));
        std::thread::spawn(move || {
            in_namespace(CLIENT, move || -> anyhow::Result<()> {
                // Ten times the others' 200 flows, as fast as they come, each from a new port.
                for _ in 0..2000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut dns = Dns::from_source(IpAddr::V6(CLIENT_V6), vip6, Duration::from_millis(1))?;
                    dns.send()?;
                    sent.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_micros(500));
                }
                Ok(())
            })
        })
    };
    let legit = in_namespace(CLIENT, move || -> anyhow::Result<(usize, usize)> {
        let handles: Vec<_> = sources
            .chunks(5)
            .map(|chunk| {
                let chunk = chunk.to_vec();
                std::thread::spawn(move || {
                    let mut served = 0;
                    for round in 0..10 {
                        for source in &chunk {
                            let answer = Dns::from_source(IpAddr::V6(*source), vip6, Duration::from_secs(1))
                                .and_then(|mut d| d.ask());
                            served += usize::from(answer.is_ok());
                        }
                        std::thread::sleep(Duration::from_millis(50 + round));
                    }
                    served
                })
            })
            .collect();
        let served: usize = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        Ok((served, 200))
    })??;
    stop.store(true, Ordering::Relaxed);
    flooder.join().map_err(|_| anyhow::anyhow!("the flooding thread panicked"))???;
    let (served, asked) = legit;
    let refused = reason_count(env, "drop_source_flow_rate")? - refused_before;
    let sent = flood_sent.load(Ordering::Relaxed);
    println!(
        "    {served} of {asked} flows of 20 well-behaved sources served while one source opened {sent} flows, \
         {refused} of them refused (drop_source_flow_rate)"
    );
    ensure!(served * 100 >= asked * 95, "only {served} of {asked} well-behaved flows served");
    ensure!(refused > 0, "the flooding source was never refused: the test did not reach its limit");
    Ok(())
}

/// The 5-tuple key of a client connection to the web VIP.
fn flow_of(local: SocketAddr) -> FlowKey {
    let (family, src) = lb_common::addr::to_key(local.ip());
    let (_, dst) = lb_common::addr::to_key(IpAddr::V4(VIP_V4));
    FlowKey::new(family, 6, src, local.port(), dst, 80)
}

/// 100 keep-alive connections, then 150,000 SYNs from random sources: the web VIP's flood
/// budget keeps the flood out of the flow table, so every connection keeps its entry and its
/// backend.
fn syn_flood(env: &mut Env) -> anyhow::Result<()> {
    let (conns, before) = in_namespace(CLIENT, || -> anyhow::Result<(Vec<Http>, Vec<String>)> {
        let mut conns = Vec::new();
        let mut names = Vec::new();
        for _ in 0..100 {
            let mut c = Http::connect(vip(false))?;
            names.push(c.get()?);
            conns.push(c);
        }
        Ok((conns, names))
    })??;
    let keys: Vec<FlowKey> = conns.iter().map(|c| c.local_addr().map(flow_of)).collect::<anyhow::Result<_>>()?;
    let maps = BalancerMaps::open_pinned(&PinDir::instance(INSTANCE))?;
    ensure!(
        keys.iter().all(|k| maps.flow(k).is_some()),
        "not every connection had a flow-table entry before the flood"
    );
    let untracked_before = reason_count(env, "tx_untracked")?;
    let started = Instant::now();
    let sent = in_namespace(CLIENT, || syn_flood_from_random_sources(150_000))??;
    let flood_time = started.elapsed();
    let untracked = reason_count(env, "tx_untracked")? - untracked_before;
    let kept = keys.iter().filter(|k| maps.flow(k).is_some()).count();
    let (conns, after) = in_namespace(CLIENT, move || -> anyhow::Result<(Vec<Http>, Vec<String>)> {
        let mut conns = conns;
        let names = conns.iter_mut().map(Http::get).collect::<anyhow::Result<Vec<_>>>()?;
        Ok((conns, names))
    })??;
    drop(conns);
    println!(
        "    {sent} SYNs from random sources in {:.1} s, {untracked} forwarded untracked (flood mode); \
         {kept} of 100 connections kept their flow-table entry",
        flood_time.as_secs_f64()
    );
    ensure!(kept == keys.len(), "the flood evicted {} of {} established flows", keys.len() - kept, keys.len());
    ensure!(before == after, "connections changed backends during the flood");
    ensure!(untracked > 0, "no SYN was forwarded untracked: flood mode never started");
    Ok(())
}

/// Sends `count` TCP SYNs to the web VIP from random sources in 198.18.128.0/17 (no client has
/// them) through a raw socket; returns how many were sent.
fn syn_flood_from_random_sources(count: u32) -> anyhow::Result<u32> {
    // SAFETY: plain socket creation; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor, owned from here on.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(VIP_V4).to_be() },
        sin_zero: [0; 8],
    };
    let mut x: u32 = 0x9e37_79b9;
    let mut sent = 0;
    for _ in 0..count {
        // xorshift: reproducible sources and ports.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let src = Ipv4Addr::new(198, 18, 128 | ((x >> 16) as u8 & 0x7f), (x >> 8) as u8);
        let mut packet = Vec::with_capacity(40);
        etherparse::PacketBuilder::ipv4(src.octets(), VIP_V4.octets(), 64)
            .tcp(1024 + (x % 60_000) as u16, 80, x, 64_240)
            .syn()
            .write(&mut packet, &[])?;
        // SAFETY: valid buffer and address for the call's duration.
        let n = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const dst).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        sent += u32::from(n == packet.len() as isize);
    }
    Ok(sent)
}

/// The far client, behind a router whose link to it is 1400 bytes, downloads a large reply
/// through each VIP: the backend's full-size segments draw the router's "fragmentation needed"
/// / "packet too big", sent to the VIP; the balancer steers it to the backend, which lowers its
/// path MTU, and the download completes.
fn path_mtu_through_router(env: &mut Env) -> anyhow::Result<()> {
    let steered_before = reason_count(env, "tx_icmp_error")?;
    for url in [format!("http://{VIP_V4}/big"), format!("http://[{}]/big", lb_lab::VIP_V6)] {
        let out = ns(
            FAR_CLIENT,
            "curl",
            &["-s", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", &url],
        )
        .with_context(|| format!("downloading {url} from the far client"))?;
        ensure!(out.trim() == format!("200 {BIG_REPLY_LEN}"), "{url}: {out}");
    }
    let steered = reason_count(env, "tx_icmp_error")? - steered_before;
    println!(
        "    two downloads of {BIG_REPLY_LEN} bytes through a 1400-byte link; {steered} ICMP errors steered to backends"
    );
    ensure!(steered > 0, "no ICMP error reached the balancer: the test did not exercise path-MTU discovery");
    Ok(())
}

/// A UDP service on the backends counting datagrams of [`DATAGRAM_LEN`] bytes and answering
/// each with its name; the client sends 100 of them to each family's VIP over its 1500-byte
/// link, so each leaves it in three fragments: every one arrives whole and is answered.
fn fragmented_datagrams(env: &mut Env) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let servers: Vec<_> = (0..3)
        .map(|i| {
            let (stop, received) = (Arc::clone(&stop), Arc::clone(&received));
            std::thread::spawn(move || {
                in_namespace(BACKENDS[i], move || -> anyhow::Result<()> {
                    let sockets = [
                        UdpSocket::bind(SocketAddr::new(IpAddr::V4(VIP_V4), FRAG_PORT))?,
                        UdpSocket::bind(SocketAddr::new(IpAddr::V6(lb_lab::VIP_V6), FRAG_PORT))?,
                    ];
                    for s in &sockets {
                        s.set_read_timeout(Some(Duration::from_millis(20)))?;
                    }
                    let mut buf = vec![0u8; 65_536];
                    while !stop.load(Ordering::Relaxed) {
                        for s in &sockets {
                            if let Ok((n, from)) = s.recv_from(&mut buf)
                                && n == DATAGRAM_LEN
                                && buf[..n].iter().all(|&b| b == 0xab)
                            {
                                received.fetch_add(1, Ordering::Relaxed);
                                s.send_to(BACKEND_NAMES[i].as_bytes(), from)?;
                            }
                        }
                    }
                    Ok(())
                })
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let fragments_before = reason_count(env, "drop_fragment_unknown")?;
    let answered = in_namespace(CLIENT, || -> anyhow::Result<usize> {
        let mut answered = 0;
        for v6 in [false, true] {
            for _ in 0..100 {
                let any = if v6 { IpAddr::from([0u16; 8]) } else { IpAddr::from([0u8; 4]) };
                let socket = UdpSocket::bind(SocketAddr::new(any, 0))?;
                socket.set_read_timeout(Some(Duration::from_secs(2)))?;
                socket.send_to(&[0xab; DATAGRAM_LEN], SocketAddr::new(vip(v6), FRAG_PORT))?;
                let mut buf = [0u8; 64];
                if let Ok((n, _)) = socket.recv_from(&mut buf) {
                    answered += usize::from(BACKEND_NAMES.iter().any(|b| b.as_bytes() == &buf[..n]));
                }
            }
        }
        Ok(answered)
    })??;
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().map_err(|_| anyhow::anyhow!("a UDP server thread panicked"))???;
    }
    let received = received.load(Ordering::Relaxed);
    let lost = reason_count(env, "drop_fragment_unknown")? - fragments_before;
    println!(
        "    200 datagrams of {DATAGRAM_LEN} bytes in fragments: {received} reassembled on backends, {answered} answered, {lost} fragments without a known datagram"
    );
    ensure!(received == 200 && answered == 200, "{received} of 200 datagrams arrived, {answered} answered");
    Ok(())
}
