//! The lib tests' allocator: the system allocator, counting on each thread the bytes of the
//! allocations that thread made and has not freed, as the allocator sized them
//! (`malloc_usable_size` on glibc, so a 19-byte buffer counts the 32 bytes it really takes).
//! A test that builds and queues things on its own thread reads [`live_bytes`] before and
//! after to learn exactly what they hold, whatever the tests running beside it do.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    /// Bytes allocated on this thread minus bytes freed on it.
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

/// The system allocator, counting per thread.
struct Counting;

#[global_allocator]
static COUNTING: Counting = Counting;

/// Bytes allocated and not freed on the calling thread (memory another thread frees is
/// counted there).
pub(crate) fn live_bytes() -> i64 {
    LIVE.with(Cell::get)
}

fn count(delta: i64) {
    // After the thread's locals are gone (its last frees), nothing is counted.
    let _ = LIVE.try_with(|live| live.set(live.get() + delta));
}

/// What the allocator really set aside for `ptr`, which was asked `size` bytes.
fn usable(ptr: *mut u8, size: usize) -> i64 {
    if ptr.is_null() {
        return 0;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `ptr` came from the system allocator (malloc or posix_memalign) and is live.
    // (At least what was asked.)
    let size = size.max(unsafe { libc::malloc_usable_size(ptr.cast()) });
    i64::try_from(size).unwrap_or(i64::MAX)
}

// SAFETY: every call is passed to `System` unchanged; only counters are kept besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let ptr = unsafe { System.alloc(layout) };
        count(usable(ptr, layout.size()));
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        count(usable(ptr, layout.size()));
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-usable(ptr, layout.size()));
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let before = usable(ptr, layout.size());
        // SAFETY: the caller's contract, passed on.
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            count(usable(moved, new_size) - before);
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_this_thread_holds_and_gives_it_back_when_freed() {
        let before = live_bytes();
        let held: Vec<Box<[u8; 1000]>> = (0..100).map(|_| Box::new([0u8; 1000])).collect();
        let grown = live_bytes() - before;
        assert!((100_000..200_000).contains(&grown), "{grown} bytes counted");
        drop(held);
        assert_eq!(live_bytes(), before);
    }
}
