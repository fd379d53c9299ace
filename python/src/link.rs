//! The checks a job passes before its unit is made: a link to the peer (or this process's
//! shared node for it) and a route to the target node offering ansible-runner. [`link`]
//! runs them and returns a [`Link`] holding the shared node; [`Link::start`] has the node
//! create the unit later, from another thread, so that `run_async` returns once the
//! target is known to be there without waiting for the node to write the unit down.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pyo3::prelude::*;
use warren::id::NodeId;

use crate::errors;
use crate::job::{Job, Target, UnitSpec, WORK_TYPE, create};
use crate::process;
use crate::shared::Lease;

/// Links (or reuses the shared node) and waits for a route to `target`'s node offering
/// ansible-runner; returns the lease and what linking noted.
pub(crate) async fn connect(target: &Target) -> PyResult<(Lease, Vec<String>)> {
    let (_, registry) = process::current().map_err(|e| errors::runtime_start(&e))?;
    let mut notices = Vec::new();
    let lease = registry
        .lease(target.options.clone(), |note| notices.push(note))
        .await
        .map_err(|e| errors::client(&e))?;
    lease
        .wait_for(&target.node, WORK_TYPE, target.options.timeout)
        .await
        .map_err(|e| errors::client(&e))?;
    Ok((lease, notices))
}

/// A checked way to a node: the shared node is linked and the target offers
/// ansible-runner. Holding it keeps the shared node linked.
#[pyclass(module = "warren._native", frozen)]
pub(crate) struct Link {
    lease: Lease,
    node: NodeId,
    notices: Vec<String>,
}

/// Links to `peer` (or reuses this process's node for it) and waits up to `timeout`
/// seconds for a route to `node` offering ansible-runner; the unit is made by
/// [`Link::start`].
///
/// Raises `NativeError(kind, message)`: `peer_unreachable`, `peer_refused`, `key_changed`,
/// `unknown_node`, `not_offered`, `identity`, `value`, `other`.
#[pyfunction]
#[pyo3(signature = (*, peer, node, node_id = None, timeout = 15.0))]
pub(crate) fn link(
    py: Python<'_>,
    peer: &str,
    node: &str,
    node_id: Option<&str>,
    timeout: f64,
) -> PyResult<Link> {
    let target = Target::parse(peer, node, node_id, timeout)?;
    py.detach(|| {
        process::block_on(async {
            let (lease, notices) = connect(&target).await?;
            Ok(Link {
                lease,
                node: target.node,
                notices,
            })
        })
        .map_err(|e| errors::runtime_start(&e))?
    })
}

#[pymethods]
impl Link {
    /// The target node.
    #[getter]
    fn node(&self) -> String {
        self.node.to_string()
    }

    /// This client node's id: the submitter the target sees.
    #[getter]
    fn client_id(&self) -> String {
        self.lease.id().to_string()
    }

    /// What linking noted (an identity created, a peer's key remembered).
    #[getter]
    fn notices(&self) -> Vec<String> {
        self.notices.clone()
    }

    /// Has the node create the unit, as `start` does after its checks. Results may be
    /// unreachable for `lost_contact` seconds before the job gives up; events and
    /// artifacts land in `artifact_dir`.
    ///
    /// Raises `NativeError(kind, message)`: `submit_refused`, `unknown_node` (no route
    /// any more), `value`, `other`.
    #[pyo3(signature = (*, artifact_dir, params = BTreeMap::new(), lost_contact = 60.0))]
    fn start(
        &self,
        py: Python<'_>,
        artifact_dir: PathBuf,
        params: BTreeMap<String, String>,
        lost_contact: f64,
    ) -> PyResult<Job> {
        let unit = UnitSpec::new(artifact_dir, params, lost_contact)?;
        py.detach(|| {
            process::block_on(create(
                self.lease.clone(),
                self.node.clone(),
                unit,
                self.notices.clone(),
            ))
            .map_err(|e| errors::runtime_start(&e))?
        })
    }
}
