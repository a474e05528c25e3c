//! Flood mode: past a VIP's budget of new flows, unknown flows are still forwarded by the VIP's
//! table but not inserted into the flow table, so a flood of new 5-tuples (spoofed sources, SYN
//! or UDP floods) can neither evict established flows nor spend the CPU on LRU inserts, which
//! cost 20 to 40 times a flow-table hit.
//!
//! Each CPU counts a VIP's new flows in windows of [`FLOOD_WINDOW_NS`] against a per-CPU,
//! per-window budget the agent computes from the VIP's `new_flow_budget` (flows per second per
//! balancer). A window that goes over the budget enters flood mode at once; flood mode ends when
//! a whole window stays under half the budget (hysteresis, so a rate near the budget does not
//! flap), or passes without a new flow.

use crate::{assert_layout, userspace_pod};

/// Length of a counting window.
pub const FLOOD_WINDOW_NS: u64 = 100_000_000;

/// One CPU's flood state for one VIP.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FloodState {
    /// Start of the current window (`bpf_ktime_get_coarse_ns`).
    pub window_start_ns: u64,
    /// New flows forwarded without a flow-table entry, ever.
    pub untracked: u64,
    /// New flows seen in the current window, tracked or not.
    pub new_flows: u32,
    /// 1 while in flood mode.
    pub flooding: u32,
}
assert_layout!(FloodState, size = 24, window_start_ns = 0, untracked = 8, new_flows = 16, flooding = 20);
userspace_pod!(FloodState);

impl FloodState {
    /// Counts a new flow at `now` against `budget` new flows per window (0: no flood mode);
    /// returns whether the flow gets a flow-table entry.
    #[inline(always)]
    pub fn track_new_flow(&mut self, budget: u32, now: u64) -> bool {
        if budget == 0 {
            return true;
        }
        let elapsed = now.wrapping_sub(self.window_start_ns);
        if elapsed >= FLOOD_WINDOW_NS {
            if self.flooding != 0 && (self.new_flows < budget / 2 || elapsed >= 2 * FLOOD_WINDOW_NS) {
                self.flooding = 0;
            }
            self.window_start_ns = now;
            self.new_flows = 0;
        }
        self.new_flows = self.new_flows.saturating_add(1);
        if self.new_flows > budget {
            self.flooding = 1;
        }
        if self.flooding != 0 {
            self.untracked += 1;
            return false;
        }
        true
    }
}

/// The per-CPU, per-window budget for `per_second` new flows per second spread over `cpus`
/// CPUs (0 stays 0: no flood mode; otherwise at least 1).
pub fn window_budget(per_second: u32, cpus: u32) -> u32 {
    if per_second == 0 {
        return 0;
    }
    let per_window = u64::from(per_second) * FLOOD_WINDOW_NS / 1_000_000_000;
    per_window.div_ceil(u64::from(cpus.max(1))).clamp(1, u64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = FLOOD_WINDOW_NS;

    #[test]
    fn enters_past_the_budget_and_leaves_with_hysteresis() {
        let mut s = FloodState::default();
        let t0 = 10 * W;
        // Budget 10 per window: the first 10 flows of a window are tracked, the 11th is not.
        assert!((0..10).all(|i| s.track_new_flow(10, t0 + i)));
        assert!(!s.track_new_flow(10, t0 + 10));
        assert_eq!((s.flooding, s.untracked), (1, 1));
        // Next window at 6 of 10 (not under half): still flooding, every new flow untracked.
        assert!((0..6).all(|i| !s.track_new_flow(10, t0 + W + i)));
        // The window after that starts from the 6: not under half, so flood mode holds.
        assert!(!s.track_new_flow(10, t0 + 2 * W));
        // That window ends with 4 (< 5): the next window leaves flood mode.
        assert!((1..4).all(|i| !s.track_new_flow(10, t0 + 2 * W + i)));
        assert!(s.track_new_flow(10, t0 + 3 * W));
        assert_eq!(s.flooding, 0);
        assert_eq!(s.untracked, 1 + 6 + 4);
    }

    #[test]
    fn a_quiet_window_ends_flood_mode() {
        let mut s = FloodState::default();
        assert!((0..3).all(|i| s.track_new_flow(2, W + i) == (i < 2)));
        assert_eq!(s.flooding, 1);
        // More than a whole window without a new flow.
        assert!(s.track_new_flow(2, W + 2 * W + 5));
        assert_eq!(s.flooding, 0);
    }

    #[test]
    fn no_budget_tracks_everything() {
        let mut s = FloodState::default();
        assert!((0..1000).all(|i| s.track_new_flow(0, i)));
        assert_eq!(s, FloodState::default());
    }

    #[test]
    fn window_budgets() {
        assert_eq!(window_budget(0, 2), 0);
        assert_eq!(window_budget(1, 2), 1);
        assert_eq!(window_budget(100_000, 2), 5_000);
        assert_eq!(window_budget(100_040, 4), 2_501);
        assert_eq!(window_budget(u32::MAX, 1), 429_496_729);
    }
}
