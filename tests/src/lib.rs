//! Test support for the in-kernel packet tests and the namespaced end-to-end tests.
//!
//! Layout:
//! - [`bench`]: the benchmarks' balancer set-up and traffic.
//! - [`privileged`]: root check and a private network namespace for the test process.
//! - [`packet`]: building test frames and the expected encapsulated output.
//! - [`xdp`]: running a loaded XDP program once through `BPF_PROG_RUN`.
//! - [`live`]: the live-frames pipeline (generator, veth pair in native mode, sink) for benchmarks.
//! - [`e2e`]: the lab test environment (agent runs, shares, sessions under load).
//! - [`traffic`]: real HTTP and DNS clients for the namespaced end-to-end tests.
//! - [`scale`]: thousands of health checks in the lab, against responders of the test's own.
pub mod bench;
pub mod e2e;
pub mod live;
pub mod packet;
pub mod privileged;
pub mod scale;
pub mod traffic;
pub mod xdp;

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    use anyhow::Context as _;
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}
