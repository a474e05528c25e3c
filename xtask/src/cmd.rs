//! Running commands with readable failures.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}

/// The cargo that runs xtask, so nested builds use the same toolchain.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn describe(command: &Command) -> String {
    let mut s = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `command` with inherited output; fails if it fails.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let what = describe(command);
    println!("$ {what}");
    let status = command.status().with_context(|| format!("could not start `{what}`"))?;
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(())
}

/// Runs `command`, echoing its stdout while collecting it; returns (success, stdout).
pub fn run_tee(command: &mut Command) -> anyhow::Result<(bool, String)> {
    let what = describe(command);
    println!("$ {what}");
    let mut child = command.stdout(Stdio::piped()).spawn().with_context(|| format!("could not start `{what}`"))?;
    let mut collected = String::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        collected.push_str(&line);
        collected.push('\n');
    }
    Ok((child.wait()?.success(), collected))
}

/// stdout of `command` if it runs and succeeds.
pub fn output(command: &mut Command) -> Option<String> {
    let out = command.stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0")
}
