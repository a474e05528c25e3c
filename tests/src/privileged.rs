//! Privileged tests fail loudly when they cannot run; they never skip.

use anyhow::{Context as _, bail};

/// Fails unless the process is root (loading XDP programs and `BPF_PROG_RUN` need `CAP_BPF`,
/// `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`).
pub fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "{what} must run as root (they load XDP programs and run them in the kernel); \
             run `sudo -E cargo xtask test` — they are never skipped"
        );
    }
    Ok(())
}

/// Moves the calling thread into a new, empty network namespace (only a down `lo`), so that
/// nothing a test does can reach the machine's interfaces. Call it first in `main`, before any
/// thread is spawned: threads inherit the namespace of the thread that creates them.
pub fn enter_private_netns() -> anyhow::Result<()> {
    // SAFETY: unshare only changes this thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
    }
    Ok(())
}
