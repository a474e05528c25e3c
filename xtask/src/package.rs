//! `cargo xtask package`: the Debian package, built with `dpkg-deb` from a staged tree:
//! the release `lb`, its systemd unit (`xtask/package/lb.service`), the example configuration
//! as `/etc/lb/lb.toml` (a conffile), shell completions and man pages that `lb generate` writes
//! from the command line's definition. And its check: installed into the machine with dpkg,
//! every file where docs/operations.md says, the unit verified, the configuration checked, then
//! purged without a trace.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use crate::cmd::{self, output, run};

const PACKAGE: &str = "lb";

/// The files the package installs, as docs/operations.md lists them.
pub const INSTALLED: &[&str] = &[
    "/usr/bin/lb",
    "/lib/systemd/system/lb.service",
    "/etc/lb/lb.toml",
    "/usr/share/bash-completion/completions/lb",
    "/usr/share/zsh/vendor-completions/_lb",
    "/usr/share/fish/vendor_completions.d/lb.fish",
    "/usr/share/man/man1/lb.1.gz",
    "/usr/share/man/man1/lb-run.1.gz",
    "/usr/share/man/man1/lb-node-drain.1.gz",
    "/usr/share/doc/lb/copyright",
    "/usr/share/doc/lb/configuration.md",
];

/// Builds the package; returns its path.
pub fn build() -> anyhow::Result<PathBuf> {
    let root = cmd::workspace_root();
    run(cmd::cargo().args(["build", "--quiet", "--release", "-p", "lb-userspace", "--bin", "lb"]))?;
    let lb = root.join("target/release/lb");
    // The version the binary reports (`lb 0.1.0`).
    let version = output(Command::new(&lb).arg("--version"))
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        .context("lb --version")?;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))
        .map(|a| a.trim().to_string())
        .context("dpkg --print-architecture")?;
    let stage = root.join(format!("target/package/{PACKAGE}_{version}_{arch}"));
    let _ = std::fs::remove_dir_all(&stage);
    let put = |path: &str, bytes: &[u8], mode: u32| -> anyhow::Result<()> {
        let target = stage.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().context("a parent")?)?;
        std::fs::write(&target, bytes).with_context(|| format!("writing {}", target.display()))?;
        std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        Ok(())
    };
    put("/usr/bin/lb", &std::fs::read(&lb)?, 0o755)?;
    put("/lib/systemd/system/lb.service", &std::fs::read(root.join("xtask/package/lb.service"))?, 0o644)?;
    put("/etc/lb/lb.toml", &std::fs::read(root.join("config/example.toml"))?, 0o644)?;
    for (shell, path) in [
        ("bash", "/usr/share/bash-completion/completions/lb"),
        ("zsh", "/usr/share/zsh/vendor-completions/_lb"),
        ("fish", "/usr/share/fish/vendor_completions.d/lb.fish"),
    ] {
        let script = output(Command::new(&lb).args(["generate", "completion", shell]))
            .with_context(|| format!("lb generate completion {shell}"))?;
        put(path, script.as_bytes(), 0o644)?;
    }
    let man = stage.join("usr/share/man/man1");
    run(Command::new(&lb).args(["generate", "man"]).arg(&man))?;
    // Debian compresses man pages, reproducibly (no name, no time stamp).
    run(Command::new("gzip").args(["-9n", "--force"]).args(man_pages(&man)?))?;
    put(
        "/usr/share/doc/lb/copyright",
        b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: lb\n\n\
          Files: *\nLicense: MIT or GPL-2.0 (the eBPF programs: Dual MIT/GPL)\n",
        0o644,
    )?;
    let reference =
        output(Command::new(&lb).args(["generate", "config-reference"])).context("lb generate config-reference")?;
    put("/usr/share/doc/lb/configuration.md", reference.as_bytes(), 0o644)?;
    let installed_kib = dir_size(&stage)? / 1024;
    put(
        "/DEBIAN/control",
        format!(
            "Package: {PACKAGE}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: lb developers <lb@localhost>\n\
             Installed-Size: {installed_kib}\nDepends: libc6 (>= 2.34)\nRecommends: bird2\nSection: net\nPriority: optional\n\
             Description: XDP Layer-4 load balancer\n \
             An XDP program matches packets to virtual services, picks backends by Maglev\n \
             consistent hashing (or source hash, round robin, least connections, least\n \
             response time) and encapsulates them for direct server return. The agent\n \
             (lb run) keeps the data plane, checks backends' health and announces VIPs\n \
             over BGP through BIRD.\n"
        )
        .as_bytes(),
        0o644,
    )?;
    put("/DEBIAN/conffiles", b"/etc/lb/lb.toml\n", 0o644)?;
    // The unit is known to systemd at once; not enabled or started: the configuration needs
    // editing first.
    let reload = "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n";
    put("/DEBIAN/postinst", reload.as_bytes(), 0o755)?;
    put("/DEBIAN/postrm", reload.as_bytes(), 0o755)?;
    let deb = stage.with_extension("deb");
    run(Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&stage).arg(&deb))?;
    println!("package: {}", deb.display());
    Ok(deb)
}

/// Installs the package into this machine, checks it, and purges it again. Needs root.
pub fn check(deb: &Path) -> anyhow::Result<usize> {
    if !cmd::is_root() {
        bail!("checking the package installs it with dpkg and must run as root; it is never skipped");
    }
    // Anything left from an earlier run.
    let _ = run(Command::new("dpkg").args(["--purge", PACKAGE]));
    run(Command::new("dpkg").arg("--install").arg(deb))?;
    let checked = (|| -> anyhow::Result<usize> {
        let mut checks = 0;
        for path in INSTALLED {
            ensure!(Path::new(path).exists(), "the package did not install {path}");
            checks += 1;
        }
        let said = output(Command::new("/usr/bin/lb").args(["check", "/etc/lb/lb.toml"]))
            .context("lb check /etc/lb/lb.toml failed")?;
        ensure!(said.contains(": ok"), "lb check /etc/lb/lb.toml said: {said}");
        run(Command::new("systemd-analyze").args(["verify", "/lib/systemd/system/lb.service"]))
            .context("systemd-analyze verify lb.service")?;
        let version = output(Command::new("/usr/bin/lb").arg("--version")).unwrap_or_default();
        println!(
            "package: installed {} ({checks} files checked), lb check and systemd-analyze verify pass",
            version.trim()
        );
        Ok(checks + 2)
    })();
    run(Command::new("dpkg").args(["--purge", PACKAGE]))?;
    let checks = checked?;
    let left: Vec<&&str> = INSTALLED.iter().filter(|p| Path::new(p).exists()).collect();
    ensure!(left.is_empty(), "dpkg --purge left {left:?}");
    ensure!(!Path::new("/etc/lb").exists(), "dpkg --purge left /etc/lb");
    println!("package: purged, nothing left");
    Ok(checks + 1)
}

fn man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut pages = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "1") {
            pages.push(path);
        }
    }
    ensure!(!pages.is_empty(), "lb generate man wrote no pages into {}", dir.display());
    Ok(pages)
}

fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { dir_size(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}
