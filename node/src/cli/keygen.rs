//! `warren keygen`: create a link key pair, or show an existing key's public token.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::keys::LinkKeypair;

/// Flags of `warren keygen`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["out", "show"])))]
pub struct KeygenArgs {
    /// Write a new private key to FILE (mode 0600) and print its public token.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Overwrite FILE if it exists.
    #[arg(long, requires = "out")]
    pub force: bool,

    /// Print the public token of the existing private key in FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "out")]
    pub show: Option<PathBuf>,
}

pub(super) fn run(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = args.show {
        let pair = LinkKeypair::load(&path)?;
        println!("{}", pair.public());
        return Ok(ExitCode::SUCCESS);
    }
    let path = args.out.context("--out or --show is required")?;
    let pair = LinkKeypair::generate()?;
    pair.save(&path, args.force)?;
    eprintln!(
        "wrote private link key to {} (keep it secret)",
        path.display()
    );
    eprintln!("public key (give this to peers as --trust TOKEN):");
    println!("{}", pair.public());
    Ok(ExitCode::SUCCESS)
}
