//! The Mosquitto ACL file (`acl_file`), as `mqsftp pki init` writes it, and the checks made with it.
//!
//! Supported lines (Mosquitto 2.0 syntax): `# comment`, `user NAME`, `topic [read|write|readwrite|deny] TOPIC` (for
//! the user named by the last `user` line; lines before any `user` line are for anonymous clients, which this broker
//! never has) and `pattern [read|write|readwrite|deny] TOPIC` (for every client, `%u` = user name, `%c` = client id).
//! Anything not allowed is denied; a matching `deny` rule wins over any allow rule.

use std::collections::HashMap;
use std::path::Path;

use crate::topic::{covers, matches, valid_filter};
use crate::BrokerError;

/// What a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn grants(self, want: Want) -> bool {
        matches!(
            (self, want),
            (Access::ReadWrite, _) | (Access::Read, Want::Subscribe) | (Access::Write, Want::Publish)
        )
    }
}

/// What a client asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// Publish on a topic name (needs `write`).
    Publish,
    /// Subscribe to a topic filter (needs `read` for every topic the filter can match).
    Subscribe,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    topic: String,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default)]
pub(crate) struct Acl {
    /// `topic` rules by user name.
    users: HashMap<String, Vec<Rule>>,
    /// `pattern` rules, for everyone.
    patterns: Vec<Rule>,
}

impl Acl {
    /// Reads and parses the ACL file at `path`.
    pub(crate) fn load(path: &Path) -> Result<Acl, BrokerError> {
        let text = std::fs::read_to_string(path).map_err(|source| BrokerError::Read {
            what: "the ACL file",
            path: path.to_path_buf(),
            source,
        })?;
        Acl::parse(&text).map_err(|(line, reason)| BrokerError::Acl { path: path.to_path_buf(), line, reason })
    }

    /// Parses ACL text; an error carries the 1-based line number and the reason.
    pub(crate) fn parse(text: &str) -> Result<Acl, (usize, String)> {
        let mut acl = Acl::default();
        // `None`: before any `user` line (anonymous clients; kept apart and never used).
        let mut user: Option<String> = None;
        let mut anonymous = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err((line_no, "`user` needs a user name".into()));
                    }
                    user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest).map_err(|reason| (line_no, format!("{keyword}: {reason}")))?;
                    match (keyword, &user) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, Some(name)) => acl.users.entry(name.clone()).or_default().push(rule),
                        (_, None) => anonymous.push(rule),
                    }
                }
                other => {
                    return Err((line_no, format!("unknown keyword {other:?} (expected user, topic or pattern)")));
                }
            }
        }
        Ok(acl)
    }

    /// Whether `user` (connected as `client_id`) may do `want` with `topic` (a topic name for [`Want::Publish`], a
    /// filter without `$share/GROUP/` for [`Want::Subscribe`]).
    pub(crate) fn allows(&self, user: &str, client_id: &str, want: Want, topic: &str) -> bool {
        let own = self.users.get(user).map(Vec::as_slice).unwrap_or_default();
        let mut allowed = false;
        let mut check = |access: Access, pattern: &str| {
            let hit = match (access, want) {
                (Access::Deny, Want::Subscribe) => overlaps(pattern, topic),
                (_, Want::Subscribe) => covers(pattern, topic),
                (_, Want::Publish) => matches(topic, pattern),
            };
            if hit {
                if access == Access::Deny {
                    return false;
                }
                allowed |= access.grants(want);
            }
            true
        };
        for rule in own {
            if !check(rule.access, &rule.topic) {
                return false;
            }
        }
        for rule in &self.patterns {
            match substitute(&rule.topic, user, client_id) {
                Some(pattern) if !check(rule.access, &pattern) => return false,
                Some(_) => {}
                // A user name or client id with `/`, `+` or `#` could widen a pattern: it does not apply (as in
                // Mosquitto), and a deny pattern that cannot be applied denies.
                None if rule.access == Access::Deny => return false,
                None => {}
            }
        }
        allowed
    }
}

fn parse_rule(rest: &str) -> Result<Rule, String> {
    let (first, after) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
    let (access, topic) = match first {
        "read" => (Access::Read, after.trim()),
        "write" => (Access::Write, after.trim()),
        "readwrite" => (Access::ReadWrite, after.trim()),
        "deny" => (Access::Deny, after.trim()),
        _ => (Access::ReadWrite, rest),
    };
    if topic.is_empty() {
        return Err("no topic".into());
    }
    if !valid_filter(topic) {
        return Err(format!("{topic:?} is not a valid topic filter"));
    }
    Ok(Rule { access, topic: topic.to_string() })
}

/// `%u` → user, `%c` → client id; `None` if a value holds a character that would change the pattern's levels.
fn substitute(pattern: &str, user: &str, client_id: &str) -> Option<String> {
    let unsafe_value = |v: &str| v.contains(['/', '+', '#']);
    if (pattern.contains("%u") && unsafe_value(user)) || (pattern.contains("%c") && unsafe_value(client_id)) {
        return None;
    }
    Some(pattern.replace("%u", user).replace("%c", client_id))
}

/// Whether some topic is matched by both filters.
fn overlaps(a: &str, b: &str) -> bool {
    fn levels(a: &[&str], b: &[&str]) -> bool {
        match (a.first(), b.first()) {
            (Some(&"#"), _) | (_, Some(&"#")) => true,
            (None, None) => true,
            (Some(&"+"), Some(_)) | (Some(_), Some(&"+")) => levels(&a[1..], &b[1..]),
            (Some(x), Some(y)) if x == y => levels(&a[1..], &b[1..]),
            _ => false,
        }
    }
    let a: Vec<&str> = a.split('/').collect();
    let b: Vec<&str> = b.split('/').collect();
    levels(&a, &b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// The ACL that `mqsftp pki init` writes (crates/mqsftp-pki/src/templates.rs).
    const GENERATED: &str = "\
# comment
pattern write mqsftp/v1/%u/req/#
pattern write mqsftp/v1/%u/up/#
pattern read mqsftp/v1/%u/res/#
pattern read mqsftp/v1/%u/down/#

# The gateway
user gateway
topic readwrite mqsftp/v1/#
";

    #[test]
    fn generated_acl_confines_devices_to_their_topics() {
        let acl = Acl::parse(GENERATED).unwrap();
        let (p, s) = (Want::Publish, Want::Subscribe);
        assert!(acl.allows("d1", "c", p, "mqsftp/v1/d1/req"));
        assert!(acl.allows("d1", "c", p, "mqsftp/v1/d1/up/g1"));
        assert!(!acl.allows("d1", "c", p, "mqsftp/v1/d2/req"));
        assert!(!acl.allows("d1", "c", p, "mqsftp/v1/d1/res/s"));
        assert!(acl.allows("d1", "c", s, "mqsftp/v1/d1/res/s1"));
        assert!(acl.allows("d1", "c", s, "mqsftp/v1/d1/down/#"));
        assert!(!acl.allows("d1", "c", s, "mqsftp/v1/d2/res/s1"));
        assert!(!acl.allows("d1", "c", s, "mqsftp/v1/+/res/#"));
        assert!(!acl.allows("d1", "c", s, "#"));
        assert!(!acl.allows("d1", "c", s, "mqsftp/v1/d1/req"));
        assert!(acl.allows("gateway", "g", s, "mqsftp/v1/+/req"));
        assert!(acl.allows("gateway", "g", p, "mqsftp/v1/d1/down/s"));
        assert!(!acl.allows("gateway", "g", s, "#"));
        assert!(!acl.allows("gateway", "g", p, "other/topic"));
        // A user name that would widen the pattern gets nothing from it.
        assert!(!acl.allows("+", "c", p, "mqsftp/v1/+/req"));
        assert!(!acl.allows("a/b", "c", p, "mqsftp/v1/a/b/req"));
    }

    #[test]
    fn deny_wins_and_client_id_is_substituted() {
        let acl = Acl::parse("pattern readwrite c/%c/#\npattern deny c/+/secret\nuser u\ntopic x\n").unwrap();
        assert!(acl.allows("u", "id1", Want::Publish, "c/id1/a"));
        assert!(!acl.allows("u", "id1", Want::Publish, "c/id1/secret"));
        assert!(!acl.allows("u", "id1", Want::Subscribe, "c/id1/#"));
        assert!(acl.allows("u", "id1", Want::Subscribe, "c/id1/a/+"));
        assert!(acl.allows("u", "id1", Want::Publish, "x"));
        assert!(acl.allows("u", "id1", Want::Subscribe, "x"));
        assert!(!acl.allows("v", "id1", Want::Publish, "x"));
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        assert_eq!(Acl::parse("user a\nfoo bar\n").unwrap_err().0, 2);
        assert_eq!(Acl::parse("topic read a/#/b\n").unwrap_err().0, 1);
        assert_eq!(Acl::parse("\n\npattern read\n").unwrap_err().0, 3);
        assert_eq!(Acl::parse("user\n").unwrap_err().0, 1);
    }

    /// `overlaps` (used for deny rules) says yes exactly when some topic matches both filters.
    #[test]
    fn overlap_agrees_with_matching_exhaustively() {
        use crate::topic::{tests::all_names, valid_filter};
        let filters: Vec<String> = all_names(&["a", "+", "#"], 3).into_iter().filter(|f| valid_filter(f)).collect();
        let topics = all_names(&["a", "z"], 5);
        for a in &filters {
            for b in &filters {
                let by_matching = topics.iter().any(|t| matches(t, a) && matches(t, b));
                assert_eq!(overlaps(a, b), by_matching, "{a} and {b}");
            }
        }
    }
}
