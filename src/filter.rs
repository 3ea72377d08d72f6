//! Choosing tensors by name with glob patterns (`model.layers.*.mlp.*`, `*.weight`,
//! `lm_head.?eight`, `layers.[0-3].*`), the same way in the CLI, the C API and the
//! bindings.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

/// The longest pattern accepted, in bytes. Matching a name costs up to the pattern's
/// length times the name's (the automaton falls back to simulating every state at once):
/// a hostile 65,000-byte name against a 60 KB pattern took a minute, against a pattern of
/// this length it takes milliseconds.
pub const MAX_PATTERN_BYTES: usize = 1024;
/// The most bytes of patterns with wildcards (`*?[{\`) in one filter, for the same reason
/// (plain names, matched by lookup, do not count).
pub const MAX_WILDCARD_BYTES: usize = 16 << 10;

/// A set of glob patterns; a name is chosen when it matches any of them. `*` and `?`
/// match any characters, dots included; `[...]` a class; `{a,b}` alternatives; `\`
/// escapes. Matching is case-sensitive and covers the whole name. A pattern is at most
/// [`MAX_PATTERN_BYTES`] long, and the patterns with wildcards [`MAX_WILDCARD_BYTES`] in
/// all, so that matching costs time linear in the name.
#[derive(Clone, Debug)]
pub struct NameFilter {
    set: GlobSet,
    patterns: usize,
}

impl NameFilter {
    /// The filter of `patterns`; a malformed pattern, or one past the length limits, is
    /// `InvalidArgument` naming it.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<NameFilter> {
        let mut builder = GlobSetBuilder::new();
        let mut wildcard_bytes = 0usize;
        for pattern in patterns {
            let pattern = pattern.as_ref();
            if pattern.len() > MAX_PATTERN_BYTES {
                return Err(Error::invalid(format!(
                    "tensor pattern '{}...' is {} bytes long, past the limit of {MAX_PATTERN_BYTES}",
                    pattern.chars().take(40).collect::<String>(),
                    pattern.len()
                )));
            }
            if pattern.contains(['*', '?', '[', '{', '\\']) {
                wildcard_bytes += pattern.len();
                if wildcard_bytes > MAX_WILDCARD_BYTES {
                    return Err(Error::invalid(format!(
                        "tensor patterns with wildcards are {wildcard_bytes}+ bytes in all, past \
                         the limit of {MAX_WILDCARD_BYTES} (list plain names instead, or fewer \
                         patterns)"
                    )));
                }
            }
            let glob = GlobBuilder::new(pattern)
                .literal_separator(false)
                .backslash_escape(true)
                .build()
                .map_err(|e| Error::invalid(format!("tensor pattern '{pattern}': {e}")))?;
            builder.add(glob);
        }
        let set = builder
            .build()
            .map_err(|e| Error::invalid(format!("tensor patterns: {e}")))?;
        Ok(NameFilter {
            set,
            patterns: patterns.len(),
        })
    }

    /// Whether `name` matches any pattern (always, for a filter of no patterns).
    pub fn matches(&self, name: &str) -> bool {
        self.patterns == 0 || self.set.is_match(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_names_across_dots() {
        let f = NameFilter::new(&["model.layers.*.mlp.*", "lm_head.?eight", "*.[0-1].x"]).unwrap();
        assert!(f.matches("model.layers.12.mlp.up_proj.weight"));
        assert!(f.matches("lm_head.weight"));
        assert!(f.matches("a.b.1.x"));
        assert!(!f.matches("model.layers.12.self_attn.q_proj.weight"));
        assert!(!f.matches("xlm_head.weight"));
        assert!(!f.matches("a.b.2.x"));
        assert!(NameFilter::new::<&str>(&[]).unwrap().matches("anything"));
        let e = NameFilter::new(&["a[b"]).unwrap_err();
        assert!(e.to_string().contains("'a[b'"), "{e}");
    }

    #[test]
    fn long_patterns_are_refused_so_that_matching_stays_linear_in_the_name() {
        // A hostile name (65,000 bytes, as a file may hold) against the longest accepted
        // pattern of the costliest shape: milliseconds in a release build (a 60 KB pattern
        // took a minute).
        let name = "a".repeat(65_000);
        let longest = "*a".repeat(MAX_PATTERN_BYTES / 2 - 1) + "b";
        let f = NameFilter::new(&[longest.as_str()]).unwrap();
        assert!(!f.matches(&name));
        let e = NameFilter::new(&[longest.clone() + "bb"]).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        assert!(e.to_string().contains("past the limit of 1024"), "{e}");
        let many = vec![longest; MAX_WILDCARD_BYTES / MAX_PATTERN_BYTES + 1];
        let e = NameFilter::new(&many).unwrap_err();
        assert!(e.to_string().contains("with wildcards"), "{e}");
        // Plain names do not count towards the wildcard limit.
        let names: Vec<String> = (0..2000)
            .map(|i| format!("model.layers.{i}.weight"))
            .collect();
        let f = NameFilter::new(&names).unwrap();
        assert!(f.matches("model.layers.1999.weight") && !f.matches("model.layers.2000.weight"));
    }
}
