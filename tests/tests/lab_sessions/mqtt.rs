//! An MQTT broker cluster (mosquitto on backends 1-3, bridged) behind a TCP VIP, with clients of
//! rumqttc.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use lb_lab::{CLIENT, MQTT_PORT, VIP_V4, spawn_in_namespace};
use lb_tests::e2e::{EQUAL, Env};
use rumqttc::{Event, Packet, QoS};

/// MQTT clients of the trial: subscribers, and as many publishers.
const MQTT_SUBSCRIBERS: usize = 50;
/// Messages each publisher sends per batch.
const MQTT_BATCH: usize = 5;
const MQTT_INTERVAL_MS: u64 = 200;
const MQTT_FALL: u64 = 2;
const MQTT_TIMEOUT_MS: u64 = 100;

/// The MQTT VIP in front of the brokers of backends 1-3.
fn mqtt_vip() -> String {
    let mut vip = format!(
        "\n[[vip]]\nname = \"mqtt\"\naddress = \"{VIP_V4}\"\nport = {MQTT_PORT}\nprotocol = \"tcp\"\n\
         [vip.health]\nkind = \"tcp\"\ninterval_ms = {MQTT_INTERVAL_MS}\ntimeout_ms = {MQTT_TIMEOUT_MS}\nrise = 2\nfall = {MQTT_FALL}\n"
    );
    for i in 0..3 {
        vip += &format!("[[vip.backend]]\naddress = \"{}\"\n", lb_lab::backend_v4(i));
    }
    vip
}

/// What one MQTT client saw.
#[derive(Default)]
struct MqttClient {
    /// Connections acknowledged, with when.
    connected: Vec<Instant>,
    /// When the connection was lost.
    lost: Vec<Instant>,
    /// Payloads received (subscribers).
    received: BTreeSet<String>,
    subscribed: bool,
}

/// 100 MQTT clients through the VIP, each driving its connection on a thread in the client's
/// namespace and reconnecting (after 50 ms) when it is lost; subscribers subscribe to `lab/#`
/// (quality of service 1) on every connection.
struct MqttClients {
    state: Arc<Mutex<Vec<MqttClient>>>,
    publishers: Vec<rumqttc::Client>,
    stop: Arc<AtomicBool>,
}

impl MqttClients {
    fn start() -> Self {
        let state = Arc::new(Mutex::new((0..2 * MQTT_SUBSCRIBERS).map(|_| MqttClient::default()).collect::<Vec<_>>()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut publishers = Vec::new();
        for i in 0..2 * MQTT_SUBSCRIBERS {
            let subscriber = i < MQTT_SUBSCRIBERS;
            let mut options = rumqttc::MqttOptions::new(format!("client-{i}"), VIP_V4.to_string(), MQTT_PORT);
            options.set_keep_alive(Duration::from_secs(5)).set_clean_session(true);
            let (client, mut connection) = rumqttc::Client::new(options, 64);
            let (state, stop) = (Arc::clone(&state), Arc::clone(&stop));
            let subscribing = client.clone();
            spawn_in_namespace(CLIENT, move || {
                while !stop.load(Ordering::Relaxed) {
                    match connection.recv_timeout(Duration::from_millis(100)) {
                        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                            state.lock().expect("state")[i].connected.push(Instant::now());
                            if subscriber {
                                let _ = subscribing.try_subscribe("lab/#", QoS::AtLeastOnce);
                            }
                        }
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => state.lock().expect("state")[i].subscribed = true,
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            let payload = String::from_utf8_lossy(&p.payload).into_owned();
                            state.lock().expect("state")[i].received.insert(payload);
                        }
                        Ok(Ok(_)) | Err(_) => {}
                        Ok(Err(_)) => {
                            let mut s = state.lock().expect("state");
                            if s[i].connected.len() > s[i].lost.len() {
                                s[i].lost.push(Instant::now());
                            }
                            s[i].subscribed = false;
                            drop(s);
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            });
            if !subscriber {
                publishers.push(client);
            }
        }
        Self { state, publishers, stop }
    }

    /// Waits until every client is connected and every subscriber subscribed.
    fn ready(&self, limit: Duration) -> anyhow::Result<()> {
        lb_lab::wait_until(limit, "every MQTT client connected and subscribed", || {
            let s = self.state.lock().expect("state");
            s.iter()
                .enumerate()
                .all(|(i, c)| c.connected.len() > c.lost.len() && (i >= MQTT_SUBSCRIBERS || c.subscribed))
        })
    }

    /// Every publisher sends `MQTT_BATCH` messages tagged `batch`; waits until every subscriber
    /// has them all, or says how many are missing.
    fn deliver(&self, batch: &str, limit: Duration) -> anyhow::Result<()> {
        for (p, client) in self.publishers.iter().enumerate() {
            for n in 0..MQTT_BATCH {
                client.publish(format!("lab/p{p}"), QoS::AtLeastOnce, false, format!("{batch}:{p}:{n}"))?;
            }
        }
        let expected = self.publishers.len() * MQTT_BATCH * MQTT_SUBSCRIBERS;
        let prefix = format!("{batch}:");
        let have = |s: &[MqttClient]| -> usize {
            s[..MQTT_SUBSCRIBERS].iter().map(|c| c.received.iter().filter(|m| m.starts_with(&prefix)).count()).sum()
        };
        let result = lb_lab::wait_until(limit, "every subscriber to receive the batch", || {
            have(&self.state.lock().expect("state")) == expected
        });
        let got = have(&self.state.lock().expect("state"));
        result.with_context(|| format!("{got} of {expected} deliveries of batch {batch}"))
    }
}

impl Drop for MqttClients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An MQTT broker cluster (three bridged mosquittos) behind a TCP VIP: 50 subscribers and 50
/// publishers through the VIP, each connection balanced on its own, so publishers and their
/// subscribers sit on different brokers. Every message is delivered to every subscriber. A
/// broker is killed: its clients reconnect to the others within the check's detection time, the
/// others' connections are never lost, and every message published after is delivered again.
pub fn mqtt_cluster_behind_the_vip(env: &mut Env) -> anyhow::Result<()> {
    env.lab.start_mqtt_cluster()?;
    env.health.more_vips = mqtt_vip();
    env.run_agent(&EQUAL)?;
    let result = (|| {
        // The bridges connect within their restart timeout.
        std::thread::sleep(Duration::from_millis(1500));
        let clients = MqttClients::start();
        clients.ready(Duration::from_secs(10))?;
        std::thread::sleep(Duration::from_millis(300));
        clients.deliver("first", Duration::from_secs(10))?;
        println!(
            "    {MQTT_SUBSCRIBERS} subscribers received all {} messages of {} publishers",
            clients.publishers.len() * MQTT_BATCH,
            clients.publishers.len()
        );

        let killed = Instant::now();
        env.lab.kill_mqtt(2)?;
        let bound = Duration::from_millis(MQTT_FALL * (MQTT_INTERVAL_MS * 11 / 10 + 10) + MQTT_TIMEOUT_MS);
        // Lost connections show first; then everyone is connected again.
        std::thread::sleep(Duration::from_millis(200));
        clients.ready(bound + Duration::from_secs(3))?;
        let (affected, slowest, unbroken) = {
            let s = clients.state.lock().expect("state");
            let lost: Vec<&MqttClient> = s.iter().filter(|c| c.lost.iter().any(|t| *t >= killed)).collect();
            let slowest = lost
                .iter()
                .filter_map(|c| c.connected.iter().rev().find(|t| **t >= killed).map(|t| *t - killed))
                .max()
                .unwrap_or_default();
            (lost.len(), slowest, s.iter().filter(|c| c.lost.is_empty()).count())
        };
        println!(
            "    broker of be3 killed: {affected} clients lost their connection and all were connected again within \
             {:.0} ms (detection bound {} ms); {unbroken} never lost theirs",
            slowest.as_secs_f64() * 1000.0,
            bound.as_millis()
        );
        ensure!(affected > 0, "no client was on the killed broker");
        ensure!(affected + unbroken == 2 * MQTT_SUBSCRIBERS, "clients not on the killed broker lost their connection");
        ensure!(
            slowest <= bound + Duration::from_millis(500),
            "reconnecting took {slowest:?}, past the detection bound {bound:?} and half a second"
        );
        std::thread::sleep(Duration::from_millis(300));
        clients.deliver("second", Duration::from_secs(10))?;
        println!("    after the kill, every subscriber received every new message");
        Ok(())
    })();
    let _ = env.lab.start_mqtt(2);
    env.health.more_vips.clear();
    env.run_agent(&EQUAL)?;
    result
}
