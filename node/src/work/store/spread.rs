//! Spreading units over the file system. ext4 gives a new file an inode near its
//! directory's, and on a file system without a journal it skips every inode freed in the
//! last seconds only after reading it (`recently_deleted`): with units made and released by
//! the thousand in one directory, each new file scans a growing run of freed inodes, which
//! cost the nodes a large share of their CPU in the control benchmark. Marked a top
//! directory (`chattr +T`), the units directory has ext4 place each unit's directory in a
//! block group of its own choosing (the Orlov allocator), and the unit's files follow it.
//! Other file systems ignore or refuse the mark; either is fine.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// `FS_TOPDIR_FL` of `linux/fs.h`: allocate the subdirectories as top-level ones.
pub(super) const TOPDIR_FLAG: libc::c_int = 0x0002_0000;

/// The inode flags of `dir` (`FS_IOC_GETFLAGS`).
pub(super) fn flags(dir: &File) -> io::Result<libc::c_int> {
    let mut flags: libc::c_int = 0;
    // SAFETY: the ioctl writes one int through a pointer to a live int.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags)
}

/// Marks `dir` a top directory unless it is one; refused where the file system has no
/// such mark.
pub(super) fn mark_top_directory(dir: &Path) -> io::Result<()> {
    let file = File::open(dir)?;
    let mut flags = flags(&file)?;
    if flags & TOPDIR_FLAG != 0 {
        return Ok(());
    }
    flags |= TOPDIR_FLAG;
    // SAFETY: the ioctl reads one int through a pointer to a live int.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
