//! The read-only views of a running data plane, from its pinned maps (they work while the agent is
//! stopped), computed with the data plane's and the agent's own code so that what they say is
//! what happens:
//! - [`trace`]: `lb trace`, which backend a flow goes to and why.
//! - [`plan`]: `lb plan`, what a new configuration would move.
//! - [`stats`]: `lb stats` and the metrics' counters.

pub mod plan;
pub mod stats;
pub mod trace;

pub use self::{
    plan::{VipPlan, plan},
    stats::{PinnedStats, RateRow, Rates, ReasonRate},
    trace::{Trace, trace},
};
