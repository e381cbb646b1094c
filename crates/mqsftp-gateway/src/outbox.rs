//! The gateway's outgoing messages: two lanes into its one broker connection, so that answers overtake chunks.
//!
//! Every answer and every download chunk leaves through one MQTT connection. With a single queue, an answer
//! waited behind every chunk queued before it: with a few hundred downloads running, each with a window of chunks
//! to send, that was seconds, and devices gave up on answers that were on their way (fault scenario 8).
//!
//! Here a task feeds the connection from two queues:
//! - the **control** lane: answers to requests, upload acknowledgements and error reports, small and few;
//! - the **stream** lane: download chunks, and `get_done`, which must follow its chunks.
//!
//! The task always takes a waiting control message first, and rumqttc's own queue is kept short
//! ([`LINK_QUEUE`]), so an answer never waits for every chunk of every download. Beyond the gateway, the task
//! hands over a stream message only while fewer than `[transfer] broker_window` messages (4 by default) are
//! unacknowledged by the broker ([`BrokerWindow`], counted from the link's PUBACKs), so that what an answer finds
//! ahead of it in the sockets and in the broker's input is bounded too, not by the kernel's socket buffers
//! (several MiB each way). Control messages do not wait for that window: rumqttc's own in-flight limit leaves
//! [`CONTROL_ROOM`] more, so an answer is written at once, behind at most the window's chunks, instead of waiting
//! in rumqttc's queue until one of them is acknowledged (docs/performance.md, "Answers past a full broker
//! window").
//!
//! Order: within a lane, messages leave in the order they were queued. Across lanes, a control message leaves
//! before every stream message queued after it, so `get_accepted` always precedes the chunks it announces.

use std::future::Future;

use bytes::Bytes;
use mqsftp_mqtt::rumqttc::{AsyncClient, QoS};
use mqsftp_mqtt::PubAcks;
use tokio::sync::{mpsc, watch};
use tracing::warn;

/// Publishes rumqttc accepts from this gateway before its event loop takes them. The outbox hands over chunks only
/// while the broker window has room, and rumqttc's in-flight limit is higher than that window, so this queue is
/// all but empty; it fills only when answers use up [`CONTROL_ROOM`]. Two, not eight, took ~30 ms off the wait of
/// an answer behind 100 downloads on a 32 MB/s link when rumqttc's limit was the window (docs/performance.md,
/// "Answers under load").
pub const LINK_QUEUE: usize = 2;

/// Messages rumqttc may keep unacknowledged beyond the broker window: room for answers while the window is full
/// of chunks. rumqttc's in-flight limit is `broker_window + CONTROL_ROOM`.
pub const CONTROL_ROOM: u16 = 16;

/// Control messages the outbox holds before a sender waits.
const CONTROL_QUEUE: usize = 1024;

/// Stream messages the outbox holds before a sender waits. Downloads wait here (their window bounds what each
/// may queue), so a small number keeps memory low without slowing them.
const STREAM_QUEUE: usize = 8;

/// Which queue a message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Answers, upload acknowledgements, error reports: they go before any waiting chunk.
    Control,
    /// Download chunks and `get_done`, in order.
    Stream,
}

/// One message to publish (QoS 1, not retained).
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
}

/// The outbox's task has stopped, because the broker link has.
#[derive(Debug, thiserror::Error)]
#[error("the broker link is closed")]
pub(crate) struct Closed;

/// Where the outbox's task hands messages: the broker link, or a recorder in tests.
pub(crate) trait Sink: Send + 'static {
    /// Hands over one message; an error means no more can be sent.
    fn publish(&mut self, msg: Outgoing) -> impl Future<Output = Result<(), String>> + Send;
}

impl Sink for AsyncClient {
    async fn publish(&mut self, msg: Outgoing) -> Result<(), String> {
        self.publish_bytes(msg.topic, QoS::AtLeastOnce, false, msg.payload).await.map_err(|e| e.to_string())
    }
}

/// What lets stream messages go: at most `limit` messages unacknowledged by the broker, counted from `acks` (the
/// link's PUBACKs). The count starts again on each new connection, when rumqttc resends what was unacknowledged:
/// until those acknowledgements are in, the window may briefly hold more than `limit`, never less.
pub(crate) struct BrokerWindow {
    pub(crate) limit: u16,
    pub(crate) acks: watch::Receiver<PubAcks>,
}

/// The two lanes' senders. Cloning is cheap; the task stops when every clone is dropped or the sink fails.
#[derive(Clone)]
pub(crate) struct Outbox {
    control: mpsc::Sender<Outgoing>,
    stream: mpsc::Sender<Outgoing>,
}

impl Outbox {
    /// Starts the task that feeds `sink`, stream messages within `window`.
    pub(crate) fn start(sink: impl Sink, window: BrokerWindow) -> (Outbox, tokio::task::JoinHandle<()>) {
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let (stream, stream_rx) = mpsc::channel(STREAM_QUEUE);
        let task = tokio::spawn(feed(sink, control_rx, stream_rx, window));
        (Outbox { control, stream }, task)
    }

    /// Queues `payload` for `topic` in `lane`, waiting while that lane is full.
    pub(crate) async fn send(&self, lane: Lane, topic: String, payload: Bytes) -> Result<(), Closed> {
        let tx = match lane {
            Lane::Control => &self.control,
            Lane::Stream => &self.stream,
        };
        tx.send(Outgoing { topic, payload }).await.map_err(|_| Closed)
    }
}

async fn feed(
    mut sink: impl Sink,
    mut control: mpsc::Receiver<Outgoing>,
    mut stream: mpsc::Receiver<Outgoing>,
    mut window: BrokerWindow,
) {
    // Handed over on the current connection, and the acknowledgements already counted when it began.
    let mut since = *window.acks.borrow_and_update();
    let mut handed = 0u64;
    let mut acks_open = true;
    loop {
        let now = *window.acks.borrow_and_update();
        if now.connection != since.connection {
            (since, handed) = (now, 0);
        }
        let unacknowledged = handed.saturating_sub(now.acked.saturating_sub(since.acked));
        let room = unacknowledged < u64::from(window.limit);
        let msg = tokio::select! {
            biased;
            Some(m) = control.recv() => m,
            // Once the link reports no more acknowledgements (its task has gone), the sink's error ends this task.
            Some(m) = stream.recv(), if room || !acks_open => m,
            changed = window.acks.changed(), if !room && acks_open => {
                acks_open = changed.is_ok();
                continue;
            }
            else => return,
        };
        if let Err(e) = sink.publish(msg).await {
            warn!(error = %e, "the broker link is closed: the outbox stops");
            return;
        }
        handed += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::sync::Semaphore;

    use super::*;

    /// Records the topics it is handed, each only once the test lets it through the gate.
    #[derive(Clone)]
    struct Gated {
        gate: Arc<Semaphore>,
        taken: Arc<Mutex<Vec<String>>>,
        sent: Arc<Mutex<Vec<String>>>,
        fail_at: Option<usize>,
    }

    impl Gated {
        fn new(fail_at: Option<usize>) -> Gated {
            Gated { gate: Arc::new(Semaphore::new(0)), taken: Arc::default(), sent: Arc::default(), fail_at }
        }
        fn taken(&self) -> Vec<String> {
            self.taken.lock().map(|t| t.clone()).unwrap_or_default()
        }
        fn sent(&self) -> Vec<String> {
            self.sent.lock().map(|t| t.clone()).unwrap_or_default()
        }
        /// Lets the task run until it has taken `n` messages in all.
        async fn until_taken(&self, n: usize) {
            while self.taken().len() < n {
                tokio::task::yield_now().await;
            }
        }
    }

    impl Sink for Gated {
        async fn publish(&mut self, msg: Outgoing) -> Result<(), String> {
            let n = {
                let mut t = self.taken.lock().map_err(|e| e.to_string())?;
                t.push(msg.topic.clone());
                t.len()
            };
            if self.fail_at == Some(n) {
                return Err(format!("link failed at message {n}"));
            }
            self.gate.acquire().await.map_err(|e| e.to_string())?.forget();
            self.sent.lock().map_err(|e| e.to_string())?.push(msg.topic);
            Ok(())
        }
    }

    /// A broker window that never fills.
    fn open_window() -> BrokerWindow {
        let (_, acks) = watch::channel(PubAcks { connection: 1, acked: 0 });
        BrokerWindow { limit: u16::MAX, acks }
    }

    async fn send(outbox: &Outbox, lane: Lane, topic: &str) {
        let sent = outbox.send(lane, topic.to_string(), Bytes::from_static(b"x")).await;
        assert!(sent.is_ok(), "{topic} was refused");
    }

    #[tokio::test]
    async fn an_answer_overtakes_every_chunk_still_waiting() {
        let sink = Gated::new(None);
        let (outbox, _task) = Outbox::start(sink.clone(), open_window());
        for i in 1..=4 {
            send(&outbox, Lane::Stream, &format!("chunk {i}")).await;
        }
        // The link is busy with the first chunk; three wait.
        sink.until_taken(1).await;
        send(&outbox, Lane::Control, "answer").await;
        sink.gate.add_permits(5);
        sink.until_taken(5).await;
        while sink.sent().len() < 5 {
            tokio::task::yield_now().await;
        }
        assert_eq!(sink.sent(), ["chunk 1", "answer", "chunk 2", "chunk 3", "chunk 4"]);
    }

    #[tokio::test]
    async fn an_answer_goes_before_the_chunks_queued_after_it_and_each_lane_keeps_its_order() {
        let sink = Gated::new(None);
        let (outbox, _task) = Outbox::start(sink.clone(), open_window());
        // As a download does: get_accepted, then its chunks, then get_done; an upload's ack meanwhile.
        send(&outbox, Lane::Control, "get_accepted").await;
        send(&outbox, Lane::Stream, "chunk 1").await;
        send(&outbox, Lane::Stream, "chunk 2").await;
        send(&outbox, Lane::Control, "put_ack 1").await;
        send(&outbox, Lane::Stream, "get_done").await;
        send(&outbox, Lane::Control, "put_ack 2").await;
        sink.gate.add_permits(6);
        sink.until_taken(6).await;
        while sink.sent().len() < 6 {
            tokio::task::yield_now().await;
        }
        assert_eq!(sink.sent(), ["get_accepted", "put_ack 1", "put_ack 2", "chunk 1", "chunk 2", "get_done"]);
    }

    #[tokio::test]
    async fn a_full_stream_lane_makes_chunks_wait_but_not_answers() {
        let sink = Gated::new(None);
        let (outbox, _task) = Outbox::start(sink.clone(), open_window());
        send(&outbox, Lane::Stream, "chunk 0").await;
        sink.until_taken(1).await;
        for i in 1..=STREAM_QUEUE {
            send(&outbox, Lane::Stream, &format!("chunk {i}")).await;
        }
        // The stream lane is full: one more chunk waits for room...
        let more = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            outbox.send(Lane::Stream, "chunk more".into(), Bytes::new()),
        )
        .await;
        assert!(more.is_err(), "a chunk was queued beyond the stream lane's {STREAM_QUEUE}");
        // ...while an answer is taken at once.
        send(&outbox, Lane::Control, "answer").await;
        sink.gate.add_permits(2);
        sink.until_taken(3).await;
        assert_eq!(sink.taken()[..3], ["chunk 0", "answer", "chunk 1"]);
    }

    #[tokio::test]
    async fn senders_learn_that_the_link_failed() {
        let sink = Gated::new(Some(2));
        let (outbox, task) = Outbox::start(sink.clone(), open_window());
        sink.gate.add_permits(1);
        send(&outbox, Lane::Control, "first").await;
        send(&outbox, Lane::Control, "second").await;
        assert!(task.await.is_ok(), "the outbox task panicked");
        assert_eq!(sink.sent(), ["first"]);
        let after = outbox.send(Lane::Stream, "third".into(), Bytes::new()).await;
        assert!(matches!(after, Err(Closed)), "a send after the link failed was accepted");
    }

    #[tokio::test]
    async fn the_task_ends_when_the_gateway_drops_the_outbox() {
        let sink = Gated::new(None);
        let (outbox, task) = Outbox::start(sink.clone(), open_window());
        sink.gate.add_permits(1);
        send(&outbox, Lane::Stream, "last").await;
        drop(outbox);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        assert!(matches!(ended, Ok(Ok(()))), "the outbox task outlived its senders");
        assert_eq!(sink.sent(), ["last"], "a message queued before the drop was lost");
    }

    /// A sink that lets everything through at once, and a broker window of `limit` the test acknowledges by hand.
    fn windowed(limit: u16) -> (Gated, watch::Sender<PubAcks>, Outbox) {
        let sink = Gated::new(None);
        sink.gate.add_permits(1000);
        let (acks_tx, acks) = watch::channel(PubAcks { connection: 1, acked: 0 });
        let (outbox, _task) = Outbox::start(sink.clone(), BrokerWindow { limit, acks });
        (sink, acks_tx, outbox)
    }

    /// Gives the outbox's task time to take what it may, then returns what the sink was handed.
    async fn settled(sink: &Gated) -> Vec<String> {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        sink.taken()
    }

    #[tokio::test]
    async fn chunks_wait_for_the_broker_window_and_answers_do_not() {
        let (sink, acks, outbox) = windowed(2);
        for i in 1..=4 {
            send(&outbox, Lane::Stream, &format!("chunk {i}")).await;
        }
        assert_eq!(settled(&sink).await, ["chunk 1", "chunk 2"], "two chunks fill a window of two");
        send(&outbox, Lane::Control, "answer").await;
        assert_eq!(settled(&sink).await[2..], ["answer"], "an answer does not wait for the window");
        // Three unacknowledged: one acknowledgement leaves the window full, two open one place.
        acks.send_modify(|a| a.acked += 1);
        assert_eq!(settled(&sink).await.len(), 3, "a chunk went while three messages were unacknowledged");
        acks.send_modify(|a| a.acked += 1);
        assert_eq!(settled(&sink).await[3..], ["chunk 3"]);
        acks.send_modify(|a| a.acked += 1);
        assert_eq!(settled(&sink).await[4..], ["chunk 4"]);
    }

    #[tokio::test]
    async fn a_new_connection_starts_the_count_again() {
        let (sink, acks, outbox) = windowed(1);
        send(&outbox, Lane::Stream, "chunk 1").await;
        send(&outbox, Lane::Stream, "chunk 2").await;
        assert_eq!(settled(&sink).await, ["chunk 1"]);
        // On a new connection rumqttc resends chunk 1; the count starts again, so chunk 2 goes without waiting for
        // an acknowledgement that may never come on this connection.
        acks.send_modify(|a| a.connection += 1);
        assert_eq!(settled(&sink).await, ["chunk 1", "chunk 2"]);
        send(&outbox, Lane::Stream, "chunk 3").await;
        send(&outbox, Lane::Stream, "chunk 4").await;
        assert_eq!(settled(&sink).await.len(), 2, "the window of one is full again");
        // The resent chunk 1's acknowledgement counts for chunk 2: the count errs towards letting one more go.
        acks.send_modify(|a| a.acked += 1);
        assert_eq!(settled(&sink).await[2..], ["chunk 3"]);
        acks.send_modify(|a| a.acked += 1);
        assert_eq!(settled(&sink).await[3..], ["chunk 4"]);
    }

    #[tokio::test]
    async fn chunks_are_not_held_for_a_link_that_reports_no_more() {
        let (sink, acks, outbox) = windowed(1);
        send(&outbox, Lane::Stream, "chunk 1").await;
        send(&outbox, Lane::Stream, "chunk 2").await;
        assert_eq!(settled(&sink).await, ["chunk 1"]);
        // The link's task is gone: the sink is left to fail, not the outbox to wait for ever.
        drop(acks);
        assert_eq!(settled(&sink).await, ["chunk 1", "chunk 2"]);
    }
}
