//! `warren ca`: a small mesh authority. Creates the authority's key, signs certificates that
//! bind a node id to its link key (with groups and an expiry), revokes them, and shows what
//! a certificate or revocation list says.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::ca::{
    CERT_VERSION, Certificate, RevocationList, SignedCertificate, SignedRevocationList,
};
use crate::control::goformat::rfc3339_utc;
use crate::id::{GroupName, NodeId};
use crate::keys::{PublicKey, SigningKeypair, SigningPurpose};

/// `warren ca` commands.
#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Create a mesh authority's key pair; prints the token nodes trust with --ca.
    Init(InitArgs),
    /// Sign a certificate binding a node id to its link key.
    Sign(CertSignArgs),
    /// Add certificates to the authority's revocation list (creating it if needed).
    Revoke(RevokeArgs),
    /// Show what a certificate or revocation list file says.
    Show(ShowArgs),
}

/// Flags of `warren ca init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Where to write the authority's private key (mode 0600). Keep it offline if you can:
    /// whoever holds it can admit any node to the mesh.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,

    /// Overwrite FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Flags of `warren ca sign`.
#[derive(Debug, clap::Args)]
pub struct CertSignArgs {
    /// The authority's private key file (from warren ca init).
    #[arg(long = "ca", value_name = "FILE")]
    pub ca: PathBuf,

    /// The node id the certificate is for.
    #[arg(long, value_name = "ID")]
    pub node: NodeId,

    /// The node's public link key, as warren keygen prints it (x25519:...).
    #[arg(long, value_name = "TOKEN")]
    pub key: PublicKey,

    /// A group the node belongs to (repeatable); allow rules can name groups.
    #[arg(long = "group", value_name = "NAME")]
    pub groups: Vec<GroupName>,

    /// How long the certificate is valid: a number and a unit, s, m, h, d, w or y
    /// (for example 90d).
    #[arg(long, value_name = "DURATION", default_value = "365d", value_parser = parse_duration)]
    pub expires: Duration,

    /// The certificate's serial number, as revocation lists name it [default: random].
    #[arg(long, value_name = "N")]
    pub serial: Option<u64>,

    /// Where to write the certificate.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// Flags of `warren ca revoke`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(true).args(["serials", "certs"])))]
pub struct RevokeArgs {
    /// The authority's private key file.
    #[arg(long = "ca", value_name = "FILE")]
    pub ca: PathBuf,

    /// A serial number to revoke (repeatable).
    #[arg(long = "serial", value_name = "N")]
    pub serials: Vec<u64>,

    /// A certificate file to revoke (repeatable).
    #[arg(long = "cert", value_name = "FILE")]
    pub certs: Vec<PathBuf>,

    /// The revocation list to update (created if missing); give it to nodes with
    /// --revocations.
    #[arg(long, value_name = "FILE")]
    pub list: PathBuf,
}

/// Flags of `warren ca show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// A certificate or revocation list file.
    pub file: PathBuf,
}

pub(super) fn run(command: CaCommand) -> anyhow::Result<ExitCode> {
    match command {
        CaCommand::Init(args) => init(&args),
        CaCommand::Sign(args) => sign(&args),
        CaCommand::Revoke(args) => revoke(&args),
        CaCommand::Show(args) => show(&args.file),
    }
}

fn init(args: &InitArgs) -> anyhow::Result<ExitCode> {
    let pair = SigningKeypair::generate()?;
    pair.save_for(&args.out, SigningPurpose::Authority, args.force)?;
    eprintln!(
        "wrote the mesh authority's private key to {} (keep it secret, ideally offline)",
        args.out.display()
    );
    eprintln!("the authority's token (nodes trust it with --ca TOKEN):");
    println!("{}", pair.public());
    Ok(ExitCode::SUCCESS)
}

fn load_authority(path: &Path) -> anyhow::Result<SigningKeypair> {
    SigningKeypair::load_for(path, SigningPurpose::Authority).with_context(|| {
        format!(
            "{} is not a mesh authority key (warren ca init makes one)",
            path.display()
        )
    })
}

fn sign(args: &CertSignArgs) -> anyhow::Result<ExitCode> {
    let authority = load_authority(&args.ca)?;
    let serial = match args.serial {
        Some(serial) => serial,
        None => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            u64::from_le_bytes(b) >> 1
        }
    };
    let now = crate::clock::now_ms();
    let lifetime = u64::try_from(args.expires.as_millis()).unwrap_or(u64::MAX);
    let cert = Certificate {
        version: CERT_VERSION,
        serial,
        node: args.node.clone(),
        key: args.key,
        groups: args.groups.clone(),
        // A minute of slack for nodes whose clocks run a little behind this one.
        not_before_ms: now.saturating_sub(60_000),
        not_after_ms: now.saturating_add(lifetime),
        issuer: authority.public(),
    }
    .sign(&authority);
    write_new(&args.out, &cert.to_armored())?;
    eprintln!(
        "wrote the certificate of node {} (serial {serial}, valid until {}) to {}",
        args.node,
        when(cert.cert.not_after_ms),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn revoke(args: &RevokeArgs) -> anyhow::Result<ExitCode> {
    let authority = load_authority(&args.ca)?;
    let mut serials = match std::fs::read_to_string(&args.list) {
        Ok(text) => {
            let list = SignedRevocationList::from_armored(&text)
                .with_context(|| format!("reading {}", args.list.display()))?;
            if list.list.issuer != authority.public() {
                bail!(
                    "{} belongs to another authority ({}); give a new --list file",
                    args.list.display(),
                    list.list.issuer
                );
            }
            list.list.serials
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", args.list.display())),
    };
    serials.extend(&args.serials);
    for path in &args.certs {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cert = SignedCertificate::from_armored(&text)
            .with_context(|| format!("reading {}", path.display()))?;
        serials.insert(cert.cert.serial);
    }
    let list = RevocationList {
        issuer: authority.public(),
        issued_at_ms: crate::clock::now_ms(),
        serials,
    }
    .sign(&authority);
    write_replacing(&args.list, &list.to_armored())?;
    eprintln!(
        "{} now revokes {} certificate(s); give it to every node with --revocations (or reload them)",
        args.list.display(),
        list.list.serials.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn show(path: &Path) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if let Ok(cert) = SignedCertificate::from_armored(&text) {
        let c = &cert.cert;
        let groups: Vec<&str> = c.groups.iter().map(GroupName::as_str).collect();
        println!("certificate serial {}", c.serial);
        println!("  node:       {}", c.node);
        println!("  key:        {}", c.key);
        println!(
            "  groups:     {}",
            if groups.is_empty() {
                "(none)".to_owned()
            } else {
                groups.join(", ")
            }
        );
        println!("  valid from: {}", when(c.not_before_ms));
        println!("  valid to:   {}", when(c.not_after_ms));
        println!("  issuer:     {}", c.issuer);
        let signature = if cert.has_valid_signature() {
            "valid"
        } else {
            "INVALID"
        };
        println!("  signature:  {signature}");
        return Ok(ExitCode::SUCCESS);
    }
    let list = SignedRevocationList::from_armored(&text).with_context(|| {
        format!(
            "{} is neither a warren certificate nor a revocation list",
            path.display()
        )
    })?;
    let serials: Vec<String> = list.list.serials.iter().map(u64::to_string).collect();
    println!("revocation list of {}", list.list.issuer);
    println!("  issued:  {}", when(list.list.issued_at_ms));
    println!(
        "  revokes: {}",
        if serials.is_empty() {
            "(nothing)".to_owned()
        } else {
            serials.join(", ")
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn when(ms: u64) -> String {
    rfc3339_utc(UNIX_EPOCH + Duration::from_millis(ms))
}

/// Writes a new file, refusing to overwrite one.
fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist)", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Replaces a file atomically (written aside, then renamed).
fn write_replacing(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Parses `90d`, `12h`, `30m`, `45s`, `2w`, `1y`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 90d, 12h or 30m"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "y" => 365 * 86_400,
        _ => {
            return Err(format!(
                "{s:?}: the unit must be one of s, m, h, d, w, y (as in 90d)"
            ));
        }
    };
    let total = n
        .checked_mul(secs)
        .ok_or_else(|| format!("{s:?} is too long"))?;
    if total == 0 {
        return Err("a certificate must be valid for more than 0 s".into());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_the_rest() {
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert!(parse_duration("90").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("99999999999999999y").is_err());
    }
}
