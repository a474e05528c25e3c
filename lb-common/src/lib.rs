//! Everything the XDP data plane and the userspace agent must agree on, defined once.
//!
//! Layout:
//! - [`hash`]: the word hashes: keyed `SipHash` for flows, `MurmurHash3` for Maglev (pinned by test vectors).
//! - [`flow`]: the flow key (5-tuple), the flow-table value and [`flow::flow_hash`].
//! - [`admission`]: who is served: source lists, anti-spoofing, per-source rate limits.
//! - [`flood`]: flood mode, per VIP and CPU: new flows past a budget get no flow-table entry.
//! - [`vip`]: VIP keys, per-VIP metadata (which Maglev table is live) and [`vip::find_vip`], the
//!   VIP lookup the data plane, `lb trace`, the recount and the tests share.
//! - [`backend`]: backend records as the data plane reads them.
//! - [`nexthop`]: backends' next hops, resolved by the agent.
//! - [`session`]: session keys: UDP VIPs that balance by bytes of the payload, not the 5-tuple.
//! - [`quic`]: QUIC VIPs route short-header packets by the server id in their connection id.
//! - [`dataplane`]: the instance-wide data plane configuration (encapsulation source, MTU, ...).
//! - [`decap`]: the backends' decapsulation program's accepted tunnel sources.
//! - [`counters`]: counted reasons for every verdict, and per-VIP/per-backend traffic counters.
//! - [`least_connections`]: the power-of-two-choices rule of the least-connections scheduler.
//! - [`maglev`]: the slot lookup shared by both sides and, with feature `user`, the table builder.
//! - `sequence` (feature `user`): smooth weighted round-robin sequences.
//! - [`table`]: how a VIP's table of backend ids is stored, in chunks.
//! - [`capacity`]: map sizes and limits.
//! - [`maps`]: the maps' names, as the kernel and the pins show them.
//! - [`generator`]: the benchmark's live-frames traffic generator template.
//! - `addr` (feature `user`): addresses to and from their key form.
//!
//! Every type that crosses the kernel boundary is `#[repr(C)]`, holds only integers and byte arrays,
//! zeroes its explicit padding in its constructor, and has its size and field offsets asserted at
//! compile time. Multi-byte protocol fields (addresses, ports) are kept as network-order byte arrays
//! so that hashing them gives the same result on every host.
#![no_std]
#![warn(missing_docs)]

#[cfg(feature = "user")]
extern crate std;

#[cfg(feature = "user")]
pub mod addr;
pub mod admission;
pub mod backend;
pub mod capacity;
pub mod counters;
pub mod dataplane;
pub mod decap;
pub mod flood;
pub mod flow;
pub mod generator;
pub mod hash;
pub mod least_connections;
pub mod maglev;
pub mod maps;
pub mod nexthop;
pub mod quic;
#[cfg(feature = "user")]
pub mod sequence;
pub mod session;
pub mod table;
pub mod vip;

/// Address family tags stored in keys (`family` fields). Values follow Linux's `AF_INET/AF_INET6`.
pub mod family {
    /// IPv4 (`AF_INET`).
    pub const IPV4: u8 = 2;
    /// IPv6 (`AF_INET6`).
    pub const IPV6: u8 = 10;
}

/// Implements aya's `Pod` marker for shared types, so userspace can store them in maps.
macro_rules! userspace_pod {
    ($($ty:ty),+ $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: `repr(C)`, integers and byte arrays only, padding explicit: every bit pattern is valid.
            unsafe impl aya::Pod for $ty {}
        )+
    };
}
pub(crate) use userspace_pod;

/// Asserts a shared type's size and field offsets at compile time.
macro_rules! assert_layout {
    ($ty:ty, size = $size:expr, $($field:ident = $offset:expr),+ $(,)?) => {
        const _: () = {
            assert!(core::mem::size_of::<$ty>() == $size);
            $(assert!(core::mem::offset_of!($ty, $field) == $offset);)+
        };
    };
}
pub(crate) use assert_layout;
