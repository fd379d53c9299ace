//! `warren completions` and `warren man`, run as a packager would: they cover every verb
//! of the command line, nested ones included. And the .deb's default config is a working
//! node config once its one required blank is filled.

use std::path::Path;

use clap::CommandFactory;

use crate::support::{Mesh, warren};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every command path under `warren`, as `["node"]`, `["work", "submit"]`, ...
fn verbs() -> Vec<Vec<String>> {
    fn walk(cmd: &clap::Command, path: &[String], out: &mut Vec<Vec<String>>) {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let mut here = path.to_vec();
            here.push(sub.get_name().to_owned());
            out.push(here.clone());
            walk(sub, &here, out);
        }
    }
    let mut out = Vec::new();
    walk(&warren::cli::Cli::command(), &[], &mut out);
    // The walk itself is under test too: these must be among what it found.
    for known in [
        "node",
        "status",
        "run",
        "work submit",
        "component deploy",
        "completions",
        "man",
    ] {
        assert!(out.iter().any(|v| v.join(" ") == known), "{known} missing");
    }
    out
}

#[test]
fn completions_for_bash_zsh_and_fish_offer_every_verb() {
    for shell in ["bash", "zsh", "fish"] {
        let out = warren(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = text(&out.stdout);
        for verb in verbs() {
            let last = verb.last().unwrap();
            assert!(
                script.contains(last.as_str()),
                "{shell} completions do not mention `{}`",
                verb.join(" ")
            );
        }
    }
    // bash knows each nested verb under its parent, as `warren__subcmd__work__subcmd__submit`.
    let bash = text(&warren(&["completions", "bash"]).stdout);
    assert!(
        bash.contains("warren__subcmd__work__subcmd__submit"),
        "{bash}"
    );
    let bad = warren(&["completions", "tcsh"]);
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("bash"), "{bad:?}");
}

#[test]
fn man_writes_a_page_per_verb_and_the_main_page_lists_every_top_level_verb() {
    let mesh = Mesh::new();
    let dir = mesh.path("man");
    let out = warren(&["man", "--out", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let listed = text(&out.stdout);
    for verb in verbs() {
        let page = dir.join(format!("warren-{}.1", verb.join("-")));
        assert!(listed.contains(&page.display().to_string()), "{listed}");
        let roff = std::fs::read_to_string(&page).unwrap();
        let title = format!(".TH warren-{} 1", verb.join("-"));
        assert!(roff.contains(&title), "{}: {roff}", page.display());
    }
    let main = std::fs::read_to_string(dir.join("warren.1")).unwrap();
    let stdout = warren(&["man"]);
    assert_eq!(text(&stdout.stdout), main, "`warren man` prints warren.1");
    for verb in verbs().iter().filter(|v| v.len() == 1) {
        assert!(
            main.contains(&verb[0]),
            "warren.1 does not list {}",
            verb[0]
        );
    }
}

#[test]
fn the_packaged_default_config_runs_a_node_once_its_id_is_set() {
    let mesh = Mesh::new();
    let packaged = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/deb/warren.toml");
    let packaged = std::fs::read_to_string(packaged).unwrap();
    // As postinst and the admin leave it, relocated into the temp dir.
    let key = mesh.identity("n").key;
    let quoted = |p: std::path::PathBuf| format!("{:?}", p.display().to_string());
    let socket = mesh.path("control.sock");
    let config = packaged
        .replacen("\"/var/lib/warren\"", &quoted(mesh.path("data")), 1)
        .replacen("\"node.key\"", &quoted(key), 1)
        .replacen("\"/run/warren/control.sock\"", &quoted(socket.clone()), 1)
        .replacen(
            "# [[listen]]\n# address = \"0.0.0.0:8888\"",
            "[[listen]]\naddress = \"127.0.0.1:0\"",
            1,
        );
    assert_eq!(config.matches(mesh.dir.path().to_str().unwrap()).count(), 3);
    assert!(config.contains("address = \"127.0.0.1:0\""));

    // As installed, with no id, the node refuses to start and names the setting.
    let unset = mesh.path("unset.toml");
    std::fs::write(&unset, &config).unwrap();
    let out = warren(&["node", "--config", unset.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("id"), "{out:?}");

    let path = mesh.path("warren.toml");
    std::fs::write(
        &path,
        config.replacen("# id = \"node1\"", "id = \"node1\"", 1),
    )
    .unwrap();
    let ready = mesh.path("ready");
    let mut child = std::process::Command::new(crate::support::warren_bin())
        .args(["node", "--config", path.to_str().unwrap(), "--ready-file"])
        .arg(&ready)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::support::wait_for("the node's ready file", || {
        std::fs::read_to_string(&ready)
            .ok()
            .filter(|t| !t.is_empty())
    });
    let out = warren(&["status", "--json", "--socket", socket.to_str().unwrap()]);
    child.kill().unwrap();
    child.wait().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["NodeID"], "node1", "{status}");
}
