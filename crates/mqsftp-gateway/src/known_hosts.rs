//! A strict `known_hosts` parser and host key check (no I/O; [`crate::store`] reads the file).
//!
//! Supported, as OpenSSH writes and reads them (`sshd(8)` "SSH_KNOWN_HOSTS FILE FORMAT"):
//!
//! * `host`, `[host]:port` (ports other than 22), comma-separated lists, case-insensitive names;
//! * hashed entries `|1|base64(salt)|base64(HMAC-SHA1(salt, name))` (`ssh-keygen -H`), where
//!   `name` is `host` or `[host]:port`;
//! * several lines (so several key types) per host: any listed key is accepted;
//! * `@revoked`: a key on such a line is refused for the hosts it names, even if another line
//!   lists it as trusted;
//! * negated patterns `!host`: a line whose negated pattern matches does not apply to that host;
//! * comments (`#`) and blank lines; a comment after the key.
//!
//! Decisions:
//!
//! * Wildcards (`*`, `?`) may only narrow trust or widen distrust: they are honoured in negated
//!   patterns and on `@revoked` lines, and a plain (trusting) line's wildcard pattern is skipped
//!   with a warning, so that `*` can never make a key trusted for every host.
//! * `@cert-authority` lines are skipped with a warning: host certificates are not trusted (the
//!   server's plain key must be listed).
//! * A line with a key type this client does not know (e.g. `ssh-dss`) is skipped with a warning:
//!   it cannot match a key the server offers anyway.
//! * Anything else that is malformed (a missing field, bad base64, a bad hashed entry, an unknown
//!   `@marker`, a key whose type field disagrees with its blob) is an error naming the line: the
//!   file is not what its owner thinks it is, and guessing could trust the wrong key.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key::public::KeyData;
use russh::keys::{Algorithm, PublicKey};
use sha1::Sha1;

/// A parse error, with the 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// Something in the file that is ignored, with the 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// 1-based line number.
    pub line: usize,
    /// What is ignored and why.
    pub message: String,
}

/// The result of [`KnownHosts::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The key is listed for the host on this line (and not revoked).
    Trusted { line: usize },
    /// The key is on a `@revoked` line that names the host.
    Revoked { line: usize },
    /// The host is listed with another key of the same type on this line.
    Changed { line: usize },
    /// The host is not listed with a key of this type.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
}

#[derive(Debug, Clone)]
enum Hosts {
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    Patterns(Vec<Pattern>),
}

#[derive(Debug, Clone)]
struct Pattern {
    negated: bool,
    /// Lower-cased.
    text: String,
}

#[derive(Debug, Clone)]
struct Entry {
    line: usize,
    marker: Marker,
    hosts: Hosts,
    key: KeyData,
}

/// A parsed `known_hosts` file.
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    entries: Vec<Entry>,
}

fn b64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

fn hmac_sha1(salt: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(salt).ok()?;
    mac.update(name.as_bytes());
    Some(mac.finalize().into_bytes().to_vec())
}

/// The name OpenSSH looks up: `host` for port 22, `[host]:port` otherwise, lower-cased.
pub fn lookup_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// Glob match with `*` (any run) and `?` (one character), as OpenSSH's `match_pattern`.
fn glob(pattern: &[char], text: &[char]) -> bool {
    // Iterative with one backtrack point: linear in practice, no recursion depth to exhaust.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(c) if *c == '?' || *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?'])
}

fn parse_hosts(field: &str, line: usize) -> Result<Hosts, ParseError> {
    let err = |reason: String| ParseError { line, reason };
    if let Some(rest) = field.strip_prefix('|') {
        let parts: Vec<&str> = rest.split('|').collect();
        return match parts.as_slice() {
            ["1", salt, hash] => {
                let salt = b64(salt).ok_or_else(|| err("hashed host: the salt is not valid base64".into()))?;
                let hash = b64(hash).ok_or_else(|| err("hashed host: the hash is not valid base64".into()))?;
                if salt.is_empty() || hash.len() != 20 {
                    return Err(err("hashed host: expected a salt and a 20-byte HMAC-SHA1".into()));
                }
                Ok(Hosts::Hashed { salt, hash })
            }
            [kind, ..] if *kind != "1" => Err(err(format!("hashed host of unknown type |{kind}|"))),
            _ => Err(err("hashed host: expected |1|salt|hash".into())),
        };
    }
    let mut patterns = Vec::new();
    for raw in field.split(',') {
        let (negated, text) = match raw.strip_prefix('!') {
            Some(t) => (true, t),
            None => (false, raw),
        };
        if text.is_empty() {
            return Err(err(format!("empty host pattern in {field:?}")));
        }
        if let Some(inner) = text.strip_prefix('[') {
            let valid = inner.split_once("]:").is_some_and(|(h, port)| {
                !h.is_empty() && !port.is_empty() && (port.parse::<u16>().is_ok() || has_wildcard(port))
            });
            if !valid {
                return Err(err(format!("host pattern {text:?} is not [host]:port")));
            }
        }
        patterns.push(Pattern { negated, text: text.to_ascii_lowercase() });
    }
    Ok(Hosts::Patterns(patterns))
}

impl KnownHosts {
    /// Parses the text of a `known_hosts` file. Never panics, whatever the input.
    pub fn parse(text: &str) -> Result<(KnownHosts, Vec<Warning>), ParseError> {
        let mut out = KnownHosts::default();
        let mut warnings = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let err = |reason: String| ParseError { line, reason };
            let mut fields = content.split_ascii_whitespace();
            let mut first = fields.next().unwrap_or_default();
            let marker = match first {
                "@revoked" => Some(Marker::Revoked),
                "@cert-authority" => None,
                m if m.starts_with('@') => return Err(err(format!("unknown marker {m:?}"))),
                _ => Some(Marker::None),
            };
            if first.starts_with('@') {
                first = fields.next().ok_or_else(|| err("no host pattern after the marker".into()))?;
            }
            let hosts = parse_hosts(first, line)?;
            let key_type = fields.next().ok_or_else(|| err("no key type".into()))?;
            let blob_text = fields.next().ok_or_else(|| err("no key after the key type".into()))?;
            let blob = b64(blob_text).ok_or_else(|| err(format!("the {key_type} key is not valid base64")))?;
            let Some(marker) = marker else {
                warnings.push(Warning {
                    line,
                    message: "@cert-authority is not supported (host certificates are not trusted); line ignored"
                        .into(),
                });
                continue;
            };
            let key = match PublicKey::from_bytes(&blob) {
                Ok(k) => k,
                Err(e) => {
                    if matches!(key_type.parse::<Algorithm>(), Ok(Algorithm::Other(_) | Algorithm::Dsa) | Err(_)) {
                        warnings.push(Warning {
                            line,
                            message: format!("key type {key_type:?} is not supported; line ignored"),
                        });
                        continue;
                    }
                    return Err(err(format!("the {key_type} key cannot be decoded ({e})")));
                }
            };
            if key.algorithm().as_str() != key_type {
                return Err(err(format!(
                    "the key type field says {key_type} but the key is {}",
                    key.algorithm().as_str()
                )));
            }
            let hosts = match (marker, hosts) {
                (Marker::None, Hosts::Patterns(patterns)) => {
                    let (wild, kept): (Vec<Pattern>, Vec<Pattern>) =
                        patterns.into_iter().partition(|p| !p.negated && has_wildcard(&p.text));
                    for p in &wild {
                        warnings.push(Warning {
                            line,
                            message: format!(
                                "wildcard pattern {:?} cannot make a key trusted; pattern ignored",
                                p.text
                            ),
                        });
                    }
                    Hosts::Patterns(kept)
                }
                (_, hosts) => hosts,
            };
            out.entries.push(Entry { line, marker, hosts, key: key.key_data().clone() });
        }
        Ok((out, warnings))
    }

    /// Checks `key` offered by `host`:`port` (see the module docs for the rules).
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Verdict {
        let name = lookup_name(host, port);
        let name_chars: Vec<char> = name.chars().collect();
        let applies = |e: &Entry| match &e.hosts {
            Hosts::Hashed { salt, hash } => hmac_sha1(salt, &name).is_some_and(|h| &h == hash),
            Hosts::Patterns(patterns) => {
                let matches = |p: &Pattern| glob(&p.text.chars().collect::<Vec<_>>(), &name_chars);
                !patterns.iter().any(|p| p.negated && matches(p)) && patterns.iter().any(|p| !p.negated && matches(p))
            }
        };
        let offered = key.key_data();
        let all: Vec<&Entry> = self.entries.iter().filter(|e| applies(e)).collect();
        if let Some(e) = all.iter().find(|e| e.marker == Marker::Revoked && &e.key == offered) {
            return Verdict::Revoked { line: e.line };
        }
        let plain = || all.iter().filter(|e| e.marker == Marker::None);
        if let Some(e) = plain().find(|e| &e.key == offered) {
            return Verdict::Trusted { line: e.line };
        }
        if let Some(e) = plain().find(|e| e.key.algorithm() == offered.algorithm()) {
            return Verdict::Changed { line: e.line };
        }
        Verdict::Unknown
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;
    use russh::keys::ssh_key::private::{EcdsaKeypair, Ed25519Keypair};
    use russh::keys::PrivateKey;

    fn ed25519(seed: u8) -> PublicKey {
        let kp = Ed25519Keypair::from_seed(&[seed; 32]);
        PrivateKey::from(kp).public_key().clone()
    }

    fn ecdsa() -> PublicKey {
        let kp = EcdsaKeypair::random(
            &mut getrandom::rand_core::UnwrapErr(getrandom::SysRng),
            russh::keys::EcdsaCurve::NistP256,
        )
        .unwrap();
        PrivateKey::from(kp).public_key().clone()
    }

    fn line(hosts: &str, key: &PublicKey) -> String {
        let mut k = key.clone();
        k.set_comment("");
        format!("{hosts} {}", k.to_openssh().unwrap())
    }

    fn parse(text: &str) -> KnownHosts {
        KnownHosts::parse(text).unwrap().0
    }

    #[test]
    fn plain_and_bracketed_hosts() {
        let k = ed25519(1);
        let kh = parse(&format!("# c\n\n{}\n{}\n", line("files.example.com,10.0.0.5", &k), line("[sftp]:2222", &k)));
        assert_eq!(kh.check("files.example.com", 22, &k), Verdict::Trusted { line: 3 });
        assert_eq!(kh.check("FILES.example.com", 22, &k), Verdict::Trusted { line: 3 });
        assert_eq!(kh.check("10.0.0.5", 22, &k), Verdict::Trusted { line: 3 });
        assert_eq!(kh.check("sftp", 2222, &k), Verdict::Trusted { line: 4 });
        assert_eq!(kh.check("sftp", 22, &k), Verdict::Unknown);
        assert_eq!(kh.check("files.example.com", 2222, &k), Verdict::Unknown);
        assert_eq!(kh.check("other", 22, &k), Verdict::Unknown);
        assert_eq!(kh.check("files.example.com", 22, &ed25519(2)), Verdict::Changed { line: 3 });
    }

    #[test]
    fn hashed_entries_match_as_openssh_computes_them() {
        // Made by `ssh-keygen -H`-style hashing of "[127.0.0.1]:2222" with a fixed salt; checked
        // against ssh-keygen -F in `hashed_entries_agree_with_ssh_keygen`.
        let k = ed25519(3);
        let salt = [7u8; 20];
        let hash = hmac_sha1(&salt, "[127.0.0.1]:2222").unwrap();
        let e = base64::engine::general_purpose::STANDARD;
        let hosts = format!("|1|{}|{}", e.encode(salt), e.encode(hash));
        let kh = parse(&line(&hosts, &k));
        assert_eq!(kh.check("127.0.0.1", 2222, &k), Verdict::Trusted { line: 1 });
        assert_eq!(kh.check("127.0.0.1", 22, &k), Verdict::Unknown);
    }

    #[test]
    fn hashed_entries_agree_with_ssh_keygen() {
        let dir = std::env::temp_dir().join(format!("mqsftp-kh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("known_hosts");
        let k = ed25519(4);
        std::fs::write(&file, format!("{}\n{}\n", line("[127.0.0.1]:2222", &k), line("files.example.com", &k)))
            .unwrap();
        let out = std::process::Command::new("ssh-keygen").arg("-H").arg("-f").arg(&file).output().expect("ssh-keygen");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(text.lines().all(|l| l.starts_with("|1|")), "{text}");
        let kh = parse(&text);
        assert!(matches!(kh.check("127.0.0.1", 2222, &k), Verdict::Trusted { .. }));
        assert!(matches!(kh.check("files.example.com", 22, &k), Verdict::Trusted { .. }));
        assert_eq!(kh.check("files.example.org", 22, &k), Verdict::Unknown);
    }

    #[test]
    fn several_key_types_per_host() {
        let (ed, ec) = (ed25519(5), ecdsa());
        let kh = parse(&format!("{}\n{}\n", line("h", &ec), line("h", &ed)));
        assert_eq!(kh.check("h", 22, &ed), Verdict::Trusted { line: 2 });
        assert_eq!(kh.check("h", 22, &ec), Verdict::Trusted { line: 1 });
        assert_eq!(kh.check("h", 22, &ed25519(6)), Verdict::Changed { line: 2 });
        // Only another type listed: unknown, not trusted.
        let kh = parse(&line("h", &ec));
        assert_eq!(kh.check("h", 22, &ed), Verdict::Unknown);
    }

    #[test]
    fn revoked_wins_over_a_trusting_line() {
        let k = ed25519(7);
        let kh = parse(&format!("{}\n@revoked {}\n", line("h", &k), line("*", &k)));
        assert_eq!(kh.check("h", 22, &k), Verdict::Revoked { line: 2 });
        assert_eq!(kh.check("anything", 2222, &k), Verdict::Revoked { line: 2 });
        let other = ed25519(8);
        let kh = parse(&format!("@revoked {}\n{}\n", line("h", &other), line("h", &k)));
        assert_eq!(kh.check("h", 22, &k), Verdict::Trusted { line: 2 });
    }

    #[test]
    fn negation_and_wildcards() {
        let k = ed25519(9);
        let (kh, warnings) = KnownHosts::parse(&format!(
            "{}\n{}\n",
            line("*.example.com,a.example.com", &k),
            line("b.example.com,!b*", &k)
        ))
        .unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].message.contains("*.example.com") && warnings[0].line == 1);
        assert_eq!(kh.check("a.example.com", 22, &k), Verdict::Trusted { line: 1 });
        assert_eq!(kh.check("c.example.com", 22, &k), Verdict::Unknown, "the wildcard trusts nothing");
        assert_eq!(kh.check("b.example.com", 22, &k), Verdict::Unknown, "negated");
        assert!(glob(&"a*b?c".chars().collect::<Vec<_>>(), &"axxxbyc".chars().collect::<Vec<_>>()));
        assert!(!glob(&"a*b?c".chars().collect::<Vec<_>>(), &"axxxbc".chars().collect::<Vec<_>>()));
    }

    #[test]
    fn cert_authority_and_unknown_types_are_skipped_with_a_warning() {
        let k = ed25519(10);
        let text = format!(
            "@cert-authority {}\nh ssh-dss AAAAB3NzaC1kc3MAAACBAPAA\nh x-key@example.com AAAA\nh ssh-foo AAAA\n{}\n",
            line("*", &k),
            line("h", &k)
        );
        let (kh, warnings) = KnownHosts::parse(&text).unwrap();
        let lines: Vec<usize> = warnings.iter().map(|w| w.line).collect();
        assert_eq!(lines, [1, 2, 3, 4], "{warnings:?}");
        assert_eq!(kh.check("h", 22, &k), Verdict::Trusted { line: 5 });
        assert_eq!(kh.check("other", 22, &k), Verdict::Unknown, "the CA line trusts nothing");
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let k = ed25519(11);
        let good = line("h", &k);
        let blob = good.split(' ').nth(2).unwrap();
        let cases = [
            ("h".to_string(), "no key type"),
            ("h ssh-ed25519".to_string(), "no key after"),
            ("h ssh-ed25519 !!!".to_string(), "not valid base64"),
            (format!("@bogus h ssh-ed25519 {blob}"), "unknown marker"),
            ("@revoked".to_string(), "no host pattern"),
            (format!("|1|abc h ssh-ed25519 {blob}"), "hashed host"),
            (format!("|2|AAAA|AAAA ssh-ed25519 {blob}"), "unknown type"),
            (format!("|1|AAAA|AAAA ssh-ed25519 {blob}"), "20-byte"),
            (format!("a,,b ssh-ed25519 {blob}"), "empty host pattern"),
            (format!("[h]:x ssh-ed25519 {blob}"), "[host]:port"),
            (format!("[h] ssh-ed25519 {blob}"), "[host]:port"),
            (format!("h ecdsa-sha2-nistp256 {blob}"), "type field says"),
            ("h ssh-ed25519 AAAA".to_string(), "cannot be decoded"),
        ];
        for (bad, needle) in cases {
            let err = KnownHosts::parse(&format!("{good}\n# x\n{bad}\n")).unwrap_err();
            assert_eq!(err.line, 3, "{bad}");
            assert!(err.to_string().starts_with("line 3: ") && err.reason.contains(needle), "{bad}: {err}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(text in ".{0,400}", host in "[a-z0-9.\\[\\]:*?!,|]{0,20}", port: u16) {
            if let Ok((kh, _)) = KnownHosts::parse(&text) {
                let _ = kh.check(&host, port, &ed25519(1));
            }
        }

        #[test]
        fn never_panics_on_near_valid_lines(
            marker in prop::sample::select(vec!["", "@revoked ", "@cert-authority ", "@x "]),
            hosts in "[a-z0-9.\\[\\]:*?!,|=/+A-Z]{0,30}",
            key_type in prop::sample::select(vec!["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa", "x"]),
            blob in "[A-Za-z0-9+/=]{0,120}",
            host in "[a-z0-9.*?]{0,12}",
            port: u16,
        ) {
            let text = format!("{marker}{hosts} {key_type} {blob} comment\n");
            if let Ok((kh, _)) = KnownHosts::parse(&text) {
                let _ = kh.check(&host, port, &ed25519(1));
            }
        }
    }
}
