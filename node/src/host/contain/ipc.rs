//! System V IPC objects (shared memory segments, message queues, semaphore sets) a job's
//! uid (`[work] job-users`) leaves in the node's IPC namespace: they outlive every process
//! of the job, and the next job of the uid, often another submitter's, could attach them as
//! their owner (a 0600 segment holding a secret). [`remove_objects_of`] removes them.
//!
//! Where the node may (`CAP_SYS_ADMIN`), each program of a job runs in an IPC namespace of
//! its own (`setup`), whose objects, POSIX message queues too, die with its last process;
//! this removal covers every other case: a node without the capability, and what a program
//! put in the node's namespace anyway.
//!
//! How: the node lists `/proc/sysvipc/{shm,msg,sem}` ([`parse`]: every object whose owner
//! or creator uid is the job's; `IPC_SET` lets an owner give an object to another uid, the
//! creator stays), then one reap helper (`reap`) with the job's uid as its effective uid and
//! no capability removes them (`IPC_RMID`, which the kernel allows the owner or creator):
//! an id reused for another uid's object meanwhile is refused, never removed. The node then
//! lists again. A segment still attached elsewhere is only marked (`SHM_DEST`) and goes
//! with its last detach; it counts as removed.
//!
//! Blocking: call it off the async workers, after the uid's reap.

use std::fmt;
use std::io;

use super::reap::{self, PassError};

/// The kinds of System V object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IpcKind {
    /// A shared memory segment.
    Shm,
    /// A message queue.
    Msg,
    /// A semaphore set.
    Sem,
}

impl IpcKind {
    const ALL: [Self; 3] = [Self::Shm, Self::Msg, Self::Sem];

    /// Its `/proc/sysvipc` file.
    fn proc_file(self) -> &'static str {
        match self {
            Self::Shm => "/proc/sysvipc/shm",
            Self::Msg => "/proc/sysvipc/msg",
            Self::Sem => "/proc/sysvipc/sem",
        }
    }

    /// The id column's name in that file.
    fn id_column(self) -> &'static str {
        match self {
            Self::Shm => "shmid",
            Self::Msg => "msqid",
            Self::Sem => "semid",
        }
    }
}

/// One System V object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpcObject {
    /// Its kind.
    pub(crate) kind: IpcKind,
    /// Its id.
    pub(crate) id: i32,
}

impl fmt::Display for IpcObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            IpcKind::Shm => "shared memory segment",
            IpcKind::Msg => "message queue",
            IpcKind::Sem => "semaphore set",
        };
        write!(f, "{kind} {}", self.id)
    }
}

impl IpcObject {
    /// `IPC_RMID`s the object; the result is not looked at (the caller lists again). A raw
    /// system call: the reap helper runs it on the node's memory, between `clone` and
    /// `_exit`.
    pub(crate) fn remove(&self) {
        let (id, rmid) = (
            libc::c_long::from(self.id),
            libc::c_long::from(libc::IPC_RMID),
        );
        // SAFETY: the *ctl calls with IPC_RMID read no buffer; async-signal-safe.
        unsafe {
            match self.kind {
                IpcKind::Shm => libc::syscall(libc::SYS_shmctl, id, rmid, 0 as libc::c_long),
                IpcKind::Msg => libc::syscall(libc::SYS_msgctl, id, rmid, 0 as libc::c_long),
                IpcKind::Sem => libc::syscall(
                    libc::SYS_semctl,
                    id,
                    0 as libc::c_long,
                    rmid,
                    0 as libc::c_long,
                ),
            }
        };
    }
}

/// Why a uid's System V objects were not all removed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IpcError {
    /// A `/proc/sysvipc` file could not be read.
    #[error("cannot read {file} to find what uid {uid} left: {source}")]
    Proc {
        /// The uid.
        uid: u32,
        /// The file.
        file: &'static str,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The helper that removes them did not run.
    #[error("cannot remove what uid {uid} left in System V IPC: {source}")]
    Helper {
        /// The uid.
        uid: u32,
        /// Why.
        #[source]
        source: PassError,
    },
    /// Objects of the uid are still there after the removal.
    #[error("uid {uid} still owns {} System V object(s) after their removal: {}", left.len(), list(left))]
    Left {
        /// The uid.
        uid: u32,
        /// What is left.
        left: Vec<IpcObject>,
    },
}

fn list(objects: &[IpcObject]) -> String {
    objects
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Removes every System V object of the node's IPC namespace whose owner or creator is
/// `uid`; how many there were.
///
/// # Errors
/// [`IpcError`]: `/proc/sysvipc` unreadable, the helper failed, or objects are left.
pub(crate) fn remove_objects_of(uid: u32) -> Result<usize, IpcError> {
    let found = objects_of(uid)?;
    if found.is_empty() {
        return Ok(0);
    }
    reap::remove_ipc_as(uid, &found).map_err(|source| IpcError::Helper { uid, source })?;
    let left = objects_of(uid)?;
    if left.is_empty() {
        Ok(found.len())
    } else {
        Err(IpcError::Left { uid, left })
    }
}

/// The objects of the node's IPC namespace whose owner or creator is `uid` (a kernel
/// without System V IPC has none).
///
/// # Errors
/// [`IpcError::Proc`].
pub(crate) fn objects_of(uid: u32) -> Result<Vec<IpcObject>, IpcError> {
    let mut found = Vec::new();
    for kind in IpcKind::ALL {
        let file = kind.proc_file();
        match std::fs::read_to_string(file) {
            Ok(text) => found.extend(parse(kind, &text, uid)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(IpcError::Proc { uid, file, source }),
        }
    }
    Ok(found)
}

/// `SHM_DEST` in a segment's `perms`: removed, gone with its last detach.
const SHM_DEST: u32 = 0o1000;

/// The objects of one `/proc/sysvipc` file's `text` whose `uid` or `cuid` column is `uid`,
/// but segments already marked removed. Columns are found by the header's names (kernels
/// have added columns at the end).
pub(crate) fn parse(kind: IpcKind, text: &str, uid: u32) -> Vec<IpcObject> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let (Some(id_at), Some(uid_at), Some(cuid_at), Some(perms_at)) = (
        column(kind.id_column()),
        column("uid"),
        column("cuid"),
        column("perms"),
    ) else {
        return Vec::new();
    };
    lines
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let number = |at: usize| fields.get(at).and_then(|f| f.parse::<u32>().ok());
            let id = fields.get(id_at)?.parse::<i32>().ok()?;
            let ours = number(uid_at) == Some(uid) || number(cuid_at) == Some(uid);
            let perms = fields
                .get(perms_at)
                .and_then(|p| u32::from_str_radix(p, 8).ok())?;
            let marked = kind == IpcKind::Shm && perms & SHM_DEST != 0;
            (ours && !marked).then_some(IpcObject { kind, id })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHM: &str = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n\
                                0          3   600                  4096   10    10      0  3000  3000  3000  3000          0          0          1                     0                     0\n\
                                0          4   600                  4096   10    10      0  4000  4000  3000  3000          0          0          1                     0                     0\n\
                                0          5  1600                  4096   10    10      1  3000  3000  3000  3000          0          0          1                     0                     0\n\
                                0          6   600                  4096   10    10      0     0     0     0     0          0          0          1                     0                     0\n";

    #[test]
    fn an_object_is_the_uids_by_owner_or_creator_and_a_removed_segment_is_not_counted() {
        // 3: owned and made by 3000; 4: made by 3000, given to 4000 (IPC_SET); 5: marked
        // removed (SHM_DEST), still attached; 6: root's.
        let ids: Vec<i32> = parse(IpcKind::Shm, SHM, 3000)
            .iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(ids, [3, 4]);
        let ids: Vec<i32> = parse(IpcKind::Shm, SHM, 4000)
            .iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(ids, [4]);
        let sem = "       key      semid perms      nsems   uid   gid  cuid  cgid      otime      ctime\n\
                   1          7   600          1  3000  3000  3000  3000          0          1\n";
        assert_eq!(
            parse(IpcKind::Sem, sem, 3000),
            [IpcObject {
                kind: IpcKind::Sem,
                id: 7
            }]
        );
        assert_eq!(parse(IpcKind::Msg, "garbage\n1 2 3\n", 3000), []);
    }
}
