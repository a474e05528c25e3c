//! Next hops resolved by the agent: where the data plane sends a backend's packets without
//! asking the FIB per packet (`bpf_fib_lookup` costs more than the rest of the hit path's
//! lookups together).

use crate::{assert_layout, userspace_pod};

/// A backend's next hop: the neighbour (the backend itself, or the gateway of its route) and
/// the interface that reaches it. Written by the agent from the kernel's route and neighbour
/// tables and kept fresh; cleared when the neighbour entry goes away, when the backend id gets
/// another address, or when the route changes, so that the data plane falls back to the FIB.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop {
    /// Egress interface; 0 = no next hop known (the data plane asks the FIB).
    pub ifindex: u32,
    /// The neighbour's MAC address.
    pub dst_mac: [u8; 6],
    /// The egress interface's MAC address.
    pub src_mac: [u8; 6],
}
assert_layout!(NextHop, size = 16, ifindex = 0, dst_mac = 4, src_mac = 10);
userspace_pod!(NextHop);

impl NextHop {
    /// No next hop known.
    pub const NONE: NextHop = NextHop { ifindex: 0, dst_mac: [0; 6], src_mac: [0; 6] };

    /// Whether a next hop is known (a non-zero `ifindex`).
    #[inline(always)]
    pub const fn is_known(&self) -> bool {
        self.ifindex != 0
    }
}
