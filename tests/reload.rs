//! Live reconfiguration with real nodes: a reload (receptorctl's, or SIGHUP) adds a peer
//! and its trust entry while a job runs on another link, and removes the peer again,
//! closing its link with a reason; settings that need a restart are named and nothing is
//! applied.

use std::path::PathBuf;

use crate::receptorctl::venv_bin;
use crate::support::{Identity, Mesh, trust, wait_for};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `a`, run from a config file, linked to `b` (which runs `slow` jobs for it); `c` is
/// waiting for `a` to be told about it.
struct Trio {
    mesh: Mesh,
    a: usize,
    b: usize,
    c: usize,
    ids: Vec<Identity>,
    config: PathBuf,
}

impl Trio {
    fn start() -> Self {
        let mut mesh = Mesh::new();
        let ids: Vec<Identity> = ["a", "b", "c"].iter().map(|n| mesh.identity(n)).collect();
        let slow = mesh.path("slow.sh");
        std::fs::write(&slow, "#!/bin/sh\ncat\nsleep 6\necho done\n").unwrap();
        std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let b_flags = [
            "--work-type".to_owned(),
            format!("slow={}", slow.display()),
            "--allow-work".to_owned(),
            "slow=a".to_owned(),
        ];
        let b = mesh.start(&ids[1], &[trust(&[&ids[0]]), b_flags.to_vec()].concat());
        let c = mesh.start(&ids[2], &trust(&[&ids[0]]));
        let config = mesh.path("a.toml");
        let mut trio = Self {
            mesh,
            a: usize::MAX,
            b,
            c,
            ids,
            config,
        };
        std::fs::write(&trio.config, trio.a_toml(&[1])).unwrap();
        let flags = ["--config".to_owned(), trio.config.display().to_string()];
        trio.a = trio.mesh.start(&trio.ids[0], &flags);
        trio.mesh.wait_route(trio.a, "b", None);
        wait_for("b to offer slow", || {
            let status = trio.mesh.status(trio.b)?;
            (status["WorkTypes"][0]["WorkType"] == "slow").then_some(())
        });
        trio
    }

    /// `a`'s config file, peering with and trusting the nodes at `peers` (indexes in ids).
    fn a_toml(&self, peers: &[usize]) -> String {
        let a = &self.ids[0];
        let mut toml = format!(
            "[node]\nid = \"a\"\ndata-dir = \"{}\"\nkey-file = \"{}\"\n",
            self.mesh.path("a-data").display(),
            a.key.display()
        );
        for &i in peers {
            let (node, index) = (&self.ids[i], if i == 1 { self.b } else { self.c });
            toml += &format!(
                "\n[[peer]]\naddress = \"{}\"\n\n[[trust]]\nkey = \"{}\"\nnode = \"{}\"\n",
                self.mesh.node(index).addr(),
                node.token,
                node.id
            );
        }
        toml
    }

    /// `receptorctl --socket <a> ARGS`.
    fn receptorctl(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(venv_bin().join("receptorctl"))
            .arg("--socket")
            .arg(&self.mesh.node(self.a).socket)
            .args(args)
            .env("LANG", "C.UTF-8")
            .output()
            .unwrap()
    }

    /// The config generation `a` reports (left out of the reply while 0).
    fn generation(&self) -> Option<u64> {
        let status = self.mesh.status(self.a)?;
        status
            .get("ConfigGeneration")
            .map_or(Some(0), serde_json::Value::as_u64)
    }
}

#[test]
fn reload_adds_a_peer_and_its_trust_while_a_job_runs_and_removing_it_closes_its_link() {
    let trio = Trio::start();
    let payload = trio.mesh.path("payload");
    std::fs::write(&payload, "payload\n").unwrap();
    let args = ["work", "submit", "slow", "--node", "b", "--payload"];
    let out = (trio.mesh).ctl(trio.a, &[&args[..], &[payload.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{out:?}\n{}", trio.mesh.logs());
    let unit = text(&out.stdout).trim().to_owned();
    wait_for("the job to run on b", || {
        let out = trio.mesh.ctl(trio.a, &["work", "status", &unit, "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (status["StateName"] == "Running").then_some(())
    });

    // Add c, and the key that admits it, while the job runs.
    std::fs::write(&trio.config, trio.a_toml(&[1, 2])).unwrap();
    let out = trio.receptorctl(&["reload"]);
    assert!(out.status.success(), "{out:?}\n{}", trio.mesh.logs());
    assert_eq!(text(&out.stdout), "Reload successful\n");
    trio.mesh.wait_route(trio.a, "c", None);
    assert_eq!(trio.generation(), Some(1));

    // The job on the other link ran on, its link untouched.
    let done = wait_for("the job to finish", || {
        let out = trio.mesh.ctl(trio.a, &["work", "status", &unit, "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (status["StateName"] != "Running").then_some(status)
    });
    assert_eq!(
        done["StateName"],
        "Succeeded",
        "{done}\n{}",
        trio.mesh.logs()
    );
    let out = trio.mesh.ctl(trio.a, &["work", "results", &unit]);
    assert_eq!(text(&out.stdout), "payload\ndone\n");
    let a_log = trio.mesh.node(trio.a).log_text();
    assert!(
        !a_log
            .lines()
            .any(|l| l.contains("link down") && l.contains("peer=b")),
        "the link to b went down:\n{a_log}"
    );

    // Remove c again, by SIGHUP: c hears why its link closed.
    std::fs::write(&trio.config, trio.a_toml(&[1])).unwrap();
    trio.mesh.node(trio.a).signal(libc::SIGHUP);
    wait_for("c to be told it was removed", || {
        let log = trio.mesh.node(trio.c).log_text();
        log.contains("closed by peer: peer removed from the configuration")
            .then_some(())
    });
    wait_for("a to forget its route to c", || {
        let status = trio.mesh.status(trio.a)?;
        status["RoutingTable"].get("c").is_none().then_some(())
    });
    assert_eq!(trio.generation(), Some(2));
    assert!(
        trio.mesh.status(trio.a).unwrap()["RoutingTable"]
            .get("b")
            .is_some(),
        "b stays linked"
    );
}

#[test]
fn reload_names_settings_that_need_a_restart_and_applies_nothing() {
    let trio = Trio::start();
    let mut toml = trio.a_toml(&[1, 2]);
    toml += "\n[mesh]\nmax-hops = 9\n";
    std::fs::write(&trio.config, toml).unwrap();
    let out = trio.receptorctl(&["reload"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("(mesh)"), "{stderr}");
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    // The peer added beside it was not applied either.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let status = trio.mesh.status(trio.a).unwrap();
    assert!(status["RoutingTable"].get("c").is_none(), "{status}");
    assert_eq!(trio.generation(), Some(0));
}
