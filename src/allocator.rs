//! The process's allocator: mimalloc for the long-running server, glibc's malloc for container
//! supervisors. A supervisor lives as long as its container but does almost all of its
//! allocating in its first milliseconds, in three processes (libcontainer forks it twice);
//! mimalloc's per-process set-up and fresh pages cost more there than they save
//! (docs/BENCHMARKS.md). The choice is made once, before the first allocation, and never
//! changes, so every block is freed by the allocator that made it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::{CStr, c_char, c_int};
use std::sync::atomic::{AtomicBool, Ordering};

static SYSTEM: AtomicBool = AtomicBool::new(false);

/// Picks glibc's malloc for `kinglet supervise`, or for any command when
/// `KINGLET_SYSTEM_MALLOC` is set (so that heap profilers such as heaptrack see every
/// allocation). Called from an ELF constructor, which glibc gives the program's arguments.
pub fn choose(argc: c_int, argv: *const *const c_char) {
    // SAFETY: getenv with a NUL-terminated name; nothing changes the environment this early.
    if !unsafe { libc::getenv(c"KINGLET_SYSTEM_MALLOC".as_ptr()) }.is_null() {
        SYSTEM.store(true, Ordering::Relaxed);
        return;
    }
    if argc < 2 || argv.is_null() {
        return;
    }
    // SAFETY: glibc passes the process's argv (argc entries, NUL-terminated strings).
    let first = unsafe { *argv.add(1) };
    if !first.is_null() && unsafe { CStr::from_ptr(first) }.to_bytes() == b"supervise" {
        SYSTEM.store(true, Ordering::Relaxed);
    }
}

pub struct Switch;

// SAFETY: both allocators uphold GlobalAlloc's contract, and the one in use never changes
// after the first allocation.
unsafe impl GlobalAlloc for Switch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if SYSTEM.load(Ordering::Relaxed) {
            unsafe { System.alloc(layout) }
        } else {
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if SYSTEM.load(Ordering::Relaxed) {
            unsafe { System.alloc_zeroed(layout) }
        } else {
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if SYSTEM.load(Ordering::Relaxed) {
            unsafe { System.dealloc(ptr, layout) }
        } else {
            unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if SYSTEM.load(Ordering::Relaxed) {
            unsafe { System.realloc(ptr, layout, new_size) }
        } else {
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}
