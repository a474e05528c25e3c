//! Test support for the in-kernel packet tests and the namespaced end-to-end tests.
//!
//! Layout:
//! - [`privileged`]: root check and a private network namespace for the test process.
//! - [`packet`]: building test frames and the expected encapsulated output.
//! - [`xdp`]: running a loaded XDP program once through BPF_PROG_RUN.
//! - [`e2e`]: the lab test environment (agent runs, shares, sessions under load).
//! - [`traffic`]: real HTTP and DNS clients for the namespaced end-to-end tests.
pub mod e2e;
pub mod packet;
pub mod privileged;
pub mod traffic;
pub mod xdp;
