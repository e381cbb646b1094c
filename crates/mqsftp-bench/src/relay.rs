//! A TCP relay on loopback that passes one direction at a set rate: with the gateway's connection to the broker
//! going through it, that link is the slowest part of the system, as it is when the broker is on another host or
//! busy with other clients.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The most time a rate-limited direction may catch up on after sitting idle.
const BURST: Duration = Duration::from_millis(10);

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

/// Relays connections on a new loopback port to `target` (a loopback port), passing what the client sends at most
/// `rate` bytes per second and what it receives as fast as it comes.
pub async fn start(target: u16, rate: u64) -> anyhow::Result<Relay> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.context("bind the relay")?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        let mut pipes = tokio::task::JoinSet::new();
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else { continue };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (client_rx, client_tx) = client.into_split();
            let (server_rx, server_tx) = server.into_split();
            pipes.spawn(pipe(client_rx, server_tx, Some(rate)));
            pipes.spawn(pipe(server_rx, client_tx, None));
        }
    });
    Ok(Relay { port, task })
}

/// Copies `from` to `to`, no faster than `rate` bytes per second when given. Time the link sat idle gives at
/// most [`BURST`] of credit, so that the link is never faster than `rate` for longer than that, while timer
/// granularity (a millisecond) costs no rate.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, rate: Option<u64>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut next = Instant::now();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if let Some(rate) = rate.filter(|r| *r > 0) {
            next = next.max(Instant::now() - BURST) + Duration::from_secs_f64(n as f64 / rate as f64);
            tokio::time::sleep_until(next.into()).await;
        }
    }
    let _ = to.shutdown().await;
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
        let relay = start(target, rate).await.unwrap();
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
}
