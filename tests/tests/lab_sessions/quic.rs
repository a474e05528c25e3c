//! QUIC (quinn) servers on backends 1-3 that put their server id in every connection id they
//! issue, as QUIC-LB's plaintext algorithm has it, behind a UDP VIP that routes by that id; clients
//! that migrate (move to a new source port) in the middle of their connections.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, ensure};
use lb_lab::{BACKEND_NAMES, BACKENDS, CLIENT, TLS_NAME, VIP_V4, in_namespace, spawn_in_namespace};
use lb_tests::e2e::{EQUAL, Env};
use quinn::{
    ClientConfig, ConnectionId, ConnectionIdGenerator, Endpoint, EndpointConfig, ServerConfig, TokioRuntime,
    TransportConfig,
    rustls::{
        RootCertStore,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    },
};
use rand::{RngCore as _, SeedableRng as _};
use tokio::sync::oneshot;

use crate::vips;

/// The QUIC VIP's port (on the backends, at the VIP's address).
const QUIC_PORT: u16 = 4433;
/// Connections of the trial, each from its own client.
const CONNECTIONS: usize = 12;
/// Source ports each connection moves to after its first.
const MIGRATIONS: usize = 10;
/// The length of the servers' connection ids.
const CID_LEN: usize = 8;
/// Where a server's id starts in its connection ids (after the first octet, which QUIC-LB keeps
/// for the configuration's rotation bits), and its length.
const SERVER_ID_OFFSET: usize = 1;
const SERVER_ID_LEN: usize = 2;
/// How long a request on a connection may take before the connection counts as broken.
const REQUEST_LIMIT: Duration = Duration::from_millis(1500);

/// Backend `i`'s server id.
fn server_id(i: usize) -> [u8; SERVER_ID_LEN] {
    [0x51, 1 + i as u8]
}

/// How often the QUIC VIP's check probes, how long it waits, and the failures that take a
/// backend down.
const CHECK_INTERVAL_MS: u64 = 200;
const CHECK_TIMEOUT_MS: u64 = 100;
const CHECK_FALL: u64 = 2;

/// The QUIC VIP in front of backends 1-3, checked by QUIC version negotiation through the
/// tunnel (the servers answer at the VIP's address only); routed by the servers' ids when
/// `routed`, else by the 5-tuple alone.
fn quic_vip(routed: bool) -> String {
    let mut vip = format!(
        "\n[[vip]]\nname = \"quic\"\naddress = \"{VIP_V4}\"\nport = {QUIC_PORT}\nprotocol = \"udp\"\n\
         [vip.health]\nkind = \"quic\"\ntunnel = true\ninterval_ms = {CHECK_INTERVAL_MS}\ntimeout_ms = {CHECK_TIMEOUT_MS}\n\
         fall = {CHECK_FALL}\n"
    );
    if routed {
        vip += &format!("[vip.quic]\nserver_id_offset = {SERVER_ID_OFFSET}\nserver_id_length = {SERVER_ID_LEN}\n");
    }
    for i in 0..3 {
        vip += &format!("[[vip.backend]]\naddress = \"{}\"\n", lb_lab::backend_v4(i));
        if routed {
            let id = server_id(i);
            vip += &format!("quic_server_id = \"{:02x}{:02x}\"\n", id[0], id[1]);
        }
    }
    vip
}

/// A server's connection ids: random bytes, with the server's id at [`SERVER_ID_OFFSET`].
struct ServerIdCids {
    server_id: [u8; SERVER_ID_LEN],
    rng: rand_chacha::ChaCha8Rng,
}

impl ConnectionIdGenerator for ServerIdCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut cid = [0u8; CID_LEN];
        self.rng.fill_bytes(&mut cid);
        cid[SERVER_ID_OFFSET..][..SERVER_ID_LEN].copy_from_slice(&self.server_id);
        ConnectionId::new(&cid)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The servers' certificate (for [`TLS_NAME`], self-signed) and its key.
fn certificate() -> anyhow::Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let key = rcgen::KeyPair::generate()?;
    let certificate = rcgen::CertificateParams::new(vec![TLS_NAME.to_string()])?.self_signed(&key)?;
    Ok((certificate.der().clone(), PrivatePkcs8KeyDer::from(key.serialize_der()).into()))
}

/// The test's QUIC server on backends 1-3, at the VIP's address: each request (a stream) is
/// answered with the backend's name and the request.
struct QuicServers {
    /// Each server's stop; taken once it is stopped.
    stops: Vec<Option<oneshot::Sender<()>>>,
    threads: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl QuicServers {
    fn start(certificate: &(CertificateDer<'static>, PrivateKeyDer<'static>)) -> anyhow::Result<Self> {
        let (mut stops, mut threads) = (Vec::new(), Vec::new());
        for (i, netns) in BACKENDS[..3].iter().enumerate() {
            let server = ServerConfig::with_single_cert(vec![certificate.0.clone()], certificate.1.clone_key())?;
            let (stop, stopped) = oneshot::channel();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            threads.push(spawn_in_namespace(netns, move || {
                let served = serve(i, server, stopped, &ready_tx);
                if let Err(e) = served {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                }
            }));
            stops.push(Some(stop));
            ready_rx.recv()?.map_err(|e| anyhow::anyhow!("QUIC server in {netns}: {e}"))?;
        }
        Ok(Self { stops, threads })
    }

    /// Stops backend `i`'s server.
    fn stop(&mut self, i: usize) {
        if let Some(stop) = self.stops.get_mut(i).and_then(Option::take) {
            let _ = stop.send(());
        }
    }
}

/// Backend `i`'s server, until `stopped`; says on `ready` when it listens.
fn serve(
    i: usize,
    server: ServerConfig,
    stopped: oneshot::Receiver<()>,
    ready: &std::sync::mpsc::Sender<Result<(), String>>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let mut endpoint_config = EndpointConfig::default();
        let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_nanos() as u64 ^ i as u64;
        endpoint_config.cid_generator(move || {
            Box::new(ServerIdCids { server_id: server_id(i), rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed) })
        });
        let socket = UdpSocket::bind((VIP_V4, QUIC_PORT))?;
        let endpoint = Endpoint::new(endpoint_config, Some(server), socket, Arc::new(TokioRuntime))?;
        let _ = ready.send(Ok(()));
        let mut stopped = stopped;
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    tokio::spawn(answer(incoming, BACKEND_NAMES[i]));
                }
            }
        }
        endpoint.close(0u32.into(), b"trial over");
        endpoint.wait_idle().await;
        Ok(())
    })
}

/// Answers every request of one connection with the backend's name and the request.
async fn answer(incoming: quinn::Incoming, name: &'static str) {
    let Ok(connection) = incoming.await else { return };
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let Ok(request) = recv.read_to_end(64).await else { return };
        let _ = send.write_all(&[name.as_bytes(), b" ", &request].concat()).await;
        let _ = send.finish();
    }
}

impl Drop for QuicServers {
    /// Stops the servers and waits until their sockets are closed.
    fn drop(&mut self) {
        for stop in self.stops.drain(..).flatten() {
            let _ = stop.send(());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// What became of one connection: the backend that answered each of its requests, in order, and
/// what ended it early, if anything did.
#[derive(Debug, Default)]
struct Journey {
    backends: Vec<String>,
    broken: Option<String>,
}

impl Journey {
    /// Whether the connection answered every request, from one backend.
    fn survived(&self) -> bool {
        self.broken.is_none() && self.backends.iter().all(|b| *b == self.backends[0])
    }
}

/// [`CONNECTIONS`] connections to the VIP at once, from the client's namespace, each with a
/// request from its first source port and one after each of [`MIGRATIONS`] moves to a new one.
fn migrate_all(certificate: &CertificateDer<'static>) -> anyhow::Result<Vec<Journey>> {
    let mut roots = RootCertStore::empty();
    roots.add(certificate.clone())?;
    let mut client = ClientConfig::with_root_certificates(Arc::new(roots))?;
    let mut transport = TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(5).try_into()?));
    client.transport_config(Arc::new(transport));
    in_namespace(CLIENT, move || -> anyhow::Result<Vec<Journey>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            let mut journeys = Vec::new();
            for c in 0..CONNECTIONS {
                let endpoint = Endpoint::new(
                    EndpointConfig::default(),
                    None,
                    UdpSocket::bind("0.0.0.0:0")?,
                    Arc::new(TokioRuntime),
                )?;
                journeys.push(tokio::spawn(journey(c, endpoint, client.clone())));
            }
            let mut done = Vec::new();
            for journey in journeys {
                done.push(journey.await?);
            }
            Ok(done)
        })
    })?
}

/// Connection `c`'s requests, a new source port before each but the first.
async fn journey(c: usize, endpoint: Endpoint, client: ClientConfig) -> Journey {
    let mut journey = Journey::default();
    let vip = SocketAddr::from((VIP_V4, QUIC_PORT));
    let result = async {
        let connecting = endpoint.connect_with(client, vip, TLS_NAME)?;
        let connection = tokio::time::timeout(REQUEST_LIMIT, connecting).await.context("the handshake timed out")??;
        for round in 0..=MIGRATIONS {
            if round > 0 {
                // The client moves: its NAT rebound, or it changed networks.
                endpoint.rebind(UdpSocket::bind("0.0.0.0:0")?)?;
            }
            let request = format!("connection {c} request {round}");
            let answer = tokio::time::timeout(REQUEST_LIMIT, ask(&connection, &request))
                .await
                .with_context(|| format!("request {round} timed out"))??;
            let (name, echoed) = answer.split_once(' ').context("an answer without the backend's name")?;
            ensure!(echoed == request, "the answer to another request: {answer:?}");
            journey.backends.push(name.to_string());
        }
        connection.close(0u32.into(), b"done");
        anyhow::Ok(())
    }
    .await;
    journey.broken = result.err().map(|e| format!("{e:#}"));
    journey
}

/// One request on a new stream of `connection`; the answer.
async fn ask(connection: &quinn::Connection, request: &str) -> anyhow::Result<String> {
    let (mut send, mut recv) = connection.open_bi().await?;
    send.write_all(request.as_bytes()).await?;
    send.finish()?;
    Ok(String::from_utf8(recv.read_to_end(64).await?)?)
}

/// The QUIC VIP's backends, as `lb backend list` shows them.
fn backends(env: &Env) -> anyhow::Result<Vec<lb_userspace::agent::status::BackendStatus>> {
    let out = std::process::Command::new(&env.lab.lb)
        .args(["backend", "list", "--instance", lb_lab::INSTANCE, "--json", "quic"])
        .output()?;
    ensure!(out.status.success(), "lb backend list: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The QUIC VIP's backends whose last check passed (a backend starts up before its first).
fn passing(env: &Env) -> anyhow::Result<Vec<std::net::IpAddr>> {
    let rows = backends(env)?;
    Ok(rows
        .iter()
        .filter(|r| r.check_latency_ms.is_some() && r.last_error.is_none())
        .map(|r| r.decision.address)
        .collect())
}

/// The QUIC VIP's backends that take new flows.
fn taking_flows(env: &Env) -> anyhow::Result<Vec<std::net::IpAddr>> {
    Ok(backends(env)?.iter().filter(|r| r.decision.in_table).map(|r| r.decision.address).collect())
}

/// Connections that survived, and the backends that served them.
fn summary(journeys: &[Journey]) -> (usize, BTreeMap<String, usize>) {
    let mut used = BTreeMap::new();
    for backend in journeys.iter().filter_map(|j| j.backends.first()) {
        *used.entry(backend.clone()).or_default() += 1;
    }
    (journeys.iter().filter(|j| j.survived()).count(), used)
}

/// With the VIP routing by server id, every connection survives every migration on the backend it
/// began on, and no packet misses (every short header's server id is known). Without it, the same
/// connections break at their moves: a new 5-tuple lands on a server that does not know the
/// connection.
pub fn connections_survive_client_migrations(env: &mut Env) -> anyhow::Result<()> {
    let certificate = certificate()?;
    let mut servers = QuicServers::start(&certificate)?;
    env.health.more_vips = quic_vip(true);
    env.run_agent(&EQUAL)?;
    let result = (|| {
        lb_lab::wait_until(Duration::from_secs(5), "the QUIC servers to pass their checks", || {
            passing(env).is_ok_and(|up| up.len() == 3)
        })?;
        std::thread::sleep(Duration::from_millis(300));
        let routed = migrate_all(&certificate.0)?;
        let (survived, used) = summary(&routed);
        println!(
            "    routed by server id: {survived} of {CONNECTIONS} connections answered all {} requests from one \
             backend through {MIGRATIONS} migrations; connections per backend: {used:?}",
            MIGRATIONS + 1
        );
        ensure!(survived == CONNECTIONS, "connections broke or moved: {routed:?}");
        ensure!(used.len() >= 2, "every connection on one backend: {used:?}");
        let key = vips(env)?.into_iter().find(|v| v.name == "quic").and_then(|v| v.session_key).context("the key")?;
        ensure!(key.kind == "quic_server_id", "the QUIC VIP's key is of kind {}", key.kind);
        ensure!(key.misses == 0, "{} short headers with an unknown or cut server id", key.misses);

        // The check sees a server stop.
        servers.stop(2);
        let stopped = Instant::now();
        let bound = Duration::from_millis(CHECK_FALL * (CHECK_INTERVAL_MS * 11 / 10 + 10) + CHECK_TIMEOUT_MS);
        let be3 = std::net::IpAddr::from(lb_lab::backend_v4(2));
        lb_lab::wait_until(bound + Duration::from_secs(1), "be3 to fail its QUIC check", || {
            taking_flows(env).is_ok_and(|up| up.len() == 2 && !up.contains(&be3))
        })?;
        println!(
            "    be3's QUIC server stopped: its check took it out {:.0} ms later (detection bound {} ms)",
            stopped.elapsed().as_secs_f64() * 1000.0,
            bound.as_millis()
        );

        // By the 5-tuple alone, a moved client lands where its new address hashes.
        env.health.more_vips = quic_vip(false);
        env.run_agent(&EQUAL)?;
        std::thread::sleep(Duration::from_millis(800));
        let unrouted = migrate_all(&certificate.0)?;
        let (survived, _) = summary(&unrouted);
        let first_break = unrouted.iter().find_map(|j| j.broken.as_ref());
        println!(
            "    by the 5-tuple: {survived} of {CONNECTIONS} connections survived {MIGRATIONS} migrations (first error: \
             {first_break:?})"
        );
        ensure!(
            survived < CONNECTIONS / 3,
            "without routing by server id {survived} survived: the test proves nothing"
        );
        Ok(())
    })();
    env.health.more_vips.clear();
    env.run_agent(&EQUAL)?;
    result
}
