//! Giving freed heap back to the system. glibc keeps memory a burst of work freed in its
//! arenas (only the top of a heap is returned on its own), so a node's resident memory
//! stays at its busiest even when idle; `malloc_trim` returns every free page. Only on
//! glibc; elsewhere a no-op.

/// Returns the heap's free pages to the system. Walks every arena: call it when the node
/// has gone quiet, not per request.
pub(crate) fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory at the allocator's discretion.
    unsafe {
        libc::malloc_trim(0);
    }
}
