//! A unit whose node was SIGKILLed mid-job and restarted is first-class on the restarted
//! node: `/metrics` counts it running and then finished with the duration of its whole job,
//! and its job directory is held to the work type's disk quota as a job started there is.
//! Real `ansible-runner run --via-receptor node1` runs, as the detached tests do.

use std::path::Path;
use std::time::Duration;

use crate::detached::{
    assert_no_job_process, kill_and_restart_node1_after, node1_unit, playbook_on,
};
use crate::metrics::{get, sample};
use crate::run;
use crate::support::{Mesh, wait_for};

/// The address the latest start of node `index` serves metrics on (the log holds one line
/// per start).
fn latest_metrics_addr(mesh: &Mesh, index: usize, starts: usize) -> String {
    wait_for("the node to log its metrics address", || {
        let log = mesh.node(index).log_text();
        let found: Vec<&str> = log
            .match_indices("metrics=Some(")
            .map(|(at, _)| &log[at..])
            .collect();
        let last = found.get(starts.checked_sub(1)?)?;
        let addr = &last["metrics=Some(".len()..];
        Some(addr[..addr.find(')')?].to_owned())
    })
}

/// A playbook that prints, pauses `secs`, prints again.
fn slow(secs: u32) -> impl FnOnce(&Path) -> &'static str {
    move |pdd| {
        run::slow_playbook(pdd, secs);
        "slow.yml"
    }
}

const RUNNING: &str = "warren_units_running{work_type=\"ansible-runner\"}";
const STARTED: &str = "warren_units_started_total{work_type=\"ansible-runner\"}";
const REATTACHED: &str = "warren_units_reattached_total{work_type=\"ansible-runner\"}";
const SUCCEEDED: &str =
    "warren_units_finished_total{work_type=\"ansible-runner\",state=\"Succeeded\"}";
const DURATION_SUM: &str = "warren_job_duration_seconds_sum{work_type=\"ansible-runner\"}";
const DURATION_COUNT: &str = "warren_job_duration_seconds_count{work_type=\"ansible-runner\"}";

/// The playbook pauses `PAUSE` seconds and node1 stays down `DOWN` of them. The unit's job
/// takes longer than the pause; counted from the restart it would take at most the pause
/// less the time down plus the playbook's short tail, which the assertion tells apart as
/// long as that tail is under `DOWN`.
#[test]
fn a_reattached_unit_is_counted_running_then_finished_with_its_whole_jobs_duration() {
    const PAUSE: u32 = 14;
    const DOWN: Duration = Duration::from_secs(6);
    let setup = run::direct_setup_configured("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let (mut setup, _pdd, child) = playbook_on(setup, "m", slow(PAUSE));
    let node1 = setup.node1;
    let first = latest_metrics_addr(&setup.mesh, node1, 1);
    let (_, body) = get(&first, "/metrics");
    assert_eq!(sample(&body, RUNNING), Some(1.0), "{body}");
    kill_and_restart_node1_after(&mut setup, DOWN);

    let addr = latest_metrics_addr(&setup.mesh, node1, 2);
    let during = wait_for("the restarted node to count the unit running", || {
        let (_, body) = get(&addr, "/metrics");
        (sample(&body, RUNNING) == Some(1.0)).then_some(body)
    });
    let (_, unit) = node1_unit(&setup).expect("node1 lists its unit");
    assert_eq!(unit["StateName"], "Running", "{unit}");
    assert_eq!(sample(&during, STARTED), Some(1.0), "{during}");
    assert_eq!(sample(&during, REATTACHED), Some(1.0), "{during}");
    let counted = sample(&during, DURATION_COUNT).unwrap_or(0.0);
    assert_eq!(counted, 0.0, "{during}");

    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}\n{}", setup.mesh.logs());
    let after = wait_for("the unit to be counted finished", || {
        let (_, body) = get(&addr, "/metrics");
        sample(&body, SUCCEEDED).map(|_| body)
    });
    assert_eq!(sample(&after, SUCCEEDED), Some(1.0), "{after}");
    assert_eq!(sample(&after, RUNNING), Some(0.0), "{after}");
    assert_eq!(sample(&after, DURATION_COUNT), Some(1.0), "{after}");
    let took = sample(&after, DURATION_SUM).unwrap();
    assert!(
        took >= f64::from(PAUSE),
        "the unit's duration ({took} s) is shorter than its playbook's pause ({PAUSE} s): \
         counted from the restart, not from its job's start"
    );
    assert_no_job_process(&setup.mesh.path("node1-data"), "the re-attached run's end");
}

/// The private data dir's playbook pauses (node1 is killed and restarted meanwhile), then
/// writes 48 MiB into the job directory, whose quota is 24 MiB, and pauses again.
#[test]
fn a_reattached_job_writing_past_its_disk_quota_is_stopped_with_the_quota_reason() {
    let config = "[[work-type]]\nname = \"ansible-runner\"\nhandler = \"ansible-runner\"\n\
                  disk-mb = 24\n";
    let setup = run::direct_setup_configured(config);
    let fill = |pdd: &Path| {
        let play = "- hosts: all\n  gather_facts: false\n  tasks:\n    - debug:\n        \
                    msg: before\n    - pause:\n        seconds: 10\n    - shell: dd \
                    if=/dev/zero of={{ playbook_dir }}/fill bs=1M count=48\n    - pause:\n        \
                    seconds: 60\n    - debug:\n        msg: after\n";
        std::fs::write(pdd.join("project/fill.yml"), play).unwrap();
        "fill.yml"
    };
    let (mut setup, _pdd, child) = playbook_on(setup, "q", fill);
    kill_and_restart_node1_after(&mut setup, Duration::ZERO);
    let (_, unit) = wait_for("node1 to list its unit again", || node1_unit(&setup));
    assert_eq!(
        unit["StateName"],
        "Running",
        "re-attached before the playbook writes: {unit}\n{}",
        setup.mesh.logs()
    );

    let out = child.wait_with_output().unwrap();
    let stderr = run::text(&out.stderr);
    assert!(!out.status.success(), "{out:?}\n{}", setup.mesh.logs());
    assert!(
        stderr.contains("ended Failed: job directory exceeded its disk quota (")
            && stderr.contains("the quota is 25165824 bytes and 200000 inodes)"),
        "{stderr}\n{}",
        setup.mesh.logs()
    );
    assert!(
        !run::text(&out.stdout).contains("\"msg\": \"after\""),
        "the job ran on past its quota"
    );
    assert_no_job_process(&setup.mesh.path("node1-data"), "the quota stop");
}
