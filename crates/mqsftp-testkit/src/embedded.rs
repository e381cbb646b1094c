//! The embedded servers (`mqsftp-broker`, `mqsftp-sftpd`) run by [`Stack::start_embedded`](crate::Stack::start_embedded):
//! the pair `mqsftp demo` uses, started with the same generated PKI, ACL, authorized_keys and host key as the
//! real pair, on their own Tokio runtime so that the synchronous [`Stack`](crate::Stack) API works in plain and
//! async tests alike.

use std::future::Future;
use std::path::PathBuf;

use mqsftp_broker::{Broker, BrokerSettings};
use mqsftp_sftpd::{OpenFiles, Sftpd, SftpdConfig};
use tokio::net::TcpListener;

use crate::config::HOST;
use crate::TestkitError;

/// The broker and SFTP server, each stoppable and restartable on its port.
pub(crate) struct Embedded {
    rt: Option<tokio::runtime::Runtime>,
    broker: Option<Broker>,
    sftpd: Option<Sftpd>,
    broker_settings: BrokerSettings,
    sftpd_config: SftpdConfig,
    pub(crate) mqtt_port: u16,
    pub(crate) sftp_port: u16,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded")
            .field("mqtt_port", &self.mqtt_port)
            .field("sftp_port", &self.sftp_port)
            .field("broker_running", &self.broker.is_some())
            .field("sftpd_running", &self.sftpd.is_some())
            .finish()
    }
}

fn failed(server: &'static str, e: impl std::fmt::Display) -> TestkitError {
    TestkitError::Embedded { server, reason: e.to_string() }
}

impl Embedded {
    /// Starts both on free loopback ports (bound first, then handed over: no port race).
    pub(crate) fn start(broker_settings: BrokerSettings, sftpd_config: SftpdConfig) -> Result<Embedded, TestkitError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("testkit-embedded")
            .enable_all()
            .build()
            .map_err(|e| failed("runtime", e))?;
        let mut e = Embedded {
            rt: Some(rt),
            broker: None,
            sftpd: None,
            broker_settings,
            sftpd_config,
            mqtt_port: 0,
            sftp_port: 0,
        };
        e.start_broker()?;
        e.start_sftpd()?;
        Ok(e)
    }

    /// Runs `f` on the embedded runtime from a thread of its own, which is allowed even inside another runtime.
    fn block_on<F>(&self, f: F) -> Result<F::Output, TestkitError>
    where
        F: Future + Send,
        F::Output: Send,
    {
        let rt = self.rt.as_ref().ok_or_else(|| failed("runtime", "already shut down"))?;
        std::thread::scope(|s| s.spawn(|| rt.block_on(f)).join()).map_err(|_| failed("runtime", "a task panicked"))
    }

    pub(crate) fn start_broker(&mut self) -> Result<(), TestkitError> {
        if self.broker.is_some() {
            return Err(TestkitError::AlreadyRunning {
                server: "mqsftp-broker",
                pid: std::process::id(),
                port: self.mqtt_port,
            });
        }
        let (port, settings) = (self.mqtt_port, self.broker_settings.clone());
        let broker = self.block_on(async move {
            let l = TcpListener::bind((HOST, port)).await.map_err(|e| failed("mqsftp-broker", e))?;
            Broker::start(l, settings).await.map_err(|e| failed("mqsftp-broker", e))
        })??;
        self.mqtt_port = broker.local_addr().port();
        self.broker = Some(broker);
        Ok(())
    }

    pub(crate) fn stop_broker(&mut self) -> Result<(), TestkitError> {
        let b = self.broker.take().ok_or(TestkitError::NotRunning { server: "mqsftp-broker", port: self.mqtt_port })?;
        self.block_on(b.shutdown())
    }

    pub(crate) fn start_sftpd(&mut self) -> Result<(), TestkitError> {
        if self.sftpd.is_some() {
            return Err(TestkitError::AlreadyRunning {
                server: "mqsftp-sftpd",
                pid: std::process::id(),
                port: self.sftp_port,
            });
        }
        let (port, config) = (self.sftp_port, self.sftpd_config.clone());
        let sftpd = self.block_on(async move {
            let l = TcpListener::bind((HOST, port)).await.map_err(|e| failed("mqsftp-sftpd", e))?;
            Sftpd::start(l, config).await.map_err(|e| failed("mqsftp-sftpd", e))
        })??;
        self.sftp_port = sftpd.local_addr().port();
        self.sftpd = Some(sftpd);
        Ok(())
    }

    pub(crate) fn stop_sftpd(&mut self) -> Result<(), TestkitError> {
        let s = self.sftpd.take().ok_or(TestkitError::NotRunning { server: "mqsftp-sftpd", port: self.sftp_port })?;
        self.block_on(s.shutdown())
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if self.sftpd.is_some() {
            let _ = self.stop_sftpd();
        }
        if self.broker.is_some() {
            let _ = self.stop_broker();
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// What the embedded pair is started with, from a stack's generated files.
pub(crate) fn settings(
    pki_dir: &std::path::Path,
    store_dir: PathBuf,
    host_key: PathBuf,
    user: &str,
) -> (BrokerSettings, SftpdConfig) {
    use mqsftp_pki::files;
    (
        BrokerSettings {
            ca_cert: pki_dir.join(files::CA_CERT),
            cert: pki_dir.join(files::BROKER_CERT),
            key: pki_dir.join(files::BROKER_KEY),
            acl: pki_dir.join(files::ACL),
        },
        SftpdConfig {
            root: store_dir,
            host_key,
            authorized_keys: pki_dir.join(files::AUTHORIZED_KEYS),
            user: user.into(),
            // Stricter than `mqsftp demo`: the tests also show that the gateway closes a file before renaming or
            // removing it, which a store on a Windows file system requires.
            open_files: OpenFiles::Locked,
        },
    )
}
