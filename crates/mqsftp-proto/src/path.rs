//! Confining a device's path to its root.
//!
//! Devices name files relative to their own root. [`confine`] normalises such a path lexically (`.` and `a/..`
//! collapse) and refuses anything that could leave the root or confuse the store: absolute paths, `..` above the
//! root, NUL and control characters, over-long names. The gateway joins the result to the device's root; symlinks
//! on the server are the gateway's concern (it resolves them there).

/// Longest path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest single name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Why a device path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Empty path where a file is required.
    #[error("path is empty")]
    Empty,
    /// The path starts with `/`.
    #[error("absolute path {0:?} is outside the device root; paths are relative to the device root")]
    Absolute(String),
    /// A `..` climbs above the root.
    #[error("path {0:?} escapes the device root")]
    Escapes(String),
    /// A NUL or other control character.
    #[error("path {path:?} contains control character {ch:?}")]
    Control { path: String, ch: char },
    /// Longer than [`MAX_PATH_LEN`].
    #[error("path is {len} bytes long; the limit is {MAX_PATH_LEN}")]
    TooLong { len: usize },
    /// A name longer than [`MAX_NAME_LEN`].
    #[error("name {name:?} is {len} bytes long; the limit is {MAX_NAME_LEN}")]
    NameTooLong { name: String, len: usize },
}

impl PathError {
    /// Whether the error means "you may not go there" (as opposed to "this is not a path").
    pub fn is_denial(&self) -> bool {
        matches!(self, PathError::Absolute(_) | PathError::Escapes(_))
    }
}

/// A normalised path inside a device root: names joined by `/`, no `.`/`..`, no leading or trailing `/`.
/// The empty path is the root itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelPath(String);

impl RelPath {
    /// The path as a string (`""` for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Whether this is the root itself.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
    /// The last name, if any.
    pub fn file_name(&self) -> Option<&str> {
        self.0.rsplit('/').next().filter(|s| !s.is_empty())
    }
}

/// Normalises `path` into a [`RelPath`] or says why it is refused. The root itself (`""`, `.`) is allowed here;
/// callers that need a file check [`RelPath::is_root`].
pub fn confine(path: &str) -> Result<RelPath, PathError> {
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong { len: path.len() });
    }
    if let Some(ch) = path.chars().find(|c| c.is_control()) {
        return Err(PathError::Control { path: path.to_string(), ch });
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute(path.to_string()));
    }
    let mut names: Vec<&str> = Vec::new();
    for name in path.split('/') {
        match name {
            "" | "." => {}
            ".." => {
                if names.pop().is_none() {
                    return Err(PathError::Escapes(path.to_string()));
                }
            }
            _ if name.len() > MAX_NAME_LEN => {
                return Err(PathError::NameTooLong { name: name.to_string(), len: name.len() })
            }
            _ => names.push(name),
        }
    }
    Ok(RelPath(names.join("/")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalises() {
        for (input, want) in [
            ("a.txt", "a.txt"),
            ("./a/./b", "a/b"),
            ("a//b/", "a/b"),
            ("a/../b", "b"),
            ("", ""),
            (".", ""),
            ("a/..", ""),
            ("dir with space/日本語 😀 %41", "dir with space/日本語 😀 %41"),
        ] {
            assert_eq!(confine(input).unwrap().as_str(), want, "{input}");
        }
    }

    #[test]
    fn refuses_escapes_and_junk() {
        assert_eq!(confine("/etc/passwd"), Err(PathError::Absolute("/etc/passwd".into())));
        assert_eq!(confine("../x"), Err(PathError::Escapes("../x".into())));
        assert_eq!(confine("a/../../x"), Err(PathError::Escapes("a/../../x".into())));
        assert!(matches!(confine("a\0b"), Err(PathError::Control { ch: '\0', .. })));
        assert!(matches!(confine("a\nb"), Err(PathError::Control { ch: '\n', .. })));
        assert!(matches!(confine(&"a".repeat(256)), Err(PathError::NameTooLong { len: 256, .. })));
        assert!(confine(&"a".repeat(255)).is_ok());
        assert!(matches!(confine(&"a/".repeat(3000)), Err(PathError::TooLong { .. })));
        assert!(confine("/x").unwrap_err().is_denial());
    }

    proptest! {
        #[test]
        fn confined_paths_never_escape(s in "[a./]{0,40}") {
            if let Ok(p) = confine(&s) {
                prop_assert!(!p.as_str().starts_with('/'));
                prop_assert!(p.as_str().split('/').all(|n| n != ".." && n != "."));
                // Normalising twice changes nothing.
                prop_assert_eq!(confine(p.as_str()).unwrap(), p);
            }
        }
    }
}
