//! In-kernel packet tests: the real compiled XDP programs run through BPF_PROG_RUN (repeat = 1)
//! on table-driven fixtures. Each fixture gives input bytes and expects a verdict, exact output
//! bytes and exact counter changes (one reason counter up by one packet, nothing else; VIP and
//! backend counters where traffic is forwarded).
//!
//! The process moves into a private network namespace first, so FIB lookups see only what these
//! tests create, and nothing can reach the machine's interfaces. Needs root; never skips.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, anyhow, bail, ensure};
use lb_common::{
    backend::Backend,
    counters::{Reason, ReasonCounter},
    dataplane::DataplaneConfig,
    decap::unlisted_source,
    flood::FLOOD_WINDOW_NS,
    flow::{HashKey, flow_hash, source_hash},
    least_connections::{candidates, second_wins},
    maglev::{MaglevBackend, build_table, table_slot},
    maps,
    nexthop::NextHop,
    sequence::{SequenceMember, smooth_sequence},
    vip::{VipAddrKey, VipKey, scheduler},
};
use lb_lab::run;
use lb_tests::{
    packet::{
        BALANCER_MAC, CLIENT_MAC, Encap, FALLBACK_MAC, Flow, Protocol, Shape, TcpFlags, dataplane_config, encapsulated,
        fix_ipv4_checksum, frame, key_addr, l3_offset, too_big_answer,
    },
    privileged::{enter_private_netns, require_root},
    xdp::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, run_once, verdict_name},
};
use lb_userspace::{
    dataplane::pins::PinDir,
    dataplane::{Balancer, BalancerSizes, Decap, VipFlood},
    host::nexthop::NextHops,
    reconcile::{Scheduling, VipTable},
};
use libtest_mimic::{Arguments, Failed, Trial};

mod admission;
mod fragments;
mod icmp;

const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10);
const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const VIP4_ALL_PORTS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const VIP4_V6_BACKENDS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);
const VIP4_EMPTY: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 4);
const VIP4_FIB_SAME: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 5);
const VIP4_FIB_OTHER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 6);
const VIP4_FIB_SMALL_MTU: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 7);
const VIP4_REBUILD: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 8);
const VIP4_REMOVAL: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 9);
const VIP4_SOURCE_HASH: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const VIP4_ROUND_ROBIN: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
const VIP4_LEAST_CONNECTIONS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 12);
const NOT_VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 9);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
const VIP6_V4_BACKENDS: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 3);
const NOT_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 9);
/// The MTU of [`config`].
const MTU: u16 = 1500;

/// Three IPv4 backends with ids `first_id..first_id + 3`: like the agent's, ids belong to one
/// VIP (the data plane checks a record's VIP).
fn v4_backends(first_id: u32) -> Vec<(u32, IpAddr)> {
    (1..=3).map(|i| (first_id + i - 1, IpAddr::V4(Ipv4Addr::new(198, 18, 10, i as u8)))).collect()
}

fn v6_backends(first_id: u32) -> Vec<(u32, IpAddr)> {
    (11..=13).map(|i| (first_id + i - 11, IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, i as u16)))).collect()
}

fn config() -> DataplaneConfig {
    dataplane_config(HASH_KEY)
}

/// The tunnel sources the decapsulation fixtures accept: the balancer's encapsulation prefixes.
const BALANCER_SOURCES: [(IpAddr, u8); 2] = [
    (IpAddr::V4(Ipv4Addr::new(198, 18, 200, 0)), 24),
    (IpAddr::V6(Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 0)), 112),
];

/// The fixtures' flow hash key (an instance's secret).
const HASH_KEY: HashKey = [0x5eed_0f1a_b5c4_1e57, 0x0123_4567_89ab_cdef];

/// The loaded programs plus the userspace copy of what was installed, to predict every decision.
struct Env {
    balancer: Balancer,
    decap: Decap,
    /// VIP -> (index, table).
    vips: HashMap<VipKey, (u32, Vec<u32>)>,
    /// VIPs read other than as a Maglev table of the flow hash.
    schedulings: HashMap<VipKey, Scheduling>,
    /// Round-robin position of each sequence VIP on the CPU the tests run on.
    positions: HashMap<VipKey, usize>,
    backends: HashMap<u32, IpAddr>,
    /// Backend weights other than 1.
    weights: HashMap<u32, u32>,
    next_port: u16,
    /// Interfaces of the FIB fixtures: name -> (ifindex, MAC).
    links: HashMap<&'static str, (u32, [u8; 6])>,
}

impl Env {
    fn new() -> anyhow::Result<Self> {
        let mut balancer = Balancer::load(BalancerSizes::flows(4096))?;
        balancer.set_config(&config())?;
        let mut decap = Decap::load()?;
        for addr in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
            let (family, a) = key_addr(addr);
            decap.add_vip(VipAddrKey::new(family, a))?;
        }
        decap.set_sources(&BALANCER_SOURCES, unlisted_source::DROP)?;
        let mut env = Env {
            balancer,
            decap,
            vips: HashMap::new(),
            schedulings: HashMap::new(),
            positions: HashMap::new(),
            backends: HashMap::new(),
            weights: HashMap::new(),
            next_port: 20_000,
            links: HashMap::new(),
        };
        env.vip(0, VIP4.into(), 80, Protocol::Tcp, &v4_backends(1), 65_537)?;
        env.vip(1, VIP4.into(), 53, Protocol::Udp, &v4_backends(101), 251)?;
        env.vip(2, VIP4_ALL_PORTS.into(), 0, Protocol::Tcp, &v4_backends(201), 251)?;
        env.vip(3, VIP6.into(), 80, Protocol::Tcp, &v6_backends(301), 65_537)?;
        env.vip(4, VIP6.into(), 53, Protocol::Udp, &v6_backends(401), 251)?;
        env.vip(5, VIP4_V6_BACKENDS.into(), 80, Protocol::Tcp, &v6_backends(501), 251)?;
        env.vip(6, VIP4_EMPTY.into(), 80, Protocol::Tcp, &[], 251)?;
        env.vip(7, VIP6_V4_BACKENDS.into(), 80, Protocol::Tcp, &v4_backends(701), 251)?;
        let rebuild: Vec<_> = (0..4).map(|i| (40 + i, IpAddr::V4(Ipv4Addr::new(198, 18, 12, i as u8 + 1)))).collect();
        env.vip(8, VIP4_REBUILD.into(), 80, Protocol::Tcp, &rebuild, 251)?;
        let removal: Vec<_> = (0..2).map(|i| (50 + i, IpAddr::V4(Ipv4Addr::new(198, 18, 13, i as u8 + 1)))).collect();
        env.vip(9, VIP4_REMOVAL.into(), 80, Protocol::Tcp, &removal, 251)?;
        // Schedulers other than Maglev, on the same backends with their own ids.
        let hashed: Vec<_> = (0..3).map(|i| (70 + i, IpAddr::V4(Ipv4Addr::new(198, 18, 10, i as u8 + 1)))).collect();
        env.vip(13, VIP4_SOURCE_HASH.into(), 80, Protocol::Tcp, &hashed, 251)?;
        let source_hash =
            Scheduling { scheduler: scheduler::SOURCE_HASH, source_prefix_len: 24, new_flow_budget: 0, admission: 0 };
        env.reschedule(VIP4_SOURCE_HASH.into(), source_hash)?;
        let dealt: Vec<_> = (0..3).map(|i| (80 + i, IpAddr::V4(Ipv4Addr::new(198, 18, 10, i as u8 + 1)))).collect();
        env.vip(14, VIP4_ROUND_ROBIN.into(), 80, Protocol::Tcp, &dealt, 251)?;
        let members: Vec<SequenceMember> = dealt
            .iter()
            .zip([1, 2, 3])
            .map(|(&(id, addr), weight)| {
                let (family, a) = key_addr(addr);
                SequenceMember { addr: a, family, weight, id }
            })
            .collect();
        let key = VipKey::new(lb_common::family::IPV4, key_addr(VIP4_ROUND_ROBIN.into()).1, 80, 6);
        let sequence = VipTable {
            index: 14,
            scheduling: Scheduling {
                scheduler: scheduler::SEQUENCE,
                source_prefix_len: 0,
                new_flow_budget: 0,
                admission: 0,
            },
            table: smooth_sequence(&members),
        };
        env.balancer.install_vip(&key, &sequence)?;
        env.vips.insert(key, (14, sequence.table.clone()));
        env.schedulings.insert(key, sequence.scheduling);
        let least = Scheduling {
            scheduler: scheduler::LEAST_CONNECTIONS,
            source_prefix_len: 0,
            new_flow_budget: 0,
            admission: 0,
        };
        for (index, port, protocol, first_id) in [(15, 80, Protocol::Tcp, 90), (16, 53, Protocol::Udp, 93)] {
            let ids: Vec<_> =
                (0..3).map(|i| (first_id + i, IpAddr::V4(Ipv4Addr::new(198, 18, 10, i as u8 + 1)))).collect();
            env.vip(index, VIP4_LEAST_CONNECTIONS.into(), port, protocol, &ids, 251)?;
            let key = VipKey::new(
                lb_common::family::IPV4,
                key_addr(VIP4_LEAST_CONNECTIONS.into()).1,
                port,
                protocol.number(),
            );
            let table = env.vips[&key].1.clone();
            env.balancer.install_vip(&key, &VipTable { index, scheduling: least, table })?;
            env.schedulings.insert(key, least);
        }
        Ok(env)
    }

    /// Installs a VIP with `backends` (all weight 1) and remembers its table.
    fn vip(
        &mut self,
        index: u32,
        addr: IpAddr,
        port: u16,
        protocol: Protocol,
        backends: &[(u32, IpAddr)],
        size: u32,
    ) -> anyhow::Result<()> {
        let (family, a) = key_addr(addr);
        let key = VipKey::new(family, a, port, protocol.number());
        let mut maglev = Vec::new();
        for &(id, backend) in backends {
            let (bf, ba) = key_addr(backend);
            self.balancer.set_backend(id, &Backend::new(bf, ba, index as u16, key.tag()))?;
            self.backends.insert(id, backend);
            maglev.push(MaglevBackend { addr: ba, family: bf, weight: 1, id });
        }
        let table = if maglev.is_empty() { Vec::new() } else { build_table(&maglev, size)? };
        self.balancer.install_vip(&key, &maglev_vip(index, &table))?;
        self.vips.insert(key, (index, table));
        Ok(())
    }

    fn port(&mut self) -> u16 {
        self.next_port += 1;
        self.next_port
    }

    fn lookup_vip(&self, flow: &Flow) -> Option<(u32, &Vec<u32>)> {
        lb_common::vip::find_vip(&flow.key(), |vip| self.vips.get(vip)).map(|(i, t)| (*i, t))
    }

    /// The backend the userspace copy of the table picks for a new flow (for a round-robin VIP:
    /// the next in turn on this CPU; [`Env::dealt`] advances it).
    fn predict(&self, flow: &Flow) -> anyhow::Result<(u32, u32, IpAddr)> {
        let (index, table) = self.lookup_vip(flow).ok_or_else(|| anyhow!("no VIP for {flow:?}"))?;
        let (family, a) = key_addr(flow.dst);
        let vip_key = VipKey::new(family, a, flow.dst_port, flow.protocol.number());
        let how = self.schedulings.get(&vip_key).copied().unwrap_or_default();
        let slot = match how.scheduler {
            scheduler::SOURCE_HASH => {
                table_slot(source_hash(&flow.key(), how.source_prefix_len, &HASH_KEY), table.len() as u32) as usize
            }
            scheduler::SEQUENCE => self.positions.get(&vip_key).copied().unwrap_or(0) % table.len(),
            scheduler::LEAST_CONNECTIONS => {
                let id = self.fewer_active_flows(flow, table)?;
                return Ok((index, id, self.backends[&id]));
            }
            _ => table_slot(flow_hash(&flow.key(), &HASH_KEY), table.len() as u32) as usize,
        };
        let id = table[slot];
        Ok((index, id, self.backends[&id]))
    }

    /// Least connections' choice for a SYN or a UDP flow, from the counts in the map and the
    /// weights of [`Env::weights`] (1 unless set).
    fn fewer_active_flows(&self, flow: &Flow, table: &[u32]) -> anyhow::Result<u32> {
        let at = |slot: u32| table.get(slot as usize).copied();
        let (first, second) = candidates(flow_hash(&flow.key(), &HASH_KEY), table.len() as u32, at).context("table")?;
        let Some(second) = second else { return Ok(first) };
        let load = |id: u32| -> anyhow::Result<(u64, u32)> {
            Ok((self.balancer.active_flows(id)?.max(0) as u64, self.weights.get(&id).copied().unwrap_or(1)))
        };
        let ((a, wa), (b, wb)) = (load(first)?, load(second)?);
        Ok(if second_wins(a, wa, b, wb) { second } else { first })
    }

    /// A round-robin VIP dealt one new flow on this CPU.
    fn dealt(&mut self, vip_key: VipKey) {
        *self.positions.entry(vip_key).or_default() += 1;
    }

    /// Switches a VIP's scheduling (same table).
    fn reschedule(&mut self, addr: IpAddr, how: Scheduling) -> anyhow::Result<()> {
        let (family, a) = key_addr(addr);
        let key = VipKey::new(family, a, 80, 6);
        let (index, table) = self.vips[&key].clone();
        self.balancer.install_vip(&key, &VipTable { index, scheduling: how, table })?;
        self.schedulings.insert(key, how);
        Ok(())
    }

    /// The outer source for `flow` towards a backend of `backend`'s family, per the config.
    fn outer_src(flow: &Flow, backend: IpAddr) -> IpAddr {
        outer_src(flow_hash(&flow.key(), &HASH_KEY), backend)
    }

    fn reasons(&self) -> anyhow::Result<Vec<ReasonCounter>> {
        Ok(self.balancer.reason_counters()?)
    }
}

/// A VIP read as a Maglev table.
/// The VIP tag backend `id`'s record carries now.
fn tag_of(env: &Env, id: u32) -> anyhow::Result<u32> {
    Ok(env.balancer.current()?.backends.get(&id).context("no such backend")?.vip_tag)
}

fn maglev_vip(index: u32, table: &[u32]) -> VipTable {
    VipTable { index, scheduling: Scheduling::default(), table: table.to_vec() }
}

/// What a fixture expects of one packet.
#[derive(Debug)]
struct Expect {
    verdict: u32,
    reason: Reason,
    /// None: the output must equal the input.
    output: Option<Vec<u8>>,
    /// Forwarded: (VIP index, backend id, new flow).
    forwarded: Option<(u32, u32, bool)>,
}

impl Expect {
    fn pass(reason: Reason) -> Self {
        Expect { verdict: XDP_PASS, reason, output: None, forwarded: None }
    }
    fn drop(reason: Reason) -> Self {
        Expect { verdict: XDP_DROP, reason, output: None, forwarded: None }
    }
}

/// Runs the balancer once on `input` and checks verdict, output bytes and counters.
fn check(env: &mut Env, input: &[u8], ingress: Option<u32>, expect: &Expect) -> anyhow::Result<()> {
    let reasons_before = env.reasons()?;
    let counters_before = match expect.forwarded {
        Some((vip, backend, _)) => Some((env.balancer.vip_counters(vip)?, env.balancer.backend_counters(backend)?)),
        None => None,
    };
    let run = run_once(env.balancer.program()?, input, ingress)?;
    ensure!(
        run.verdict == expect.verdict,
        "verdict {} expected {} (reason {})",
        verdict_name(run.verdict),
        verdict_name(expect.verdict),
        expect.reason.name()
    );
    if expect.verdict != XDP_DROP {
        let want = expect.output.as_deref().unwrap_or(input);
        if run.output != want {
            bail!("output differs\n  got:  {}\n  want: {}", hex(&run.output), hex(want));
        }
    }
    check_reason(&reasons_before, &env.reasons()?, expect.reason, input.len())?;
    if let (Some((vip, backend, new_flow)), Some((vip_before, backend_before))) = (expect.forwarded, counters_before) {
        let (vip_after, backend_after) = (env.balancer.vip_counters(vip)?, env.balancer.backend_counters(backend)?);
        let bytes = input.len() as u64;
        ensure!(
            vip_after.packets == vip_before.packets + 1 && vip_after.bytes == vip_before.bytes + bytes,
            "VIP {vip} traffic counters {vip_before:?} -> {vip_after:?}"
        );
        ensure!(
            vip_after.new_flows == vip_before.new_flows + u64::from(new_flow),
            "VIP {vip} new flows {} -> {}, new flow expected: {new_flow}",
            vip_before.new_flows,
            vip_after.new_flows
        );
        ensure!(
            backend_after.packets == backend_before.packets + 1 && backend_after.bytes == backend_before.bytes + bytes,
            "backend {backend} counters {backend_before:?} -> {backend_after:?}"
        );
    }
    Ok(())
}

/// Exactly one packet of `len` bytes was counted, under `reason`.
fn check_reason(before: &[ReasonCounter], after: &[ReasonCounter], reason: Reason, len: usize) -> anyhow::Result<()> {
    for (i, r) in Reason::ALL.iter().enumerate() {
        let (packets, bytes) = (after[i].packets - before[i].packets, after[i].bytes - before[i].bytes);
        let want = if *r == reason { (1, len as u64) } else { (0, 0) };
        ensure!(
            (packets, bytes) == want,
            "counter {}: +{packets} packets/+{bytes} bytes, expected +{}/+{}",
            r.name(),
            want.0,
            want.1
        );
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Expectation for a packet the balancer must encapsulate towards the predicted backend and
/// send to the fallback MAC.
fn expect_encap(env: &Env, flow: &Flow, input: &[u8], shape: &Shape, new_flow: bool) -> anyhow::Result<Expect> {
    let (vip, id, backend) = env.predict(flow)?;
    let hash = flow_hash(&flow.key(), &HASH_KEY);
    Ok(sent_to(input, l3_offset(shape), backend, hash, Reason::TxFallback, (vip, id, new_flow)))
}

/// The outer source of a flow with hash `hash` towards a backend of `backend`'s family.
fn outer_src(hash: u32, backend: IpAddr) -> IpAddr {
    match backend {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 18, 200, hash as u8)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, hash as u16)),
    }
}

/// `input` (its IP header at `l3`) sent to `backend`: encapsulated with the outer source and
/// flow label of flow hash `hash`, to the fallback MAC, under `reason`, counted as `forwarded`
/// (VIP index, backend id, new flow).
fn sent_to(input: &[u8], l3: usize, backend: IpAddr, hash: u32, reason: Reason, forwarded: (u32, u32, bool)) -> Expect {
    let encap = Encap {
        outer_src: outer_src(hash, backend),
        outer_dst: backend,
        src_mac: BALANCER_MAC,
        dst_mac: FALLBACK_MAC,
        flow_hash: hash,
    };
    Expect { verdict: XDP_TX, reason, output: Some(encapsulated(input, l3, &encap)), forwarded: Some(forwarded) }
}

type Shared = Arc<Mutex<Env>>;
type Body = fn(&mut Env) -> anyhow::Result<()>;

fn flow(env: &mut Env, protocol: Protocol, dst: IpAddr, dst_port: u16) -> Flow {
    let src = if dst.is_ipv4() { IpAddr::V4(CLIENT4) } else { IpAddr::V6(CLIENT6) };
    Flow { protocol, src, src_port: env.port(), dst, dst_port }
}

/// A new flow to a VIP: encapsulated to the predicted backend.
fn encap_case(env: &mut Env, protocol: Protocol, dst: IpAddr, port: u16, shape: Shape) -> anyhow::Result<()> {
    let f = flow(env, protocol, dst, port);
    let input = frame(&f, &shape);
    let expect = expect_encap(env, &f, &input, &shape, true)?;
    check(env, &input, None, &expect)?;
    // The second packet of the flow hits the flow table: same bytes, no new flow.
    let expect = expect_encap(env, &f, &input, &shape, false)?;
    check(env, &input, None, &expect)
}

/// A frame of a new flow to `dst`, edited by `edit` (which gets the IP header offset), that must
/// get `expect`.
fn edited_case(
    env: &mut Env,
    protocol: Protocol,
    dst: IpAddr,
    port: u16,
    edit: impl Fn(&mut Vec<u8>, usize),
    expect: Expect,
) -> anyhow::Result<()> {
    let f = flow(env, protocol, dst, port);
    let shape = Shape::default();
    let mut input = frame(&f, &shape);
    edit(&mut input, l3_offset(&shape));
    check(env, &input, None, &expect)
}

fn set_u16(frame: &mut [u8], at: usize, value: u16) {
    frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

fn get_u16(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

/// Inserts an IPv6 extension header of type `ext` right after the fixed header.
fn insert_ipv6_extension(frame: &mut Vec<u8>, l3: usize, ext: u8, body: [u8; 8]) {
    let mut header = body;
    header[0] = frame[l3 + 6]; // next header of the extension = the original next header
    frame[l3 + 6] = ext;
    let payload = get_u16(frame, l3 + 4);
    set_u16(frame, l3 + 4, payload + 8);
    let at = l3 + 40;
    frame.splice(at..at, header);
}

fn arp_frame() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&CLIENT4.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&VIP4.octets());
    f
}

fn icmpv6_frame(icmp_type: u8, dst: Ipv6Addr) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, BALANCER_MAC)
        .ipv6(CLIENT6.octets(), dst.octets(), 255)
        .icmpv6_raw(icmp_type, 0, [0; 4])
        .write(&mut out, &VIP6.octets())
        .expect("frame fits");
    out
}

/// The kernel verifies at most a million instructions per program, counting every path it
/// explores. A branchy stage in the fast path can multiply the count by the paths after it, so
/// this fixture keeps a margin for what comes next and says how much is used.
fn verifier_headroom(env: &mut Env) -> anyhow::Result<()> {
    const LIMIT: u32 = 1_000_000;
    let info = env.balancer.program()?.info()?;
    // Type information the kernel refuses is dropped by the loader with a warning; types BTF
    // cannot express (an `Option` of a tuple holding a reference, returned by a subprogram) did.
    ensure!(info.btf_id().is_some(), "the balancer was loaded without its BTF: the kernel refused the object's types");
    let verified = info.verified_instruction_count().context("kernel without verified_insns")?;
    println!("balancer: {verified} instructions verified of the kernel's {LIMIT}");
    ensure!(
        verified < LIMIT * 7 / 10,
        "the verifier explored {verified} instructions, over 70% of its limit of {LIMIT}: move branchy stages into \
         #[inline(never)] functions or compute more in the agent"
    );
    Ok(())
}

/// The agent's VLAN offload switch on a real interface (a veth pair in this test's namespace):
/// both receive offloads on before, off after, and a second call finds nothing to do.
fn vlan_offload_turned_off(_: &mut Env) -> anyhow::Result<()> {
    use lb_userspace::host::vlan::{RECEIVE_VLAN_OFFLOADS, keep_vlan_tags, receive_offload};
    let (a, b) = ("lbvlan0", "lbvlan1");
    run(Command::new("ip").args(["link", "add", a, "type", "veth", "peer", "name", b]))?;
    let result = (|| {
        for feature in RECEIVE_VLAN_OFFLOADS {
            ensure!(receive_offload(a, feature)? == Some(true), "{feature} was not on to begin with");
        }
        let off = keep_vlan_tags(a)?;
        ensure!(off == RECEIVE_VLAN_OFFLOADS, "turned off {off:?}");
        for feature in RECEIVE_VLAN_OFFLOADS {
            ensure!(receive_offload(a, feature)? == Some(false), "{feature} still on");
        }
        ensure!(keep_vlan_tags(a)?.is_empty(), "a second call turned something off");
        Ok(())
    })();
    run(Command::new("ip").args(["link", "del", a]))?;
    result
}

fn cases() -> Vec<(&'static str, Body)> {
    vec![
        ("host/receive_vlan_offload_turned_off", vlan_offload_turned_off),
        ("verifier/balancer_headroom", verifier_headroom),
        // Forwarded traffic: exact encapsulated bytes, counters, and a flow-table hit.
        ("encap/tcp4_to_vip", |e| encap_case(e, Protocol::Tcp, VIP4.into(), 80, Shape::default())),
        ("encap/udp4_to_vip", |e| encap_case(e, Protocol::Udp, VIP4.into(), 53, Shape::default())),
        ("encap/tcp6_to_vip", |e| encap_case(e, Protocol::Tcp, VIP6.into(), 80, Shape::default())),
        ("encap/udp6_to_vip", |e| encap_case(e, Protocol::Udp, VIP6.into(), 53, Shape::default())),
        ("encap/all_ports_vip_port_8443", |e| {
            encap_case(e, Protocol::Tcp, VIP4_ALL_PORTS.into(), 8443, Shape::default())
        }),
        ("encap/all_ports_vip_port_22", |e| encap_case(e, Protocol::Tcp, VIP4_ALL_PORTS.into(), 22, Shape::default())),
        ("encap/ipv4_vip_ipv6_backends", |e| {
            encap_case(e, Protocol::Tcp, VIP4_V6_BACKENDS.into(), 80, Shape::default())
        }),
        ("encap/ipv6_vip_ipv4_backends", |e| {
            encap_case(e, Protocol::Tcp, VIP6_V4_BACKENDS.into(), 80, Shape::default())
        }),
        ("encap/vlan_tagged_tcp4_keeps_tag", |e| {
            encap_case(e, Protocol::Tcp, VIP4.into(), 80, Shape { vlan: Some(100), ..Shape::default() })
        }),
        ("encap/vlan_tagged_udp6_keeps_tag", |e| {
            encap_case(e, Protocol::Udp, VIP6.into(), 53, Shape { vlan: Some(4094), ..Shape::default() })
        }),
        ("encap/dscp_and_ecn_copied_v4", |e| {
            encap_case(e, Protocol::Udp, VIP4.into(), 53, Shape { tos: 0xb8 | 0b10, ..Shape::default() })
        }),
        ("encap/traffic_class_copied_v6", |e| {
            encap_case(e, Protocol::Tcp, VIP6.into(), 80, Shape { tos: 0x28 | 0b01, ..Shape::default() })
        }),
        ("encap/df_clear_copied", |e| {
            encap_case(e, Protocol::Udp, VIP4.into(), 53, Shape { dont_fragment: false, ..Shape::default() })
        }),
        ("encap/ttl_1_forwarded_unchanged", |e| {
            encap_case(e, Protocol::Tcp, VIP4.into(), 80, Shape { ttl: 1, ..Shape::default() })
        }),
        ("encap/hop_limit_1_forwarded_unchanged", |e| {
            encap_case(e, Protocol::Udp, VIP6.into(), 53, Shape { ttl: 1, ..Shape::default() })
        }),
        ("mtu/ipv4_exactly_at_mtu_forwarded", |e| {
            encap_case(e, Protocol::Tcp, VIP4.into(), 80, Shape { payload_len: 1440, ..Shape::default() })
        }),
        ("mtu/ipv6_exactly_at_mtu_forwarded", |e| {
            encap_case(e, Protocol::Tcp, VIP6.into(), 80, Shape { payload_len: 1400, ..Shape::default() })
        }),
        ("mtu/ipv4_one_byte_over_answered_with_fragmentation_needed", |e| {
            too_big_case(e, Protocol::Tcp, VIP4.into(), 80, Shape { payload_len: 1441, ..Shape::default() }, MTU - 20)
        }),
        ("mtu/ipv6_one_byte_over_answered_with_packet_too_big", |e| {
            too_big_case(e, Protocol::Tcp, VIP6.into(), 80, Shape { payload_len: 1401, ..Shape::default() }, MTU - 40)
        }),
        ("mtu/ipv4_to_ipv6_backends_announces_their_overhead", |e| {
            too_big_case(
                e,
                Protocol::Tcp,
                VIP4_V6_BACKENDS.into(),
                80,
                Shape { payload_len: 1421, ..Shape::default() },
                MTU - 40,
            )
        }),
        ("mtu/vlan_tagged_udp6_answered_with_its_tag", |e| {
            let shape = Shape { vlan: Some(33), payload_len: 1413, ..Shape::default() };
            too_big_case(e, Protocol::Udp, VIP6.into(), 53, shape, MTU - 40)
        }),
        ("mtu/ipv4_without_df_over_mtu_dropped", |e| {
            let f = flow(e, Protocol::Udp, VIP4.into(), 53);
            let shape = Shape { payload_len: 1453, dont_fragment: false, ..Shape::default() };
            check(e, &frame(&f, &shape), None, &Expect::drop(Reason::DropTooBig))
        }),
        // Not for a VIP: passed byte for byte.
        ("pass/arp", |e| check(e, &arp_frame(), None, &Expect::pass(Reason::PassNotIp))),
        ("pass/lldp", |e| {
            let mut f = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e];
            f.extend_from_slice(&CLIENT_MAC);
            f.extend_from_slice(&[0x88, 0xcc, 0x02, 0x07, 0x04, 0, 0, 0, 0, 0, 1, 0, 0]);
            check(e, &f, None, &Expect::pass(Reason::PassNotIp))
        }),
        ("pass/vlan_tagged_arp", |e| {
            let mut f = arp_frame();
            f.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
            check(e, &f, None, &Expect::pass(Reason::PassNotIp))
        }),
        ("pass/qinq_to_vip_never_forwarded_with_a_tag_unparsed", |e| {
            // Two tags (802.1ad outer, 802.1Q inner): the program parses one, so the frame is
            // the kernel's, never sent on with the inner tag alone.
            let f = flow(e, Protocol::Tcp, VIP4.into(), 80);
            let mut input = frame(&f, &Shape { vlan: Some(100), ..Shape::default() });
            input.splice(12..12, [0x88, 0xa8, 0x00, 0xc8]);
            check(e, &input, None, &Expect::pass(Reason::PassNotIp))
        }),
        ("pass/ipv6_neighbour_solicitation", |e| {
            let target = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 1);
            check(e, &icmpv6_frame(135, target), None, &Expect::pass(Reason::PassNotVip))
        }),
        ("pass/ipv6_neighbour_advertisement_to_vip_address", |e| {
            check(e, &icmpv6_frame(136, VIP6), None, &Expect::pass(Reason::PassNotVip))
        }),
        ("pass/icmp_timestamp_to_vip_address", |e| {
            // ICMP other than echo and errors about flows (`icmp/...`) is the kernel's.
            let mut f = Vec::new();
            etherparse::PacketBuilder::ethernet2(CLIENT_MAC, BALANCER_MAC)
                .ipv4(CLIENT4.octets(), VIP4.octets(), 64)
                .icmpv4_raw(13, 0, [0; 4])
                .write(&mut f, &[0; 12])?;
            check(e, &f, None, &Expect::pass(Reason::PassNotVip))
        }),
        ("pass/tcp4_not_a_vip", |e| {
            let f = flow(e, Protocol::Tcp, NOT_VIP4.into(), 80);
            check(e, &frame(&f, &Shape::default()), None, &Expect::pass(Reason::PassNotVip))
        }),
        ("pass/tcp6_not_a_vip", |e| {
            let f = flow(e, Protocol::Tcp, NOT_VIP6.into(), 80);
            check(e, &frame(&f, &Shape::default()), None, &Expect::pass(Reason::PassNotVip))
        }),
        ("pass/vip_address_other_port", |e| {
            let f = flow(e, Protocol::Tcp, VIP4.into(), 81);
            check(e, &frame(&f, &Shape::default()), None, &Expect::pass(Reason::PassNotVip))
        }),
        ("pass/vip_port_other_protocol", |e| {
            let f = flow(e, Protocol::Udp, VIP4.into(), 80);
            check(e, &frame(&f, &Shape::default()), None, &Expect::pass(Reason::PassNotVip))
        }),
        ("pass/ipv4_options_not_for_a_vip", |e| {
            edited_case(e, Protocol::Tcp, NOT_VIP4.into(), 80, add_ipv4_options, Expect::pass(Reason::PassNotVip))
        }),
        ("pass/ipv4_fragment_not_for_a_vip", |e| {
            edited_case(
                e,
                Protocol::Udp,
                NOT_VIP4.into(),
                53,
                |f, l3| {
                    set_u16(f, l3 + 6, 0x2000);
                    fix_ipv4_checksum(f, l3)
                },
                Expect::pass(Reason::PassNotVip),
            )
        }),
        // Policy drops for VIP addresses.
        ("drop/ipv4_options", |e| {
            edited_case(e, Protocol::Tcp, VIP4.into(), 80, add_ipv4_options, Expect::drop(Reason::DropIpv4Options))
        }),
        ("drop/ipv6_hop_by_hop_header", |e| {
            edited_case(
                e,
                Protocol::Tcp,
                VIP6.into(),
                80,
                |f, l3| insert_ipv6_extension(f, l3, 0, [0, 0, 1, 4, 0, 0, 0, 0]),
                Expect::drop(Reason::DropIpv6Extension),
            )
        }),
        ("drop/ipv4_ihl_4", |e| {
            edited_case(
                e,
                Protocol::Tcp,
                VIP4.into(),
                80,
                |f, l3| {
                    f[l3] = 0x44;
                    fix_ipv4_checksum(f, l3)
                },
                Expect::drop(Reason::DropBadHeader),
            )
        }),
        ("drop/ipv4_version_5", |e| {
            edited_case(
                e,
                Protocol::Tcp,
                VIP4.into(),
                80,
                |f, l3| {
                    f[l3] = 0x55;
                    fix_ipv4_checksum(f, l3)
                },
                Expect::drop(Reason::DropBadHeader),
            )
        }),
        ("drop/ipv4_total_length_below_header", |e| {
            edited_case(
                e,
                Protocol::Tcp,
                VIP4.into(),
                80,
                |f, l3| {
                    set_u16(f, l3 + 2, 19);
                    fix_ipv4_checksum(f, l3)
                },
                Expect::drop(Reason::DropBadHeader),
            )
        }),
        ("drop/ipv4_total_length_beyond_frame", |e| {
            edited_case(
                e,
                Protocol::Tcp,
                VIP4.into(),
                80,
                |f, l3| {
                    let l = get_u16(f, l3 + 2);
                    set_u16(f, l3 + 2, l + 1);
                    fix_ipv4_checksum(f, l3)
                },
                Expect::drop(Reason::DropTruncated),
            )
        }),
        ("drop/ipv4_total_length_cuts_tcp_header", |e| {
            edited_case(
                e,
                Protocol::Tcp,
                VIP4.into(),
                80,
                |f, l3| {
                    set_u16(f, l3 + 2, 20 + 19);
                    fix_ipv4_checksum(f, l3)
                },
                Expect::drop(Reason::DropTruncated),
            )
        }),
        ("drop/ipv4_total_length_cuts_udp_header", |e| {
            edited_case(
                e,
                Protocol::Udp,
                VIP4.into(),
                53,
                |f, l3| {
                    set_u16(f, l3 + 2, 20 + 7);
                    fix_ipv4_checksum(f, l3)
                },
                Expect::drop(Reason::DropTruncated),
            )
        }),
        ("drop/ipv6_payload_length_beyond_frame", |e| {
            edited_case(
                e,
                Protocol::Udp,
                VIP6.into(),
                53,
                |f, l3| {
                    let l = get_u16(f, l3 + 4);
                    set_u16(f, l3 + 4, l + 1)
                },
                Expect::drop(Reason::DropTruncated),
            )
        }),
        ("drop/ipv6_version_4_in_ipv6_frame", |e| {
            edited_case(
                e,
                Protocol::Udp,
                VIP6.into(),
                53,
                |f, l3| f[l3] = 0x40 | (f[l3] & 0x0f),
                Expect::drop(Reason::DropBadHeader),
            )
        }),
        ("drop/ipv4_ttl_0", |e| {
            edited_case(
                e,
                Protocol::Tcp,
                VIP4.into(),
                80,
                |f, l3| {
                    f[l3 + 8] = 0;
                    fix_ipv4_checksum(f, l3)
                },
                Expect::drop(Reason::DropTtlExpired),
            )
        }),
        ("drop/ipv6_hop_limit_0", |e| {
            edited_case(e, Protocol::Udp, VIP6.into(), 53, |f, l3| f[l3 + 7] = 0, Expect::drop(Reason::DropTtlExpired))
        }),
        ("drop/vip_without_backends", |e| {
            let f = flow(e, Protocol::Tcp, VIP4_EMPTY.into(), 80);
            check(e, &frame(&f, &Shape::default()), None, &Expect::drop(Reason::DropNoBackend))
        }),
        // Truncation at every byte of the headers (BPF_PROG_RUN refuses frames under 14 bytes).
        ("truncated/tcp4_every_cut", |e| truncation_sweep(e, Protocol::Tcp, VIP4.into(), 80, None)),
        ("truncated/udp4_every_cut", |e| truncation_sweep(e, Protocol::Udp, VIP4.into(), 53, None)),
        ("truncated/tcp6_every_cut", |e| truncation_sweep(e, Protocol::Tcp, VIP6.into(), 80, None)),
        ("truncated/udp6_every_cut", |e| truncation_sweep(e, Protocol::Udp, VIP6.into(), 53, None)),
        ("truncated/vlan_tcp4_every_cut", |e| truncation_sweep(e, Protocol::Tcp, VIP4.into(), 80, Some(7))),
        ("truncated/vlan_udp6_every_cut", |e| truncation_sweep(e, Protocol::Udp, VIP6.into(), 53, Some(7))),
        ("truncated/not_a_vip_every_cut_passes", |e| {
            let f = flow(e, Protocol::Tcp, NOT_VIP4.into(), 80);
            let full = frame(&f, &Shape::default());
            for cut in 14..full.len() {
                let reason = if cut < 14 + 20 { Reason::PassUnparseable } else { Reason::PassNotVip };
                check(e, &full[..cut], None, &Expect::pass(reason)).with_context(|| format!("cut at {cut} bytes"))?;
            }
            Ok(())
        }),
        // Flow table and table changes.
        ("flows/hit_keeps_backend_after_table_rebuilt_without_it", flow_survives_rebuild),
        ("flows/removed_backend_is_rescheduled", removed_backend_rescheduled),
        ("tables/largest_table_spans_chunks", largest_table_spans_chunks),
        ("counters/removed_backend_keeps_vip_and_reason_totals", removed_backend_keeps_totals),
        ("flows/draining_backend_keeps_pinned_flows_down_backend_sheds_them", drain_keeps_down_sheds),
        ("flows/backend_id_reused_by_another_vip_reschedules", reused_id_of_another_vip_reschedules),
        ("pins/a_pinned_map_of_another_layout_is_refused", pinned_map_of_another_layout),
        ("flows/udp_idle_timeout_reschedules", udp_idle_timeout),
        ("schedulers/source_hash_keeps_a_clients_prefix_on_one_backend", source_hash_case),
        ("schedulers/weighted_round_robin_deals_the_sequence_in_turn", round_robin_case),
        ("schedulers/least_connections_counts_tcp_from_ack_to_fin", least_connections_tcp_counts),
        ("schedulers/least_connections_counts_udp_until_idle", least_connections_udp_counts),
        ("schedulers/least_connections_fewer_active_flows_per_weight_wins", least_connections_choice),
        ("flows/removed_vip_passes", |e| {
            let key = VipKey::new(lb_common::family::IPV4, key_addr(VIP4_ALL_PORTS.into()).1, 0, 6);
            e.balancer.remove_vip(&key)?;
            let f = flow(e, Protocol::Tcp, VIP4_ALL_PORTS.into(), 443);
            let result = check(e, &frame(&f, &Shape::default()), None, &Expect::pass(Reason::PassNotVip));
            let (index, table) = e.vips[&key].clone();
            e.balancer.install_vip(&key, &maglev_vip(index, &table))?;
            result
        }),
        // Flood mode: past a VIP's new-flow budget, new flows are forwarded without entries.
        ("flood/past_the_budget_new_flows_get_no_entry_established_flows_stay", flood_enters),
        ("flood/a_quiet_window_ends_flood_mode", flood_leaves),
        // Next hop from the FIB, in links this test creates in its private namespace.
        ("nexthop/fib_same_interface_tx", fib_same_interface),
        ("nexthop/fib_other_interface_redirect", fib_other_interface),
        ("nexthop/fib_route_mtu_too_big", fib_route_mtu),
        ("nexthop/vlan_tagged_other_interface_uses_fallback", fib_vlan_other_interface),
        // Next hops the agent resolves from the kernel's tables (the same links), used without the FIB.
        ("nexthop/resolved_same_interface_tx", resolved_same_interface),
        ("nexthop/resolved_other_interface_redirect", resolved_other_interface),
        ("nexthop/vlan_tagged_resolved_elsewhere_uses_fallback", resolved_vlan_other_interface),
        ("nexthop/neighbour_gone_falls_back_to_the_fib", resolved_neighbour_gone),
        ("nexthop/readdressed_backend_forgets_its_next_hop", resolved_backend_readdressed),
        // Backend-side decapsulation.
        ("decap/ipip", |e| decap_case(e, VIP4.into(), "198.18.10.1", 0, 0, true)),
        ("decap/ip6ip6", |e| decap_case(e, VIP6.into(), "fd00:10::1", 0, 0, true)),
        ("decap/ipv4_in_ipv6", |e| decap_case(e, VIP4.into(), "fd00:10::1", 0, 0, true)),
        ("decap/ipv6_in_ipv4", |e| decap_case(e, VIP6.into(), "198.18.10.1", 0, 0, true)),
        ("decap/ce_copied_to_ect_inner_v4", |e| decap_case(e, VIP4.into(), "198.18.10.1", 0b10, 0b11, true)),
        ("decap/ce_copied_to_ect_inner_v6", |e| decap_case(e, VIP6.into(), "fd00:10::1", 0b01, 0b11, true)),
        ("decap/ce_not_copied_to_not_ect_inner", |e| decap_case(e, VIP4.into(), "198.18.10.1", 0, 0b11, true)),
        ("decap/unknown_inner_vip_passes_untouched", |e| {
            decap_case(e, VIP4_ALL_PORTS.into(), "198.18.10.1", 0, 0, false)
        }),
        ("decap/plain_traffic_passes_untouched", |e| {
            let f = flow(e, Protocol::Tcp, VIP4.into(), 80);
            decap_check(e, &frame(&f, &Shape::default()), None, Reason::DecapPassNotTunnel)
        }),
        ("decap/arp_passes_untouched", |e| decap_check(e, &arp_frame(), None, Reason::DecapPassNotTunnel)),
        ("decap/truncated_inner_header_passes", |e| {
            let f = flow(e, Protocol::Tcp, VIP4.into(), 80);
            let input = frame(&f, &Shape::default());
            let tunnel = encapsulated(&input, 14, &encap_to("198.18.10.1"));
            decap_check(e, &tunnel[..14 + 20 + 19], None, Reason::PassUnparseable)
        }),
        ("decap/balancer_output_round_trips", balancer_decap_round_trip),
        ("decap/unknown_ipv4_source_dropped", |e| decap_from(e, "198.18.50.1", "198.18.10.1", unlisted_source::DROP)),
        ("decap/unknown_ipv6_source_dropped", |e| decap_from(e, "fd00:50::1", "fd00:10::1", unlisted_source::DROP)),
        ("decap/unknown_source_passed_untouched_if_configured", |e| {
            decap_from(e, "198.18.201.1", "198.18.10.1", unlisted_source::PASS)
        }),
    ]
}

/// A packet too big to encapsulate: answered in place with an ICMP error announcing `mtu`.
fn too_big_case(
    env: &mut Env,
    protocol: Protocol,
    dst: IpAddr,
    port: u16,
    shape: Shape,
    mtu: u16,
) -> anyhow::Result<()> {
    let f = flow(env, protocol, dst, port);
    let input = frame(&f, &shape);
    let output = too_big_answer(&input, l3_offset(&shape), mtu);
    check(
        env,
        &input,
        None,
        &Expect { verdict: XDP_TX, reason: Reason::TxIcmpTooBig, output: Some(output), forwarded: None },
    )
}

/// Every flow of clients in one /24 goes to the backend the source hash picks.
fn source_hash_case(env: &mut Env) -> anyhow::Result<()> {
    let shape = Shape::default();
    let mut seen = std::collections::BTreeSet::new();
    for client in [[198, 18, 0, 10], [198, 18, 0, 99], [198, 18, 0, 10]] {
        for _ in 0..3 {
            let f = Flow {
                protocol: Protocol::Tcp,
                src: IpAddr::V4(client.into()),
                src_port: env.port(),
                dst: VIP4_SOURCE_HASH.into(),
                dst_port: 80,
            };
            let input = frame(&f, &shape);
            let expect = expect_encap(env, &f, &input, &shape, true)?;
            seen.insert(expect.forwarded.map(|x| x.1));
            check(env, &input, None, &expect)?;
        }
    }
    ensure!(seen.len() == 1, "one /24 reached several backends: {seen:?}");
    Ok(())
}

/// Consecutive new flows are dealt the weighted sequence (1:2:3) in turn.
fn round_robin_case(env: &mut Env) -> anyhow::Result<()> {
    let shape = Shape::default();
    let key = VipKey::new(lb_common::family::IPV4, key_addr(VIP4_ROUND_ROBIN.into()).1, 80, 6);
    let mut dealt = Vec::new();
    for _ in 0..12 {
        let f = flow(env, Protocol::Tcp, VIP4_ROUND_ROBIN.into(), 80);
        let input = frame(&f, &shape);
        let expect = expect_encap(env, &f, &input, &shape, true)?;
        let backend = expect.forwarded.map(|x| x.1).unwrap_or(0);
        dealt.push(backend);
        check(env, &input, None, &expect)?;
        env.dealt(key);
        // The flow's second packet stays with its backend, and does not advance the turn.
        let again = expect_encap_to(env, &f, &input, &shape, backend, false)?;
        check(env, &input, None, &again)?;
    }
    let count = |id| dealt.iter().filter(|&&d| d == id).count();
    ensure!((count(80), count(81), count(82)) == (2, 4, 6), "dealt {dealt:?}");
    // Smooth: never three in a row (two only where one pass of the sequence ends and the next begins).
    ensure!(dealt.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])), "a burst of one backend: {dealt:?}");
    Ok(())
}

fn least_connections_key(port: u16, protocol: Protocol) -> VipKey {
    VipKey::new(lb_common::family::IPV4, key_addr(VIP4_LEAST_CONNECTIONS.into()).1, port, protocol.number())
}

/// Active flows of backends `ids`.
fn active(env: &Env, ids: std::ops::Range<u32>) -> anyhow::Result<Vec<i64>> {
    ids.map(|id| Ok(env.balancer.active_flows(id)?)).collect()
}

/// A TCP flow counts from the client's first ACK to its FIN or RST: spoofed SYNs never count, a
/// retransmitted SYN keeps its backend, a SYN after the end is a new connection.
fn least_connections_tcp_counts(env: &mut Env) -> anyhow::Result<()> {
    let ids = 90..93;
    for id in ids.clone() {
        env.balancer.set_active_flows(id, 0)?;
    }
    let segment = |flags| Shape { tcp: flags, ..Shape::default() };
    // A SYN flood: twenty SYNs from different ports, none answered.
    for _ in 0..20 {
        let f = flow(env, Protocol::Tcp, VIP4_LEAST_CONNECTIONS.into(), 80);
        let (shape, input) = (segment(TcpFlags::Syn), frame(&f, &segment(TcpFlags::Syn)));
        check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)?;
    }
    ensure!(active(env, ids.clone())? == [0, 0, 0], "SYNs counted: {:?}", active(env, ids.clone())?);

    let f = flow(env, Protocol::Tcp, VIP4_LEAST_CONNECTIONS.into(), 80);
    let (_, owner, _) = env.predict(&f)?;
    let mut counts = [0i64; 3];
    let slot = (owner - 90) as usize;
    for (step, flags, new_flow, delta) in [
        ("SYN", TcpFlags::Syn, true, 0),
        ("retransmitted SYN", TcpFlags::Syn, false, 0),
        ("handshake ACK", TcpFlags::Ack, false, 1),
        ("data ACK", TcpFlags::Ack, false, 0),
        ("client FIN", TcpFlags::FinAck, false, -1),
        ("last ACK", TcpFlags::Ack, false, 0),
        ("FIN again", TcpFlags::FinAck, false, 0),
    ] {
        let shape = segment(flags);
        let input = frame(&f, &shape);
        let expect = expect_encap_to(env, &f, &input, &shape, owner, new_flow)?;
        check(env, &input, None, &expect).with_context(|| step.to_string())?;
        counts[slot] += delta;
        ensure!(
            active(env, ids.clone())? == counts,
            "after the {step}: {:?}, expected {counts:?}",
            active(env, ids.clone())?
        );
    }
    // The same ports again: a new connection, scheduled afresh (and not counted before its ACK).
    let shape = segment(TcpFlags::Syn);
    let input = frame(&f, &shape);
    check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?).context("SYN after the end")?;
    ensure!(active(env, ids.clone())? == [0, 0, 0], "a reopened connection counted before its ACK");

    // An ACK flood: twenty lone ACKs from different ports, as spoofed ones would be.
    for _ in 0..20 {
        let f = flow(env, Protocol::Tcp, VIP4_LEAST_CONNECTIONS.into(), 80);
        let (shape, input) = (Shape::default(), frame(&f, &Shape::default()));
        check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)?;
    }
    ensure!(active(env, ids.clone())? == [0, 0, 0], "lone ACKs counted: {:?}", active(env, ids.clone())?);

    // A connection first seen mid-stream (its entry was evicted, or it began on another
    // balancer) counts from its second packet; the client's RST ends it.
    let g = flow(env, Protocol::Tcp, VIP4_LEAST_CONNECTIONS.into(), 80);
    let (_, owner, _) = env.predict(&g)?;
    let shape = Shape::default();
    let input = frame(&g, &shape);
    check(env, &input, None, &expect_encap(env, &g, &input, &shape, true)?)?;
    check(env, &input, None, &expect_encap_to(env, &g, &input, &shape, owner, false)?)?;
    ensure!(env.balancer.active_flows(owner)? == 1, "mid-connection flow not counted at its second packet");
    let shape = segment(TcpFlags::Rst);
    let input = frame(&g, &shape);
    check(env, &input, None, &expect_encap_to(env, &g, &input, &shape, owner, false)?).context("RST")?;
    ensure!(active(env, ids)? == [0, 0, 0], "RST did not end the flow");
    Ok(())
}

/// A UDP flow counts from its first datagram; rescheduled after its idle timeout, it moves its
/// count to the new backend's.
fn least_connections_udp_counts(env: &mut Env) -> anyhow::Result<()> {
    let ids = 93..96;
    for id in ids.clone() {
        env.balancer.set_active_flows(id, 0)?;
    }
    let shape = Shape::default();
    let f = flow(env, Protocol::Udp, VIP4_LEAST_CONNECTIONS.into(), 53);
    let input = frame(&f, &shape);
    let (_, owner, _) = env.predict(&f)?;
    check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)?;
    ensure!(env.balancer.active_flows(owner)? == 1, "first datagram not counted");
    check(env, &input, None, &expect_encap_to(env, &f, &input, &shape, owner, false)?)?;
    ensure!(active(env, ids.clone())?.iter().sum::<i64>() == 1, "{:?}", active(env, ids.clone())?);

    // Its backend goes down while the VIP has no other: the flow stops counting, once, however
    // many datagrams then find no backend.
    let key = least_connections_key(53, Protocol::Udp);
    let (index, table) = env.vips[&key].clone();
    let record = {
        let (family, a) = key_addr(env.backends[&owner]);
        Backend::new(family, a, index as u16, key.tag())
    };
    env.balancer.set_backend(owner, &record.keeping_flows(false))?;
    env.balancer.install_vip(&key, &VipTable { index, scheduling: env.schedulings[&key], table: Vec::new() })?;
    let dropped = (0..3).try_for_each(|_| check(env, &input, None, &Expect::drop(Reason::DropNoBackend)));
    env.balancer.set_backend(owner, &record)?;
    env.balancer.install_vip(&key, &VipTable { index, scheduling: env.schedulings[&key], table })?;
    dropped.context("datagrams without a backend")?;
    ensure!(
        active(env, ids.clone())? == [0, 0, 0],
        "counts after the flow lost its backend: {:?}",
        active(env, ids.clone())?
    );
    // Back up: the flow's entry still names it, and its next datagram counts there again.
    check(env, &input, None, &expect_encap_to(env, &f, &input, &shape, owner, false)?)
        .context("datagram after the backend came back")?;
    ensure!(env.balancer.active_flows(owner)? == 1, "{:?}", active(env, ids.clone())?);

    env.balancer.set_config(&DataplaneConfig { udp_idle_timeout_ns: 1, ..config() })?;
    let result = (|| {
        std::thread::sleep(std::time::Duration::from_millis(30));
        // The expired entry stops counting before the choice: every count is 0 then, so the
        // tie goes to the Maglev choice.
        let table = &env.vips[&least_connections_key(53, Protocol::Udp)].1;
        let now = table[table_slot(flow_hash(&f.key(), &HASH_KEY), table.len() as u32) as usize];
        let expect = expect_encap_to(env, &f, &input, &shape, now, true)?;
        check(env, &input, None, &expect).context("datagram after the idle timeout")?;
        let counts = active(env, ids.clone())?;
        ensure!(
            counts.iter().sum::<i64>() == 1 && counts[(now - 93) as usize] == 1,
            "counts after rescheduling: {counts:?}"
        );
        Ok(())
    })();
    env.balancer.set_config(&config())?;
    result
}

/// The candidate with fewer active flows per unit of weight wins a SYN; a tie keeps the Maglev
/// choice, and so does a TCP packet without an entry that is no SYN.
fn least_connections_choice(env: &mut Env) -> anyhow::Result<()> {
    let key = least_connections_key(80, Protocol::Tcp);
    let (index, table) = env.vips[&key].clone();
    let syn = Shape { tcp: TcpFlags::Syn, ..Shape::default() };
    let candidates_of = |f: &Flow| {
        let at = |slot: u32| table.get(slot as usize).copied();
        candidates(flow_hash(&f.key(), &HASH_KEY), table.len() as u32, at)
    };
    let (first, second) = loop {
        let f = flow(env, Protocol::Tcp, VIP4_LEAST_CONNECTIONS.into(), 80);
        if let Some((first, Some(second))) = candidates_of(&f) {
            break (first, second);
        }
    };
    let third = (90..93).find(|id| *id != first && *id != second).context("three backends")?;
    // A new flow with the same two candidates.
    let with_both_candidates = |env: &mut Env| loop {
        let f = flow(env, Protocol::Tcp, VIP4_LEAST_CONNECTIONS.into(), 80);
        if candidates_of(&f) == Some((first, Some(second))) {
            break f;
        }
    };
    let result = (|| {
        // (first's active flows, second's, second's weight) -> winner.
        for (a, b, weight, winner) in [
            (0, 0, 1, first),
            (5, 5, 1, first),
            (5, 4, 1, second),
            (4, 5, 1, first),
            (4, 8, 2, first),
            (4, 7, 2, second),
            (0, 0, 0, first),
        ] {
            env.balancer.set_active_flows(first, a)?;
            env.balancer.set_active_flows(second, b)?;
            env.balancer.set_active_flows(third, 1000)?;
            let (family, addr) = key_addr(env.backends[&second]);
            let tag = tag_of(env, second)?;
            env.balancer.set_backend(second, &Backend::new(family, addr, index as u16, tag).with_weight(weight))?;
            env.weights.insert(second, weight);
            let f = with_both_candidates(env);
            let input = frame(&f, &syn);
            let expect = expect_encap(env, &f, &input, &syn, true)?;
            ensure!(
                expect.forwarded.map(|x| x.1) == Some(winner),
                "prediction {:?} for {a} vs {b} at weight {weight}",
                expect.forwarded
            );
            check(env, &input, None, &expect)
                .with_context(|| format!("{a} active vs {b} active at weight {weight}"))?;
            ensure!(env.balancer.flow(&f.key()).map(|s| u32::from(s.backend)) == Some(winner), "flow entry");
        }
        // Mid-connection (no entry, no SYN): the Maglev candidate, though the other has fewer.
        env.balancer.set_active_flows(first, 5)?;
        env.balancer.set_active_flows(second, 0)?;
        let f = with_both_candidates(env);
        let shape = Shape::default();
        let input = frame(&f, &shape);
        let expect = expect_encap_to(env, &f, &input, &shape, first, true)?;
        check(env, &input, None, &expect).context("a mid-connection packet without an entry")?;
        Ok(())
    })();
    let (family, addr) = key_addr(env.backends[&second]);
    let tag = tag_of(env, second)?;
    env.balancer.set_backend(second, &Backend::new(family, addr, index as u16, tag))?;
    env.weights.remove(&second);
    for id in 90..93 {
        env.balancer.set_active_flows(id, 0)?;
    }
    result
}

/// Expectation for a packet that goes to `backend` (id): a flow-table hit, or a new flow whose
/// backend the fixture knows better than [`Env::predict`].
fn expect_encap_to(
    env: &Env,
    flow: &Flow,
    input: &[u8],
    shape: &Shape,
    backend: u32,
    new_flow: bool,
) -> anyhow::Result<Expect> {
    let address = env.backends[&backend];
    let (index, _) = env.lookup_vip(flow).context("VIP")?;
    let hash = flow_hash(&flow.key(), &HASH_KEY);
    Ok(sent_to(input, l3_offset(shape), address, hash, Reason::TxFallback, (index, backend, new_flow)))
}

fn add_ipv4_options(f: &mut Vec<u8>, l3: usize) {
    f[l3] = 0x46;
    let len = get_u16(f, l3 + 2);
    set_u16(f, l3 + 2, len + 4);
    f.splice(l3 + 20..l3 + 20, [1, 1, 1, 0]); // NOP, NOP, NOP, end of options
    fix_ipv4_checksum(f, l3);
}

/// Cuts a VIP packet at every length from 14 bytes up: before the IP addresses are readable it
/// passes (nothing to judge), after that it is a truncated VIP packet and is dropped.
fn truncation_sweep(
    env: &mut Env,
    protocol: Protocol,
    dst: IpAddr,
    port: u16,
    vlan: Option<u16>,
) -> anyhow::Result<()> {
    let f = flow(env, protocol, dst, port);
    let shape = Shape { vlan, payload_len: 8, ..Shape::default() };
    let full = frame(&f, &shape);
    let ip_header = if dst.is_ipv4() { 20 } else { 40 };
    let readable = l3_offset(&shape) + ip_header;
    for cut in 14..full.len() {
        let expect =
            if cut < readable { Expect::pass(Reason::PassUnparseable) } else { Expect::drop(Reason::DropTruncated) };
        check(env, &full[..cut], None, &expect).with_context(|| format!("cut at {cut} of {} bytes", full.len()))?;
    }
    let expect = expect_encap(env, &f, &full, &shape, true)?;
    check(env, &full, None, &expect).context("whole frame")
}

fn rebuild_key() -> VipKey {
    VipKey::new(lb_common::family::IPV4, key_addr(VIP4_REBUILD.into()).1, 80, 6)
}

/// A flow keeps its backend when the table is rebuilt without that backend's slots; a new flow
/// that the old table sent to that backend goes elsewhere.
fn flow_survives_rebuild(env: &mut Env) -> anyhow::Result<()> {
    let key = rebuild_key();
    let shape = Shape::default();
    let established = flow(env, Protocol::Tcp, VIP4_REBUILD.into(), 80);
    let input = frame(&established, &shape);
    let (_, owner, _) = env.predict(&established)?;
    check(env, &input, None, &expect_encap(env, &established, &input, &shape, true)?)?;
    let before = expect_encap(env, &established, &input, &shape, false)?;

    // A second flow the old table also gives to `owner`, not yet seen by the data plane.
    let mut newcomer = flow(env, Protocol::Tcp, VIP4_REBUILD.into(), 80);
    while env.predict(&newcomer)?.1 != owner {
        newcomer.src_port = env.port();
    }

    let (index, old_table) = env.vips[&key].clone();
    let remaining: Vec<MaglevBackend> = env
        .backends
        .iter()
        .filter(|(id, _)| (40..44).contains(*id) && **id != owner)
        .map(|(&id, &addr)| {
            let (family, a) = key_addr(addr);
            MaglevBackend { addr: a, family, weight: 1, id }
        })
        .collect();
    let new_table = build_table(&remaining, 251)?;
    env.balancer.install_vip(&key, &maglev_vip(index, &new_table))?;
    env.vips.insert(key, (index, new_table));

    let result = (|| {
        check(env, &input, None, &before).context("established flow after the rebuild")?;
        // A SYN on the same 5-tuple is a new connection (a reused source port): the scheduler
        // decides again, and the new table no longer has the old backend.
        let syn_shape = Shape { tcp: TcpFlags::Syn, ..shape };
        let syn = frame(&established, &syn_shape);
        let reopened = expect_encap(env, &established, &syn, &syn_shape, true)?;
        ensure!(reopened.forwarded.map(|f| f.1) != Some(owner), "the rebuilt table still picks {owner}");
        check(env, &syn, None, &reopened).context("a SYN reusing the established flow's 5-tuple")?;
        let input = frame(&newcomer, &shape);
        let expect = expect_encap(env, &newcomer, &input, &shape, true)?;
        ensure!(expect.forwarded.map(|f| f.1) != Some(owner), "the rebuilt table still picks {owner}");
        check(env, &input, None, &expect).context("new flow after the rebuild")
    })();
    env.balancer.install_vip(&key, &maglev_vip(index, &old_table))?;
    env.vips.insert(key, (index, old_table));
    result
}

/// The largest table, stored in 256 chunks: new flows whose slots fall in different chunks get
/// the backend of their slot (each chunk holds another backend), and going back to a small table
/// frees the large one's chunks.
fn largest_table_spans_chunks(env: &mut Env) -> anyhow::Result<()> {
    let key = rebuild_key();
    let shape = Shape::default();
    let (index, old_table) = env.vips[&key].clone();
    // Both of the VIP's tables hold the small table to begin with.
    for _ in 0..2 {
        env.balancer.install_vip(&key, &maglev_vip(index, &old_table))?;
    }
    let chunks_before = env.balancer.table_chunks()?;
    let ids = [40, 41, 42, 43];
    let size = lb_common::capacity::MAGLEV_MAX_TABLE_SIZE;
    let entries = lb_common::capacity::TABLE_CHUNK_ENTRIES;
    let large: Vec<u32> = (0..size).map(|slot| ids[(slot / entries) as usize % ids.len()]).collect();
    env.balancer.install_vip(&key, &maglev_vip(index, &large))?;
    env.vips.insert(key, (index, large));
    let result = (|| {
        ensure!(
            // The small table's one chunk in the table written becomes the first of 256.
            env.balancer.table_chunks()? == chunks_before + 255,
            "{} chunks after installing a table of 256 chunks over {chunks_before}",
            env.balancer.table_chunks()?
        );
        let mut chunks_seen = std::collections::BTreeSet::new();
        for _ in 0..64 {
            let f = flow(env, Protocol::Tcp, VIP4_REBUILD.into(), 80);
            chunks_seen.insert(table_slot(flow_hash(&f.key(), &HASH_KEY), size) / entries);
            let input = frame(&f, &shape);
            check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)
                .with_context(|| format!("new flow to slot {}", table_slot(flow_hash(&f.key(), &HASH_KEY), size)))?;
        }
        ensure!(chunks_seen.len() >= 32, "64 flows met only {} chunks", chunks_seen.len());
        Ok(())
    })();
    env.balancer.install_vip(&key, &maglev_vip(index, &old_table))?;
    env.vips.insert(key, (index, old_table.clone()));
    result?;
    // Both of the VIP's tables are small again: the large one's chunks were removed.
    env.balancer.install_vip(&key, &maglev_vip(index, &old_table))?;
    ensure!(
        env.balancer.table_chunks()? == chunks_before,
        "{} chunks, {chunks_before} before",
        env.balancer.table_chunks()?
    );
    Ok(())
}

/// A backend's traffic stays in its VIP's totals and in the reason totals when the backend is
/// removed and when its id is given to a new backend, which starts counting from zero.
fn removed_backend_keeps_totals(env: &mut Env) -> anyhow::Result<()> {
    let shape = Shape::default();
    let f = flow(env, Protocol::Tcp, VIP4_REBUILD.into(), 80);
    let input = frame(&f, &shape);
    let (vip, owner, _) = env.predict(&f)?;
    check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)?;
    let record = env.balancer.backend(owner)?;
    let totals =
        |env: &Env| -> anyhow::Result<_> { Ok((env.balancer.reason_counters()?, env.balancer.vip_counters(vip)?)) };
    let before = totals(env)?;
    ensure!(env.balancer.backend_counters(owner)?.packets > 0, "backend {owner} counted nothing");
    env.balancer.clear_backend(owner)?;
    let result = (|| {
        ensure!(totals(env)? == before, "totals changed when backend {owner} was removed");
        let newcomer = Backend::new(
            record.family,
            [198, 18, 10, 99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            record.vip_index,
            record.vip_tag,
        );
        env.balancer.set_backend(owner, &newcomer)?;
        ensure!(totals(env)? == before, "totals changed when id {owner} was given to a new backend");
        let counted = env.balancer.backend_counters(owner)?;
        ensure!(counted == Default::default(), "the new backend at id {owner} starts at {counted:?}");
        Ok(())
    })();
    env.balancer.set_backend(owner, &record)?;
    result
}

/// A flow pinned to a backend that is removed entirely is rescheduled as a new flow.
fn removed_backend_rescheduled(env: &mut Env) -> anyhow::Result<()> {
    let key = VipKey::new(lb_common::family::IPV4, key_addr(VIP4_REMOVAL.into()).1, 80, 6);
    let shape = Shape::default();
    let f = flow(env, Protocol::Tcp, VIP4_REMOVAL.into(), 80);
    let input = frame(&f, &shape);
    let (_, owner, _) = env.predict(&f)?;
    check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)?;

    let (index, _) = env.vips[&key].clone();
    let survivor = if owner == 50 { 51 } else { 50 };
    let (family, a) = key_addr(env.backends[&survivor]);
    let table = build_table(&[MaglevBackend { addr: a, family, weight: 1, id: survivor }], 251)?;
    env.balancer.clear_backend(owner)?;
    env.balancer.install_vip(&key, &maglev_vip(index, &table))?;
    env.vips.insert(key, (index, table));
    let expect = expect_encap(env, &f, &input, &shape, true)?;
    ensure!(expect.forwarded.map(|x| x.1) == Some(survivor), "prediction should be the survivor");
    check(env, &input, None, &expect)?;
    ensure!(
        env.balancer.flow(&f.key()).map(|s| u32::from(s.backend)) == Some(survivor),
        "flow entry not moved to the survivor"
    );
    Ok(())
}

/// A flow pinned to a backend id that was freed and given to a backend of another VIP is
/// rescheduled on its own VIP, never sent to the other VIP's backend.
fn reused_id_of_another_vip_reschedules(env: &mut Env) -> anyhow::Result<()> {
    let key = rebuild_key();
    let shape = Shape::default();
    let (index, old_table) = env.vips[&key].clone();
    let f = flow(env, Protocol::Tcp, VIP4_REBUILD.into(), 80);
    let input = frame(&f, &shape);
    let (_, owner, _) = env.predict(&f)?;
    let old_record = {
        let (family, a) = key_addr(env.backends[&owner]);
        Backend::new(family, a, index as u16, key.tag())
    };
    let remaining: Vec<MaglevBackend> = (40..44)
        .filter(|id| *id != owner)
        .map(|id| {
            let (family, addr) = key_addr(env.backends[&id]);
            MaglevBackend { addr, family, weight: 1, id }
        })
        .collect();
    let table = build_table(&remaining, 251)?;
    let result = (|| {
        check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)?;
        env.balancer.install_vip(&key, &maglev_vip(index, &table))?;
        env.vips.insert(key, (index, table.clone()));
        // The id now serves VIP 9, at another address.
        let vip9 = env.vips.iter().find(|(_, (i, _))| *i == 9).map(|(k, _)| k.tag()).context("no VIP 9")?;
        let other = Backend::new(lb_common::family::IPV4, key_addr(Ipv4Addr::new(198, 18, 13, 9).into()).1, 9, vip9);
        env.balancer.set_backend(owner, &other)?;
        let expect = expect_encap(env, &f, &input, &shape, true)?;
        ensure!(expect.forwarded.is_some_and(|x| x.1 != owner), "prediction should be a remaining backend");
        check(env, &input, None, &expect).context("the flow's packet after its id went to another VIP")
    })();
    env.balancer.set_backend(owner, &old_record)?;
    env.balancer.install_vip(&key, &maglev_vip(index, &old_table))?;
    env.vips.insert(key, (index, old_table));
    result
}

/// Maps pinned by other builds, each refused with the map, what is wrong and what to do, before
/// anything is loaded: an IPv4 flow table with 40-byte keys and 24-byte values, flow tables under
/// the names older builds gave them, and a backends array of an older limit.
fn pinned_map_of_another_layout(_: &mut Env) -> anyhow::Result<()> {
    let pins = PinDir::instance(&format!("lbtest-layout-{}", std::process::id()));
    // (map, bpftool's type key value entries, what the refusal must say)
    let cases: [(&str, [&str; 4], &[&str]); 4] = [
        (
            maps::FLOWS_V4,
            ["lru_hash", "40", "24", "64"],
            &["map LB_FLOWS_V4", "40-byte keys and 24-byte values", "needs 16 and 16"],
        ),
        ("FLOWS", ["lru_hash", "40", "24", "64"], &["map FLOWS pinned", "older version"]),
        // The name this build's flow table had before map names had a prefix.
        ("FLOWS_V4", ["lru_hash", "16", "16", "64"], &["map FLOWS_V4 pinned", "older version"]),
        (
            maps::BACKENDS,
            ["array", "4", "32", "4096"],
            &["map LB_BACKENDS", "4096 entries where this build needs 8192"],
        ),
    ];
    for (name, [kind, key, value, entries], expected) in cases {
        pins.create()?;
        let map = pins.map(name);
        let path = map.to_str().context("pin path")?;
        run(Command::new("bpftool")
            .args(["map", "create", path, "type", kind, "key", key, "value", value])
            .args(["entries", entries, "name", name]))?;
        let result = match Balancer::open_pinned(BalancerSizes::flows(64), &pins) {
            Ok(_) => Err(anyhow::anyhow!("a pinned {name} of another build was adopted")),
            Err(e) => {
                let message = e.to_string();
                let clear = expected.iter().all(|part| message.contains(part)) && message.contains("lb detach");
                if clear { Ok(()) } else { Err(anyhow::anyhow!("unclear refusal: {message}")) }
            }
        };
        pins.remove()?;
        result?;
    }
    Ok(())
}

/// A draining backend (kept, out of the table) keeps its pinned flows; a down one (record
/// without the keeps-flows flag) sheds them to the table's choice on their next packet.
fn drain_keeps_down_sheds(env: &mut Env) -> anyhow::Result<()> {
    let key = rebuild_key();
    let shape = Shape::default();
    let (index, old_table) = env.vips[&key].clone();
    let drained_flow = flow(env, Protocol::Tcp, VIP4_REBUILD.into(), 80);
    let drained = env.predict(&drained_flow)?.1;
    let mut down_flow = flow(env, Protocol::Tcp, VIP4_REBUILD.into(), 80);
    while env.predict(&down_flow)?.1 == drained {
        down_flow.src_port = env.port();
    }
    let down = env.predict(&down_flow)?.1;
    for f in [&drained_flow, &down_flow] {
        let input = frame(f, &shape);
        check(env, &input, None, &expect_encap(env, f, &input, &shape, true)?)?;
    }
    let record = |env: &Env, id: u32| {
        let (family, a) = key_addr(env.backends[&id]);
        Backend::new(family, a, index as u16, key.tag())
    };
    let remaining: Vec<MaglevBackend> = (40..44)
        .filter(|id| *id != drained && *id != down)
        .map(|id| {
            let (family, addr) = key_addr(env.backends[&id]);
            MaglevBackend { addr, family, weight: 1, id }
        })
        .collect();
    let table = build_table(&remaining, 251)?;
    env.balancer.install_vip(&key, &maglev_vip(index, &table))?;
    let down_record = record(env, down);
    env.balancer.set_backend(down, &down_record.keeping_flows(false))?;
    env.vips.insert(key, (index, table));
    let result = (|| {
        let input = frame(&drained_flow, &shape);
        let mut keeps = expect_encap(env, &drained_flow, &input, &shape, false)?;
        // Still the drained backend: predict() now answers with the new table, so name it.
        let backend = env.backends[&drained];
        let encap = Encap {
            outer_src: Env::outer_src(&drained_flow, backend),
            outer_dst: backend,
            src_mac: BALANCER_MAC,
            dst_mac: FALLBACK_MAC,
            flow_hash: flow_hash(&drained_flow.key(), &HASH_KEY),
        };
        keeps.output = Some(encapsulated(&input, l3_offset(&shape), &encap));
        keeps.forwarded = Some((index, drained, false));
        check(env, &input, None, &keeps).context("the draining backend's flow")?;
        let input = frame(&down_flow, &shape);
        let moved = expect_encap(env, &down_flow, &input, &shape, true)?;
        ensure!(
            moved.forwarded.is_some_and(|f| f.1 != down && f.1 != drained),
            "the table still picks a removed backend"
        );
        check(env, &input, None, &moved).context("the down backend's flow")
    })();
    env.balancer.set_backend(down, &down_record)?;
    env.balancer.install_vip(&key, &maglev_vip(index, &old_table))?;
    env.vips.insert(key, (index, old_table));
    result
}

/// UDP flow entries older than the idle timeout are rescheduled (counted as new flows).
fn udp_idle_timeout(env: &mut Env) -> anyhow::Result<()> {
    let shape = Shape::default();
    let f = flow(env, Protocol::Udp, VIP4.into(), 53);
    let input = frame(&f, &shape);
    env.balancer.set_config(&DataplaneConfig { udp_idle_timeout_ns: 1, ..config() })?;
    let result = (|| {
        check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)?;
        // The data plane reads the coarse clock (one tick per jiffy): wait several ticks.
        std::thread::sleep(std::time::Duration::from_millis(30));
        check(env, &input, None, &expect_encap(env, &f, &input, &shape, true)?)
            .context("second packet after the timeout")
    })();
    env.balancer.set_config(&config())?;
    result?;
    check(env, &input, None, &expect_encap(env, &f, &input, &shape, false)?).context("within the timeout")
}

/// Creates (once) the veth links of the FIB fixtures in the test's private namespace:
/// lbt0 (ingress, 198.18.50.1/24 and 198.18.80.0/24 with a locked route MTU of 1400) and lbt2 (198.18.60.1/24),
/// with permanent neighbour entries for the backends behind them.
fn fib_links(env: &mut Env) -> anyhow::Result<()> {
    if !env.links.is_empty() {
        return Ok(());
    }
    let ip = |args: &str| run(Command::new("ip").args(args.split_whitespace())).map(drop);
    ip("link add lbt0 address 02:00:00:00:50:01 type veth peer name lbt1")?;
    ip("link add lbt2 address 02:00:00:00:60:01 type veth peer name lbt3")?;
    for dev in ["lo", "lbt0", "lbt1", "lbt2", "lbt3"] {
        ip(&format!("link set {dev} up"))?;
    }
    ip("addr add 198.18.50.1/24 dev lbt0")?;
    ip("addr add 198.18.60.1/24 dev lbt2")?;
    ip("route add 198.18.80.0/24 dev lbt0 mtu lock 1400")?;
    ip("neigh replace 198.18.50.2 lladdr 02:00:00:00:50:02 dev lbt0 nud permanent")?;
    ip("neigh replace 198.18.60.2 lladdr 02:00:00:00:60:02 dev lbt2 nud permanent")?;
    ip("neigh replace 198.18.80.2 lladdr 02:00:00:00:80:02 dev lbt0 nud permanent")?;
    run(Command::new("sysctl").args(["-qw", "net.ipv4.conf.all.forwarding=1"]))?;
    for (name, mac) in [("lbt0", [2, 0, 0, 0, 0x50, 1]), ("lbt2", [2, 0, 0, 0, 0x60, 1])] {
        let cname = std::ffi::CString::new(name)?;
        // SAFETY: valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        ensure!(index != 0, "no interface {name}");
        env.links.insert(name, (index, mac));
    }
    let single = |id: u32, a: Ipv4Addr| (id, IpAddr::V4(a));
    env.vip(10, VIP4_FIB_SAME.into(), 80, Protocol::Tcp, &[single(60, Ipv4Addr::new(198, 18, 50, 2))], 251)?;
    env.vip(11, VIP4_FIB_OTHER.into(), 80, Protocol::Tcp, &[single(61, Ipv4Addr::new(198, 18, 60, 2))], 251)?;
    env.vip(12, VIP4_FIB_SMALL_MTU.into(), 80, Protocol::Tcp, &[single(62, Ipv4Addr::new(198, 18, 80, 2))], 251)?;
    Ok(())
}

/// The FIB fixtures' expectation: encapsulated to the predicted backend with `(src, dst)` MACs.
fn fib_expect(
    env: &Env,
    f: &Flow,
    input: &[u8],
    shape: &Shape,
    macs: ([u8; 6], [u8; 6]),
    verdict: (u32, Reason),
) -> anyhow::Result<Expect> {
    let (vip, id, backend) = env.predict(f)?;
    let (src_mac, dst_mac) = macs;
    let encap = Encap {
        outer_src: Env::outer_src(f, backend),
        outer_dst: backend,
        src_mac,
        dst_mac,
        flow_hash: flow_hash(&f.key(), &HASH_KEY),
    };
    Ok(Expect {
        verdict: verdict.0,
        reason: verdict.1,
        output: Some(encapsulated(input, l3_offset(shape), &encap)),
        forwarded: Some((vip, id, true)),
    })
}

fn fib_same_interface(env: &mut Env) -> anyhow::Result<()> {
    fib_links(env)?;
    let (ingress, mac) = env.links["lbt0"];
    let shape = Shape::default();
    let f = flow(env, Protocol::Tcp, VIP4_FIB_SAME.into(), 80);
    let input = frame(&f, &shape);
    let expect = fib_expect(env, &f, &input, &shape, (mac, [2, 0, 0, 0, 0x50, 2]), (XDP_TX, Reason::TxFib))?;
    check(env, &input, Some(ingress), &expect)
}

fn fib_other_interface(env: &mut Env) -> anyhow::Result<()> {
    fib_links(env)?;
    let (ingress, _) = env.links["lbt0"];
    let (egress, mac) = env.links["lbt2"];
    let shape = Shape::default();
    let f = flow(env, Protocol::Tcp, VIP4_FIB_OTHER.into(), 80);
    let input = frame(&f, &shape);
    // Not allowed as an egress yet: dropped and counted.
    let denied = Expect { forwarded: None, ..Expect::drop(Reason::DropNoEgress) };
    check(env, &input, Some(ingress), &denied).context("egress not in the redirect map")?;
    env.balancer.add_egress(egress)?;
    let f = flow(env, Protocol::Tcp, VIP4_FIB_OTHER.into(), 80);
    let input = frame(&f, &shape);
    let expect = fib_expect(env, &f, &input, &shape, (mac, [2, 0, 0, 0, 0x60, 2]), (XDP_REDIRECT, Reason::TxRedirect))?;
    check(env, &input, Some(ingress), &expect)
}

fn fib_route_mtu(env: &mut Env) -> anyhow::Result<()> {
    fib_links(env)?;
    let (ingress, mac) = env.links["lbt0"];
    let small = Shape { payload_len: 1400 - 20 - 20 - 20, ..Shape::default() };
    let f = flow(env, Protocol::Tcp, VIP4_FIB_SMALL_MTU.into(), 80);
    let input = frame(&f, &small);
    let expect = fib_expect(env, &f, &input, &small, (mac, [2, 0, 0, 0, 0x80, 2]), (XDP_TX, Reason::TxFib))?;
    check(env, &input, Some(ingress), &expect).context("at the route MTU")?;
    let big = Shape { payload_len: small.payload_len + 1, ..Shape::default() };
    let f = flow(env, Protocol::Tcp, VIP4_FIB_SMALL_MTU.into(), 80);
    check(env, &frame(&f, &big), Some(ingress), &Expect::drop(Reason::DropTooBig))
        .context("one byte over the route MTU")
}

fn fib_vlan_other_interface(env: &mut Env) -> anyhow::Result<()> {
    fib_links(env)?;
    let (ingress, _) = env.links["lbt0"];
    let shape = Shape { vlan: Some(10), ..Shape::default() };
    let f = flow(env, Protocol::Tcp, VIP4_FIB_OTHER.into(), 80);
    let input = frame(&f, &shape);
    let expect = fib_expect(env, &f, &input, &shape, (BALANCER_MAC, FALLBACK_MAC), (XDP_TX, Reason::TxFallback))?;
    check(env, &input, Some(ingress), &expect)
}

/// Resolves every backend's next hop as the agent does, from this namespace's tables; returns
/// how many changed.
fn resolve_next_hops(env: &mut Env) -> anyhow::Result<usize> {
    let backends = env.balancer.current()?.backends;
    let mut hops = NextHops::new()?;
    Ok(hops.refresh(&backends, &mut env.balancer)?.len())
}

fn resolved_same_interface(env: &mut Env) -> anyhow::Result<()> {
    fib_links(env)?;
    resolve_next_hops(env)?;
    let (ingress, mac) = env.links["lbt0"];
    ensure!(
        env.balancer.next_hop(60)? == NextHop { ifindex: ingress, dst_mac: [2, 0, 0, 0, 0x50, 2], src_mac: mac },
        "backend 198.18.50.2 resolved to {:?}",
        env.balancer.next_hop(60)?
    );
    // The FIB would answer the same MACs: make it unable to, so only the resolved hop can.
    run(Command::new("sysctl").args(["-qw", "net.ipv4.conf.all.forwarding=0"]))?;
    let shape = Shape::default();
    let f = flow(env, Protocol::Tcp, VIP4_FIB_SAME.into(), 80);
    let input = frame(&f, &shape);
    let expect = fib_expect(env, &f, &input, &shape, (mac, [2, 0, 0, 0, 0x50, 2]), (XDP_TX, Reason::TxNextHop))?;
    let result = check(env, &input, Some(ingress), &expect);
    run(Command::new("sysctl").args(["-qw", "net.ipv4.conf.all.forwarding=1"]))?;
    result
}

fn resolved_other_interface(env: &mut Env) -> anyhow::Result<()> {
    fib_links(env)?;
    resolve_next_hops(env)?;
    let (ingress, _) = env.links["lbt0"];
    let (egress, mac) = env.links["lbt2"];
    env.balancer.add_egress(egress)?;
    let shape = Shape::default();
    let f = flow(env, Protocol::Tcp, VIP4_FIB_OTHER.into(), 80);
    let input = frame(&f, &shape);
    let expect = fib_expect(env, &f, &input, &shape, (mac, [2, 0, 0, 0, 0x60, 2]), (XDP_REDIRECT, Reason::TxRedirect))?;
    check(env, &input, Some(ingress), &expect)
}

fn resolved_vlan_other_interface(env: &mut Env) -> anyhow::Result<()> {
    fib_links(env)?;
    resolve_next_hops(env)?;
    ensure!(env.balancer.next_hop(61)?.is_known(), "backend 198.18.60.2 has no next hop");
    let (ingress, _) = env.links["lbt0"];
    let shape = Shape { vlan: Some(10), ..Shape::default() };
    let f = flow(env, Protocol::Tcp, VIP4_FIB_OTHER.into(), 80);
    let input = frame(&f, &shape);
    let expect = fib_expect(env, &f, &input, &shape, (BALANCER_MAC, FALLBACK_MAC), (XDP_TX, Reason::TxFallback))?;
    check(env, &input, Some(ingress), &expect)
}

fn resolved_neighbour_gone(env: &mut Env) -> anyhow::Result<()> {
    fib_links(env)?;
    resolve_next_hops(env)?;
    ensure!(env.balancer.next_hop(60)?.is_known(), "backend 198.18.50.2 has no next hop");
    run(Command::new("ip").args(["neigh", "del", "198.18.50.2", "dev", "lbt0"]))?;
    let changed = resolve_next_hops(env);
    let hop = env.balancer.next_hop(60);
    let (ingress, _) = env.links["lbt0"];
    let shape = Shape::default();
    let f = flow(env, Protocol::Tcp, VIP4_FIB_SAME.into(), 80);
    let input = frame(&f, &shape);
    // Neither the cache nor the FIB has a neighbour: the configured fallback MAC.
    let expect = fib_expect(env, &f, &input, &shape, (BALANCER_MAC, FALLBACK_MAC), (XDP_TX, Reason::TxFallback));
    let result = expect.and_then(|expect| check(env, &input, Some(ingress), &expect));
    run(Command::new("ip").args([
        "neigh",
        "replace",
        "198.18.50.2",
        "lladdr",
        "02:00:00:00:50:02",
        "dev",
        "lbt0",
        "nud",
        "permanent",
    ]))?;
    ensure!(changed? == 1, "one next hop should have changed");
    ensure!(!hop?.is_known(), "the next hop of a backend without a neighbour entry is kept");
    result?;
    ensure!(resolve_next_hops(env)? == 1 && env.balancer.next_hop(60)?.is_known(), "the next hop did not come back");
    Ok(())
}

fn resolved_backend_readdressed(env: &mut Env) -> anyhow::Result<()> {
    fib_links(env)?;
    resolve_next_hops(env)?;
    ensure!(env.balancer.next_hop(62)?.is_known(), "backend 198.18.80.2 has no next hop");
    let (family, addr) = key_addr(IpAddr::V4(Ipv4Addr::new(198, 18, 80, 3)));
    let old = env.balancer.current()?.backends[&62];
    env.balancer.set_backend(62, &Backend::new(family, addr, old.vip_index, old.vip_tag))?;
    let forgot = env.balancer.next_hop(62)?;
    env.balancer.set_backend(62, &old)?;
    ensure!(!forgot.is_known(), "a backend id given another address kept the old neighbour's MAC: {forgot:?}");
    ensure!(!env.balancer.next_hop(62)?.is_known(), "the next hop is the resolver's to restore");
    Ok(())
}

/// The flood fixtures' VIP: UDP, 3 backends, 4 new flows per CPU per window.
const VIP4_FLOOD: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 9);
const FLOOD_VIP_INDEX: u32 = 20;
const FLOOD_BUDGET: u32 = 4;

fn flood_vip(env: &mut Env) -> anyhow::Result<()> {
    let (family, a) = key_addr(VIP4_FLOOD.into());
    let key = VipKey::new(family, a, 5000, Protocol::Udp.number());
    if env.vips.contains_key(&key) {
        return Ok(());
    }
    let backends: Vec<(u32, IpAddr)> =
        (0..3).map(|i| (170 + i, IpAddr::V4(Ipv4Addr::new(198, 18, 10, 70 + i as u8)))).collect();
    env.vip(FLOOD_VIP_INDEX, VIP4_FLOOD.into(), 5000, Protocol::Udp, &backends, 251)?;
    let table = env.vips[&key].1.clone();
    let scheduling = Scheduling { new_flow_budget: FLOOD_BUDGET, ..Scheduling::default() };
    env.balancer.install_vip(&key, &VipTable { index: FLOOD_VIP_INDEX, scheduling, table })?;
    Ok(())
}

/// A packet of `f` to the flood VIP; `untracked` expects it forwarded without an entry.
fn flood_packet(env: &mut Env, f: &Flow, new_flow: bool, untracked: bool) -> anyhow::Result<()> {
    let shape = Shape::default();
    let input = frame(f, &shape);
    let mut expect = expect_encap(env, f, &input, &shape, new_flow)?;
    if untracked {
        expect.reason = Reason::TxUntracked;
    }
    check(env, &input, None, &expect)?;
    let entry = env.balancer.flow(&f.key()).is_some();
    ensure!(entry != untracked, "flow-table entry {entry}, untracked {untracked}");
    Ok(())
}

fn flood_enters(env: &mut Env) -> anyhow::Result<()> {
    // Flood state is per CPU: every packet of this fixture on one.
    lb_tests::pin_to_cpu(0)?;
    flood_vip(env)?;
    let first: Vec<Flow> = (0..FLOOD_BUDGET).map(|_| flow(env, Protocol::Udp, VIP4_FLOOD.into(), 5000)).collect();
    // Within one flood window (100 ms): outputs and entries only, the counters' readers take
    // longer than a window in a debug build.
    let shape = Shape::default();
    let expected: Vec<(Vec<u8>, Expect)> = first
        .iter()
        .map(|f| {
            let input = frame(f, &shape);
            let expect = expect_encap(env, f, &input, &shape, true)?;
            Ok((input, expect))
        })
        .collect::<anyhow::Result<_>>()?;
    for (i, (f, (input, expect))) in first.iter().zip(&expected).enumerate() {
        let run = run_once(env.balancer.program()?, input, None)?;
        ensure!(
            run.verdict == expect.verdict
                && Some(&run.output) == expect.output.as_ref()
                && env.balancer.flow(&f.key()).is_some(),
            "new flow {} of a budget of {FLOOD_BUDGET}: verdict {}, entry {}",
            i + 1,
            verdict_name(run.verdict),
            env.balancer.flow(&f.key()).is_some()
        );
    }
    let over = flow(env, Protocol::Udp, VIP4_FLOOD.into(), 5000);
    flood_packet(env, &over, true, true).context("the first new flow over the budget")?;
    flood_packet(env, &over, true, true).context("its second packet: still no entry, same backend")?;
    ensure!(env.balancer.flood(FLOOD_VIP_INDEX)? == VipFlood { flooding_cpus: 1, untracked: 2 });
    for f in &first {
        flood_packet(env, f, false, false).context("an established flow during the flood")?;
    }
    Ok(())
}

fn flood_leaves(env: &mut Env) -> anyhow::Result<()> {
    lb_tests::pin_to_cpu(0)?;
    flood_vip(env)?;
    let over: Vec<Flow> = (0..=FLOOD_BUDGET).map(|_| flow(env, Protocol::Udp, VIP4_FLOOD.into(), 5000)).collect();
    for f in &over[..FLOOD_BUDGET as usize] {
        run_once(env.balancer.program()?, &frame(f, &Shape::default()), None)?;
    }
    flood_packet(env, &over[FLOOD_BUDGET as usize], true, true).context("over the budget")?;
    // More than a whole window without a new flow.
    std::thread::sleep(std::time::Duration::from_nanos(3 * FLOOD_WINDOW_NS));
    let after = flow(env, Protocol::Udp, VIP4_FLOOD.into(), 5000);
    flood_packet(env, &after, true, false).context("the first new flow after a quiet window")?;
    ensure!(env.balancer.flood(FLOOD_VIP_INDEX)?.flooding_cpus == 0, "still in flood mode");
    Ok(())
}

fn encap_to(backend: &str) -> Encap {
    let dst: IpAddr = backend.parse().expect("address");
    let src = if dst.is_ipv4() { "198.18.200.1".parse().expect("v4") } else { "fd00:200::1".parse().expect("v6") };
    Encap {
        outer_src: src,
        outer_dst: dst,
        src_mac: [2, 0, 0, 0, 0, 0xaa],
        dst_mac: [2, 0, 0, 0, 0, 0xbb],
        flow_hash: 0x12345,
    }
}

/// Runs the decapsulation program once and checks verdict (PASS, but for a dropped unknown
/// source), output and counters.
fn decap_check(env: &mut Env, input: &[u8], want: Option<&[u8]>, reason: Reason) -> anyhow::Result<()> {
    let before = env.decap.reason_counters()?;
    let run = run_once(env.decap.program()?, input, None)?;
    let verdict = if reason == Reason::DecapDropUnknownSource { XDP_DROP } else { XDP_PASS };
    ensure!(run.verdict == verdict, "verdict {}", verdict_name(run.verdict));
    let want = want.unwrap_or(input);
    if verdict == XDP_PASS && run.output != want {
        bail!("output differs\n  got:  {}\n  want: {}", hex(&run.output), hex(want));
    }
    check_reason(&before, &env.decap.reason_counters()?, reason, input.len())
}

/// A tunnel packet for a VIP from `source`, no balancer's: refused as `unlisted` says, and never
/// decapsulated. Anyone could otherwise reach the service from the VIP's address past the
/// balancer's policy.
fn decap_from(env: &mut Env, source: &str, backend: &str, unlisted: u32) -> anyhow::Result<()> {
    env.decap.set_sources(&BALANCER_SOURCES, unlisted)?;
    let vip: IpAddr = if backend.contains(':') { VIP6.into() } else { VIP4.into() };
    let f = flow(env, Protocol::Tcp, vip, 80);
    let input = frame(&f, &Shape::default());
    let encap = Encap { outer_src: source.parse().expect("address"), ..encap_to(backend) };
    let tunnel = encapsulated(&input, 14, &encap);
    let reason =
        if unlisted == unlisted_source::DROP { Reason::DecapDropUnknownSource } else { Reason::DecapPassUnknownSource };
    let result = decap_check(env, &tunnel, None, reason);
    env.decap.set_sources(&BALANCER_SOURCES, unlisted_source::DROP)?;
    result
}

/// A tunnel packet from `backend`'s point of view; `inner_ecn`/`outer_ecn` set the ECN bits.
fn decap_case(
    env: &mut Env,
    vip: IpAddr,
    backend: &str,
    inner_ecn: u8,
    outer_ecn: u8,
    decapsulates: bool,
) -> anyhow::Result<()> {
    let f = flow(env, Protocol::Tcp, vip, 80);
    let shape = Shape { tos: 0x20 | inner_ecn, ..Shape::default() };
    let input = frame(&f, &shape);
    let mut tunnel = encapsulated(&input, 14, &encap_to(backend));
    // Set the outer ECN bits.
    if backend.contains(':') {
        tunnel[15] = (tunnel[15] & !0x30) | (outer_ecn << 4);
    } else {
        tunnel[15] = (tunnel[15] & !0x03) | outer_ecn;
        fix_ipv4_checksum(&mut tunnel, 14);
    }
    if !decapsulates {
        return decap_check(env, &tunnel, None, Reason::DecapPassUnknownVip);
    }
    let ce = outer_ecn == 0b11 && inner_ecn != 0;
    let inner_shape = Shape { tos: if ce { 0x20 | 0b11 } else { shape.tos }, ..shape };
    let want = frame(&f, &inner_shape);
    let mut expected = tunnel[..12].to_vec();
    expected.extend_from_slice(&want[12..]);
    decap_check(env, &tunnel, Some(&expected), Reason::DecapPass)
}

/// The balancer's real output, fed to the decapsulation program, gives back the client's packet.
fn balancer_decap_round_trip(env: &mut Env) -> anyhow::Result<()> {
    for (protocol, vip, port) in [(Protocol::Tcp, IpAddr::V4(VIP4), 80), (Protocol::Udp, IpAddr::V6(VIP6), 53)] {
        let f = flow(env, protocol, vip, port);
        let input = frame(&f, &Shape::default());
        let encapsulated = run_once(env.balancer.program()?, &input, None)?;
        ensure!(encapsulated.verdict == XDP_TX, "balancer verdict {}", verdict_name(encapsulated.verdict));
        let decapsulated = run_once(env.decap.program()?, &encapsulated.output, None)?;
        ensure!(decapsulated.verdict == XDP_PASS, "decap verdict {}", verdict_name(decapsulated.verdict));
        ensure!(
            decapsulated.output[12..] == input[12..],
            "round trip changed the packet\n  got:  {}\n  sent: {}",
            hex(&decapsulated.output),
            hex(&input)
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = Arguments::from_args();
    // One loaded program and shared counters: fixtures run one at a time.
    args.test_threads = Some(1);
    require_root("the in-kernel packet tests")?;
    enter_private_netns()?;
    // Round-robin positions are per CPU: keep every run on one CPU so the sequence is predictable.
    pin_to_cpu0()?;
    let env: Shared = Arc::new(Mutex::new(Env::new().context("loading the XDP programs")?));
    let trials = cases()
        .into_iter()
        .chain(admission::cases())
        .chain(icmp::cases())
        .chain(fragments::cases())
        .map(|(name, body)| {
            let env = Arc::clone(&env);
            Trial::test(name, move || {
                let mut env = env.lock().map_err(|_| Failed::from("an earlier fixture panicked"))?;
                body(&mut env).map_err(|e| Failed::from(format!("{e:#}")))
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}

fn pin_to_cpu0() -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}
