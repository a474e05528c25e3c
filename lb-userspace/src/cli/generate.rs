//! `lb generate`: shell completions and man pages from the command line's own definition, for
//! the package (`cargo xtask package`) and for hosts that install `lb` by hand; the
//! configuration reference from the configuration's (docs/configuration.md).

use std::path::PathBuf;

use anyhow::Context as _;
use clap_complete::Shell;

#[derive(clap::Subcommand)]
pub enum GenerateCommand {
    /// Print the completion script for SHELL on standard output.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: Shell,
    },
    /// Write a man page for `lb` and each of its subcommands into DIR (lb.1, lb-status.1, ...).
    Man {
        /// The directory to write into (created if missing).
        dir: PathBuf,
    },
    /// Print the configuration reference (Markdown: every field, its type, default and valid
    /// values) on standard output, as docs/configuration.md holds it.
    ConfigReference,
}

pub fn run(command: GenerateCommand, mut cli: clap::Command) -> anyhow::Result<()> {
    match command {
        GenerateCommand::Completion { shell } => {
            clap_complete::generate(shell, &mut cli, "lb", &mut std::io::stdout());
        }
        GenerateCommand::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cli, &dir).with_context(|| format!("writing man pages into {}", dir.display()))?;
        }
        GenerateCommand::ConfigReference => print!("{}", lb_userspace::config::reference::markdown()),
    }
    Ok(())
}
