//! The limits a work type puts on the programs its handler starts (each program with all its
//! descendants), separate from the guest's own WebAssembly memory cap.
//!
//! Plain data with defaults and a one-line description for `warren status`; no IO.

use serde::{Deserialize, Serialize};

/// Default memory of a program and its descendants: 2 GiB, room for `ansible-playbook` with
/// its default five forks and their ssh processes several times over.
pub const DEFAULT_PROGRAM_MEMORY_MB: u64 = 2048;
/// Default process and thread count of a program and its descendants: 512, far above what
/// Ansible's default five forks use (each a Python process with a few threads and an ssh),
/// far below what exhausts a node.
pub const DEFAULT_PROGRAM_PIDS: u64 = 512;
/// Default open files per process (`RLIMIT_NOFILE`): 4096, above the usual 1024 soft limit,
/// which busy Ansible runs with many forks can reach.
pub const DEFAULT_PROGRAM_OPEN_FILES: u64 = 4096;
/// Default largest file a program may write (`RLIMIT_FSIZE`): 16 GiB, above the default
/// output cap, so that cap is what a runaway job's results hit first.
pub const DEFAULT_PROGRAM_FILE_SIZE_MB: u64 = 16 * 1024;

/// Which network a work type's programs see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The node's own network (ansible-runner needs it to reach managed hosts).
    #[default]
    Host,
    /// A private network namespace with only a loopback interface (`network = "none"`).
    None,
}

impl Network {
    /// As written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::None => "none",
        }
    }
}

/// Limits on the programs a work type's handler starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProgramLimits {
    /// Memory of a program with its descendants (cgroup `memory.max` /
    /// `memory.limit_in_bytes`), in bytes.
    pub memory_bytes: u64,
    /// Processes and threads of a program with its descendants (cgroup `pids.max`).
    pub pids: u64,
    /// Open files per process (`RLIMIT_NOFILE`, never above the node's own hard limit).
    pub open_files: u64,
    /// Largest file a process may write (`RLIMIT_FSIZE`), in bytes.
    pub file_size_bytes: u64,
    /// The network the programs see.
    pub network: Network,
}

impl Default for ProgramLimits {
    fn default() -> Self {
        Self {
            memory_bytes: DEFAULT_PROGRAM_MEMORY_MB << 20,
            pids: DEFAULT_PROGRAM_PIDS,
            open_files: DEFAULT_PROGRAM_OPEN_FILES,
            file_size_bytes: DEFAULT_PROGRAM_FILE_SIZE_MB << 20,
            network: Network::Host,
        }
    }
}

impl ProgramLimits {
    /// One line for `warren status`: `memory 2048 MiB, 512 pids, 4096 open files, files up
    /// to 16384 MiB, no core dumps, network host`.
    pub fn describe(&self) -> String {
        format!(
            "memory {} MiB, {} pids, {} open files, files up to {} MiB, no core dumps, network {}",
            self.memory_bytes >> 20,
            self.pids,
            self.open_files,
            self.file_size_bytes >> 20,
            self.network.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_described_in_mib() {
        assert_eq!(
            ProgramLimits::default().describe(),
            "memory 2048 MiB, 512 pids, 4096 open files, files up to 16384 MiB, \
             no core dumps, network host"
        );
    }
}
