use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::time::{Duration, Instant};

use super::*;

fn range(first: u32, last: u32) -> UidRange {
    UidRange { first, last }
}

fn pool(first: u32, last: u32) -> JobUsers {
    JobUsers::unchecked(range(first, last), PathBuf::from("/nonexistent"))
}

/// Waits until the pool no longer holds `uid` (a handle dropped on another thread gives it
/// back there).
fn wait_returned(users: &JobUsers, uid: u32) {
    let until = Instant::now() + Duration::from_secs(10);
    while users.held().contains(&uid) {
        assert!(Instant::now() < until, "uid {uid} never came back");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_range_is_first_dash_last_and_bad_ones_say_how_to_write_it() {
    assert_eq!(
        "200000-200009".parse::<UidRange>(),
        Ok(range(200_000, 200_009))
    );
    let text = |s: &str| s.parse::<UidRange>().unwrap_err().to_string();
    assert_eq!(
        text("200000"),
        "\"200000\" is not a uid range: write FIRST-LAST, for example \"2000000000-2000000999\""
    );
    assert_eq!(
        text("5-3"),
        "5-3 is empty: the first uid must not be above the last"
    );
    assert_eq!(
        text("1-100000"),
        "1-100000 holds more than 65536 uids; reserve fewer"
    );
}

#[test]
fn a_range_with_root_or_the_nodes_uid_is_refused() {
    assert_eq!(
        check_range(range(0, 10), 1000).unwrap_err().to_string(),
        "0-10 holds uid 0 (root): jobs would run as root; choose uids above 0"
    );
    assert_eq!(
        check_range(range(900, 1100), 1000).unwrap_err().to_string(),
        "900-1100 holds the node's own uid 1000: jobs could reach everything the node can; choose uids no one uses"
    );
    assert_eq!(check_range(range(2000, 2100), 1000), Ok(()));
}

#[test]
fn a_range_holding_the_reapers_uid_or_systemds_dynamic_users_is_refused() {
    let reaper = check_range(range(u32::MAX - 10, u32::MAX - 1), 0).unwrap_err();
    assert!(
        matches!(reaper, JobUsersError::ReaperUid { .. }),
        "{reaper}"
    );
    for (first, last) in [(61_000, 61_184), (65_519, 70_000), (62_000, 62_010)] {
        let dynamic = check_range(range(first, last), 0).unwrap_err();
        assert!(
            dynamic.to_string().contains("61184-65519")
                && dynamic.to_string().contains("DynamicUser="),
            "{dynamic}"
        );
    }
    assert_eq!(check_range(range(60_000, 61_183), 0), Ok(()));
    assert_eq!(check_range(range(65_520, 66_000), 0), Ok(()));
}

#[test]
fn a_user_namespace_that_does_not_map_the_reapers_uid_is_refused() {
    // The initial namespace maps 0-4294967294; a container's often only 0-65535.
    let initial = "         0          0 4294967295\n";
    assert_eq!(
        check_reaper_ids(Some(initial), Some(initial), Some("allow\n")),
        Ok(())
    );
    let container = "0 100000 65536\n";
    assert_eq!(
        check_reaper_ids(Some(container), Some(initial), None),
        Err(JobUsersError::ReaperUnmapped {
            file: "/proc/self/uid_map"
        })
    );
    let mapped = "0 100000 65536\n4294967294 1000 1\n";
    assert_eq!(check_reaper_ids(Some(mapped), Some(mapped), None), Ok(()));
    // An unreadable map (read as empty) is refused, not taken as mapping everything.
    assert_eq!(
        check_reaper_ids(Some(""), Some(initial), None),
        Err(JobUsersError::ReaperUnmapped {
            file: "/proc/self/uid_map"
        })
    );
}

#[test]
fn a_namespace_whose_gid_map_lacks_the_reaper_or_that_denies_setgroups_is_refused() {
    // The helper takes gid 4294967294 and drops its groups: either failing failed every
    // reap, and the uid_map check alone let such a node start.
    let initial = "0 0 4294967295\n";
    let err = check_reaper_ids(Some(initial), Some("0 100000 65536\n"), None).unwrap_err();
    assert_eq!(
        err,
        JobUsersError::ReaperUnmapped {
            file: "/proc/self/gid_map"
        }
    );
    assert!(err.to_string().contains("(/proc/self/gid_map)"), "{err}");
    let denied = check_reaper_ids(Some(initial), Some(initial), Some("deny\n")).unwrap_err();
    assert_eq!(denied, JobUsersError::SetgroupsDenied);
    assert!(denied.to_string().contains("setgroups"), "{denied}");
}

#[test]
fn a_kernel_without_user_namespaces_is_not_refused_for_lacking_id_maps() {
    // No /proc/self/uid_map at all: every id is the host's.
    assert_eq!(check_reaper_ids(None, None, None), Ok(()));
}

#[test]
fn a_host_where_the_reapers_uid_is_an_account_or_subordinate_is_refused() {
    let nobody = |_| Ok(None);
    let files = "passwd: files\ngroup: files\n";
    let account = host_root(&[
        ("etc/passwd", "ghost:x:4294967294:4294967294::/:/bin/sh\n"),
        ("etc/nsswitch.conf", files),
    ]);
    let err = check_reaper_free(account.path(), nobody).unwrap_err();
    assert_eq!(
        err.to_string(),
        "uid/gid 4294967294 is user \"ghost\" in /etc/passwd, but the node keeps it for the helper that kills what a job leaves running: a process running as it could stop that helper and keep every job's uid from coming back; remove that account or range, or remove [work] job-users"
    );
    // A subordinate range running to the top of the id space (a huge count) covers it.
    let subordinate = host_root(&[
        ("etc/subuid", "mallory:4000000000:999999999\n"),
        ("etc/nsswitch.conf", files),
    ]);
    assert!(matches!(
        check_reaper_free(subordinate.path(), nobody),
        Err(JobUsersError::ReaperTaken { holder }) if holder.contains("\"mallory\"")
    ));
    let ldap = host_root(&[("etc/nsswitch.conf", "passwd: files ldap\ngroup: files\n")]);
    let known = |id: u32| Ok((id == 4_294_967_294).then(|| ("user", "ldap-x".to_owned())));
    assert!(matches!(
        check_reaper_free(ldap.path(), known),
        Err(JobUsersError::ReaperTaken { holder }) if holder.contains("ldap-x")
    ));
    let clean = host_root(&[
        ("etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
        ("etc/subuid", "alice:100000:65536\n"),
        ("etc/nsswitch.conf", files),
    ]);
    assert_eq!(check_reaper_free(clean.path(), nobody), Ok(()));
}

#[test]
fn a_node_running_as_process_1_is_refused() {
    let err = check_not_init(1).unwrap_err();
    assert_eq!(err, JobUsersError::NodeIsInit);
    assert!(err.to_string().contains("docker run --init"), "{err}");
    assert_eq!(check_not_init(4_321), Ok(()));
}

#[test]
fn a_node_that_cannot_install_the_keyring_filter_is_refused_saying_what_is_missing() {
    let missing = "the kernel takes no seccomp filter returning an errno (Invalid argument)";
    let err = check_keyring_filter(Err(missing.to_owned())).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("add_key, keyctl, request_key")
            && text.contains(missing)
            && text.contains("CONFIG_SECCOMP_FILTER")
            && text.contains("or remove [work] job-users"),
        "{text}"
    );
    // This host (the suite's) can, on a build with a filter.
    if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        assert_eq!(check_keyring_filter(keyring::check_available()), Ok(()));
    }
}

#[test]
fn a_proc_mounted_with_hidepid_is_refused_unless_the_node_has_cap_sys_ptrace() {
    let mountinfo = |options: &str| {
        format!(
            "22 28 0:21 / /sys rw,nosuid - sysfs sysfs rw\n\
             24 28 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc {options}\n"
        )
    };
    let without = "CapEff:\t0000000000000000\n";
    let with = "CapEff:\t0000000000080000\n";
    let hidden = check_proc_visible(&mountinfo("rw,hidepid=invisible"), without).unwrap_err();
    assert_eq!(
        hidden,
        JobUsersError::ProcHidden {
            option: "hidepid=invisible".into()
        }
    );
    assert!(hidden.to_string().contains("CAP_SYS_PTRACE"), "{hidden}");
    assert!(check_proc_visible(&mountinfo("rw,hidepid=2"), without).is_err());
    assert_eq!(
        check_proc_visible(&mountinfo("rw,hidepid=invisible"), with),
        Ok(())
    );
    assert_eq!(check_proc_visible(&mountinfo("rw"), without), Ok(()));
    assert_eq!(
        check_proc_visible(&mountinfo("rw,hidepid=0"), without),
        Ok(())
    );
    // hidepid on another procfs mount (a container's) is not the node's /proc.
    let elsewhere = "30 28 0:30 / /srv/c/proc rw - proc proc rw,hidepid=2\n";
    assert_eq!(check_proc_visible(elsewhere, without), Ok(()));
}

#[test]
fn a_range_overlapping_an_account_is_refused_naming_it() {
    let passwd =
        "# comment\nroot:x:0:0:root:/root:/bin/bash\nalice:x:1001:1001::/home/alice:/bin/sh\n";
    let err = accounts::check_accounts(range(1000, 1010), passwd, Path::new("/etc/passwd"), "user")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "1000-1010 holds uid/gid 1001, which is user \"alice\" in /etc/passwd: a job running as it would get that user's files and processes; choose uids and gids no account uses, for example 2000000000-2000000999"
    );
    assert_eq!(
        accounts::check_accounts(range(2000, 2010), passwd, Path::new("/etc/passwd"), "user"),
        Ok(())
    );
}

#[test]
fn a_non_root_node_without_ambient_capabilities_is_told_what_it_lacks() {
    // Every needed capability effective, but only CAP_CHOWN and CAP_KILL ambient.
    let status = "Name:\tx\nCapEff:\t00000000000000eb\nCapAmb:\t0000000000000021\n";
    let err = check_capabilities(1000, status).unwrap_err().to_string();
    assert!(
        err.starts_with("the node runs as uid 1000 without CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_SETGID, CAP_SETUID: run it as root, or give it"),
        "{err}"
    );
    let all = "CapEff:\t00000000000000eb\nCapAmb:\t00000000000000eb\n";
    assert_eq!(check_capabilities(1000, all), Ok(()));
}

#[test]
fn a_data_dir_under_a_closed_directory_is_refused() {
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = top.path().join("data");
    let err = check_traversable(&data).unwrap_err().to_string();
    assert!(
        err.contains("(mode 0700) cannot be traversed by other users"),
        "{err}"
    );
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    assert_eq!(check_traversable(&data), Ok(()));
}

#[test]
fn concurrent_jobs_never_share_a_uid_and_the_least_recently_used_comes_first() {
    let users = pool(3_900_000, 3_900_002);
    let a = users.take().unwrap();
    let b = users.take().unwrap();
    let c = users.take().unwrap();
    let mut uids = vec![a.uid(), b.uid(), c.uid()];
    uids.dedup();
    assert_eq!(uids, vec![3_900_000, 3_900_001, 3_900_002]);
    assert!(users.take().is_none(), "every uid is held");
    let (first, second) = (b.uid(), a.uid());
    drop(b);
    wait_returned(&users, first);
    drop(a);
    wait_returned(&users, second);
    let again = users.take().unwrap();
    assert_eq!(again.uid(), first, "returned first, handed out first");
    assert_eq!(users.take().unwrap().uid(), second);
}

#[test]
fn a_clone_of_a_jobs_handle_keeps_its_uid_held() {
    let users = pool(3_900_010, 3_900_010);
    let job = users.take().unwrap();
    let watcher = job.clone();
    drop(job);
    assert_eq!(users.held(), vec![3_900_010], "a watcher still holds it");
    assert!(users.take().is_none());
    drop(watcher);
    wait_returned(&users, 3_900_010);
    assert_eq!(users.take().map(|u| u.uid()), Some(3_900_010));
}

#[test]
fn a_uid_a_process_still_runs_as_is_not_handed_out() {
    let users = pool(3_900_020, 3_900_021);
    // A daemon a finished job left behind, still running as the first uid.
    let mut left = std::process::Command::new("sleep")
        .arg("30")
        .uid(3_900_020)
        .gid(3_900_020)
        .spawn()
        .expect("tests run as root: start a process as another uid");
    let held = users.take();
    let first = held.as_ref().map(JobUser::uid);
    let second = users.take().map(|u| u.uid());
    let alive = left.try_wait().unwrap();
    let busy = uids_in_use(range(3_900_020, 3_900_021)).unwrap();
    assert_eq!(
        (first, second),
        (Some(3_900_021), None),
        "the busy uid is skipped (left: {alive:?}, busy now: {busy:?})"
    );
    left.kill().unwrap();
    left.wait().unwrap();
    assert_eq!(users.take().map(|u| u.uid()), Some(3_900_020));
    drop(held);
}

#[test]
fn a_reattached_jobs_uid_is_claimed_and_not_handed_out() {
    let users = pool(3_900_030, 3_900_031);
    let claimed = users.claim(3_900_030).unwrap();
    assert!(users.claim(3_900_030).is_none(), "held once only");
    assert!(users.claim(42).is_none(), "outside the range");
    let other = users.take();
    assert_eq!(other.as_ref().map(JobUser::uid), Some(3_900_031));
    assert!(users.take().is_none());
    drop(claimed);
    wait_returned(&users, 3_900_030);
}

#[test]
fn what_a_uid_left_in_tmp_is_removed_before_it_is_handed_out_again() {
    let users = pool(3_900_040, 3_900_040);
    let user = users.take().unwrap();
    let left = Path::new("/tmp").join(format!("warren-left-{}", std::process::id()));
    let other = Path::new("/tmp").join(format!("warren-other-{}", std::process::id()));
    std::fs::create_dir_all(left.join("deep")).unwrap();
    std::fs::write(&other, b"another user's").unwrap();
    // As the job leaves it: every level the uid's (another user's entry in it would stay).
    for dir in [&left, &left.join("deep")] {
        std::os::unix::fs::lchown(dir, Some(user.uid()), Some(user.uid())).unwrap();
    }
    drop(user);
    wait_returned(&users, 3_900_040);
    let again = users.take().unwrap();
    assert_eq!(again.uid(), 3_900_040);
    assert!(!left.exists(), "{} is still there", left.display());
    assert!(other.exists(), "a file of another uid was removed");
    std::fs::remove_file(other).unwrap();
}

#[test]
fn a_job_directory_an_earlier_job_of_a_uid_still_owns_is_taken_back_before_the_uid_is_handed_out() {
    // Found by this stop's second review: a uid came free when its job's programs ended,
    // but the job's directory (its ssh key, passwords, extra vars) moves to the trash only
    // after the store's next batch; the next job of that uid could read it meanwhile.
    let data = tempfile::tempdir().unwrap();
    let job = data.path().join("units/u1/job");
    std::fs::create_dir_all(job.join("env")).unwrap();
    std::fs::write(job.join("env/ssh_key"), b"secret").unwrap();
    for path in [&job, &job.join("env"), &job.join("env/ssh_key")] {
        std::os::unix::fs::lchown(path, Some(3_900_050), Some(3_900_050)).unwrap();
    }
    let users = JobUsers::unchecked(range(3_900_050, 3_900_050), data.path().to_owned());
    let user = users.take().unwrap();
    assert_eq!(user.uid(), 3_900_050);
    let meta = std::fs::symlink_metadata(&job).unwrap();
    // SAFETY: geteuid cannot fail.
    let node = unsafe { libc::geteuid() };
    assert_eq!(
        meta.uid(),
        node,
        "the earlier job's directory is the node's again (mode {:o})",
        meta.mode()
    );
}

#[test]
fn a_stray_file_in_units_does_not_keep_uids_from_being_handed_out() {
    // From this stop's first review: a plain file in `units/` (which the store ignores)
    // failed the take-back walk with ENOTDIR, so every uid was passed over and every
    // job-users job failed with "every uid ... is held".
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("units")).unwrap();
    std::fs::write(data.path().join("units/notes"), b"an admin's note").unwrap();
    let job = data.path().join("units/u1/job");
    std::fs::create_dir_all(&job).unwrap();
    std::os::unix::fs::lchown(&job, Some(3_900_060), Some(3_900_060)).unwrap();
    let users = JobUsers::unchecked(range(3_900_060, 3_900_060), data.path().to_owned());
    let user = users
        .take()
        .expect("the stray file does not hold the uid back");
    assert_eq!(user.uid(), 3_900_060);
    // SAFETY: geteuid cannot fail.
    let node = unsafe { libc::geteuid() };
    assert_eq!(std::fs::symlink_metadata(&job).unwrap().uid(), node);
}

#[test]
fn an_earlier_job_directory_its_job_opened_to_others_is_closed_when_taken_back() {
    // From this stop's first review: the take-back changed the owner only, so a directory
    // the earlier job had opened (0755) let the next job of that uid, owner of the files
    // inside, read them, and every other job user enter it.
    let data = tempfile::tempdir().unwrap();
    let job = data.path().join("units/u1/job");
    std::fs::create_dir_all(&job).unwrap();
    std::fs::write(job.join("ssh_key"), b"secret").unwrap();
    for path in [&job, &job.join("ssh_key")] {
        std::os::unix::fs::lchown(path, Some(3_900_092), Some(3_900_092)).unwrap();
    }
    std::fs::set_permissions(&job, std::fs::Permissions::from_mode(0o755)).unwrap();
    let users = JobUsers::unchecked(range(3_900_092, 3_900_092), data.path().to_owned());
    assert_eq!(users.take().unwrap().uid(), 3_900_092);
    let meta = std::fs::symlink_metadata(&job).unwrap();
    // SAFETY: geteuid cannot fail.
    let node = unsafe { libc::geteuid() };
    assert_eq!((meta.uid(), meta.mode() & 0o777), (node, 0o700));
}

#[test]
fn a_host_without_hardlink_protection_is_refused_saying_which_setting() {
    // From this stop's second review: with fs.protected_hardlinks=0 a job could hard-link
    // a system file into its job directory under a name the node (root) writes later.
    assert_eq!(
        check_hardlinks(Some("0\n")),
        Err(JobUsersError::HardlinksUnprotected)
    );
    assert_eq!(check_hardlinks(Some("1\n")), Ok(()));
    assert_eq!(check_hardlinks(None), Ok(()));
    let message = JobUsersError::HardlinksUnprotected.to_string();
    assert!(
        message.contains("sysctl -w fs.protected_hardlinks=1"),
        "{message}"
    );
}

#[test]
fn a_control_socket_open_to_others_is_refused_with_job_users() {
    // From this stop's second review: `[control] permissions = "0666"` gave every job
    // user the node's full control rights.
    assert_eq!(check_control_permissions(0o600), Ok(()));
    assert_eq!(check_control_permissions(0o660), Ok(()));
    let refused = check_control_permissions(0o666).unwrap_err();
    assert_eq!(refused, JobUsersError::ControlSocketOpen { mode: 0o666 });
    assert!(
        refused
            .to_string()
            .starts_with("[control] permissions 0666 lets other users"),
        "{refused}"
    );
}

/// A host root with `files` (path under the root, text) in it.
fn host_root(files: &[(&str, &str)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = root.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    root
}

#[test]
fn a_range_overlapping_a_hosts_subgid_range_is_refused_at_start() {
    let root = host_root(&[
        ("etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
        ("etc/subuid", "alice:100000:65536\n"),
        ("etc/subgid", "alice:300000:65536\n"),
        ("etc/nsswitch.conf", "passwd: files\ngroup: files\n"),
    ]);
    let nobody = |_| Ok(None);
    let err =
        accounts::check_host_accounts(range(300_500, 300_600), root.path(), nobody).unwrap_err();
    assert!(
        matches!(&err, JobUsersError::Subordinate { owner, file, .. } if owner == "alice" && file == Path::new("/etc/subgid")),
        "{err}"
    );
    assert!(matches!(
        accounts::check_host_accounts(range(150_000, 150_001), root.path(), nobody),
        Err(JobUsersError::Subordinate { .. })
    ));
    assert_eq!(
        accounts::check_host_accounts(range(2_000_000_000, 2_000_000_999), root.path(), nobody),
        Ok(())
    );
}

#[test]
fn nss_is_asked_only_when_nsswitch_names_more_than_the_files() {
    let ldap = |id: u32| Ok((id == 2_000_000_005).then(|| ("group", "ldap-ops".to_owned())));
    let files_only = host_root(&[("etc/nsswitch.conf", "passwd: files\ngroup: files\n")]);
    assert_eq!(
        accounts::check_host_accounts(range(2_000_000_000, 2_000_000_009), files_only.path(), ldap),
        Ok(())
    );
    let with_ldap = host_root(&[(
        "etc/nsswitch.conf",
        "passwd: files ldap\ngroup: files ldap\n",
    )]);
    let err =
        accounts::check_host_accounts(range(2_000_000_000, 2_000_000_009), with_ldap.path(), ldap)
            .unwrap_err();
    assert_eq!(
        err.to_string(),
        "2000000000-2000000009 holds uid/gid 2000000005, which NSS (files ldap) knows as group \"ldap-ops\": a job running as it would get that group's files and processes; choose uids and gids no account uses, for example 2000000000-2000000999"
    );
}

/// Waits until `returned` says the uid is back in the pool.
fn wait_back(mut returned: watch::Receiver<bool>) {
    let until = Instant::now() + Duration::from_secs(20);
    while !*returned.borrow_and_update() {
        assert!(Instant::now() < until, "the uid never came back");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_jobs_leftover_processes_die_before_its_uid_comes_back_unless_a_stopping_node_leaves_its_detached_job()
 {
    let users = pool(3_900_090, 3_900_091);
    let start = |uid: u32| {
        std::process::Command::new("sleep")
            .arg("30")
            .uid(uid)
            .gid(uid)
            .spawn()
            .expect("tests run as root: start a process as another uid")
    };
    let detached = users.take().unwrap();
    detached.mark_detached();
    let plain = users.take().unwrap();
    let mut kept = start(detached.uid());
    let killed = start(plain.uid());
    // The test is the sleeps' parent: it reaps the killed one, or its zombie stays its uid's.
    let killed = std::thread::spawn(move || {
        let mut killed = killed;
        killed.wait()
    });
    users.leave_detached_running();
    let (kept_back, killed_back) = (detached.returned(), plain.returned());
    drop((detached, plain));
    wait_back(killed_back);
    wait_back(kept_back);
    let status = killed.join().unwrap().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "{status:?}"
    );
    assert!(
        kept.try_wait().unwrap().is_none(),
        "the detached job's program was killed though the node leaves detached jobs running"
    );
    kept.kill().unwrap();
    kept.wait().unwrap();
}

/// Runs `python3 -c script secret` as `uid` and returns what it printed.
fn python_as(uid: u32, script: &str, secret: &str) -> String {
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script, secret])
        .uid(uid)
        .gid(uid)
        .current_dir("/")
        .output()
        .expect("tests run as root: start a process as another uid");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Leaves, as its uid, a 0600 shared memory segment and a message queue holding the secret
/// (`argv[1]`) and a semaphore set, then exits.
const LEAVE_SYSV: &str = r#"
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
secret = sys.argv[1].encode()
class Msg(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 256)]
shm = libc.shmget(0, 4096, 0o1600)
addr = libc.shmat(shm, None, 0)
ctypes.memmove(addr, secret, len(secret))
msq = libc.msgget(0, 0o1600)
assert libc.msgsnd(msq, ctypes.byref(Msg(1, secret)), len(secret), 0) == 0
sem = libc.semget(0, 1, 0o1600)
assert min(shm, msq, sem) >= 0
print("left", shm, msq, sem)
"#;

/// As its uid, finds the System V objects it owns (`/proc/sysvipc`) and prints what it
/// reads from them.
const FIND_SYSV: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
class Msg(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 256)]
for kind, column in (("shm", "shmid"), ("msg", "msqid"), ("sem", "semid")):
    lines = open("/proc/sysvipc/" + kind).read().splitlines()
    head = lines[0].split()
    for line in lines[1:]:
        row = dict(zip(head, line.split()))
        if int(row["uid"]) != os.getuid():
            continue
        oid = int(row[column])
        if kind == "shm":
            addr = libc.shmat(oid, None, 0o10000)
            print("shm:", ctypes.string_at(addr, 64).rstrip(b"\0").decode())
        elif kind == "msg":
            m = Msg()
            n = libc.msgrcv(oid, ctypes.byref(m), 256, 0, 0o4000)
            print("msg:", m.mtext[:n].decode())
        else:
            print("sem:", oid)
"#;

#[test]
fn the_next_job_of_a_uid_finds_none_of_the_system_v_objects_its_last_job_left() {
    let uid = 3_900_104;
    let users = pool(uid, uid);
    let secret = format!("sysv-secret-{}", std::process::id());
    let first = users.take().unwrap();
    let left = python_as(uid, LEAVE_SYSV, &secret);
    assert!(left.starts_with("left "), "{left}");
    let back = first.returned();
    drop(first);
    wait_back(back);
    let second = users.take().unwrap();
    assert_eq!(second.uid(), uid);
    let found = python_as(uid, FIND_SYSV, "");
    assert_eq!(found, "", "the next job of the uid found: {found}");
}

#[test]
fn what_a_uid_left_in_tmp_and_inside_its_world_writable_directories_is_gone_when_its_job_ends() {
    let uid = 3_900_105;
    let users = pool(uid, uid);
    let pid = std::process::id();
    // Root's 1777 directories inside /tmp, as /tmp/.X11-unix and /tmp/.ICE-unix are.
    let x11 = Path::new("/tmp").join(format!("warren-x11-{pid}"));
    let ice = x11.join("ice");
    std::fs::create_dir_all(&ice).unwrap();
    for dir in [&x11, &ice] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    }
    let job = users.take().unwrap();
    let top = Path::new("/tmp").join(format!("warren-top-{pid}"));
    let (nested, deeper) = (x11.join("x"), ice.join("x"));
    let written = python_as(
        uid,
        "import sys\nfor p in sys.argv[1].split(','): open(p, 'w').write('secret')\nprint('ok')",
        &format!(
            "{},{},{}",
            top.display(),
            nested.display(),
            deeper.display()
        ),
    );
    assert_eq!(written, "ok\n");
    std::fs::write(x11.join("X0"), b"root's").unwrap();
    let back = job.returned();
    drop(job);
    wait_back(back);
    // Gone at the job's end, before any next job takes the uid.
    for path in [&top, &nested, &deeper] {
        assert!(!path.exists(), "{} is still there", path.display());
    }
    assert!(x11.join("X0").exists(), "root's file was removed");
    std::fs::remove_dir_all(&x11).unwrap();
}

/// Waits (up to 10 s, polling every 5 ms: the process is another's to schedule) until the
/// `/proc/<pid>/status` at `status` says `State: Z`; fails with `never` past that.
fn wait_state_z(status: &str, never: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(status).is_ok_and(|s| s.contains("State:\tZ")) {
        assert!(Instant::now() < until, "{never}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_zombie_whose_parent_never_reaps_it_does_not_keep_its_uid_from_the_pool() {
    let uid = 3_900_106;
    // The test is the parent and does not wait: the child stays a zombie of the uid.
    let mut zombie = std::process::Command::new("true")
        .uid(uid)
        .gid(uid)
        .spawn()
        .expect("tests run as root: start a process as another uid");
    let status = format!("/proc/{}/status", zombie.id());
    wait_state_z(&status, "the child never became a zombie");
    let started = Instant::now();
    let reaped = reap::end_processes_of(uid);
    assert!(reaped.is_ok(), "{reaped:?}");
    assert!(started.elapsed() < reap::REAP_WAIT);
    assert_eq!(uids_in_use(range(uid, uid)).unwrap(), BTreeSet::new());
    assert!(Path::new(&status).exists(), "still a zombie, unreaped");
    zombie.wait().unwrap();
}

#[test]
fn a_process_whose_main_thread_exited_while_another_runs_still_holds_its_uid() {
    let uid = 3_900_107;
    // The main thread leaves with SYS_exit (its status then says Z), a thread runs on.
    let mut leader = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import ctypes, threading, time\n\
             threading.Thread(target=time.sleep, args=(300,)).start()\n\
             ctypes.CDLL(None).syscall(60, 0)\n",
        ])
        .uid(uid)
        .gid(uid)
        .spawn()
        .expect("tests run as root: start a process as another uid");
    let status = format!("/proc/{}/status", leader.id());
    wait_state_z(&status, "the main thread never exited");
    let text = std::fs::read_to_string(&status).unwrap();
    assert!(!reap::is_spent(&text), "{text}");
    assert_eq!(uids_in_use(range(uid, uid)).unwrap(), BTreeSet::from([uid]));
    let reaper = std::thread::spawn(move || leader.wait());
    assert!(reap::end_processes_of(uid).unwrap() >= 1);
    let _ = reaper.join();
    assert_eq!(reap::processes_of(uid).unwrap(), Vec::<i32>::new());
}

#[test]
fn a_uid_goes_to_a_job_only_after_a_sweep_that_looked_everywhere_and_left_nothing_of_it() {
    use leftovers::Swept;
    let clean = Swept {
        removed: 3,
        taken: 1,
        ..Swept::default()
    };
    assert_eq!(cleared(&clean, true), Cleared::All);
    assert_eq!(cleared(&clean, false), Cleared::NotAll, "IPC left");
    let stuck = Swept { failed: 1, ..clean };
    assert_eq!(cleared(&stuck, true), Cleared::NotAll, "an entry left");
    let cut = Swept {
        cut_short: 1,
        ..clean
    };
    assert_eq!(cleared(&cut, true), Cleared::CutShort);
}
