//! Where pinned objects live, and the bpffs they live on.
//!
//! An instance pins its maps and one XDP link per interface under `/sys/fs/bpf/lb/<instance>/`;
//! a backend's decapsulation program under `/sys/fs/bpf/lb-decap/<name>/`. Pins keep the data
//! plane forwarding while no agent runs, and let the next agent adopt it.

use std::{
    io,
    path::{Path, PathBuf},
};

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// One pin directory.
#[derive(Debug, Clone)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// The balancer instance `name`.
    pub fn instance(name: &str) -> Self {
        Self { root: Path::new(BPFFS).join("lb").join(name) }
    }

    /// The decapsulation program of backend `name`.
    pub fn decap(name: &str) -> Self {
        Self { root: Path::new(BPFFS).join("lb-decap").join(name) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn link(&self, interface: &str) -> PathBuf {
        self.root.join(format!("link-{interface}"))
    }

    /// Creates the directory, mounting bpffs first if nothing is mounted at [`BPFFS`].
    pub fn create(&self) -> io::Result<()> {
        ensure_bpffs()?;
        std::fs::create_dir_all(&self.root)
    }

    pub fn exists(&self) -> bool {
        self.root.is_dir()
    }

    /// Removes every pin (a link whose last pin goes is detached) and the directory.
    pub fn remove(&self) -> io::Result<()> {
        // Links first, each detached before the next step (see `attach::unpin_link`), so that
        // the interfaces run nothing by the time this returns.
        for entry in std::fs::read_dir(&self.root)? {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("link-")) {
                super::attach::unpin_link(&path).map_err(io::Error::other)?;
            }
        }
        std::fs::remove_dir_all(&self.root)
    }
}

/// Mounts bpffs at [`BPFFS`] unless it is there already.
pub fn ensure_bpffs() -> io::Result<()> {
    let path = std::ffi::CString::new(BPFFS).expect("no NUL");
    // SAFETY: valid path, zeroed out-struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &raw mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    std::fs::create_dir_all(BPFFS)?;
    let fstype = std::ffi::CString::new("bpf").expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    if unsafe { libc::mount(fstype.as_ptr(), path.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    tracing::info!(path = BPFFS, "mounted bpffs");
    Ok(())
}
