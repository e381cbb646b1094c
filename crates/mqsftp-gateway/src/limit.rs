//! Per-device rate limits: a token bucket per device, shared by that device's transfers on this gateway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mqsftp_proto::DeviceId;
use tokio::time::Instant;

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
}
