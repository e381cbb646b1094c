//! The device client: one MQTT connection, requests answered on this client's own session topics.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mqsftp_mqtt::rumqttc::{AsyncClient, QoS};
use mqsftp_mqtt::{LinkOptions, MqttLink};
use mqsftp_proto::{
    Chunk, DeviceId, GetReceiver, Received, Request, Response, SessionId, Topic, TopicKind,
    TransferId,
};
use tokio::io::AsyncWriteExt;
use tracing::debug;

use crate::{DeviceConfig, DeviceError};

/// Progress of a transfer, reported after every chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes done.
    pub done: u64,
    /// Total bytes.
    pub total: u64,
}

/// The result of a verified download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetOutcome {
    /// Where the file was written.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

/// A connected device client.
pub struct Client {
    device: DeviceId,
    session: SessionId,
    link: MqttLink,
    timeout: Duration,
    next_id: u64,
}

enum Incoming {
    Response(Response),
    Chunk(Chunk),
}

impl Client {
    /// Connects to the broker with the device's certificate and subscribes to this session's topics. Fails with
    /// [`DeviceError::Mqtt`] when TLS fails either way or the broker's ACL refuses the topics.
    pub async fn connect(cfg: &DeviceConfig) -> Result<Client, DeviceError> {
        let session = SessionId::from_random(rand::random());
        let device = cfg.device_id.clone();
        let client_id = cfg
            .broker
            .client_id
            .clone()
            .unwrap_or_else(|| format!("mqsftp-{device}-{session}"));
        let link = MqttLink::connect(
            &cfg.broker,
            LinkOptions {
                client_id,
                subscriptions: vec![
                    Topic::response(&device, &session),
                    Topic::down(&device, &session),
                ],
                connect_timeout: cfg.transfer.timeout,
                reconnect: false,
                inflight: 32,
            },
        )
        .await?;
        Ok(Client {
            device,
            session,
            link,
            timeout: cfg.transfer.timeout,
            next_id: 0,
        })
    }

    /// This client's device id.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    fn mqtt(&self) -> &AsyncClient {
        &self.link.client
    }

    fn request_id(&mut self) -> String {
        self.next_id += 1;
        format!("{}-{}", self.session, self.next_id)
    }

    async fn send(&self, req: &Request) -> Result<(), DeviceError> {
        self.mqtt()
            .publish(
                Topic::request(&self.device),
                QoS::AtLeastOnce,
                false,
                req.encode(),
            )
            .await
            .map_err(|e| DeviceError::Closed(e.to_string()))
    }

    /// Waits for the next message for this session, up to `timeout`. `Ok(None)` on timeout.
    async fn next(&mut self, timeout: Duration) -> Result<Option<Incoming>, DeviceError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.link.incoming.recv()).await {
                Err(_) => return Ok(None),
                Ok(None) => return Err(DeviceError::Closed(self.link.closed().await)),
                Ok(Some(p)) => p,
            };
            match Topic::parse(&msg.topic).map(|t| t.kind) {
                Some(TopicKind::Response(s)) if s == self.session => {
                    match Response::decode(&msg.payload) {
                        Ok(r) => return Ok(Some(Incoming::Response(r))),
                        Err(e) => debug!(error = %e, "ignoring an undecodable response"),
                    }
                }
                Some(TopicKind::Down(s)) if s == self.session => match Chunk::decode(msg.payload) {
                    Ok(c) => return Ok(Some(Incoming::Chunk(c))),
                    // A corrupt chunk is dropped; the gateway resends what is not acknowledged.
                    Err(e) => debug!(error = %e, "dropping a bad chunk"),
                },
                _ => debug!(topic = %msg.topic, "ignoring a message on another topic"),
            }
        }
    }

    /// Asks a gateway to answer; returns the round-trip time and the gateway's protocol version.
    pub async fn ping(&mut self) -> Result<(Duration, u32), DeviceError> {
        let id = self.request_id();
        let started = Instant::now();
        self.send(&Request::Ping {
            id: id.clone(),
            session: self.session.clone(),
        })
        .await?;
        loop {
            match self.next(self.timeout).await? {
                None => {
                    return Err(DeviceError::NoGateway {
                        after: self.timeout,
                    })
                }
                Some(Incoming::Response(Response::Pong { id: got, version })) if got == id => {
                    return Ok((started.elapsed(), version))
                }
                Some(Incoming::Response(Response::Error {
                    id: Some(got),
                    code,
                    message,
                    ..
                })) if got == id => return Err(DeviceError::Remote { code, message }),
                Some(_) => {}
            }
        }
    }

    /// Downloads `remote` (relative to the device's root) to `local`, verifying size and SHA-256 before the file
    /// appears at `local`. `local` may be an existing directory, in which case the remote file name is used.
    pub async fn get(
        &mut self,
        remote: &str,
        local: &Path,
        mut progress: impl FnMut(Progress),
    ) -> Result<GetOutcome, DeviceError> {
        let target = local_target(remote, local)?;
        let id = self.request_id();
        self.send(&Request::Get {
            id: id.clone(),
            session: self.session.clone(),
            path: remote.to_string(),
        })
        .await?;
        let (transfer, size) = loop {
            match self.next(self.timeout).await? {
                None => {
                    return Err(DeviceError::NoGateway {
                        after: self.timeout,
                    })
                }
                Some(Incoming::Response(Response::GetAccepted {
                    id: got,
                    transfer,
                    size,
                    ..
                })) if got == id => break (transfer, size),
                Some(Incoming::Response(Response::Error {
                    id: Some(got),
                    code,
                    message,
                    ..
                })) if got == id => return Err(DeviceError::Remote { code, message }),
                Some(_) => {}
            }
        };
        let part = PartFile::create(&target).await?;
        match self.receive(transfer, size, &part, &mut progress).await {
            Ok(sha256) => {
                part.commit(&target).await?;
                Ok(GetOutcome {
                    path: target,
                    size,
                    sha256,
                })
            }
            Err(e) => {
                part.discard().await;
                // Tell the gateway to stop; it would give up by itself later anyway.
                let _ = self.send(&Request::Cancel { transfer }).await;
                Err(e)
            }
        }
    }

    async fn receive(
        &mut self,
        transfer: TransferId,
        size: u64,
        part: &PartFile,
        progress: &mut impl FnMut(Progress),
    ) -> Result<String, DeviceError> {
        let mut rx = GetReceiver::new(transfer, size);
        let mut file = part.open().await?;
        progress(Progress {
            done: 0,
            total: size,
        });
        loop {
            if let Some(result) = rx.poll_finished() {
                let sha = result?;
                file.flush().await.map_err(|e| part.err(e))?;
                file.get_ref().sync_all().await.map_err(|e| part.err(e))?;
                return Ok(hex::encode(sha));
            }
            let Some(msg) = self.next(self.timeout).await? else {
                return Err(DeviceError::Stalled {
                    after: self.timeout,
                    received: rx.received(),
                    size,
                });
            };
            match msg {
                Incoming::Chunk(c) if c.transfer == transfer => {
                    let ack = match rx.handle_chunk(c)? {
                        Received::Write { data, ack, .. } => {
                            file.write_all(&data).await.map_err(|e| part.err(e))?;
                            progress(Progress {
                                done: ack,
                                total: size,
                            });
                            ack
                        }
                        Received::Reack { ack } => ack,
                    };
                    self.send(&Request::Ack {
                        transfer,
                        next: ack,
                    })
                    .await?;
                }
                Incoming::Response(Response::GetDone {
                    transfer: t,
                    size: done_size,
                    sha256,
                }) if t == transfer => {
                    rx.handle_done(done_size, &sha256)?;
                }
                Incoming::Response(Response::Error {
                    transfer: Some(t),
                    code,
                    message,
                    ..
                }) if t == transfer => {
                    return Err(DeviceError::Remote { code, message });
                }
                _ => {}
            }
        }
    }
}

/// Where `get remote local` writes: `local`, or `local/<remote file name>` when `local` is a directory.
fn local_target(remote: &str, local: &Path) -> Result<PathBuf, DeviceError> {
    let name = remote
        .rsplit('/')
        .find(|n| !n.is_empty() && *n != "." && *n != "..");
    if local.is_dir() {
        let name = name.ok_or_else(|| DeviceError::LocalPath {
            path: local.into(),
            reason: format!("remote path {remote:?} has no file name to use inside a directory"),
        })?;
        return Ok(local.join(name));
    }
    if local.file_name().is_none() {
        return Err(DeviceError::LocalPath {
            path: local.into(),
            reason: "no file name".into(),
        });
    }
    Ok(local.to_path_buf())
}

/// A temporary file beside the target, renamed into place only when verified and removed otherwise.
struct PartFile {
    path: PathBuf,
}

impl PartFile {
    async fn create(target: &Path) -> Result<PartFile, DeviceError> {
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = dir.join(format!(".{name}.{:08x}.mqsftp-part", rand::random::<u32>()));
        tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|source| DeviceError::Local {
                path: path.clone(),
                source,
            })?;
        Ok(PartFile { path })
    }

    async fn open(&self) -> Result<tokio::io::BufWriter<tokio::fs::File>, DeviceError> {
        let f = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .await
            .map_err(|e| self.err(e))?;
        Ok(tokio::io::BufWriter::with_capacity(256 * 1024, f))
    }

    fn err(&self, source: std::io::Error) -> DeviceError {
        DeviceError::Local {
            path: self.path.clone(),
            source,
        }
    }

    async fn commit(self, target: &Path) -> Result<(), DeviceError> {
        if let Err(source) = tokio::fs::rename(&self.path, target).await {
            let _ = tokio::fs::remove_file(&self.path).await;
            return Err(DeviceError::Local {
                path: target.into(),
                source,
            });
        }
        // Make the rename itself durable.
        if let Some(dir) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(d) = tokio::fs::File::open(dir).await {
                let _ = d.sync_all().await;
            }
        }
        Ok(())
    }

    async fn discard(self) {
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}
