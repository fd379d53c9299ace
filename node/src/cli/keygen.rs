//! `warren keygen`: create a link key pair, show an existing key's public token, or rotate
//! a node's key (keeping the old one and a succession statement it signed).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::keys::LinkKeypair;
use crate::keys::rotation;

/// Flags of `warren keygen`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["out", "show"])))]
pub struct KeygenArgs {
    /// Write a new private key to FILE (mode 0600) and print its public token.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Overwrite FILE if it exists.
    #[arg(long, requires = "out", conflicts_with = "rotate")]
    pub force: bool,

    /// Rotate the existing key in FILE (given with --out): FILE gets a new key, the old one
    /// is kept in FILE.previous, and FILE.succession gets a statement signed by the old key
    /// naming the new one. Reload the node (SIGHUP, or `receptorctl reload`) to adopt it: running
    /// links and jobs go on, and peers that pinned the old key follow the statement.
    #[arg(long, requires = "out")]
    pub rotate: bool,

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
    if args.rotate {
        return rotate(&path);
    }
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

fn rotate(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let rotated = rotation::rotate(path, crate::clock::now_ms())
        .with_context(|| format!("cannot rotate the key in {}", path.display()))?;
    eprintln!(
        "rotated the link key in {}: the old key {} is kept in {} (delete it once every \
         peer runs with the new one), the succession it signed is in {}",
        path.display(),
        rotated.old,
        rotated.previous.display(),
        rotated.chain.display(),
    );
    eprintln!("next:");
    eprintln!(
        "  1. reload the node (`kill -HUP PID`, or `receptorctl --socket SOCKET reload`): new \
         links, sessions and adverts use the new key, running links and jobs go on"
    );
    eprintln!(
        "  2. peers that pinned the old key (--trust NODE={}) follow the succession by \
         themselves and remember it; update their configs to the new token when convenient",
        rotated.old
    );
    eprintln!(
        "  3. in a mesh with an authority, get a certificate for the new key first: \
         `warren ca sign --ca ca.key --node NODE_ID --key {} --out NODE_ID.cert` (same \
         --group and --expires as before), put it where [certificates] cert points, then reload",
        rotated.new
    );
    eprintln!("new public key:");
    println!("{}", rotated.new);
    Ok(ExitCode::SUCCESS)
}
