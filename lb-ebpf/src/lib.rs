//! Code shared by the XDP programs of this crate.
//!
//! Layout:
//! - [`access`]: the one bounds-checked way to touch packet bytes.
//! - [`l2`]: Ethernet with an optional 802.1Q tag.
//! - [`l3`]: IPv4 and IPv6 headers, classified for the balancer's policy.
//! - [`checksum`]: IPv4 header checksums.
//! - [`counters`]: counting a packet under its reason.
//!
//! The programs themselves are the binaries: `balancer` (the load balancer's fast path),
//! `decap` (backend-side IPIP/IP6IP6 decapsulation) and `xdp-tx-baseline` (the minimal program
//! benchmarks compare against).
#![no_std]

pub mod access;

/// Every program of this crate: the verifier guarantees no panic path is ever taken (packet
/// access is bounds-checked, indexes are checked with `get`).
#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
pub mod checksum;
pub mod counters;
pub mod l2;
pub mod l3;
