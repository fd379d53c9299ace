//! Without `--via-receptor`: the same job through an embedded local node and the same
//! work-handler component, so one machine needs no mesh.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;

use super::{Prepared, WORK_TYPE, payload_failure, receive};
use crate::ansible::process::ProcessOutcome;
use crate::host::contain::ProgramLimits;
use crate::host::policy::Limits;
use crate::host::registry::{self, AnsibleRunnerSetup, Registry};
use crate::host::runner::Host;
use crate::id::NodeId;
use crate::work::{Requester, Submission, Work, WorkConfig, WorkSetup};

/// Runs the job on this machine; returns what processing the results found.
pub(super) async fn run_local(prepared: Prepared) -> anyhow::Result<ProcessOutcome> {
    let dir = tempfile::Builder::new()
        .prefix("warren-run")
        .tempdir()
        .context("creating a work dir")?;
    let cache = std::env::var_os("WARREN_COMPONENT_CACHE")
        .filter(|v| !v.is_empty())
        .map_or_else(|| dir.path().join("cache"), std::path::PathBuf::from);
    let host = Arc::new(Host::new(&cache)?);
    let builtin = registry::builtin(&host)?;
    let path_env = std::env::var_os("PATH");
    let setup = AnsibleRunnerSetup {
        configured: None,
        path_env: path_env.as_deref(),
        env_pass: &[],
        limits: Limits::default(),
        program_limits: ProgramLimits::default(),
    };
    let env = |name: &str| std::env::var(name).ok();
    let active = registry::ansible_runner(&builtin, WORK_TYPE, &setup, &env)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut offered = Registry::default();
    offered.insert(active);
    let (_keep, rx) = watch::channel(Arc::new(offered));
    let me = NodeId::new("local")?;
    let work = Work::open(WorkSetup {
        data_dir: dir.path().to_owned(),
        node: me.clone(),
        host,
        registry: rx,
        config: WorkConfig::default(),
        mesh: None,
        signing_key: None,
    })?;
    let unit = work
        .create(Submission {
            node: "localhost".into(),
            work_type: WORK_TYPE.into(),
            params: super::embedded::terminal_param(),
            submitter: (me, None),
            ttl: None,
            sign_work: false,
        })
        .await?;
    let (mut payload_in, mut payload_out) = tokio::io::duplex(256 * 1024);
    // A failed payload ends the run before the unit sees the end of its input.
    tokio::select! {
        failed = payload_failure(&prepared, &mut payload_in) => return Err(failed),
        started = work.start(unit, &mut payload_out) => drop(started?),
    }
    let results = work.results(unit, 0, &Requester::Operator).await?;
    let (results_in, mut results_out) = tokio::io::duplex(256 * 1024);
    let copy = async move {
        let mut results = results;
        let copied = tokio::io::copy(&mut results, &mut results_out).await;
        drop(results_out);
        copied
    };
    let (copied, processed) = tokio::join!(copy, receive(&prepared, results_in));
    if processed.as_ref().is_err_and(super::refused_stream) {
        return processed;
    }
    copied.context("reading the unit's results")?;
    processed
}
