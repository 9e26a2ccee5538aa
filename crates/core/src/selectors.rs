//! Label and field selectors, in upstream's string syntax.

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    /// `key>n`, `key<n` (label selectors accept integers).
    Gt(String, i64),
    Lt(String, i64),
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

fn valid_key(k: &str) -> bool {
    super::object::check_label_key(k).is_none()
}

fn valid_value(v: &str) -> bool {
    super::object::check_label_value(v).is_none()
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector { requirements });
        }
        for part in split_top(s) {
            let p = part.trim();
            if p.is_empty() {
                return Err(format!(
                    "unable to parse requirement: found '', expected: identifier in {s:?}"
                ));
            }
            let req = parse_requirement(p)?;
            let key = match &req {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k)
                | Requirement::Gt(k, _)
                | Requirement::Lt(k, _) => k,
            };
            if !valid_key(key) {
                return Err(format!(
                    "unable to parse requirement: invalid label key {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
                ));
            }
            requirements.push(req);
        }
        Ok(LabelSelector { requirements })
    }

    /// Builds a selector from a `metav1.LabelSelector` object (matchLabels + matchExpressions).
    pub fn from_object(sel: &Value) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                requirements.push(Requirement::Equals(
                    k.clone(),
                    v.as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        for e in sel
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = e
                .get("key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let values: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            let req = match e.get("operator").and_then(Value::as_str) {
                Some("In") => Requirement::In(key, values),
                Some("NotIn") => Requirement::NotIn(key, values),
                Some("Exists") => Requirement::Exists(key),
                Some("DoesNotExist") => Requirement::NotExists(key),
                other => return Err(format!("{other:?} is not a valid label selector operator")),
            };
            requirements.push(req);
        }
        Ok(LabelSelector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    /// Matches the `metadata.labels` of an object, read in place (watch fan-out matches every
    /// event against every watcher's selector).
    pub fn matches_object(&self, obj: &Value) -> bool {
        if self.is_empty() {
            return true;
        }
        // Not `pointer`: it allocates for every step of its path, and this runs for every
        // watcher on every event.
        let labels = member(obj, "metadata").and_then(|m| member(m, "labels"));
        self.matches_with(|k| member(labels?, k).map(|v| v.as_str().unwrap_or_default()))
    }

    fn matches_with<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| !vs.iter().any(|v| v == l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
            Requirement::Gt(k, n) => label(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l > *n),
            Requirement::Lt(k, n) => label(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l < *n),
        })
    }
}

fn parse_values(s: &str, whole: &str) -> Result<Vec<String>, String> {
    let inner = s.trim();
    let inner = inner
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .ok_or_else(|| {
            format!("unable to parse requirement: found '{inner}', expected: '(' in {whole:?}")
        })?;
    let vals: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    for v in &vals {
        if !valid_value(v) {
            return Err(format!("invalid label value: {v:?}"));
        }
    }
    Ok(vals)
}

fn parse_requirement(p: &str) -> Result<Requirement, String> {
    if let Some(k) = p.strip_prefix('!') {
        return Ok(Requirement::NotExists(k.trim().to_string()));
    }
    for (op, ctor) in [("!=", 0), ("==", 1), ("=", 1)] {
        if let Some((k, v)) = p.split_once(op) {
            let (k, v) = (k.trim().to_string(), v.trim().to_string());
            if !valid_value(&v) {
                return Err(format!(
                    "invalid label value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'"
                ));
            }
            return Ok(if ctor == 0 {
                Requirement::NotEquals(k, v)
            } else {
                Requirement::Equals(k, v)
            });
        }
    }
    for (op, gt) in [(">", true), ("<", false)] {
        if let Some((k, v)) = p.split_once(op) {
            let n = v.trim().parse::<i64>().map_err(|_| {
                format!("for 'Gt', 'Lt' operators, the value must be an integer: {v:?}")
            })?;
            let k = k.trim().to_string();
            return Ok(if gt {
                Requirement::Gt(k, n)
            } else {
                Requirement::Lt(k, n)
            });
        }
    }
    let words: Vec<&str> = p.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let rest = words[1].trim_start();
        if let Some(v) = rest.strip_prefix("notin") {
            return Ok(Requirement::NotIn(
                words[0].to_string(),
                parse_values(v, p)?,
            ));
        }
        if let Some(v) = rest.strip_prefix("in") {
            return Ok(Requirement::In(words[0].to_string(), parse_values(v, p)?));
        }
        return Err(format!(
            "unable to parse requirement: found '{rest}', expected: in, notin, =, ==, !=, gt, lt"
        ));
    }
    Ok(Requirement::Exists(p.to_string()))
}

/// A field selector: `metadata.name=x,spec.nodeName!=`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector {
    pub terms: Vec<(String, bool, String)>, // (field, equals?, value)
}

impl FieldSelector {
    pub fn parse(s: &str) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector { terms });
        }
        for part in s.split(',') {
            let part = part.trim();
            let term = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                ));
            };
            terms.push((term.0.trim().to_string(), term.1, term.2.trim().to_string()));
        }
        Ok(FieldSelector { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Matches using `value_of(field)`; unknown fields were rejected earlier by `check`.
    pub fn matches(&self, value_of: impl Fn(&str) -> Option<String>) -> bool {
        self.terms.iter().all(|(f, eq, v)| {
            let actual = value_of(f).unwrap_or_default();
            (actual == *v) == *eq
        })
    }
}

/// A member of a JSON object. Objects' metadata and labels have a few members, and comparing
/// a few keys costs less than hashing the key (what `get` does); a large object is hashed.
fn member<'a>(obj: &'a Value, key: &str) -> Option<&'a Value> {
    let map = obj.as_object()?;
    if map.len() > 16 {
        return map.get(key);
    }
    map.iter().find_map(|(k, v)| (k == key).then_some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_operators() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web,db)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("missing notin (x)", true),
            ("app=web,tier in (front)", true),
            ("app=web,tier=back", false),
            ("n>4", true),
            ("n<5", false),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&l),
                want,
                "{sel}"
            );
        }
        for bad in ["app in web", "=x", "app=we b", ",", "app in (a,)x"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn field_selector() {
        let f = FieldSelector::parse("metadata.name=a,spec.nodeName!=").unwrap();
        assert!(f.matches(|k| Some(if k == "metadata.name" {
            "a".into()
        } else {
            "n1".into()
        })));
        assert!(!f.matches(|k| Some(if k == "metadata.name" {
            "a".into()
        } else {
            String::new()
        })));
        assert!(FieldSelector::parse("nonsense").is_err());
    }

    #[test]
    fn objects_with_few_or_many_labels_match_by_key() {
        for n in [3, 40] {
            let labels: serde_json::Map<String, Value> = (0..n)
                .map(|i| (format!("k{i}"), Value::from(format!("v{i}"))))
                .collect();
            let obj =
                serde_json::json!({"kind": "Pod", "metadata": {"name": "p", "labels": labels}});
            let last = format!("k{}=v{},k0", n - 1, n - 1);
            assert!(LabelSelector::parse(&last).unwrap().matches_object(&obj));
            assert!(!LabelSelector::parse("k1=v0").unwrap().matches_object(&obj));
            assert!(
                !LabelSelector::parse(&format!("k{n}"))
                    .unwrap()
                    .matches_object(&obj)
            );
            assert!(
                LabelSelector::parse(&format!("!k{n}"))
                    .unwrap()
                    .matches_object(&obj)
            );
        }
    }
}
