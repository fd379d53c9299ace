//! Content-addressed submissions on the node (`SubmitManifest`): check the manifest, pin
//! what the submitter's scope of the content cache holds, ask for the rest, receive and
//! verify it, assemble the exact transmit stream and store it as the unit's payload.
//!
//! Everything is checked before anything is written: the manifest against its caps and the
//! payload limit, the disk against the free-space floor. A content whose SHA-256 is not the
//! one listed fails the unit and is never cached; files sent inline (`env/`) stay in memory
//! until the stream is assembled and never reach the cache.
//!
//! A submission holds a session slot and its pins only from the manifest to its last
//! content, and only while it keeps the pace of [`pace`]: the sizes it declares buy it no
//! time. The look-up and the assembly run on blocking threads, linear in the manifest's
//! entries.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Server, SubmitRequest};
use crate::access::AccessPolicy;
use crate::ansible::transmit::manifest::{
    Content, ContentHash, MAX_ENTRIES, MAX_MANIFEST_LEN, Manifest,
};
use crate::ansible::transmit::{Held, Transmit, TransmitError};
use crate::mesh::driver::{MeshStream, PeerIdentity};
use crate::work::cache::{Scope, Session};
use crate::work::core::{PayloadError, Requester};
use crate::work::driver::{Created, Submission};
use crate::work::error::WorkError;
use crate::work::protocol::{self, ProtocolError, Reply, WorkRefusal};
use crate::work::unit::UnitId;
use pace::Paced;

mod pace;

/// Bytes read from the stream at a time.
const READ_LEN: usize = 256 * 1024;

/// How long a peer that has not taken the final reply within is given up on (the
/// session's slot and pins are released before that reply).
const REPLY_LINGER: Duration = pace::IDLE;

/// Why the contents were refused.
#[derive(Debug, thiserror::Error)]
enum ReceiveError {
    /// The stream ended before an entry's last byte.
    #[error("the contents ended before all of {name} arrived")]
    Short { name: String },
    /// A content's SHA-256 is not the one listed.
    #[error("the content sent for {name} does not match its SHA-256 (nothing was cached)")]
    Mismatch { name: String },
    /// Bytes after the last content.
    #[error("bytes follow the last content")]
    Trailing,
    /// The submission fell behind its pace ([`pace`]).
    #[error(
        "the submission fell behind: {received} bytes in {} s; after the first {} s it must \
         keep to at least {} KiB/s, and bytes sent early bank at most {} s",
        elapsed.as_secs(),
        pace::GRACE.as_secs(),
        pace::FLOOR_RATE / 1024,
        pace::IDLE.as_secs()
    )]
    Late {
        /// Bytes received since the session slot was taken.
        received: u64,
        /// Since the session slot was taken.
        elapsed: Duration,
    },
    /// Writing to the cache failed.
    #[error("storing a content: {0}")]
    Store(std::io::Error),
    /// The stream failed.
    #[error("reading the contents: {0}")]
    Stream(std::io::Error),
}

/// A submission, its manifest checked, with what the node holds of it.
struct Plan {
    manifest: Manifest,
    held: Vec<Held>,
    /// Entries whose content is asked for.
    lacking: Vec<u32>,
    /// Bytes to receive.
    lacking_bytes: u64,
    /// What they will pin once received ([`crate::work::cache::charge_of`] each).
    lacking_charge: u64,
}

impl Server {
    fn manifest_refusal(&self, peer: &PeerIdentity, reason: String) -> Reply {
        tracing::info!(peer = %peer.node, key = %peer.key, %reason, "manifest refused");
        Reply::Refused(WorkRefusal::Manifest {
            node: self.node().clone(),
            reason,
        })
    }

    /// Answers a `SubmitManifest` (the manifest is the next frame).
    pub(super) async fn submit_manifest(
        &self,
        stream: &mut MeshStream,
        peer: &PeerIdentity,
        access: &AccessPolicy,
        by: &Requester,
        request: SubmitRequest,
    ) -> Result<(), ProtocolError> {
        let Some((unit, reply)) = self.take_submission(stream, peer, access, &request).await?
        else {
            return Ok(());
        };
        let started = reply == Reply::Started;
        let write = tokio::time::timeout(REPLY_LINGER, protocol::write(stream, &reply));
        write.await.map_err(|_| lingered())??;
        if let (true, Some(offset)) = (started, request.follow) {
            return self.results(stream, unit, offset, by).await;
        }
        stream.shutdown().await?;
        Ok(())
    }

    /// Everything before the final reply: `None` once refused (the refusal sent), else the
    /// unit and the reply to send. The session's slot and pins are held only in here, from
    /// the manifest to the last content under one [`Paced`] deadline: a peer that stalls
    /// anywhere (not sending its manifest, not taking the `Lacking` reply, not sending its
    /// contents) loses them at the pace's deadline, whatever sizes it declared.
    async fn take_submission<S>(
        &self,
        stream: &mut S,
        peer: &PeerIdentity,
        access: &AccessPolicy,
        request: &SubmitRequest,
    ) -> Result<Option<(UnitId, Reply)>, ProtocolError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + ?Sized,
    {
        if let Err(e) = self.admit(peer, access, request) {
            let reply = self.refuse(peer, &e);
            return refuse_unread(stream, &reply).await;
        }
        let session = (self.contents.as_ref()).and_then(|c| c.session(Scope::of(&peer.owner())));
        let Some(session) = session else {
            if self.contents.is_some() {
                tracing::info!(peer = %peer.node, "content cache busy: the payload is to be sent whole");
            }
            return refuse_unread(stream, &self.cache_off()).await;
        };
        let mut paced = Paced::new(stream);
        let asked = self.ask(&mut paced, peer, request, session).await;
        let reply = match asked {
            Ok(Some((unit, plan, mut session))) => {
                let reply = self.take_contents(&mut paced, peer, unit, plan, &mut session);
                let reply = reply.await.map(|reply| Some((unit, reply)));
                // The payload is stored: the cache may evict what this submission used.
                drop(session);
                reply
            }
            other => other.map(|_| None),
        };
        if paced.is_behind() {
            let (pace, now) = (paced.pace(), tokio::time::Instant::now().into_std());
            tracing::info!(peer = %peer.node, key = %peer.key, received = pace.received(), elapsed_s = pace.elapsed(now).as_secs(), "a content-addressed submission fell behind its pace: given up");
        }
        reply
    }

    /// The answer when the cache is off, busy, or the submission would pin too much of it:
    /// the client sends the payload whole.
    fn cache_off(&self) -> Reply {
        Reply::Refused(WorkRefusal::ContentCacheOff {
            node: self.node().clone(),
        })
    }

    /// Reads and checks the manifest, looks it up, makes the unit and asks for what is
    /// lacking: the unit, the plan and the session, or `None` once refused.
    async fn ask<S>(
        &self,
        stream: &mut Paced<'_, S>,
        peer: &PeerIdentity,
        request: &SubmitRequest,
        session: Session,
    ) -> Result<Option<(UnitId, Plan, Session)>, ProtocolError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + ?Sized,
    {
        let manifest = match self.read_manifest(stream, peer).await? {
            Ok(manifest) => manifest,
            Err(refusal) => return answer(stream, &refusal).await,
        };
        let (plan, mut session) = match look_up(manifest, session).await {
            Ok(done) => done,
            Err(e) => {
                let e = WorkError::Internal(format!("checking the content cache: {e}"));
                return answer(stream, &self.refuse(peer, &e)).await;
            }
        };
        if !session.reserve(plan.lacking_charge) {
            tracing::info!(peer = %peer.node, lacking = plan.lacking_charge, "a submission would pin over its share of the content cache: the payload is to be sent whole");
            drop(session);
            return answer(stream, &self.cache_off()).await;
        }
        let cached = plan.manifest.entries.iter().zip(&plan.held);
        let cached: u64 = cached
            .filter(|(_, held)| matches!(held, Held::File(_)))
            .map(|(e, _)| e.size)
            .sum();
        self.work.metrics().content_cached(cached);
        (self.work.metrics()).content_leases_unavailable(session.cache().leases_unavailable());
        // The assembled stream is base64: four bytes for every three, rounded up.
        let data_len: u64 = plan.manifest.entries.iter().map(|e| e.data_len()).sum();
        let stream_len = data_len.div_ceil(3) * 4;
        if let Err(e) = (self.work).check_room_for(plan.lacking_bytes.saturating_add(stream_len)) {
            return answer(stream, &self.refuse(peer, &e)).await;
        }
        let unit = match self.create_for(peer, request).await {
            Ok(unit) => unit,
            Err(e) => return answer(stream, &self.refuse(peer, &e)).await,
        };
        let lacking = plan.lacking.clone();
        if let Err(e) = protocol::write(stream, &Reply::Lacking { unit, lacking }).await {
            let error = match e {
                ProtocolError::Io(e) if !stream.is_behind() => ReceiveError::Stream(e),
                _ => late(stream),
            };
            self.fail_contents(unit, error);
            return Err(ProtocolError::Io(std::io::ErrorKind::TimedOut.into()));
        }
        // Only the contents count toward the pace, not the manifest before them.
        stream.asked();
        Ok(Some((unit, plan, session)))
    }

    /// The manifest, or the refusal of one that is too large or does not decode.
    async fn read_manifest<S>(
        &self,
        stream: &mut S,
        peer: &PeerIdentity,
    ) -> Result<Result<Manifest, Reply>, ProtocolError>
    where
        S: AsyncRead + Unpin + Send + ?Sized,
    {
        let reason = match protocol::read_limited::<Manifest, _>(stream, MAX_MANIFEST_LEN).await {
            Ok(manifest) => match manifest.check(self.work.max_payload()) {
                Ok(()) => return Ok(Ok(manifest)),
                Err(e) => e.to_string(),
            },
            Err(ProtocolError::TooLarge(len)) => {
                format!("the manifest of {len} bytes is over the limit of {MAX_MANIFEST_LEN}")
            }
            Err(ProtocolError::Decode(e)) => format!(
                "the manifest does not decode ({e}); a manifest lists at most {MAX_ENTRIES} entries"
            ),
            Err(e) => return Err(e),
        };
        Ok(Err(self.manifest_refusal(peer, reason)))
    }

    /// Fails `unit` for its contents: broken off (the stream failed) or refused.
    fn fail_contents(&self, unit: UnitId, error: ReceiveError) {
        let error = match error {
            ReceiveError::Stream(e) => PayloadError::ContentsBroke(Arc::new(e)),
            e => PayloadError::ContentsRefused(Arc::new(e)),
        };
        self.work.fail_payload(unit, error);
    }

    async fn create_for(
        &self,
        peer: &PeerIdentity,
        request: &SubmitRequest,
    ) -> Result<UnitId, WorkError> {
        let submission = Submission {
            node: self.node().to_string(),
            work_type: request.work_type.clone(),
            params: request.params.clone(),
            submitter: (peer.node.clone(), Some(peer.owner())),
            ttl: None,
            sign_work: false,
        };
        match self.work.create_submitted(submission, None).await? {
            Created::New(unit) | Created::Existing(unit) => Ok(unit),
        }
    }

    /// Receives the contents, assembles the stream and stores it as `unit`'s payload; the
    /// reply to send (a refusal fails the unit).
    async fn take_contents<S>(
        &self,
        stream: &mut Paced<'_, S>,
        peer: &PeerIdentity,
        unit: UnitId,
        mut plan: Plan,
        session: &mut Session,
    ) -> Result<Reply, ProtocolError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + ?Sized,
    {
        match receive(stream, &mut plan, session).await {
            Ok(()) => {}
            Err(ReceiveError::Stream(e)) if !stream.is_behind() => {
                // The unit's detail keeps what the stream said; the error itself ends this
                // exchange.
                let copy = std::io::Error::new(e.kind(), e.to_string());
                self.fail_contents(unit, ReceiveError::Stream(copy));
                return Err(ProtocolError::Io(e));
            }
            Err(e) => {
                let e = match e {
                    ReceiveError::Stream(_) => late(stream),
                    e => e,
                };
                let reason = e.to_string();
                self.fail_contents(unit, e);
                return Ok(self.manifest_refusal(peer, reason));
            }
        }
        self.work.metrics().content_received(plan.lacking_bytes);
        let transmit = match assemble(plan).await {
            Ok(transmit) => transmit,
            Err(e) => {
                let reason = e.to_string();
                (self.work).fail_payload(unit, PayloadError::Assembly(Arc::new(e)));
                return Ok(self.manifest_refusal(peer, reason));
            }
        };
        let failed = AtomicBool::new(false);
        let (mut reader, mut writer) = tokio::io::duplex(READ_LEN);
        let send = async {
            let sent = transmit.send(&mut writer).await;
            // Set before the writer closes, so the store never takes a cut stream as whole.
            failed.store(sent.is_err(), Ordering::SeqCst);
            drop(writer);
            sent
        };
        let node = self.node().clone();
        let failed = &failed;
        let store = async move {
            let check = |_: &[u8; 32]| match failed.load(Ordering::SeqCst) {
                true => Err(PayloadError::NotAssembled { node: node.clone() }),
                false => Ok(()),
            };
            self.work.start_checked(unit, &mut reader, check).await
        };
        let (sent, stored) = tokio::join!(send, store);
        if let Err(e) = sent {
            tracing::warn!(%unit, error = %e, "assembling a payload failed");
        }
        Ok(match stored {
            Ok(_) => Reply::Started,
            Err(e) => self.refuse(peer, &e),
        })
    }
}

/// Sends `reply` as the last frame: the exchange is over, `None` comes of it.
async fn answer<S, T>(stream: &mut S, reply: &Reply) -> Result<Option<T>, ProtocolError>
where
    S: AsyncWrite + Unpin + Send + ?Sized,
{
    protocol::write(stream, reply).await?;
    stream.shutdown().await?;
    Ok(None)
}

/// Why the submission on `stream` was given up, once it fell behind.
fn late<S: ?Sized>(stream: &Paced<'_, S>) -> ReceiveError {
    let pace = stream.pace();
    ReceiveError::Late {
        received: pace.received(),
        elapsed: pace.elapsed(tokio::time::Instant::now().into_std()),
    }
}

/// The error of a final reply the peer did not take within [`REPLY_LINGER`].
fn lingered() -> ProtocolError {
    let e = "the peer did not take the reply";
    ProtocolError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, e))
}

/// Answers before the manifest is read (refused, or the cache busy): reads the manifest
/// frame away and sends `reply`, all within [`REPLY_LINGER`]. Such a peer holds no session
/// slot, but a peer that stalls here must not hold its task and stream for ever either.
async fn refuse_unread<S, T>(stream: &mut S, reply: &Reply) -> Result<Option<T>, ProtocolError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + ?Sized,
{
    let refuse = async {
        skip_frame(stream).await?;
        answer(stream, reply).await
    };
    tokio::time::timeout(REPLY_LINGER, refuse)
        .await
        .map_err(|_| lingered())?
}

/// Reads away the manifest frame unread (at most [`MAX_MANIFEST_LEN`] bytes), so that the
/// refusal that follows reaches a submitter still sending it.
async fn skip_frame<S>(stream: &mut S) -> Result<(), ProtocolError>
where
    S: AsyncRead + Unpin + Send + ?Sized,
{
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u64::from(u32::from_be_bytes(len)).min(MAX_MANIFEST_LEN as u64);
    tokio::io::copy(&mut (&mut *stream).take(len), &mut tokio::io::sink()).await?;
    Ok(())
}

/// Pins what the scope holds, checks that each pinned file still holds its content,
/// forgets those that do not, and asks for every content not held once (the first entry
/// with it). Runs on a blocking thread, all of it: a manifest lists up to [`MAX_ENTRIES`]
/// entries, and each distinct content is looked up (and pinned) once, through a set.
async fn look_up(
    manifest: Manifest,
    mut session: Session,
) -> Result<(Plan, Session), tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || {
        let held_files = held_files(&manifest, &mut session);
        (plan(manifest, &held_files), session)
    })
    .await
}

/// The contents of `manifest` this scope holds and that still hold on disk, pinned.
fn held_files(manifest: &Manifest, session: &mut Session) -> HashMap<ContentHash, PathBuf> {
    let now = std::time::SystemTime::now();
    let mut seen: HashSet<ContentHash> = HashSet::new();
    let mut held_files: HashMap<ContentHash, PathBuf> = HashMap::new();
    for entry in &manifest.entries {
        let Content::Hashed(hash) = &entry.content else {
            continue;
        };
        if !seen.insert(*hash) {
            continue;
        }
        let Some((path, size)) = session.hit(hash) else {
            continue;
        };
        match session.check(hash, &path, size, now) {
            Ok(true) => {
                held_files.insert(*hash, path);
            }
            Ok(false) => {
                tracing::warn!(file = %path.display(), "a cached content is missing or changed on disk: forgotten, asked for again");
                session.forget(hash, size);
            }
            // Says nothing of the content (out of descriptors, say): not used this time,
            // not forgotten; what arrives for it replaces the file.
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "a cached content could not be checked: asked for again");
            }
        }
    }
    held_files
}

/// What to ask for, given the contents held.
fn plan(manifest: Manifest, held_files: &HashMap<ContentHash, PathBuf>) -> Plan {
    let mut held = Vec::with_capacity(manifest.entries.len());
    let mut lacking = Vec::new();
    let mut lacking_bytes = 0;
    let mut lacking_charge = 0;
    let mut asked: HashSet<ContentHash> = HashSet::new();
    for (index, entry) in manifest.entries.iter().enumerate() {
        let Content::Hashed(hash) = &entry.content else {
            held.push(Held::Listed);
            continue;
        };
        match held_files.get(hash) {
            Some(path) => held.push(Held::File(path.clone())),
            None => {
                if asked.insert(*hash) {
                    lacking.push(u32::try_from(index).unwrap_or(u32::MAX));
                    lacking_bytes += entry.size;
                    lacking_charge += crate::work::cache::charge_of(entry.size);
                }
                held.push(Held::Listed);
            }
        }
    }
    Plan {
        manifest,
        held,
        lacking,
        lacking_bytes,
        lacking_charge,
    }
}

/// The transmit stream of `plan`, every content received or held: on a blocking thread,
/// as it reads the metadata of every cached file it uses.
async fn assemble(plan: Plan) -> Result<Transmit, TransmitError> {
    tokio::task::spawn_blocking(move || Transmit::assemble(plan.manifest, plan.held))
        .await
        .map_err(|join| TransmitError::Worker(join.to_string()))?
}

/// Reads the asked and inline contents in manifest order, then the end of the stream.
async fn receive(
    stream: &mut (dyn AsyncRead + Unpin + Send),
    plan: &mut Plan,
    session: &mut Session,
) -> Result<(), ReceiveError> {
    let asked: HashSet<usize> = plan.lacking.iter().map(|&i| i as usize).collect();
    let mut received: HashMap<ContentHash, PathBuf> = HashMap::new();
    for (index, entry) in plan.manifest.entries.iter().enumerate() {
        match &entry.content {
            Content::Inline => {
                let mut bytes = Vec::new();
                let mut limited = (&mut *stream).take(entry.size);
                limited
                    .read_to_end(&mut bytes)
                    .await
                    .map_err(ReceiveError::Stream)?;
                if bytes.len() as u64 != entry.size {
                    return Err(ReceiveError::Short {
                        name: entry.name.clone(),
                    });
                }
                plan.held[index] = Held::Bytes(bytes);
            }
            Content::Hashed(hash) if asked.contains(&index) => {
                let path = receive_file(stream, session, &entry.name, hash, entry.size).await?;
                received.insert(*hash, path.clone());
                plan.held[index] = Held::File(path);
            }
            _ => {}
        }
    }
    // Later entries with a content received for an earlier one.
    for (index, entry) in plan.manifest.entries.iter().enumerate() {
        if let (Content::Hashed(hash), Held::Listed) = (&entry.content, &plan.held[index])
            && let Some(path) = received.get(hash)
        {
            plan.held[index] = Held::File(path.clone());
        }
    }
    let mut probe = [0u8; 1];
    match stream
        .read(&mut probe)
        .await
        .map_err(ReceiveError::Stream)?
    {
        0 => Ok(()),
        _ => Err(ReceiveError::Trailing),
    }
}

/// Receives one content into a temp file, verifies it, and commits it to the cache. The
/// temp file goes however this ends, the future dropped included.
async fn receive_file(
    stream: &mut (dyn AsyncRead + Unpin + Send),
    session: &mut Session,
    name: &str,
    hash: &ContentHash,
    size: u64,
) -> Result<PathBuf, ReceiveError> {
    let (temp, file) = session.temp_file().map_err(ReceiveError::Store)?;
    write_verified(stream, tokio::fs::File::from_std(file), name, hash, size).await?;
    session
        .commit(hash, temp, size)
        .map_err(ReceiveError::Store)
}

async fn write_verified(
    stream: &mut (dyn AsyncRead + Unpin + Send),
    mut file: tokio::fs::File,
    name: &str,
    hash: &ContentHash,
    size: u64,
) -> Result<(), ReceiveError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_LEN];
    let mut left = size;
    while left > 0 {
        let want = usize::try_from(left).map_or(READ_LEN, |l| l.min(READ_LEN));
        let n = stream
            .read(&mut buf[..want])
            .await
            .map_err(ReceiveError::Stream)?;
        if n == 0 {
            return Err(ReceiveError::Short { name: name.into() });
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .await
            .map_err(ReceiveError::Store)?;
        left -= n as u64;
    }
    if <[u8; 32]>::from(hasher.finalize()) != *hash {
        return Err(ReceiveError::Mismatch { name: name.into() });
    }
    // On disk before it is named by its hash: a power loss never leaves a cut file there.
    file.sync_data().await.map_err(ReceiveError::Store)?;
    Ok(())
}

#[cfg(test)]
mod tests;
