//! A TCP relay on loopback that passes one direction at a set rate, and each direction after a set delay: with the
//! gateway's connection to the broker going through it, that link is the slowest part of the system, as it is when
//! the broker is on another host or busy with other clients, or the broker is far from the gateway.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The most time a rate-limited direction may catch up on after sitting idle.
const BURST: Duration = Duration::from_millis(10);

/// Reads a delayed direction may hold while they wait out the delay (64 KiB each: 16 MiB, 1.6 GB/s for 10 ms).
const DELAY_LINE: usize = 256;

/// A running relay; it stops (with every connection through it) when dropped.
pub struct Relay {
    pub port: u16,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays connections on a new loopback port to `target` (a loopback port). What the client sends passes at most
/// `rate` bytes per second when given, what it receives as fast as it comes; each direction holds every byte for
/// `delay` (so a round trip through the relay takes twice that longer).
pub async fn start(target: u16, rate: Option<u64>, delay: Duration) -> anyhow::Result<Relay> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.context("bind the relay")?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        let mut pipes = tokio::task::JoinSet::new();
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else { continue };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (client_rx, client_tx) = client.into_split();
            let (server_rx, server_tx) = server.into_split();
            pipes.spawn(pipe(client_rx, server_tx, rate, delay));
            pipes.spawn(pipe(server_rx, client_tx, None, delay));
        }
    });
    Ok(Relay { port, task })
}

/// Copies `from` to `to`, each read no sooner than `delay` after it was read and no faster than `rate` bytes per
/// second when given.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, rate: Option<u64>, delay: Duration) {
    let mut pace = Pace { rate: rate.filter(|r| *r > 0), next: Instant::now() };
    let mut buf = vec![0u8; 64 * 1024];
    if delay.is_zero() {
        // A plain copy: nothing is held in the relay beyond the one read being written.
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            if to.write_all(&buf[..n]).await.is_err() {
                break;
            }
            pace.passed(n).await;
        }
    } else {
        // A delay line: the reader stamps each read with the time it may leave and queues it for the writer.
        let (line, mut waiting) = mpsc::channel::<(Instant, Vec<u8>)>(DELAY_LINE);
        let reader = async move {
            while let Ok(n @ 1..) = from.read(&mut buf).await {
                if line.send((Instant::now() + delay, buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        };
        let writer = async {
            while let Some((due, data)) = waiting.recv().await {
                tokio::time::sleep_until(due.into()).await;
                if to.write_all(&data).await.is_err() {
                    break;
                }
                pace.passed(data.len()).await;
            }
        };
        tokio::join!(reader, writer);
    }
    let _ = to.shutdown().await;
}

/// Holds a direction to its rate. Time the link sat idle gives at most [`BURST`] of credit, so that the link is
/// never faster than the rate for longer than that, while timer granularity (a millisecond) costs no rate.
struct Pace {
    rate: Option<u64>,
    next: Instant,
}

impl Pace {
    /// Waits as long as `n` bytes take at the rate (not at all without one).
    async fn passed(&mut self, n: usize) {
        if let Some(rate) = self.rate {
            self.next = self.next.max(Instant::now() - BURST) + Duration::from_secs_f64(n as f64 / rate as f64);
            tokio::time::sleep_until(self.next.into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn passes_every_byte_both_ways_and_the_limited_way_no_faster_than_its_rate() {
        let server = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let target = server.local_addr().unwrap().port();
        let rate = 4_000_000;
        let relay = start(target, Some(rate), Duration::ZERO).await.unwrap();
        let sent: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let echo = tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut got = vec![0u8; 1_000_000];
            s.read_exact(&mut got).await.unwrap();
            s.write_all(b"back").await.unwrap();
            got
        });
        let mut c = TcpStream::connect(("127.0.0.1", relay.port)).await.unwrap();
        let started = Instant::now();
        c.write_all(&sent).await.unwrap();
        let got = echo.await.unwrap();
        let took = started.elapsed();
        let mut back = [0u8; 4];
        c.read_exact(&mut back).await.unwrap();
        assert!(got == sent, "the relay changed the bytes it passed");
        assert_eq!(&back, b"back");
        // 1 MB at 4 MB/s: 250 ms, less at most the burst it may catch up on and one read's share.
        let least = Duration::from_secs_f64(1e6 / rate as f64) - BURST - Duration::from_secs_f64(65536.0 / rate as f64);
        assert!(took >= least, "1 MB passed in {took:?} at {rate} B/s: the limit was not applied");
    }

    #[tokio::test]
    async fn a_delayed_relay_holds_each_byte_for_the_delay_without_limiting_the_rate() {
        let server = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let target = server.local_addr().unwrap().port();
        let delay = Duration::from_millis(50);
        let relay = start(target, None, delay).await.unwrap();
        let sent: Vec<u8> = (0..8_000_000u32).map(|i| (i % 253) as u8).collect();
        let len = sent.len();
        let echo = tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut one = [0u8; 1];
            s.read_exact(&mut one).await.unwrap();
            s.write_all(&one).await.unwrap();
            let mut got = vec![0u8; len];
            s.read_exact(&mut got).await.unwrap();
            got
        });
        let mut c = TcpStream::connect(("127.0.0.1", relay.port)).await.unwrap();
        let started = Instant::now();
        c.write_all(&[7]).await.unwrap();
        let mut back = [0u8; 1];
        c.read_exact(&mut back).await.unwrap();
        let round_trip = started.elapsed();
        let started = Instant::now();
        c.write_all(&sent).await.unwrap();
        let got = echo.await.unwrap();
        let took = started.elapsed();
        assert_eq!(back, [7]);
        assert!(got == sent, "the relay changed the bytes it passed");
        assert!(round_trip >= 2 * delay, "one byte there and back in {round_trip:?}: not delayed {delay:?} each way");
        // Held once, not once per 64 KiB read (123 reads, 6.1 s).
        assert!(took >= delay && took < Duration::from_secs(3), "8 MB passed in {took:?} with a delay of {delay:?}");
    }
}
