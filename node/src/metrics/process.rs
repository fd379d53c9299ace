//! This process's resident memory and open file descriptors, read from `/proc` at scrape
//! time. Elsewhere (or when `/proc` cannot be read) both are reported as -1.

/// What the process uses now.
pub(super) struct Usage {
    pub(super) rss_bytes: i64,
    pub(super) open_fds: i64,
}

pub(super) fn usage() -> Usage {
    Usage {
        rss_bytes: rss_bytes().unwrap_or(-1),
        open_fds: open_fds().unwrap_or(-1),
    }
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn rss_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Entries of `/proc/self/fd` (less the one reading it).
fn open_fds() -> Option<i64> {
    let count = std::fs::read_dir("/proc/self/fd").ok()?.count();
    i64::try_from(count).ok().map(|n| n - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_reads_this_processs_memory_and_descriptors() {
        let before = usage();
        assert!(before.rss_bytes > 1 << 20, "{}", before.rss_bytes);
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let after = usage();
        // stdin, stdout, stderr and `file` at least (other test threads open and close theirs).
        assert!(after.open_fds >= 4, "{}", after.open_fds);
        drop(file);
    }
}
