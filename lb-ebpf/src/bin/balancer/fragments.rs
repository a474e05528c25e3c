//! Fragmented TCP/UDP datagrams to a VIP: the first fragment carries the ports, finds its
//! backend like any packet of its flow and leaves its backend in `FRAGMENTS` under the
//! datagram's identity (`lb_common::flow::FragmentKey`); the later fragments carry no ports and
//! follow it there. A later fragment seen before its first (or after its entry was forgotten)
//! has no known backend. The backend reassembles.
//!
//! Both functions are subprograms of their own: the 40-byte key would otherwise take the fast
//! path's stack.

use lb_common::flow::{FragmentKey, FragmentOwner};
use lb_ebpf::l3::{Ip, fragment};

use crate::maps::FRAGMENTS;

#[inline(always)]
fn key(ip: &Ip) -> FragmentKey {
    FragmentKey {
        src_addr: ip.flow.src_addr,
        dst_addr: ip.flow.dst_addr,
        id: ip.fragment_id,
        protocol: ip.flow.protocol,
        family: ip.flow.family,
        _pad: [0; 2],
    }
}

/// If `ip` is a datagram's first fragment, records that the datagram goes to backend `id`
/// (flow hash `hash`, VIP tag `vip_tag`). Called for every packet, the test inside: a branch
/// on the fragment kind in the caller would split the verifier's states through every stage after.
#[inline(never)]
// By reference: a moved copy of the key would take another stack slot.
#[allow(clippy::needless_borrows_for_generic_args)]
pub fn remember_first(ip: &Ip, id: u32, hash: u32, vip_tag: u32) {
    if ip.fragment != fragment::FIRST {
        return;
    }
    // A full table evicts its least recently used datagram; an insert error costs only the
    // datagram's later fragments.
    let _ = FRAGMENTS.insert(&key(ip), &FragmentOwner { backend: id, hash, vip_tag }, 0);
}

/// Where the first fragment of the datagram that `ip` (a later fragment) belongs to went.
#[inline(never)]
#[allow(clippy::needless_borrows_for_generic_args)]
pub fn owner(ip: &Ip) -> Option<FragmentOwner> {
    // SAFETY: LRU values are plain data, copied out at once.
    unsafe { FRAGMENTS.get(&key(ip)) }.copied()
}
