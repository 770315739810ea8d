//! A subscription's filter on publication tags (`SubscribeRequest::tf`, Centrifugo 6).
//!
//! The client sends a tree of [`FilterNode`]s; [`TagsFilter::compile`] checks it (the same
//! rules as the centrifuge library, plus the bounds of `client.tags_filter_max_bytes` and
//! `client.tags_filter_max_depth`, since a subscriber keeps its filter and the fan-out runs
//! it for every publication) and turns it into a tree whose evaluation matches no strings
//! against operator names. The hub evaluates it per subscriber at fan-out, only to decide
//! who gets the publication's shared bytes: nothing is encoded per subscriber.

use hubbub_protocol::command::FilterNode;
use std::cmp::Ordering;
use std::collections::HashMap;

/// Why a filter is refused (the subscribe is answered with error 107).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("unknown filter op {0:?}")]
    UnknownOp(String),
    #[error("unknown comparison {0:?}")]
    UnknownCmp(String),
    #[error("comparison {0:?} needs a key")]
    MissingKey(String),
    #[error("comparison {0:?} needs val and no vals")]
    NeedsVal(String),
    #[error("comparison {0:?} needs vals and no val")]
    NeedsVals(String),
    #[error("comparison {0:?} takes no val or vals")]
    TakesNoValue(String),
    #[error("numeric comparison {0:?} with a value that is not a number")]
    NotANumber(String),
    #[error("{0:?} needs at least one node")]
    NoNodes(String),
    #[error("not needs exactly one node")]
    NotArity,
    #[error("filter deeper than {0} levels")]
    TooDeep(usize),
    #[error("filter larger than {0} bytes")]
    TooLarge(usize),
}

/// Bounds of one filter (`[client]` keys).
#[derive(Debug, Clone, Copy)]
pub struct FilterLimits {
    /// Nesting levels (a single comparison is 1).
    pub max_depth: usize,
    /// Bytes of keys and values, plus [`NODE_COST`] for each node and value.
    pub max_bytes: usize,
}

/// What each node and each value of `vals` counts toward `max_bytes` besides its strings,
/// so that a tree of empty strings is bounded too.
pub const NODE_COST: usize = 8;

/// A checked filter, ready to be evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct TagsFilter {
    root: Node,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Leaf { key: String, cmp: Cmp },
}

#[derive(Debug, Clone, PartialEq)]
enum Cmp {
    Eq(String),
    Neq(String),
    In(Vec<String>),
    Nin(Vec<String>),
    Exists,
    NotExists,
    StartsWith(String),
    EndsWith(String),
    Contains(String),
    /// `gt`, `gte`, `lt`, `lte`: the tag, read as a decimal number, compared with the value;
    /// holds when the comparison's result is one of the accepted orderings. A tag that is
    /// not a number never matches.
    Number(Decimal, [Option<Ordering>; 2]),
}

impl TagsFilter {
    /// Checks a filter as the client sent it and compiles it.
    pub fn compile(node: &FilterNode, limits: FilterLimits) -> Result<TagsFilter, FilterError> {
        let mut budget = limits.max_bytes;
        let root = compile(node, 1, limits, &mut budget)?;
        Ok(TagsFilter { root })
    }

    /// Whether a publication with these tags passes the filter.
    pub fn matches(&self, tags: Option<&HashMap<String, String>>) -> bool {
        self.root.matches(tags)
    }
}

fn compile(
    node: &FilterNode,
    depth: usize,
    limits: FilterLimits,
    budget: &mut usize,
) -> Result<Node, FilterError> {
    if depth > limits.max_depth {
        return Err(FilterError::TooDeep(limits.max_depth));
    }
    let cost = NODE_COST
        + node.key.len()
        + node.val.len()
        + node.vals.iter().map(|v| v.len() + NODE_COST).sum::<usize>();
    *budget = budget.checked_sub(cost).ok_or(FilterError::TooLarge(limits.max_bytes))?;
    let children = |op: &str, budget: &mut usize| -> Result<Vec<Node>, FilterError> {
        if node.nodes.is_empty() {
            return Err(FilterError::NoNodes(op.to_owned()));
        }
        node.nodes.iter().map(|n| compile(n, depth + 1, limits, budget)).collect()
    };
    match node.op.as_str() {
        "" => leaf(node).map(|cmp| Node::Leaf { key: node.key.clone(), cmp }),
        "and" => Ok(Node::And(children("and", budget)?)),
        "or" => Ok(Node::Or(children("or", budget)?)),
        "not" => {
            if node.nodes.len() != 1 {
                return Err(FilterError::NotArity);
            }
            Ok(Node::Not(Box::new(compile(&node.nodes[0], depth + 1, limits, budget)?)))
        }
        other => Err(FilterError::UnknownOp(other.to_owned())),
    }
}

fn leaf(node: &FilterNode) -> Result<Cmp, FilterError> {
    let name = node.cmp.as_str();
    let val = || {
        if node.val.is_empty() || !node.vals.is_empty() {
            Err(FilterError::NeedsVal(name.to_owned()))
        } else {
            Ok(node.val.clone())
        }
    };
    let vals = || {
        if node.vals.is_empty() || !node.val.is_empty() {
            Err(FilterError::NeedsVals(name.to_owned()))
        } else {
            Ok(node.vals.clone())
        }
    };
    let cmp = match name {
        "eq" => Cmp::Eq(val()?),
        "neq" => Cmp::Neq(val()?),
        "in" => Cmp::In(vals()?),
        "nin" => Cmp::Nin(vals()?),
        "sw" => Cmp::StartsWith(val()?),
        "ew" => Cmp::EndsWith(val()?),
        "ct" => Cmp::Contains(val()?),
        "gt" | "gte" | "lt" | "lte" => {
            let number = Decimal::parse(&val()?).ok_or_else(|| FilterError::NotANumber(name.to_owned()))?;
            let accepted = match name {
                "gt" => [Some(Ordering::Greater), None],
                "gte" => [Some(Ordering::Greater), Some(Ordering::Equal)],
                "lt" => [Some(Ordering::Less), None],
                _ => [Some(Ordering::Less), Some(Ordering::Equal)],
            };
            Cmp::Number(number, accepted)
        }
        "ex" | "nex" => {
            if !node.val.is_empty() || !node.vals.is_empty() {
                return Err(FilterError::TakesNoValue(name.to_owned()));
            }
            if name == "ex" {
                Cmp::Exists
            } else {
                Cmp::NotExists
            }
        }
        "" => return Err(FilterError::UnknownCmp(String::new())),
        other => return Err(FilterError::UnknownCmp(other.to_owned())),
    };
    // Every comparison names its tag, except existence checks (centrifuge allows an empty
    // key there: the empty tag name).
    if node.key.is_empty() && !matches!(cmp, Cmp::Exists | Cmp::NotExists) {
        return Err(FilterError::MissingKey(name.to_owned()));
    }
    Ok(cmp)
}

impl Node {
    fn matches(&self, tags: Option<&HashMap<String, String>>) -> bool {
        match self {
            Node::And(nodes) => nodes.iter().all(|n| n.matches(tags)),
            Node::Or(nodes) => nodes.iter().any(|n| n.matches(tags)),
            Node::Not(node) => !node.matches(tags),
            Node::Leaf { key, cmp } => {
                let tag = tags.and_then(|t| t.get(key)).map(String::as_str);
                match cmp {
                    Cmp::Eq(v) => tag == Some(v.as_str()),
                    Cmp::Neq(v) => tag != Some(v.as_str()),
                    // As in centrifuge: a missing tag reads as "" for set membership.
                    Cmp::In(vs) => vs.iter().any(|v| v == tag.unwrap_or_default()),
                    Cmp::Nin(vs) => !vs.iter().any(|v| v == tag.unwrap_or_default()),
                    Cmp::Exists => tag.is_some(),
                    Cmp::NotExists => tag.is_none(),
                    Cmp::StartsWith(v) => tag.is_some_and(|t| t.starts_with(v.as_str())),
                    Cmp::EndsWith(v) => tag.is_some_and(|t| t.ends_with(v.as_str())),
                    Cmp::Contains(v) => tag.is_some_and(|t| t.contains(v.as_str())),
                    Cmp::Number(v, accepted) => {
                        tag.and_then(Decimal::parse).is_some_and(|t| accepted.contains(&Some(t.cmp(v))))
                    }
                }
            }
        }
    }
}

/// A decimal number as written (`[+-]digits[.digits]`), compared exactly: tags are strings,
/// and "0.1" must not compare by its nearest binary fraction.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    /// Without leading zeros.
    int: String,
    /// Without trailing zeros.
    frac: String,
}

impl Decimal {
    fn parse(s: &str) -> Option<Decimal> {
        let (negative, rest) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let (int, frac) = rest.split_once('.').unwrap_or((rest, ""));
        let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() && frac.is_empty() || !digits(int) || !digits(frac) {
            return None;
        }
        let int = int.trim_start_matches('0').to_owned();
        let frac = frac.trim_end_matches('0').to_owned();
        // Negative zero is zero.
        let negative = negative && !(int.is_empty() && frac.is_empty());
        Some(Decimal { negative, int, frac })
    }

    fn cmp_magnitude(&self, other: &Decimal) -> Ordering {
        self.int
            .len()
            .cmp(&other.int.len())
            .then_with(|| self.int.cmp(&other.int))
            .then_with(|| self.frac.cmp(&other.frac))
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.negative, other.negative) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => self.cmp_magnitude(other),
            (true, true) => other.cmp_magnitude(self),
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FilterLimits = FilterLimits { max_depth: 4, max_bytes: 512 };

    fn parse(json: &str) -> Result<TagsFilter, FilterError> {
        let node: FilterNode = serde_json::from_str(json).unwrap();
        TagsFilter::compile(&node, LIMITS)
    }

    fn tags(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn check(filter: &str, pairs: &[(&str, &str)]) -> bool {
        parse(filter).unwrap().matches(Some(&tags(pairs)))
    }

    #[test]
    fn comparisons() {
        assert!(check(r#"{"key":"t","cmp":"eq","val":"a"}"#, &[("t", "a")]));
        assert!(!check(r#"{"key":"t","cmp":"eq","val":"a"}"#, &[("t", "b")]));
        assert!(!check(r#"{"key":"t","cmp":"eq","val":"a"}"#, &[]));
        assert!(check(r#"{"key":"t","cmp":"neq","val":"a"}"#, &[]));
        assert!(check(r#"{"key":"t","cmp":"in","vals":["a","b"]}"#, &[("t", "b")]));
        assert!(!check(r#"{"key":"t","cmp":"in","vals":["a","b"]}"#, &[("t", "c")]));
        assert!(check(r#"{"key":"t","cmp":"nin","vals":["a","b"]}"#, &[("t", "c")]));
        assert!(check(r#"{"key":"t","cmp":"ex"}"#, &[("t", "")]));
        assert!(check(r#"{"key":"t","cmp":"nex"}"#, &[("u", "")]));
        assert!(check(r#"{"key":"t","cmp":"sw","val":"ab"}"#, &[("t", "abc")]));
        assert!(check(r#"{"key":"t","cmp":"ew","val":"bc"}"#, &[("t", "abc")]));
        assert!(check(r#"{"key":"t","cmp":"ct","val":"b"}"#, &[("t", "abc")]));
        assert!(!check(r#"{"key":"t","cmp":"sw","val":"ab"}"#, &[]));
        // Numbers compare as decimals, not as strings.
        assert!(check(r#"{"key":"p","cmp":"gt","val":"9"}"#, &[("p", "10")]));
        assert!(check(r#"{"key":"p","cmp":"gte","val":"10.0"}"#, &[("p", "10")]));
        assert!(check(r#"{"key":"p","cmp":"lt","val":"-1.5"}"#, &[("p", "-2")]));
        assert!(check(r#"{"key":"p","cmp":"lte","val":"0.30"}"#, &[("p", "0.3")]));
        assert!(!check(r#"{"key":"p","cmp":"lt","val":"0.1"}"#, &[("p", "0.1")]));
        assert!(check(r#"{"key":"p","cmp":"gt","val":"-0.001"}"#, &[("p", "-0")]));
        assert!(!check(r#"{"key":"p","cmp":"gt","val":"1"}"#, &[("p", "abc")]));
        assert!(!check(r#"{"key":"p","cmp":"gt","val":"1"}"#, &[]));
        assert!(check(
            r#"{"key":"p","cmp":"gt","val":"99999999999999999999999"}"#,
            &[("p", "100000000000000000000000")]
        ));
    }

    #[test]
    fn logic() {
        let f = r#"{"op":"and","nodes":[{"key":"a","cmp":"eq","val":"1"},
            {"op":"or","nodes":[{"key":"b","cmp":"eq","val":"2"},{"op":"not","nodes":[{"key":"c","cmp":"ex"}]}]}]}"#;
        assert!(check(f, &[("a", "1"), ("b", "2"), ("c", "x")]));
        assert!(check(f, &[("a", "1")]));
        assert!(!check(f, &[("a", "1"), ("c", "x")]));
        assert!(!check(f, &[("b", "2")]));
        assert!(!parse(f).unwrap().matches(None));
    }

    #[test]
    fn refuses_malformed_filters() {
        let bad = [
            (r#"{"op":"xor","nodes":[{"key":"a","cmp":"ex"}]}"#, FilterError::UnknownOp("xor".into())),
            (r#"{"key":"a","cmp":"like","val":"x"}"#, FilterError::UnknownCmp("like".into())),
            (r#"{"key":"a"}"#, FilterError::UnknownCmp("".into())),
            (r#"{"cmp":"eq","val":"x"}"#, FilterError::MissingKey("eq".into())),
            (r#"{"key":"a","cmp":"eq"}"#, FilterError::NeedsVal("eq".into())),
            (r#"{"key":"a","cmp":"eq","val":"x","vals":["y"]}"#, FilterError::NeedsVal("eq".into())),
            (r#"{"key":"a","cmp":"in","val":"x"}"#, FilterError::NeedsVals("in".into())),
            (r#"{"key":"a","cmp":"ex","val":"x"}"#, FilterError::TakesNoValue("ex".into())),
            (r#"{"key":"a","cmp":"gt","val":"1e3"}"#, FilterError::NotANumber("gt".into())),
            (r#"{"op":"and"}"#, FilterError::NoNodes("and".into())),
            (
                r#"{"op":"not","nodes":[{"key":"a","cmp":"ex"},{"key":"b","cmp":"ex"}]}"#,
                FilterError::NotArity,
            ),
        ];
        for (json, err) in bad {
            assert_eq!(parse(json).unwrap_err(), err, "{json}");
        }
    }

    #[test]
    fn bounds_depth_and_size() {
        let leaf = r#"{"key":"a","cmp":"ex"}"#;
        let nest = |levels: usize| {
            let mut f = leaf.to_owned();
            for _ in 1..levels {
                f = format!(r#"{{"op":"not","nodes":[{f}]}}"#);
            }
            f
        };
        assert!(parse(&nest(4)).is_ok());
        assert_eq!(parse(&nest(5)).unwrap_err(), FilterError::TooDeep(4));
        let vals: Vec<String> = (0..40).map(|i| format!("\"value-{i}\"")).collect();
        let wide = format!(r#"{{"key":"a","cmp":"in","vals":[{}]}}"#, vals.join(","));
        assert_eq!(parse(&wide).unwrap_err(), FilterError::TooLarge(512));
        let leaves: Vec<&str> = (0..70).map(|_| leaf).collect();
        let many = format!(r#"{{"op":"or","nodes":[{}]}}"#, leaves.join(","));
        assert_eq!(parse(&many).unwrap_err(), FilterError::TooLarge(512));
    }
}
