//! Test support: a deterministic RNG and a lossy link for driving the state machines on a virtual clock.
#![allow(clippy::unwrap_used)]

/// xorshift64: deterministic, seedable, good enough to shuffle packets.
pub struct Rng(pub u64);

impl Rng {
    /// Next pseudo-random value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() % 1_000_000) as f64 / 1_000_000.0 < p
    }
}

/// A link that loses, duplicates and reorders what passes through it.
pub struct Lossy<T = crate::Chunk> {
    /// Randomness.
    pub rng: Rng,
    /// Probability a message is lost.
    pub loss: f64,
    /// Probability a message is delivered twice.
    pub dup: f64,
    /// Probability a message is held back and delivered after the next one.
    pub reorder: f64,
    /// Messages held back.
    pub held: Vec<T>,
}

impl<T: Clone> Lossy<T> {
    /// A link that delivers everything once, in order.
    pub fn perfect() -> Self {
        Self { rng: Rng(1), loss: 0.0, dup: 0.0, reorder: 0.0, held: Vec::new() }
    }
    /// Whether to drop a control message.
    pub fn drop_this(&mut self) -> bool {
        let p = self.loss;
        self.rng.chance(p)
    }
    /// What arrives when `m` is sent.
    pub fn deliver(&mut self, m: T) -> Vec<T> {
        let (loss, dup, reorder) = (self.loss, self.dup, self.reorder);
        if self.rng.chance(loss) {
            return std::mem::take(&mut self.held);
        }
        if self.rng.chance(reorder) {
            self.held.push(m);
            return Vec::new();
        }
        let mut out = vec![m.clone()];
        if self.rng.chance(dup) {
            out.push(m);
        }
        out.append(&mut self.held);
        out
    }
}
