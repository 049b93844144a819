//! Name globs for MCP rules: `tools = ["get_*", "search"]`, `resources = ["file:///reports/**"]`.
//!
//! - `*` matches any run of characters except `/`; `**` matches any run including `/`;
//!   `?` matches one character except `/`. Everything else is literal (no classes, no escapes:
//!   tool names are `[A-Za-z0-9_.-]` by the MCP spec, and URIs are matched as sent, unescaped by
//!   nothing: `%2F` is three literal characters, so `file:///reports/**` does not admit
//!   `file:///reports/..%2Fsecrets` as a path outside it — see `resource_paths_are_literal`).
//! - Case-sensitive, as MCP names are.
//!
//! Matching is the classic two-pointer wildcard walk with one backtrack point per star kind,
//! linear-ish in practice and bounded by `len(pattern) × len(name)` in the worst case; names
//! are at most `jsonrpc::MAX_NAME_LEN` bytes.
use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    src: String,
    tokens: Vec<Tok>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tok {
    Lit(char),
    /// `?`
    One,
    /// `*`
    Star,
    /// `**`
    Deep,
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.src)
    }
}

impl Glob {
    /// Compiles a pattern; refuses an empty one and `***`.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("an empty pattern matches nothing; remove it".into());
        }
        if pattern.contains("***") {
            return Err(format!("{pattern:?}: `***` is ambiguous; use `*` or `**`"));
        }
        let mut tokens = Vec::with_capacity(pattern.len());
        let mut it = pattern.chars().peekable();
        while let Some(c) = it.next() {
            tokens.push(match c {
                '*' if it.peek() == Some(&'*') => {
                    it.next();
                    Tok::Deep
                }
                '*' => Tok::Star,
                '?' => Tok::One,
                c => Tok::Lit(c),
            });
        }
        Ok(Glob {
            src: pattern.to_owned(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.src
    }

    /// Is the pattern a plain name (no wildcard)?
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Tok::Lit(_)))
    }

    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        matches_from(&self.tokens, &name)
    }
}

/// Recursive on `*`/`**` with memo-free backtracking; patterns are short (config-written) and
/// names bounded, and each star tries each split once per enclosing star.
fn matches_from(p: &[Tok], n: &[char]) -> bool {
    let (mut pi, mut ni) = (0, 0);
    // Backtrack point for the last star seen: (pattern index after it, name index, deep?).
    let mut back: Option<(usize, usize, bool)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(Tok::Lit(c)) if *c == n[ni] => {
                pi += 1;
                ni += 1;
                continue;
            }
            Some(Tok::One) if n[ni] != '/' => {
                pi += 1;
                ni += 1;
                continue;
            }
            Some(Tok::Star) => {
                back = Some((pi + 1, ni, false));
                pi += 1;
                continue;
            }
            Some(Tok::Deep) => {
                back = Some((pi + 1, ni, true));
                pi += 1;
                continue;
            }
            _ => {}
        }
        // Mismatch: let the last star swallow one more character, if it may.
        match back {
            Some((bp, bn, deep)) if bn < n.len() && (deep || n[bn] != '/') => {
                back = Some((bp, bn + 1, deep));
                pi = bp;
                ni = bn + 1;
            }
            Some((_, bn, false)) if bn < n.len() => {
                // A `*` cannot cross `/`; an outer `**` might still, so fall back to the slow
                // path for that rare shape.
                return slow(p, n);
            }
            _ => return false,
        }
    }
    p[pi..].iter().all(|t| matches!(t, Tok::Star | Tok::Deep))
}

/// Exhaustive matcher (exponential only in the number of stars, which is small in config).
fn slow(p: &[Tok], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some(Tok::Lit(c)) => n.first() == Some(c) && slow(&p[1..], &n[1..]),
        Some(Tok::One) => n.first().is_some_and(|c| *c != '/') && slow(&p[1..], &n[1..]),
        Some(Tok::Star) => {
            let stop = n.iter().position(|c| *c == '/').unwrap_or(n.len());
            (0..=stop).any(|k| slow(&p[1..], &n[k..]))
        }
        Some(Tok::Deep) => (0..=n.len()).any(|k| slow(&p[1..], &n[k..])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        // (pattern, name, matches)
        let table: &[(&str, &str, bool)] = &[
            ("get_*", "get_account", true),
            ("get_*", "get_", true),
            ("get_*", "delete_account", false),
            ("get_*", "xget_account", false),
            ("search", "search", true),
            ("search", "search2", false),
            ("search", "Search", false),
            ("*", "anything", true),
            ("*", "", true),
            ("*_account", "delete_account", true),
            ("*_account", "delete_accounts", false),
            ("get_?", "get_a", true),
            ("get_?", "get_ab", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("a*b*c", "abcbc", true),
            ("file:///reports/**", "file:///reports/q1.pdf", true),
            ("file:///reports/**", "file:///reports/2026/q1.pdf", true),
            ("file:///reports/**", "file:///reports", false),
            ("file:///reports/**", "file:///secrets/x", false),
            ("file:///reports/*", "file:///reports/2026/q1.pdf", false),
            ("file:///reports/*", "file:///reports/q1.pdf", true),
            ("file:///reports/*.pdf", "file:///reports/a/b.pdf", false),
            ("file:///**/q1.pdf", "file:///reports/2026/q1.pdf", true),
            ("**/*.pdf", "file:///a/b/c.pdf", true),
            ("**/*.pdf", "file:///a/b/c.pdf/x", false),
            ("a/*/c/**", "a/b/c/d/e", true),
            ("a/*/c/**", "a/b/x/c/d", false),
            ("a*/c", "ab/x/c", false),
            ("db://**", "db://tables/users", true),
        ];
        for (pat, name, want) in table {
            let g = Glob::new(pat).unwrap();
            assert_eq!(g.matches(name), *want, "{pat} ~ {name}");
            assert_eq!(
                slow(&g.tokens, &name.chars().collect::<Vec<_>>()),
                *want,
                "slow {pat} ~ {name}"
            );
        }
    }

    #[test]
    fn resource_paths_are_literal() {
        let g = Glob::new("file:///reports/**").unwrap();
        // Percent escapes and dot segments are characters like any other: the pattern's prefix
        // must match literally, so no spelling reaches outside `file:///reports/`.
        assert!(!g.matches("file:///reports%2F../secrets"));
        assert!(!g.matches("file:///Reports/x"));
        assert!(!g.matches("file:////reports/x"));
        // A dot segment inside is admitted as sent; servers that resolve `..` would leave the
        // tree, so the docs tell operators to deny `**/../**` (or the server must not resolve).
        assert!(g.matches("file:///reports/../secrets"));
        let dots = Glob::new("**/../**").unwrap();
        assert!(dots.matches("file:///reports/../secrets"));
    }

    #[test]
    fn refused_patterns() {
        assert!(Glob::new("").is_err());
        assert!(Glob::new("a***").is_err());
        assert!(!Glob::new("get_*").unwrap().is_literal());
        assert!(Glob::new("search").unwrap().is_literal());
    }

    proptest::proptest! {
        /// The fast matcher agrees with the exhaustive one.
        #[test]
        fn fast_agrees_with_slow(pat in "[ab/*?]{1,8}", name in "[ab/]{0,10}") {
            if let Ok(g) = Glob::new(&pat) {
                let n: Vec<char> = name.chars().collect();
                proptest::prop_assert_eq!(g.matches(&name), slow(&g.tokens, &n), "{} ~ {}", pat, name);
            }
        }
    }
}
