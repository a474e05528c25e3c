//! One `BPF_PROG_RUN` of an XDP program (repeat = 1, so the program sees exactly the given bytes).

use anyhow::Context as _;
use aya::programs::{TestRun as _, TestRunOptions, Xdp};

/// XDP verdicts.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub fn verdict_name(v: u32) -> &'static str {
    match v {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown verdict",
    }
}

/// The kernel's `struct xdp_md`, to name the ingress interface of a test run.
#[repr(C)]
#[derive(Default)]
pub struct XdpMd {
    pub data: u32,
    pub data_end: u32,
    pub data_meta: u32,
    pub ingress_ifindex: u32,
    pub rx_queue_index: u32,
    pub egress_ifindex: u32,
}

impl XdpMd {
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: XdpMd is repr(C) plain integers without padding.
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref::<XdpMd>(self).cast::<u8>(), size_of::<XdpMd>()) }
    }
}

/// Result of one run.
pub struct Run {
    pub verdict: u32,
    pub output: Vec<u8>,
    pub duration: std::time::Duration,
}

/// Runs `program` once on `frame`; `ingress_ifindex` names the receiving interface (default:
/// the loopback device of the caller's network namespace).
pub fn run_once(program: &Xdp, frame: &[u8], ingress_ifindex: Option<u32>) -> anyhow::Result<Run> {
    let mut output = vec![0u8; frame.len() + 256];
    let ctx = ingress_ifindex.map(|ifindex| XdpMd {
        data_end: frame.len() as u32,
        ingress_ifindex: ifindex,
        ..Default::default()
    });
    let ctx_bytes = ctx.as_ref().map(XdpMd::as_bytes);
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut output),
            ctx_in: ctx_bytes,
            repeat: 1,
            ..Default::default()
        })
        .context("BPF_PROG_RUN")?;
    output.truncate(result.data_size_out as usize);
    Ok(Run { verdict: result.return_value, output, duration: result.duration })
}
