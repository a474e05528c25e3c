//! The benchmark's live-frames traffic generator: what the agent-side bench tells the generator
//! program (`lb-ebpf`'s `bench-generator`) to send.
//!
//! `BPF_PROG_RUN` in live-frames mode recycles its pages without restoring their content, and the
//! programs downstream rewrite them (the balancer prepends an outer header), so the generator
//! writes the whole template into every frame before varying its flow fields.

use crate::{assert_layout, userspace_pod};

/// Largest template frame, in bytes (a multiple of 4: the generator copies 32-bit words).
pub const GENERATOR_MAX_FRAME: usize = 128;

/// One frame template and how frames vary.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeneratorTemplate {
    /// The frame's bytes; the first `len` are sent.
    pub frame: [u8; GENERATOR_MAX_FRAME],
    /// Bytes of `frame` in use: a multiple of 4, at most [`GENERATOR_MAX_FRAME`], and equal to
    /// the length of the run's input frame.
    pub len: u32,
    /// Distinct flows per CPU, cycled in order; 0 makes every frame a new flow.
    pub flows: u32,
    /// Offset of the source port: frame `n` of a CPU gets port `n mod 65536` (in flow order).
    pub src_port_offset: u16,
    /// Offset of the source address's last two bytes: the CPU number, then `n >> 16`.
    pub src_addr_tail_offset: u16,
    /// Explicit padding, always zero.
    pub _pad: [u8; 4],
}
assert_layout!(
    GeneratorTemplate,
    size = 144,
    frame = 0,
    len = 128,
    flows = 132,
    src_port_offset = 136,
    src_addr_tail_offset = 138,
    _pad = 140
);
userspace_pod!(GeneratorTemplate);

impl GeneratorTemplate {
    /// A template sending `frame` (padded to a multiple of 4 with zeros, which the caller's run
    /// input must match in length) over `flows` flows per CPU.
    pub const fn new(
        frame: [u8; GENERATOR_MAX_FRAME],
        len: u32,
        flows: u32,
        src_port_offset: u16,
        src_addr_tail_offset: u16,
    ) -> Self {
        Self { frame, len, flows, src_port_offset, src_addr_tail_offset, _pad: [0; 4] }
    }

    /// Flow number `n`'s source port and address tail on `cpu`.
    #[inline(always)]
    pub const fn flow_fields(cpu: u32, n: u32) -> ([u8; 2], [u8; 2]) {
        ((n as u16).to_be_bytes(), [cpu as u8, (n >> 16) as u8])
    }
}
