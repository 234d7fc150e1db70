//! Docker's output shapes: tab-aligned tables (Go's tabwriter with Docker's settings) and
//! the `--format` Go-template subset people use (`{{.Field}}`, `{{.A.B}}`, `{{json .}}`,
//! `{{json .Field}}`, `{{upper ..}}`, `{{lower ..}}`, `table ...`, `\t`).

use serde_json::Value;

/// Aligns tab-separated rows as `tabwriter.NewWriter(out, 10, 1, 3, ' ', 0)` does.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            line.push_str(c);
            if i + 1 < r.len() {
                let w = (widths[i] + 3).max(10);
                let pad = w - c.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        // No trimming: a cell before an empty last one keeps its padding, as in Go.
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    /// A function name (or empty) and a field path (empty path: the whole object).
    Action(String, Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Template {
    pieces: Vec<Piece>,
    pub table: bool,
}

impl Template {
    pub fn parse(src: &str) -> Result<Template, String> {
        let src = src.replace("\\t", "\t").replace("\\n", "\n");
        let (table, body) = match src.strip_prefix("table") {
            Some(rest) => (true, rest.trim_start().to_string()),
            None => (false, src),
        };
        let mut pieces = Vec::new();
        let mut rest = body.as_str();
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_string()));
            }
            let end = rest[start..]
                .find("}}")
                .ok_or_else(|| format!("template: unclosed action in {body:?}"))?;
            let inner = rest[start + 2..start + end].trim().trim_matches('-').trim();
            let words: Vec<&str> = inner.split_whitespace().collect();
            let (func, arg) = match words.as_slice() {
                [arg] => ("", *arg),
                [f, arg] => (*f, *arg),
                _ => return Err(format!("template: unsupported action {{{{{inner}}}}}")),
            };
            if !matches!(func, "" | "json" | "upper" | "lower" | "title" | "println") {
                return Err(format!("template: function {func:?} not defined"));
            }
            let path = arg
                .strip_prefix('.')
                .ok_or_else(|| format!("template: unsupported argument {arg:?}"))?;
            let path = path
                .split('.')
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect();
            pieces.push(Piece::Action(func.to_string(), path));
            rest = &rest[start + end + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template { pieces, table })
    }

    pub fn render(&self, v: &Value) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Action(f, path) => {
                    let mut cur = v;
                    for k in path {
                        cur = cur.get(k).unwrap_or(&Value::Null);
                    }
                    let s = match f.as_str() {
                        "json" => cur.to_string(),
                        _ => plain(cur),
                    };
                    match f.as_str() {
                        "upper" => out.push_str(&s.to_uppercase()),
                        "lower" => out.push_str(&s.to_lowercase()),
                        "println" => {
                            out.push_str(&s);
                            out.push('\n')
                        }
                        _ => out.push_str(&s),
                    }
                }
            }
        }
        out
    }

    /// The header row of a `table` format: each field's column title.
    pub fn header(&self, title: &dyn Fn(&str) -> String) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Action(_, path) => {
                    out.push_str(&title(path.last().map(String::as_str).unwrap_or("")))
                }
            }
        }
        out
    }
}

/// A value as Go's template prints it: strings bare, maps as `map[k:v]`, lists `[a b]`,
/// null as `<no value>`.
pub fn plain(v: &Value) -> String {
    match v {
        Value::Null => "<no value>".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => format!("[{}]", a.iter().map(plain).collect::<Vec<_>>().join(" ")),
        Value::Object(m) => format!(
            "map[{}]",
            m.iter()
                .map(|(k, v)| format!("{k}:{}", plain(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        other => other.to_string(),
    }
}

/// JSON text re-indented as Go's `json.Indent(.., "", "\t")` does: keys keep their order,
/// empty objects and arrays stay `{}` and `[]`.
pub fn indent_json(src: &str) -> String {
    let mut out = String::with_capacity(src.len() * 2);
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let mut chars = src.trim().chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n('\t', depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                let close = if c == '{' { '}' } else { ']' };
                while chars.peek().is_some_and(|n| n.is_whitespace()) {
                    chars.next();
                }
                if chars.peek() == Some(&close) {
                    out.push(close);
                    chars.next();
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// Renders `items` with a user format, or the default table.
pub fn render_list(
    items: &[Value],
    format: Option<&str>,
    default: &str,
    title: &dyn Fn(&str) -> String,
) -> Result<String, String> {
    let t = Template::parse(format.unwrap_or(default))?;
    if t.table {
        let mut rows = vec![t.header(title).split('\t').map(String::from).collect()];
        for it in items {
            rows.push(t.render(it).split('\t').map(String::from).collect());
        }
        Ok(table(&rows))
    } else {
        let mut out = String::new();
        for it in items {
            out.push_str(&t.render(it));
            out.push('\n');
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_like_docker() {
        let t = table(&[
            vec!["CONTAINER ID".into(), "IMAGE".into(), "NAMES".into()],
            vec!["8a20e2c2f88c".into(), "busybox".into(), "web".into()],
        ]);
        assert_eq!(
            t,
            "CONTAINER ID   IMAGE     NAMES\n8a20e2c2f88c   busybox   web\n"
        );
    }

    #[test]
    fn json_is_indented_as_go_does() {
        assert_eq!(
            indent_json(r#"{"b":1,"a":[{"x":"y, \"z\": {"}],"e":{},"f":[ ]}"#),
            "{\n\t\"b\": 1,\n\t\"a\": [\n\t\t{\n\t\t\t\"x\": \"y, \\\"z\\\": {\"\n\t\t}\n\t],\n\t\"e\": {},\n\t\"f\": []\n}"
        );
    }

    #[test]
    fn templates() {
        let v = json!({"ID": "abc", "State": {"Running": true}, "Labels": {"a": "b"}, "N": null});
        let t = Template::parse("{{.ID}} {{.State.Running}} {{json .Labels}} {{.N}}").unwrap();
        assert_eq!(t.render(&v), "abc true {\"a\":\"b\"} <no value>");
        let t = Template::parse("{{json .}}").unwrap();
        assert!(t.render(&v).starts_with('{'));
        let t = Template::parse("table {{.ID}}\\t{{upper .ID}}").unwrap();
        assert!(t.table);
        assert_eq!(t.header(&|f| f.to_uppercase()), "ID\tID");
        assert!(Template::parse("{{.ID").is_err());
        assert!(Template::parse("{{nope .ID}}").is_err());
    }
}
