//! The Dockerfile language: parser directives, line continuations with the escape
//! character, comments, heredocs, every instruction with its flags, exec and shell
//! forms, and the stage structure (global ARGs, `FROM ... AS name`). Errors name the
//! line and column and say what was expected.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Dockerfile:{}:{}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ParseError {}

/// A command as written: exec form (a JSON array) or shell form (a string the shell
/// runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Exec(Vec<String>),
    Shell(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    pub name: String,
    pub content: String,
    /// `<<"EOF"` or `<<'EOF'`: no variable expansion in the body.
    pub quoted: bool,
    /// `<<-EOF`: leading tabs removed.
    pub strip_tabs: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    From {
        image: String,
        alias: Option<String>,
        platform: Option<String>,
    },
    Run {
        command: Command,
        flags: BTreeMap<String, Vec<String>>,
        heredocs: Vec<Heredoc>,
    },
    Cmd(Command),
    Entrypoint(Command),
    Shell(Vec<String>),
    Copy {
        sources: Vec<String>,
        dest: String,
        flags: BTreeMap<String, Vec<String>>,
        heredocs: Vec<Heredoc>,
        add: bool,
    },
    Env(Vec<(String, String)>),
    Arg(Vec<(String, Option<String>)>),
    Label(Vec<(String, String)>),
    Expose(Vec<String>),
    Volume(Vec<String>),
    User(String),
    Workdir(String),
    StopSignal(String),
    Healthcheck {
        command: Option<Command>,
        flags: BTreeMap<String, Vec<String>>,
    },
    Onbuild(String),
    Maintainer(String),
}

/// One instruction with where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub line: usize,
    /// The keyword, upper case.
    pub keyword: String,
    /// The instruction's text after the keyword, continuations joined.
    pub original: String,
    pub instruction: Instruction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub name: Option<String>,
    pub base: String,
    pub platform: Option<String>,
    pub line: usize,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dockerfile {
    pub escape: char,
    pub syntax: Option<String>,
    pub check: Option<String>,
    /// ARGs before the first FROM: they may be used in FROM lines.
    pub global_args: Vec<(String, Option<String>)>,
    pub stages: Vec<Stage>,
}

impl Dockerfile {
    /// A stage by name or index, as `--target` and `COPY --from` name them.
    pub fn stage(&self, key: &str) -> Option<usize> {
        self.stages
            .iter()
            .position(|s| {
                s.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(key))
            })
            .or_else(|| key.parse::<usize>().ok().filter(|&i| i < self.stages.len()))
    }
}

fn err(line: usize, column: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        line,
        column,
        message: message.into(),
    }
}

/// Directives are comments of the form `# key=value` at the very top.
fn directives(lines: &[&str]) -> (BTreeMap<String, String>, usize) {
    let mut out = BTreeMap::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim();
        let Some(rest) = l.strip_prefix('#') else {
            break;
        };
        let Some((k, v)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().to_ascii_lowercase();
        if k.is_empty() || k.contains(char::is_whitespace) || out.contains_key(&k) {
            break;
        }
        out.insert(k, v.trim().to_string());
        i += 1;
    }
    (out, i)
}

/// Splits `--name=value` flags off the front of `rest`.
fn take_flags(rest: &str) -> (BTreeMap<String, Vec<String>>, &str) {
    let mut flags: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut r = rest.trim_start();
    while let Some(f) = r.strip_prefix("--") {
        let end = f.find(char::is_whitespace).unwrap_or(f.len());
        let word = &f[..end];
        let (k, v) = word.split_once('=').unwrap_or((word, ""));
        flags
            .entry(k.to_ascii_lowercase())
            .or_default()
            .push(v.to_string());
        r = f[end..].trim_start();
    }
    (flags, r)
}

/// A JSON array of strings, if `s` is one.
fn json_array(s: &str) -> Option<Vec<String>> {
    let t = s.trim();
    if !t.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(t).ok()
}

fn command(s: &str) -> Command {
    match json_array(s) {
        Some(v) => Command::Exec(v),
        None => Command::Shell(s.trim().to_string()),
    }
}

/// Words as Dockerfile instructions split them: on whitespace, with quotes grouping and
/// the escape character escaping.
fn words(s: &str, escape: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) if c == escape => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c == escape => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    in_word = true;
                }
            }
            None if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            None => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// `key=value` pairs (ENV, LABEL), or the legacy `ENV key value`.
fn pairs(
    s: &str,
    escape: char,
    legacy: bool,
    line: usize,
    what: &str,
) -> Result<Vec<(String, String)>, ParseError> {
    let w = words(s, escape);
    if w.is_empty() {
        return Err(err(
            line,
            1,
            format!("{what} requires at least one argument"),
        ));
    }
    if !w[0].contains('=') {
        if legacy {
            // `ENV key value with spaces`
            let t = s.trim();
            let (k, v) = t.split_once(char::is_whitespace).unwrap_or((t, ""));
            return Ok(vec![(k.to_string(), v.trim().to_string())]);
        }
        return Err(err(
            line,
            1,
            format!("{what} expects key=value pairs, got {:?}", w[0]),
        ));
    }
    w.into_iter()
        .map(|x| match x.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(err(
                line,
                1,
                format!("{what} expects key=value pairs, got {x:?}"),
            )),
        })
        .collect()
}

/// `<<EOF`, `<<-EOF`, `<<"EOF"` markers in an instruction line.
fn heredoc_markers(s: &str) -> Vec<(String, bool, bool)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("<<") {
        let mut t = &rest[i + 2..];
        let strip = t.starts_with('-');
        if strip {
            t = &t[1..];
        }
        let quoted = t.starts_with('"') || t.starts_with('\'');
        let t2 = t.trim_start_matches(['"', '\'']);
        let name: String = t2
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push((name.clone(), quoted, strip));
        }
        rest = &t2[name.len()..];
    }
    out
}

/// Parses a whole Dockerfile.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let lines: Vec<&str> = text.lines().collect();
    let (dirs, first) = directives(&lines);
    let escape = match dirs.get("escape").map(String::as_str) {
        None | Some("\\") => '\\',
        Some("`") => '`',
        Some(other) => {
            return Err(err(
                1,
                1,
                format!("invalid escape token {other:?}: only \\ and ` are allowed"),
            ));
        }
    };
    let mut df = Dockerfile {
        escape,
        syntax: dirs.get("syntax").cloned(),
        check: dirs.get("check").cloned(),
        ..Dockerfile::default()
    };
    let mut i = first;
    while i < lines.len() {
        let start = i + 1;
        let raw = lines[i];
        i += 1;
        let t = raw.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        // Join continuation lines (comments and blank lines inside are skipped).
        let mut logical = String::new();
        let mut cur = raw.trim_end().to_string();
        loop {
            if let Some(stripped) = cur.strip_suffix(escape) {
                logical.push_str(stripped);
                // The next line that is not a comment continues it.
                let mut next = None;
                while i < lines.len() {
                    let l = lines[i];
                    i += 1;
                    if l.trim_start().starts_with('#') {
                        continue;
                    }
                    if l.trim().is_empty() {
                        continue;
                    }
                    next = Some(l.trim_end().to_string());
                    break;
                }
                match next {
                    Some(n) => cur = n,
                    None => break,
                }
            } else {
                logical.push_str(&cur);
                break;
            }
        }
        let logical = logical.trim().to_string();
        let (kw, rest) = match logical.find(char::is_whitespace) {
            Some(p) => (&logical[..p], logical[p..].trim_start()),
            None => (logical.as_str(), ""),
        };
        let keyword = kw.to_ascii_uppercase();
        // Heredoc bodies follow the instruction line.
        let mut heredocs = Vec::new();
        if matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") {
            for (name, quoted, strip) in heredoc_markers(rest) {
                let mut content = String::new();
                let mut closed = false;
                while i < lines.len() {
                    let l = lines[i];
                    i += 1;
                    let check = if strip { l.trim_start_matches('\t') } else { l };
                    if check == name {
                        closed = true;
                        break;
                    }
                    content.push_str(check);
                    content.push('\n');
                }
                if !closed {
                    return Err(err(
                        start,
                        1,
                        format!("unterminated heredoc: no line {name:?} after it"),
                    ));
                }
                heredocs.push(Heredoc {
                    name,
                    content,
                    quoted,
                    strip_tabs: strip,
                });
            }
        }
        let instruction = instruction(&keyword, rest, escape, start, heredocs)?;
        let step = Step {
            line: start,
            keyword: keyword.clone(),
            original: rest.to_string(),
            instruction,
        };
        match &step.instruction {
            Instruction::From {
                image,
                alias,
                platform,
            } => {
                if let Some(a) = alias {
                    if df.stage(a).is_some()
                        && df.stages.iter().any(|s| s.name.as_deref() == Some(a))
                    {
                        return Err(err(start, 1, format!("duplicate stage name {a:?}")));
                    }
                }
                df.stages.push(Stage {
                    name: alias.clone(),
                    base: image.clone(),
                    platform: platform.clone(),
                    line: start,
                    steps: Vec::new(),
                });
            }
            Instruction::Arg(args) if df.stages.is_empty() => df.global_args.extend(args.clone()),
            _ => match df.stages.last_mut() {
                Some(s) => s.steps.push(step),
                None => {
                    return Err(err(
                        start,
                        1,
                        format!("{keyword} before the first FROM: only ARG may come before FROM"),
                    ))
                }
            },
        }
    }
    if df.stages.is_empty() {
        return Err(err(
            lines.len().max(1),
            1,
            "the Dockerfile has no FROM instruction",
        ));
    }
    Ok(df)
}

fn instruction(
    keyword: &str,
    rest: &str,
    escape: char,
    line: usize,
    heredocs: Vec<Heredoc>,
) -> Result<Instruction, ParseError> {
    let need = |what: &str| -> Result<(), ParseError> {
        if rest.trim().is_empty() {
            Err(err(
                line,
                keyword.len() + 1,
                format!("{keyword} requires {what}"),
            ))
        } else {
            Ok(())
        }
    };
    Ok(match keyword {
        "FROM" => {
            let (flags, r) = take_flags(rest);
            let w = words(r, escape);
            let (image, alias) = match w.as_slice() {
                [img] => (img.clone(), None),
                [img, as_, name] if as_.eq_ignore_ascii_case("as") => {
                    (img.clone(), Some(name.to_ascii_lowercase()))
                }
                [] => return Err(err(line, 5, "FROM requires an image (or scratch)")),
                _ => {
                    return Err(err(
                        line,
                        5,
                        "FROM expects: FROM [--platform=<platform>] <image> [AS <name>]",
                    ))
                }
            };
            if let Some(a) = &alias {
                let ok = a.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                    && a.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
                if !ok {
                    return Err(err(line, 5, format!("invalid stage name {a:?}: use letters, digits, '_', '.', '-', starting with a letter")));
                }
            }
            Instruction::From {
                image,
                alias,
                platform: flags.get("platform").and_then(|v| v.first().cloned()),
            }
        }
        "RUN" => {
            need("a command")?;
            let (flags, r) = take_flags(rest);
            Instruction::Run {
                command: command(r),
                flags,
                heredocs,
            }
        }
        "CMD" => {
            need("a command")?;
            Instruction::Cmd(command(rest))
        }
        "ENTRYPOINT" => {
            need("a command")?;
            Instruction::Entrypoint(command(rest))
        }
        "SHELL" => match json_array(rest) {
            Some(v) if !v.is_empty() => Instruction::Shell(v),
            _ => {
                return Err(err(
                    line,
                    7,
                    "SHELL requires the exec form: SHELL [\"executable\", \"parameters\"]",
                ))
            }
        },
        "COPY" | "ADD" => {
            let (flags, r) = take_flags(rest);
            let mut list = match json_array(r) {
                Some(v) => v,
                None => words(r, escape),
            };
            // Heredoc sources are named by their marker (`<<EOF`).
            let min = if heredocs.is_empty() { 2 } else { 1 };
            if list.len() < min {
                return Err(err(
                    line,
                    keyword.len() + 1,
                    format!(
                        "{keyword} requires at least two arguments: a source and a destination"
                    ),
                ));
            }
            let dest = list.pop().unwrap_or_default();
            Instruction::Copy {
                sources: list,
                dest,
                flags,
                heredocs,
                add: keyword == "ADD",
            }
        }
        "ENV" => Instruction::Env(pairs(rest, escape, true, line, "ENV")?),
        "LABEL" => Instruction::Label(pairs(rest, escape, false, line, "LABEL")?),
        "ARG" => {
            need("a name")?;
            let w = words(rest, escape);
            Instruction::Arg(
                w.into_iter()
                    .map(|x| match x.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (x, None),
                    })
                    .collect(),
            )
        }
        "EXPOSE" => {
            need("at least one port")?;
            Instruction::Expose(words(rest, escape))
        }
        "VOLUME" => {
            need("at least one path")?;
            Instruction::Volume(json_array(rest).unwrap_or_else(|| words(rest, escape)))
        }
        "USER" => {
            need("a user")?;
            Instruction::User(rest.trim().to_string())
        }
        "WORKDIR" => {
            need("a path")?;
            Instruction::Workdir(rest.trim().to_string())
        }
        "STOPSIGNAL" => {
            need("a signal")?;
            Instruction::StopSignal(rest.trim().to_string())
        }
        "HEALTHCHECK" => {
            let (flags, r) = take_flags(rest);
            let w = r.trim();
            if w.eq_ignore_ascii_case("NONE") {
                Instruction::Healthcheck {
                    command: None,
                    flags,
                }
            } else if w.get(..3).is_some_and(|h| h.eq_ignore_ascii_case("CMD")) {
                let cmd = w[3..].trim();
                if cmd.is_empty() {
                    return Err(err(line, 13, "HEALTHCHECK CMD requires a command"));
                }
                Instruction::Healthcheck {
                    command: Some(command(cmd)),
                    flags,
                }
            } else {
                return Err(err(line, 13, "HEALTHCHECK expects CMD <command> or NONE"));
            }
        }
        "ONBUILD" => {
            need("an instruction")?;
            let inner = rest
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            if matches!(inner.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
                return Err(err(
                    line,
                    9,
                    format!("{inner} isn't allowed as an ONBUILD trigger"),
                ));
            }
            Instruction::Onbuild(rest.trim().to_string())
        }
        "MAINTAINER" => {
            need("a name")?;
            Instruction::Maintainer(rest.trim().to_string())
        }
        other => return Err(err(line, 1, format!("unknown instruction: {other}"))),
    })
}

/// Expands `$VAR`, `${VAR}` and the modifiers `:-`, `-`, `:+`, `+`, `:?`, `?`, `#`, `##`,
/// `%`, `%%`, `/`, `//` in `word` from `vars`; the escape character keeps a `$` literal.
pub fn expand(word: &str, vars: &BTreeMap<String, String>, escape: char) -> Result<String, String> {
    let chars: Vec<char> = word.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == escape && chars.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
            continue;
        }
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('{') => {
                let mut depth = 0;
                let mut j = i + 1;
                while j < chars.len() {
                    match chars[j] {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                if j >= chars.len() {
                    return Err(format!("missing '}}' in {word:?}"));
                }
                let inner: String = chars[i + 2..j].iter().collect();
                out.push_str(&modifier(&inner, vars, escape)?);
                i = j + 1;
            }
            Some(n) if n.is_ascii_alphabetic() || *n == '_' => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().collect();
                out.push_str(vars.get(&name).map(String::as_str).unwrap_or(""));
                i = j;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Shell-style wildcard match (`*`, `?`) of the whole of `s`: for substitution patterns
/// and COPY sources.
pub fn wildcard(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = s.chars().collect();
    glob(&p, &s)
}

fn glob(p: &[char], s: &[char]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some('*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some('?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

fn modifier(inner: &str, vars: &BTreeMap<String, String>, escape: char) -> Result<String, String> {
    let end = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let (name, rest) = inner.split_at(end);
    if name.is_empty() {
        return Err(format!("bad substitution: ${{{inner}}}"));
    }
    let val = vars.get(name);
    let set = val.is_some();
    let full = val.cloned().unwrap_or_default();
    let arg = |n: usize| expand(&rest[n..], vars, escape);
    let chars: Vec<char> = full.chars().collect();
    Ok(match rest {
        "" => full,
        r if r.starts_with(":-") => {
            if full.is_empty() {
                arg(2)?
            } else {
                full
            }
        }
        r if r.starts_with(":+") => {
            if full.is_empty() {
                String::new()
            } else {
                arg(2)?
            }
        }
        r if r.starts_with(":?") => {
            if full.is_empty() {
                return Err(format!("{name}: {}", arg(2)?));
            }
            full
        }
        r if r.starts_with('-') => {
            if set {
                full
            } else {
                arg(1)?
            }
        }
        r if r.starts_with('+') => {
            if set {
                arg(1)?
            } else {
                String::new()
            }
        }
        r if r.starts_with('?') => {
            if !set {
                return Err(format!("{name}: {}", arg(1)?));
            }
            full
        }
        r if r.starts_with("##") || r.starts_with('#') => {
            let longest = r.starts_with("##");
            let pat: Vec<char> = arg(if longest { 2 } else { 1 })?.chars().collect();
            let cut = (0..=chars.len())
                .filter(|&k| glob(&pat, &chars[..k]))
                .reduce(|a, b| if longest { a.max(b) } else { a.min(b) });
            match cut {
                Some(k) => chars[k..].iter().collect(),
                None => full,
            }
        }
        r if r.starts_with("%%") || r.starts_with('%') => {
            let longest = r.starts_with("%%");
            let pat: Vec<char> = arg(if longest { 2 } else { 1 })?.chars().collect();
            let cut = (0..=chars.len())
                .filter(|&k| glob(&pat, &chars[k..]))
                .reduce(|a, b| if longest { a.min(b) } else { a.max(b) });
            match cut {
                Some(k) => chars[..k].iter().collect(),
                None => full,
            }
        }
        r if r.starts_with('/') => {
            let all = r.starts_with("//");
            let body = &r[if all { 2 } else { 1 }..];
            let (pat, rep) = body.split_once('/').unwrap_or((body, ""));
            let pat = expand(pat, vars, escape)?;
            let rep = expand(rep, vars, escape)?;
            if pat.is_empty() {
                full
            } else if all {
                full.replace(&pat, &rep)
            } else {
                full.replacen(&pat, &rep, 1)
            }
        }
        _ => return Err(format!("bad substitution: ${{{inner}}}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(p: &[(&str, &str)]) -> BTreeMap<String, String> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn stages_instructions_and_forms() {
        let df = parse(
            "# syntax=docker/dockerfile:1\n# check=skip=all\nARG BASE=busybox\nFROM --platform=linux/amd64 ${BASE} AS build\nRUN echo hi \\\n  # a comment inside\n  && echo there\nRUN [\"/bin/sh\", \"-c\", \"true\"]\nENV A=1 B=\"two words\"\nENV LEGACY some value\nCOPY --chown=1:1 --from=x a b /dst/\nLABEL k=v \"q k\"=\"q v\"\nEXPOSE 80/tcp 53/udp\nHEALTHCHECK --interval=5s CMD wget -q localhost\nFROM scratch\nCOPY --from=build /out /\nCMD [\"/app\"]\n",
        )
        .unwrap();
        assert_eq!(df.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(df.check.as_deref(), Some("skip=all"));
        assert_eq!(
            df.global_args,
            vec![("BASE".into(), Some("busybox".into()))]
        );
        assert_eq!(df.stages.len(), 2);
        let s = &df.stages[0];
        assert_eq!(
            (s.name.as_deref(), s.base.as_str(), s.platform.as_deref()),
            (Some("build"), "${BASE}", Some("linux/amd64"))
        );
        assert_eq!(
            s.steps[0].instruction,
            Instruction::Run {
                command: Command::Shell("echo hi   && echo there".into()),
                flags: BTreeMap::new(),
                heredocs: vec![],
            }
        );
        assert!(
            matches!(&s.steps[1].instruction, Instruction::Run { command: Command::Exec(v), .. } if v.len() == 3)
        );
        assert_eq!(
            s.steps[2].instruction,
            Instruction::Env(vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into())
            ])
        );
        assert_eq!(
            s.steps[3].instruction,
            Instruction::Env(vec![("LEGACY".into(), "some value".into())])
        );
        match &s.steps[4].instruction {
            Instruction::Copy {
                sources,
                dest,
                flags,
                ..
            } => {
                assert_eq!(sources, &vec!["a".to_string(), "b".to_string()]);
                assert_eq!(dest, "/dst/");
                assert_eq!(flags["chown"], vec!["1:1"]);
                assert_eq!(flags["from"], vec!["x"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.steps[5].instruction,
            Instruction::Label(vec![("k".into(), "v".into()), ("q k".into(), "q v".into())])
        );
        assert!(
            matches!(&s.steps[7].instruction, Instruction::Healthcheck { command: Some(Command::Shell(c)), flags } if c == "wget -q localhost" && flags["interval"] == vec!["5s"])
        );
        assert_eq!(df.stage("build"), Some(0));
        assert_eq!(df.stage("1"), Some(1));
        assert_eq!(s.steps[0].line, 5);
    }

    #[test]
    fn heredocs_and_the_escape_directive() {
        let df = parse("# escape=`\nFROM busybox\nRUN <<EOF\necho one\necho two\nEOF\nCOPY <<-'CONF' /etc/app.conf\n\tkey=value\n\tCONF\nRUN echo a `\n  b\n").unwrap();
        let steps = &df.stages[0].steps;
        match &steps[0].instruction {
            Instruction::Run { heredocs, .. } => {
                assert_eq!(heredocs[0].name, "EOF");
                assert_eq!(heredocs[0].content, "echo one\necho two\n");
            }
            other => panic!("{other:?}"),
        }
        match &steps[1].instruction {
            Instruction::Copy {
                heredocs,
                dest,
                sources,
                ..
            } => {
                assert_eq!(dest, "/etc/app.conf");
                assert_eq!(sources, &vec!["<<-CONF".to_string()]);
                assert_eq!(heredocs[0].content, "key=value\n");
                assert!(heredocs[0].quoted && heredocs[0].strip_tabs);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            steps[2].instruction,
            Instruction::Run {
                command: Command::Shell("echo a   b".into()),
                flags: BTreeMap::new(),
                heredocs: vec![]
            }
        );
    }

    #[test]
    fn errors_name_line_column_and_expectation() {
        let e = parse("FROM busybox\nRUNN echo\n").unwrap_err();
        assert_eq!(e.to_string(), "Dockerfile:2:1: unknown instruction: RUNN");
        let e = parse("RUN echo\n").unwrap_err();
        assert!(e.message.contains("only ARG may come before FROM"), "{e}");
        let e = parse("FROM busybox\nCOPY onlyone\n").unwrap_err();
        assert!(e.message.contains("at least two arguments"), "{e}");
        let e = parse("FROM busybox\nSHELL /bin/sh -c\n").unwrap_err();
        assert!(e.message.contains("exec form"), "{e}");
        let e = parse("FROM busybox\nRUN <<EOF\necho\n").unwrap_err();
        assert!(e.message.contains("unterminated heredoc"), "{e}");
        let e = parse("FROM a AS x\nFROM b AS x\n").unwrap_err();
        assert!(e.message.contains("duplicate stage name"), "{e}");
        assert!(parse("# just a comment\n")
            .unwrap_err()
            .message
            .contains("no FROM"));
        let e = parse("# escape=x\nFROM a\n").unwrap_err();
        assert!(e.message.contains("invalid escape"), "{e}");
        assert!(parse("FROM a\nONBUILD FROM b\n").is_err());
        assert!(parse("FROM a\nLABEL novalue\n").is_err());
    }

    #[test]
    fn variable_substitution_has_the_documented_modifiers() {
        let v = vars(&[("S", "foobarbaz"), ("E", ""), ("P", "/usr/bin")]);
        let x = |w: &str| expand(w, &v, '\\').unwrap();
        assert_eq!(x("$S ${S} \\$S"), "foobarbaz foobarbaz $S");
        assert_eq!(x("${N:-d} ${E:-d} ${E-d} ${N-d}"), "d d  d");
        assert_eq!(x("${S:+y} ${E:+y} ${E+y} ${N+y}"), "y  y ");
        assert_eq!(
            x("${S#f*b}|${S##f*b}|${S%b*}|${S%%b*}"),
            "arbaz|az|foobar|foo"
        );
        assert_eq!(x("${S/ba/fo}|${S//ba/fo}"), "fooforbaz|fooforfoz");
        assert_eq!(x("${P}_x ${N:-${S}}"), "/usr/bin_x foobarbaz");
        assert!(expand("${N:?must be set}", &v, '\\')
            .unwrap_err()
            .contains("must be set"));
        assert!(expand("${S", &v, '\\').is_err());
        assert!(expand("${S!x}", &v, '\\').is_err());
    }
}
