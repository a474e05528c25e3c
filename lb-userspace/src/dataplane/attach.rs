//! Attaching an XDP program to an interface through a pinned `bpf_link`, or replacing the program
//! inside an existing pinned link atomically (a restart or an upgrade loses no packet).

use std::path::Path;

use aya::programs::{
    Xdp,
    links::{FdLink, PinnedLink},
    xdp::{XdpLink, XdpMode as AyaXdpMode},
};

use super::DataplaneError;
use crate::config::XdpMode;

/// What [`attach`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// A new link, in this mode, now pinned.
    New(AyaXdpMode),
    /// The program inside an existing pinned link was replaced (the link keeps its mode).
    Replaced,
}

/// Attaches `program` to `interface`, keeping the link pinned at `link_pin`.
pub fn attach(program: &mut Xdp, interface: &str, mode: XdpMode, link_pin: &Path) -> Result<Attached, DataplaneError> {
    if link_pin.exists() {
        let pinned = PinnedLink::from_pin(link_pin).map_err(|e| DataplaneError::Link(e.to_string()))?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| DataplaneError::Link(e.to_string()))?;
        let id = program.attach_to_link(link)?;
        // The pin holds the link; this process's handle may go.
        drop(program.take_link(id)?);
        return Ok(Attached::Replaced);
    }
    let (id, used) = match mode {
        XdpMode::Native => (program.attach(interface, AyaXdpMode::Driver)?, AyaXdpMode::Driver),
        XdpMode::Generic => (program.attach(interface, AyaXdpMode::Skb)?, AyaXdpMode::Skb),
        XdpMode::Auto => match program.attach(interface, AyaXdpMode::Driver) {
            Ok(id) => (id, AyaXdpMode::Driver),
            Err(e) => {
                tracing::warn!(interface, error = %e, "native XDP unavailable, falling back to generic XDP (about 10x slower)");
                (program.attach(interface, AyaXdpMode::Skb)?, AyaXdpMode::Skb)
            }
        },
    };
    let link = program.take_link(id)?;
    let fd_link = FdLink::try_from(link).map_err(|e| {
        DataplaneError::Link(format!(
            "{interface}: the kernel attached without a bpf_link ({e}); pinning needs Linux 5.9 or newer"
        ))
    })?;
    fd_link
        .pin(link_pin)
        .map_err(|e| DataplaneError::Link(format!("pinning the link at {}: {e}", link_pin.display())))?;
    Ok(Attached::New(used))
}

/// Removes the link pinned at `link_pin`, detaching its program before returning. Unpinning
/// alone drops the kernel's last reference from a work queue, a moment later, and an attach in
/// the other XDP mode meanwhile fails with "File exists"; holding the link open across the
/// unpin makes this process's close the last reference, which detaches at once.
pub fn unpin_link(link_pin: &Path) -> Result<(), DataplaneError> {
    let held = PinnedLink::from_pin(link_pin).map_err(|e| DataplaneError::Link(e.to_string()))?;
    std::fs::remove_file(link_pin)
        .map_err(|e| DataplaneError::Link(format!("removing {}: {e}", link_pin.display())))?;
    drop(held);
    Ok(())
}

/// The id of the program running in the link pinned at `link_pin`.
pub fn pinned_program(link_pin: &Path) -> Result<u32, DataplaneError> {
    let pinned = PinnedLink::from_pin(link_pin).map_err(|e| DataplaneError::Link(e.to_string()))?;
    let info = FdLink::from(pinned).info().map_err(|e| DataplaneError::Link(e.to_string()))?;
    Ok(info.program_id())
}
