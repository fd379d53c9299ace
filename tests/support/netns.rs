//! Network namespaces for fault-injection tests: controller, relay and node1 each in a
//! namespace of their own (`wn-<pid>-<n>-<role>`), linked controller <-> relay <-> node1 by
//! [`Wire`]s whose delay, loss, reordering and partitions the test sets, with `warren node`
//! started inside through `ip netns exec`.
//!
//! Addresses are `10.213.<k>.1` and `.2` on point-to-point devices that exist only inside
//! these namespaces; nothing is added to the machine's own namespace. Dropping a
//! [`Topology`] kills its nodes, stops its wires and deletes its namespaces, also when the
//! test panics. Namespaces left by a test binary that was killed are deleted by the next.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use super::wire::{Impairment, Wire};
use super::{Identity, Mesh};

/// The port every node listens on inside its own namespace (Warren's default).
pub const PORT: u16 = 8888;

/// Topologies made by this process so far: each gets its own names and subnets.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A node's place in the line controller <-> relay <-> node1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Controller,
    Relay,
    Node1,
}

impl Role {
    const ALL: [Self; 3] = [Self::Controller, Self::Relay, Self::Node1];

    fn name(self) -> &'static str {
        match self {
            Self::Controller => "ctl",
            Self::Relay => "relay",
            Self::Node1 => "node1",
        }
    }
}

/// `ip`, where iproute2 installs it.
pub fn ip_bin() -> Option<PathBuf> {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Runs `ip ARGS`; the error is what it said.
fn ip(args: &[&str]) -> Result<(), String> {
    let bin = ip_bin().ok_or("iproute2 (`ip`) is not installed")?;
    let out = Command::new(&bin)
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this process may make namespaces and TUN devices: `Err` says why not. Probed
/// once (by building a small topology) and remembered.
pub fn permitted() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                return Err("not running as root".into());
            }
            remove_stale();
            Topology::new().map(drop)
        })
        .clone()
}

/// Whether `test` must be skipped here; if so, says so on standard error, past the test
/// harness's capture (which hides `eprintln!` of passing tests), so every run shows it.
pub fn skip(test: &str) -> bool {
    use std::io::Write;
    match permitted() {
        Ok(()) => false,
        Err(why) => {
            let _ = writeln!(
                std::io::stderr().lock(),
                "\nSKIPPED {test}: network namespaces are not permitted here ({why}); \
                 these tests need root, iproute2 and /dev/net/tun"
            );
            true
        }
    }
}

/// Deletes `wn-<pid>-...` namespaces whose process is gone (a test binary killed before
/// its drops ran).
fn remove_stale() {
    let Some(bin) = ip_bin() else { return };
    let Ok(out) = Command::new(bin).args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name.strip_prefix("wn-").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Namespaces this process made, deleted on drop.
struct Namespaces {
    names: Vec<String>,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// controller <-> relay <-> node1, each in its own namespace, with the nodes this test
/// starts in them. Fields drop in order: nodes first, then wires, then namespaces.
pub struct Topology {
    /// The nodes (killed on drop, their logs printed if the test panics) and temp files.
    pub mesh: Mesh,
    /// The controller <-> relay wire, then the relay <-> node1 wire.
    pub wires: [Wire; 2],
    /// Subnet index k of the first wire (the second is k + 1).
    subnet: u32,
    namespaces: Namespaces,
}

impl Topology {
    /// Makes the namespaces and wires (no nodes yet).
    ///
    /// # Errors
    /// What `ip` or the TUN devices refused (not root, no iproute2, no `/dev/net/tun`).
    pub fn new() -> Result<Self, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("wn-{}-{n}", std::process::id());
        let mut namespaces = Namespaces { names: Vec::new() };
        for role in Role::ALL {
            let name = format!("{prefix}-{}", role.name());
            ip(&["netns", "add", &name])?;
            namespaces.names.push(name.clone());
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        let subnet = (2 * n) % 254;
        let ns = |role: Role| namespaces.names[role as usize].clone();
        let wire = |k: u32, a: Role, b: Role| -> Result<Wire, String> {
            let (dev_a, dev_b) = (format!("to-{}", b.name()), format!("to-{}", a.name()));
            let wire = Wire::new(&ns(a), &dev_a, &ns(b), &dev_b, u64::from(k) + 1)?;
            let (addr_a, addr_b) = (format!("10.213.{k}.1"), format!("10.213.{k}.2"));
            for (ns, dev, local, remote) in [
                (ns(a), &dev_a, &addr_a, &addr_b),
                (ns(b), &dev_b, &addr_b, &addr_a),
            ] {
                ip(&["-n", &ns, "addr", "add", local, "peer", remote, "dev", dev])?;
                ip(&["-n", &ns, "link", "set", dev, "up"])?;
            }
            Ok(wire)
        };
        let wires = [
            wire(subnet, Role::Controller, Role::Relay)?,
            wire(subnet + 1, Role::Relay, Role::Node1)?,
        ];
        Ok(Self {
            mesh: Mesh::new(),
            wires,
            subnet,
            namespaces,
        })
    }

    /// The namespace of `role`.
    pub fn namespace(&self, role: Role) -> &str {
        &self.namespaces.names[role as usize]
    }

    /// The address `role` listens on (`host:port`): the controller and the relay on their
    /// ends of the first wire, node1 on its end of the second.
    pub fn addr(&self, role: Role) -> String {
        let host = match role {
            Role::Controller => format!("10.213.{}.1", self.subnet),
            Role::Relay => format!("10.213.{}.2", self.subnet),
            Role::Node1 => format!("10.213.{}.2", self.subnet + 1),
        };
        format!("{host}:{PORT}")
    }

    /// The words that run a program inside `role`'s namespace.
    pub fn exec(&self, role: Role) -> Vec<String> {
        let ip = ip_bin().expect("permitted() found ip");
        vec![
            ip.display().to_string(),
            "netns".into(),
            "exec".into(),
            self.namespace(role).to_owned(),
        ]
    }

    /// Starts `warren node` for `identity` in `role`'s namespace, listening on
    /// [`Topology::addr`], with `extra` flags; returns its index in [`Topology::mesh`].
    pub fn start(&mut self, role: Role, identity: &Identity, extra: &[String]) -> usize {
        let (listen, wrap) = (self.addr(role), self.exec(role));
        self.mesh
            .start_wrapped(identity, &listen, &wrap, extra, &[])
    }

    /// Sets `impairment` on both wires.
    pub fn impair(&self, impairment: Impairment) {
        for wire in &self.wires {
            wire.set(impairment);
        }
    }

    /// Cuts the relay off (both wires drop everything) or, with `false`, heals it, keeping
    /// the other impairments.
    pub fn partition_relay(&self, partitioned: bool) {
        for wire in &self.wires {
            wire.set(Impairment {
                partitioned,
                ..wire.impairment()
            });
        }
    }
}
