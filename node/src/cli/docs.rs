//! `warren completions SHELL` and `warren man`: shell completions and man pages generated
//! from the clap definitions at run time, so they always match the binary that prints them
//! (the .deb's build script runs them; see scripts/package-deb.sh).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

/// Flags of `warren completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for. Bash: `warren completions bash >
    /// /usr/share/bash-completion/completions/warren`; zsh: a file `_warren` on `$fpath`;
    /// fish: `~/.config/fish/completions/warren.fish`.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Flags of `warren man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write one page per command (warren.1, warren-node.1, warren-work-submit.1, ...) into
    /// DIR and print their paths. Without it, print warren.1 (try `warren man | man -l -`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub(super) fn completions(args: &CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = super::Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut cmd, "warren", &mut out);
    out.flush().context("writing completions")?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn man(args: &ManArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = super::Cli::command();
    cmd.build();
    let Some(dir) = &args.out else {
        let mut out = std::io::stdout().lock();
        clap_mangen::Man::new(cmd)
            .render(&mut out)
            .context("writing the man page")?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for path in write_pages(&cmd, None, dir)? {
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `cmd`'s page as `PREFIX-NAME.1` (or `NAME.1`) in `dir`, then its subcommands'
/// pages, git-style; returns the files written.
fn write_pages(
    cmd: &clap::Command,
    prefix: Option<&str>,
    dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let name = match prefix {
        Some(prefix) => format!("{prefix}-{}", cmd.get_name()),
        None => cmd.get_name().to_owned(),
    };
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone().name(name.clone()))
        .render(&mut page)
        .with_context(|| format!("rendering {name}.1"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    let mut written = vec![path];
    // clap's own `help` subcommand gets no page.
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        written.extend(write_pages(sub, Some(&name), dir)?);
    }
    Ok(written)
}
