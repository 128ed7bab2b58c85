//! What the fuzz targets share: an allocator that counts, so a target can hold a decoder to an
//! allocation budget proportional to its input. libFuzzer's `-malloc_limit_mb` only catches one
//! huge allocation; a decoder that allocates per *claimed* chunk (`handover=1000000.x`) makes
//! many small ones, and this catches that too.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(live, Relaxed);
}

// The dataplane and common crates forbid unsafe code; a global allocator cannot be written without
// it, and it lives here, in the fuzz crate only, passing every call straight to the system one.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        CALLS.fetch_add(1, Relaxed);
        grew(layout.size());
        // SAFETY: forwarded unchanged; the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        CALLS.fetch_add(1, Relaxed);
        grew(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        CALLS.fetch_add(1, Relaxed);
        if new_size >= layout.size() {
            grew(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What one call allocated: the most bytes it held at once beyond what was live before it, and
/// how many allocations (and reallocations) it made.
#[derive(Debug, Clone, Copy)]
pub struct Allocations {
    pub peak_bytes: usize,
    pub calls: usize,
}

/// Runs `f`, returning its result and what it allocated. libFuzzer runs one input at a time on
/// one thread, so nothing else allocates through Rust meanwhile.
pub fn metered<T>(f: impl FnOnce() -> T) -> (T, Allocations) {
    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    CALLS.store(0, Relaxed);
    let out = f();
    let allocations = Allocations { peak_bytes: PEAK.load(Relaxed).saturating_sub(before), calls: CALLS.load(Relaxed) };
    (out, allocations)
}

/// Panics (a finding) when `f` allocated more than the budget for an input of `input_len` bytes:
/// `per_byte` × the input plus `fixed` bytes at once, and `calls_per_byte` × the input plus
/// `fixed_calls` allocations. Linear in what the client sent, whatever it claims.
pub fn within_budget<T>(input_len: usize, budget: Budget, f: impl FnOnce() -> T) -> T {
    let (out, used) = metered(f);
    let bytes = budget.per_byte * input_len + budget.fixed;
    let calls = budget.calls_per_byte * input_len + budget.fixed_calls;
    assert!(
        used.peak_bytes <= bytes && used.calls <= calls,
        "over the allocation budget for {input_len} input bytes: {used:?}, allowed {bytes} bytes and {calls} calls"
    );
    out
}

/// An allocation budget, see [`within_budget`].
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub per_byte: usize,
    pub fixed: usize,
    pub calls_per_byte: usize,
    pub fixed_calls: usize,
}
