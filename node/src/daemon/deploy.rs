//! Deploying signed components, here or on any node of the mesh.
//!
//! A `deploy` on the control socket names a node. For this node the component is verified,
//! compiled and switched in; for another, it travels over a mesh stream to that node's
//! `deploy` service, which does the same and answers with what is now active. Only peers the
//! target allows to deploy (`--allow-deploy`) are served, and the component itself must be
//! signed by one of the target node's signers.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use super::deployed::DeployedStore;
use crate::access::{AccessPolicy, Act};
use crate::control::DeployFailure;
use crate::control::reply::DeployReply;
use crate::host::deploy::{MAX_COMPONENT_LEN, apply};
use crate::host::registry::Registry;
use crate::host::runner::Host;
use crate::host::signing::{SignedManifest, SignerKey};
use crate::id::{NodeId, ServiceName};
use crate::mesh::driver::MeshHandle;

/// The mesh service that takes deployments.
pub const DEPLOY_SERVICE: &str = "deploy";

/// Longest header line of a deployment on the mesh (it carries the signature file).
const MAX_HEADER_LEN: u64 = 1 << 20;

/// Deploys components on this node and forwards deployments for others.
#[derive(Debug, Clone)]
pub struct Deployer {
    node: NodeId,
    host: Arc<Host>,
    registry: watch::Sender<Arc<Registry>>,
    /// Whose signatures a component needs (replaced on reload).
    signers: watch::Receiver<Vec<SignerKey>>,
    mesh: MeshHandle,
    /// Who may deploy over the mesh.
    access: watch::Receiver<Arc<AccessPolicy>>,
    /// Where deployed components are kept across restarts.
    kept: DeployedStore,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    signature: String,
    length: String,
}

impl Deployer {
    /// A deployer for the node behind `mesh`.
    pub fn new(
        host: Arc<Host>,
        registry: watch::Sender<Arc<Registry>>,
        signers: watch::Receiver<Vec<SignerKey>>,
        mesh: MeshHandle,
        access: watch::Receiver<Arc<AccessPolicy>>,
        kept: DeployedStore,
    ) -> Self {
        Self {
            node: mesh.id().clone(),
            host,
            registry,
            signers,
            mesh,
            access,
            kept,
        }
    }

    /// Deploys to `node` (this node for `localhost` or its own id).
    pub async fn deploy(
        &self,
        node: &str,
        signature: String,
        component: Vec<u8>,
    ) -> Result<DeployReply, DeployFailure> {
        if self.node.is_named_by(node) {
            return self.apply_here(&signature, component).await;
        }
        let target = NodeId::new(node)?;
        self.forward(&target, signature, component).await
    }

    /// Verifies, compiles and switches in a component on this node.
    async fn apply_here(
        &self,
        signature: &str,
        component: Vec<u8>,
    ) -> Result<DeployReply, DeployFailure> {
        let text = signature.to_owned();
        let signature = SignedManifest::from_json(signature.as_bytes())
            .map_err(DeployFailure::BadSignatureFile)?;
        let this = self.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let current = this.registry.borrow().clone();
            let signers = this.signers.borrow().clone();
            let applied = apply(&this.host, &current, &signers, &component, &signature);
            if let Ok((_, deployed)) = &applied
                && let Err(e) = this.kept.record(
                    &component,
                    &text,
                    &deployed.info.sha256,
                    &deployed.work_types,
                )
            {
                tracing::error!(error = %e, "deployed, but cannot keep the component for a restart");
            }
            applied
        })
        .await?;
        let (next, deployed) = outcome.inspect_err(|e| {
            tracing::warn!(error = %e, "deploy refused");
        })?;
        let names = next.names();
        self.registry.send_replace(Arc::new(next));
        let _ = self.mesh.set_work_types(names);
        let info = &deployed.info;
        tracing::info!(
            component = %info.name, version = %info.version, sha256 = %info.sha256_hex(),
            signer = %info.signer_label(), work_types = ?deployed.work_types, "deployed"
        );
        Ok(DeployReply {
            node: self.node.to_string(),
            name: info.name.clone(),
            version: info.version.clone(),
            sha256: info.sha256_hex(),
            signer: info.signer_label(),
            work_types: deployed.work_types,
        })
    }

    /// Sends a deployment to `node`'s deploy service and returns its answer.
    async fn forward(
        &self,
        node: &NodeId,
        signature: String,
        component: Vec<u8>,
    ) -> Result<DeployReply, DeployFailure> {
        let service = ServiceName::new(DEPLOY_SERVICE)?;
        let mut stream = self.mesh.connect(node, &service).await.map_err(|source| {
            DeployFailure::Unreachable {
                node: node.clone(),
                source,
            }
        })?;
        let header = Header {
            signature,
            length: component.len().to_string(),
        };
        let mut line = serde_json::to_vec(&header).map_err(DeployFailure::BadHeader)?;
        line.push(b'\n');
        let io = |source| DeployFailure::Io {
            node: node.clone(),
            source,
        };
        stream.write_all(&line).await.map_err(io)?;
        stream.write_all(&component).await.map_err(io)?;
        stream.shutdown().await.map_err(io)?;
        let mut reply = String::new();
        BufReader::new(stream)
            .take(MAX_HEADER_LEN)
            .read_line(&mut reply)
            .await
            .map_err(io)?;
        parse_reply(node, reply.trim_end())
    }

    /// Serves the `deploy` mesh service until the mesh stops.
    pub fn serve(self) {
        let Ok(service) = ServiceName::new(DEPLOY_SERVICE) else {
            return;
        };
        let Ok(mut incoming) = self.mesh.listen(&service) else {
            return;
        };
        tokio::spawn(async move {
            while let Some(stream) = incoming.recv().await {
                let this = self.clone();
                tokio::spawn(async move {
                    let peer = stream.identity().clone();
                    let allowed = this.access.borrow().check(&this.node, &peer, Act::Deploy);
                    let result = match allowed {
                        Ok(()) => {
                            tracing::info!(peer = %peer.node, key = %peer.key, "deploy request");
                            this.answer(stream).await
                        }
                        Err(refusal) => {
                            tracing::info!(peer = %peer.node, key = %peer.key, %refusal, "deploy refused");
                            refuse(stream, &refusal.to_string()).await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(peer = %peer.node, error = %e, "deploy session ended");
                    }
                });
            }
        });
    }

    /// One deployment from another node: header line, component bytes, one reply line.
    async fn answer<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        (&mut reader)
            .take(MAX_HEADER_LEN)
            .read_line(&mut line)
            .await?;
        let reply = match self.receive(&mut reader, &line).await {
            Ok(deployed) => format!("{}\n", serde_json::to_string(&deployed).unwrap_or_default()),
            Err(failure) => crate::control::reply::error_line(&failure.to_string()),
        };
        let stream = reader.get_mut();
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await
    }

    async fn receive<R: AsyncRead + Unpin>(
        &self,
        reader: &mut R,
        line: &str,
    ) -> Result<DeployReply, DeployFailure> {
        let header: Header =
            serde_json::from_str(line.trim_end()).map_err(DeployFailure::BadHeader)?;
        let length: u64 =
            (header.length.parse()).map_err(|_| DeployFailure::BadLength(header.length.clone()))?;
        if length > MAX_COMPONENT_LEN {
            return Err(DeployFailure::TooLarge {
                length,
                limit: MAX_COMPONENT_LEN,
            });
        }
        let mut component = Vec::new();
        (reader.take(length).read_to_end(&mut component).await).map_err(DeployFailure::Read)?;
        if component.len() as u64 != length {
            return Err(DeployFailure::Short {
                got: component.len() as u64,
                length,
            });
        }
        self.apply_here(&header.signature, component).await
    }
}

/// Answers a refused stream with one `ERROR:` line, reading nothing of it.
async fn refuse<S: AsyncWrite + Unpin>(mut stream: S, message: &str) -> std::io::Result<()> {
    let line = crate::control::reply::error_line(message);
    stream.write_all(line.as_bytes()).await?;
    stream.shutdown().await
}

fn parse_reply(node: &NodeId, line: &str) -> Result<DeployReply, DeployFailure> {
    if let Some(message) = line.strip_prefix(crate::control::reply::ERROR_PREFIX) {
        return Err(DeployFailure::Remote {
            node: node.clone(),
            message: message.to_owned(),
        });
    }
    serde_json::from_str(line).map_err(|source| DeployFailure::BadReply {
        line: line.to_owned(),
        source,
    })
}
