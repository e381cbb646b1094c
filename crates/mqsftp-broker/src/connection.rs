//! One client connection: TLS handshake, CONNECT, then three loops polled together in the connection's task:
//!
//! * the **reader** parses packets. It never waits on anything but the socket: PUBACKs free the writer's in-flight
//!   slots, SUBSCRIBE/UNSUBSCRIBE/PINGREQ are answered through the small control queue, and PUBLISH packets go into
//!   the incoming queue. The client is disconnected if it has more than [`MAX_INFLIGHT_IN`] QoS 1 publishes without
//!   a PUBACK, or if it does not read its own control answers.
//! * the **router** takes publishes from the incoming queue in order, hands them to every subscriber's outgoing
//!   queue (waiting while one is full: this is the backpressure that stops a fast publisher), and only then queues
//!   the PUBACK. A publisher thus sees its PUBACKs slow down and stops at its own in-flight limit.
//! * the **writer** sends control answers first, then PUBACKs, then deliveries, at most [`MAX_INFLIGHT_OUT`] QoS 1
//!   deliveries awaiting the client's PUBACK at a time, batching what is ready into one TLS write.
//!
//! Because the reader never blocks on another connection, two clients that publish to each other cannot deadlock:
//! each one's PUBACKs are always read, so each one's writer always makes progress.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{self, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn, Instrument};

use crate::acl::Want;
use crate::router::{min_qos, Delivery, Kick, Outbox};
use crate::topic::{valid_topic_name, Subscription};
use crate::{tls, Shared};
use crate::{
    CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT, MAX_INFLIGHT_IN, MAX_INFLIGHT_OUT, MAX_PACKET_SIZE, OUT_QUEUE, STALL_TIMEOUT,
};

/// QoS 0 publishes that may wait in the incoming queue besides the QoS 1 ones; more are dropped.
const QOS0_SLACK: usize = 32;
/// Room for SUBACK, UNSUBACK and PINGRESP not yet written; a client that lets more pile up is not reading.
const CTRL_QUEUE: usize = 64;
/// The writer sends what is ready in one write of up to this many bytes.
const WRITE_BATCH: usize = 256 * 1024;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    /// The TLS handshake failed (no client certificate, unknown CA, ...).
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] std::io::Error),
    /// The client sent nothing for too long.
    #[error("no {what} within {}s", .after.as_secs_f32())]
    Timeout { what: &'static str, after: Duration },
    /// The client's certificate has no CN to use as user name.
    #[error("the client certificate has no common name")]
    NoCommonName,
    /// The client asked for a protocol other than MQTT 3.1.1.
    #[error("unsupported protocol {name:?} level {level} (only MQTT 3.1.1 is served)")]
    Protocol { name: String, level: u8 },
    /// A read or write failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A packet could not be decoded.
    #[error("malformed packet: {0}")]
    Malformed(mqttbytes::Error),
    /// A packet was larger than [`MAX_PACKET_SIZE`].
    #[error("packet of {0} bytes exceeds the limit of {MAX_PACKET_SIZE} bytes")]
    TooLarge(usize),
    /// The client broke the protocol.
    #[error("protocol violation: {0}")]
    Violation(String),
    /// More unacknowledged QoS 1 publishes than the broker accepts.
    #[error("more than {MAX_INFLIGHT_IN} QoS 1 publishes awaiting PUBACK (the client's in-flight limit is too high)")]
    InflightExceeded,
    /// Control answers piled up unread.
    #[error("the client does not read its acknowledgements")]
    NotReading,
    /// The broker closed the connection.
    #[error("closed by the broker: {0}")]
    Kicked(&'static str),
}

/// How the reader ended without error.
enum Ending {
    /// The client sent DISCONNECT: no will.
    Disconnect,
    /// The client closed the connection without DISCONNECT.
    Eof,
}

/// Runs one connection to its end, in a tracing span named after its peer address and connection number.
pub(crate) async fn run(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("mqtt", %peer, conn = conn_id, client = tracing::field::Empty);
    async move {
        match serve(tcp, conn_id, &shared, shutdown).await {
            Ok(()) => debug!("connection closed"),
            Err(ConnError::Kicked(reason)) => info!("connection closed by the broker: {reason}"),
            Err(e) => info!("connection closed: {e}"),
        }
    }
    .instrument(span)
    .await
}

async fn serve(
    tcp: TcpStream,
    conn_id: u64,
    shared: &Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConnError> {
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, shared.tls.accept(tcp));
    let stream = handshake
        .await
        .map_err(|_| ConnError::Timeout { what: "TLS handshake", after: HANDSHAKE_TIMEOUT })?
        .map_err(ConnError::Handshake)?;
    let user = tls::common_name(stream.get_ref().1);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = BytesMut::with_capacity(64 * 1024);

    // CONNECT.
    let first = tokio::time::timeout(CONNECT_TIMEOUT, read_packet(&mut rd, &mut buf, true))
        .await
        .map_err(|_| ConnError::Timeout { what: "CONNECT", after: CONNECT_TIMEOUT })?;
    let connect = match first {
        Ok(Some(Packet::Connect(c))) => c,
        Ok(Some(other)) => return Err(ConnError::Violation(format!("first packet is {}, not CONNECT", kind(&other)))),
        Ok(None) => return Ok(()),
        Err(e @ ConnError::Protocol { .. }) => {
            let _ = send_connack(&mut wr, ConnectReturnCode::RefusedProtocolVersion).await;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let Some(user) = user else {
        let _ = send_connack(&mut wr, ConnectReturnCode::NotAuthorized).await;
        return Err(ConnError::NoCommonName);
    };
    let client_id: Arc<str> = if connect.client_id.is_empty() {
        if !connect.clean_session {
            let _ = send_connack(&mut wr, ConnectReturnCode::BadClientId).await;
            return Err(ConnError::Violation("empty client id without clean session".into()));
        }
        format!("auto-{conn_id}").into()
    } else {
        connect.client_id.as_str().into()
    };
    tracing::Span::current().record("client", &*client_id);
    if !connect.clean_session {
        debug!("persistent session asked for; this broker keeps none (session present = 0)");
    }
    let keep_alive = (connect.keep_alive > 0).then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));

    let (data_tx, data_rx) = mpsc::channel(OUT_QUEUE);
    let kick = Arc::new(Kick::default());
    shared.router.register(conn_id, Outbox { client_id: client_id.clone(), tx: data_tx, kick: kick.clone() });
    info!(%user, "connected");
    if let Err(e) = send_connack(&mut wr, ConnectReturnCode::Success).await {
        shared.router.unregister(conn_id);
        return Err(e);
    }

    let ctx = Ctx {
        shared: shared.clone(),
        conn_id,
        client_id,
        user,
        pending_q1: AtomicUsize::new(0),
        queued_q0: AtomicUsize::new(0),
        outstanding: Mutex::new(Outstanding::default()),
        slots: Semaphore::new(MAX_INFLIGHT_OUT),
    };
    let (in_tx, in_rx) = mpsc::channel(MAX_INFLIGHT_IN + QOS0_SLACK);
    let (ctrl_tx, ctrl_rx) = mpsc::channel(CTRL_QUEUE);
    let (ack_tx, ack_rx) = mpsc::channel(MAX_INFLIGHT_IN);

    let reader = ctx.reader(&mut rd, &mut buf, keep_alive, in_tx, ctrl_tx);
    let mut router = std::pin::pin!(ctx.router(in_rx, ack_tx));
    let writer = ctx.writer(&mut wr, ctrl_rx, ack_rx, data_rx);
    let (result, reader_done) = tokio::select! {
        r = reader => (r, true),
        r = &mut router => (r.map(|()| Ending::Eof), false),
        r = writer => (r.map(|()| Ending::Eof), false),
        reason = kick.kicked() => (Err(ConnError::Kicked(reason)), false),
        _ = shutdown.changed() => (Err(ConnError::Kicked("the broker is shutting down")), false),
    };
    shared.router.unregister(conn_id);
    // Close the connection now: the client must not wait for what follows.
    drop((rd, wr));
    if reader_done {
        // The reader has stopped (DISCONNECT, end of stream or a bad packet) and so closed the incoming queue:
        // route what the client sent before, as a broker that handles packets one by one would have (e.g. a QoS 0
        // publish followed at once by DISCONNECT, as mosquitto_pub does). This may wait for a slow subscriber, at
        // most STALL_TIMEOUT per message; the queue holds at most MAX_INFLIGHT_IN + QOS0_SLACK of them.
        tokio::select! {
            _ = &mut router => {}
            _ = shutdown.changed() => {}
        }
    }
    if !matches!(result, Ok(Ending::Disconnect)) {
        if let Some(will) = connect.last_will {
            ctx.publish_will(will);
        }
    }
    result.map(|_| ())
}

/// State of one connection shared by its reader, router and writer.
struct Ctx {
    shared: Arc<Shared>,
    conn_id: u64,
    client_id: Arc<str>,
    user: String,
    /// QoS 1 publishes received whose PUBACK is not written yet.
    pending_q1: AtomicUsize,
    /// QoS 0 publishes in the incoming queue.
    queued_q0: AtomicUsize,
    /// Packet ids of QoS 1 deliveries awaiting the client's PUBACK.
    outstanding: Mutex<Outstanding>,
    /// Free in-flight slots for QoS 1 deliveries.
    slots: Semaphore,
}

#[derive(Default)]
struct Outstanding {
    ids: std::collections::HashSet<u16>,
    last: u16,
}

impl Outstanding {
    /// A packet id not in use (there are at most [`MAX_INFLIGHT_OUT`] in use, far fewer than 65,535).
    fn allocate(&mut self) -> u16 {
        loop {
            self.last = self.last.checked_add(1).unwrap_or(1);
            if self.ids.insert(self.last) {
                return self.last;
            }
        }
    }
}

impl Ctx {
    fn lock_outstanding(&self) -> std::sync::MutexGuard<'_, Outstanding> {
        self.outstanding.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn reader<R: AsyncRead + Unpin>(
        &self,
        rd: &mut R,
        buf: &mut BytesMut,
        keep_alive: Option<Duration>,
        in_tx: mpsc::Sender<Publish>,
        ctrl_tx: mpsc::Sender<Packet>,
    ) -> Result<Ending, ConnError> {
        let control = |p: Packet| ctrl_tx.try_send(p).map_err(|_| ConnError::NotReading);
        loop {
            let packet = match keep_alive {
                Some(limit) => tokio::time::timeout(limit, read_packet(rd, buf, false))
                    .await
                    .map_err(|_| ConnError::Timeout { what: "packet (keepalive)", after: limit })??,
                None => read_packet(rd, buf, false).await?,
            };
            let Some(packet) = packet else { return Ok(Ending::Eof) };
            match packet {
                Packet::Publish(p) => {
                    if !valid_topic_name(&p.topic) {
                        return Err(ConnError::Violation(format!("invalid topic name {:?}", p.topic)));
                    }
                    match p.qos {
                        QoS::AtLeastOnce => {
                            if self.pending_q1.fetch_add(1, Ordering::AcqRel) >= MAX_INFLIGHT_IN {
                                return Err(ConnError::InflightExceeded);
                            }
                            in_tx.try_send(p).map_err(|_| ConnError::InflightExceeded)?;
                        }
                        QoS::AtMostOnce => {
                            // At most QOS0_SLACK QoS 0 publishes wait, so that the QoS 1 ones always fit.
                            if self.queued_q0.load(Ordering::Acquire) >= QOS0_SLACK {
                                debug!("incoming queue full: QoS 0 publish dropped");
                            } else {
                                self.queued_q0.fetch_add(1, Ordering::AcqRel);
                                if in_tx.try_send(p).is_err() {
                                    self.queued_q0.fetch_sub(1, Ordering::AcqRel);
                                    debug!("incoming queue full: QoS 0 publish dropped");
                                }
                            }
                        }
                        QoS::ExactlyOnce => {
                            return Err(ConnError::Violation("QoS 2 publish (this broker serves QoS 0 and 1)".into()))
                        }
                    }
                }
                Packet::PubAck(ack) => {
                    if self.lock_outstanding().ids.remove(&ack.pkid) {
                        self.slots.add_permits(1);
                    } else {
                        debug!(pkid = ack.pkid, "PUBACK for an unknown packet id ignored");
                    }
                }
                Packet::Subscribe(s) => {
                    let codes = s.filters.iter().map(|f| self.subscribe(&f.path, f.qos)).collect();
                    control(Packet::SubAck(SubAck::new(s.pkid, codes)))?;
                }
                Packet::Unsubscribe(u) => {
                    for filter in &u.topics {
                        if let Some(sub) = Subscription::parse(filter) {
                            self.shared.router.unsubscribe(self.conn_id, &sub);
                        }
                    }
                    control(Packet::UnsubAck(UnsubAck::new(u.pkid)))?;
                }
                Packet::PingReq => control(Packet::PingResp)?,
                Packet::Disconnect => return Ok(Ending::Disconnect),
                other => return Err(ConnError::Violation(format!("unexpected {} packet", kind(&other)))),
            }
        }
    }

    /// Checks and records one subscription; the SUBACK code for it.
    fn subscribe(&self, filter: &str, qos: QoS) -> SubscribeReasonCode {
        let Some(sub) = Subscription::parse(filter) else {
            info!(filter, "subscription refused: not a valid topic filter");
            return SubscribeReasonCode::Failure;
        };
        if !self.shared.acl.allows(&self.user, &self.client_id, Want::Subscribe, sub.filter()) {
            info!(filter, user = %self.user, "subscription refused by the ACL");
            return SubscribeReasonCode::Failure;
        }
        let granted = min_qos(qos, QoS::AtLeastOnce);
        self.shared.router.subscribe(self.conn_id, &sub, granted);
        debug!(filter, ?granted, "subscribed");
        SubscribeReasonCode::Success(granted)
    }

    /// Routes incoming publishes in order; queues each QoS 1 PUBACK once the message is in every subscriber's queue.
    async fn router(&self, mut in_rx: mpsc::Receiver<Publish>, ack_tx: mpsc::Sender<u16>) -> Result<(), ConnError> {
        while let Some(publish) = in_rx.recv().await {
            if publish.qos == QoS::AtMostOnce {
                self.queued_q0.fetch_sub(1, Ordering::AcqRel);
            }
            if self.shared.acl.allows(&self.user, &self.client_id, Want::Publish, &publish.topic) {
                self.shared.route(&publish.topic, publish.qos, publish.payload).await;
            } else {
                // As Mosquitto does: not delivered, but acknowledged, so the client learns nothing.
                info!(topic = %publish.topic, user = %self.user, "publish refused by the ACL");
            }
            if publish.qos == QoS::AtLeastOnce {
                // Never full: at most MAX_INFLIGHT_IN QoS 1 publishes are pending, PUBACK queued or not.
                if ack_tx.try_send(publish.pkid).is_err() {
                    return Err(ConnError::Violation("PUBACK queue overflow".into()));
                }
            }
        }
        Ok(())
    }

    async fn writer<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut W,
        mut ctrl_rx: mpsc::Receiver<Packet>,
        mut ack_rx: mpsc::Receiver<u16>,
        mut data_rx: mpsc::Receiver<Delivery>,
    ) -> Result<(), ConnError> {
        let mut out = BytesMut::with_capacity(WRITE_BATCH + 64 * 1024);
        loop {
            tokio::select! {
                biased;
                Some(p) = ctrl_rx.recv() => encode(&mut out, &p)?,
                Some(pkid) = ack_rx.recv() => self.encode_puback(&mut out, pkid)?,
                Some((delivery, permit)) = async {
                    let permit = self.slots.acquire().await.ok()?;
                    Some((data_rx.recv().await?, permit))
                } => self.encode_delivery(&mut out, delivery, permit)?,
                else => return Ok(()),
            }
            // Add whatever else is ready, then write it all at once.
            while out.len() < WRITE_BATCH {
                if let Ok(p) = ctrl_rx.try_recv() {
                    encode(&mut out, &p)?;
                } else if let Ok(pkid) = ack_rx.try_recv() {
                    self.encode_puback(&mut out, pkid)?;
                } else if let Ok(permit) = self.slots.try_acquire() {
                    match data_rx.try_recv() {
                        Ok(delivery) => self.encode_delivery(&mut out, delivery, permit)?,
                        Err(_) => break,
                    }
                } else {
                    break;
                }
            }
            wr.write_all(&out).await?;
            wr.flush().await?;
            out.clear();
        }
    }

    fn encode_puback(&self, out: &mut BytesMut, pkid: u16) -> Result<(), ConnError> {
        self.pending_q1.fetch_sub(1, Ordering::AcqRel);
        PubAck::new(pkid).write(out).map_err(ConnError::Malformed)?;
        Ok(())
    }

    fn encode_delivery(
        &self,
        out: &mut BytesMut,
        delivery: Delivery,
        permit: tokio::sync::SemaphorePermit<'_>,
    ) -> Result<(), ConnError> {
        let pkid = if delivery.qos == QoS::AtMostOnce {
            drop(permit);
            0
        } else {
            // The slot comes back when the client's PUBACK arrives (reader).
            permit.forget();
            self.lock_outstanding().allocate()
        };
        let publish = Publish {
            dup: false,
            qos: delivery.qos,
            retain: false,
            topic: delivery.topic,
            pkid,
            payload: delivery.payload,
        };
        publish.write(out).map_err(ConnError::Malformed)?;
        Ok(())
    }

    /// Publishes the client's will (it left without DISCONNECT), if the ACL lets it write there.
    fn publish_will(&self, will: rumqttc::mqttbytes::v4::LastWill) {
        if !valid_topic_name(&will.topic)
            || !self.shared.acl.allows(&self.user, &self.client_id, Want::Publish, &will.topic)
        {
            info!(topic = %will.topic, "will not published: topic invalid or refused by the ACL");
            return;
        }
        let shared = self.shared.clone();
        let qos = min_qos(will.qos, QoS::AtLeastOnce);
        tokio::spawn(async move { shared.route(&will.topic, qos, will.message).await }.in_current_span());
    }
}

impl Shared {
    /// Hands a message to every subscriber of `topic`. A QoS 1 delivery waits for room in the subscriber's queue
    /// (that wait is the publisher's backpressure); a subscriber that takes nothing for [`STALL_TIMEOUT`] is
    /// disconnected rather than holding every publisher up. A QoS 0 delivery to a full queue is dropped.
    pub(crate) async fn route(&self, topic: &str, qos: QoS, payload: Bytes) {
        for target in self.router.targets(topic) {
            let delivery =
                Delivery { topic: topic.to_string(), payload: payload.clone(), qos: min_qos(qos, target.qos) };
            let outbox = target.outbox;
            if delivery.qos == QoS::AtMostOnce {
                if outbox.tx.try_send(delivery).is_err() {
                    debug!(subscriber = %outbox.client_id, "QoS 0 delivery dropped: queue full");
                }
                continue;
            }
            match tokio::time::timeout(STALL_TIMEOUT, outbox.tx.send(delivery)).await {
                // Err: the subscriber has just left.
                Ok(_) => {}
                Err(_) => {
                    warn!(subscriber = %outbox.client_id, "subscriber took no message for {}s: disconnecting it", STALL_TIMEOUT.as_secs());
                    outbox.kick.kick("it took no message for too long while its queue was full");
                }
            }
        }
    }
}

/// Reads one packet. `first`: the CONNECT is checked for the protocol name and level before it is decoded.
/// `Ok(None)` at a clean end of stream.
async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    first: bool,
) -> Result<Option<Packet>, ConnError> {
    loop {
        if first {
            check_protocol(buf)?;
        }
        match Packet::read(buf, MAX_PACKET_SIZE) {
            Ok(p) => return Ok(Some(p)),
            Err(mqttbytes::Error::InsufficientBytes(n)) => buf.reserve(n.max(4096)),
            Err(mqttbytes::Error::PayloadSizeLimitExceeded(size)) => return Err(ConnError::TooLarge(size)),
            Err(e) => return Err(ConnError::Malformed(e)),
        }
        if rd.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ConnError::Violation("connection closed mid-packet".into()))
            };
        }
    }
}

/// Looks at the protocol name and level of a CONNECT at the start of `buf` once enough of it is there; an error for
/// anything but MQTT 3.1.1 ("MQTT", level 4), so that the client gets CONNACK 0x01.
fn check_protocol(buf: &[u8]) -> Result<(), ConnError> {
    if buf.first().map(|b| b >> 4) != Some(1) {
        return Ok(());
    }
    // Skip the remaining-length varint (1 to 4 bytes).
    let Some(len_bytes) = buf.iter().skip(1).take(4).position(|b| b & 0x80 == 0) else { return Ok(()) };
    let start = 2 + len_bytes;
    let Some(name_len) = buf.get(start..start + 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))) else {
        return Ok(());
    };
    let (Some(name), Some(&level)) = (buf.get(start + 2..start + 2 + name_len), buf.get(start + 2 + name_len)) else {
        return Ok(());
    };
    if name != b"MQTT" || level != 4 {
        return Err(ConnError::Protocol { name: String::from_utf8_lossy(name).into_owned(), level });
    }
    Ok(())
}

async fn send_connack<W: AsyncWrite + Unpin>(wr: &mut W, code: ConnectReturnCode) -> Result<(), ConnError> {
    let mut out = BytesMut::with_capacity(4);
    ConnAck::new(code, false).write(&mut out).map_err(ConnError::Malformed)?;
    wr.write_all(&out).await?;
    wr.flush().await?;
    Ok(())
}

fn encode(out: &mut BytesMut, packet: &Packet) -> Result<(), ConnError> {
    packet.write(out, usize::MAX).map_err(ConnError::Malformed)?;
    Ok(())
}

/// The packet type, for messages.
fn kind(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn connect_protocol_level_is_checked() {
        let mut v4 = BytesMut::new();
        rumqttc::mqttbytes::v4::Connect::new("c").write(&mut v4).unwrap();
        assert!(check_protocol(&v4).is_ok());
        let mut v5 = v4.clone();
        v5[8] = 5;
        assert!(matches!(check_protocol(&v5), Err(ConnError::Protocol { level: 5, .. })));
        // MQTT 3.1: "MQIsdp", level 3.
        let v31 = [0x10, 0x0e, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 60, 0, 0];
        assert!(matches!(check_protocol(&v31), Err(ConnError::Protocol { level: 3, .. })));
        // Not enough bytes yet: no verdict.
        assert!(check_protocol(&v4[..5]).is_ok());
    }

    #[test]
    fn packet_ids_skip_those_in_use() {
        let mut o = Outstanding { ids: [1u16, 2].into_iter().collect(), last: 65534 };
        assert_eq!(o.allocate(), 65535);
        assert_eq!(o.allocate(), 3);
    }
}
