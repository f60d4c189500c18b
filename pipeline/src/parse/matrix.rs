//! A job's `matrix:`: value lists, `exclude` and `include`, as GitHub
//! Actions defines them. Parsing keeps the matrix compact: [`Matrix::legs`]
//! counts the combinations without building them, so the pipeline-wide caps
//! are checked before [`Matrix::combinations`] allocates anything.

use marked_yaml::Node;

use super::super::error::did_you_mean;
use super::super::limits::{MAX_MATRIX_COMBINATIONS, MAX_MATRIX_KEYS, MAX_NAME_BYTES};
use super::Ctx;

/// One `include` entry: values for matrix keys (by key index and value)
/// and values for extra keys.
#[derive(Debug, Clone, Default)]
struct Include {
    /// `(key index, value)` for keys of the matrix.
    original: Vec<(usize, String)>,
    /// `(key, value)` for keys the matrix does not define.
    extra: Vec<(String, String)>,
}

/// A parsed matrix.
#[derive(Debug, Clone, Default)]
pub(super) struct Matrix {
    /// Keys and their values, in file order.
    keys: Vec<(String, Vec<String>)>,
    /// Each `exclude` entry as `(key index, value index)` pairs.
    exclude: Vec<Vec<(usize, usize)>>,
    include: Vec<Include>,
}

impl Matrix {
    /// The digits (one value index per key) of product combination `n`,
    /// the first key varying slowest.
    fn digits(&self, mut n: usize, out: &mut [usize]) {
        for (slot, (_, values)) in out.iter_mut().zip(&self.keys).rev() {
            *slot = n % values.len();
            n /= values.len();
        }
    }

    fn product(&self) -> usize {
        if self.keys.is_empty() || self.keys.iter().any(|(_, v)| v.is_empty()) {
            return 0;
        }
        self.keys
            .iter()
            .fold(1usize, |acc, (_, v)| acc.saturating_mul(v.len()))
    }

    fn excluded(&self, digits: &[usize]) -> bool {
        self.exclude
            .iter()
            .any(|entry| entry.iter().all(|&(k, v)| digits[k] == v))
    }

    fn include_matches(&self, include: &Include, digits: &[usize]) -> bool {
        include
            .original
            .iter()
            .all(|(k, value)| self.keys[*k].1[digits[*k]] == *value)
    }

    /// The product combinations left after `exclude`, as digit vectors.
    /// Only called once the product is known to be within the cap.
    fn kept(&self) -> Vec<Vec<usize>> {
        let mut digits = vec![0; self.keys.len()];
        let mut kept = Vec::new();
        for n in 0..self.product() {
            self.digits(n, &mut digits);
            if !self.excluded(&digits) {
                kept.push(digits.clone());
            }
        }
        kept
    }

    /// How many jobs the matrix expands into: the product of its values,
    /// less the excluded combinations, plus each `include` entry that
    /// matches no combination. No matrix is one job.
    pub(super) fn legs(&self) -> usize {
        if self.keys.is_empty() && self.include.is_empty() {
            return 1;
        }
        let kept = self.kept();
        let added = self
            .include
            .iter()
            .filter(|inc| !kept.iter().any(|d| self.include_matches(inc, d)))
            .count();
        kept.len() + added
    }

    /// Every combination, in order: the product (first key slowest) less
    /// `exclude`, each extended by the `include` entries that match it,
    /// then the `include` entries that matched nothing, in file order. One
    /// empty combination when there is no matrix.
    pub(super) fn combinations(&self) -> Vec<Vec<(String, String)>> {
        if self.keys.is_empty() && self.include.is_empty() {
            return vec![Vec::new()];
        }
        let kept = self.kept();
        let mut out: Vec<Vec<(String, String)>> = kept
            .iter()
            .map(|d| {
                d.iter()
                    .enumerate()
                    .map(|(k, &v)| (self.keys[k].0.clone(), self.keys[k].1[v].clone()))
                    .collect()
            })
            .collect();
        for inc in &self.include {
            let mut matched = false;
            for (digits, combination) in kept.iter().zip(out.iter_mut()) {
                if self.include_matches(inc, digits) {
                    matched = true;
                    for (key, value) in &inc.extra {
                        set(combination, key, value);
                    }
                }
            }
            if !matched {
                let mut combination: Vec<(String, String)> = inc
                    .original
                    .iter()
                    .map(|(k, v)| (self.keys[*k].0.clone(), v.clone()))
                    .collect();
                for (key, value) in &inc.extra {
                    set(&mut combination, key, value);
                }
                out.push(combination);
            }
        }
        out
    }
}

/// Sets `key` in a combination, replacing a value an earlier `include` added.
fn set(combination: &mut Vec<(String, String)>, key: &str, value: &str) {
    match combination.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value.to_owned(),
        None => combination.push((key.to_owned(), value.to_owned())),
    }
}

/// Parses `matrix:` of job `what`; `None` after an error (reported).
pub(super) fn parse_matrix(cx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<Matrix> {
    let m = cx.mapping(node, &format!("{what} matrix"))?;
    if !cx.few_enough(m.span(), m.len(), MAX_MATRIX_KEYS, &format!("{what} matrix")) {
        return None;
    }
    let errors_before = cx.errors.len() + cx.suppressed;
    let mut matrix = Matrix::default();
    for (k, v) in m.iter() {
        if matches!(k.as_str(), "include" | "exclude") {
            continue;
        }
        if !cx.fits(k.span(), k.as_str(), MAX_NAME_BYTES, "a matrix key") {
            continue;
        }
        let values: Vec<String> = cx
            .names(v, "matrix values", MAX_MATRIX_COMBINATIONS)
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        if values.is_empty() {
            cx.error(
                k.span(),
                format!("matrix key `{}` has no values", k.as_str()),
                Some("list at least one value, e.g. `os: [linux, mac]`".into()),
            );
        }
        matrix.keys.push((k.as_str().to_owned(), values));
    }
    let product = matrix.product();
    if product > MAX_MATRIX_COMBINATIONS {
        cx.error(
            m.span(),
            format!("{what} matrix has {product} combinations, over the limit of {MAX_MATRIX_COMBINATIONS}"),
            Some("use fewer values, or split the job".into()),
        );
        return None;
    }
    if let Some(node) = m.get_node("exclude") {
        for entry in entries(cx, node, "matrix `exclude`") {
            let Some(map) = cx.mapping(entry, "a matrix `exclude` entry") else {
                continue;
            };
            let mut pairs = Vec::new();
            for (key, value) in map.iter() {
                let Some(k) = matrix.keys.iter().position(|(name, _)| name == key.as_str()) else {
                    let hint = did_you_mean(key.as_str(), matrix.keys.iter().map(|(n, _)| n.as_str()))
                        .or_else(|| Some(format!("the matrix keys are: {}", key_list(&matrix))));
                    cx.error(
                        key.span(),
                        format!(
                            "matrix `exclude` names `{}`, which is not a key of the matrix",
                            key.as_str()
                        ),
                        hint,
                    );
                    continue;
                };
                let Some(value) = cx.name(value, "a matrix `exclude` value") else {
                    continue;
                };
                match matrix.keys[k].1.iter().position(|v| *v == value) {
                    Some(i) => pairs.push((k, i)),
                    None => {
                        let values = &matrix.keys[k].1;
                        let hint = did_you_mean(&value, values.iter().map(String::as_str))
                            .or_else(|| Some(format!("`{}` takes: {}", key.as_str(), values.join(", "))));
                        cx.error(
                            map.get_node(key.as_str()).map_or(key.span(), Node::span),
                            format!(
                                "matrix `exclude` sets `{}` to `{value}`, which is not one of its values",
                                key.as_str()
                            ),
                            hint,
                        );
                    }
                }
            }
            if map.is_empty() {
                cx.error(
                    map.span(),
                    "a matrix `exclude` entry is empty",
                    Some("name the values to leave out, e.g. `- {os: mac, rust: beta}`".into()),
                );
            } else {
                matrix.exclude.push(pairs);
            }
        }
    }
    if let Some(node) = m.get_node("include") {
        for entry in entries(cx, node, "matrix `include`") {
            let Some(map) = cx.mapping(entry, "a matrix `include` entry") else {
                continue;
            };
            if !cx.few_enough(map.span(), map.len(), MAX_MATRIX_KEYS, "a matrix `include` entry") {
                continue;
            }
            let mut include = Include::default();
            for (key, value) in map.iter() {
                if !cx.fits(key.span(), key.as_str(), MAX_NAME_BYTES, "a matrix key") {
                    continue;
                }
                let Some(value) = cx.name(value, "a matrix `include` value") else {
                    continue;
                };
                match matrix.keys.iter().position(|(name, _)| name == key.as_str()) {
                    Some(k) => include.original.push((k, value)),
                    None => include.extra.push((key.as_str().to_owned(), value)),
                }
            }
            if map.is_empty() {
                cx.error(
                    map.span(),
                    "a matrix `include` entry is empty",
                    Some(
                        "give the values of the extra combination, e.g. `- {os: windows, rust: stable}`"
                            .into(),
                    ),
                );
            } else {
                matrix.include.push(include);
            }
        }
    }
    if cx.errors.len() + cx.suppressed > errors_before {
        return None;
    }
    let legs = matrix.legs();
    if legs == 0 {
        cx.error(
            m.span(),
            format!("{what} matrix has no combination left after `exclude`"),
            Some("exclude fewer combinations".into()),
        );
        return None;
    }
    if legs > MAX_MATRIX_COMBINATIONS {
        cx.error(
            m.span(),
            format!("{what} matrix has {legs} combinations, over the limit of {MAX_MATRIX_COMBINATIONS}"),
            Some("use fewer values or `include` entries, or split the job".into()),
        );
        return None;
    }
    Some(matrix)
}

/// The entries of an `include` or `exclude` list, at most
/// [`MAX_MATRIX_COMBINATIONS`] of them.
fn entries<'n>(cx: &mut Ctx<'_>, node: &'n Node, what: &str) -> Vec<&'n Node> {
    match node {
        Node::Sequence(seq) => {
            if cx.few_enough(seq.span(), seq.len(), MAX_MATRIX_COMBINATIONS, what) {
                seq.iter().collect()
            } else {
                Vec::new()
            }
        }
        Node::Mapping(_) => vec![node],
        Node::Scalar(s) if s.as_str().is_empty() => Vec::new(),
        Node::Scalar(s) => {
            cx.error(
                s.span(),
                format!("{what} must be a list of mappings"),
                Some("e.g. `- {os: mac, rust: beta}`".into()),
            );
            Vec::new()
        }
    }
}

fn key_list(matrix: &Matrix) -> String {
    let keys: Vec<&str> = matrix.keys.iter().map(|(k, _)| k.as_str()).collect();
    if keys.is_empty() {
        "none".into()
    } else {
        keys.join(", ")
    }
}
