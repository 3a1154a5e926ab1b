//! Returning freed record memory to the operating system.
//!
//! When the kernel deletes records, `kfree` hands their memory back at
//! once. In user space, glibc keeps freed small blocks in its heap, so the
//! model's resident size would not drop after a deletion until glibc is
//! asked to release its free pages (see `Ima::release_free_memory`).

/// Freed records below which a release pass is not worth its cost.
pub const RELEASE_THRESHOLD: u64 = 4096;

/// Asks the allocator to give free heap pages back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own heap under its internal
    // locks. It takes no pointers from us, so it is safe to call from any
    // thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators return memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}
