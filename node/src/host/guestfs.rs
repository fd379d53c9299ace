//! The job's limits inside `wasi:filesystem/types`: wraps wasmtime-wasi's own host calls
//! where a guest opens descriptors, takes resource-table entries or adds to its job
//! directory, and charges them to the job before they happen.
//!
//! - `open-at` counts a host descriptor against the job's cap ([`super::fds`]); over it, the
//!   guest gets `error-code::insufficient-memory` (WASI 0.2 has no `EMFILE`; this is the
//!   code for "out of a resource").
//! - Calls that return a new handle or stream refuse with the same code when the job's
//!   resource table is full, instead of trapping.
//! - `write`, `set-size` and creates (`open-at` with `create`, `create-directory-at`,
//!   `symlink-at`, `link-at`) are charged to the job's [`DiskLedger`]; past the quota the
//!   guest gets `error-code::quota` (and its job fails when it ends). Streams from
//!   `write-via-stream` and `append-via-stream` are charged per write (`QuotaStream`)
//!   and fail with `ENOSPC`.
//!
//! Everything else is wasmtime-wasi's implementation, called as it is.

use std::sync::Arc;

use bytes::Bytes;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, LinkerInstance, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    DescriptorFlags, DirectoryEntryStream, ErrorCode, Filesize, HostDescriptor, OpenFlags,
    PathFlags,
};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, FsResult, OutputStream, Pollable, StreamError, StreamResult,
};

use super::disk::Usage;
use super::quota::DiskLedger;
use super::state::JobState;

/// The WASI filesystem interface the host links (wasmtime-wasi 48 binds WASI 0.2.12; older
/// guests' imports resolve to it by semver).
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// What a guest gets when its descriptor or resource cap is reached.
const OUT_OF_HANDLES: ErrorCode = ErrorCode::InsufficientMemory;

/// Replaces the filesystem calls that open, take handles or grow the job directory with
/// ones that check the job's limits first.
///
/// # Errors
/// When the linker refuses a definition (a wasmtime-wasi version with other names).
pub fn add_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let result = define(&mut linker.instance(FILESYSTEM_TYPES)?);
    linker.allow_shadowing(false);
    result
}

type FsCall<T> = wasmtime::Result<(Result<T, ErrorCode>,)>;

fn define(inst: &mut LinkerInstance<'_, JobState>) -> wasmtime::Result<()> {
    inst.func_wrap_async(
        "[method]descriptor.open-at",
        |store,
         args: (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| { Box::new(open_at(store, args)) },
    )?;
    inst.func_wrap_async(
        "[method]descriptor.write",
        |store, (fd, buf, offset): (Resource<Descriptor>, Vec<u8>, Filesize)| {
            Box::new(write(store, fd, buf, offset))
        },
    )?;
    inst.func_wrap_async(
        "[method]descriptor.set-size",
        |store, (fd, size): (Resource<Descriptor>, Filesize)| Box::new(set_size(store, fd, size)),
    )?;
    inst.func_wrap_async(
        "[method]descriptor.create-directory-at",
        |store, (fd, path): (Resource<Descriptor>, String)| {
            Box::new(create_directory_at(store, fd, path))
        },
    )?;
    inst.func_wrap_async(
        "[method]descriptor.symlink-at",
        |store, (fd, old, new): (Resource<Descriptor>, String, String)| {
            Box::new(symlink_at(store, fd, old, new))
        },
    )?;
    inst.func_wrap_async(
        "[method]descriptor.link-at",
        |store,
         args: (
            Resource<Descriptor>,
            PathFlags,
            String,
            Resource<Descriptor>,
            String,
        )| { Box::new(link_at(store, args)) },
    )?;
    inst.func_wrap_async(
        "[method]descriptor.read-directory",
        |store, (fd,): (Resource<Descriptor>,)| Box::new(read_directory(store, fd)),
    )?;
    inst.func_wrap("[method]descriptor.read-via-stream", read_via_stream)?;
    inst.func_wrap(
        "[method]descriptor.write-via-stream",
        |store, (fd, offset): (Resource<Descriptor>, Filesize)| {
            output_stream(store, |view| {
                HostDescriptor::write_via_stream(view, fd, offset)
            })
        },
    )?;
    inst.func_wrap(
        "[method]descriptor.append-via-stream",
        |store, (fd,): (Resource<Descriptor>,)| {
            output_stream(store, |view| HostDescriptor::append_via_stream(view, fd))
        },
    )?;
    Ok(())
}

/// wasmtime-wasi's result as the call's: an error code for the guest, or a trap.
fn guest_result<T>(result: FsResult<T>) -> FsCall<T> {
    match result {
        Ok(value) => Ok((Ok(value),)),
        Err(e) => Ok((Err(e.downcast()?),)),
    }
}

/// Whether the guest may take `descriptors` more host descriptors and `entries` more
/// table entries; logs the job's first refusal.
fn admit(state: &mut JobState, descriptors: usize, entries: usize) -> bool {
    let first = state.fds.refused().is_none();
    match state.admit(descriptors, entries) {
        Ok(()) => true,
        Err(why) => {
            if first {
                tracing::warn!(unit = %state.unit, %why, "refused a guest descriptor");
            }
            false
        }
    }
}

/// Charges a guest write or create to the job's quota (none: always fits).
async fn charge(disk: Option<Arc<DiskLedger>>, bytes: u64, inodes: u64) -> bool {
    match disk {
        Some(disk) => disk.admit(Usage { bytes, inodes }).await,
        None => true,
    }
}

/// How many bytes writing up to `end` adds to the file `fd` (0 for a directory: the
/// delegated call refuses it).
fn growth(state: &JobState, fd: &Resource<Descriptor>, end: u64) -> u64 {
    let size = match state.table.get(fd) {
        Ok(Descriptor::File(f)) => f.file.metadata().map_or(0, |m| m.len()),
        _ => return 0,
    };
    end.saturating_sub(size)
}

async fn open_at(
    mut store: StoreContextMut<'_, JobState>,
    (fd, path_flags, path, oflags, flags): (
        Resource<Descriptor>,
        PathFlags,
        String,
        OpenFlags,
        DescriptorFlags,
    ),
) -> FsCall<Resource<Descriptor>> {
    let state = store.data_mut();
    if !admit(state, 1, 1) {
        return Ok((Err(OUT_OF_HANDLES),));
    }
    let creates = u64::from(oflags.contains(OpenFlags::CREATE));
    if !charge(state.disk.clone(), 0, creates).await {
        return Ok((Err(ErrorCode::Quota),));
    }
    let opened =
        HostDescriptor::open_at(&mut state.filesystem(), fd, path_flags, path, oflags, flags).await;
    let opened = guest_result(opened)?;
    if let (Ok(descriptor),) = &opened {
        match state.table.get(descriptor) {
            Ok(Descriptor::File(f)) => state.fds.track_file(&f.file),
            Ok(Descriptor::Dir(d)) => state.fds.track_file(&d.dir),
            Err(_) => {}
        }
    }
    Ok(opened)
}

async fn write(
    mut store: StoreContextMut<'_, JobState>,
    fd: Resource<Descriptor>,
    buf: Vec<u8>,
    offset: Filesize,
) -> FsCall<Filesize> {
    let state = store.data_mut();
    let end = offset.saturating_add(buf.len() as u64);
    if !charge(state.disk.clone(), growth(state, &fd, end), 0).await {
        return Ok((Err(ErrorCode::Quota),));
    }
    guest_result(HostDescriptor::write(&mut state.filesystem(), fd, buf, offset).await)
}

async fn set_size(
    mut store: StoreContextMut<'_, JobState>,
    fd: Resource<Descriptor>,
    size: Filesize,
) -> FsCall<()> {
    let state = store.data_mut();
    if !charge(state.disk.clone(), growth(state, &fd, size), 0).await {
        return Ok((Err(ErrorCode::Quota),));
    }
    guest_result(HostDescriptor::set_size(&mut state.filesystem(), fd, size).await)
}

async fn create_directory_at(
    mut store: StoreContextMut<'_, JobState>,
    fd: Resource<Descriptor>,
    path: String,
) -> FsCall<()> {
    let state = store.data_mut();
    if !charge(state.disk.clone(), 0, 1).await {
        return Ok((Err(ErrorCode::Quota),));
    }
    guest_result(HostDescriptor::create_directory_at(&mut state.filesystem(), fd, path).await)
}

async fn symlink_at(
    mut store: StoreContextMut<'_, JobState>,
    fd: Resource<Descriptor>,
    old_path: String,
    new_path: String,
) -> FsCall<()> {
    let state = store.data_mut();
    if !charge(state.disk.clone(), 0, 1).await {
        return Ok((Err(ErrorCode::Quota),));
    }
    let linked = HostDescriptor::symlink_at(&mut state.filesystem(), fd, old_path, new_path).await;
    guest_result(linked)
}

async fn link_at(
    mut store: StoreContextMut<'_, JobState>,
    (fd, old_flags, old_path, new_fd, new_path): (
        Resource<Descriptor>,
        PathFlags,
        String,
        Resource<Descriptor>,
        String,
    ),
) -> FsCall<()> {
    let state = store.data_mut();
    if !charge(state.disk.clone(), 0, 1).await {
        return Ok((Err(ErrorCode::Quota),));
    }
    let mut view = state.filesystem();
    let linked = HostDescriptor::link_at(&mut view, fd, old_flags, old_path, new_fd, new_path);
    guest_result(linked.await)
}

async fn read_directory(
    mut store: StoreContextMut<'_, JobState>,
    fd: Resource<Descriptor>,
) -> FsCall<Resource<DirectoryEntryStream>> {
    let state = store.data_mut();
    if !admit(state, 0, 1) {
        return Ok((Err(OUT_OF_HANDLES),));
    }
    guest_result(HostDescriptor::read_directory(&mut state.filesystem(), fd).await)
}

fn read_via_stream(
    mut store: StoreContextMut<'_, JobState>,
    (fd, offset): (Resource<Descriptor>, Filesize),
) -> FsCall<Resource<DynInputStream>> {
    let state = store.data_mut();
    if !admit(state, 0, 1) {
        return Ok((Err(OUT_OF_HANDLES),));
    }
    guest_result(HostDescriptor::read_via_stream(
        &mut state.filesystem(),
        fd,
        offset,
    ))
}

/// Opens a write or append stream with `open`, charging its writes to the job's quota.
fn output_stream(
    mut store: StoreContextMut<'_, JobState>,
    open: impl FnOnce(
        &mut wasmtime_wasi::filesystem::WasiFilesystemCtxView<'_>,
    ) -> FsResult<Resource<DynOutputStream>>,
) -> FsCall<Resource<DynOutputStream>> {
    let state = store.data_mut();
    if !admit(state, 0, 1) {
        return Ok((Err(OUT_OF_HANDLES),));
    }
    let opened = guest_result(open(&mut state.filesystem()))?;
    let (Ok(stream),) = opened else {
        return Ok(opened);
    };
    let Some(disk) = state.disk.clone() else {
        return Ok((Ok(stream),));
    };
    // Same slot: the delete puts it first on the free list.
    let inner = state.table.delete(stream)?;
    let charged: DynOutputStream = Box::new(QuotaStream::new(inner, disk));
    Ok((Ok(state.table.push(charged)?),))
}

/// A file output stream whose writes are charged to the job's quota.
pub(crate) struct QuotaStream {
    inner: DynOutputStream,
    disk: Arc<DiskLedger>,
    /// The estimate ran out: measure before the next write is allowed.
    measure: bool,
    /// A write was refused for the quota: the stream is broken, as a full disk leaves it.
    failed: bool,
}

impl QuotaStream {
    fn new(inner: DynOutputStream, disk: Arc<DiskLedger>) -> Self {
        Self {
            inner,
            disk,
            measure: false,
            failed: false,
        }
    }
}

/// The stream error a guest sees past its quota (`ENOSPC`: streams report OS errors).
fn no_space() -> StreamError {
    let error = std::io::Error::from_raw_os_error(libc::ENOSPC);
    StreamError::LastOperationFailed(wasmtime::Error::new(error))
}

#[wasmtime_wasi::async_trait]
impl Pollable for QuotaStream {
    async fn ready(&mut self) {
        if std::mem::take(&mut self.measure) {
            // Room again after measuring (the guest overwrote or deleted), or refused.
            if self.disk.rescan().await.is_ok() && self.disk.room_bytes() == 0 {
                self.disk.refuse(Usage {
                    bytes: 1,
                    inodes: 0,
                });
                self.failed = true;
            }
        }
        self.inner.ready().await;
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for QuotaStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let more = Usage {
            bytes: bytes.len() as u64,
            inodes: 0,
        };
        if !self.disk.try_charge(more) {
            self.disk.refuse(more);
            self.failed = true;
            return Err(no_space());
        }
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        if self.failed || self.disk.is_stopped() {
            return Err(no_space());
        }
        let permit = self.inner.check_write()?;
        let room = self.disk.room_bytes();
        if room == 0 || !self.disk.is_measured() {
            self.measure = true;
            return Ok(0);
        }
        Ok(permit.min(usize::try_from(room).unwrap_or(usize::MAX)))
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}
