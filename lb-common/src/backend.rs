//! Backends as the data plane reads them.

use crate::{assert_layout, userspace_pod};

/// Flag: this backend id holds a live backend. A flow pinned to an id without it is rescheduled.
pub const BACKEND_PRESENT: u8 = 1;

/// A backend: the outer destination of encapsulated packets.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Backend {
    pub addr: [u8; 16],
    pub family: u8,
    pub flags: u8,
    pub _pad: [u8; 6],
}
assert_layout!(Backend, size = 24, addr = 0, family = 16, flags = 17, _pad = 18);
userspace_pod!(Backend);

impl Backend {
    pub const fn new(family: u8, addr: [u8; 16]) -> Self {
        Self { addr, family, flags: BACKEND_PRESENT, _pad: [0; 6] }
    }

    #[inline(always)]
    pub const fn is_present(&self) -> bool {
        self.flags & BACKEND_PRESENT != 0
    }
}
