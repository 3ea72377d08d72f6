//! Choosing tensors by name with glob patterns (`model.layers.*.mlp.*`, `*.weight`,
//! `lm_head.?eight`, `layers.[0-3].*`), the same way in the CLI, the C API and the
//! bindings.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

/// A set of glob patterns; a name is chosen when it matches any of them. `*` and `?`
/// match any characters, dots included; `[...]` a class; `{a,b}` alternatives; `\`
/// escapes. Matching is case-sensitive and covers the whole name.
#[derive(Clone, Debug)]
pub struct NameFilter {
    set: GlobSet,
    patterns: usize,
}

impl NameFilter {
    /// The filter of `patterns`; a malformed pattern is `InvalidArgument` naming it.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<NameFilter> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let pattern = pattern.as_ref();
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
}
