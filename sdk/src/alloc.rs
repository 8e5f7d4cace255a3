//! The agent's memory allocator: a free list per small size class in front of the system
//! allocator (wasi-libc's dlmalloc).
//!
//! Why: every message the host delivers is copied into the agent through the canonical ABI,
//! one allocation per string or list (id, subject, reply-to, payload), and freed when
//! `handle` returns. With dlmalloc those four allocations and frees were ~2,100 of the
//! ~3,100 instructions the echo agent ran per message (callgrind, `cargo bench --bench
//! nats`). Here a freed block of at most [`MAX_SMALL`] bytes goes onto the free list of its
//! power-of-two size class and the next allocation of that class takes it back, so a
//! message's allocations reuse the previous message's blocks: the echo's own code went from
//! 3,112 to 1,990 instructions per message.
//!
//! Every block is still a block of the system allocator, allocated there at its class's
//! size: the component has one `cabi_realloc`, which allocates through Rust's global
//! allocator, and wasi-libc releases what the host returns into it (results of WASI calls)
//! with its own `free`. A block carved out of a larger chunk would corrupt its heap (the
//! file tests hung that way); a block of its own is released correctly by either side.
//! Larger blocks, and blocks aligned to more than 8 bytes, go to the system allocator.
//!
//! The trade-off: up to [`MAX_HELD`] freed blocks per size class (≈ 63 KiB in all) stay
//! with their class instead of going back to the system allocator. An agent that wants
//! another allocator turns off the SDK's default `small-alloc` feature and declares its own
//! `#[global_allocator]`.
//!
//! Agents run single-threaded (wasm32-wasip2 without the atomics feature), which is what
//! lets the free lists go without a lock; the global allocator is only installed there.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr::null_mut;

/// Size classes: 16, 32, 64, 128, 256 and 512 bytes.
const CLASSES: usize = 6;
const MIN_SMALL: usize = 16;
/// The largest block served from the size classes.
pub const MAX_SMALL: usize = MIN_SMALL << (CLASSES - 1);
/// The largest alignment served from the size classes: what the system allocator's plain
/// `malloc` guarantees, so refilling a class never needs its slower aligned path.
const SMALL_ALIGN: usize = 8;

/// Free blocks a size class keeps at most; more go back to the system allocator. A message
/// needs a handful, and the cap bounds what the lists hold to 64 × (16 + 32 + … + 512) bytes
/// ≈ 63 KiB, so a burst of small allocations does not stay out of the general heap.
pub const MAX_HELD: u32 = 64;

struct Pools {
    /// Head of each size class's free list; a free block holds the next one's address.
    free: [*mut u8; CLASSES],
    /// Blocks on each free list.
    held: [u32; CLASSES],
}

/// Size-class allocator over the system allocator. Not thread-safe: it is `Sync`, and so
/// usable as a global allocator, only on single-threaded wasm, where each agent instance
/// runs one thread.
pub struct SmallAlloc {
    pools: UnsafeCell<Pools>,
}

// SAFETY: wasm without the atomics feature has one thread, so the pools are never touched
// from two at once. Elsewhere the type is not `Sync`: it cannot be shared between threads
// (the tests use their own instance on one thread).
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
unsafe impl Sync for SmallAlloc {}

impl SmallAlloc {
    pub const fn new() -> SmallAlloc {
        SmallAlloc {
            pools: UnsafeCell::new(Pools {
                free: [null_mut(); CLASSES],
                held: [0; CLASSES],
            }),
        }
    }
}

impl Default for SmallAlloc {
    fn default() -> Self {
        SmallAlloc::new()
    }
}

/// The size class serving `layout`, if it is small enough and needs no more than
/// [`SMALL_ALIGN`].
#[inline(always)]
fn class_of(layout: Layout) -> Option<usize> {
    if layout.size() > MAX_SMALL || layout.align() > SMALL_ALIGN {
        return None;
    }
    // 0..=16 → 0, 17..=32 → 1, …, 257..=512 → 5.
    let rounded = layout.size().max(MIN_SMALL).next_power_of_two();
    Some((rounded.trailing_zeros() - MIN_SMALL.trailing_zeros()) as usize)
}

fn class_size(class: usize) -> usize {
    MIN_SMALL << class
}

unsafe impl GlobalAlloc for SmallAlloc {
    // Inlined into the allocator shims even at `opt-level = "s"`: a call layer less on
    // every allocation and free.
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            return unsafe { System.alloc(layout) };
        };
        // SAFETY: one thread (see `Sync` above), and no reference outlives this call.
        let pools = unsafe { &mut *self.pools.get() };
        let head = pools.free[class];
        if !head.is_null() {
            // SAFETY: a free block's first word is the next free block (see `dealloc`).
            pools.free[class] = unsafe { head.cast::<*mut u8>().read() };
            pools.held[class] -= 1;
            return head;
        }
        // An empty class: a new block from the system allocator, at the class's full size.
        // SAFETY: class sizes and SMALL_ALIGN make valid, non-zero layouts.
        unsafe {
            System.alloc(Layout::from_size_align_unchecked(
                class_size(class),
                SMALL_ALIGN,
            ))
        }
    }

    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            return unsafe { System.dealloc(ptr, layout) };
        };
        // SAFETY: as in `alloc`.
        let pools = unsafe { &mut *self.pools.get() };
        if pools.held[class] >= MAX_HELD {
            // SAFETY: the block came from the system allocator at its class's size.
            let whole =
                unsafe { Layout::from_size_align_unchecked(class_size(class), SMALL_ALIGN) };
            return unsafe { System.dealloc(ptr, whole) };
        }
        // SAFETY: the block is at least 16 bytes, aligned for a pointer. It stays allocated
        // in the system allocator, owned by the free list.
        unsafe { ptr.cast::<*mut u8>().write(pools.free[class]) };
        pools.free[class] = ptr;
        pools.held[class] += 1;
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            // Still fits the block it has.
            (Some(old), Some(new)) if old == new => ptr,
            // Both large: the system allocator may grow or shrink in place.
            (None, None) => unsafe { System.realloc(ptr, layout, new_size) },
            _ => {
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    let keep = layout.size().min(new_size);
                    // SAFETY: both blocks hold at least `keep` bytes and are distinct.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, moved, keep);
                        self.dealloc(ptr, layout);
                    }
                }
                moved
            }
        }
    }
}

#[cfg(all(
    feature = "small-alloc",
    target_family = "wasm",
    not(target_feature = "atomics")
))]
#[global_allocator]
static AGENT_ALLOCATOR: SmallAlloc = SmallAlloc::new();

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn sizes_map_to_the_smallest_class_that_holds_them() {
        assert_eq!(class_of(layout(1, 1)), Some(0));
        assert_eq!(class_of(layout(16, 8)), Some(0));
        assert_eq!(class_of(layout(17, 1)), Some(1));
        assert_eq!(class_of(layout(512, 8)), Some(5));
        assert_eq!(
            class_of(layout(513, 1)),
            None,
            "larger blocks go to the system"
        );
        assert_eq!(class_of(layout(64, 16)), None, "so do over-aligned ones");
    }

    #[test]
    fn a_freed_block_is_handed_out_again_for_the_same_class() {
        let a = SmallAlloc::new();
        unsafe {
            let first = a.alloc(layout(40, 8));
            a.dealloc(first, layout(40, 8));
            // 33..=64 bytes share a class: the block comes back.
            assert_eq!(a.alloc(layout(60, 1)), first);
            let other = a.alloc(layout(60, 1));
            assert_ne!(other, first, "a block in use is never handed out twice");
        }
    }

    #[test]
    fn blocks_are_aligned_distinct_and_keep_what_is_written_to_them() {
        let a = SmallAlloc::new();
        let mut blocks = Vec::new();
        // Blocks of every small size and alignment, and over-aligned ones.
        for i in 0..20_000usize {
            let size = 1 + i % MAX_SMALL;
            let l = layout(size, 1 << (i % 5));
            let p = unsafe { a.alloc(l) };
            assert!(!p.is_null());
            assert_eq!(p as usize % l.align(), 0);
            unsafe { std::ptr::write_bytes(p, (i % 251) as u8, size) };
            blocks.push((p, l, (i % 251) as u8));
        }
        for &(p, l, fill) in &blocks {
            let bytes = unsafe { std::slice::from_raw_parts(p, l.size()) };
            assert!(bytes.iter().all(|&b| b == fill), "a block was overwritten");
        }
        for (p, l, _) in blocks {
            unsafe { a.dealloc(p, l) };
        }
    }

    #[test]
    fn a_class_keeps_at_most_max_held_free_blocks() {
        let a = SmallAlloc::new();
        let l = layout(24, 8);
        unsafe {
            let blocks: Vec<_> = (0..MAX_HELD + 10).map(|_| a.alloc(l)).collect();
            for &p in &blocks {
                a.dealloc(p, l);
            }
            let pools = &*a.pools.get();
            assert_eq!(pools.held[1], MAX_HELD, "the rest went back to the system");
            let mut listed = 0;
            let mut p = pools.free[1];
            while !p.is_null() {
                listed += 1;
                p = p.cast::<*mut u8>().read();
            }
            assert_eq!(listed, MAX_HELD);
            // What the list holds is handed out again before anything new.
            let again: Vec<_> = (0..MAX_HELD).map(|_| a.alloc(l)).collect();
            assert!(again.iter().all(|p| blocks.contains(p)));
            assert_eq!((*a.pools.get()).held[1], 0);
        }
    }

    #[test]
    fn a_block_handed_out_can_be_released_by_the_system_allocator() {
        // What wasi-libc does with memory the host returned into the agent through
        // `cabi_realloc`: `free` it itself. Each block is the system allocator's own.
        let a = SmallAlloc::new();
        unsafe {
            let recycled = a.alloc(layout(100, 1));
            a.dealloc(recycled, layout(100, 1));
            for size in [1, 16, 17, 100, 512] {
                let p = a.alloc(layout(size, 1));
                std::ptr::write_bytes(p, 7, size);
                let class = class_of(layout(size, 1)).unwrap();
                System.dealloc(p, layout(class_size(class), SMALL_ALIGN));
            }
        }
    }

    #[test]
    fn realloc_keeps_the_contents_across_classes_and_to_the_system_allocator() {
        let a = SmallAlloc::new();
        unsafe {
            let l = layout(10, 1);
            let p = a.alloc(l);
            std::ptr::copy_nonoverlapping(b"0123456789".as_ptr(), p, 10);
            let same = a.realloc(p, l, 16);
            assert_eq!(same, p, "growing within the class keeps the block");
            let bigger = a.realloc(same, layout(16, 1), 300);
            let large = a.realloc(bigger, layout(300, 1), 5_000);
            let larger = a.realloc(large, layout(5_000, 1), 20_000);
            let back = a.realloc(larger, layout(20_000, 1), 10);
            assert_eq!(std::slice::from_raw_parts(back, 10), b"0123456789");
            a.dealloc(back, layout(10, 1));
        }
    }

    #[test]
    fn vectors_and_strings_work_on_it_as_on_any_allocator() {
        // The collections a message turns into, driven through the allocator's API.
        let a = SmallAlloc::new();
        unsafe {
            let mut p = a.alloc(layout(1, 1));
            let mut cap = 1;
            for len in 1..=4096usize {
                if len > cap {
                    p = a.realloc(p, layout(cap, 1), cap * 2);
                    cap *= 2;
                }
                *p.add(len - 1) = (len % 256) as u8;
            }
            let all = std::slice::from_raw_parts(p, 4096);
            assert!(all
                .iter()
                .enumerate()
                .all(|(i, &b)| b == ((i + 1) % 256) as u8));
            a.dealloc(p, layout(cap, 1));
        }
    }
}
