//! Fuzzing of the request decoders with proptest: structured but hostile inputs (valid-looking
//! documents with mutations, nesting up to and past the limits, huge numbers, invalid UTF-8,
//! truncation) for every decoder of a request. Each case must give Ok or a clean error, never
//! panic, finish within `TIME_LIMIT` and stay within a memory budget (a counting allocator).
//!
//! The case counts keep the whole set well under a minute in a debug build on two cores;
//! `PROPTEST_CASES=<n>` runs every property with n cases for a longer search.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use proptest::prelude::*;

mod body;
mod generators;
mod patch;
mod protobuf;
mod query;
mod server;

/// How long one decode may take in a debug build.
const TIME_LIMIT: Duration = Duration::from_secs(2);

/// The stack of tokio's worker threads, where the server decodes requests.
const WORKER_STACK: usize = 2 * 1024 * 1024;

/// `n` cases, or `PROPTEST_CASES` when set.
fn config(n: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(n);
    ProptestConfig {
        cases,
        // Failures are reported with the shrunk input; no regression files in the source tree.
        failure_persistence: None,
        // A failing case that hangs costs seconds per shrinking step; keep failures quick.
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    }
}

/// The unit tests' allocator: the system one, counting the bytes each thread holds, so a test
/// can see the peak a decode reached.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    /// A measured thread's hard cap: past it allocation fails and the test binary aborts,
    /// rather than a runaway decoder taking the machine's memory.
    static CAP: Cell<isize> = const { Cell::new(isize::MAX) };
}

/// Whether `delta` more bytes fit under this thread's cap.
fn fits(delta: usize) -> bool {
    let live = LIVE.try_with(Cell::get).unwrap_or(0);
    let cap = CAP.try_with(Cell::get).unwrap_or(isize::MAX);
    live.saturating_add(delta as isize) <= cap
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call goes to the system allocator unchanged (or fails as allocators may);
// only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !fits(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !fits(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !fits(new_size.saturating_sub(layout.size())) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What a bounded run measured.
#[derive(Debug)]
pub struct Cost {
    pub elapsed: Duration,
    /// The most bytes the run held at once (its result included).
    pub peak: usize,
}

/// Runs `f` on a thread with a server worker's stack and returns its result and cost; panics
/// (failing the case) if `f` panics or runs past `TIME_LIMIT`. A run that never ends is left
/// behind, and the case fails; one that allocates past `cap` bytes aborts the test binary.
pub fn measure<T: Send + 'static>(cap: usize, f: impl FnOnce() -> T + Send + 'static) -> (T, Cost) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .stack_size(WORKER_STACK)
        .spawn(move || {
            let base = LIVE.with(Cell::get);
            PEAK.with(|p| p.set(base));
            CAP.with(|c| c.set(base.saturating_add(cap.min(isize::MAX as usize) as isize)));
            let started = Instant::now();
            let out = f();
            let elapsed = started.elapsed();
            let peak = (PEAK.with(Cell::get) - base).max(0) as usize;
            let _ = tx.send((out, Cost { elapsed, peak }));
        })
        .expect("spawn a decoder thread");
    match rx.recv_timeout(TIME_LIMIT * 5) {
        Ok((out, cost)) => {
            assert!(
                cost.elapsed < TIME_LIMIT,
                "took {:?} (limit {TIME_LIMIT:?})",
                cost.elapsed
            );
            (out, cost)
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("no answer after {:?}: a hang", TIME_LIMIT * 5)
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("the decoder panicked"),
    }
}

/// What any decode may hold whatever its input (the YAML alias budget's floor is 4 MiB).
const MEMORY_FLOOR: usize = 8 << 20;

/// `measure`, and the peak must stay within `factor` times the input plus `MEMORY_FLOOR`.
pub fn bounded<T: Send + 'static>(
    input_len: usize,
    factor: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let budget = input_len * factor + MEMORY_FLOOR;
    let (out, cost) = measure(budget.saturating_mul(4), f);
    assert!(
        cost.peak <= budget,
        "a {input_len}-byte input held {} bytes at peak (budget {budget})",
        cost.peak
    );
    out
}

/// Fails if `f` scales worse than linearly in `n`: four times the input may take up to eight
/// times as long (quadratic code takes sixteen). Runs interleaved, best of two, so the load of
/// a shared machine mostly cancels out.
pub fn assert_linear(n: usize, f: impl Fn(usize)) {
    let time = |k| {
        let started = Instant::now();
        f(k);
        started.elapsed()
    };
    let (mut small, mut large) = (Duration::MAX, Duration::MAX);
    for _ in 0..2 {
        small = small.min(time(n));
        large = large.min(time(4 * n));
    }
    assert!(
        large < small * 8,
        "{n} took {small:?}, {} took {large:?}: worse than linear",
        4 * n
    );
}
