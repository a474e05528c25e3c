//! The agent's upkeep of its own data plane: attaching (in the configured mode), and the
//! self-check run every second and around every change: maps pinned, links pinned and running
//! this agent's program on the interfaces themselves, repaired where that is safe; and whether
//! the drivers transmit what the data plane sends ([`super::delivery`]).

use std::time::Instant;

use anyhow::Context as _;

use super::{Agent, delivery::Transition};
use crate::{
    config::{Named as _, XdpMode},
    dataplane::{PinProblem, attach::Attached, describe_pin_problems},
    host::{
        self,
        nexthop::{Resolver, XdpAttachment},
    },
};

impl Agent {
    /// Attaches the balancer to every interface, or replaces the program in their pinned links.
    pub(super) fn attach(&mut self) -> anyhow::Result<()> {
        for interface in &self.config.instance.interfaces {
            self.unpin_link_of_another_mode(interface)?;
            let attached = self
                .balancer
                .attach(interface, self.config.instance.xdp_mode, &self.pins)
                .with_context(|| format!("attaching the balancer to {interface}"))?;
            match attached {
                Attached::New(mode) => tracing::info!(interface, ?mode, "attached the balancer"),
                Attached::Replaced => tracing::info!(interface, "replaced the balancer program inside the pinned link"),
            }
        }
        Ok(())
    }

    /// A pinned link in another XDP mode than the configured one (native asked, generic
    /// pinned, or the reverse) is removed, so that [`Agent::attach`] attaches anew in the
    /// configured mode: traffic on the interface pauses between the two. `auto` takes either
    /// mode as it finds it.
    fn unpin_link_of_another_mode(&self, interface: &str) -> anyhow::Result<()> {
        let link = self.pins.link(interface);
        if !link.exists() {
            return Ok(());
        }
        let ifindex = crate::dataplane::ifindex(interface)?;
        let now = Resolver::new()?.xdp_attachment(ifindex)?;
        let wanted = self.config.instance.xdp_mode;
        let differs = matches!(
            (wanted, now),
            (XdpMode::Native, Some(XdpAttachment::Generic)) | (XdpMode::Generic, Some(XdpAttachment::Native))
        );
        if differs {
            tracing::warn!(
                interface,
                pinned = ?now,
                configured = wanted.name(),
                "the pinned link runs in another XDP mode than configured: attaching again (traffic pauses briefly)"
            );
            crate::dataplane::attach::unpin_link(&link)?;
        }
        Ok(())
    }

    /// Checks that the pins hold this agent's maps and that every interface runs this agent's
    /// program from its pinned link; repairs what is missing (maps pinned again, interfaces
    /// attached again). A link running another program is not fought over: it is reported, and
    /// changes are refused until an operator decides. Whether the data plane is as it should be.
    pub(super) fn self_check(&mut self) -> bool {
        let interfaces = self.config.instance.interfaces.clone();
        let checked = self.balancer.check_pins(&self.pins, &interfaces).map_err(anyhow::Error::from);
        let found = match checked.and_then(|mut found| {
            found.extend(self.defunct_links(&interfaces, &found)?);
            Ok(found)
        }) {
            Ok(found) if found.is_empty() => {
                self.data_plane.problem = None;
                self.failed_repair = None;
                return true;
            }
            Ok(found) => found,
            Err(e) => {
                self.data_plane.problem = Some(format!("checking the pins failed: {e:#}"));
                return false;
            }
        };
        let described = describe_pin_problems(&found);
        if found.iter().any(|p| matches!(p, PinProblem::OtherProgram { .. })) {
            if self.data_plane.problem.as_ref() != Some(&described) {
                tracing::error!(
                    "{described}: another agent or tool took the interface; changes are refused until it is resolved"
                );
            }
            self.data_plane.problem = Some(described);
            return false;
        }
        // A repair that keeps failing is logged once, not every second.
        if self.failed_repair.as_ref() == Some(&described) {
            tracing::debug!("the pinned data plane is still not as the agent left it ({described}): repairing");
        } else {
            tracing::error!("the pinned data plane is not as the agent left it ({described}): repairing");
        }
        for problem in &found {
            if let PinProblem::Defunct(interface) = problem {
                // A new interface: attached anew, readied as at start, its next hops looked up.
                let _ = std::fs::remove_file(self.pins.link(interface));
                host::enable_forwarding(interface);
                if let Err(e) = host::vlan::keep_vlan_tags(interface) {
                    tracing::error!("{e}");
                }
                self.next_hops.forget_routes();
            }
        }
        let repaired = self.balancer.repin(&self.pins).map_err(anyhow::Error::from).and_then(|()| self.attach());
        let still = repaired.and_then(|()| Ok(self.balancer.check_pins(&self.pins, &interfaces)?));
        match still {
            Ok(still) if still.is_empty() => {
                tracing::info!("repaired the data plane ({described})");
                self.failed_repair = None;
                self.data_plane.repairs += 1;
                self.data_plane.last_repaired = Some(described);
                self.data_plane.problem = None;
                true
            }
            Ok(still) => {
                let left = describe_pin_problems(&still);
                if self.failed_repair.as_ref() != Some(&described) {
                    tracing::error!("repairing the data plane left: {left}");
                }
                self.failed_repair = Some(described);
                self.data_plane.problem = Some(left);
                false
            }
            Err(e) => {
                if self.failed_repair.as_ref() != Some(&described) {
                    tracing::error!("repairing the data plane failed: {e:#}");
                }
                self.data_plane.problem = Some(format!("{described}; repairing failed: {e:#}"));
                self.failed_repair = Some(described);
                false
            }
        }
    }

    /// Interfaces whose pinned link runs this agent's program while the interface itself runs
    /// none (or another): the link died with an interface that was deleted, perhaps created
    /// again under the same name. Interfaces `found` already has a problem for are skipped.
    fn defunct_links(&mut self, interfaces: &[String], found: &[PinProblem]) -> anyhow::Result<Vec<PinProblem>> {
        let ours = self.balancer.program_id()?;
        let mut resolver = Resolver::new()?;
        let mut defunct = Vec::new();
        for interface in interfaces {
            let known = found.iter().any(|p| match p {
                PinProblem::NotAttached(i) | PinProblem::Defunct(i) | PinProblem::OtherProgram { interface: i, .. } => {
                    i == interface
                }
                PinProblem::MapNotPinned(_) => false,
            });
            if known {
                continue;
            }
            let running = match crate::dataplane::ifindex(interface) {
                Ok(ifindex) => resolver.xdp_program(ifindex)?,
                Err(_) => None,
            };
            if running != Some(ours) {
                defunct.push(PinProblem::Defunct(interface.clone()));
            }
        }
        Ok(defunct)
    }

    /// Reads the interfaces' XDP transmit errors; logs an interface that starts or stops losing
    /// the frames the balancer forwards.
    pub(super) fn watch_delivery(&mut self) {
        let readings: Vec<(String, Option<u64>)> = self
            .config
            .instance
            .interfaces
            .iter()
            .map(|interface| {
                let errors = host::ethtool::xdp_transmit_errors(interface).unwrap_or_else(|e| {
                    tracing::debug!(interface, error = %e, "reading the driver's statistics failed");
                    None
                });
                (interface.clone(), errors)
            })
            .collect();
        for change in self.delivery.observe(&readings, Instant::now()) {
            match change {
                Transition::Failing { interface, lost } => tracing::error!(
                    interface,
                    lost,
                    "the driver could not transmit XDP frames the balancer forwarded: traffic is lost. In native \
                     mode a veth delivers only if its peer runs an XDP program"
                ),
                Transition::Delivering { interface, lost } => {
                    tracing::info!(interface, lost, "the driver transmits the balancer's frames again");
                }
            }
        }
    }
}
