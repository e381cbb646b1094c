//! The gateway's per-device policy: which store root a device sees, which operations it may use, and its limits.
//!
//! Without a policy file every device gets the default: its own root (`store.device_root`), every operation, the
//! `[transfer]` limits and no quota or rate limit. A policy file (`[policy] file = "policy.toml"` in gateway.toml)
//! changes the default and adds rules matched by device id or glob, first match wins:
//!
//! ```toml
//! [default]                      # every key optional; unset keys keep the built-in default
//! root = "devices/{device}"
//! allow = ["get", "put", "ls", "rm", "mv", "mkdir"]
//! max_file_size = "1 GiB"        # bytes, or a number with B, KiB, MiB, GiB, TiB, KB, MB, GB, TB
//! max_transfers = 4              # concurrent transfers of one device
//! quota = "10 GiB"               # bytes stored under the device's root, in-progress uploads included
//! rate = "5 MiB"                 # bytes per second of transfer data, per device and gateway
//!
//! [[device]]
//! match = "sensor-*"             # a device id, or a glob with * and ?
//! allow = ["get", "ls"]          # unset keys are taken from [default]
//! root = "firmware"              # a root without {device} is shared by every matching device
//! ```
//!
//! `stat` counts as `ls`; `commit`, acknowledgements and cancels belong to the transfer they steer, which was
//! checked when it started. A policy is checked completely when loaded: an error names the file, the line and the
//! reason, and [`Policy::load`] returns no policy at all, so a reload that fails leaves the old one in force.
//! Transfers keep the limits they started with; a reload applies to requests that arrive after it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mqsftp_proto::{DeviceId, RelPath};
use serde::Deserialize;
use toml::Spanned;

use crate::config::{GatewayConfig, DEVICE_PLACEHOLDER};

/// An operation a policy can allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Download.
    Get,
    /// Upload (and commit).
    Put,
    /// List and stat.
    Ls,
    /// Remove.
    Rm,
    /// Rename.
    Mv,
    /// Make a directory.
    Mkdir,
}

impl Op {
    /// Every operation, in the order of the docs.
    pub const ALL: [Op; 6] = [Op::Get, Op::Put, Op::Ls, Op::Rm, Op::Mv, Op::Mkdir];

    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Ls => "ls",
            Op::Rm => "rm",
            Op::Mv => "mv",
            Op::Mkdir => "mkdir",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ops(u8);

impl Ops {
    /// Every operation.
    pub fn all() -> Ops {
        Ops(Op::ALL.iter().fold(0, |acc, o| acc | o.bit()))
    }
    /// Whether `op` is in the set.
    pub fn contains(self, op: Op) -> bool {
        self.0 & op.bit() != 0
    }
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not valid TOML or has an unknown key or a wrong type (the message has the line).
    #[error("policy file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value is not acceptable.
    #[error("policy file {path} line {line}: {key} = {value}: {reason}")]
    Invalid { path: PathBuf, line: usize, key: &'static str, value: String, reason: String },
}

/// What one device may do, fixed when a request arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The device's root on the store (placeholder filled in).
    pub root: String,
    /// Allowed operations.
    pub allow: Ops,
    /// Largest upload, in bytes.
    pub max_file_size: u64,
    /// Concurrent transfers of this device.
    pub max_transfers: usize,
    /// Bytes the device may keep under its root, if limited.
    pub quota: Option<u64>,
    /// Transfer bytes per second, if limited.
    pub rate: Option<u64>,
    /// Which rule gave this access, for messages (`"policy.toml line 12"`, `"the default policy"`).
    pub rule: String,
}

impl Access {
    /// The store path of `rel` inside this root.
    pub fn path_of(&self, rel: &RelPath) -> String {
        join(&self.root, rel)
    }

    /// `Ok` when `op` is allowed, else the message for the device.
    pub fn check(&self, device: &DeviceId, op: Op) -> Result<(), String> {
        if self.allow.contains(op) {
            Ok(())
        } else {
            Err(format!("operation {op} is not allowed for device {device} ({})", self.rule))
        }
    }
}

/// Joins a store directory and a device-relative path.
pub(crate) fn join(root: &str, rel: &RelPath) -> String {
    if rel.is_root() {
        root.to_string()
    } else if root.ends_with('/') {
        format!("{root}{}", rel.as_str())
    } else {
        format!("{root}/{}", rel.as_str())
    }
}

/// A rule's settings before the placeholder is filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    root: String,
    allow: Ops,
    max_file_size: u64,
    max_transfers: usize,
    quota: Option<u64>,
    rate: Option<u64>,
}

#[derive(Debug, Clone)]
struct Rule {
    pattern: String,
    line: usize,
    template: Template,
}

/// A loaded, checked policy.
#[derive(Debug, Clone)]
pub struct Policy {
    default: Template,
    rules: Vec<Rule>,
    /// The file it came from, if any.
    source: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    default: Option<SettingsToml>,
    #[serde(default)]
    device: Vec<DeviceToml>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SettingsToml {
    root: Option<Spanned<String>>,
    allow: Option<Spanned<Vec<Spanned<String>>>>,
    max_file_size: Option<Spanned<Size>>,
    max_transfers: Option<Spanned<i64>>,
    quota: Option<Spanned<Size>>,
    rate: Option<Spanned<Size>>,
}

// Not `#[serde(flatten)]`: flattening buffers the values and loses the spans that give errors their line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceToml {
    #[serde(rename = "match")]
    pattern: Spanned<String>,
    root: Option<Spanned<String>>,
    allow: Option<Spanned<Vec<Spanned<String>>>>,
    max_file_size: Option<Spanned<Size>>,
    max_transfers: Option<Spanned<i64>>,
    quota: Option<Spanned<Size>>,
    rate: Option<Spanned<Size>>,
}

/// A byte count written as a number or a string with a unit.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum Size {
    Bytes(i64),
    Text(String),
}

/// Parses `"1 GiB"`, `"512KiB"`, `"10MB"`, `"123"`, `"123 B"` into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| "expected a whole number of bytes, optionally with a unit".to_string())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => return Err(format!("unknown unit {other:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)")),
    };
    n.checked_mul(mult).ok_or_else(|| "too large".to_string())
}

/// Whether `id` matches `pattern` (`*` any run of characters, `?` one character).
fn glob_match(pattern: &str, id: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), id.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

impl Policy {
    /// The policy for a gateway config: its policy file if it names one, else the built-in default.
    pub fn for_config(cfg: &GatewayConfig) -> Result<Policy, PolicyError> {
        match &cfg.policy.file {
            Some(path) => Policy::load(path, cfg),
            None => Ok(Policy { default: builtin(cfg), rules: Vec::new(), source: None }),
        }
    }

    /// Reads and checks a policy file; unset defaults come from `cfg`.
    pub fn load(path: &Path, cfg: &GatewayConfig) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read { path: path.into(), source })?;
        Policy::parse(&text, path, cfg)
    }

    /// Parses policy text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path, cfg: &GatewayConfig) -> Result<Policy, PolicyError> {
        let file: FileToml =
            toml::from_str(text).map_err(|e| PolicyError::Parse { path: path.into(), message: e.to_string() })?;
        let ctx = Ctx { text, path };
        let default = ctx.settings(file.default.unwrap_or_default(), &builtin(cfg))?;
        let mut rules = Vec::new();
        for d in file.device {
            let line = ctx.line(d.pattern.span().start);
            let pattern = d.pattern.into_inner();
            let valid = !pattern.is_empty()
                && pattern.len() <= 64
                && pattern.chars().all(|c| c == '*' || c == '?' || c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !valid {
                return Err(ctx.invalid(
                    line,
                    "match",
                    &pattern,
                    "must be a device id or a glob of letters, digits, '-', '_', '.', '*' and '?' (1-64 characters)",
                ));
            }
            let settings = SettingsToml {
                root: d.root,
                allow: d.allow,
                max_file_size: d.max_file_size,
                max_transfers: d.max_transfers,
                quota: d.quota,
                rate: d.rate,
            };
            let template = ctx.settings(settings, &default)?;
            rules.push(Rule { pattern, line, template });
        }
        Ok(Policy { default, rules, source: Some(path.to_path_buf()) })
    }

    /// What `device` may do.
    pub fn access(&self, device: &DeviceId) -> Access {
        let (t, rule) = match self.rules.iter().find(|r| glob_match(&r.pattern, device.as_str())) {
            Some(r) => (&r.template, format!("{} line {} (match {:?})", self.source_name(), r.line, r.pattern)),
            None if self.source.is_some() => (&self.default, format!("{} [default]", self.source_name())),
            None => (&self.default, "the default policy".to_string()),
        };
        Access {
            root: t.root.replace(DEVICE_PLACEHOLDER, device.as_str()),
            allow: t.allow,
            max_file_size: t.max_file_size,
            max_transfers: t.max_transfers,
            quota: t.quota,
            rate: t.rate,
            rule,
        }
    }

    /// The number of `[[device]]` rules.
    pub fn rules(&self) -> usize {
        self.rules.len()
    }

    /// The directories that hold device roots (the part of each root before `{device}`, or the whole root), for
    /// the sweep of abandoned temporary files.
    pub fn root_dirs(&self) -> Vec<String> {
        let mut dirs: Vec<String> = std::iter::once(&self.default)
            .chain(self.rules.iter().map(|r| &r.template))
            .map(|t| crate::config::roots_dir_of(&t.root).to_string())
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    fn source_name(&self) -> String {
        match &self.source {
            Some(p) => {
                p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
            }
            None => "the default policy".into(),
        }
    }
}

/// The built-in default from gateway.toml.
fn builtin(cfg: &GatewayConfig) -> Template {
    Template {
        root: cfg.store.device_root.clone(),
        allow: Ops::all(),
        max_file_size: cfg.transfer.max_file_size,
        max_transfers: cfg.transfer.max_transfers_per_device,
        quota: None,
        rate: None,
    }
}

struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Ctx<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text.get(..offset).map(|t| t.matches('\n').count() + 1).unwrap_or(0)
    }

    fn invalid(&self, line: usize, key: &'static str, value: &str, reason: &str) -> PolicyError {
        PolicyError::Invalid { path: self.path.into(), line, key, value: value.to_string(), reason: reason.into() }
    }

    fn size(&self, key: &'static str, v: Spanned<Size>) -> Result<u64, PolicyError> {
        let line = self.line(v.span().start);
        match v.into_inner() {
            Size::Bytes(n) => {
                u64::try_from(n).map_err(|_| self.invalid(line, key, &n.to_string(), "must not be negative"))
            }
            Size::Text(t) => parse_size(&t).map_err(|reason| self.invalid(line, key, &t, &reason)),
        }
    }

    fn settings(&self, s: SettingsToml, base: &Template) -> Result<Template, PolicyError> {
        let mut t = base.clone();
        if let Some(root) = s.root {
            let line = self.line(root.span().start);
            let root = root.into_inner();
            if root.is_empty() {
                return Err(self.invalid(line, "root", &root, "must not be empty"));
            }
            if root.split('/').any(|n| n == "..") {
                return Err(self.invalid(line, "root", &root, "must not contain '..'"));
            }
            if root.chars().any(char::is_control) {
                return Err(self.invalid(line, "root", &root, "must not contain control characters"));
            }
            if root.matches(DEVICE_PLACEHOLDER).count() > 1 {
                return Err(self.invalid(line, "root", &root, "may contain {device} at most once"));
            }
            t.root = root;
        }
        if let Some(allow) = s.allow {
            let mut ops = 0u8;
            for name in allow.into_inner() {
                let line = self.line(name.span().start);
                let name = name.into_inner();
                match Op::parse(&name) {
                    Some(op) => ops |= op.bit(),
                    None => {
                        return Err(self.invalid(
                            line,
                            "allow",
                            &name,
                            "unknown operation (use get, put, ls, rm, mv, mkdir)",
                        ))
                    }
                }
            }
            t.allow = Ops(ops);
        }
        if let Some(v) = s.max_file_size {
            t.max_file_size = self.size("max_file_size", v)?;
        }
        if let Some(v) = s.max_transfers {
            let line = self.line(v.span().start);
            let n = v.into_inner();
            t.max_transfers = match usize::try_from(n) {
                Ok(n) if (1..=1024).contains(&n) => n,
                _ => return Err(self.invalid(line, "max_transfers", &n.to_string(), "must be between 1 and 1024")),
            };
        }
        if let Some(v) = s.quota {
            t.quota = Some(self.size("quota", v)?);
        }
        if let Some(v) = s.rate {
            let line = self.line(v.span().start);
            let rate = self.size("rate", v)?;
            if rate < 1024 {
                return Err(self.invalid(line, "rate", &rate.to_string(), "must be at least 1 KiB per second"));
            }
            t.rate = Some(rate);
        }
        Ok(t)
    }
}

/// The policy in force, swapped whole on reload.
pub(crate) struct PolicyCell(std::sync::RwLock<Arc<Policy>>);

impl PolicyCell {
    pub(crate) fn new(p: Policy) -> Self {
        PolicyCell(std::sync::RwLock::new(Arc::new(p)))
    }
    pub(crate) fn get(&self) -> Arc<Policy> {
        match self.0.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
    pub(crate) fn set(&self, p: Policy) {
        match self.0.write() {
            Ok(mut g) => *g = Arc::new(p),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(p),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg() -> GatewayConfig {
        let text = r#"
[broker]
host = "localhost"
port = 8883
ca = "/ca.crt"
cert = "/g.crt"
key = "/g.key"
[sftp]
host = "localhost"
user = "u"
key = "/k"
known_hosts = "/kh"
[store]
device_root = "devices/{device}"
"#;
        toml::from_str(text).unwrap()
    }

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse(text, Path::new("/etc/mqsftp/policy.toml"), &cfg())
    }

    fn id(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    #[test]
    fn no_file_gives_the_builtin_default() {
        let p = Policy::for_config(&cfg()).unwrap();
        let a = p.access(&id("d1"));
        assert_eq!(a.root, "devices/d1");
        assert_eq!(a.allow, Ops::all());
        assert_eq!(a.max_transfers, 4);
        assert_eq!(a.max_file_size, 16 << 30);
        assert_eq!((a.quota, a.rate), (None, None));
        assert_eq!(p.root_dirs(), vec!["devices".to_string()]);
    }

    #[test]
    fn first_matching_rule_wins_and_inherits_the_default() {
        let p = parse(
            r#"
[default]
max_file_size = "1 MiB"
quota = 5000

[[device]]
match = "sensor-7"
allow = ["get"]

[[device]]
match = "sensor-*"
allow = ["get", "ls"]
root = "firmware"
rate = "2 MiB"
"#,
        )
        .unwrap();
        let a = p.access(&id("sensor-7"));
        assert!(a.allow.contains(Op::Get) && !a.allow.contains(Op::Ls));
        assert_eq!(a.root, "devices/sensor-7");
        assert_eq!(a.max_file_size, 1 << 20);
        assert!(a.rule.contains("policy.toml line 7"), "{}", a.rule);
        let b = p.access(&id("sensor-8"));
        assert_eq!(b.root, "firmware");
        assert_eq!(b.rate, Some(2 << 20));
        assert_eq!(b.quota, Some(5000));
        assert!(b.check(&id("sensor-8"), Op::Put).unwrap_err().contains("operation put is not allowed"));
        let c = p.access(&id("camera"));
        assert_eq!(c.allow, Ops::all());
        assert!(c.rule.contains("[default]"));
        assert_eq!(p.root_dirs(), vec!["devices".to_string(), "firmware".to_string()]);
    }

    #[test]
    fn errors_name_the_line_and_reason() {
        let e = parse("[[device]]\nmatch = \"a\"\nallow = [\"get\", \"chmod\"]\n").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("chmod") && e.contains("unknown operation"), "{e}");
        let e = parse("[[device]]\nmatch = \"a/b\"\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("match = a/b"), "{e}");
        let e = parse("[default]\nroot = \"../x/{device}\"\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains(".."), "{e}");
        let e = parse("[default]\nmax_file_size = \"12 parsecs\"\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("unknown unit"), "{e}");
        let e = parse("[default]\nmax_transfers = 0\n").unwrap_err().to_string();
        assert!(e.contains("max_transfers = 0"), "{e}");
        let e = parse("[default]\nquota = -5\n").unwrap_err().to_string();
        assert!(e.contains("must not be negative"), "{e}");
        let e = parse("[default]\nbogus = 1\n").unwrap_err().to_string();
        assert!(e.contains("bogus") && e.contains("line 2"), "{e}");
        let e = parse("[[device]]\nallow = []\n").unwrap_err().to_string();
        assert!(e.contains("match"), "{e}");
        let e = parse("[default\n").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("10 KiB").unwrap(), 10240);
        assert_eq!(parse_size("3MB").unwrap(), 3_000_000);
        assert!(parse_size("").is_err());
        assert!(parse_size("1.5 GiB").is_err());
        assert!(parse_size("99999999999999 TiB").is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("s?n*-1", "sensor-1"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b", "a"));
        assert!(!glob_match("d1", "d10"));
        assert!(glob_match("d1*", "d1"));
    }
}
