//! Topic names and filters: validation, matching, and whether one filter covers another (for ACL checks on
//! subscriptions).

/// A valid topic name to publish on: not empty, no wildcards, no NUL (MQTT 3.1.1 §4.7.3, §1.5.3).
pub(crate) fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// A valid topic filter: not empty, no NUL, `+` only as a whole level, `#` only as the whole last level.
pub(crate) fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    levels.iter().enumerate().all(|(i, level)| match *level {
        "+" => true,
        "#" => i == last,
        other => !other.contains(['+', '#']),
    })
}

/// A subscription as the client sent it: either a plain filter or a shared one (`$share/GROUP/FILTER`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Subscription {
    /// A normal subscription.
    Plain(String),
    /// `$share/GROUP/FILTER`: each matching message goes to one member of GROUP.
    Shared { group: String, filter: String },
}

impl Subscription {
    /// Parses and validates a filter from SUBSCRIBE or UNSUBSCRIBE; `None` if it is not valid.
    pub(crate) fn parse(text: &str) -> Option<Subscription> {
        if let Some(rest) = text.strip_prefix("$share/") {
            let (group, filter) = rest.split_once('/')?;
            if group.is_empty() || group.contains(['+', '#']) || !valid_filter(filter) {
                return None;
            }
            return Some(Subscription::Shared { group: group.to_string(), filter: filter.to_string() });
        }
        valid_filter(text).then(|| Subscription::Plain(text.to_string()))
    }

    /// The topic filter, without any `$share/GROUP/` prefix.
    pub(crate) fn filter(&self) -> &str {
        match self {
            Subscription::Plain(f) => f,
            Subscription::Shared { filter, .. } => filter,
        }
    }
}

/// Whether `topic` matches `filter` (both valid). Topics starting with `$` are not matched by a filter that starts
/// with a wildcard (MQTT 3.1.1 §4.7.2).
pub(crate) fn matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    let mut filter_levels = filter.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // `a/#` matches `a` too.
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic that `filter` can match is also matched by `pattern` (both valid filters). This is how a
/// subscription is checked against a `read` ACL entry: `mqsftp/v1/d1/res/#` is covered by `mqsftp/v1/d1/res/#` and
/// by `mqsftp/v1/+/res/#`, while `mqsftp/v1/+/res/#` is not covered by `mqsftp/v1/d1/res/#`.
pub(crate) fn covers(pattern: &str, filter: &str) -> bool {
    // A topic starting with `$` is not matched by a pattern that starts with a wildcard.
    if filter.starts_with('$') && pattern.starts_with(['+', '#']) {
        return false;
    }
    let pattern: Vec<&str> = pattern.split('/').collect();
    // A topic has at least one level, so the filter `#` matches exactly what `+/#` matches.
    let filter: Vec<&str> = if filter == "#" { vec!["+", "#"] } else { filter.split('/').collect() };
    covers_levels(&pattern, &filter)
}

fn covers_levels(pattern: &[&str], filter: &[&str]) -> bool {
    match (pattern.first(), filter.first()) {
        // `#` in the pattern matches whatever is left, nothing included.
        (Some(&"#"), _) => true,
        (None, None) => true,
        // The filter's `#` can match deeper topics than a pattern without `#` at that point.
        (_, Some(&"#")) => false,
        (Some(&"+"), Some(_)) => covers_levels(&pattern[1..], &filter[1..]),
        // A literal level covers only the same literal: a `+` in the filter would match other levels.
        (Some(p), Some(f)) if p == f => covers_levels(&pattern[1..], &filter[1..]),
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn filters_are_validated() {
        for good in ["a", "a/b", "+", "#", "a/+/c", "a/#", "+/+/#", "/", "a//b"] {
            assert!(valid_filter(good), "{good}");
        }
        for bad in ["", "a#", "a/#/b", "a/b+", "+a/b", "a/\0"] {
            assert!(!valid_filter(bad), "{bad:?}");
        }
        assert!(valid_topic_name("a/b"));
        assert!(!valid_topic_name("a/+"));
        assert!(!valid_topic_name(""));
    }

    #[test]
    fn shared_subscriptions_are_parsed() {
        assert_eq!(
            Subscription::parse("$share/g/mqsftp/v1/+/req"),
            Some(Subscription::Shared { group: "g".into(), filter: "mqsftp/v1/+/req".into() })
        );
        assert_eq!(Subscription::parse("$share//a"), None);
        assert_eq!(Subscription::parse("$share/g"), None);
        assert_eq!(Subscription::parse("$share/g+/a"), None);
        assert_eq!(Subscription::parse("a/+"), Some(Subscription::Plain("a/+".into())));
    }

    #[test]
    fn topics_match_filters() {
        assert!(matches("a/b/c", "a/b/c"));
        assert!(matches("a/b/c", "a/+/c"));
        assert!(matches("a/b/c", "a/#"));
        assert!(matches("a", "a/#"));
        assert!(matches("a/b/c", "#"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(!matches("a/b/c", "a/+"));
        assert!(!matches("$SYS/x", "#"));
        assert!(!matches("$SYS/x", "+/x"));
        assert!(matches("$SYS/x", "$SYS/#"));
    }

    #[test]
    fn coverage_is_conservative() {
        let own = "mqsftp/v1/d1/res/#";
        assert!(covers(own, "mqsftp/v1/d1/res/#"));
        assert!(covers(own, "mqsftp/v1/d1/res"));
        assert!(covers(own, "mqsftp/v1/d1/res/s1"));
        assert!(covers(own, "mqsftp/v1/d1/res/+"));
        assert!(!covers(own, "mqsftp/v1/+/res/#"));
        assert!(!covers(own, "mqsftp/v1/#"));
        assert!(!covers(own, "#"));
        assert!(!covers(own, "mqsftp/v1/d2/res/#"));
        assert!(covers("mqsftp/v1/#", "mqsftp/v1/+/req"));
        assert!(covers("mqsftp/v1/+/req", "mqsftp/v1/+/req"));
        assert!(!covers("mqsftp/v1/+/req", "mqsftp/v1/+/req/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(covers("#", "a/+/#"));
        assert!(!covers("#", "$SYS/x"));
    }

    /// Every string made of up to `max` levels from `alphabet`.
    pub(crate) fn all_names(alphabet: &[&str], max: usize) -> Vec<String> {
        let mut out: Vec<String> = alphabet.iter().map(|s| s.to_string()).collect();
        let mut last = out.clone();
        for _ in 1..max {
            last = last.iter().flat_map(|p| alphabet.iter().map(move |l| format!("{p}/{l}"))).collect();
            out.extend(last.iter().cloned());
        }
        out
    }

    /// `covers` agrees with `matches` on every small filter: it says yes exactly when every topic the filter matches
    /// is matched by the pattern ("z" stands for any other level).
    #[test]
    fn coverage_agrees_with_matching_exhaustively() {
        let filters: Vec<String> = all_names(&["a", "+", "#"], 3).into_iter().filter(|f| valid_filter(f)).collect();
        let topics = all_names(&["a", "z"], 5);
        for pattern in &filters {
            for filter in &filters {
                let by_matching = topics.iter().filter(|t| matches(t, filter)).all(|t| matches(t, pattern));
                assert_eq!(covers(pattern, filter), by_matching, "pattern {pattern}, filter {filter}");
            }
        }
    }
}
