//! Topic names. Every mqsftp topic is `mqsftp/v1/{device}/{kind}[/{session or gateway}]`.
//!
//! | topic                               | direction        | payload |
//! |-------------------------------------|------------------|---------|
//! | `mqsftp/v1/{device}/req`            | device → any gateway (shared subscription) | JSON [`Request`](crate::Request) starting something |
//! | `mqsftp/v1/{device}/req/{gateway}`  | device → the gateway running a transfer | JSON `ack`, `cancel`, `commit` |
//! | `mqsftp/v1/{device}/up/{gateway}`   | device → the gateway running an upload | binary [`Chunk`](crate::Chunk) |
//! | `mqsftp/v1/{device}/res/{session}`  | gateway → device | JSON [`Response`](crate::Response) |
//! | `mqsftp/v1/{device}/down/{session}` | gateway → device | binary [`Chunk`](crate::Chunk) |
//! | `mqsftp/v1/{device}/res/_errors`    | gateway → device | JSON `error` for a message that names no session (unparsable JSON, a chunk or ack for an unknown transfer) |
//!
//! `{session}` is chosen by each device client when it connects so that several clients of one device do not
//! receive each other's data. `{gateway}` is the id a gateway announces when it accepts a transfer: new requests
//! reach whichever gateway the broker picks from the shared subscription, and everything that belongs to a running
//! transfer goes to the gateway that holds it.

use crate::{DeviceId, SessionId};

/// First two levels of every topic.
pub const PREFIX: &str = "mqsftp/v1";

/// Shared-subscription group of the gateways: each new request goes to one of them.
pub const GATEWAY_GROUP: &str = "mqsftp-gateways";

/// Last level of [`Topic::errors`].
pub const ERRORS_LEVEL: &str = "_errors";

/// A gateway's id in topics: the same alphabet and length as a session id.
pub type GatewayId = SessionId;

/// What a topic carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicKind {
    /// New requests from the device, for any gateway.
    Request,
    /// Requests about a running transfer, for one gateway.
    Direct(GatewayId),
    /// Upload chunks, for one gateway.
    Up(GatewayId),
    /// JSON responses to one device session.
    Response(SessionId),
    /// Binary chunks to one device session.
    Down(SessionId),
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
    /// Topic a device publishes new requests on.
    pub fn request(device: &DeviceId) -> String {
        format!("{PREFIX}/{device}/req")
    }
    /// Topic a device publishes requests about a transfer held by `gateway` on.
    pub fn direct(device: &DeviceId, gateway: &GatewayId) -> String {
        format!("{PREFIX}/{device}/req/{gateway}")
    }
    /// Topic a device publishes upload chunks for `gateway` on.
    pub fn up(device: &DeviceId, gateway: &GatewayId) -> String {
        format!("{PREFIX}/{device}/up/{gateway}")
    }
    /// Topic the gateway answers a session on.
    pub fn response(device: &DeviceId, session: &SessionId) -> String {
        format!("{PREFIX}/{device}/res/{session}")
    }
    /// Topic the gateway reports errors on that it cannot address to a session: a request it could not parse far
    /// enough to read its session, or a chunk, ack or cancel for a transfer it does not hold. `_` is not in the
    /// session alphabet, so this never collides with a session's responses, and the ACL's `res/#` covers it.
    pub fn errors(device: &DeviceId) -> String {
        format!("{PREFIX}/{device}/res/{ERRORS_LEVEL}")
    }
    /// Topic the gateway sends a session's chunks on.
    pub fn down(device: &DeviceId, session: &SessionId) -> String {
        format!("{PREFIX}/{device}/down/{session}")
    }
    /// Filter (a shared subscription) through which the gateways share all devices' new requests.
    pub fn shared_requests_filter() -> String {
        format!("$share/{GATEWAY_GROUP}/{PREFIX}/+/req")
    }
    /// Filter for requests addressed to `gateway`.
    pub fn direct_filter(gateway: &GatewayId) -> String {
        format!("{PREFIX}/+/req/{gateway}")
    }
    /// Filter for upload chunks addressed to `gateway`.
    pub fn up_filter(gateway: &GatewayId) -> String {
        format!("{PREFIX}/+/up/{gateway}")
    }

    /// Parses a topic; `None` when it is not an mqsftp v1 topic with a valid device id and session or gateway.
    pub fn parse(topic: &str) -> Option<Topic> {
        let rest = topic.strip_prefix(PREFIX)?.strip_prefix('/')?;
        let mut levels = rest.split('/');
        let device = DeviceId::new(levels.next()?).ok()?;
        let id = |s: &str| SessionId::new(s).ok();
        let kind = match (levels.next()?, levels.next(), levels.next()) {
            ("req", None, None) => TopicKind::Request,
            ("req", Some(g), None) => TopicKind::Direct(id(g)?),
            ("up", Some(g), None) => TopicKind::Up(id(g)?),
            ("res", Some(s), None) => TopicKind::Response(id(s)?),
            ("down", Some(s), None) => TopicKind::Down(id(s)?),
            _ => return None,
        };
        Some(Topic { device, kind })
    }

    /// The topic string of a parsed topic.
    pub fn render(&self) -> String {
        match &self.kind {
            TopicKind::Request => Topic::request(&self.device),
            TopicKind::Direct(g) => Topic::direct(&self.device, g),
            TopicKind::Up(g) => Topic::up(&self.device, g),
            TopicKind::Response(s) => Topic::response(&self.device, s),
            TopicKind::Down(s) => Topic::down(&self.device, s),
        }
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
        assert_eq!(Topic::direct(&d, &s), "mqsftp/v1/dev-1/req/a1b2");
        for kind in [
            TopicKind::Request,
            TopicKind::Direct(s.clone()),
            TopicKind::Up(s.clone()),
            TopicKind::Response(s.clone()),
            TopicKind::Down(s.clone()),
        ] {
            let t = Topic { device: d.clone(), kind };
            assert_eq!(Topic::parse(&t.render()), Some(t));
        }
    }

    #[test]
    fn rejects_foreign_topics() {
        for t in [
            "mqsftp/v2/d/req",
            "mqsftp/v1/d",
            "mqsftp/v1/d/req/x/y",
            "mqsftp/v1/d/req/UPPER",
            "mqsftp/v1/gateway/req",
            "mqsftp/v1/+/req",
            "mqsftp/v1/d/res",
            "mqsftp/v1/d/up",
            "mqsftp/v1/d/res/a/b",
            "x/mqsftp/v1/d/req",
        ] {
            assert_eq!(Topic::parse(t), None, "{t}");
        }
    }
}
