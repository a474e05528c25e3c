//! Counting, the same way in every program: each program has its own per-CPU reason counters
//! (`lb_common::counters`), and every packet is counted under exactly one reason.

use aya_ebpf::maps::PerCpuArray;
use lb_common::counters::{Reason, ReasonCounter};

/// Counts one packet of `bytes` bytes under `reason` in `counters` (this CPU's slot).
#[inline(always)]
pub fn count_reason(counters: &PerCpuArray<ReasonCounter>, reason: Reason, bytes: u64) {
    if let Some(c) = counters.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}
