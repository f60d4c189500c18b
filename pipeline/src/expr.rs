//! The `if:` expression language (`spec/pipeline.md`, "Rules"): GitLab's
//! `rules:if` and GitHub's job `if:` in one small grammar.
//!
//! ```text
//! expr    := or
//! or      := and ( "||" and )*
//! and     := unary ( "&&" unary )*
//! unary   := "!" unary | compare
//! compare := primary ( ("==" | "!=") primary | ("=~" | "!~") REGEX )?
//! primary := "(" expr ")" | $NAME | ${NAME} | "text" | 'text' | true | false
//!          | always() | success() | failure()
//!          | startsWith(a, b) | endsWith(a, b) | contains(a, b)
//! ```
//!
//! A variable that is not set is the empty string; a string where a truth
//! value is wanted is true when it is not empty. An expression that uses
//! none of `always()`, `success()` and `failure()` means
//! `success() && (expr)`, as in GitHub Actions. Evaluation is three-valued
//! ([`Expr::eval`]): before the job's dependencies have finished, the
//! status functions are unknown, so a run can skip a job at creation when
//! its expression is false whatever they come to.

use std::fmt;

use super::limits::{MAX_EXPR_BYTES, MAX_EXPR_DEPTH};

/// Largest compiled size of one `=~` regular expression, in bytes.
const MAX_REGEX_BYTES: usize = 1 << 20;

/// A parsed `if:` expression.
#[derive(Clone)]
pub struct Expr {
    text: String,
    node: Node,
    status: bool,
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Expr {}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({:?})", self.text)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// How a job's dependencies ended, for `success()` and `failure()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    /// A dependency failed (without `allow_failure`), or was skipped
    /// because of a failure.
    pub failed: bool,
    /// A dependency was skipped (not because of a failure).
    pub skipped: bool,
}

/// Why an expression did not parse: the byte offset in its text, what is
/// wrong, and a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// Byte offset in the expression's text.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

#[derive(Clone, Debug)]
enum Node {
    Bool(bool),
    Str(String),
    Var(String),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Eq(Box<Node>, Box<Node>, bool),
    Matches(Box<Node>, regex::Regex, bool),
    Status(StatusFn),
    Text(TextFn, Box<Node>, Box<Node>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StatusFn {
    Always,
    Success,
    Failure,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TextFn {
    StartsWith,
    EndsWith,
    Contains,
}

const FUNCTIONS: &[&str] = &[
    "always",
    "success",
    "failure",
    "startsWith",
    "endsWith",
    "contains",
];

impl Expr {
    /// Parses `text`. A GitHub-style `${{ … }}` around the whole text is
    /// taken off.
    pub fn parse(text: &str) -> Result<Self, ExprError> {
        if text.len() > MAX_EXPR_BYTES {
            return Err(ExprError {
                offset: 0,
                message: format!(
                    "the expression is {} bytes long, over the limit of {MAX_EXPR_BYTES} bytes",
                    text.len()
                ),
                hint: None,
            });
        }
        let (start, inner) = match text.trim_end().strip_suffix("}}") {
            Some(rest) if rest.trim_start().starts_with("${{") => {
                let lead = rest.len() - rest.trim_start().len();
                (lead + 3, &rest[lead + 3..])
            }
            _ => (0, text),
        };
        let mut p = Parser {
            src: inner,
            pos: 0,
            base: start,
            depth: 0,
            status: false,
        };
        let node = p.or()?;
        p.skip_ws();
        if p.pos < p.src.len() {
            return Err(p.error_here("unexpected text after the expression", p.hint_at()));
        }
        Ok(Self {
            text: text.trim().to_owned(),
            status: p.status,
            node,
        })
    }

    /// Whether it names `always()`, `success()` or `failure()` (else it
    /// means `success() && (…)`).
    pub fn uses_status(&self) -> bool {
        self.status
    }

    /// Evaluates with `vars` (an unset variable is empty). `status` is how
    /// the dependencies ended, or `None` before they have: the answer is
    /// then `None` when it depends on it.
    pub fn eval(&self, vars: &dyn Fn(&str) -> Option<String>, status: Option<Status>) -> Option<bool> {
        let value = truth(&self.node, vars, status);
        if self.status {
            value
        } else {
            and(success(status), value)
        }
    }

    /// Evaluates an expression that names no status function (a
    /// `workflow: if`).
    pub fn eval_vars(&self, vars: &dyn Fn(&str) -> Option<String>) -> bool {
        truth(&self.node, vars, Some(Status::default())).unwrap_or(false)
    }
}

fn success(status: Option<Status>) -> Option<bool> {
    status.map(|s| !s.failed && !s.skipped)
}

fn and(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }
}

fn or(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (Some(false), Some(false)) => Some(false),
        _ => None,
    }
}

fn text(node: &Node, vars: &dyn Fn(&str) -> Option<String>) -> String {
    match node {
        Node::Str(s) => s.clone(),
        Node::Var(name) => vars(name).unwrap_or_default(),
        // The parser gives comparisons strings only.
        _ => String::new(),
    }
}

fn truth(node: &Node, vars: &dyn Fn(&str) -> Option<String>, status: Option<Status>) -> Option<bool> {
    Some(match node {
        Node::Bool(b) => *b,
        Node::Str(_) | Node::Var(_) => !text(node, vars).is_empty(),
        Node::Not(a) => !truth(a, vars, status)?,
        Node::And(a, b) => return and(truth(a, vars, status), truth(b, vars, status)),
        Node::Or(a, b) => return or(truth(a, vars, status), truth(b, vars, status)),
        Node::Eq(a, b, equal) => (text(a, vars) == text(b, vars)) == *equal,
        Node::Matches(a, re, matches) => re.is_match(&text(a, vars)) == *matches,
        Node::Status(StatusFn::Always) => true,
        Node::Status(StatusFn::Success) => return success(status),
        Node::Status(StatusFn::Failure) => status?.failed,
        Node::Text(f, a, b) => {
            let (a, b) = (text(a, vars), text(b, vars));
            match f {
                TextFn::StartsWith => a.starts_with(&b),
                TextFn::EndsWith => a.ends_with(&b),
                TextFn::Contains => a.contains(&b),
            }
        }
    })
}

/// Whether a node is a string (a variable or a literal), which is what
/// comparisons and the text functions take.
fn is_string(node: &Node) -> bool {
    matches!(node, Node::Str(_) | Node::Var(_))
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    /// Offset of `src` in the text as written (after a `${{`).
    base: usize,
    depth: usize,
    status: bool,
}

impl Parser<'_> {
    fn error_at(&self, pos: usize, message: impl Into<String>, hint: Option<String>) -> ExprError {
        ExprError {
            offset: self.base + pos,
            message: message.into(),
            hint,
        }
    }

    fn error_here(&self, message: impl Into<String>, hint: Option<String>) -> ExprError {
        self.error_at(self.pos, message, hint)
    }

    /// A hint for a word of other languages at the current position.
    fn hint_at(&self) -> Option<String> {
        let rest = &self.src[self.pos..];
        let word: String = rest.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
        match word.as_str() {
            "and" => Some("use `&&`".into()),
            "or" => Some("use `||`".into()),
            "not" => Some("use `!`".into()),
            _ if rest.starts_with('=') && !rest.starts_with("==") && !rest.starts_with("=~") => {
                Some("compare with `==`".into())
            }
            _ => Some("join conditions with `&&` or `||`".into()),
        }
    }

    fn skip_ws(&mut self) {
        let rest = &self.src[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        if self.src[self.pos..].starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, ExprError>) -> Result<T, ExprError> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH {
            return Err(self.error_here(
                format!("the expression is nested more than {MAX_EXPR_DEPTH} deep"),
                None,
            ));
        }
        let out = f(self);
        self.depth -= 1;
        out
    }

    fn or(&mut self) -> Result<Node, ExprError> {
        self.nested(|p| {
            let mut left = p.and()?;
            while p.eat("||") {
                let right = p.and()?;
                left = Node::Or(Box::new(left), Box::new(right));
            }
            Ok(left)
        })
    }

    fn and(&mut self) -> Result<Node, ExprError> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            let right = self.unary()?;
            left = Node::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        self.skip_ws();
        let rest = &self.src[self.pos..];
        if rest.starts_with('!') && !rest.starts_with("!=") && !rest.starts_with("!~") {
            self.pos += 1;
            return self.nested(|p| Ok(Node::Not(Box::new(p.unary()?))));
        }
        self.compare()
    }

    fn compare(&mut self) -> Result<Node, ExprError> {
        let start = self.skip_ws_pos();
        let left = self.primary()?;
        self.skip_ws();
        let op_pos = self.pos;
        let rest = &self.src[self.pos..];
        let op = ["==", "!=", "=~", "!~"]
            .into_iter()
            .find(|op| rest.starts_with(op));
        let Some(op) = op else {
            if rest.starts_with('=') {
                return Err(self.error_here("`=` is not an operator", Some("compare with `==`".into())));
            }
            return Ok(left);
        };
        self.pos += op.len();
        if !is_string(&left) {
            return Err(self.error_at(
                start,
                format!("`{op}` compares text, and this is a truth value"),
                Some("compare a `$VARIABLE` or a \"string\"".into()),
            ));
        }
        if op.ends_with('~') {
            let re = self.regex(op)?;
            return Ok(Node::Matches(Box::new(left), re, op == "=~"));
        }
        let right_pos = self.skip_ws_pos();
        let right = self.primary()?;
        if !is_string(&right) {
            return Err(self.error_at(
                right_pos,
                format!("`{op}` compares text, and this is a truth value"),
                Some("compare with a \"string\" or a `$VARIABLE`".into()),
            ));
        }
        let _ = op_pos;
        Ok(Node::Eq(Box::new(left), Box::new(right), op == "=="))
    }

    fn skip_ws_pos(&mut self) -> usize {
        self.skip_ws();
        self.pos
    }

    /// `/pattern/` or `/pattern/i` after `=~` or `!~`.
    fn regex(&mut self, op: &str) -> Result<regex::Regex, ExprError> {
        let start = self.skip_ws_pos();
        let rest = &self.src[self.pos..];
        if !rest.starts_with('/') {
            return Err(self.error_here(
                format!("`{op}` takes a regular expression between slashes"),
                Some("e.g. `$VALKYRIE_BRANCH =~ /^release-/`".into()),
            ));
        }
        let mut pattern = String::new();
        let mut end = None;
        let mut chars = rest[1..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, '/')) => pattern.push('/'),
                    Some((_, other)) => {
                        pattern.push('\\');
                        pattern.push(other);
                    }
                    None => break,
                },
                '/' => {
                    end = Some(1 + i + 1);
                    break;
                }
                c => pattern.push(c),
            }
        }
        let Some(end) = end else {
            return Err(self.error_at(start, "the regular expression has no closing `/`", None));
        };
        self.pos += end;
        let mut insensitive = false;
        if self.src[self.pos..].starts_with('i') {
            insensitive = true;
            self.pos += 1;
        }
        regex::RegexBuilder::new(&pattern)
            .case_insensitive(insensitive)
            .size_limit(MAX_REGEX_BYTES)
            .build()
            .map_err(|e| {
                let detail = match e {
                    regex::Error::Syntax(s) => s.lines().last().unwrap_or_default().trim().to_owned(),
                    other => other.to_string(),
                };
                self.error_at(
                    start,
                    format!("bad regular expression `/{pattern}/`: {detail}"),
                    None,
                )
            })
    }

    fn primary(&mut self) -> Result<Node, ExprError> {
        let start = self.skip_ws_pos();
        let rest = &self.src[self.pos..];
        let Some(c) = rest.chars().next() else {
            return Err(self.error_here(
                "the expression ends where a value was expected",
                Some("e.g. `$VALKYRIE_BRANCH == \"main\"`".into()),
            ));
        };
        match c {
            '(' => {
                self.pos += 1;
                let inner = self.or()?;
                if !self.eat(")") {
                    return Err(self.error_at(start, "this `(` is not closed", Some("add `)`".into())));
                }
                Ok(inner)
            }
            '$' => self.variable(),
            '"' | '\'' => self.string(c),
            c if c.is_ascii_alphabetic() || c == '_' => self.word(),
            '/' => Err(self.error_here(
                "a regular expression goes after `=~` or `!~`",
                Some("e.g. `$VALKYRIE_TAG =~ /^v[0-9]+/`".into()),
            )),
            other => Err(self.error_here(format!("unexpected `{other}`"), None)),
        }
    }

    fn variable(&mut self) -> Result<Node, ExprError> {
        let start = self.pos;
        self.pos += 1;
        let braced = self.src[self.pos..].starts_with('{');
        if braced {
            self.pos += 1;
        }
        let rest = &self.src[self.pos..];
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..len];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(self.error_at(
                start,
                "`$` must be followed by a variable name",
                Some("e.g. `$VALKYRIE_BRANCH` or `${DEPLOY}`".into()),
            ));
        }
        self.pos += len;
        if braced && !self.eat("}") {
            return Err(self.error_at(start, "`${` is not closed", Some("add `}`".into())));
        }
        Ok(Node::Var(name.to_owned()))
    }

    fn string(&mut self, quote: char) -> Result<Node, ExprError> {
        let start = self.pos;
        let mut out = String::new();
        let mut chars = self.src[self.pos + 1..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, e)) => out.push(e),
                    None => break,
                },
                c if c == quote => {
                    self.pos += 1 + i + 1;
                    return Ok(Node::Str(out));
                }
                c => out.push(c),
            }
        }
        Err(self.error_at(start, format!("this string has no closing {quote}"), None))
    }

    fn word(&mut self) -> Result<Node, ExprError> {
        let start = self.pos;
        let rest = &self.src[self.pos..];
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(rest.len());
        let word = &rest[..len];
        self.pos += len;
        match word {
            "true" => return Ok(Node::Bool(true)),
            "false" => return Ok(Node::Bool(false)),
            _ => {}
        }
        if !self.eat("(") {
            let hint = match word {
                "on_success" | "on_failure" => format!("use `{}()`", if word == "on_success" { "success" } else { "failure" }),
                _ if word.contains('.') => {
                    "variables are written `$NAME`: the trigger's are `$VALKYRIE_BRANCH`, `$VALKYRIE_REF`, `$VALKYRIE_EVENT`, …".into()
                }
                _ => format!("write a variable as `${word}`, a string as \"{word}\""),
            };
            return Err(self.error_at(start, format!("unknown word `{word}`"), Some(hint)));
        }
        let status = match word {
            "always" => Some(StatusFn::Always),
            "success" => Some(StatusFn::Success),
            "failure" => Some(StatusFn::Failure),
            _ => None,
        };
        if let Some(f) = status {
            if !self.eat(")") {
                return Err(self.error_here(format!("`{word}()` takes no arguments"), None));
            }
            self.status = true;
            return Ok(Node::Status(f));
        }
        let f = match word {
            "startsWith" => TextFn::StartsWith,
            "endsWith" => TextFn::EndsWith,
            "contains" => TextFn::Contains,
            _ => {
                let hint = super::error::did_you_mean(word, FUNCTIONS.iter().copied())
                    .or_else(|| Some(format!("the functions are {}", FUNCTIONS.join(", "))));
                return Err(self.error_at(start, format!("unknown function `{word}`"), hint));
            }
        };
        let a_pos = self.skip_ws_pos();
        let a = self.primary()?;
        if !self.eat(",") {
            return Err(self.error_here(format!("`{word}` takes two arguments"), None));
        }
        let b_pos = self.skip_ws_pos();
        let b = self.primary()?;
        if !self.eat(")") {
            return Err(self.error_here(format!("`{word}` takes two arguments"), Some("add `)`".into())));
        }
        for (node, pos) in [(&a, a_pos), (&b, b_pos)] {
            if !is_string(node) {
                return Err(self.error_at(pos, format!("`{word}` takes text"), None));
            }
        }
        Ok(Node::Text(f, Box::new(a), Box::new(b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "VALKYRIE_BRANCH" => Some("main".into()),
            "VALKYRIE_EVENT" => Some("push".into()),
            "VALKYRIE_TAG" => Some(String::new()),
            "DEPLOY" => Some("1".into()),
            _ => None,
        }
    }

    fn eval(text: &str, status: Option<Status>) -> Option<bool> {
        Expr::parse(text)
            .unwrap_or_else(|e| panic!("{text}: {e:?}"))
            .eval(&vars, status)
    }

    const OK: Option<Status> = Some(Status {
        failed: false,
        skipped: false,
    });
    const FAILED: Option<Status> = Some(Status {
        failed: true,
        skipped: false,
    });

    #[test]
    fn operators_and_precedence() {
        assert_eq!(
            eval(
                r#"$VALKYRIE_BRANCH == "main" && $VALKYRIE_EVENT != "schedule""#,
                OK
            ),
            Some(true)
        );
        assert_eq!(eval(r#"$VALKYRIE_BRANCH == 'dev' || $DEPLOY"#, OK), Some(true));
        assert_eq!(eval("$UNSET", OK), Some(false), "unset is empty, empty is false");
        assert_eq!(eval("!$UNSET && ${DEPLOY} == \"1\"", OK), Some(true));
        // && binds tighter than ||.
        assert_eq!(eval("true || false && false", OK), Some(true));
        assert_eq!(eval("(true || false) && false", OK), Some(false));
        assert_eq!(eval(r"$VALKYRIE_BRANCH =~ /^ma/", OK), Some(true));
        assert_eq!(eval(r"$VALKYRIE_BRANCH !~ /^MA/i", OK), Some(false));
        assert_eq!(
            eval(
                r#"startsWith($VALKYRIE_BRANCH, "ma") && contains("abc", "b")"#,
                OK
            ),
            Some(true)
        );
        assert_eq!(eval(r#"endsWith($VALKYRIE_BRANCH, "x")"#, OK), Some(false));
        assert_eq!(eval(r#"${{ $VALKYRIE_EVENT == "push" }}"#, OK), Some(true));
        assert_eq!(eval(r#""a\"b" == 'a"b'"#, OK), Some(true));
        assert_eq!(eval(r"'a/b' =~ /a\/b/", OK), Some(true));
    }

    #[test]
    fn status_functions_are_three_valued() {
        // Without a status function: success() && (…).
        assert_eq!(eval("$DEPLOY", None), None, "unknown until the needs end");
        assert_eq!(eval("$UNSET", None), Some(false), "false whatever they end as");
        assert_eq!(eval("$DEPLOY", FAILED), Some(false));
        assert_eq!(eval("always() && $UNSET", None), Some(false));
        assert_eq!(eval("always() && $DEPLOY", None), Some(true));
        assert_eq!(eval("failure() || $DEPLOY", None), Some(true));
        assert_eq!(eval("failure() && $DEPLOY", None), None);
        assert_eq!(eval("failure() && $DEPLOY", FAILED), Some(true));
        assert_eq!(eval("!failure()", FAILED), Some(false));
        assert_eq!(
            eval(
                "success()",
                Some(Status {
                    failed: false,
                    skipped: true
                })
            ),
            Some(false),
            "a skipped need is not a success"
        );
        assert!(Expr::parse("always()").unwrap().uses_status());
        assert!(!Expr::parse("$A").unwrap().uses_status());
    }

    #[test]
    fn errors_have_offsets_and_hints() {
        let err = |text: &str| Expr::parse(text).unwrap_err();
        let e = err(r#"$A == "x" and $B"#);
        assert_eq!(e.offset, 10, "{e:?}");
        assert_eq!(e.hint.as_deref(), Some("use `&&`"));
        let e = err(r#"$A = "x""#);
        assert_eq!(e.offset, 3);
        assert_eq!(e.hint.as_deref(), Some("compare with `==`"));
        let e = err("startWith($A, 'x')");
        assert_eq!(e.offset, 0);
        assert_eq!(e.hint.as_deref(), Some("did you mean `startsWith`?"));
        let e = err("($A == 'x'");
        assert_eq!((e.offset, e.message.as_str()), (0, "this `(` is not closed"));
        let e = err("$A =~ /(/");
        assert_eq!(e.offset, 6);
        assert!(
            e.message.starts_with("bad regular expression `/(/`"),
            "{}",
            e.message
        );
        let e = err("github.ref == 'refs/heads/main'");
        assert!(e.hint.unwrap().contains("$VALKYRIE_REF"));
        let e = err("always() == 'x'");
        assert!(e.message.contains("compares text"), "{}", e.message);
        let e = err("$A == ");
        assert_eq!(e.offset, 6);
        let e = err("${{ $A == }}");
        assert_eq!(e.offset, 10, "offsets count from the text as written");
        let e = err(&"(".repeat(100));
        assert!(e.message.contains("nested"), "{}", e.message);
        assert!(err(&"a".repeat(MAX_EXPR_BYTES + 1))
            .message
            .contains("over the limit"));
    }
}
