//! Who else on the host uses the uids and gids a `[work] job-users` range would give jobs:
//!
//! - the users of `/etc/passwd` and the groups of `/etc/group`;
//! - the subordinate ids of `/etc/subuid` and `/etc/subgid` (`name:start:count`): user
//!   namespaces map them, so a user's rootless containers run as them and could reach a
//!   job's files and signal its programs;
//! - the accounts NSS knows from sources other than the files (LDAP, sssd, systemd's
//!   userdb): looked up uid by uid (`getpwuid_r`, `getgrgid_r`), which is exact; a remote
//!   directory can answer slowly, so the lookups stop at [`NSS_BUDGET`] and the node
//!   refuses the range it could not check (smaller ranges check in time). Where
//!   `/etc/nsswitch.conf` names only `files` for both databases, the files said it all and
//!   nothing is looked up.
//!
//! Parsing is pure; the lookups and the clock come in as functions, so the checks are
//! tested on files under a temporary root and a counted clock.

use std::ffi::CStr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::users::{JobUsersError, UidRange};

/// How long the node may spend at start looking a range's ids up in NSS. About 85 µs per
/// uid and gid here (`files systemd`, no systemd running): a thousand uids take 0.2 s, the
/// largest range (65536) about 11 s, which is too long for a start and longer still on a
/// slow directory.
pub(crate) const NSS_BUDGET: Duration = Duration::from_secs(5);

/// An example range that overlaps no usual allocation: above Debian's default subordinate
/// ids (100000 + 65536·k, up to 600165535) and systemd's container range (524288 to
/// 1879048191), below the ids that are negative as 32-bit signed numbers.
pub(crate) const EXAMPLE_RANGE: &str = "2000000000-2000000999";

/// Refuses a range that overlaps an account of the host whose root is `root`: a user of
/// `etc/passwd`, a group of `etc/group`, a subordinate range of `etc/subuid` or
/// `etc/subgid`, and (when `etc/nsswitch.conf` names sources besides the files) an account
/// `lookup` finds, within [`NSS_BUDGET`].
///
/// # Errors
/// [`JobUsersError`] naming the first overlap, or NSS too slow to check the range.
pub(crate) fn check_host_accounts(
    range: UidRange,
    root: &Path,
    lookup: impl FnMut(u32) -> Lookup + Send + 'static,
) -> Result<(), JobUsersError> {
    let read = |file: &str| std::fs::read_to_string(root.join(file)).unwrap_or_default();
    for (file, what) in [("etc/passwd", "user"), ("etc/group", "group")] {
        check_accounts(range, &read(file), &Path::new("/").join(file), what)?;
    }
    for file in ["etc/subuid", "etc/subgid"] {
        check_subordinate(range, &read(file), &Path::new("/").join(file))?;
    }
    let nsswitch = read("etc/nsswitch.conf");
    let passwd = nss_sources(&nsswitch, "passwd");
    let group = nss_sources(&nsswitch, "group");
    if !needs_lookups(&passwd, &group) {
        return Ok(());
    }
    let mut sources = passwd;
    for source in group {
        if !sources.contains(&source) {
            sources.push(source);
        }
    }
    check_nss_bounded(range, &sources.join(" "), NSS_BUDGET, lookup)
}

/// [`check_nss`] on a thread of its own, on the real clock, waited for at most `budget`:
/// one lookup can block on an unreachable directory far past the budget, which checking
/// the clock between lookups cannot bound. A lookup still blocked then is left behind
/// (its thread ends when it returns: the clock has passed the budget by then).
///
/// # Errors
/// As [`check_nss`]; [`JobUsersError::NssSlow`] also when no thread could be started.
pub(crate) fn check_nss_bounded(
    range: UidRange,
    sources: &str,
    budget: Duration,
    mut lookup: impl FnMut(u32) -> Lookup + Send + 'static,
) -> Result<(), JobUsersError> {
    let checked = Arc::new(AtomicU64::new(0));
    let (done, result) = mpsc::sync_channel(1);
    let (counted, names) = (Arc::clone(&checked), sources.to_owned());
    let start = Instant::now();
    let spawned = std::thread::Builder::new()
        .name("warren-nss-check".into())
        .spawn(move || {
            let lookup = |id| {
                let account = lookup(id);
                counted.fetch_add(1, Ordering::Relaxed);
                account
            };
            let _ = done.send(check_nss(range, &names, budget, lookup, || start.elapsed()));
        });
    let answer = match spawned {
        Ok(_) => result.recv_timeout(budget).ok(),
        Err(_) => None,
    };
    answer.unwrap_or_else(|| {
        Err(JobUsersError::NssSlow {
            range,
            checked: checked.load(Ordering::Relaxed),
            budget,
            sources: sources.to_owned(),
        })
    })
}

/// Refuses a range that holds an id of `text` (an `/etc/passwd` or `/etc/group`: the id is
/// the third field).
pub(crate) fn check_accounts(
    range: UidRange,
    text: &str,
    file: &Path,
    what: &'static str,
) -> Result<(), JobUsersError> {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut fields = line.split(':');
        let (Some(name), Some(id)) = (fields.next(), fields.nth(1)) else {
            continue;
        };
        if let Ok(id) = id.parse::<u32>()
            && range.contains(id)
        {
            return Err(JobUsersError::Taken {
                range,
                id,
                what,
                name: name.to_owned(),
                file: file.to_owned(),
            });
        }
    }
    Ok(())
}

/// Refuses a range overlapping a subordinate id range of `text` (an `/etc/subuid` or
/// `/etc/subgid` named `file`: `name:start:count` lines).
///
/// # Errors
/// [`JobUsersError::Subordinate`] naming the first overlap.
pub(crate) fn check_subordinate(
    range: UidRange,
    text: &str,
    file: &Path,
) -> Result<(), JobUsersError> {
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split(':');
        let (Some(owner), Some(start), Some(count)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Ok(start), Ok(count)) = (start.trim().parse::<u64>(), count.trim().parse::<u64>())
        else {
            continue;
        };
        if count == 0 {
            continue;
        }
        // A count past the largest id covers every id from `start` up (no overflow).
        let end = start.saturating_add(count - 1);
        if start <= u64::from(range.last) && end >= u64::from(range.first) {
            return Err(JobUsersError::Subordinate {
                range,
                owner: owner.to_owned(),
                first: start,
                last: end,
                file: file.to_owned(),
            });
        }
    }
    Ok(())
}

/// The sources `/etc/nsswitch.conf` (`text`) lists for `database` (`passwd`, `group`),
/// without their `[STATUS=action]` items; `files` when the database is not listed (glibc's
/// default is `files` then).
pub(crate) fn nss_sources(text: &str, database: &str) -> Vec<String> {
    let listed = text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let (name, sources) = line.split_once(':')?;
        (name.trim() == database).then(|| {
            sources
                .split_whitespace()
                .filter(|s| !s.starts_with('['))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
    });
    match listed {
        Some(sources) if !sources.is_empty() => sources,
        _ => vec!["files".to_owned()],
    }
}

/// Whether NSS could know accounts the files do not: a source other than `files`.
pub(crate) fn needs_lookups(passwd: &[String], group: &[String]) -> bool {
    passwd.iter().chain(group).any(|s| s != "files")
}

/// What NSS says an id is: `("user" | "group", name)`.
pub(crate) type Account = (&'static str, String);

/// One NSS lookup's answer: the account, none (`Ok(None)`: the sources answered that no
/// account has the id), or the `errno` of a lookup that failed (a directory that could not
/// be reached): then whether an account has the id is unknown, which is never "none".
pub(crate) type Lookup = Result<Option<Account>, i32>;

/// Looks every id of `range` up with `lookup` until one is an account (refused), a lookup
/// fails or `elapsed()` passes `budget` (both refused as unchecked); `sources` names NSS's
/// sources in the errors.
///
/// # Errors
/// [`JobUsersError::NssTaken`], [`JobUsersError::NssFailed`] or [`JobUsersError::NssSlow`].
pub(crate) fn check_nss(
    range: UidRange,
    sources: &str,
    budget: Duration,
    mut lookup: impl FnMut(u32) -> Lookup,
    mut elapsed: impl FnMut() -> Duration,
) -> Result<(), JobUsersError> {
    for (checked, id) in (range.first..=range.last).enumerate() {
        if elapsed() > budget {
            return Err(JobUsersError::NssSlow {
                range,
                checked: checked as u64,
                budget,
                sources: sources.to_owned(),
            });
        }
        match lookup(id) {
            Ok(None) => {}
            Ok(Some((what, name))) => {
                return Err(JobUsersError::NssTaken {
                    range,
                    id,
                    what,
                    name,
                    sources: sources.to_owned(),
                });
            }
            Err(errno) => {
                return Err(JobUsersError::NssFailed {
                    range,
                    id,
                    error: std::io::Error::from_raw_os_error(errno).to_string(),
                    sources: sources.to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// What NSS knows `id` as: a user, else a group.
pub(crate) fn nss_account(id: u32) -> Lookup {
    if let Some(name) = user_name(id)? {
        return Ok(Some(("user", name)));
    }
    Ok(group_name(id)?.map(|name| ("group", name)))
}

/// The largest buffer a lookup grows to (a group with very many members).
const MAX_LOOKUP_BUFFER: usize = 1 << 20;

fn user_name(uid: u32) -> Result<Option<String>, i32> {
    lookup_name(|buf| {
        // SAFETY: plain C structs, filled by getpwuid_r.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: getpwuid_r writes into `entry` and `buf` (of the length given) only.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &raw mut entry,
                buf.as_mut_ptr(),
                buf.len(),
                &raw mut found,
            )
        };
        (rc, name_if_found(found.is_null(), entry.pw_name))
    })
}

fn group_name(gid: u32) -> Result<Option<String>, i32> {
    lookup_name(|buf| {
        // SAFETY: plain C structs, filled by getgrgid_r.
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: getgrgid_r writes into `entry` and `buf` (of the length given) only.
        let rc = unsafe {
            libc::getgrgid_r(
                gid,
                &raw mut entry,
                buf.as_mut_ptr(),
                buf.len(),
                &raw mut found,
            )
        };
        (rc, name_if_found(found.is_null(), entry.gr_name))
    })
}

/// The entry's name, or null when the lookup found no entry.
fn name_if_found(not_found: bool, name: *mut libc::c_char) -> *const libc::c_char {
    if not_found {
        std::ptr::null()
    } else {
        name.cast_const()
    }
}

/// Runs one `get*id_r` lookup (`lookup` gets the buffer and gives back the call's result and
/// the entry's name, which points into that buffer, or null), growing the buffer while the
/// lookup says it is too small, up to [`MAX_LOOKUP_BUFFER`].
///
/// # Errors
/// The call's error number: a lookup that failed (`ENOENT` and the other "no such entry"
/// answers of getpwuid_r(3) are `Ok(None)`), or `ERANGE` from a buffer at its largest.
fn lookup_name(
    mut lookup: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, *const libc::c_char),
) -> Result<Option<String>, i32> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        let (rc, name) = lookup(&mut buf);
        if rc == libc::ERANGE && buf.len() < MAX_LOOKUP_BUFFER {
            let grown = buf.len() * 2;
            buf.resize(grown, 0);
            continue;
        }
        if is_no_entry(rc) {
            return Ok(None);
        }
        if rc != 0 {
            return Err(rc);
        }
        if name.is_null() {
            return Ok(None);
        }
        // SAFETY: `name` points into `buf`, unchanged since the lookup NUL-terminated it.
        return Ok(Some(
            unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned(),
        ));
    }
}

/// Whether a `get*id_r` result means only "no such entry" besides 0 with no entry: `ENOENT`
/// (getpwuid_r(3) lists more, ESRCH, EBADF, EPERM, as what some systems set; they can as
/// well mean a failing source, so they fail the check closed).
fn is_no_entry(rc: libc::c_int) -> bool {
    rc == libc::ENOENT
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn range(first: u32, last: u32) -> UidRange {
        UidRange { first, last }
    }

    #[test]
    fn a_range_overlapping_a_subordinate_range_is_refused_naming_its_owner() {
        let subuid = "# rootless containers\nalice:100000:65536\nbob:165536:65536\n";
        let file = Path::new("/etc/subuid");
        let err = check_subordinate(range(200_000, 200_999), subuid, file).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "200000-200999 overlaps 165536-231071, the subordinate ids /etc/subuid gives \"bob\": that user's user namespaces (rootless containers) run as them and could reach a job's files and signal its programs; choose a range outside every range of /etc/subuid and /etc/subgid, for example {EXAMPLE_RANGE}"
            )
        );
        // Touching either end is an overlap; just past them is not.
        assert!(check_subordinate(range(231_071, 231_100), subuid, file).is_err());
        assert!(check_subordinate(range(90_000, 100_000), subuid, file).is_err());
        assert_eq!(
            check_subordinate(range(231_072, 231_100), subuid, file),
            Ok(())
        );
        assert_eq!(check_subordinate(range(1, 99_999), subuid, file), Ok(()));
        assert_eq!(
            check_subordinate(range(5, 9), "broken\ncarol:x:y\ndave:5:0\n", file),
            Ok(())
        );
    }

    #[test]
    fn the_example_range_overlaps_no_default_debian_subordinate_allocation() {
        let example: UidRange = EXAMPLE_RANGE.parse().unwrap();
        // useradd's defaults (SUB_UID_MIN 100000, SUB_UID_MAX 600100000, COUNT 65536):
        // the last block a user can get starts at most at SUB_UID_MAX.
        let mut text = String::new();
        let mut start = 100_000u64;
        while start <= 600_100_000 {
            text.push_str(&format!("u{start}:{start}:65536\n"));
            start += 65_536;
        }
        assert_eq!(
            check_subordinate(example, &text, Path::new("/etc/subuid")),
            Ok(())
        );
    }

    #[test]
    fn nsswitch_sources_are_read_without_actions_and_default_to_files() {
        let conf =
            "# comment\npasswd:         files systemd\ngroup: files [SUCCESS=merge] sss # x\n";
        assert_eq!(nss_sources(conf, "passwd"), ["files", "systemd"]);
        assert_eq!(nss_sources(conf, "group"), ["files", "sss"]);
        assert_eq!(nss_sources("", "passwd"), ["files"]);
        let files = vec!["files".to_owned()];
        assert!(!needs_lookups(&files, &files));
        assert!(needs_lookups(&files, &nss_sources(conf, "group")));
    }

    #[test]
    fn an_id_nss_knows_is_refused_naming_the_account_and_the_sources() {
        let lookup = |id: u32| Ok((id == 5_005).then(|| ("user", "ldap-carol".to_owned())));
        let err = check_nss(range(5_000, 5_010), "files sss", NSS_BUDGET, lookup, || {
            Duration::ZERO
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "5000-5010 holds uid/gid 5005, which NSS (files sss) knows as user \"ldap-carol\": a job running as it would get that user's files and processes; choose uids and gids no account uses, for example {EXAMPLE_RANGE}"
            )
        );
        assert_eq!(
            check_nss(range(5_006, 5_010), "sss", NSS_BUDGET, lookup, || {
                Duration::ZERO
            }),
            Ok(())
        );
    }

    #[test]
    fn lookups_past_the_budget_refuse_the_range_saying_how_far_they_got() {
        // A directory answering in 1 ms per id, on a counted clock: 10 ids in a 10 ms budget.
        let clock = Cell::new(Duration::ZERO);
        let lookup = |_| {
            clock.set(clock.get() + Duration::from_millis(1));
            Ok(None)
        };
        let err = check_nss(
            range(7_000, 7_999),
            "ldap",
            Duration::from_millis(10),
            lookup,
            || clock.get(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            JobUsersError::NssSlow {
                range: range(7_000, 7_999),
                checked: 11,
                budget: Duration::from_millis(10),
                sources: "ldap".to_owned(),
            }
        );
        assert!(
            err.to_string().starts_with(
                "checking 7000-7999 against the accounts NSS (ldap) knows took over 10ms (11 of 1000 ids looked up):"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_subordinate_line_with_a_huge_count_is_refused_not_overflowed() {
        let text = "mallory:1999999000:18446744073709551615\nbob:100000:65536\n";
        let err = check_subordinate(
            range(2_000_000_000, 2_000_000_999),
            text,
            Path::new("/etc/subuid"),
        )
        .unwrap_err();
        assert!(
            matches!(&err, JobUsersError::Subordinate { owner, last: u64::MAX, .. } if owner == "mallory"),
            "{err}"
        );
        let above = "mallory:2000001000:18446744073709551615\n";
        assert_eq!(
            check_subordinate(
                range(2_000_000_000, 2_000_000_999),
                above,
                Path::new("/etc/subuid")
            ),
            Ok(())
        );
    }

    #[test]
    fn a_lookup_that_blocks_refuses_the_range_within_the_budget() {
        // A directory that never answers: the first lookup blocks far past the budget.
        let lookup = |_| {
            std::thread::sleep(Duration::from_secs(60));
            Ok(None)
        };
        let budget = Duration::from_millis(200);
        let start = Instant::now();
        let err = check_nss_bounded(range(7_000, 7_999), "ldap", budget, lookup).unwrap_err();
        let took = start.elapsed();
        assert_eq!(
            err,
            JobUsersError::NssSlow {
                range: range(7_000, 7_999),
                checked: 0,
                budget,
                sources: "ldap".to_owned(),
            }
        );
        assert!(took < budget + Duration::from_secs(1), "{took:?}");
    }

    #[test]
    fn lookups_on_their_thread_still_find_an_account_and_pass_a_free_range() {
        let lookup = |id: u32| Ok((id == 5_005).then(|| ("group", "ldap-ops".to_owned())));
        let taken = check_nss_bounded(range(5_000, 5_010), "sss", NSS_BUDGET, lookup);
        assert!(
            matches!(taken, Err(JobUsersError::NssTaken { id: 5_005, .. })),
            "{taken:?}"
        );
        assert_eq!(
            check_nss_bounded(range(5_006, 5_010), "sss", NSS_BUDGET, lookup),
            Ok(())
        );
    }

    #[test]
    fn the_real_lookup_finds_root_and_not_an_unused_id() {
        assert_eq!(nss_account(0).map(|a| a.map(|a| a.0)), Ok(Some("user")));
        assert_eq!(nss_account(3_999_999), Ok(None));
    }

    #[test]
    fn a_lookup_that_fails_refuses_the_range_as_unchecked() {
        // An unreachable directory: the lookup fails, which says nothing about the id.
        let lookup = |id: u32| {
            if id == 5_003 {
                Err(libc::EIO)
            } else {
                Ok(None)
            }
        };
        let err = check_nss(
            range(5_000, 5_010),
            "files ldap",
            NSS_BUDGET,
            lookup,
            || Duration::ZERO,
        )
        .unwrap_err();
        assert!(
            matches!(&err, JobUsersError::NssFailed { id: 5_003, .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "looking up uid/gid 5003 of 5000-5010 in NSS (files ldap) failed ({}): whether an account uses it is unknown; make NSS answer (is the directory reachable?) and start again, or remove [work] job-users",
                std::io::Error::from_raw_os_error(libc::EIO)
            )
        );
    }
}
