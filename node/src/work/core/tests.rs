//! The work core on its own clock: no files, no handlers, no network.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::flow::CancelOutcome;
use super::*;
use crate::work::protocol::RemoteStatus;

const WALL: u64 = 1_700_000_000_000;

/// The client's error for a node it cannot reach.
fn unreachable(node_id: &str, reason: &str) -> crate::work::client::ClientError {
    crate::work::client::ClientError::Unreachable {
        node: node(node_id),
        reason: reason.into(),
    }
}

fn node(s: &str) -> NodeId {
    s.parse().unwrap()
}

fn id(n: u32) -> UnitId {
    format!("unit{n:04}").parse().unwrap()
}

fn core(max_running: usize) -> Core {
    Core::new(
        node("me"),
        CoreConfig {
            max_running,
            keep_finished: Some(Duration::from_secs(3600)),
            max_units_per_submitter: 10_000,
        },
    )
}

fn offer(_: &str) -> Option<Offer> {
    Some(Offer {
        allow_runtime_params: false,
    })
}

fn key(b: u8) -> PublicKey {
    PublicKey::from_bytes([b; 32])
}

fn actions(core: &mut Core) -> Vec<Action> {
    std::iter::from_fn(|| core.poll_action()).collect()
}

/// Runs a unit's creation and payload through: returns the actions after the payload.
fn submit(
    core: &mut Core,
    now: Instant,
    n: u32,
    on: &str,
    owner: Option<PublicKey>,
) -> Vec<Action> {
    let unit = NewUnit {
        id: id(n),
        work_type: "cat".into(),
        params: BTreeMap::new(),
        submitter: (node("ctl"), owner),
        node: node(on),
        expires_at: None,
        sign_work: false,
        nonce: None,
    };
    core.create(now, WALL, Ticket(u64::from(n)), unit, offer)
        .unwrap();
    let created = actions(core);
    assert!(matches!(created[0], Action::CreateFiles { .. }));
    core.files_created(id(n), Ok(()));
    let answered = actions(core);
    assert!(answered.contains(&Action::Answer {
        ticket: Ticket(u64::from(n)),
        result: Ok(Answered::Created(id(n)))
    }));
    core.payload_stored(now, id(n), Ok(PayloadInfo { size: 3 }));
    let mut acts = actions(core);
    // The store reports every write durable.
    core.statuses_durable(last_write(&acts).unwrap_or(0));
    acts.extend(actions(core));
    acts
}

/// The number of the last status write among `acts`.
fn last_write(acts: &[Action]) -> Option<u64> {
    acts.iter()
        .filter_map(|a| match a {
            Action::WriteStatus { seq, .. } | Action::CreateFiles { seq, .. } => Some(*seq),
            _ => None,
        })
        .max()
}

fn state(core: &Core, n: u32) -> UnitState {
    core.status(id(n), &Requester::Operator).unwrap().state
}

fn ended(core: &mut Core, now: Instant, n: u32, state: UnitState) {
    core.handler_ended(
        now,
        id(n),
        HandlerEnd {
            state,
            detail: "done".into(),
            stdout_size: 5,
        },
    );
}

#[test]
fn units_queue_under_max_running_and_start_as_slots_free() {
    let now = Instant::now();
    let mut core = core(2);
    for n in 1..=3 {
        let acts = submit(&mut core, now, n, "me", None);
        let started = acts.contains(&Action::Start { id: id(n) });
        assert_eq!(started, n <= 2, "unit {n}: {acts:?}");
    }
    assert_eq!((core.running(), core.queued()), (2, 1));
    assert_eq!(state(&core, 3), UnitState::Pending);
    ended(&mut core, now, 1, UnitState::Succeeded);
    let acts = actions(&mut core);
    assert!(acts.contains(&Action::Start { id: id(3) }), "{acts:?}");
    assert!(
        acts.contains(&Action::DropSecrets { id: id(1) }),
        "payloads do not outlive the run"
    );
    assert!(acts.contains(&Action::Ended { id: id(1) }));
    assert_eq!(state(&core, 1), UnitState::Succeeded);
    assert_eq!((core.running(), core.queued()), (2, 0));
}

#[test]
fn cancel_ends_a_queued_unit_at_once_and_stops_a_running_one() {
    let now = Instant::now();
    let mut core = core(1);
    submit(&mut core, now, 1, "me", None);
    submit(&mut core, now, 2, "me", None);
    let by = Requester::Operator;
    assert_eq!(
        core.cancel(now, id(2), &by, Ticket(9)).unwrap(),
        CancelOutcome::Done
    );
    assert_eq!(state(&core, 2), UnitState::Canceled);
    assert_eq!(
        core.cancel(now, id(1), &by, Ticket(10)).unwrap(),
        CancelOutcome::Done
    );
    assert!(actions(&mut core).contains(&Action::Stop { id: id(1) }));
    assert_eq!(
        state(&core, 1),
        UnitState::Running,
        "until its handler stops"
    );
    ended(&mut core, now, 1, UnitState::Canceled);
    assert_eq!(state(&core, 1), UnitState::Canceled);
}

#[test]
fn finished_units_are_released_after_the_retention() {
    let now = Instant::now();
    let mut core = core(1);
    submit(&mut core, now, 1, "me", None);
    ended(&mut core, now, 1, UnitState::Succeeded);
    actions(&mut core);
    assert_eq!(core.poll_timeout(), Some(now + Duration::from_secs(3600)));
    core.handle_timeout(now + Duration::from_secs(3599), WALL);
    assert!(core.status(id(1), &Requester::Operator).is_ok());
    core.handle_timeout(now + Duration::from_secs(3600), WALL);
    assert!(actions(&mut core).contains(&Action::DropUnit { id: id(1) }));
    assert!(matches!(
        core.status(id(1), &Requester::Operator),
        Err(WorkError::UnknownUnit(_))
    ));
}

#[test]
fn a_unit_belongs_to_its_submitter() {
    let now = Instant::now();
    let mut core = core(1);
    submit(&mut core, now, 1, "me", Some(key(1)));
    let owner = Requester::Peer(key(1));
    let other = Requester::Peer(key(2));
    assert!(core.status(id(1), &owner).is_ok());
    assert!(matches!(
        core.status(id(1), &other),
        Err(WorkError::UnknownUnit(_))
    ));
    assert!(core.list(&other).is_empty());
    assert!(matches!(
        core.cancel(now, id(1), &other, Ticket(1)),
        Err(WorkError::UnknownUnit(_))
    ));
    assert!(matches!(
        core.release(now, id(1), true, &other, Ticket(2)),
        Err(WorkError::UnknownUnit(_))
    ));
    assert_eq!(
        core.list(&Requester::Operator).len(),
        1,
        "operators see everything"
    );
}

#[test]
fn release_waits_for_a_running_unit_then_drops_it_anyway() {
    let now = Instant::now();
    let mut core = core(1);
    submit(&mut core, now, 1, "me", None);
    core.release(now, id(1), false, &Requester::Operator, Ticket(5))
        .unwrap();
    assert!(actions(&mut core).contains(&Action::Stop { id: id(1) }));
    // A deaf handler: the release goes ahead after RELEASE_WAIT.
    core.handle_timeout(now + RELEASE_WAIT, WALL);
    let acts = actions(&mut core);
    assert!(acts.contains(&Action::DropUnit { id: id(1) }), "{acts:?}");
    assert!(acts.contains(&Action::Answer {
        ticket: Ticket(5),
        result: Ok(Answered::Done)
    }));
    assert_eq!(core.running(), 0);
}

#[test]
fn a_remote_unit_is_submitted_followed_and_finished_with_the_remote_state() {
    let now = Instant::now();
    let mut core = core(1);
    let acts = submit(&mut core, now, 1, "node1", None);
    assert!(acts.contains(&Action::Submit {
        id: id(1),
        node: node("node1")
    }));
    core.remote_created(id(1), id(77));
    core.remote_started(now, id(1), node("node1"), id(77), false);
    let acts = actions(&mut core);
    assert!(acts.contains(&Action::Follow {
        id: id(1),
        node: node("node1"),
        remote: id(77)
    }));
    assert!(
        acts.contains(&Action::DropSecrets { id: id(1) }),
        "the local payload copy goes"
    );
    assert_eq!(state(&core, 1), UnitState::Running);
    let remote = RemoteStatus {
        state: UnitState::Succeeded,
        detail: "exit status 0".into(),
        stdout_size: 12,
    };
    core.mirror_ended(now, id(1), 12, Ok(remote));
    let status = core.status(id(1), &Requester::Operator).unwrap();
    assert_eq!(
        (status.state, status.stdout_size),
        (UnitState::Succeeded, 12)
    );
}

#[test]
fn a_vanished_remote_unit_fails_the_mirror_with_the_reason() {
    let now = Instant::now();
    let mut core = core(1);
    submit(&mut core, now, 1, "node1", None);
    core.remote_started(now, id(1), node("node1"), id(77), false);
    actions(&mut core);
    let gone = RemoteFailure::Gone {
        node: node("node1"),
        remote: id(77),
    };
    core.mirror_ended(now, id(1), 3, Err(gone));
    let status = core.status(id(1), &Requester::Operator).unwrap();
    assert_eq!(status.state, UnitState::Failed);
    assert_eq!(
        status.detail,
        "remote work unit unit0077 is gone from node1 (released there, or the node lost its data)"
    );
}

#[test]
fn a_restart_resumes_mirrors_and_queues_but_fails_what_cannot_resume() {
    let now = Instant::now();
    let mk = |state, node_id: &str, remote: Option<UnitId>, payload: Option<u64>| {
        let mut s = UnitStatus::new("cat", BTreeMap::new(), node("ctl"), node(node_id), WALL);
        s.state = state;
        s.remote_unit_id = remote;
        s.payload_size = payload;
        s
    };
    let units = vec![
        (
            id(1),
            mk(UnitState::Running, "node1", Some(id(71)), Some(3)),
        ),
        (id(2), mk(UnitState::Pending, "me", None, Some(3))),
        (id(3), mk(UnitState::Pending, "me", None, None)),
        (id(4), mk(UnitState::Running, "me", None, Some(3))),
        (id(5), mk(UnitState::Succeeded, "me", None, Some(3))),
    ];
    let mut core = core(1);
    core.recover(now, WALL, units);
    let acts = actions(&mut core);
    assert!(
        acts.contains(&Action::Follow {
            id: id(1),
            node: node("node1"),
            remote: id(71)
        }),
        "the mirror resumes: {acts:?}"
    );
    assert!(acts.contains(&Action::Reattach { id: id(4) }));
    assert_eq!(
        state(&core, 3),
        UnitState::Failed,
        "its payload never arrived"
    );
    // The re-queued unit waits for the slot the re-attached one holds.
    assert_eq!(core.queued(), 1);
    ended(&mut core, now, 4, UnitState::Failed);
    assert!(actions(&mut core).contains(&Action::Start { id: id(2) }));
    assert_eq!(state(&core, 5), UnitState::Succeeded);
}

#[test]
fn a_remote_release_that_fails_keeps_the_unit_unless_forced() {
    let now = Instant::now();
    let mut core = core(1);
    submit(&mut core, now, 1, "node1", None);
    core.remote_started(now, id(1), node("node1"), id(77), false);
    actions(&mut core);
    core.release(now, id(1), false, &Requester::Operator, Ticket(3))
        .unwrap();
    assert!(actions(&mut core).contains(&Action::ReleaseRemote {
        id: id(1),
        node: node("node1"),
        remote: id(77)
    }));
    core.remote_released(now, id(1), Err(unreachable("node1", "no route")));
    let acts = actions(&mut core);
    let [Action::Answer { result: Err(e), .. }] = &acts[..] else {
        panic!("one failed answer expected: {acts:?}");
    };
    assert!(matches!(e, TicketError::ReleasePending(_)), "{e:?}");
    // The operator's text (and the refusal's reason on the wire) reads as it always did.
    assert_eq!(
        e.to_string(),
        "release pending: node node1 is not reachable: no route"
    );
    assert!(core.status(id(1), &Requester::Operator).is_ok(), "kept");
    core.release(now, id(1), true, &Requester::Operator, Ticket(4))
        .unwrap();
    actions(&mut core);
    core.remote_released(now, id(1), Err(unreachable("node1", "still no route")));
    assert!(actions(&mut core).contains(&Action::DropUnit { id: id(1) }));
}

#[test]
fn a_remote_unit_not_started_by_its_ttl_expires() {
    let now = Instant::now();
    let mut core = core(1);
    let unit = NewUnit {
        id: id(1),
        work_type: "cat".into(),
        params: BTreeMap::new(),
        submitter: (node("ctl"), None),
        node: node("node1"),
        expires_at: Some(WALL + 20_000),
        sign_work: false,
        nonce: None,
    };
    core.create(now, WALL, Ticket(1), unit, offer).unwrap();
    core.files_created(id(1), Ok(()));
    core.payload_stored(now, id(1), Ok(PayloadInfo { size: 1 }));
    actions(&mut core);
    assert_eq!(core.poll_timeout(), Some(now + Duration::from_secs(20)));
    core.handle_timeout(now + Duration::from_secs(20), WALL + 20_000);
    let status = core.status(id(1), &Requester::Operator).unwrap();
    assert_eq!(status.state, UnitState::Failed);
    assert!(
        status.detail.starts_with("Work unit expired on "),
        "{}",
        status.detail
    );
}

#[test]
fn unoffered_work_types_and_reserved_params_are_refused() {
    let now = Instant::now();
    let mut core = core(1);
    let mut unit = NewUnit {
        id: id(1),
        work_type: "cat".into(),
        params: BTreeMap::from([("program".into(), "/bin/sh".into())]),
        submitter: (node("ctl"), None),
        node: node("me"),
        expires_at: None,
        sign_work: false,
        nonce: None,
    };
    assert!(matches!(
        core.create(now, WALL, Ticket(1), unit.clone(), offer),
        Err(WorkError::BadParameters(_))
    ));
    unit.params.clear();
    assert!(matches!(
        core.create(now, WALL, Ticket(1), unit, |_| None),
        Err(WorkError::UnknownWorkType { .. })
    ));
}

#[test]
fn draining_refuses_new_local_units_holds_the_queue_and_ends_when_running_units_end() {
    let now = Instant::now();
    let mut core = core(1);
    submit(&mut core, now, 1, "me", None);
    submit(&mut core, now, 2, "me", None);
    assert_eq!((core.running(), core.queued()), (1, 1));
    core.drain();
    assert!(!core.is_drained(), "unit 1 still runs");
    let unit = NewUnit {
        id: id(3),
        work_type: "cat".into(),
        params: BTreeMap::new(),
        submitter: (node("ctl"), None),
        node: node("me"),
        expires_at: None,
        sign_work: false,
        nonce: None,
    };
    let refused = core.create(now, WALL, Ticket(3), unit.clone(), offer);
    assert!(
        matches!(refused, Err(WorkError::Draining { ref node }) if node.as_str() == "me"),
        "{refused:?}"
    );
    // Units for other nodes are still placed: their mirrors resume after a restart.
    let remote = NewUnit {
        node: node("far"),
        ..unit
    };
    assert!(core.create(now, WALL, Ticket(4), remote, offer).is_ok());
    actions(&mut core);
    ended(&mut core, now, 1, UnitState::Succeeded);
    let acts = actions(&mut core);
    assert!(
        !acts.contains(&Action::Start { id: id(2) }),
        "the queued unit waits for the next start: {acts:?}"
    );
    assert_eq!(state(&core, 2), UnitState::Pending);
    assert!(core.is_drained());
}

/// A unit the node left `Running`, recovered: the core asks to re-attach it.
fn reattached(now: Instant) -> Core {
    let mut status = UnitStatus::new("cat", BTreeMap::new(), node("ctl"), node("me"), WALL);
    status.state = UnitState::Running;
    status.payload_size = Some(3);
    let mut core = core(2);
    core.recover(now, WALL, vec![(id(1), status)]);
    assert_eq!(actions(&mut core), vec![Action::Reattach { id: id(1) }]);
    core
}

#[test]
fn a_reattached_unit_records_its_containment_and_is_stopped_by_a_cancel() {
    let now = Instant::now();
    let mut core = reattached(now);
    let value = serde_json::json!({"Containment": {"Detached": true}});
    core.extra_data(id(1), value.clone());
    let written = actions(&mut core);
    assert!(
        matches!(&written[..], [Action::WriteStatus { status, .. }] if status.extra_data == value),
        "{written:?}"
    );
    core.cancel(now, id(1), &Requester::Operator, Ticket(9))
        .unwrap();
    assert_eq!(actions(&mut core), vec![Action::Stop { id: id(1) }]);
    ended(&mut core, now, 1, UnitState::Canceled);
    assert_eq!(state(&core, 1), UnitState::Canceled);
    assert_eq!(core.running(), 0);
}

#[test]
fn a_reattached_unit_force_released_is_stopped_before_its_files_go() {
    let now = Instant::now();
    let mut core = reattached(now);
    core.release(now, id(1), true, &Requester::Operator, Ticket(9))
        .unwrap();
    let acts = actions(&mut core);
    let stop = acts.iter().position(|a| *a == Action::Stop { id: id(1) });
    let drop = acts
        .iter()
        .position(|a| *a == Action::DropUnit { id: id(1) });
    assert!(
        matches!((stop, drop), (Some(s), Some(d)) if s < d),
        "{acts:?}"
    );
    assert_eq!(core.running(), 0);
}

/// A peer's unit `n` to run here, created (not yet given its payload).
fn create_from(
    core: &mut Core,
    now: Instant,
    n: u32,
    owner: Option<PublicKey>,
) -> Result<(), WorkError> {
    let unit = NewUnit {
        id: id(n),
        work_type: "cat".into(),
        params: BTreeMap::new(),
        submitter: (node("ctl"), owner),
        node: node("me"),
        expires_at: None,
        sign_work: false,
        nonce: None,
    };
    core.create(now, WALL, Ticket(u64::from(n)), unit, offer)
}

#[test]
fn a_peer_holding_its_limit_of_units_is_refused_more_until_it_releases_one() {
    let now = Instant::now();
    let mut core = Core::new(
        node("me"),
        CoreConfig {
            max_running: 1,
            keep_finished: None,
            max_units_per_submitter: 2,
        },
    );
    submit(&mut core, now, 1, "me", Some(key(1)));
    submit(&mut core, now, 2, "me", Some(key(1)));
    let refused = create_from(&mut core, now, 3, Some(key(1)));
    assert!(
        matches!(&refused, Err(WorkError::OverLimit { limit: 2, what, .. }) if what.contains("max-units-per-submitter")),
        "{refused:?}"
    );
    // Another peer, and the local control socket, are not held to that peer's count.
    create_from(&mut core, now, 4, Some(key(2))).unwrap();
    create_from(&mut core, now, 5, None).unwrap();
    // A release frees room.
    ended(&mut core, now, 1, UnitState::Succeeded);
    core.release(now, id(1), false, &Requester::Peer(key(1)), Ticket(9))
        .unwrap();
    submit(&mut core, now, 6, "me", Some(key(1)));
    // Units found again at a restart count too.
    let mut restarted = Core::new(node("me"), core.config.clone());
    let held: Vec<_> = [2, 6]
        .into_iter()
        .map(|n| {
            (
                id(n),
                core.status(id(n), &Requester::Operator).unwrap().clone(),
            )
        })
        .collect();
    restarted.recover(now, WALL, held);
    assert!(matches!(
        create_from(&mut restarted, now, 7, Some(key(1))),
        Err(WorkError::OverLimit { .. })
    ));
}
