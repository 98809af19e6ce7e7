//! Traefik-style router rules, for users who already write them:
//!
//! ```text
//! Host(`example.com`, `*.example.com`) && PathPrefix(`/api`) && Method(`GET`, `HEAD`)
//!     && Header(`X-Env`, `canary`) && Query(`debug`, `1`)
//! ```
//!
//! The rule is a conjunction (`&&`) of matchers; a matcher with several values matches any of
//! them. `||` and `!` are refused with a message that says how to express the rule instead: a
//! conjunction maps onto the host index, so every rule is looked up in constant time.

use crate::matcher::{
    Match, PathMatch, check_path, normalize_match, parse_header_match, parse_host_pattern, parse_method,
};

pub fn parse(text: &str) -> Result<Match, String> {
    let mut p = Parser { src: text, pos: 0 };
    let mut m = Match::default();
    let mut seen_any = false;
    loop {
        p.skip_ws();
        if p.eof() {
            if !seen_any {
                return Err("empty rule".into());
            }
            break;
        }
        if seen_any {
            if p.eat("&&") {
                p.skip_ws();
            } else if p.peek_is("||") {
                return Err(
                    "`||` is not supported: list alternatives inside one matcher, e.g. Host(`a`, `b`), \
                     or declare a second router"
                        .into(),
                );
            } else {
                return Err(format!("expected `&&` at byte {} of {text:?}", p.pos));
            }
        }
        if p.peek_is("!") {
            return Err("`!` (negation) is not supported".into());
        }
        let name = p
            .ident()
            .ok_or_else(|| format!("expected a matcher name at byte {} of {text:?}", p.pos))?;
        let args = p.args().map_err(|e| format!("{name}: {e}"))?;
        apply(&mut m, &name, args)?;
        seen_any = true;
    }
    normalize_match(&mut m);
    Ok(m)
}

fn apply(m: &mut Match, name: &str, args: Vec<String>) -> Result<(), String> {
    let need = |n: usize| -> Result<(), String> {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!("{name} takes {n} argument(s), got {}", args.len()))
        }
    };
    match name {
        "Host" => {
            if args.is_empty() {
                return Err("Host needs at least one host".into());
            }
            if !m.hosts.is_empty() {
                return Err("Host appears twice; list the hosts in one Host(...)".into());
            }
            for a in &args {
                m.hosts.push(parse_host_pattern(a)?);
            }
        }
        "Path" | "PathPrefix" => {
            need(1)?;
            if m.path.is_some() {
                return Err("only one Path or PathPrefix per rule".into());
            }
            check_path(&args[0])?;
            let p = args[0].clone();
            m.path = Some(if name == "Path" {
                PathMatch::Exact(p)
            } else {
                PathMatch::Prefix(p)
            });
        }
        "Method" => {
            if args.is_empty() {
                return Err("Method needs at least one method".into());
            }
            for a in &args {
                m.methods.push(parse_method(a)?);
            }
        }
        "Header" => {
            need(2)?;
            m.headers.push(parse_header_match(&args[0], &args[1])?);
        }
        "Query" => {
            need(2)?;
            if args[0].is_empty() {
                return Err("Query needs a parameter name".into());
            }
            m.query.push((args[0].clone(), args[1].clone()));
        }
        "HostRegexp" | "PathRegexp" | "HeaderRegexp" | "QueryRegexp" | "ClientIP" => {
            return Err(format!(
                "{name} is not supported (Host wildcards `*.example.com` cover most uses)"
            ));
        }
        other => {
            return Err(format!(
                "unknown matcher {other:?} (use Host, Path, PathPrefix, Method, Header or Query)"
            ));
        }
    }
    Ok(())
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }
    fn eof(&self) -> bool {
        self.pos >= self.src.len()
    }
    fn skip_ws(&mut self) {
        let n = self.rest().len() - self.rest().trim_start().len();
        self.pos += n;
    }
    fn peek_is(&self, s: &str) -> bool {
        self.rest().starts_with(s)
    }
    fn eat(&mut self, s: &str) -> bool {
        if self.peek_is(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }
    fn ident(&mut self) -> Option<String> {
        let n = self
            .rest()
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        if n == 0 {
            return None;
        }
        let s = self.rest()[..n].to_string();
        self.pos += n;
        Some(s)
    }
    fn args(&mut self) -> Result<Vec<String>, String> {
        self.skip_ws();
        if !self.eat("(") {
            return Err("expected `(`".into());
        }
        let mut out = Vec::new();
        loop {
            self.skip_ws();
            if self.eat(")") {
                return Ok(out);
            }
            if !out.is_empty() {
                if !self.eat(",") {
                    return Err("expected `,` or `)`".into());
                }
                self.skip_ws();
            }
            let quote = self.rest().chars().next().ok_or("unterminated argument list")?;
            if !matches!(quote, '`' | '"' | '\'') {
                return Err("arguments are quoted with backticks, e.g. Host(`example.com`)".into());
            }
            self.pos += 1;
            let end = self.rest().find(quote).ok_or("unterminated quoted argument")?;
            out.push(self.rest()[..end].to_string());
            self.pos += end + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HostPattern;

    #[test]
    fn parses_a_conjunction() {
        let m = parse("Host(`Example.com`, `*.example.com`) && PathPrefix(`/api`) && Method(`get`)").unwrap();
        assert_eq!(
            m.hosts,
            vec![
                HostPattern::Exact("example.com".into()),
                HostPattern::Wildcard("example.com".into())
            ]
        );
        assert_eq!(m.path, Some(PathMatch::Prefix("/api".into())));
        assert_eq!(m.methods, vec!["GET".to_string()]);
    }

    #[test]
    fn parses_header_and_query() {
        let m = parse("Header(`X-Env`, `canary`) && Query(\"debug\", \"1\")").unwrap();
        assert_eq!(m.headers[0].name.as_str(), "x-env");
        assert_eq!(m.headers[0].value, "canary");
        assert_eq!(m.query, vec![("debug".into(), "1".into())]);
    }

    #[test]
    fn refuses_what_it_cannot_index_with_a_hint() {
        assert!(
            parse("Host(`a`) || Host(`b`)")
                .unwrap_err()
                .contains("Host(`a`, `b`)")
        );
        assert!(parse("!Host(`a`)").unwrap_err().contains("negation"));
        assert!(parse("Hots(`a`)").unwrap_err().contains("unknown matcher"));
        assert!(parse("Path(`nope`)").unwrap_err().contains("must start with '/'"));
        assert!(
            parse("Host(`a`) Path(`/`)")
                .unwrap_err()
                .contains("expected `&&`")
        );
        assert!(parse("Host(`a`").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn same_meaning_compares_equal() {
        assert_eq!(
            parse("Host(`b`, `a`) && Method(`POST`, `GET`)"),
            parse("Method(`GET`,`POST`) && Host(`a`,`b`)")
        );
    }
}
