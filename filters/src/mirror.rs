//! `RequestMirror`: which share of requests is copied to the mirror backend.

use crate::FilterError;

/// A `RequestMirror` fraction: whether this request is mirrored, given a uniform draw in `0..1_000_000`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MirrorFraction {
    /// Parts per million (100% = 1,000,000).
    pub ppm: u32,
}

impl MirrorFraction {
    /// Every request (the default when neither `percent` nor `fraction` is set).
    pub const ALL: MirrorFraction = MirrorFraction { ppm: 1_000_000 };

    /// From `percent` (0..=100) or `fraction` (numerator/denominator, denominator default 100); neither = 100%.
    ///
    /// Validated as the Gateway API CRD does: only one of `percent` and `fraction`; the numerator `>= 0`, the
    /// denominator `> 0` and the numerator `<=` the denominator. Errors name the field (`requestMirror.percent`,
    /// `requestMirror.fraction.numerator`, `requestMirror.fraction.denominator`). A fraction that is not a whole
    /// number of parts per million is rounded down (1/3 mirrors 333,333 in a million).
    pub fn new(
        percent: Option<i64>,
        fraction: Option<(i64, Option<i64>)>,
    ) -> Result<MirrorFraction, FilterError> {
        let invalid = |field: &str, message: String| FilterError::Invalid {
            field: format!("requestMirror.{field}"),
            message,
        };
        match (percent, fraction) {
            (Some(_), Some(_)) => Err(FilterError::Invalid {
                field: "requestMirror".into(),
                message: "only one of percent and fraction may be set".into(),
            }),
            (None, None) => Ok(MirrorFraction::ALL),
            (Some(percent), None) => {
                if !(0..=100).contains(&percent) {
                    return Err(invalid("percent", format!("{percent} is not in 0..=100")));
                }
                Ok(MirrorFraction {
                    ppm: percent as u32 * 10_000,
                })
            }
            (None, Some((numerator, denominator))) => {
                let denominator = denominator.unwrap_or(100);
                if numerator < 0 {
                    return Err(invalid(
                        "fraction.numerator",
                        format!("{numerator} is negative"),
                    ));
                }
                if denominator <= 0 {
                    return Err(invalid(
                        "fraction.denominator",
                        format!("{denominator} is not greater than 0"),
                    ));
                }
                if numerator > denominator {
                    return Err(invalid(
                        "fraction.numerator",
                        format!("{numerator} is greater than the denominator {denominator}"),
                    ));
                }
                // numerator <= denominator, so the quotient is at most 1,000,000; i128 cannot overflow.
                let ppm = numerator as i128 * 1_000_000 / denominator as i128;
                Ok(MirrorFraction { ppm: ppm as u32 })
            }
        }
    }

    /// Whether the request with this draw (uniform in `0..1_000_000`) is mirrored.
    pub fn selected(&self, draw_ppm: u32) -> bool {
        draw_ppm < self.ppm
    }

    /// Every request is mirrored: no draw needed.
    pub fn always(&self) -> bool {
        self.ppm >= 1_000_000
    }

    /// No request is mirrored (0%): the mirror can be skipped altogether.
    pub fn never(&self) -> bool {
        self.ppm == 0
    }
}
