//! glibc heap settings for a process that moves files through an [`MqttLink`](crate::MqttLink): call [`tune`] once
//! at the start of `main`, before other threads exist. The `mqsftp` and `mqsftp-bench` binaries do; an application
//! that embeds the device library gains the same by calling it.
//!
//! Why: every chunk passes through buffers of its own size (255 KiB by default, up to 1 MiB): rumqttc's read
//! buffer is regrown for each incoming publish while the previous chunk is still held, frames are built and
//! dropped a chunk at a time. With glibc's defaults such blocks come from `mmap` at first, then from the heap,
//! whose top is given back to the kernel (trimmed) whenever more than about two chunks are free there, and taken
//! again for the next chunk: each time the pages are faulted in and zeroed anew. A download took 150,000 page
//! faults per GiB in the device; with these settings about 1,400, and the device's CPU for it fell by a sixth
//! (docs/performance.md, "The heap").
//!
//! The settings: blocks below [`MMAP_THRESHOLD`] always come from the heap (every MQTT packet is below it), and
//! the heap keeps up to [`TRIM_THRESHOLD`] free at its top rather than returning it, growing by [`TOP_PAD`] more
//! than it needs when it grows. The cost is at most that much memory held while idle.

/// Blocks at least this large are mapped on their own (glibc's default starts at 128 KiB and adapts).
pub const MMAP_THRESHOLD: usize = 4 << 20;
/// Free memory at the top of the heap beyond this is returned to the kernel (glibc's default: 128 KiB, adapting
/// to twice the mapping threshold).
pub const TRIM_THRESHOLD: usize = 4 << 20;
/// Extra memory taken whenever the heap grows (glibc's default: 128 KiB).
pub const TOP_PAD: usize = 1 << 20;

/// Applies the settings above to the C heap of this process. Returns whether glibc accepted all of them; on
/// other C libraries (musl, other systems) it does nothing and returns `false`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune() -> bool {
    let set = |param: libc::c_int, value: usize| {
        let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets a parameter of glibc's allocator, under its own lock; any value is valid for
        // these three parameters.
        unsafe { libc::mallopt(param, value) == 1 }
    };
    set(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        & set(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        & set(libc::M_TOP_PAD, TOP_PAD)
}

/// Applies nothing: not glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn glibc_accepts_every_setting() {
        // mallopt answers 0 for a parameter or value it refuses. (What the settings save is measured by the
        // benchmark: page faults per GiB of the device and the gateway, docs/performance.md.)
        assert!(super::tune(), "mallopt refused a setting");
    }
}
