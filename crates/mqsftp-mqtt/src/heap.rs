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
//!
//! [`copy_tunables`]: on AMD processors glibc before 2.40 copies blocks of 2 KiB and more with `rep movsb`, which
//! Zen 3 and Zen 4 run 20 times slower than a vector loop when the destination lies 1 to 15 bytes past the
//! source's alignment on 64 bytes (glibc bug 30994; 3.5 against 75–100 GB/s for 16 KiB on this project's AMD EPYC
//! test machine). rustls copies each decrypted 16 KiB record once, at such offsets a quarter of the time: in the
//! device's download that copy was 16 % of its CPU. The setting glibc 2.40 adopted for these processors is a
//! tunable, read only when a process starts, so `mqsftp` starts itself again with it, first thing in `main`
//! (docs/performance.md, "Copies on AMD processors").

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

/// The glibc tunable that sets the size from which `memcpy` and `memmove` use `rep movsb`.
pub const REP_MOVSB_TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold";
/// Its value here: larger than any copy, so that copies use glibc's vector loops (and, from the size where glibc
/// switches to them, its non-temporal stores) as glibc 2.40 and later do on these processors.
pub const REP_MOVSB_THRESHOLD: u64 = 1 << 40;
/// Set in the environment of a process started again by [`copy_tunables`]'s caller, so that it never starts
/// itself a second time (even where the C library drops `GLIBC_TUNABLES`, as it does for set-user-ID programs).
pub const RESTARTED_ENV: &str = "MQSFTP_GLIBC_TUNED";

/// What `GLIBC_TUNABLES` should be for a process on the processor described by `cpuinfo` (the text of
/// `/proc/cpuinfo`) whose environment has `tunables` as `GLIBC_TUNABLES` and `restarted` as [`RESTARTED_ENV`]:
/// `None` to leave it as it is. It changes only on an AMD (or Hygon) processor with `erms`, and only when no
/// `rep movsb` threshold is set already (one set by hand is kept), keeping any other tunables. The glibc version
/// is not asked: from 2.40 on glibc already keeps these copies off `rep movsb` on AMD, so the setting changes
/// nothing there but the ~1 ms of the restart.
pub fn copy_tunables_for(
    cpuinfo: &str,
    tunables: Option<&std::ffi::OsStr>,
    restarted: Option<&std::ffi::OsStr>,
) -> Option<std::ffi::OsString> {
    if restarted.is_some() {
        return None;
    }
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == name).map(|(_, v)| v.trim()))
    };
    let amd = matches!(field("vendor_id"), Some("AuthenticAMD" | "HygonGenuine"));
    let erms = field("flags").is_some_and(|f| f.split_whitespace().any(|x| x == "erms"));
    if !amd || !erms {
        return None;
    }
    let ours = format!("{REP_MOVSB_TUNABLE}={REP_MOVSB_THRESHOLD}");
    match tunables {
        Some(t) if t.to_string_lossy().contains(REP_MOVSB_TUNABLE) => None,
        Some(t) if !t.is_empty() => {
            let mut v = t.to_os_string();
            v.push(":");
            v.push(ours);
            Some(v)
        }
        _ => Some(ours.into()),
    }
}

/// [`copy_tunables_for`] this process, on Linux with glibc: what `GLIBC_TUNABLES` to start again with, if any.
#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
pub fn copy_tunables() -> Option<std::ffi::OsString> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    copy_tunables_for(
        &cpuinfo,
        std::env::var_os("GLIBC_TUNABLES").as_deref(),
        std::env::var_os(RESTARTED_ENV).as_deref(),
    )
}

/// Nothing to change: not glibc on x86-64.
#[cfg(not(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64")))]
pub fn copy_tunables() -> Option<std::ffi::OsString> {
    None
}

#[cfg(test)]
mod copy_tests {
    use super::*;
    use std::ffi::OsStr;

    const AMD: &str =
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nflags\t\t: fpu sse2 erms fsrm avx2\n";
    const AMD_NO_ERMS: &str = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2\n";
    const INTEL: &str = "vendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 erms fsrm avx2\n";
    const OURS: &str = "glibc.cpu.x86_rep_movsb_threshold=1099511627776";

    #[test]
    fn only_amd_with_erms_gets_the_threshold() {
        assert_eq!(copy_tunables_for(AMD, None, None).as_deref(), Some(OsStr::new(OURS)));
        assert_eq!(
            copy_tunables_for(&AMD.replace("AuthenticAMD", "HygonGenuine"), None, None).as_deref(),
            Some(OsStr::new(OURS))
        );
        assert_eq!(copy_tunables_for(AMD_NO_ERMS, None, None), None);
        assert_eq!(copy_tunables_for(INTEL, None, None), None);
        assert_eq!(copy_tunables_for("", None, None), None, "no cpuinfo: leave it");
    }

    #[test]
    fn other_tunables_are_kept_and_a_threshold_set_by_hand_wins() {
        let other = OsStr::new("glibc.malloc.arena_max=2");
        assert_eq!(
            copy_tunables_for(AMD, Some(other), None).as_deref(),
            Some(OsStr::new(&format!("glibc.malloc.arena_max=2:{OURS}")))
        );
        assert_eq!(copy_tunables_for(AMD, Some(OsStr::new("")), None).as_deref(), Some(OsStr::new(OURS)));
        let by_hand = OsStr::new("glibc.cpu.x86_rep_movsb_threshold=4096");
        assert_eq!(copy_tunables_for(AMD, Some(by_hand), None), None);
    }

    #[test]
    fn a_restarted_process_never_restarts_again() {
        assert_eq!(copy_tunables_for(AMD, None, Some(OsStr::new("1"))), None);
    }
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
