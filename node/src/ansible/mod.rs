//! ansible-runner's job streams, natively: packing a private data dir into the *transmit*
//! stream that `ansible-runner worker` reads, and processing the *worker* stream back into
//! an artifact dir and console output, as `ansible-runner process` does.
//!
//! Both directions are byte-compatible with ansible-runner 2.x (PR #670 format: a kwargs
//! line, `{"zipfile": N}` with N the raw zip size, unwrapped padded base64 glued to
//! `{"eof": true}`). Nothing here runs Ansible; the worker side stays real ansible-runner.
//!
//! - [`kwargs`]: the job's run options, built as `ansible-runner transmit` builds them.
//! - [`transmit`]: writes the transmit stream for a private data dir, streaming its zip.
//! - [`process`]: reads a worker stream: a sans-IO line [`process::Processor`] and the
//!   async driver [`process::process`].
//! - `pyjson`: Python `json.dumps` formatting, so our lines match the reference's bytes.
//! - `archive`: zip timestamps (DOS time in local time) both ways.
//! - [`unpack`]: a worker's artifacts zip into the artifacts dir (`unstream_dir`), unable to
//!   leave it or fill the disk, within [`unpack::ArtifactLimits`].
//! - `beneath`: files under one directory opened by fd without following symlinks;
//!   [`artifact_dir`]: the artifact dir while a stream is processed, through it (public for
//!   the Python package, whose line handling is ansible-runner's own).

mod archive;
pub mod artifact_dir;
mod beneath;
pub mod kwargs;
pub mod process;
mod pyjson;
pub mod transmit;
pub mod unpack;

#[cfg(test)]
mod craft;
#[cfg(test)]
mod hostile;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
