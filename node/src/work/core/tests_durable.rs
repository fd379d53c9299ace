//! The core's waits for the disk and its handling of submissions made twice, on its own
//! clock: no files, no network.

use std::collections::BTreeMap;
use std::time::Instant;

use super::*;

const WALL: u64 = 1_700_000_000_000;

fn node(s: &str) -> NodeId {
    s.parse().unwrap()
}

fn id(n: u32) -> UnitId {
    format!("unit{n:04}").parse().unwrap()
}

fn core_on(me: &str) -> Core {
    Core::new(
        node(me),
        CoreConfig {
            max_running: 4,
            keep_finished: None,
            max_units_per_submitter: 10_000,
        },
    )
}

fn offer(_: &str) -> Option<Offer> {
    Some(Offer {
        allow_runtime_params: false,
    })
}

fn actions(core: &mut Core) -> Vec<Action> {
    std::iter::from_fn(|| core.poll_action()).collect()
}

fn nonce(b: u8) -> SubmitNonce {
    SubmitNonce([b; 16])
}

fn new_unit(n: u32, on: &str, key: Option<PublicKey>, nonce: Option<SubmitNonce>) -> NewUnit {
    NewUnit {
        id: id(n),
        work_type: "cat".into(),
        params: BTreeMap::new(),
        submitter: (node("ctl"), key),
        node: node(on),
        expires_at: None,
        sign_work: false,
        nonce,
    }
}

/// The status writes among `acts`: (number, status).
fn writes(acts: &[Action]) -> Vec<(u64, UnitStatus)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::WriteStatus { seq, status, .. } | Action::CreateFiles { seq, status, .. } => {
                Some((*seq, (**status).clone()))
            }
            _ => None,
        })
        .collect()
}

fn is_submit(a: &Action) -> bool {
    matches!(a, Action::Submit { .. })
}

/// Creates unit `n` and stores its payload; the actions after the payload.
fn create_and_store(core: &mut Core, now: Instant, unit: NewUnit) -> Vec<Action> {
    let n = unit.id;
    core.create(now, WALL, Ticket(1), unit, offer).unwrap();
    actions(core);
    core.files_created(n, Ok(()));
    actions(core);
    core.payload_stored(now, n, Ok(PayloadInfo { size: 5 }));
    actions(core)
}

#[test]
fn a_remote_submission_leaves_only_once_its_nonce_is_durable() {
    let now = Instant::now();
    let mut core = core_on("me");
    let acts = create_and_store(&mut core, now, new_unit(1, "node1", None, Some(nonce(7))));
    assert!(
        !acts.iter().any(is_submit),
        "sent before the disk had it: {acts:?}"
    );
    let written = writes(&acts);
    let (seq, status) = written.last().expect("the submitting status is written");
    assert_eq!(status.submit_nonce, Some(nonce(7)));
    assert_eq!(status.payload_size, Some(5));
    // Earlier writes being durable is not enough.
    core.statuses_durable(seq - 1);
    assert!(actions(&mut core).is_empty());
    core.statuses_durable(*seq);
    assert_eq!(
        actions(&mut core),
        vec![Action::Submit {
            id: id(1),
            node: node("node1")
        }]
    );
}

#[test]
fn a_unit_cancelled_while_its_submission_waits_for_the_disk_is_never_sent() {
    let now = Instant::now();
    let mut core = core_on("me");
    let acts = create_and_store(&mut core, now, new_unit(1, "node1", None, Some(nonce(7))));
    core.cancel(now, id(1), &Requester::Operator, Ticket(2))
        .unwrap();
    let later = actions(&mut core);
    let last = writes(&acts)
        .into_iter()
        .chain(writes(&later))
        .map(|(s, _)| s)
        .max()
        .unwrap();
    core.statuses_durable(last);
    assert!(!actions(&mut core).iter().any(is_submit));
    let status = core.status(id(1), &Requester::Operator).unwrap();
    assert_eq!(status.state, UnitState::Canceled);
}

#[test]
fn a_restart_after_the_submission_left_sends_it_again_under_the_same_nonce() {
    let now = Instant::now();
    let mut status = UnitStatus::new("cat", BTreeMap::new(), node("me"), node("node1"), WALL);
    status.payload_size = Some(5);
    status.submit_nonce = Some(nonce(7));
    status.detail = "Submitting to node1".into();
    let mut core = core_on("me");
    core.recover(now, WALL, vec![(id(1), status)]);
    let acts = actions(&mut core);
    assert!(!acts.iter().any(is_submit), "{acts:?}");
    let (seq, _) = *writes(&acts).last().unwrap();
    core.statuses_durable(seq);
    assert!(actions(&mut core).iter().any(is_submit));
    let status = core.status(id(1), &Requester::Operator).unwrap();
    assert_eq!(status.state, UnitState::Pending);
    assert_eq!(
        status.submit_nonce,
        Some(nonce(7)),
        "the same nonce goes again"
    );
}

#[test]
fn a_submission_made_again_finds_its_unit_once_it_has_its_payload() {
    let now = Instant::now();
    let (peer, other) = (
        PublicKey::from_bytes([1; 32]),
        PublicKey::from_bytes([2; 32]),
    );
    let mut core = core_on("node1");
    create_and_store(
        &mut core,
        now,
        new_unit(1, "node1", Some(peer), Some(nonce(7))),
    );
    // The submitter restarted and sends it again: no second unit.
    core.create(
        now,
        WALL,
        Ticket(5),
        new_unit(2, "node1", Some(peer), Some(nonce(7))),
        offer,
    )
    .unwrap();
    assert_eq!(
        actions(&mut core),
        vec![Action::Answer {
            ticket: Ticket(5),
            result: Ok(Answered::Existing(id(1)))
        }]
    );
    assert_eq!(core.list(&Requester::Operator).len(), 1);
    // Another peer's nonce never reaches it.
    core.create(
        now,
        WALL,
        Ticket(6),
        new_unit(3, "node1", Some(other), Some(nonce(7))),
        offer,
    )
    .unwrap();
    assert!(matches!(actions(&mut core)[0], Action::CreateFiles { .. }));
    // Released, the nonce is forgotten with the unit.
    core.release(now, id(1), true, &Requester::Operator, Ticket(7))
        .unwrap();
    actions(&mut core);
    core.create(
        now,
        WALL,
        Ticket(8),
        new_unit(4, "node1", Some(peer), Some(nonce(7))),
        offer,
    )
    .unwrap();
    assert!(matches!(actions(&mut core)[0], Action::CreateFiles { .. }));
}

#[test]
fn a_submission_made_again_replaces_a_unit_whose_payload_never_arrived_whole() {
    let now = Instant::now();
    let peer = PublicKey::from_bytes([1; 32]);
    let mut core = core_on("node1");
    core.create(
        now,
        WALL,
        Ticket(1),
        new_unit(1, "node1", Some(peer), Some(nonce(7))),
        offer,
    )
    .unwrap();
    core.files_created(id(1), Ok(()));
    actions(&mut core);
    // The first payload was cut (its submitter died); the submission comes again.
    core.create(
        now,
        WALL,
        Ticket(2),
        new_unit(2, "node1", Some(peer), Some(nonce(7))),
        offer,
    )
    .unwrap();
    let acts = actions(&mut core);
    assert!(acts.contains(&Action::DropUnit { id: id(1) }), "{acts:?}");
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::CreateFiles { id: n, .. } if *n == id(2))),
        "{acts:?}"
    );
    // A submission still being created when it comes again: its creator is told.
    core.create(
        now,
        WALL,
        Ticket(3),
        new_unit(3, "node1", Some(peer), Some(nonce(7))),
        offer,
    )
    .unwrap();
    let acts = actions(&mut core);
    assert!(
        acts.iter().any(|a| matches!(
            a,
            Action::Answer {
                ticket: Ticket(2),
                result: Err(TicketError::Resubmitted { unit })
            } if *unit == id(2)
        )),
        "{acts:?}"
    );
    let ids: Vec<UnitId> = core.units.keys().copied().collect();
    assert_eq!(ids, vec![id(3)]);
}

#[test]
fn a_unit_id_already_taken_is_refused_as_taken() {
    let now = Instant::now();
    let mut core = core_on("me");
    let unit = || new_unit(1, "me", None, None);
    core.create(now, WALL, Ticket(1), unit(), offer).unwrap();
    let again = core.create(now, WALL, Ticket(2), unit(), offer);
    // The driver draws another id on exactly this error, never on its text.
    assert!(
        matches!(again, Err(WorkError::UnitIdTaken(taken)) if taken == id(1)),
        "{again:?}"
    );
}

#[test]
fn files_that_cannot_be_made_fail_the_create_with_the_store_error() {
    let now = Instant::now();
    let mut core = core_on("me");
    core.create(now, WALL, Ticket(1), new_unit(1, "me", None, None), offer)
        .unwrap();
    actions(&mut core);
    let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
    let failure = StoreError::CreateUnit {
        unit: id(1),
        path: "/data/units/unit0001".into(),
        source: full,
    };
    let text = failure.to_string();
    core.files_created(id(1), Err(failure));
    let acts = actions(&mut core);
    let [
        Action::Answer {
            ticket: Ticket(1),
            result: Err(TicketError::CreateFiles(e)),
        },
    ] = &acts[..]
    else {
        panic!("one failed answer expected: {acts:?}");
    };
    assert!(
        matches!(
            &**e,
            StoreError::CreateUnit { source, .. }
                if source.kind() == std::io::ErrorKind::StorageFull
        ),
        "{e:?}"
    );
    // The caller's text is the store's, as it was when it travelled as a string.
    assert_eq!(
        WorkError::from(TicketError::CreateFiles(e.clone())).to_string(),
        text
    );
    assert!(
        core.list(&Requester::Operator).is_empty(),
        "no unit is left"
    );
}

#[test]
fn a_queued_unit_whose_status_did_not_reach_the_disk_fails_with_the_reason_and_never_starts() {
    let now = Instant::now();
    let mut core = Core::new(
        node("me"),
        CoreConfig {
            max_running: 0,
            keep_finished: None,
            max_units_per_submitter: 10_000,
        },
    );
    create_and_store(&mut core, now, new_unit(1, "me", None, None));
    core.status_not_stored(now, id(1), "No space left on device", true);
    let status = core.status(id(1), &Requester::Operator).unwrap();
    assert_eq!(status.state, UnitState::Failed);
    assert!(
        status.detail.contains("No space left on device"),
        "{}",
        status.detail
    );
    assert_eq!(core.queued(), 0, "taken off the queue");
    let acts = actions(&mut core);
    assert!(
        !acts.iter().any(|a| matches!(a, Action::Start { .. })),
        "{acts:?}"
    );
}

#[test]
fn a_remote_submission_whose_status_did_not_reach_the_disk_is_never_sent() {
    let now = Instant::now();
    let mut core = core_on("me");
    let acts = create_and_store(&mut core, now, new_unit(1, "node1", None, Some(nonce(7))));
    core.status_not_stored(now, id(1), "Input/output error", true);
    let later = actions(&mut core);
    let last = writes(&acts)
        .into_iter()
        .chain(writes(&later))
        .map(|(s, _)| s)
        .max();
    core.statuses_durable(last.unwrap());
    assert!(!actions(&mut core).iter().any(is_submit));
    let status = core.status(id(1), &Requester::Operator).unwrap();
    assert_eq!(status.state, UnitState::Failed);
}

#[test]
fn a_running_unit_whose_status_did_not_reach_the_disk_keeps_running_once_its_submitter_was_answered()
 {
    let now = Instant::now();
    let mut core = core_on("me");
    let acts = create_and_store(&mut core, now, new_unit(1, "me", None, None));
    assert!(
        acts.iter().any(|a| matches!(a, Action::Start { .. })),
        "{acts:?}"
    );
    core.status_not_stored(now, id(1), "Input/output error", false);
    let status = core.status(id(1), &Requester::Operator).unwrap();
    assert_eq!(status.state, UnitState::Running);
    assert!(
        !actions(&mut core)
            .iter()
            .any(|a| matches!(a, Action::Stop { .. }))
    );
}

#[test]
fn a_running_unit_whose_submitter_is_told_it_was_not_taken_is_stopped_and_fails() {
    // Found by this stop's second review: a local unit starts before its first status is
    // durable; a failed write told its submitter "not taken" while its job ran on, and a
    // controller retrying without the same nonce ran the playbook twice.
    //
    // Found by the s22 review: the unit was failed at once, so its slot went to the next
    // queued unit and its job directory to the trash while the stopped job still ran
    // (through its cancel grace). It keeps both until its handler reports the end.
    let now = Instant::now();
    let mut core = core_on("me");
    let acts = create_and_store(&mut core, now, new_unit(1, "me", None, None));
    assert!(
        acts.iter().any(|a| matches!(a, Action::Start { .. })),
        "{acts:?}"
    );
    core.status_not_stored(now, id(1), "Input/output error", true);
    let acts = actions(&mut core);
    assert!(acts.contains(&Action::Stop { id: id(1) }), "{acts:?}");
    assert_eq!(core.running(), 1, "its job has not ended yet");
    assert!(
        !acts.iter().any(|a| matches!(a, Action::DropSecrets { .. })),
        "{acts:?}"
    );
    core.handler_ended(
        now,
        id(1),
        HandlerEnd {
            state: UnitState::Canceled,
            detail: "stopped".into(),
            stdout_size: 0,
        },
    );
    let acts = actions(&mut core);
    assert!(
        acts.contains(&Action::DropSecrets { id: id(1) }),
        "{acts:?}"
    );
    assert_eq!(core.running(), 0);
    let status = core.status(id(1), &Requester::Operator).unwrap();
    assert_eq!(status.state, UnitState::Failed);
    assert!(
        status.detail.contains("Input/output error"),
        "{}",
        status.detail
    );
}

#[test]
fn a_job_recording_its_containment_ten_thousand_times_while_the_disk_stalls_has_one_write_in_flight()
 {
    let now = Instant::now();
    let mut core = core_on("me");
    create_and_store(&mut core, now, new_unit(1, "me", None, None));
    // The unit is running; the disk has made none of its writes durable.
    let record = |i: u32| serde_json::json!({"Containment": {"programs": i}});
    let mut queued = Vec::new();
    for i in 0..10_000 {
        core.extra_data(id(1), record(i));
        queued.extend(writes(&actions(&mut core)));
    }
    assert!(
        queued.is_empty(),
        "{} status writes queued behind the one in flight",
        queued.len()
    );
    // Once the disk catches up, the latest record is written, once.
    let upto = core.unit_write_pending(id(1)).unwrap();
    core.statuses_durable(upto);
    let written = writes(&actions(&mut core));
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0].1.extra_data, record(9_999));
    core.statuses_durable(written[0].0);
    assert_eq!(core.unit_write_pending(id(1)), None);
    assert!(actions(&mut core).is_empty());
}

#[test]
fn a_containment_record_held_behind_a_write_in_flight_is_written_when_the_node_stops() {
    let now = Instant::now();
    let mut core = core_on("me");
    let mut acts = create_and_store(&mut core, now, new_unit(1, "me", None, None));
    acts.extend(create_and_store(
        &mut core,
        now,
        new_unit(2, "me", None, None),
    ));
    core.statuses_durable(writes(&acts).iter().map(|(seq, _)| *seq).max().unwrap());
    actions(&mut core);
    let component = Component {
        name: "guest-runner".into(),
        version: "1.0.0".into(),
        sha256: "00".into(),
    };
    core.handler_started(id(1), component);
    let [(in_flight, _)] = writes(&actions(&mut core))[..] else {
        panic!("one write expected");
    };
    let record = |i: u32| serde_json::json!({"Containment": {"programs": i}});
    // Unit 2's status on the disk is its current one: its record is written at once.
    core.extra_data(id(2), record(3));
    assert_eq!(writes(&actions(&mut core)).len(), 1);
    // Unit 1's records wait behind its write in flight.
    core.extra_data(id(1), record(1));
    core.extra_data(id(1), record(2));
    assert!(writes(&actions(&mut core)).is_empty());
    core.shutting_down();
    let written = writes(&actions(&mut core));
    let [(seq, ref status)] = written[..] else {
        panic!("one write expected: {written:?}");
    };
    assert_eq!(status.extra_data, record(2));
    assert!(seq > in_flight, "written before the write in flight");
    assert_eq!(core.unit_write_pending(id(1)), Some(seq));
    // Nothing is written twice.
    core.shutting_down();
    assert!(actions(&mut core).is_empty());
}
