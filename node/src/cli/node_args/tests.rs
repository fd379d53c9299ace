use std::path::Path;

use clap::{CommandFactory, Parser};

use super::*;
use crate::config::{ConfigError, HandlerKind};
use crate::host::signing::SignerKey;
use crate::keys::{LinkKeypair, PublicKey};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,
}

fn parse(args: &[&str]) -> Result<NodeArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("warren-node").chain(args.iter().copied()))
        .map(|cli| cli.node)
}

fn key(seed: u8) -> PublicKey {
    LinkKeypair::from_private([seed; 32]).public()
}

fn id(s: &str) -> NodeId {
    s.parse().unwrap()
}

#[test]
fn command_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn flags_alone_build_a_config() {
    let pinned = format!("relay={}", key(1));
    let bare = key(2).to_string();
    let args = parse(&[
        "--id",
        "node1",
        "--key",
        "n.key",
        "--data-dir",
        "data",
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "receptor://[::1]",
        "--peer",
        "relay.example.com",
        "--trust",
        &pinned,
        "--trust",
        &bare,
        "--cost",
        "relay=2.5",
        "--control-socket",
        "ctl.sock",
        "--ready-file",
        "ready",
    ])
    .unwrap();
    let (config, ready) = args.into_config().unwrap();
    assert_eq!(ready.as_deref(), Some(Path::new("ready")));
    assert_eq!(config.node_id, id("node1"));
    assert_eq!(config.key_file, Path::new("n.key"));
    assert_eq!(config.data_dir, Path::new("data"));
    let listen: Vec<String> = config.listen.iter().map(|l| l.addr.to_string()).collect();
    assert_eq!(listen, ["127.0.0.1:0", "[::1]:8888"]);
    assert_eq!(config.peers[0].addr.to_string(), "relay.example.com:8888");
    assert!(config.trusts(&key(1), &id("relay")).is_trusted());
    assert!(config.trusts(&key(2), &id("x")).is_trusted());
    assert_eq!(config.link_costs[&id("relay")].as_f64(), 2.5);
    assert_eq!(
        config.control.socket.as_deref(),
        Some(Path::new("ctl.sock"))
    );
    assert_eq!(config.control.permissions, 0o600);
}

#[test]
fn names_every_missing_required_flag() {
    let err = parse(&["--id", "n"]).unwrap().into_config().unwrap_err();
    assert!(
        matches!(&err, ConfigError::MissingFlags { flags } if flags == &["--key", "--data-dir"])
    );
    assert_eq!(
        err.to_string(),
        "--key and --data-dir are required when --config is not given"
    );
    let err = parse(&[]).unwrap().into_config().unwrap_err();
    assert_eq!(
        err.to_string(),
        "--id, --key and --data-dir are required when --config is not given"
    );
}

#[test]
fn bad_flag_values_are_clap_errors_naming_the_flag() {
    let cases = [
        (&["--peer", "tcp://x:1"][..], "--peer"),
        (&["--peer", "h:0"], "--peer"),
        (&["--listen", "::1"], "--listen"),
        (&["--id", "a b"], "--id"),
        (&["--trust", "x25519:short"], "--trust"),
        (&["--trust", "bad id=x25519:short"], "--trust"),
        (&["--cost", "relay"], "--cost"),
        (&["--cost", "relay=0"], "--cost"),
    ];
    for (args, flag) in cases {
        let err = parse(args)
            .err()
            .unwrap_or_else(|| panic!("{args:?} parsed"))
            .to_string();
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

#[test]
fn conflicting_trust_flags_are_rejected() {
    let a = format!("a={}", key(1));
    let b = format!("b={}", key(1));
    let args = parse(&[
        "--id",
        "n",
        "--key",
        "k",
        "--data-dir",
        "d",
        "--trust",
        &a,
        "--trust",
        &b,
    ]);
    let err = args.unwrap().into_config().unwrap_err().to_string();
    assert!(err.starts_with("command line: --trust: "), "{err}");
}

fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("node1.toml");
    let text = format!(
        "[node]\nid = \"node1\"\ndata-dir = \"data\"\nkey-file = \"node1.key\"\n\
         [[listen]]\naddress = \"0.0.0.0:8888\"\n[[trust]]\nkey = \"{}\"\nnode = \"relay\"\n\
         [link-costs]\nrelay = 3.0\nother = 4.0\n{extra}",
        key(1)
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn flags_override_and_extend_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "[control]\npermissions = \"0660\"\n");
    let trust = key(2).to_string();
    let args = parse(&[
        "--config",
        path.to_str().unwrap(),
        "--id",
        "node9",
        "--data-dir",
        "/srv/d",
        "--listen",
        "127.0.0.1:0",
        "--peer",
        "relay:9000",
        "--trust",
        &trust,
        "--cost",
        "relay=1.5",
        "--control-socket",
        "/tmp/c.sock",
    ])
    .unwrap();
    let (config, ready) = args.into_config().unwrap();
    assert_eq!(ready, None);
    assert_eq!(config.node_id, id("node9"));
    assert_eq!(config.data_dir, Path::new("/srv/d"));
    assert_eq!(config.key_file, dir.path().join("node1.key"));
    let listen: Vec<String> = config.listen.iter().map(|l| l.addr.to_string()).collect();
    assert_eq!(listen, ["0.0.0.0:8888", "127.0.0.1:0"]);
    assert_eq!(config.peers.len(), 1);
    assert_eq!(config.trust.len(), 2);
    assert_eq!(config.link_costs[&id("relay")].as_f64(), 1.5);
    assert_eq!(config.link_costs[&id("other")].as_f64(), 4.0);
    assert_eq!(
        config.control.socket.as_deref(),
        Some(Path::new("/tmp/c.sock"))
    );
    assert_eq!(config.control.permissions, 0o660);
}

#[test]
fn file_alone_needs_no_other_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "");
    let args = parse(&["--config", path.to_str().unwrap()]).unwrap();
    let (config, _) = args.into_config().unwrap();
    assert_eq!(config, Config::load(&path).unwrap());
}

#[test]
fn flags_conflicting_with_the_file_name_both() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "");
    let dup = parse(&["--config", path.to_str().unwrap(), "--listen", "0.0.0.0"]).unwrap();
    let err = dup.into_config().unwrap_err().to_string();
    assert!(err.contains("node1.toml with command-line flags"), "{err}");
    assert!(
        err.contains("[[listen]] / --listen: 0.0.0.0:8888 is listed twice"),
        "{err}"
    );
    let pin = format!("other={}", key(1));
    let conflict = parse(&["--config", path.to_str().unwrap(), "--trust", &pin]).unwrap();
    let err = conflict.into_config().unwrap_err().to_string();
    assert!(
        err.contains("[[trust]] / --trust") && err.contains("as relay"),
        "{err}"
    );
}

#[test]
fn missing_config_file_is_named() {
    let args = parse(&["--config", "/nonexistent/warren.toml"]).unwrap();
    let err = args.into_config().unwrap_err().to_string();
    assert_eq!(err, "config file /nonexistent/warren.toml does not exist");
}

#[test]
fn help_explains_forms() {
    let help = Cli::command().render_long_help().to_string();
    for needle in [
        "receptor://host:port",
        "8888",
        "Port 0",
        "--ready-file",
        "NODE=TOKEN",
        "x25519:",
        "NAME=PROGRAM[ ARGS]",
        "cat=/bin/cat",
        "ed25519:",
        "--no-ansible-runner",
    ] {
        assert!(help.contains(needle), "help lacks {needle}:\n{help}");
    }
}

fn signer(seed: u8) -> SignerKey {
    crate::host::signing::SigningKeypair::from_private([seed; 32]).public()
}

const QUICK: [&str; 6] = ["--id", "n", "--key", "k", "--data-dir", "d"];

fn quick(extra: &[&str]) -> Result<Config, ConfigError> {
    let args = [&QUICK[..], extra].concat();
    parse(&args)
        .unwrap()
        .into_config()
        .map(|(config, _)| config)
}

#[test]
fn work_flags_build_work_types_signers_and_runner_settings() {
    let token = signer(1).to_string();
    let config = quick(&[
        "--work-type",
        "cat=/bin/cat",
        "--work-type",
        "numbered=cat -n",
        "--signer",
        &token,
        "--ansible-runner",
        "/opt/venv/bin/ansible-runner",
    ])
    .unwrap();
    let names: Vec<&str> = config.work_types.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["cat", "numbered"]);
    assert_eq!(
        config.work_types[1].handler,
        HandlerKind::Command {
            program: "cat".into(),
            params: vec!["-n".into()],
            allow_runtime_params: false,
            args: None,
        }
    );
    assert_eq!(config.signers, [signer(1)]);
    assert_eq!(
        config.ansible_runner.path.as_deref(),
        Some(Path::new("/opt/venv/bin/ansible-runner"))
    );
    assert!(config.ansible_runner.enabled);
    let config = quick(&["--no-ansible-runner"]).unwrap();
    assert!(!config.ansible_runner.enabled && config.work_types.is_empty());
}

#[test]
fn bad_work_flags_are_clap_errors_naming_the_flag() {
    let cases = [
        (&["--work-type", "cat"][..], "--work-type"),
        (&["--work-type", "a b=/bin/cat"], "--work-type"),
        (&["--work-type", "c="], "--work-type"),
        (&["--work-type", "c=sh -c 'x y'"], "quote"),
        (&["--signer", "x25519:AAAA"], "--signer"),
        (
            &["--ansible-runner", "/x", "--no-ansible-runner"],
            "cannot be used with",
        ),
    ];
    for (args, needle) in cases {
        let err = parse(args)
            .err()
            .unwrap_or_else(|| panic!("{args:?} parsed"))
            .to_string();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn work_flags_are_cross_checked_with_the_file() {
    let err = quick(&["--work-type", "c=/bin/cat", "--work-type", "c=/bin/echo"])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("command line: --work-type: work type \"c\" is defined twice"),
        "{err}"
    );
    let err = quick(&["--work-type", "ansible-runner=/bin/true"]).unwrap_err();
    assert!(err.to_string().contains("clashes"), "{err}");
    quick(&[
        "--work-type",
        "ansible-runner=/bin/true",
        "--no-ansible-runner",
    ])
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = "[[work-type]]\nname = \"cat\"\nhandler = \"command\"\nprogram = \"cat\"\n\
                [[work-type]]\nname = \"h\"\nhandler = \"component\"\ncomponent = \"h.wasm\"\n\
                [ansible-runner]\nenabled = false\n";
    let path = write_config(dir.path(), file);
    let path = path.to_str().unwrap();
    let token = signer(2).to_string();
    let args = [
        "--config",
        path,
        "--signer",
        &token,
        "--ansible-runner",
        "ar",
    ];
    let (config, _) = parse(&args).unwrap().into_config().unwrap();
    assert_eq!(config.work_types.len(), 2);
    assert_eq!(config.signers, [signer(2)]);
    assert!(
        config.ansible_runner.enabled,
        "--ansible-runner turns it back on"
    );
    assert_eq!(config.ansible_runner.path.as_deref(), Some(Path::new("ar")));
    let args = [
        "--config",
        path,
        "--signer",
        &token,
        "--work-type",
        "cat=/bin/cat",
    ];
    let err = parse(&args).unwrap().into_config().unwrap_err().to_string();
    assert!(
        err.contains("with command-line flags: [[work-type]] / --work-type: work type \"cat\""),
        "{err}"
    );
    let err = parse(&["--config", path])
        .unwrap()
        .into_config()
        .unwrap_err();
    let expected = format!(
        "{path}: [[work-type]] #2 handler: handler \"component\" needs at least one [[signer]] (--signer)"
    );
    assert!(err.to_string().starts_with(&expected), "{err}");
}
