//! A game-like UDP service of the test's own on every backend, whose clients carry a session id
//! in their datagrams and change source port again and again, as a NAT that rebinds does.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use lb_lab::{BACKEND_NAMES, BACKENDS, CLIENT, VIP_V4, in_namespace, spawn_in_namespace};
use lb_tests::e2e::{EQUAL, Env};

use crate::vips;

/// The game service's port (on the backends, at the VIP's address).
const GAME_PORT: u16 = 7777;
/// Clients of the trial, each with its own session.
const CLIENTS: u32 = 30;
/// Source ports each client goes through after its first.
const REBINDS: usize = 10;

/// The game VIP, its session id in the first 4 bytes of each datagram when `keyed`.
fn game_vip(keyed: bool) -> String {
    game_vip_idling_out_after(keyed, None)
}

/// The game VIP, with its own UDP idle timeout if `idle_secs` says so.
fn game_vip_idling_out_after(keyed: bool, idle_secs: Option<u16>) -> String {
    let idle = idle_secs.map_or(String::new(), |s| format!("udp_idle_timeout_secs = {s}\n"));
    let mut vip = format!(
        "\n[[vip]]\nname = \"game\"\naddress = \"{VIP_V4}\"\nport = {GAME_PORT}\nprotocol = \"udp\"\n{idle}\
         [vip.health]\nkind = \"udp\"\npayload_hex = \"00000000 70696e67\"\ninterval_ms = 200\ntimeout_ms = 100\n"
    );
    if keyed {
        vip += "[vip.session_key]\noffset = 0\nlength = 4\n";
    }
    for i in 0..3 {
        vip += &format!("[[vip.backend]]\naddress = \"{}\"\n", lb_lab::backend_v4(i));
    }
    vip
}

/// The test's game server on backends 1-3: every datagram is answered with the backend's name
/// and the datagram's first 4 bytes (its session id).
struct GameServers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl GameServers {
    fn start() -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, netns) in BACKENDS[..3].iter().enumerate() {
            let stop = Arc::clone(&stop);
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            threads.push(spawn_in_namespace(netns, move || {
                let socket = match UdpSocket::bind(("0.0.0.0", GAME_PORT)) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = socket.set_read_timeout(Some(Duration::from_millis(50)));
                let _ = ready_tx.send(Ok(()));
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = socket.recv_from(&mut buf) {
                        let mut reply = BACKEND_NAMES[i].as_bytes().to_vec();
                        reply.push(b' ');
                        reply.extend_from_slice(&buf[..n.min(4)]);
                        let _ = socket.send_to(&reply, from);
                    }
                }
            }));
            ready_rx.recv()?.map_err(|e| anyhow::anyhow!("game server in {netns}: {e}"))?;
        }
        Ok(Self { stop, threads })
    }
}

impl Drop for GameServers {
    /// Stops the servers and waits until their sockets are closed (the next trial binds again).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Each client (session id) sends from a new source port `1 + REBINDS` times; the backends that
/// answered each one, in order.
fn play() -> anyhow::Result<BTreeMap<u32, Vec<String>>> {
    play_sessions(0x6761_0000, CLIENTS, 1 + REBINDS)
}

/// Sessions `first..first + count` each send `rounds` datagrams, each from a new source port;
/// the backends that answered each session, in order.
fn play_sessions(first: u32, count: u32, rounds: usize) -> anyhow::Result<BTreeMap<u32, Vec<String>>> {
    in_namespace(CLIENT, move || -> anyhow::Result<BTreeMap<u32, Vec<String>>> {
        let vip = SocketAddr::from((VIP_V4, GAME_PORT));
        let mut answered: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for _ in 0..rounds {
            for client in 0..count {
                let session = first + client;
                // A new socket: a new source port, as after the client's NAT rebound.
                let socket = UdpSocket::bind("0.0.0.0:0")?;
                socket.set_read_timeout(Some(Duration::from_millis(300)))?;
                let datagram = [&session.to_be_bytes()[..], b" move 3 north"].concat();
                let mut buf = [0u8; 64];
                let mut reply = None;
                for _ in 0..3 {
                    socket.send_to(&datagram, vip)?;
                    if let Ok((n, _)) = socket.recv_from(&mut buf) {
                        reply = Some(buf[..n].to_vec());
                        break;
                    }
                }
                let reply = reply.with_context(|| format!("session {session:#x} got no answer"))?;
                let (name, echoed) = reply.split_at(reply.len() - 4);
                ensure!(echoed == session.to_be_bytes(), "an answer for another session: {reply:?}");
                answered.entry(session).or_default().push(String::from_utf8_lossy(name).trim().to_string());
            }
        }
        Ok(answered)
    })?
}

/// The trial's figures: how many sessions saw one backend only, and the backends used.
fn summary(answered: &BTreeMap<u32, Vec<String>>) -> (usize, BTreeSet<String>) {
    let stayed = answered.values().filter(|names| names.iter().all(|n| *n == names[0])).count();
    let used = answered.values().flatten().cloned().collect();
    (stayed, used)
}

/// With the session key every client stays on its backend through every rebind, and the
/// sessions spread over the backends; `lb trace` with the payload names the same backend, and
/// a datagram too short for the key is counted. Without the key, the same clients move.
pub fn clients_keep_their_backend_through_nat_rebinds(env: &mut Env) -> anyhow::Result<()> {
    let _servers = GameServers::start()?;
    env.health.more_vips = game_vip(true);
    env.run_agent(&EQUAL)?;
    let result = (|| {
        lb_lab::wait_until(Duration::from_secs(5), "the game backends to pass their checks", || {
            vips(env).is_ok_and(|v| v.iter().any(|v| v.name == "game" && v.session_key.is_some()))
        })?;
        std::thread::sleep(Duration::from_millis(800));
        let keyed = play()?;
        let (stayed, used) = summary(&keyed);
        println!(
            "    session key: {stayed} of {CLIENTS} clients kept their backend through {REBINDS} rebinds; backends used: {used:?}"
        );
        ensure!(stayed == CLIENTS as usize, "{} sessions moved: {keyed:?}", CLIENTS as usize - stayed);
        ensure!(used.len() >= 2, "every session on one backend: {used:?}");
        // Each session is one flow, active from its first datagram.
        let active = vips(env)?.iter().find(|v| v.name == "game").map(|v| v.active_flows).context("the game VIP")?;
        println!("    the game VIP counts {active} active sessions");
        ensure!(active == i64::from(CLIENTS), "{active} active sessions counted, {CLIENTS} expected");

        // lb trace, given the payload, names each session's backend.
        let (session, names) = keyed.iter().next().context("a session")?;
        let backend = lb_lab::backend_v4(BACKEND_NAMES.iter().position(|n| *n == names[0]).context("a backend")?);
        let trace = std::process::Command::new(&env.lab.lb)
            .args(["trace", "--instance", lb_lab::INSTANCE, "udp", "198.18.0.99", "1234"])
            .arg(VIP_V4.to_string())
            .arg(GAME_PORT.to_string())
            .arg("--payload")
            .arg(format!("{session:08x} 20 6d 6f 76 65"))
            .output()?;
        let trace = String::from_utf8_lossy(&trace.stdout);
        ensure!(trace.contains(&format!("backend: {backend}")), "lb trace disagrees ({backend}): {trace}");
        ensure!(trace.contains(&format!("session: {session:08x}")), "lb trace shows no session: {trace}");

        // A datagram shorter than the key goes by its 5-tuple and is counted.
        let misses = |env: &Env| -> anyhow::Result<u64> {
            Ok(vips(env)?.iter().find(|v| v.name == "game").and_then(|v| v.session_key.clone()).context("key")?.misses)
        };
        let before = misses(env)?;
        in_namespace(CLIENT, || -> anyhow::Result<()> {
            UdpSocket::bind("0.0.0.0:0")?.send_to(&[1, 2, 3], (VIP_V4, GAME_PORT))?;
            Ok(())
        })??;
        lb_lab::wait_until(Duration::from_secs(2), "the short datagram to be counted", || {
            misses(env).is_ok_and(|m| m == before + 1)
        })?;

        // Without the key, the same clients land wherever their new 5-tuples hash.
        env.health.more_vips = game_vip(false);
        env.run_agent(&EQUAL)?;
        std::thread::sleep(Duration::from_millis(800));
        let unkeyed = play()?;
        let (stayed, _) = summary(&unkeyed);
        println!("    without the key: {stayed} of {CLIENTS} clients kept their backend through {REBINDS} rebinds");
        ensure!(
            stayed < CLIENTS as usize / 3,
            "without the key {stayed} sessions still stayed: the test proves nothing"
        );
        Ok(())
    })();
    env.health.more_vips.clear();
    env.run_agent(&EQUAL)?;
    result
}

/// Backend 1's active sessions on the game VIP, as `lb backend list` counts them.
fn be1_sessions(env: &Env) -> anyhow::Result<i64> {
    let out = std::process::Command::new(&env.lab.lb)
        .args(["backend", "list", "--instance", lb_lab::INSTANCE, "--json", "game"])
        .output()?;
    ensure!(out.status.success(), "lb backend list: {}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<lb_userspace::agent::status::BackendStatus> = serde_json::from_slice(&out.stdout)?;
    let be1 = std::net::IpAddr::V4(lb_lab::backend_v4(0));
    rows.iter().find(|r| r.decision.address == be1).and_then(|r| r.active_flows).context("be1's active flows")
}

/// A drained backend keeps its sessions (from any source port) while they last, takes no new
/// one, and its count of active sessions falls to 0 once they idle out (the VIP's own timeout,
/// 3 s); then those sessions go elsewhere.
pub fn drained_backend_keeps_its_sessions_until_they_idle_out(env: &mut Env) -> anyhow::Result<()> {
    const IDLE_SECS: u16 = 3;
    let _servers = GameServers::start()?;
    env.health.more_vips = game_vip_idling_out_after(true, Some(IDLE_SECS));
    env.run_agent(&EQUAL)?;
    let result = (|| {
        lb_lab::wait_until(Duration::from_secs(5), "the game VIP", || {
            vips(env).is_ok_and(|v| v.iter().any(|v| v.name == "game" && v.session_key.is_some()))
        })?;
        std::thread::sleep(Duration::from_millis(800));
        let first = 0x6472_0000;
        let before = play_sessions(first, CLIENTS, 1)?;
        let on_be1: BTreeSet<u32> = before.iter().filter(|(_, b)| b[0] == "be1").map(|(s, _)| *s).collect();
        ensure!(!on_be1.is_empty(), "no session on be1: {before:?}");
        let drained = std::process::Command::new(&env.lab.lb)
            .args(["backend", "drain", "--instance", lb_lab::INSTANCE, "game"])
            .arg(lb_lab::backend_v4(0).to_string())
            .output()?;
        ensure!(drained.status.success(), "lb backend drain: {}", String::from_utf8_lossy(&drained.stderr));
        // Established sessions keep their backends, from new source ports too; new ones avoid be1.
        let again = play_sessions(first, CLIENTS, 2)?;
        for (session, backends) in &again {
            ensure!(backends.iter().all(|b| *b == before[session][0]), "session {session:#x} moved: {backends:?}");
        }
        let fresh = play_sessions(first + 0x1000, 2 * CLIENTS, 1)?;
        ensure!(fresh.values().all(|b| b[0] != "be1"), "a new session went to the drained backend");
        let active = be1_sessions(env)?;
        ensure!(active >= on_be1.len() as i64, "be1 counts {active} active sessions, {} expected", on_be1.len());
        // Silence: the sessions idle out, and the recount takes them off.
        let quiet = Instant::now();
        lb_lab::wait_until(Duration::from_secs(20), "be1's sessions to idle out", || {
            be1_sessions(env).is_ok_and(|n| n == 0)
        })?;
        let gone = quiet.elapsed();
        let after = play_sessions(first, CLIENTS, 1)?;
        ensure!(after.values().all(|b| b[0] != "be1"), "an idle session came back to the drained backend");
        println!(
            "    be1 drained with {} sessions: they stayed through 2 rebinds each, {} new sessions avoided it; its active \
             flows (earlier trials' too) went from {active} to 0 {:.1} s after they fell silent (idle timeout \
             {IDLE_SECS} s, recount every {} s); then they went elsewhere",
            on_be1.len(),
            2 * CLIENTS,
            gone.as_secs_f64(),
            lb_userspace::agent::active::RECOUNT_EVERY.as_secs()
        );
        Ok(())
    })();
    env.health.more_vips.clear();
    env.run_agent(&EQUAL)?;
    result
}
