//! `HeaderModifier`: compile errors name the header; apply follows Gateway API semantics (table-driven).

use http::header::{HeaderMap, HeaderName, HeaderValue};
use waypoint_filters::{FilterError, HeaderModifier};

fn strings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (n, v) in pairs {
        map.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    map
}

/// Headers as sorted `name: value` lines (values of one name in order).
fn lines(map: &HeaderMap) -> Vec<String> {
    let mut out: Vec<String> = map
        .iter()
        .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
        .collect();
    out.sort_by(|a, b| a.split(':').next().cmp(&b.split(':').next()));
    out
}

type Pairs = &'static [(&'static str, &'static str)];
type Names = &'static [&'static str];
/// (case, input, set, add, remove, output lines)
type ApplyCase = (&'static str, Pairs, Pairs, Pairs, Names, Names);

#[test]
fn apply() {
    let cases: [ApplyCase; 9] = [
        ("nothing", &[("a", "1")], &[], &[], &[], &["a: 1"]),
        (
            "set adds",
            &[],
            &[("my-header", "bar")],
            &[],
            &[],
            &["my-header: bar"],
        ),
        (
            "set overwrites every value",
            &[("my-header", "1"), ("my-header", "2")],
            &[("my-header", "bar")],
            &[],
            &[],
            &["my-header: bar"],
        ),
        (
            "add appends",
            &[("my-header", "foo")],
            &[],
            &[("my-header", "bar")],
            &[],
            &["my-header: foo", "my-header: bar"],
        ),
        ("add to absent", &[], &[], &[("x", "1")], &[], &["x: 1"]),
        (
            "remove",
            &[("a", "1"), ("b", "2"), ("b", "3")],
            &[],
            &[],
            &["b", "absent"],
            &["a: 1"],
        ),
        (
            "case-insensitive",
            &[("my-header", "foo")],
            &[("My-Header", "bar")],
            &[("MY-HEADER", "baz")],
            &["A"],
            &["my-header: bar", "my-header: baz"],
        ),
        (
            "remove then set",
            &[("a", "1")],
            &[("a", "2")],
            &[],
            &["a"],
            &["a: 2"],
        ),
        (
            "first of duplicates wins",
            &[],
            &[("a", "1"), ("A", "2")],
            &[],
            &[],
            &["a: 1"],
        ),
    ];
    for (what, input, set, add, remove, want) in cases {
        let remove: Vec<String> = remove.iter().map(|s| s.to_string()).collect();
        let m = HeaderModifier::compile(&strings(set), &strings(add), &remove).unwrap();
        let mut map = headers(input);
        m.apply(&mut map);
        assert_eq!(lines(&map), want, "{what}");
        assert_eq!(
            m.is_empty(),
            set.is_empty() && add.is_empty() && remove.is_empty(),
            "{what}"
        );
    }
}

#[test]
fn compile_errors_name_the_header() {
    let name = |n: &str| FilterError::InvalidName { name: n.into() };
    let cases: [(&str, Pairs, Pairs, &[&str], FilterError); 5] = [
        (
            "space in set name",
            &[("bad name", "v")],
            &[],
            &[],
            name("bad name"),
        ),
        ("empty add name", &[], &[("", "v")], &[], name("")),
        ("colon in remove name", &[], &[], &["x:y"], name("x:y")),
        (
            "newline in value",
            &[("x-ok", "a\nb")],
            &[],
            &[],
            FilterError::InvalidValue {
                name: "x-ok".into(),
                value: "a\nb".into(),
            },
        ),
        (
            "nul in add value",
            &[],
            &[("X-Ok", "a\0")],
            &[],
            FilterError::InvalidValue {
                name: "X-Ok".into(),
                value: "a\0".into(),
            },
        ),
    ];
    for (what, set, add, remove, want) in cases {
        let remove: Vec<String> = remove.iter().map(|s| s.to_string()).collect();
        let err = HeaderModifier::compile(&strings(set), &strings(add), &remove).unwrap_err();
        assert_eq!(err, want, "{what}");
        assert!(
            err.to_string().contains(match &err {
                FilterError::InvalidName { name } | FilterError::InvalidValue { name, .. } =>
                    name.as_str(),
                FilterError::Invalid { field, .. } => panic!("{what}: unexpected field {field}"),
            }),
            "{what}: {err}"
        );
    }
}
