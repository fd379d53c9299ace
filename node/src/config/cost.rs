//! Link costs as written in config: a validated floating-point number.
//!
//! Routing keeps its own fixed-point cost type; this one only guarantees that the number
//! is something routing can take (finite, positive, bounded).

use std::fmt;
use std::str::FromStr;

/// Why a number is not a link cost.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CostError {
    /// The text is not a number.
    #[error("{value:?} is not a number")]
    NotANumber {
        /// The text as given.
        value: String,
    },
    /// The number is NaN or infinite.
    #[error("link cost {value} is not a finite number")]
    NotFinite {
        /// The number given.
        value: f64,
    },
    /// The number is zero or negative.
    #[error("link cost {value} must be greater than 0")]
    NotPositive {
        /// The number given.
        value: f64,
    },
    /// The number is above [`LinkCost::MAX`].
    #[error("link cost {value} is above the maximum of {}", LinkCost::MAX.0)]
    TooLarge {
        /// The number given.
        value: f64,
    },
}

/// The cost of one link for routing: finite, greater than 0 and at most
/// [`LinkCost::MAX`]. Lower is preferred.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct LinkCost(f64);

impl LinkCost {
    /// Cost of a link nobody configured: Receptor's default, 1.0.
    pub const DEFAULT: Self = Self(1.0);

    /// Highest cost accepted; keeps path sums far from overflowing routing's fixed point.
    pub const MAX: Self = Self(1_000_000.0);

    /// Validates `value`.
    ///
    /// # Errors
    /// [`CostError`] when `value` is not finite, not above 0 or above [`LinkCost::MAX`].
    pub fn new(value: f64) -> Result<Self, CostError> {
        if !value.is_finite() {
            Err(CostError::NotFinite { value })
        } else if value <= 0.0 {
            Err(CostError::NotPositive { value })
        } else if value > Self::MAX.0 {
            Err(CostError::TooLarge { value })
        } else {
            Ok(Self(value))
        }
    }

    /// The cost as a number.
    pub fn as_f64(self) -> f64 {
        self.0
    }
}

impl Default for LinkCost {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for LinkCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for LinkCost {
    type Err = CostError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value: f64 = s.trim().parse().map_err(|_| CostError::NotANumber {
            value: s.to_owned(),
        })?;
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_positive_finite_costs() {
        assert_eq!(LinkCost::new(2.5).unwrap().as_f64(), 2.5);
        assert_eq!("1e6".parse::<LinkCost>().unwrap(), LinkCost::MAX);
        assert_eq!(LinkCost::default().as_f64(), 1.0);
    }

    #[test]
    fn rejects_bad_costs() {
        assert!(matches!(
            LinkCost::new(0.0),
            Err(CostError::NotPositive { .. })
        ));
        assert!(matches!(
            LinkCost::new(-1.0),
            Err(CostError::NotPositive { .. })
        ));
        assert!(matches!(
            LinkCost::new(f64::NAN),
            Err(CostError::NotFinite { .. })
        ));
        assert!(matches!(
            LinkCost::new(f64::INFINITY),
            Err(CostError::NotFinite { .. })
        ));
        assert!(matches!(
            LinkCost::new(1_000_000.5),
            Err(CostError::TooLarge { .. })
        ));
        assert!(matches!(
            "cheap".parse::<LinkCost>(),
            Err(CostError::NotANumber { .. })
        ));
    }
}
