//! Per-device rate limits: a token bucket per device, shared by that device's transfers on this gateway; and the
//! window each transfer may use, shared among the transfers running ([`WindowShare`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use mqsftp_proto::DeviceId;
use tokio::time::Instant;

use crate::config::MIN_WINDOW;

/// A token bucket: `rate` bytes per second, bursts of up to one second's worth.
pub(crate) struct Bucket {
    rate: u64,
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(rate: u64) -> Self {
        Bucket { rate, state: tokio::sync::Mutex::new((rate as f64, Instant::now())) }
    }

    /// Waits until `n` bytes may pass. Callers queue on the lock, so a device's transfers share the rate fairly.
    pub(crate) async fn take(&self, n: usize) {
        let mut s = self.state.lock().await;
        let now = Instant::now();
        let rate = self.rate as f64;
        let tokens = (s.0 + now.duration_since(s.1).as_secs_f64() * rate).min(rate) - n as f64;
        *s = (tokens, now);
        if tokens < 0.0 {
            tokio::time::sleep(std::time::Duration::from_secs_f64(-tokens / rate)).await;
        }
    }
}

/// The buckets of the devices that have a rate limit.
#[derive(Default)]
pub(crate) struct Buckets(Mutex<HashMap<DeviceId, Arc<Bucket>>>);

impl Buckets {
    /// The bucket of `device` at `rate` (a new one when the rate changed, e.g. after a policy reload).
    pub(crate) fn get(&self, device: &DeviceId, rate: Option<u64>) -> Option<Arc<Bucket>> {
        let rate = rate?;
        let mut map = match self.0.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        // Forget the buckets of devices with no transfer running, so the map stays as small as the active set.
        map.retain(|_, b| Arc::strong_count(b) > 1);
        let b = map.entry(device.clone()).or_insert_with(|| Arc::new(Bucket::new(rate)));
        if b.rate != rate {
            *b = Arc::new(Bucket::new(rate));
        }
        Some(b.clone())
    }
}

/// The window a transfer may use: the gateway's `shared_window` shared among the transfers running, between
/// [`MIN_WINDOW`] and `window` each.
///
/// Why: what a transfer has in flight waits in the broker's queue toward its device, ahead of every answer to that
/// device, and one transfer alone needs about 8 chunks in flight to keep both ends busy (docs/performance.md,
/// "Windows shared among the transfers running"). A fixed window trades one for the other; a share gives a lone
/// download the larger window and keeps what many downloads have in flight together near `shared_window`.
pub(crate) struct WindowShare {
    active: AtomicUsize,
    most: u32,
    shared: u32,
}

impl WindowShare {
    pub(crate) fn new(most: u32, shared: u32) -> Self {
        WindowShare { active: AtomicUsize::new(0), most: most.max(1), shared: shared.max(1) }
    }

    /// Counts a transfer as running until the slot is dropped.
    pub(crate) fn join(&self) -> WindowSlot<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        WindowSlot(self)
    }

    /// A running transfer's window now.
    pub(crate) fn current(&self) -> u32 {
        let active = u32::try_from(self.active.load(Ordering::Relaxed)).unwrap_or(u32::MAX).max(1);
        (self.shared / active).clamp(MIN_WINDOW.min(self.most), self.most)
    }
}

/// A transfer counted by [`WindowShare::join`].
pub(crate) struct WindowSlot<'a>(&'a WindowShare);

impl Drop for WindowSlot<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_paces_to_its_rate() {
        let b = Bucket::new(1000);
        let start = Instant::now();
        for _ in 0..50 {
            b.take(100).await;
        }
        // 5000 bytes at 1000 B/s with a 1000-byte burst: 4 s.
        let took = start.elapsed().as_secs_f64();
        assert!((3.9..4.2).contains(&took), "{took}");
    }

    #[test]
    fn buckets_follow_the_rate() {
        let bs = Buckets::default();
        let d = DeviceId::new("d").unwrap();
        assert!(bs.get(&d, None).is_none());
        let a = bs.get(&d, Some(5000)).unwrap();
        let b = bs.get(&d, Some(5000)).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = bs.get(&d, Some(6000)).unwrap();
        assert_eq!(c.rate, 6000);
    }

    #[test]
    fn the_shared_window_is_split_among_the_transfers_running() {
        let share = WindowShare::new(8, 32);
        assert_eq!(share.current(), 8, "none running yet: a new transfer gets the most");
        let slots: Vec<_> = (0..4).map(|_| share.join()).collect();
        assert_eq!(share.current(), 8, "4 x 8 = 32");
        let more: Vec<_> = (0..4).map(|_| share.join()).collect();
        assert_eq!(share.current(), 4, "8 share 32");
        let many: Vec<_> = (0..100).map(|_| share.join()).collect();
        assert_eq!(share.current(), MIN_WINDOW, "never below two");
        drop((many, more));
        assert_eq!(share.current(), 8);
        drop(slots);
        assert_eq!(share.active.load(Ordering::Relaxed), 0, "every slot given back");
        assert_eq!(WindowShare::new(1, 32).current(), 1, "a window set to 1 stays 1");
        assert_eq!(WindowShare::new(16, 0).current(), MIN_WINDOW, "a shared window of 0 counts as 1");
    }
}
