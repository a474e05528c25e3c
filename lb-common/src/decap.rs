//! The backend side's decapsulation program: which tunnel sources it accepts.
//!
//! A backend decapsulates tunnel packets only from the balancers' source prefixes (their
//! encapsulation prefixes, and their own addresses for tunnel health checks). Anyone else's
//! tunnel packet would reach the service from the VIP's address past every policy of the
//! balancer; it is passed untouched or dropped, as configured ([`DecapConfig`]).

use crate::{assert_layout, userspace_pod};

/// The data of a tunnel-source key (an LPM trie key is a prefix length and this): the family,
/// which every lookup matches ([`DECAP_SOURCE_FIXED_BITS`]), then the outer source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DecapSourceKey {
    /// Address family ([`crate::family`]).
    pub family: u8,
    /// Outer source address (prefix), network byte order, IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
}
assert_layout!(DecapSourceKey, size = 17, family = 0, addr = 1);

/// Bits of a [`DecapSourceKey`] before the address.
pub const DECAP_SOURCE_FIXED_BITS: u32 = 8;

/// Most accepted tunnel-source prefixes.
pub const MAX_DECAP_SOURCES: u32 = 1024;

/// What the decapsulation program does with a tunnel packet from a source it does not accept.
pub mod unlisted_source {
    /// Pass it untouched (the stack drops it, unless it has a tunnel device of its own).
    pub const PASS: u32 = 0;
    /// Drop it.
    pub const DROP: u32 = 1;
}

/// The decapsulation program's settings (a one-entry array).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DecapConfig {
    /// One of [`unlisted_source`].
    pub unlisted_source: u32,
}
assert_layout!(DecapConfig, size = 4, unlisted_source = 0);
userspace_pod!(DecapSourceKey, DecapConfig);
