//! Topic names. Every mqsftp topic is `mqsftp/v1/{device}/{kind}[/{session}]`.
//!
//! | topic                                   | direction       | payload                  |
//! |-----------------------------------------|-----------------|--------------------------|
//! | `mqsftp/v1/{device}/req`                | device → gateway| JSON [`Request`](crate::Request) |
//! | `mqsftp/v1/{device}/res/{session}`      | gateway → device| JSON [`Response`](crate::Response) |
//! | `mqsftp/v1/{device}/down/{session}`     | gateway → device| binary [`Chunk`](crate::Chunk) |
//! | `mqsftp/v1/{device}/up`                 | device → gateway| binary [`Chunk`](crate::Chunk) of an upload |
//!
//! `{session}` is chosen by each device client when it connects so that several clients of one device do not
//! receive each other's data.

use crate::{DeviceId, SessionId};

/// First two levels of every topic.
pub const PREFIX: &str = "mqsftp/v1";

/// What a topic carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicKind {
    /// Requests and acknowledgements from the device.
    Request,
    /// JSON responses to one device session.
    Response(SessionId),
    /// Binary chunks to one device session.
    Down(SessionId),
    /// Binary chunks of the device's uploads.
    Up,
}

/// A parsed mqsftp topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// The device the topic belongs to (the broker only lets that device use it).
    pub device: DeviceId,
    /// What the topic carries.
    pub kind: TopicKind,
}

impl Topic {
    /// Topic a device publishes its requests on.
    pub fn request(device: &DeviceId) -> String {
        format!("{PREFIX}/{device}/req")
    }
    /// Topic the gateway answers a session on.
    pub fn response(device: &DeviceId, session: &SessionId) -> String {
        format!("{PREFIX}/{device}/res/{session}")
    }
    /// Topic the gateway sends a session's chunks on.
    pub fn down(device: &DeviceId, session: &SessionId) -> String {
        format!("{PREFIX}/{device}/down/{session}")
    }
    /// Topic a device publishes upload chunks on.
    pub fn up(device: &DeviceId) -> String {
        format!("{PREFIX}/{device}/up")
    }
    /// Filter the gateway subscribes to for all devices' upload chunks.
    pub fn all_uploads_filter() -> String {
        format!("{PREFIX}/+/up")
    }
    /// Filter the gateway subscribes to for all devices' requests.
    pub fn all_requests_filter() -> String {
        format!("{PREFIX}/+/req")
    }

    /// Parses a topic; `None` when it is not an mqsftp v1 topic with a valid device id and session.
    pub fn parse(topic: &str) -> Option<Topic> {
        let rest = topic.strip_prefix(PREFIX)?.strip_prefix('/')?;
        let mut levels = rest.split('/');
        let device = DeviceId::new(levels.next()?).ok()?;
        let kind = match (levels.next()?, levels.next(), levels.next()) {
            ("req", None, None) => TopicKind::Request,
            ("up", None, None) => TopicKind::Up,
            ("res", Some(s), None) => TopicKind::Response(SessionId::new(s).ok()?),
            ("down", Some(s), None) => TopicKind::Down(SessionId::new(s).ok()?),
            _ => return None,
        };
        Some(Topic { device, kind })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip() {
        let d = DeviceId::new("dev-1").unwrap();
        let s = SessionId::new("a1b2").unwrap();
        assert_eq!(Topic::request(&d), "mqsftp/v1/dev-1/req");
        assert_eq!(Topic::parse(&Topic::request(&d)), Some(Topic { device: d.clone(), kind: TopicKind::Request }));
        assert_eq!(
            Topic::parse(&Topic::response(&d, &s)),
            Some(Topic { device: d.clone(), kind: TopicKind::Response(s.clone()) })
        );
        assert_eq!(Topic::parse(&Topic::up(&d)), Some(Topic { device: d.clone(), kind: TopicKind::Up }));
        assert_eq!(Topic::parse(&Topic::down(&d, &s)), Some(Topic { device: d, kind: TopicKind::Down(s) }));
    }

    #[test]
    fn rejects_foreign_topics() {
        for t in [
            "mqsftp/v2/d/req",
            "mqsftp/v1/d",
            "mqsftp/v1/d/req/x",
            "mqsftp/v1/gateway/req",
            "mqsftp/v1/+/req",
            "mqsftp/v1/d/res",
            "mqsftp/v1/d/res/a/b",
            "x/mqsftp/v1/d/req",
        ] {
            assert_eq!(Topic::parse(t), None, "{t}");
        }
    }
}
