//! Job users (`[work] job-users = "FIRST-LAST"`): a range of uids, each also a gid, that the
//! node reserves for its jobs' programs, so that no job can read another's pipes
//! (`/proc/<pid>/fd`), files, the node's data dir or its control socket, or signal anything
//! but its own processes.
//!
//! [`JobUsers`] owns the pool: a job takes the least recently used uid that no other job
//! holds and no process runs as ([`JobUsers::take`], a `/proc` scan), and gives it back when
//! the last [`JobUser`] handle drops, which its spawns and watchers keep until nothing of the
//! job can run. Then, on a thread of its own, every process still running as the uid is
//! killed (`reap`: a daemon that left the job's containment, as a `setsid` and
//! double fork leave a process group) before the uid goes back to the pool; only a detached
//! job of a node that leaves detached jobs running keeps its processes. A restarted node
//! claims the uids its re-attached jobs recorded ([`JobUsers::claim`]) before any new job
//! starts.
//!
//! What the uid left outside its processes goes as soon as they are dead, before the uid is
//! back in the pool, and again before it is handed out (for a node stopped in between): its
//! files in the world-writable directories and in the world-writable directories inside
//! them (`leftovers`: `/tmp`, `/var/tmp`, `/dev/shm`, `/run/lock`, `/dev/mqueue` and the
//! host's other world-writable directories), and its
//! System V IPC objects (`ipc`), so the next job of that uid, often another submitter's,
//! finds none of it. Where the node has `CAP_SYS_ADMIN`, each program also runs in an IPC
//! namespace of its own (`setup`), whose objects die with it. A uid whose IPC objects
//! could not be removed is passed over at the take. The uid's kernel keyrings, which
//! outlive its processes, are shut to its programs (`keyring`: a seccomp filter makes
//! `add_key`, `keyctl` and `request_key` fail with `EPERM`), so a job leaves nothing there.
//!
//! The checks at start ([`JobUsers::new`]) refuse a range that is empty, too large, holds
//! uid 0 or the node's own uid, or overlaps a user of `/etc/passwd` or a group of
//! `/etc/group` (a job would get that user's files and processes, or that group's files),
//! a subordinate range of `/etc/subuid` or `/etc/subgid`, or an account NSS knows
//! (`accounts`), a node that cannot switch users, give files away and reach what jobs
//! leave, and one whose kernel or build cannot install the keyring filter.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::accounts::{self, EXAMPLE_RANGE};
use super::{ipc, keyring, leftovers, reap};

/// Most uids a range may hold (more jobs at once than this is not a real node).
pub const MAX_JOB_USERS: u32 = 65_536;

/// The uids systemd gives services with `DynamicUser=` (documented in systemd's "Users,
/// Groups, UIDs and GIDs on systemd Systems"): allocated at a service's start, so no file
/// shows them taken beforehand.
const SYSTEMD_DYNAMIC_USERS: UidRange = UidRange {
    first: 61_184,
    last: 65_519,
};

/// Capabilities a non-root node needs, by number and name.
const NEEDED_CAPS: [(u32, &str); 6] = [
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (3, "CAP_FOWNER"),
    (5, "CAP_KILL"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
];

/// A range of uids, `FIRST-LAST` inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    /// The first uid.
    pub first: u32,
    /// The last uid (inclusive).
    pub last: u32,
}

impl fmt::Display for UidRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl std::str::FromStr for UidRange {
    type Err = JobUsersError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || JobUsersError::Syntax(s.to_owned());
        let (first, last) = s.trim().split_once('-').ok_or_else(bad)?;
        let first: u32 = first.trim().parse().map_err(|_| bad())?;
        let last: u32 = last.trim().parse().map_err(|_| bad())?;
        if first > last {
            return Err(JobUsersError::Empty { first, last });
        }
        if last - first >= MAX_JOB_USERS {
            return Err(JobUsersError::TooMany {
                range: Self { first, last },
            });
        }
        Ok(Self { first, last })
    }
}

impl UidRange {
    pub(crate) fn contains(&self, uid: u32) -> bool {
        (self.first..=self.last).contains(&uid)
    }
}

/// Why `[work] job-users` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobUsersError {
    /// Not `FIRST-LAST`.
    #[error("\"{0}\" is not a uid range: write FIRST-LAST, for example \"{EXAMPLE_RANGE}\"")]
    Syntax(String),
    /// `FIRST` above `LAST`.
    #[error("{first}-{last} is empty: the first uid must not be above the last")]
    Empty {
        /// The first uid.
        first: u32,
        /// The last uid.
        last: u32,
    },
    /// More than [`MAX_JOB_USERS`] uids.
    #[error("{range} holds more than {MAX_JOB_USERS} uids; reserve fewer")]
    TooMany {
        /// The range.
        range: UidRange,
    },
    /// Holds uid 0.
    #[error("{range} holds uid 0 (root): jobs would run as root; choose uids above 0")]
    Root {
        /// The range.
        range: UidRange,
    },
    /// Holds the node's own uid.
    #[error(
        "{range} holds the node's own uid {uid}: jobs could reach everything the node can; choose uids no one uses"
    )]
    NodeUid {
        /// The range.
        range: UidRange,
        /// The node's uid.
        uid: u32,
    },
    /// Holds `reap::REAPER_UID`, the real uid of the helper that kills a job's leftovers.
    #[error(
        "{range} holds uid {}, which the node keeps for the helper that kills what a job leaves running; choose uids below it, for example {EXAMPLE_RANGE}",
        reap::REAPER_UID
    )]
    ReaperUid {
        /// The range.
        range: UidRange,
    },
    /// The node's user namespace does not map `reap::REAPER_UID` as a uid or a gid.
    #[error(
        "the node's user namespace does not map id {} ({file}), which the helper that kills what a job leaves running takes as its uid and gid; run the node in the initial user namespace or map that id into its namespace, or remove [work] job-users",
        reap::REAPER_UID
    )]
    ReaperUnmapped {
        /// The id map that lacks it.
        file: &'static str,
    },
    /// The node's user namespace denies `setgroups`.
    #[error(
        "the node's user namespace denies setgroups (/proc/self/setgroups is \"deny\"): neither the jobs nor the helper that kills what a job leaves running could drop their supplementary groups; run the node where setgroups is allowed, or remove [work] job-users"
    )]
    SetgroupsDenied,
    /// Job users' programs cannot be kept from the kernel keyrings (`keyring`).
    #[error(
        "job users need a seccomp filter that refuses their programs the kernel keyrings (add_key, keyctl, request_key), where a key a job leaves outlives it for the next job of its uid, but {missing}; run the node on a kernel with seccomp filters (CONFIG_SECCOMP_FILTER, 4.14 or later) and a build for x86_64 or aarch64, or remove [work] job-users"
    )]
    NoKeyringFilter {
        /// What is missing, in words.
        missing: String,
    },
    /// `reap::REAPER_UID` belongs to an account or a subordinate range.
    #[error(
        "uid/gid {} is {holder}, but the node keeps it for the helper that kills what a job leaves running: a process running as it could stop that helper and keep every job's uid from coming back; remove that account or range, or remove [work] job-users",
        reap::REAPER_UID
    )]
    ReaperTaken {
        /// Who has it, in words.
        holder: String,
    },
    /// The node is process 1.
    #[error(
        "the node runs as process 1 (a container's init) and does not reap the orphans given to it: each process a job left, once killed, would stay a zombie for good, until the host has no pid left; run the node under an init (docker run --init, tini, systemd), or remove [work] job-users"
    )]
    NodeIsInit,
    /// Overlaps systemd's range for dynamic users (`DynamicUser=`).
    #[error(
        "{range} overlaps {}-{}, the uids systemd gives services with DynamicUser= (systemd's \"Users, Groups, UIDs and GIDs on systemd Systems\"): such a service and a job could run as the same uid; choose a range outside it, for example {EXAMPLE_RANGE}", SYSTEMD_DYNAMIC_USERS.first, SYSTEMD_DYNAMIC_USERS.last
    )]
    SystemdDynamic {
        /// The range.
        range: UidRange,
    },
    /// `/proc` hides other users' processes from the node.
    #[error(
        "/proc is mounted with {option} and the node lacks CAP_SYS_PTRACE: it cannot see the processes a job leaves running, so it could neither kill them nor keep their uid from the next job; remount /proc without hidepid (or with gid= a group the node is in), or give the node CAP_SYS_PTRACE, or remove [work] job-users"
    )]
    ProcHidden {
        /// The mount option, as `/proc/self/mountinfo` shows it.
        option: String,
    },
    /// Overlaps an account of `/etc/passwd` or a group of `/etc/group`.
    #[error("{range} holds uid/gid {id}, which is {what} \"{name}\" in {}: a job running as it would get that {what}'s files and processes; choose uids and gids no account uses, for example {EXAMPLE_RANGE}", file.display())]
    Taken {
        /// The range.
        range: UidRange,
        /// The id.
        id: u32,
        /// `user` or `group`.
        what: &'static str,
        /// Its name.
        name: String,
        /// The file that names it.
        file: PathBuf,
    },
    /// Overlaps a range of subordinate ids (`/etc/subuid`, `/etc/subgid`).
    #[error("{range} overlaps {first}-{last}, the subordinate ids {} gives \"{owner}\": that user's user namespaces (rootless containers) run as them and could reach a job's files and signal its programs; choose a range outside every range of /etc/subuid and /etc/subgid, for example {EXAMPLE_RANGE}", file.display())]
    Subordinate {
        /// The range.
        range: UidRange,
        /// The user the ids are given to.
        owner: String,
        /// The first subordinate id.
        first: u64,
        /// The last subordinate id.
        last: u64,
        /// The file.
        file: PathBuf,
    },
    /// Holds an id NSS knows (LDAP, sssd, systemd's userdb: not in the files).
    #[error(
        "{range} holds uid/gid {id}, which NSS ({sources}) knows as {what} \"{name}\": a job running as it would get that {what}'s files and processes; choose uids and gids no account uses, for example {EXAMPLE_RANGE}"
    )]
    NssTaken {
        /// The range.
        range: UidRange,
        /// The id.
        id: u32,
        /// `user` or `group`.
        what: &'static str,
        /// Its name.
        name: String,
        /// NSS's sources, as `/etc/nsswitch.conf` lists them.
        sources: String,
    },
    /// NSS could not be asked about every id of the range in time.
    #[error("checking {range} against the accounts NSS ({sources}) knows took over {budget:?} ({checked} of {} ids looked up): reserve fewer uids, or make NSS answer faster (a local cache such as sssd or nscd), or remove [work] job-users", u64::from(range.last - range.first) + 1)]
    NssSlow {
        /// The range.
        range: UidRange,
        /// How many ids were looked up.
        checked: u64,
        /// The time allowed (`accounts::NSS_BUDGET`).
        budget: std::time::Duration,
        /// NSS's sources.
        sources: String,
    },
    /// An NSS lookup of an id of the range failed.
    #[error(
        "looking up uid/gid {id} of {range} in NSS ({sources}) failed ({error}): whether an account uses it is unknown; make NSS answer (is the directory reachable?) and start again, or remove [work] job-users"
    )]
    NssFailed {
        /// The range.
        range: UidRange,
        /// The id whose lookup failed.
        id: u32,
        /// The lookup's error, as text.
        error: String,
        /// NSS's sources.
        sources: String,
    },
    /// A non-root node without the capabilities it needs.
    #[error(
        "the node runs as uid {uid} without {missing}: run it as root, or give it CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_KILL, CAP_SETGID and CAP_SETUID as ambient capabilities (systemd: AmbientCapabilities=), so its supervisors have them too; or remove [work] job-users"
    )]
    NoCapability {
        /// The node's uid.
        uid: u32,
        /// The missing capabilities, named.
        missing: String,
    },
    /// `fs.protected_hardlinks` is off.
    #[error(
        "fs.protected_hardlinks is 0 on this host: a job could hard-link a file it may not write (a system file) into its job directory under a name the node writes later; set it to 1 (`sysctl -w fs.protected_hardlinks=1`, and in /etc/sysctl.d to keep it), or remove [work] job-users"
    )]
    HardlinksUnprotected,
    /// The control socket is open to other users.
    #[error(
        "[control] permissions {mode:04o} lets other users, every job user among them, use the control socket with full rights; give others no bits (for example \"0600\" or \"0660\"), or remove [work] job-users"
    )]
    ControlSocketOpen {
        /// The configured mode.
        mode: u32,
    },
    /// A directory above the data dir that other users cannot traverse.
    #[error("{} (mode {mode:04o}) cannot be traversed by other users, so no job could reach its directory under the data dir: chmod o+x it, or choose a data dir whose parents can be traversed", path.display())]
    Untraversable {
        /// The directory.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
}

/// The pool of job uids, shared by every job of the node (clones share the pool).
#[derive(Debug, Clone)]
pub struct JobUsers {
    range: UidRange,
    data_dir: PathBuf,
    /// Whether each program gets an IPC namespace of its own (the node has
    /// `CAP_SYS_ADMIN`).
    private_ipc: bool,
    pool: Arc<Mutex<Pool>>,
}

/// The uids: `free` in least recently used order (front first), `held` by live jobs (and
/// by ended ones until their processes are gone).
#[derive(Debug)]
struct Pool {
    free: VecDeque<u32>,
    held: BTreeSet<u32>,
    /// The node is stopping and leaves detached jobs running: their uids' processes are
    /// not killed when their handles drop.
    leave_detached: bool,
}

impl Pool {
    fn give_back(&mut self, uid: u32) {
        if self.held.remove(&uid) {
            self.free.push_back(uid);
        }
    }
}

impl JobUsers {
    /// The pool of `range` for a node whose data dir is `data_dir`, after every check at
    /// start: the range against the node's uid and the account files, the node's
    /// capabilities, and that other users can traverse the data dir's parents.
    ///
    /// # Errors
    /// [`JobUsersError`] naming what is wrong and what to do.
    pub fn new(range: UidRange, data_dir: &Path) -> Result<Self, JobUsersError> {
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        check_range(range, uid)?;
        accounts::check_host_accounts(range, Path::new("/"), accounts::nss_account)?;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if uid != 0 {
            check_capabilities(uid, &status)?;
        }
        check_not_init(std::process::id())?;
        check_reaper_ids(
            read_if_present("/proc/self/uid_map").as_deref(),
            read_if_present("/proc/self/gid_map").as_deref(),
            read_if_present("/proc/self/setgroups").as_deref(),
        )?;
        check_reaper_free(Path::new("/"), accounts::nss_account)?;
        check_keyring_filter(keyring::check_available())?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        check_proc_visible(&mountinfo, &status)?;
        let hardlinks = std::fs::read_to_string("/proc/sys/fs/protected_hardlinks").ok();
        check_hardlinks(hardlinks.as_deref())?;
        let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
        check_traversable(&data_dir)?;
        Ok(Self::unchecked(range, data_dir))
    }

    /// The pool without the checks at start (tests).
    pub(crate) fn unchecked(range: UidRange, data_dir: PathBuf) -> Self {
        let pool = Pool {
            free: (range.first..=range.last).collect(),
            held: BTreeSet::new(),
            leave_detached: false,
        };
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        Self {
            range,
            data_dir,
            private_ipc: capability_set(&status, "CapEff:") & (1 << CAP_SYS_ADMIN) != 0,
            pool: Arc::new(Mutex::new(pool)),
        }
    }

    /// The range.
    pub fn range(&self) -> UidRange {
        self.range
    }

    /// Whether each program of a job runs in an IPC namespace of its own: the node has
    /// `CAP_SYS_ADMIN` (root) to make one. Without, what a job leaves in System V IPC is
    /// removed at its end all the same (`ipc`).
    pub(crate) fn private_ipc(&self) -> bool {
        self.private_ipc
    }

    /// The node's data dir, whose contents the pool keeps jobs out of.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A uid for a new job: the least recently used one that no job holds and that no
    /// process runs as (a daemon a job left behind keeps its uid out of the pool), with
    /// what an earlier job of it left in the shared writable directories and System V IPC
    /// removed (`clear_leftovers`).
    /// `None` when every uid is held or busy. Reads `/proc` and those directories: call it
    /// where blocking briefly is fine (a job's start).
    pub fn take(&self) -> Option<JobUser> {
        let busy = match uids_in_use(self.range) {
            Ok(busy) => busy,
            Err(e) => {
                tracing::error!(error = %e, "cannot list /proc to see which job uids processes run as; no uid is handed out");
                return None;
            }
        };
        let mut skipped = BTreeSet::new();
        loop {
            let mut pool = self.pool.lock().ok()?;
            let at = pool
                .free
                .iter()
                .position(|uid| !busy.contains(uid) && !skipped.contains(uid))?;
            let uid = pool.free.remove(at)?;
            pool.held.insert(uid);
            drop(pool);
            // Held now, so no one else takes it while what its last job left goes (gone
            // already when that job ended, but for a node stopped before it could).
            match clear_leftovers(uid) {
                Cleared::All => {}
                Cleared::NotAll => {
                    tracing::warn!(
                        uid,
                        "the uid is passed over while what its last job left may remain"
                    );
                    drop(self.handle(uid));
                    skipped.insert(uid);
                    continue;
                }
                // The shared directories are too crowded to sweep within the bound: every
                // other uid's sweep would be as long, so this take ends here.
                Cleared::CutShort => {
                    tracing::warn!(
                        uid,
                        "the uid is passed over: the sweep of the shared directories for what its last job left was cut short"
                    );
                    drop(self.handle(uid));
                    return None;
                }
            }
            match reclaim_job_dirs(&self.data_dir, uid) {
                Ok(()) => return Some(self.handle(uid)),
                Err(e) => {
                    tracing::warn!(uid, error = %e, "a job directory an earlier job of this uid had could not be taken back; the uid is passed over");
                    drop(self.handle(uid));
                    skipped.insert(uid);
                }
            }
        }
    }

    /// Marks `uid` held by a job a restarted node re-attached (from its job record);
    /// `None` when it is not in the range or held already.
    pub fn claim(&self, uid: u32) -> Option<JobUser> {
        if !self.range.contains(uid) {
            return None;
        }
        let mut pool = self.pool.lock().ok()?;
        let at = pool.free.iter().position(|&u| u == uid)?;
        pool.free.remove(at);
        pool.held.insert(uid);
        Some(self.handle(uid))
    }

    /// The uids jobs hold now, lowest first.
    pub fn held(&self) -> Vec<u32> {
        self.pool
            .lock()
            .map(|p| p.held.iter().copied().collect())
            .unwrap_or_default()
    }

    /// From now on a detached job's uid keeps its processes when its handles drop (the node
    /// is stopping and its next start re-attaches the job); every other job's are still
    /// killed.
    pub fn leave_detached_running(&self) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.leave_detached = true;
        }
    }

    fn handle(&self, uid: u32) -> JobUser {
        let (returned, _) = watch::channel(false);
        JobUser(Arc::new(Lease {
            uid,
            pool: Arc::clone(&self.pool),
            detached: AtomicBool::new(false),
            returned: Some(returned),
        }))
    }
}

/// A job's hold on its uid; clones share it. When the last one drops, every process still
/// running as the uid is killed on a thread of its own, what the uid left in the shared
/// directories and System V IPC is removed, and then the uid goes back to the pool (to the
/// end of the queue).
#[derive(Debug, Clone)]
pub struct JobUser(Arc<Lease>);

impl JobUser {
    /// The uid (and gid).
    pub fn uid(&self) -> u32 {
        self.0.uid
    }

    /// Marks the job as having a detached program: if the node stops leaving detached jobs
    /// running ([`JobUsers::leave_detached_running`]), its processes are left alone.
    pub(crate) fn mark_detached(&self) {
        self.0.detached.store(true, Ordering::Release);
    }

    /// Becomes `true` once the uid's processes have been ended and the uid is back in the
    /// pool (after the last handle dropped); closed without it if that never happens.
    pub(crate) fn returned(&self) -> watch::Receiver<bool> {
        self.0
            .returned
            .as_ref()
            .map_or_else(|| watch::channel(true).1, watch::Sender::subscribe)
    }
}

#[derive(Debug)]
struct Lease {
    uid: u32,
    pool: Arc<Mutex<Pool>>,
    /// Whether the job started (or re-attached) a detached program.
    detached: AtomicBool,
    /// Set to `true` once the uid is back in the pool; taken by the drop.
    returned: Option<watch::Sender<bool>>,
}

impl Drop for Lease {
    /// Ends the uid's processes (unless the node leaves this detached job running) and
    /// gives the uid back, on a thread: the last handle often drops on an async worker.
    fn drop(&mut self) {
        let (uid, pool, returned) = (self.uid, Arc::clone(&self.pool), self.returned.take());
        let leave = self.detached.load(Ordering::Acquire)
            && self.pool.lock().is_ok_and(|p| p.leave_detached);
        let end = move || {
            // A uid whose processes may still run stays held until the node restarts:
            // handed out, its next job would share it with them. `returned` then closes
            // without being set.
            if !leave {
                if !end_processes(uid) {
                    return;
                }
                // Nothing runs as the uid now: what it left goes at once, not when the uid
                // is next taken (no secret of the job kept at rest longer than needed).
                clear_leftovers(uid);
            }
            if let Ok(mut pool) = pool.lock() {
                pool.give_back(uid);
            }
            if let Some(returned) = returned {
                returned.send_replace(true);
            }
        };
        let shared = Arc::new(Mutex::new(Some(end)));
        let on_thread = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("warren-uid-end".into())
            .spawn(move || {
                if let Some(end) = on_thread.lock().ok().and_then(|mut e| e.take()) {
                    end();
                }
            });
        if spawned.is_err() {
            // No thread to be had: here, then, rather than never.
            if let Some(end) = shared.lock().ok().and_then(|mut e| e.take()) {
                end();
            }
        }
    }
}

/// Kills every process still running as `uid`, logging what it did or could not do;
/// whether none is left.
fn end_processes(uid: u32) -> bool {
    match reap::end_processes_of(uid) {
        Ok(0) => true,
        Ok(killed) => {
            tracing::info!(uid, killed, "killed what a job left running as its uid");
            true
        }
        Err(e) => {
            tracing::error!(uid, error = %e, "a job's uid may still run processes; it is kept out of the pool until the node restarts");
            false
        }
    }
}

/// Takes back from `uid` every job directory under `<data_dir>/units/` it still owns (an
/// earlier job's, not yet moved to the trash when that job's uid came free): the directory
/// is given to the node and closed to everyone else (mode 0700, whatever mode the earlier
/// job gave it), so the next job of `uid` cannot enter it, whatever its files. A directory
/// gone meanwhile is fine, and so is an entry of `units/` that is not a unit directory (the
/// store ignores such strays, and so does this).
///
/// # Errors
/// The first job directory of `uid` that could not be read or taken back.
fn reclaim_job_dirs(data_dir: &Path, uid: u32) -> std::io::Result<()> {
    let units = data_dir.join(crate::work::store::UNITS_DIR);
    let entries = match std::fs::read_dir(&units) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let job_dir = entry.path().join(crate::work::store::JOB_DIR);
        let meta = match job_dir.symlink_metadata() {
            Ok(meta) => meta,
            Err(e) if is_gone(&e) => continue,
            Err(e) => return Err(e),
        };
        if meta.uid() != uid {
            continue;
        }
        match take_back(&job_dir, &meta) {
            Ok(()) => {
                tracing::info!(uid, dir = %job_dir.display(), "took back an earlier job's directory from its uid")
            }
            Err(e) if is_gone(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether `e` means there is nothing at that path to take back.
fn is_gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

/// Gives one job directory to the node with mode 0700: through one descriptor opened
/// without following a link, so the owner and the mode change on the same directory; an
/// entry that is not a directory is only given to the node (`lchown`).
fn take_back(job_dir: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // SAFETY: geteuid and getegid cannot fail.
    let (node_uid, node_gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if !meta.is_dir() {
        return std::os::unix::fs::lchown(job_dir, Some(node_uid), Some(node_gid));
    }
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(job_dir)?;
    std::os::unix::fs::fchown(&dir, Some(node_uid), Some(node_gid))?;
    dir.set_permissions(std::fs::Permissions::from_mode(0o700))
}

/// How far [`clear_leftovers`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cleared {
    /// Nothing of the uid is left where another job of it could find it.
    All,
    /// An IPC object or an entry of the uid could be neither removed nor taken from it.
    NotAll,
    /// The sweep of the shared directories reached its bound before it looked everywhere.
    CutShort,
}

/// Removes what an earlier job of `uid` left outside its processes: its files in the
/// shared writable directories (`leftovers`; one that will not go is taken from the uid)
/// and its System V IPC objects (`ipc`). Only while no process runs as `uid`.
fn clear_leftovers(uid: u32) -> Cleared {
    let files = leftovers::remove_files_of(uid);
    if files != leftovers::Swept::default() {
        tracing::info!(
            uid,
            removed = files.removed,
            taken = files.taken,
            failed = files.failed,
            cut_short = files.cut_short,
            "cleared the files a job left in the shared directories"
        );
    }
    let ipc = match ipc::remove_objects_of(uid) {
        Ok(0) => true,
        Ok(removed) => {
            tracing::info!(uid, removed, "removed the System V IPC objects a job left");
            true
        }
        Err(e) => {
            tracing::error!(uid, error = %e, "System V IPC objects a job left may still be there");
            false
        }
    };
    cleared(&files, ipc)
}

/// What a sweep that did `files`, and an IPC removal that did (`ipc`) or did not finish,
/// came to.
fn cleared(files: &leftovers::Swept, ipc: bool) -> Cleared {
    if files.cut_short > 0 {
        Cleared::CutShort
    } else if !ipc || !files.is_complete() {
        Cleared::NotAll
    } else {
        Cleared::All
    }
}

/// The uids of `range` that a process runs as now (any of its real, effective, saved or
/// file-system uids), from `/proc/<pid>/status` (the owner of `/proc/<pid>` is root for a
/// process that made itself non-dumpable); a zombie that runs nothing (`reap::is_spent`)
/// does not count.
///
/// # Errors
/// `/proc` could not be listed: what runs is unknown, which is never "nothing".
pub(crate) fn uids_in_use(range: UidRange) -> std::io::Result<BTreeSet<u32>> {
    let mut busy = BTreeSet::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        if reap::is_spent(&status) {
            continue;
        }
        busy.extend(status_uids(&status).filter(|&u| range.contains(u)));
    }
    Ok(busy)
}

/// The ids of the `Uid:` line of a `/proc/<pid>/status`: real, effective, saved and file
/// system uid, in that order.
pub(crate) fn status_uids(status: &str) -> impl Iterator<Item = u32> + '_ {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .into_iter()
        .flat_map(str::split_whitespace)
        .filter_map(|n| n.parse().ok())
}

fn check_range(range: UidRange, node_uid: u32) -> Result<(), JobUsersError> {
    if range.contains(0) {
        return Err(JobUsersError::Root { range });
    }
    if range.contains(node_uid) {
        return Err(JobUsersError::NodeUid {
            range,
            uid: node_uid,
        });
    }
    if range.contains(reap::REAPER_UID) {
        return Err(JobUsersError::ReaperUid { range });
    }
    if range.first <= SYSTEMD_DYNAMIC_USERS.last && range.last >= SYSTEMD_DYNAMIC_USERS.first {
        return Err(JobUsersError::SystemdDynamic { range });
    }
    Ok(())
}

/// Refuses a non-root node (uid `uid`) whose `/proc/self/status` does not show every
/// needed capability both effective and ambient.
fn check_capabilities(uid: u32, status: &str) -> Result<(), JobUsersError> {
    let have = capability_set(status, "CapEff:") & capability_set(status, "CapAmb:");
    let missing: Vec<&str> = NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| have & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(JobUsersError::NoCapability {
            uid,
            missing: missing.join(", "),
        })
    }
}

/// The text of `path`; `None` when it does not exist (a kernel without user namespaces has
/// no `/proc/self/uid_map`); an empty text when it exists but cannot be read, so the
/// checks on it fail closed.
fn read_if_present(path: &str) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(_) => Some(String::new()),
    }
}

/// Refuses a node the reap helper could not become [`reap::REAPER_UID`] in: a user
/// namespace whose `uid_map` or `gid_map` (`INSIDE OUTSIDE COUNT` lines; `None`: no such
/// file, the kernel has no user namespaces, so every id is the host's) does not map it, or
/// whose `setgroups` file says `deny` (the helper drops its groups first). Any of these
/// fails every helper: no job's leftovers could be killed and every uid would stay held
/// after its first job.
fn check_reaper_ids(
    uid_map: Option<&str>,
    gid_map: Option<&str>,
    setgroups: Option<&str>,
) -> Result<(), JobUsersError> {
    for (map, file) in [
        (uid_map, "/proc/self/uid_map"),
        (gid_map, "/proc/self/gid_map"),
    ] {
        if map.is_some_and(|map| !maps_id(map, reap::REAPER_UID)) {
            return Err(JobUsersError::ReaperUnmapped { file });
        }
    }
    if setgroups.is_some_and(|text| text.trim() == "deny") {
        return Err(JobUsersError::SetgroupsDenied);
    }
    Ok(())
}

/// Refuses a node that cannot keep its jobs from the kernel keyrings: `available` is
/// `keyring::check_available`'s answer, what is missing when it cannot.
fn check_keyring_filter(available: Result<(), String>) -> Result<(), JobUsersError> {
    available.map_err(|missing| JobUsersError::NoKeyringFilter { missing })
}

/// Whether an id map (`/proc/self/uid_map` or `gid_map`) maps `id`.
fn maps_id(map: &str, id: u32) -> bool {
    let id = u64::from(id);
    map.lines().any(|line| {
        let mut fields = line.split_whitespace().map(str::parse::<u64>);
        match (fields.next(), fields.next(), fields.next()) {
            (Some(Ok(inside)), Some(Ok(_)), Some(Ok(count))) => {
                inside <= id && id < inside.saturating_add(count)
            }
            _ => false,
        }
    })
}

/// Refuses a host where [`reap::REAPER_UID`] belongs to someone, on the host whose root is
/// `root`: an account (the files or NSS, looked up with `lookup`) or a subordinate range
/// (a user's rootless containers could run as it). A process running as it could stop
/// the helper (`kill -STOP -1` reaches it through their shared real uid), so every later
/// reap would wait on it and every job's uid would stay held.
fn check_reaper_free(
    root: &Path,
    lookup: impl FnMut(u32) -> accounts::Lookup + Send + 'static,
) -> Result<(), JobUsersError> {
    let reaper = UidRange {
        first: reap::REAPER_UID,
        last: reap::REAPER_UID,
    };
    match accounts::check_host_accounts(reaper, root, lookup) {
        Ok(()) => Ok(()),
        Err(JobUsersError::Taken {
            what, name, file, ..
        }) => Err(JobUsersError::ReaperTaken {
            holder: format!("{what} \"{name}\" in {}", file.display()),
        }),
        Err(JobUsersError::Subordinate { owner, file, .. }) => Err(JobUsersError::ReaperTaken {
            holder: format!("a subordinate id {} gives \"{owner}\"", file.display()),
        }),
        Err(JobUsersError::NssTaken {
            what,
            name,
            sources,
            ..
        }) => Err(JobUsersError::ReaperTaken {
            holder: format!("{what} \"{name}\" to NSS ({sources})"),
        }),
        Err(other) => Err(other),
    }
}

/// Refuses a node that is process 1 (`pid`), a container's init: it does not reap the
/// orphans re-parented to it, so each process a job left would stay a zombie for good once
/// the reap killed it (a spent zombie no longer holds its uid, but each holds a pid).
fn check_not_init(pid: u32) -> Result<(), JobUsersError> {
    if pid == 1 {
        Err(JobUsersError::NodeIsInit)
    } else {
        Ok(())
    }
}

/// `CAP_SYS_ADMIN`'s bit: with it, the node's programs may enter IPC namespaces of their
/// own.
const CAP_SYS_ADMIN: u32 = 21;

/// `CAP_SYS_PTRACE`'s bit: with it, `hidepid` hides nothing from the node.
const CAP_SYS_PTRACE: u32 = 19;

/// Refuses a node that `/proc`'s `hidepid` (from `/proc/self/mountinfo`, `mountinfo`) keeps
/// from seeing other users' processes: without `CAP_SYS_PTRACE` in its
/// `/proc/self/status` (`status`), a job's leftover processes would be invisible to it.
fn check_proc_visible(mountinfo: &str, status: &str) -> Result<(), JobUsersError> {
    let Some(option) = proc_hidepid(mountinfo) else {
        return Ok(());
    };
    if capability_set(status, "CapEff:") & (1 << CAP_SYS_PTRACE) != 0 {
        return Ok(());
    }
    Err(JobUsersError::ProcHidden { option })
}

/// The `hidepid=` option of the `/proc` mount in `mountinfo`, unless it hides nothing
/// (`0`, `off`). Each line: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] -
/// FSTYPE SOURCE SUPER_OPTIONS` (proc(5)); procfs's own options (hidepid) are the super
/// options.
fn proc_hidepid(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let (mount, sup) = line.split_once(" - ")?;
        if mount.split_whitespace().nth(4) != Some("/proc") {
            return None;
        }
        let mut sup = sup.split_whitespace();
        if sup.next() != Some("proc") {
            return None;
        }
        let options = sup.nth(1)?;
        options
            .split(',')
            .find(|o| o.starts_with("hidepid=") && !matches!(*o, "hidepid=0" | "hidepid=off"))
            .map(str::to_owned)
    })
}

/// A capability set (`CapEff:`, `CapAmb:`...) of a `/proc/<pid>/status`, 0 when absent.
fn capability_set(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Refuses a host whose `fs.protected_hardlinks` (the sysctl file's text, `None`: not
/// readable, left to the kernel's own default) is 0.
fn check_hardlinks(sysctl: Option<&str>) -> Result<(), JobUsersError> {
    match sysctl.map(str::trim) {
        Some("0") => Err(JobUsersError::HardlinksUnprotected),
        _ => Ok(()),
    }
}

/// Refuses a control socket mode that gives other users (job users among them) any right:
/// a job user's gid is its uid, with no supplementary groups, so only the bits for others
/// reach it.
///
/// # Errors
/// [`JobUsersError::ControlSocketOpen`].
pub fn check_control_permissions(mode: u32) -> Result<(), JobUsersError> {
    match mode & 0o007 {
        0 => Ok(()),
        _ => Err(JobUsersError::ControlSocketOpen { mode }),
    }
}

/// Refuses a data dir one of whose parents other users cannot traverse.
fn check_traversable(data_dir: &Path) -> Result<(), JobUsersError> {
    for dir in data_dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let mode = meta.mode() & 0o7777;
        if mode & 0o001 == 0 {
            return Err(JobUsersError::Untraversable {
                path: dir.to_owned(),
                mode,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "users_tests.rs"]
mod tests;
