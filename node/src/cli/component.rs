//! `warren component`: signing keys for work-handler components, and signing and verifying
//! the components themselves. The logic lives in [`crate::host::signing`]; this is the edge.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, bail};

use crate::host::args::{ArgPattern, ArgPolicy};
use crate::host::signing::{
    self, Capabilities, EmbeddedManifest, MANIFEST_SECTION, Manifest, SignedManifest, SignerKey,
    SigningKeypair,
};
use crate::terminal::one_line;

/// Seconds in a day, for `--valid-days`.
const DAY_SECS: u64 = 24 * 60 * 60;

/// `warren component` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ComponentCommand {
    /// Create an Ed25519 key pair for signing components; print its public token.
    ///
    /// Nodes trust components signed by this key when given its token
    /// (ed25519:...). The private key file is written with mode 0600.
    Keygen(ComponentKeygenArgs),
    /// Sign a component: write COMPONENT.wasm.sig binding its hash to a manifest.
    ///
    /// Name, version, work types and capabilities default to the component's embedded
    /// `warren-manifest` custom section; flags override it.
    /// Example: warren component sign --key signer.key handler.wasm --valid-days 90
    #[command(disable_version_flag = true)]
    Sign(SignArgs),
    /// Check a component against its signature and the signers you trust.
    ///
    /// Exits 0 and prints the signed manifest when the signer is trusted, the signature
    /// is valid, the component is unchanged and the signature is in its validity window;
    /// otherwise exits non-zero and says why.
    Verify(VerifyArgs),
    /// Ship a signed component to a node (any number of hops away) and switch its work
    /// types to it.
    ///
    /// The node verifies the signature against its own trusted signers, checks the
    /// component's requested capabilities against each affected work type's policy,
    /// compiles it and switches atomically: new jobs use it, running jobs finish on the
    /// old one. Prints what is now active there.
    /// Example: warren component deploy handler.wasm --node node1
    Deploy(DeployArgs),
}

/// Flags of `warren component deploy`.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// The component to deploy.
    #[arg(value_name = "COMPONENT.wasm")]
    pub component: PathBuf,

    /// Its signature file [default: COMPONENT.wasm.sig].
    #[arg(long, value_name = "SIG")]
    pub signature: Option<PathBuf>,

    /// The node to deploy to (`localhost`: the node behind the socket).
    #[arg(long, value_name = "NODE")]
    pub node: String,

    /// The local node's control socket [default: $WARREN_SOCKET, else
    /// $XDG_RUNTIME_DIR/warren/control.sock, else for root /run/warren/control.sock, else
    /// /tmp/warren-<uid>/control.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Also trust a control socket served by this uid (by default only sockets served by
    /// your own user or root are used: a socket another user serves may be an impostor).
    #[arg(long = "socket-owner", env = "WARREN_SOCKET_OWNER", value_name = "UID")]
    pub socket_owner: Option<u32>,
}

/// Flags of `warren component keygen`.
#[derive(Debug, clap::Args)]
pub struct ComponentKeygenArgs {
    /// Write the new private signing key to FILE (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,

    /// Overwrite FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Flags of `warren component sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The private signing key (from `warren component keygen`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,

    /// The component to sign.
    #[arg(value_name = "COMPONENT.wasm")]
    pub component: PathBuf,

    /// Where to write the signature [default: COMPONENT.wasm.sig].
    #[arg(long, value_name = "SIG")]
    pub out: Option<PathBuf>,

    /// The component's name [default: from its embedded manifest].
    #[arg(long, value_name = "N")]
    pub name: Option<String>,

    /// The component's version [default: from its embedded manifest].
    #[arg(long, value_name = "V")]
    pub version: Option<String>,

    /// A work type the component handles; repeat for several [default: from its embedded
    /// manifest].
    #[arg(long = "work-type", value_name = "T")]
    pub work_types: Vec<String>,

    /// A logical program name the component may run, or "*" for whatever the node's
    /// policy lists; repeat for several [default: from its embedded manifest, else none].
    #[arg(long = "program", value_name = "P")]
    pub programs: Vec<String>,

    /// An environment variable the component may read; repeat for several [default: from
    /// its embedded manifest, else none].
    #[arg(long = "env", value_name = "NAME")]
    pub env: Vec<String>,

    /// A fixed first argument the component runs PROGRAM with; repeat for the next words
    /// [default: from its embedded manifest, else nothing declared].
    #[arg(long = "arg-prefix", value_name = "PROGRAM=WORD", value_parser = parse_arg_prefix)]
    pub arg_prefixes: Vec<(String, String)>,

    /// An argument pattern the component runs PROGRAM with after its prefix: `-n`, `--f=*`,
    /// `*` (anything), `{job-path}`; repeat for several. A program named by --arg-prefix or
    /// --arg declares only these arguments [default: from its embedded manifest].
    #[arg(long = "arg", value_name = "PROGRAM=PATTERN", value_parser = parse_arg_pattern)]
    pub args: Vec<(String, ArgPattern)>,

    /// How many days the signature stays valid.
    #[arg(long, value_name = "D", default_value_t = 365,
          value_parser = clap::value_parser!(u64).range(1..=36_500))]
    pub valid_days: u64,
}

/// Flags of `warren component verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The component to check.
    #[arg(value_name = "COMPONENT.wasm")]
    pub component: PathBuf,

    /// Its signature file [default: COMPONENT.wasm.sig].
    #[arg(long, value_name = "SIG")]
    pub signature: Option<PathBuf>,

    /// A trusted signer's public token (ed25519:...); repeat for several. At least one is
    /// required: nothing is trusted by default.
    #[arg(long, value_name = "TOKEN", required = true)]
    pub trust: Vec<SignerKey>,
}

pub(super) async fn run(command: ComponentCommand) -> anyhow::Result<ExitCode> {
    match command {
        ComponentCommand::Keygen(args) => keygen(args),
        ComponentCommand::Sign(args) => sign(args),
        ComponentCommand::Verify(args) => verify(args),
        ComponentCommand::Deploy(args) => deploy(args).await,
    }
}

fn keygen(args: ComponentKeygenArgs) -> anyhow::Result<ExitCode> {
    let pair = SigningKeypair::generate()?;
    pair.save(&args.out, args.force)?;
    eprintln!(
        "wrote private component signing key to {} (keep it secret)",
        args.out.display()
    );
    eprintln!("public key (give this to nodes as a trusted component signer):");
    println!("{}", pair.public());
    Ok(ExitCode::SUCCESS)
}

fn sign(args: SignArgs) -> anyhow::Result<ExitCode> {
    let key = SigningKeypair::load(&args.key)?;
    let component = read(&args.component)?;
    let embedded = signing::embedded_manifest(&component)
        .with_context(|| format!("{}", args.component.display()))?;
    let about = describe(&args, embedded)?;
    let issued_at = signing::unix_secs(SystemTime::now());
    let expires_at = issued_at.saturating_add(args.valid_days.saturating_mul(DAY_SECS));
    let manifest = Manifest::for_component(&component, about, issued_at, expires_at);
    let signed = signing::sign(&key, manifest);
    let out = args
        .out
        .unwrap_or_else(|| default_signature_path(&args.component));
    std::fs::write(&out, signed.to_json()).with_context(|| format!("{}", out.display()))?;
    let m = &signed.manifest;
    println!(
        "signed {} {} (work types: {}; sha256 {}) valid until {} -> {}",
        m.name,
        m.version,
        m.work_types.join(", "),
        signing::hex(&m.sha256),
        signing::unix_to_rfc3339(m.expires_at),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Merges the flags over the embedded manifest; says which flags are missing if neither
/// gives a name, version or work type.
fn describe(
    args: &SignArgs,
    embedded: Option<EmbeddedManifest>,
) -> anyhow::Result<EmbeddedManifest> {
    let (name, version, work_types, capabilities) = match embedded {
        Some(e) => (Some(e.name), Some(e.version), e.work_types, e.capabilities),
        None => (None, None, Vec::new(), Capabilities::default()),
    };
    let name = args.name.clone().or(name);
    let version = args.version.clone().or(version);
    let work_types = pick(&args.work_types, work_types);
    let mut missing = Vec::new();
    if name.is_none() {
        missing.push("--name");
    }
    if version.is_none() {
        missing.push("--version");
    }
    if work_types.is_empty() {
        missing.push("--work-type");
    }
    let (Some(name), Some(version), false) = (name, version, work_types.is_empty()) else {
        bail!(
            "{} has no {MANIFEST_SECTION} custom section giving its name, version and work \
             types; pass {}",
            args.component.display(),
            missing.join(", ")
        );
    };
    Ok(EmbeddedManifest {
        name,
        version,
        work_types,
        capabilities: Capabilities {
            programs: pick(&args.programs, capabilities.programs),
            env: pick(&args.env, capabilities.env),
            args: if args.arg_prefixes.is_empty() && args.args.is_empty() {
                capabilities.args
            } else {
                declared_args(&args.arg_prefixes, &args.args)
            },
        },
    })
}

/// The argument policies `--arg-prefix` and `--arg` declare: per program, the prefix
/// words in order, then the patterns (none: nothing after the prefix).
fn declared_args(
    prefixes: &[(String, String)],
    patterns: &[(String, ArgPattern)],
) -> std::collections::BTreeMap<String, ArgPolicy> {
    let mut declared = std::collections::BTreeMap::<String, ArgPolicy>::new();
    for (program, word) in prefixes {
        declared
            .entry(program.clone())
            .or_insert_with(|| ArgPolicy::exactly(Vec::new()))
            .prefix
            .push(word.clone());
    }
    for (program, pattern) in patterns {
        let policy = declared
            .entry(program.clone())
            .or_insert_with(|| ArgPolicy::exactly(Vec::new()));
        policy
            .allow
            .get_or_insert_with(Vec::new)
            .push(pattern.clone());
    }
    declared
}

fn parse_arg_prefix(s: &str) -> Result<(String, String), String> {
    let (program, word) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not PROGRAM=WORD"))?;
    Ok((program.to_owned(), word.to_owned()))
}

fn parse_arg_pattern(s: &str) -> Result<(String, ArgPattern), String> {
    let (program, pattern) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not PROGRAM=PATTERN"))?;
    let pattern = pattern.parse().map_err(|e| format!("{e}"))?;
    Ok((program.to_owned(), pattern))
}

/// The flag values if any were given, else the embedded ones.
fn pick(flags: &[String], embedded: Vec<String>) -> Vec<String> {
    if flags.is_empty() {
        embedded
    } else {
        flags.to_vec()
    }
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let component = read(&args.component)?;
    let sig_path = args
        .signature
        .unwrap_or_else(|| default_signature_path(&args.component));
    let sig = SignedManifest::from_json(&read(&sig_path)?)
        .with_context(|| format!("{}", sig_path.display()))?;
    let now = signing::unix_secs(SystemTime::now());
    let manifest = signing::verify(&component, &sig, &args.trust, now)
        .with_context(|| format!("{} is not accepted", args.component.display()))?;
    print_manifest(manifest, &sig.signer);
    Ok(ExitCode::SUCCESS)
}

fn print_manifest(m: &Manifest, signer: &SignerKey) {
    // The manifest is the component author's text.
    let list = |items: &[String]| {
        if items.is_empty() {
            "(none)".to_owned()
        } else {
            one_line(&items.join(", ")).into_owned()
        }
    };
    println!("valid and trusted");
    println!("name:        {}", one_line(&m.name));
    println!("version:     {}", one_line(&m.version));
    println!("work types:  {}", list(&m.work_types));
    println!("sha256:      {}", signing::hex(&m.sha256));
    println!("length:      {} bytes", m.length);
    println!("programs:    {}", list(&m.capabilities.programs));
    println!("env:         {}", list(&m.capabilities.env));
    for (program, policy) in &m.capabilities.args {
        println!("args:        {program}: {policy}");
    }
    println!("signer:      {signer}");
    println!("issued at:   {}", signing::unix_to_rfc3339(m.issued_at));
    println!("expires at:  {}", signing::unix_to_rfc3339(m.expires_at));
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `COMPONENT.wasm` → `COMPONENT.wasm.sig`.
fn default_signature_path(component: &Path) -> PathBuf {
    let mut path = OsString::from(component.as_os_str());
    path.push(".sig");
    PathBuf::from(path)
}

async fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let component = std::fs::read(&args.component)
        .with_context(|| format!("reading {}", args.component.display()))?;
    let sig_path = args
        .signature
        .unwrap_or_else(|| default_signature_path(&args.component));
    let signature = std::fs::read_to_string(&sig_path).with_context(|| {
        format!(
            "reading {} (sign the component first: warren component sign --key FILE {})",
            sig_path.display(),
            args.component.display()
        )
    })?;
    let socket = args
        .socket
        .unwrap_or_else(crate::control::default_socket_path);
    let mut client = crate::control::Client::connect_served_by(&socket, args.socket_owner).await?;
    eprintln!(
        "deploying {} ({} bytes) to {} via {}",
        args.component.display(),
        component.len(),
        args.node,
        one_line(client.node_id())
    );
    let active = client.deploy(&args.node, signature, &component).await?;
    let line = format!(
        "{}: {} {} (sha256 {}) signed by {} now serves {}",
        active.node,
        active.name,
        active.version,
        active.sha256,
        active.signer,
        active.work_types.join(", ")
    );
    println!("{}", one_line(&line));
    Ok(ExitCode::SUCCESS)
}
