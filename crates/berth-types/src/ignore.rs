//! `.dockerignore`: which paths of a build context are left out. Each line is a pattern
//! in Go's `filepath.Match` syntax (`*`, `?`, `[a-z]`, `[^x]`, `\` escapes) plus `**`
//! for any number of directories; a leading `!` makes it an exception; `#` starts a
//! comment; the last pattern that matches decides. A pattern that matches a directory
//! leaves out everything below it, as Docker does.

/// One pattern of a `.dockerignore`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    segments: Vec<String>,
    exception: bool,
}

/// The patterns of a `.dockerignore` file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ignore {
    patterns: Vec<Pattern>,
}

impl Ignore {
    pub fn parse(text: &str) -> Ignore {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pat) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let segments = clean(pat);
            if segments.is_empty() {
                continue;
            }
            patterns.push(Pattern {
                segments,
                exception,
            });
        }
        Ignore { patterns }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether the context path `path` (relative, `/`-separated) is left out.
    pub fn excludes(&self, path: &str) -> bool {
        let parts = clean(path);
        if parts.is_empty() {
            return false;
        }
        let mut out = false;
        for p in &self.patterns {
            // The path itself, or a directory above it.
            let hit = (1..=parts.len()).any(|n| matches(&p.segments, &parts[..n]));
            if hit {
                out = !p.exception;
            }
        }
        out
    }

    /// Whether a directory must still be walked although it is excluded: an exception
    /// may name something below it.
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }
}

/// A path as `filepath.Clean` leaves it, split: no empty or `.` parts, `..` applied, no
/// leading `/`.
fn clean(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p.to_string()),
        }
    }
    out
}

/// `pattern` (segments, `**` for any number of them) against the whole of `path`.
fn matches(pattern: &[String], path: &[String]) -> bool {
    match pattern.first() {
        None => path.is_empty(),
        Some(p) if p == "**" => (0..=path.len()).any(|skip| matches(&pattern[1..], &path[skip..])),
        Some(p) => {
            !path.is_empty()
                && segment(p.as_bytes(), path[0].as_bytes())
                && matches(&pattern[1..], &path[1..])
        }
    }
}

/// One segment in `filepath.Match` syntax.
fn segment(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => segment(&p[1..], s) || (!s.is_empty() && segment(p, &s[1..])),
        Some(b'?') => !s.is_empty() && segment(&p[1..], &s[1..]),
        Some(b'[') => {
            let Some(&c) = s.first() else { return false };
            let Some(end) = p.iter().skip(1).position(|&b| b == b']').map(|i| i + 1) else {
                return false;
            };
            let class = &p[1..end];
            let (negate, class) = match class.first() {
                Some(b'^') | Some(b'!') => (true, &class[1..]),
                _ => (false, class),
            };
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    hit |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit != negate && segment(&p[end + 1..], &s[1..])
        }
        Some(b'\\') if p.len() > 1 => s.first() == Some(&p[1]) && segment(&p[2..], &s[1..]),
        Some(&b) => s.first() == Some(&b) && segment(&p[1..], &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_patterns_and_exceptions() {
        let i = Ignore::parse(
            "# comment\n\n*.log\n!keep.log\nnode_modules\n**/*.tmp\n/build/\ndocs/[a-c]*.md\n.git\n",
        );
        for (path, out) in [
            ("app.log", true),
            ("keep.log", false),
            ("sub/app.log", false), // `*.log` is one segment at the root
            ("node_modules", true),
            ("node_modules/x/y.js", true),
            ("a/b/c.tmp", true),
            ("c.tmp", true),
            ("build/out.o", true),
            ("buildx/out.o", false),
            ("docs/api.md", true),
            ("docs/zeta.md", false),
            (".git/HEAD", true),
            ("src/main.rs", false),
            ("./app.log", true),
        ] {
            assert_eq!(i.excludes(path), out, "{path}");
        }
        assert!(i.has_exceptions());
        let j = Ignore::parse("*\n!src\n!src/**\nsrc/secret\n");
        assert!(j.excludes("README.md"));
        assert!(!j.excludes("src/lib.rs"));
        assert!(j.excludes("src/secret"));
        assert!(!Ignore::parse("").excludes("x"));
        assert!(Ignore::parse("\\*x").excludes("*x"));
        assert!(!Ignore::parse("\\*x").excludes("ax"));
        assert!(Ignore::parse("[^a]b").excludes("cb"));
        assert!(!Ignore::parse("[^a]b").excludes("ab"));
    }
}
