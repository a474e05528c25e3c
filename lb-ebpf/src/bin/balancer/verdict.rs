//! What becomes of a packet: the XDP action and the reason it is counted under, decided
//! together so that no path can return one without the other.
//!
//! A pair rather than a struct with named fields: the BPF backend returns the pair from the
//! subprograms in fewer instructions (a struct took 50 more over the balancer, compared by
//! disassembly). Verdicts are built with the functions below.

use aya_ebpf::bindings::xdp_action;
use lb_common::counters::Reason;

/// (`xdp_action::*`, the reason counted).
pub type Verdict = (u32, Reason);

/// On to the host's stack, untouched.
#[inline(always)]
pub const fn pass(reason: Reason) -> Verdict {
    (xdp_action::XDP_PASS, reason)
}

#[inline(always)]
pub const fn drop(reason: Reason) -> Verdict {
    (xdp_action::XDP_DROP, reason)
}

/// Back out of the interface it came in on.
#[inline(always)]
pub const fn tx(reason: Reason) -> Verdict {
    (xdp_action::XDP_TX, reason)
}
