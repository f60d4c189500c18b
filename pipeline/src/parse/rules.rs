//! `if:` (a plain condition or an expression), `when:` and `workflow:`.

use marked_yaml::types::MarkedScalarNode;
use marked_yaml::Node;

use super::{position, Ctx, WORKFLOW_KEYS};
use crate::model::Condition;
use crate::Expr;

const CONDITION_HINT: &str =
    "use on_success, on_failure, always, or an expression such as `$VALKYRIE_BRANCH == \"main\"`";

/// A job's `if:`: one of the plain conditions, or an expression.
pub(super) fn job_if(cx: &mut Ctx<'_>, node: &Node, what: &str) -> (Condition, Option<Expr>) {
    let Some(s) = cx.scalar(node, "if") else {
        return (Condition::OnSuccess, None);
    };
    match s.as_str().trim() {
        "on_success" | "success()" => return (Condition::OnSuccess, None),
        "on_failure" | "failure()" => return (Condition::OnFailure, None),
        "always" | "always()" => return (Condition::Always, None),
        "" => {
            cx.error(
                s.span(),
                format!("{what} has an empty `if`"),
                Some(CONDITION_HINT.into()),
            );
            return (Condition::OnSuccess, None);
        }
        _ => {}
    }
    match expression(cx, s, &format!("the `if` of {what}")) {
        // A job whose expression reads how its needs ended is decided by
        // it alone; fail-fast leaves it be, as it does `always` jobs.
        Some(expr) if expr.uses_status() => (Condition::Always, Some(expr)),
        Some(expr) => (Condition::OnSuccess, Some(expr)),
        None => (Condition::OnSuccess, None),
    }
}

/// A job's `when:`; true for `manual`.
pub(super) fn when(cx: &mut Ctx<'_>, node: &Node, what: &str) -> bool {
    let Some(s) = cx.scalar(node, "when") else {
        return false;
    };
    match s.as_str() {
        "manual" => true,
        "on_success" => false,
        other => {
            let hint = match other {
                "always" | "on_failure" => format!("use `if: {other}`"),
                "never" => "use `if: false`, or an `if:` expression that is false".into(),
                "delayed" => "delayed jobs are not supported yet".into(),
                _ => "use `manual` (or leave `when:` out)".into(),
            };
            cx.error(
                s.span(),
                format!("{what} has an unknown `when` `{other}`"),
                Some(hint),
            );
            false
        }
    }
}

/// `workflow: { if: EXPR }`.
pub(super) fn workflow(cx: &mut Ctx<'_>, node: &Node) -> Option<Expr> {
    let map = cx.mapping(node, "workflow")?;
    cx.check_keys(map, WORKFLOW_KEYS, "workflow");
    let s = cx.scalar(map.get_node("if")?, "workflow if")?;
    let expr = expression(cx, s, "`workflow: if`")?;
    if expr.uses_status() {
        cx.error(
            s.span(),
            "`workflow: if` is decided before any job runs: `always()`, `success()` and `failure()` have no meaning there",
            Some("test variables only, e.g. `$VALKYRIE_EVENT != \"schedule\"`".into()),
        );
        return None;
    }
    Some(expr)
}

/// Parses an expression, reporting an error at its place inside the scalar.
fn expression(cx: &mut Ctx<'_>, s: &MarkedScalarNode, what: &str) -> Option<Expr> {
    match Expr::parse(s.as_str()) {
        Ok(expr) => Some(expr),
        Err(err) => {
            let (line, column) = place(cx.text, s, err.offset);
            cx.error_at(line, column, format!("{what}: {}", err.message), err.hint);
            None
        }
    }
}

/// Line and column of byte `offset` of scalar `s`'s value in the file:
/// exact for a plain or quoted scalar on one line (without escapes before
/// the offset) and for a literal block scalar (`|`, whose span starts at
/// its first line's text); the scalar's start otherwise.
fn place(text: &str, s: &MarkedScalarNode, offset: usize) -> (usize, usize) {
    let (line, column) = position(s.span());
    let value = s.as_str();
    let Some(before) = value.get(..offset) else {
        return (line, column);
    };
    let Some(source) = text.lines().nth(line.saturating_sub(1)) else {
        return (line, column);
    };
    let from_start: String = source.chars().skip(column.saturating_sub(1)).collect();
    match from_start.chars().next() {
        Some('"' | '\'') if !before.contains('\\') && !before.contains('\n') => {
            (line, column + 1 + before.chars().count())
        }
        // A plain scalar, or a block whose lines keep their place below
        // its first one.
        Some(_) if from_start.starts_with(value.lines().next().unwrap_or_default()) => {
            let lines_before = before.matches('\n').count();
            let in_line = before.rsplit('\n').next().unwrap_or_default().chars().count();
            (line + lines_before, column + in_line)
        }
        _ => (line, column),
    }
}
