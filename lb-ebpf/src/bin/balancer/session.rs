//! Session keys in the fast path (`lb_common::session`): the flow-table entry of a datagram to a
//! VIP that balances by a key of its payload (and the key, for a new session), and the
//! flow-table entry of a QUIC short header whose server id names its backend (`lb_common::quic`).

use aya_ebpf::{
    helpers::{bpf_ktime_get_coarse_ns, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use lb_common::{
    family,
    flow::{FLOW_TRACKS_TIME, FlowKey, FlowState, stage},
    quic::{LONG_HEADER, MAX_SERVER_ID_LEN, QuicServerKey, client_hash},
    session::{MAX_KEY_LEN, SessionKey, kind, make_session_flow},
    vip::VipInfo,
};
use lb_ebpf::l3::Ip;

use crate::maps::{self, BACKENDS, CONFIG, FLOWS_V4, FLOWS_V6, QUIC_SERVERS, SESSION_KEYS};

/// The UDP header's length.
const UDP_HEADER_LEN: usize = 8;

/// What a datagram's flow-table entry is, where some VIP has a session key or routes QUIC
/// ([`lookup`]). A plain struct with a nullable pointer, as `Choice` in the fast path: BTF has
/// no form for an enum holding a pointer.
#[repr(C)]
pub struct Found {
    /// Its session's entry; null: none (see `what`).
    pub entry: *mut FlowState,
    /// A session's VIP (for a new session, which is scheduled next); null otherwise.
    pub vip: *const VipInfo,
    /// [`found::FIVE_TUPLE`], [`found::SESSION`].
    pub what: u8,
}

/// What [`Found`] says.
pub mod found {
    /// The datagram goes by its 5-tuple's entry: not a session's (or too short for its key), or
    /// a QUIC datagram, whose 5-tuple's entry [`super::lookup`] pointed at its server.
    pub const FIVE_TUPLE: u8 = 0;
    /// A session's datagram: `entry` is its session's, or null for a new session (which a
    /// 5-tuple's entry must not stand in for).
    pub const SESSION: u8 = 1;
}

impl Found {
    /// The datagram goes by its 5-tuple.
    pub const FIVE_TUPLE: Self = Self { entry: core::ptr::null_mut(), vip: core::ptr::null(), what: found::FIVE_TUPLE };
}

/// The entry of `ip`'s datagram to a VIP with a session key: its session's, if its payload holds
/// the key; for a QUIC VIP, points the 5-tuple's flow-table entry at the backend its short
/// header's server id names, if one does. A datagram that ends before the key, or whose server
/// id no backend has, is counted per VIP in `LB_SESSION_MISS` and goes by its 5-tuple (a long
/// header too, uncounted). Only an entry comes back: the session's key is made again for a new
/// flow ([`rekey`]), so that an established flow's packet carries no key through the fast path.
/// A subprogram, and each kind of key one of its own: the VIP lookup, the buffers and the digest
/// stay out of the fast path's frame (a call chain may take 512 bytes of stack).
#[inline(never)]
pub fn lookup(ctx: &XdpContext, ip: &Ip) -> Found {
    let Some(vip) = crate::find_vip(&ip.flow) else { return Found::FIVE_TUPLE };
    let Some(spec) = SESSION_KEYS.get(vip.index) else { return Found::FIVE_TUPLE };
    if !spec.is_some() {
        return Found::FIVE_TUPLE;
    }
    if spec.kind == kind::QUIC_SERVER_ID {
        route_quic(ctx, ip, vip, spec);
        return Found::FIVE_TUPLE;
    }
    session_entry(ctx, ip, vip, spec)
}

/// The entry of `ip`'s session ([`lookup`]), or a miss counted.
#[inline(never)]
fn session_entry(ctx: &XdpContext, ip: &Ip, vip: &VipInfo, spec: &SessionKey) -> Found {
    let mut key = ip.flow;
    if !payload_key(ctx, ip, spec, &mut key) {
        maps::count_session_miss(vip.index);
        return Found::FIVE_TUPLE;
    }
    let entry = crate::flow_entry(&key).unwrap_or(core::ptr::null_mut());
    Found { entry, vip, what: found::SESSION }
}

/// For a new flow of a session ([`found::SESSION`]) of `vip`: replaces `key` (its 5-tuple) by
/// its session's key, as [`lookup`] made it.
#[inline(never)]
pub fn rekey(ctx: &XdpContext, ip: &Ip, vip: &VipInfo, key: &mut FlowKey) {
    if let Some(spec) = SESSION_KEYS.get(vip.index)
        && spec.is_some()
        && spec.kind == kind::PAYLOAD
    {
        payload_key(ctx, ip, spec, key);
    }
}

/// Where `ip`'s UDP payload starts, and where its IP packet ends (not its frame: a short frame
/// may be padded).
#[inline(always)]
fn payload_bounds(ip: &Ip) -> (usize, usize) {
    (ip.l3_offset + ip.header_len() + UDP_HEADER_LEN, ip.l3_offset + usize::from(ip.packet_len))
}

/// Writes the session key of `ip`'s datagram into `key`; false if the payload ends before it.
#[inline(always)]
fn payload_key(ctx: &XdpContext, ip: &Ip, spec: &SessionKey, key: &mut FlowKey) -> bool {
    let Some(cfg) = CONFIG.get(0) else { return false };
    let (payload, end) = payload_bounds(ip);
    // 1..=16 by arithmetic the verifier follows (comparisons the compiler may move); the agent
    // writes lengths in that range, and 0 was ruled out by the caller.
    let length = (usize::from(spec.length).wrapping_sub(1) & (MAX_KEY_LEN - 1)) + 1;
    let start = payload + usize::from(spec.offset);
    let mut raw = [0u8; MAX_KEY_LEN];
    // The helper checks the frame's bounds.
    let loaded = start + length <= end
        // SAFETY: `raw` has room for MAX_KEY_LEN >= length bytes.
        && unsafe { bpf_xdp_load_bytes(ctx.ctx, start as u32, raw.as_mut_ptr().cast(), length as u32) } == 0;
    if loaded {
        make_session_flow(key, spec.masked(raw), &cfg.flow_hash_key);
    }
    loaded
}

/// Points the 5-tuple's flow-table entry of `ip`'s QUIC datagram at the backend its short
/// header's server id names (`lb_common::quic`), if that backend takes flows: the packet then
/// continues as one of an established flow, from any address and port the client moved to. A
/// long header is left to the 5-tuple; a payload that ends before the server id, or an id no
/// backend has, too, and is counted.
#[inline(never)]
fn route_quic(ctx: &XdpContext, ip: &Ip, vip: &VipInfo, spec: &SessionKey) {
    let (payload, end) = payload_bounds(ip);
    let mut first = [0u8; 1];
    // SAFETY: one byte into a one-byte buffer; the helper checks the frame's bounds.
    let read =
        payload < end && unsafe { bpf_xdp_load_bytes(ctx.ctx, payload as u32, first.as_mut_ptr().cast(), 1) } == 0;
    if read && first[0] & LONG_HEADER != 0 {
        return;
    }
    // 1..=8 by arithmetic the verifier follows.
    let length = (usize::from(spec.length).wrapping_sub(1) & (MAX_SERVER_ID_LEN - 1)) + 1;
    let start = payload + usize::from(spec.offset);
    let mut server_id = [0u8; MAX_SERVER_ID_LEN];
    let found = read
        && start + length <= end
        // SAFETY: `server_id` has room for MAX_SERVER_ID_LEN >= length bytes.
        && unsafe { bpf_xdp_load_bytes(ctx.ctx, start as u32, server_id.as_mut_ptr().cast(), length as u32) } == 0;
    // SAFETY: plain data; the agent replaces an entry with one map update.
    let named =
        if found { unsafe { QUIC_SERVERS.get(QuicServerKey::new(vip.index, server_id)) }.copied() } else { None };
    let Some(id) = named else {
        maps::count_session_miss(vip.index);
        return;
    };
    let Some(backend) = BACKENDS.get(id) else { return };
    if !backend.keeps_flows() {
        return;
    }
    let entry = crate::flow_entry(&ip.flow);
    if let Some(state) = entry {
        // SAFETY: LRU values are plain data; this CPU's packet of the flow updates its entry.
        let known = unsafe { *state };
        if u32::from(known.backend) == id && known.vip_tag == backend.vip_tag {
            return;
        }
        if known.stage == stage::ACTIVE {
            maps::add_active_flows(u32::from(known.backend), -1);
        }
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // Opening: the packet continues it, and the flow counts active from there.
    let fresh =
        FlowState::new(id as u16, client_hash(&ip.flow), now, stage::OPENING, FLOW_TRACKS_TIME, backend.vip_tag);
    match entry {
        // SAFETY: as above.
        Some(state) => unsafe { *state = fresh },
        // A full table evicts its least recently used entry; an insert error only costs stickiness.
        None if ip.flow.family == family::IPV4 => {
            let _ = FLOWS_V4.insert(ip.flow.v4(), fresh, 0);
        }
        None => {
            let _ = FLOWS_V6.insert(ip.flow, fresh, 0);
        }
    }
}

/// Rewrites two bytes of `key` with themselves, at indexes taken from `varying` (any packet
/// byte): nothing changes, but the verifier stops tracking what the key's bytes hold (a store
/// at an offset it cannot tell makes every byte it may reach untracked), so a session's key and
/// a 5-tuple reach the scheduling of a new flow as one case. Tracked apart, they doubled the paths
/// it explores, past the kernel's budget. The caller sets again the fields it branches on.
#[inline(always)]
pub fn untrack(key: &mut FlowKey, varying: u8) {
    let bytes = core::ptr::from_mut(key).cast::<u8>();
    // Bytes 0..32 (the addresses), then 31..39 (ports, protocol, family, kind; the padding is
    // zero either way). Hidden from the compiler, which would otherwise OR a small index into
    // the aligned pointer, an operation the verifier refuses on pointers.
    for i in [usize::from(varying) & 31, 31 + (usize::from(varying) & 7)] {
        let i = core::hint::black_box(i);
        // SAFETY: i < 39 < size_of::<FlowKey>(); volatile so that the compiler keeps the no-op.
        unsafe { bytes.add(i).write_volatile(bytes.add(i).read_volatile()) };
    }
}
