//! `RequestMirror` fractions: percent and fraction per the Gateway API (validation names the field).

use waypoint_filters::{FilterError, MirrorFraction};

#[test]
fn fractions() {
    // (case, percent, fraction, parts per million)
    type Case = (&'static str, Option<i64>, Option<(i64, Option<i64>)>, u32);
    let cases: [Case; 14] = [
        ("neither is 100%", None, None, 1_000_000),
        ("percent 0", Some(0), None, 0),
        ("percent 1", Some(1), None, 10_000),
        ("percent 50", Some(50), None, 500_000),
        ("percent 100", Some(100), None, 1_000_000),
        ("fraction 0/100", None, Some((0, None)), 0),
        (
            "fraction 1, default denominator 100",
            None,
            Some((1, None)),
            10_000,
        ),
        (
            "fraction 100, default denominator",
            None,
            Some((100, None)),
            1_000_000,
        ),
        ("fraction 1/2", None, Some((1, Some(2))), 500_000),
        (
            "fraction 1/3 rounds down",
            None,
            Some((1, Some(3))),
            333_333,
        ),
        (
            "fraction 2/3 rounds down",
            None,
            Some((2, Some(3))),
            666_666,
        ),
        ("fraction 1/1_000_000", None, Some((1, Some(1_000_000))), 1),
        ("fraction 5/5", None, Some((5, Some(5))), 1_000_000),
        (
            "huge fraction",
            None,
            Some((i64::MAX / 2, Some(i64::MAX))),
            499_999,
        ),
    ];
    for (what, percent, fraction, ppm) in cases {
        let f = MirrorFraction::new(percent, fraction).unwrap();
        assert_eq!(f.ppm, ppm, "{what}");
        assert_eq!(f.always(), ppm == 1_000_000, "{what}");
        assert_eq!(f.never(), ppm == 0, "{what}");
    }
    assert_eq!(
        MirrorFraction::new(None, None).unwrap(),
        MirrorFraction::ALL
    );
}

#[test]
fn invalid_values_name_the_field() {
    type Case = (
        &'static str,
        Option<i64>,
        Option<(i64, Option<i64>)>,
        &'static str,
    );
    let cases: [Case; 10] = [
        ("both", Some(10), Some((1, None)), "requestMirror"),
        ("percent -1", Some(-1), None, "requestMirror.percent"),
        ("percent 101", Some(101), None, "requestMirror.percent"),
        (
            "percent huge",
            Some(i64::MAX),
            None,
            "requestMirror.percent",
        ),
        (
            "numerator -1",
            None,
            Some((-1, None)),
            "requestMirror.fraction.numerator",
        ),
        (
            "denominator 0",
            None,
            Some((0, Some(0))),
            "requestMirror.fraction.denominator",
        ),
        (
            "denominator -5",
            None,
            Some((1, Some(-5))),
            "requestMirror.fraction.denominator",
        ),
        (
            "numerator > denominator",
            None,
            Some((3, Some(2))),
            "requestMirror.fraction.numerator",
        ),
        (
            "numerator > default 100",
            None,
            Some((101, None)),
            "requestMirror.fraction.numerator",
        ),
        (
            "numerator min",
            None,
            Some((i64::MIN, Some(1))),
            "requestMirror.fraction.numerator",
        ),
    ];
    for (what, percent, fraction, field) in cases {
        let err = MirrorFraction::new(percent, fraction).unwrap_err();
        match &err {
            FilterError::Invalid { field: f, .. } => assert_eq!(f, field, "{what}: {err}"),
            other => panic!("{what}: {other:?}"),
        }
        assert!(err.to_string().starts_with(field), "{what}: {err}");
    }
}

#[test]
fn selected_matches_the_share() {
    let f = |ppm| MirrorFraction { ppm };
    assert!(!f(0).selected(0));
    assert!(f(1).selected(0));
    assert!(!f(1).selected(1));
    assert!(f(500_000).selected(499_999));
    assert!(!f(500_000).selected(500_000));
    assert!(MirrorFraction::ALL.selected(999_999));
    // Over a uniform sweep of draws the share is exact.
    for ppm in [0, 1, 10_000, 333_333, 500_000, 1_000_000] {
        let hits = (0..1_000_000).filter(|&d| f(ppm).selected(d)).count();
        assert_eq!(hits, ppm as usize);
    }
}
