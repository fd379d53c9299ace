use std::path::Path;

use super::*;
use crate::keys::LinkKeypair;

fn key(seed: u8) -> PublicKey {
    LinkKeypair::from_private([seed; 32]).public()
}

fn id(s: &str) -> NodeId {
    s.parse().unwrap()
}

fn full_example() -> String {
    format!(
        r#"
[node]
id = "node1"
data-dir = "/var/lib/warren/node1"
key-file = "node1.key"

[[listen]]
address = "0.0.0.0:8888"
cost = 1.0

[[listen]]
address = "[::1]:0"

[[peer]]
address = "receptor://relay.example.com:8888"
cost = 2

[[trust]]
key = "{}"
node = "relay"

[[trust]]
key = "{}"

[link-costs]
relay = 2.5

[control]
socket = "/run/warren/control.sock"
permissions = "0660"

[mesh]
keepalive-seconds = 5
idle-timeout-seconds = 20
rekey-minutes = 15
max-hops = 8
max-first-seen = 50
"#,
        key(1),
        key(2)
    )
}

fn load_text(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("/etc/warren/node1.toml"))
}

fn minimal(extra: &str) -> String {
    format!("[node]\nid = \"node1\"\ndata-dir = \"data\"\nkey-file = \"k.key\"\n{extra}")
}

/// Loads `text` and returns the error's message, which must name the file.
fn error_of(text: &str) -> String {
    let err = load_text(text).unwrap_err().to_string();
    assert!(err.contains("/etc/warren/node1.toml"), "no file in: {err}");
    err
}

#[test]
fn parses_full_example() {
    let config = load_text(&full_example()).unwrap();
    assert_eq!(config.node_id, id("node1"));
    assert_eq!(config.data_dir, Path::new("/var/lib/warren/node1"));
    assert_eq!(config.key_file, Path::new("/etc/warren/node1.key"));
    assert_eq!(config.listen.len(), 2);
    assert_eq!(config.listen[0].addr.to_string(), "0.0.0.0:8888");
    assert_eq!(config.listen[1].addr.port, 0);
    assert_eq!(config.listen[1].cost, LinkCost::DEFAULT);
    assert_eq!(config.peers[0].addr.host, "relay.example.com");
    assert_eq!(config.peers[0].cost.as_f64(), 2.0);
    assert_eq!(config.trust[0].node, Some(id("relay")));
    assert_eq!(config.trust[1].key, key(2));
    assert_eq!(config.link_costs[&id("relay")].as_f64(), 2.5);
    assert_eq!(
        config.control.socket.as_deref(),
        Some(Path::new("/run/warren/control.sock"))
    );
    assert_eq!(config.control.permissions, 0o660);
    assert_eq!(config.mesh.keepalive, Duration::from_secs(5));
    assert_eq!(config.mesh.idle_timeout, Duration::from_secs(20));
    assert_eq!(config.mesh.rekey_interval, Duration::from_secs(15 * 60));
    assert_eq!(config.mesh.max_hops, 8);
    assert_eq!(config.mesh.max_first_seen, 50);
}

#[test]
fn defaults_apply_to_minimal_config() {
    let config = load_text(&minimal("")).unwrap();
    assert_eq!(config.data_dir, Path::new("/etc/warren/data"));
    assert!(config.listen.is_empty() && config.peers.is_empty() && config.trust.is_empty());
    assert_eq!(config.control, ControlConfig::default());
    assert_eq!(config.mesh, MeshTuning::default());
}

#[test]
fn relative_paths_follow_a_relative_config_path() {
    let text = minimal("[control]\nsocket = \"run/ctl.sock\"\n");
    let config = Config::from_toml(&text, Path::new("node1.toml")).unwrap();
    assert_eq!(config.data_dir, Path::new("data"));
    let config = Config::from_toml(&text, Path::new("examples/n.toml")).unwrap();
    assert_eq!(config.key_file, Path::new("examples/k.key"));
    assert_eq!(
        config.control.socket.as_deref(),
        Some(Path::new("examples/run/ctl.sock"))
    );
}

#[test]
fn rejects_unknown_keys_everywhere() {
    for extra in [
        "colour = 1\n",
        "[[listen]]\naddress = \"h\"\nport = 1\n",
        "[[peer]]\naddress = \"h\"\nweight = 1\n",
        "[[trust]]\nkey = \"x\"\nname = \"n\"\n",
        "[control]\nmode = \"0600\"\n",
        "[mesh]\nkeepalive = 5\n",
        "[workers]\n",
    ] {
        let err = error_of(&minimal(extra));
        assert!(err.contains("unknown field"), "{extra}: {err}");
    }
    let err = error_of("[node]\nid = \"n\"\ndata-dir = \"d\"\nkey-file = \"k\"\nport = 1\n");
    assert!(
        err.contains("unknown field `port`") && err.contains("line 5"),
        "{err}"
    );
}

#[test]
fn missing_required_key_names_it() {
    let err = error_of("[node]\nid = \"n\"\ndata-dir = \"d\"\n");
    assert!(err.contains("key-file"), "{err}");
    let err = error_of("[[peer]]\naddress = \"h\"\n");
    assert!(err.contains("`node`"), "{err}");
}

#[test]
fn syntax_errors_name_line() {
    let err = error_of("[node\nid = 1\n");
    assert!(err.contains("line 1"), "{err}");
}

#[test]
fn bad_peer_address_names_file_line_key_and_forms() {
    let err = error_of(&minimal(
        "[[peer]]\naddress = \"h:1\"\n[[peer]]\naddress = \"tcp://x\"\n",
    ));
    assert!(
        err.starts_with(
            "/etc/warren/node1.toml:8: [[peer]] #2 address: \"tcp://x\" is not a peer address"
        ),
        "{err}"
    );
    assert!(
        err.contains("host:port") && err.contains("receptor://host:port"),
        "{err}"
    );
}

#[test]
fn peer_port_zero_is_rejected_but_listen_port_zero_is_not() {
    let err = error_of(&minimal("[[peer]]\naddress = \"h:0\"\n"));
    assert!(
        err.contains("[[peer]] #1 address") && err.contains("port 0"),
        "{err}"
    );
    load_text(&minimal("[[listen]]\naddress = \"h:0\"\n")).unwrap();
}

#[test]
fn invalid_values_name_their_key() {
    let cases = [
        ("[[listen]]\naddress = \"a b\"\n", "[[listen]] #1 address"),
        (
            "[[listen]]\naddress = \"h\"\ncost = 0\n",
            "[[listen]] #1 cost",
        ),
        (
            "[[peer]]\naddress = \"h\"\ncost = -1.5\n",
            "[[peer]] #1 cost",
        ),
        ("[[trust]]\nkey = \"ed25519:AAAA\"\n", "[[trust]] #1 key"),
        ("[link-costs]\n\"bad id\" = 1\n", "[link-costs] bad id"),
        ("[link-costs]\nrelay = 1e9\n", "[link-costs] relay"),
        (
            "[control]\npermissions = \"0999\"\n",
            "[control] permissions",
        ),
        (
            "[control]\npermissions = \"1777\"\n",
            "[control] permissions",
        ),
        ("[control]\nsocket = \"\"\n", "[control] socket"),
        (
            "[mesh]\nkeepalive-seconds = 0\n",
            "[mesh] keepalive-seconds",
        ),
        ("[mesh]\nmax-hops = 256\n", "[mesh] max-hops"),
        ("[mesh]\nmax-first-seen = 10001\n", "[mesh] max-first-seen"),
        ("[mesh]\nrekey-minutes = 0\n", "[mesh] rekey-minutes"),
    ];
    for (extra, key) in cases {
        let err = error_of(&minimal(extra));
        assert!(err.contains(&format!(": {key}: ")), "{extra}: {err}");
    }
    let err = error_of("[node]\nid = \"a b\"\ndata-dir = \"d\"\nkey-file = \"k\"\n");
    assert!(
        err.starts_with("/etc/warren/node1.toml:2: [node] id: "),
        "{err}"
    );
    let err = error_of("[node]\nid = \"n\"\ndata-dir = \"\"\nkey-file = \"k\"\n");
    assert!(err.contains("[node] data-dir: the path is empty"), "{err}");
}

#[test]
fn permissions_must_be_an_octal_string() {
    let err = error_of(&minimal("[control]\npermissions = 600\n"));
    assert!(
        err.contains("permissions") && err.contains("string"),
        "{err}"
    );
    for (text, mode) in [("0600", 0o600), ("600", 0o600), ("0o640", 0o640), ("0", 0)] {
        assert_eq!(parse_mode(text), Some(mode), "{text}");
    }
    for text in ["", "0o", "8", "0x1ff", "00600", "-600", "1000"] {
        assert_eq!(parse_mode(text), None, "{text}");
    }
}

#[test]
fn idle_timeout_must_exceed_keepalive() {
    let err = error_of(&minimal("[mesh]\nkeepalive-seconds = 30\n"));
    assert!(err.contains("[mesh] idle-timeout-seconds"), "{err}");
    assert!(err.contains("(30s)"), "{err}");
}

#[test]
fn rejects_key_pinned_to_two_nodes() {
    let extra = format!(
        "[[trust]]\nkey = \"{k}\"\nnode = \"a\"\n[[trust]]\nkey = \"{k}\"\nnode = \"b\"\n",
        k = key(1)
    );
    let err = error_of(&minimal(&extra));
    assert!(err.contains("[[trust]] #2 key"), "{err}");
    assert!(err.contains("as a") && err.contains("as b"), "{err}");
    let extra = format!(
        "[[trust]]\nkey = \"{k}\"\n[[trust]]\nkey = \"{k}\"\nnode = \"b\"\n",
        k = key(1)
    );
    assert!(error_of(&minimal(&extra)).contains("as any node"));
}

#[test]
fn collapses_exact_duplicate_trust_entries() {
    let extra = format!(
        "[[trust]]\nkey = \"{k}\"\nnode = \"a\"\n[[trust]]\nkey = \"{k}\"\nnode = \"a\"\n",
        k = key(1)
    );
    assert_eq!(load_text(&minimal(&extra)).unwrap().trust.len(), 1);
}

#[test]
fn rejects_duplicate_addresses_and_cost_to_self() {
    let err = error_of(&minimal(
        "[[peer]]\naddress = \"h\"\n[[peer]]\naddress = \"receptor://h:8888\"\n",
    ));
    assert!(
        err.contains("[[peer]] #2 address: h:8888 is listed twice"),
        "{err}"
    );
    let err = error_of(&minimal(
        "[[listen]]\naddress = \"h:1\"\n[[listen]]\naddress = \"h:1\"\n",
    ));
    assert!(err.contains("[[listen]] #2 address"), "{err}");
    let err = error_of(&minimal("[link-costs]\nnode1 = 2\n"));
    assert!(err.contains("[link-costs] node1"), "{err}");
}

#[test]
fn missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let err = Config::load(&path).unwrap_err();
    assert!(matches!(err, ConfigError::NotFound { .. }));
    assert!(err.to_string().contains("nope.toml"), "{err}");
}

#[test]
fn load_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node1.toml");
    std::fs::write(&path, minimal("")).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.data_dir, dir.path().join("data"));
}

fn trusting(entries: &[(u8, Option<&str>)]) -> Config {
    let mut config = load_text(&minimal("")).unwrap();
    config.trust = entries
        .iter()
        .map(|&(seed, node)| TrustEntry {
            key: key(seed),
            node: node.map(id),
        })
        .collect();
    config
}

#[test]
fn trust_decisions() {
    let config = trusting(&[(1, Some("relay")), (2, None), (3, Some("relay"))]);
    assert!(config.trusts(&key(1), &id("relay")).is_trusted());
    assert!(config.trusts(&key(3), &id("relay")).is_trusted());
    assert_eq!(
        config.trusts(&key(1), &id("node2")),
        TrustDecision::PinnedToOther {
            expected: id("relay")
        }
    );
    assert!(config.trusts(&key(2), &id("anything")).is_trusted());
    assert_eq!(
        config.trusts(&key(2), &id("relay")),
        TrustDecision::IdPinnedToOtherKey
    );
    // An unknown key claiming a pinned id: the pin decides.
    assert_eq!(
        config.trusts(&key(9), &id("relay")),
        TrustDecision::IdPinnedToOtherKey
    );
    assert!(!config.trusts(&key(9), &id("x")).is_trusted());
    assert!(trusting(&[]).trusts(&key(1), &id("x")) == TrustDecision::Untrusted);
}

fn example(name: &str) -> Config {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mesh");
    Config::load(&dir.join(format!("{name}.toml"))).unwrap()
}

fn example_key(config: &Config) -> PublicKey {
    LinkKeypair::load(&config.key_file).unwrap().public()
}

/// A peer of `by`: certified by `by`'s authorities as the node `peer` configures, or `None`
/// when its certificate does not pass there.
fn certified_peer(by: &Config, peer: &Config) -> Option<crate::mesh::session::PeerIdentity> {
    use crate::ca::{Authorities, SignedCertificate};
    let text = std::fs::read_to_string(peer.certificates.cert.as_ref()?).unwrap();
    let cert = SignedCertificate::from_armored(&text).unwrap();
    let authorities = Authorities::new(by.certificates.authorities.iter().cloned());
    let key = example_key(peer);
    let groups = authorities
        .check(&cert, &peer.node_id, &key, crate::clock::now_ms())
        .ok()?;
    Some(crate::mesh::session::PeerIdentity {
        node: peer.node_id.clone(),
        key,
        binding: crate::mesh::trust::Binding::Certified {
            serial: cert.cert.serial,
            groups: groups.to_vec(),
        },
    })
}

#[test]
fn example_mesh_nodes_admit_each_other_by_certificate_and_node1_grants_only_its_rules() {
    use crate::access::Act;
    let controller = example("controller");
    let relay = example("relay");
    let node1 = example("node1");
    let ports = |c: &Config| c.listen.iter().map(|l| l.addr.port).collect::<Vec<_>>();
    assert_eq!(ports(&controller), [8888]);
    assert_eq!(ports(&relay), [8892]);
    assert_eq!(ports(&node1), [8893]);
    assert_eq!(controller.peers[0].addr.to_string(), "127.0.0.1:8892");
    assert_eq!(relay.peers[0].addr.to_string(), "127.0.0.1:8893");
    // No pins: every node admits the others by their certificates (valid for years).
    for config in [&controller, &relay, &node1] {
        assert!(config.trust.is_empty(), "{} pins keys", config.node_id);
        for peer in [&controller, &relay, &node1] {
            assert!(
                certified_peer(config, peer).is_some(),
                "{} does not admit {}",
                config.node_id,
                peer.node_id
            );
        }
    }
    // node1 lets the controller submit ansible-runner and use control; the relay nothing.
    let as_controller = certified_peer(&node1, &controller).unwrap();
    let as_relay = certified_peer(&node1, &relay).unwrap();
    let me = &node1.node_id;
    let policy = &node1.access;
    assert!(
        policy
            .check(me, &as_controller, Act::Submit("ansible-runner"))
            .is_ok()
    );
    assert!(policy.check(me, &as_controller, Act::Control).is_ok());
    assert!(policy.check(me, &as_controller, Act::Deploy).is_err());
    assert!(
        policy
            .check(me, &as_controller, Act::Submit("cat"))
            .is_err()
    );
    for act in [Act::Submit("ansible-runner"), Act::Control, Act::Deploy] {
        assert!(policy.check(me, &as_relay, act).is_err());
    }
    // The relay and the controller grant no one anything.
    assert_eq!(relay.access, crate::access::AccessPolicy::default());
    assert_eq!(controller.access, crate::access::AccessPolicy::default());
    assert!(node1.ansible_runner.enabled && node1.offers_default_ansible_runner());
    assert!(
        node1.work_types.is_empty(),
        "the cat work type is commented out"
    );
}

mod job_limits;
mod work_types;

#[test]
fn work_limits_come_from_the_work_section() {
    let config = load_text(&minimal("[work]\nmax-running = 3\nmax-payload-mb = 10\n")).unwrap();
    assert_eq!(config.work.max_running, 3);
    assert_eq!(config.work.max_payload, 10 << 20);
    let err = error_of(&minimal("[work]\nmax-running = 0\n"));
    assert!(err.contains("[work] max-running"), "{err}");
    assert_eq!(load_text(&minimal("")).unwrap().work, WorkLimits::default());
}
