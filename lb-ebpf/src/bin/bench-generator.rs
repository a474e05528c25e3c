//! The benchmark's traffic generator, run by `BPF_PROG_RUN` in live-frames mode on one end of a
//! veth pair: each run writes the template (`lb_common::generator`) into the frame, gives it
//! this CPU's next flow, and sends it out (`XDP_TX` becomes a transmission on that veth, received
//! natively by the program under test on the peer).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_get_smp_processor_id,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use lb_common::generator::{GENERATOR_MAX_FRAME, GeneratorTemplate};
use lb_ebpf::access::write;

#[map]
static GENERATOR_TEMPLATE: Array<GeneratorTemplate> = Array::with_max_entries(1, 0);

/// Frames sent so far by each CPU.
#[map]
static GENERATOR_SENT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn bench_generator(ctx: XdpContext) -> u32 {
    let (Some(template), Some(sent)) = (GENERATOR_TEMPLATE.get(0), GENERATOR_SENT.get_ptr_mut(0)) else {
        return xdp_action::XDP_ABORTED;
    };
    let mut i = 0;
    while i < GENERATOR_MAX_FRAME / 4 {
        let at = 4 * i;
        if at as u32 >= template.len {
            break;
        }
        let word = [template.frame[at], template.frame[at + 1], template.frame[at + 2], template.frame[at + 3]];
        if write(&ctx, at, word).is_none() {
            return xdp_action::XDP_ABORTED;
        }
        i += 1;
    }
    // SAFETY: per-CPU value, only this CPU writes it.
    let n = unsafe {
        let n = *sent;
        *sent = n.wrapping_add(1);
        n
    };
    let flow = if template.flows == 0 { n } else { n % template.flows };
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let (port, addr_tail) = GeneratorTemplate::flow_fields(cpu, flow);
    // Offsets bounded by the template's size, so the verifier can check the writes.
    let within = |offset: u16| core::hint::black_box(usize::from(offset) & (GENERATOR_MAX_FRAME - 1));
    if write(&ctx, within(template.src_port_offset), port).is_none()
        || write(&ctx, within(template.src_addr_tail_offset), addr_tail).is_none()
    {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_TX
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
