//! The live-frames pipeline: real packets through a veth pair in native XDP mode, timed by the
//! kernel.
//!
//! ```text
//!   bench_generator (BPF_PROG_RUN, live frames, on lbgen) --XDP_TX--> lbgen ==veth==> lbdut
//!   lbdut: program under test, native --XDP_TX--> lbdut ==veth==> lbgen: bench_sink, native
//! ```
//!
//! The generator writes its template into every frame (live-frames pages are recycled without
//! their content being restored) and varies the flow per frame. The program under test's cost
//! is the kernel's own BPF statistics (run time / run count, `kernel.bpf_stats_enabled`); the
//! delivered rate is what the sink counted over the wall time of the runs, measured in a second
//! pass with statistics off (they add two clock reads per packet). Everything lives in the
//! caller's network namespace, which must be a private one (`privileged::enter_private_netns`).

use std::{
    os::fd::OwnedFd,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::TestRunAttrs,
    programs::{TestRun as _, TestRunOptions, Xdp, xdp::XdpMode},
};
use lb_common::generator::{GENERATOR_MAX_FRAME, GeneratorTemplate};
use lb_userspace::dataplane::{ifindex, objects};

/// The generator's side of the veth pair.
pub const GENERATOR_IF: &str = "lbgen";
/// The side of the program under test.
pub const DUT_IF: &str = "lbdut";
/// Frames the kernel builds per batch in live-frames mode (its default).
const LIVE_BATCH: u32 = 64;

/// A frame to send, and how it varies.
#[derive(Clone, Debug)]
pub struct Traffic {
    pub frame: Vec<u8>,
    /// Distinct flows per CPU, cycled; 0 makes every frame a new flow.
    pub flows: u32,
    pub src_port_offset: u16,
    pub src_addr_tail_offset: u16,
}

impl Traffic {
    fn template(&self) -> anyhow::Result<(GeneratorTemplate, Vec<u8>)> {
        let mut frame = self.frame.clone();
        frame.resize(frame.len().next_multiple_of(4), 0);
        ensure!(frame.len() <= GENERATOR_MAX_FRAME, "a {}-byte frame does not fit the generator", frame.len());
        let mut bytes = [0u8; GENERATOR_MAX_FRAME];
        bytes[..frame.len()].copy_from_slice(&frame);
        let t = GeneratorTemplate::new(
            bytes,
            frame.len() as u32,
            self.flows,
            self.src_port_offset,
            self.src_addr_tail_offset,
        );
        Ok((t, frame))
    }
}

/// What one timed pass measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pass {
    /// Mean run time of the program under test per packet (kernel statistics), ns.
    pub ns_per_packet: f64,
    /// Frames the sink received per second, millions.
    pub delivered_mpps: f64,
    /// Frames the generator sent.
    pub sent: u64,
    /// Frames the sink received.
    pub received: u64,
}

/// The veth pair, the generator and the sink.
pub struct Pipeline {
    generator: Ebpf,
    sink: Ebpf,
    generator_ifindex: u32,
}

impl Pipeline {
    /// Creates the veth pair with `queues` queues each way and attaches the sink (native).
    pub fn new(queues: u32) -> anyhow::Result<Self> {
        let q = queues.to_string();
        let _ = lb_lab::run(Command::new("ip").args(["link", "del", GENERATOR_IF]));
        lb_lab::run(Command::new("ip").args([
            "link",
            "add",
            GENERATOR_IF,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            DUT_IF,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ]))?;
        for (dev, mac) in [(GENERATOR_IF, "02:00:00:00:00:01"), (DUT_IF, "02:00:00:00:00:02")] {
            lb_lab::run(Command::new("ip").args(["link", "set", dev, "address", mac]))?;
            lb_lab::run(Command::new("ip").args(["link", "set", dev, "up"]))?;
        }
        let mut sink = Ebpf::load(objects::BENCH_SINK)?;
        let program: &mut Xdp = sink.program_mut("bench_sink").context("no bench_sink program")?.try_into()?;
        program.load()?;
        program.attach(GENERATOR_IF, XdpMode::Driver).context("attaching the sink natively")?;
        let mut generator = Ebpf::load(objects::BENCH_GENERATOR)?;
        let program: &mut Xdp =
            generator.program_mut("bench_generator").context("no bench_generator program")?.try_into()?;
        program.load()?;
        Ok(Self { generator, sink, generator_ifindex: ifindex(GENERATOR_IF)? })
    }

    /// Sends `packets` frames of `traffic` from each of the first `cpus` CPUs at once through
    /// `dut` (attached to [`DUT_IF`]). With `stats`, the kernel's statistics are on for the pass
    /// and give `dut`'s run time per packet; without, the delivered rate is undisturbed by them.
    pub fn pass(
        &mut self,
        dut: &Xdp,
        traffic: &Traffic,
        cpus: usize,
        packets: u32,
        stats: bool,
    ) -> anyhow::Result<Pass> {
        let (template, frame) = traffic.template()?;
        let mut templates: Array<_, GeneratorTemplate> =
            Array::try_from(self.generator.map_mut("GENERATOR_TEMPLATE").context("no template map")?)?;
        templates.set(0, template, 0)?;
        let _stats: Option<OwnedFd> =
            if stats { Some(aya::sys::enable_stats(aya::sys::Stats::RunTime)?) } else { None };
        let before_info = dut.info()?;
        let before_rx = self.received()?;
        let generator: &Xdp = self.generator.program("bench_generator").context("no generator")?.try_into()?;
        let ifindex = self.generator_ifindex;
        let started = Instant::now();
        let sent = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..cpus)
                .map(|cpu| {
                    let frame = &frame;
                    scope.spawn(move || -> anyhow::Result<u64> {
                        crate::pin_to_cpu(cpu)?;
                        send(generator, frame, ifindex, packets)
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().expect("generator thread panicked")).sum::<anyhow::Result<u64>>()
        })?;
        // Frames still in flight land within microseconds; the sink's count then stands.
        std::thread::sleep(Duration::from_millis(20));
        let elapsed = started.elapsed().as_secs_f64() - 0.020;
        let received = self.received()? - before_rx;
        let after_info = dut.info()?;
        let runs = after_info.run_count() - before_info.run_count();
        let run_ns = after_info.run_time().checked_sub(before_info.run_time()).unwrap().as_nanos() as f64;
        Ok(Pass {
            ns_per_packet: if stats && runs > 0 { run_ns / runs as f64 } else { f64::NAN },
            delivered_mpps: received as f64 / elapsed / 1e6,
            sent,
            received,
        })
    }

    fn received(&self) -> anyhow::Result<u64> {
        let counts: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.sink.map("SINK_RECEIVED").context("no sink counter")?)?;
        Ok(counts.get(&0, 0)?.iter().sum())
    }
}

/// One generator run of `packets` live frames on this thread's CPU.
fn send(generator: &Xdp, frame: &[u8], ifindex: u32, packets: u32) -> anyhow::Result<u64> {
    let ctx = crate::xdp::XdpMd { data_end: frame.len() as u32, ingress_ifindex: ifindex, ..Default::default() };
    generator
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(ctx.as_bytes()),
            repeat: packets,
            attrs: TestRunAttrs::new().xdp_live_frames(LIVE_BATCH),
            ..Default::default()
        })
        .context("BPF_PROG_RUN with live frames")?;
    Ok(u64::from(packets))
}
