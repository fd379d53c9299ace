//! Work unit identity and life cycle: [`UnitId`] and [`UnitState`].
//!
//! Owns the id format and the state machine (which moves are legal). No IO, apart from
//! [`UnitId::random`] asking the OS for random bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Number of characters in a unit id (Receptor also uses 8).
pub const UNIT_ID_LEN: usize = 8;

/// The characters a unit id is drawn from: `[0-9A-Za-z]`, in ASCII order so that ids sort
/// the same as their strings.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Random bytes at or above this value are discarded, so that `byte % 62` is uniform:
/// 248 = 4 × 62 is the largest multiple of 62 that fits in a byte.
const UNBIASED_LIMIT: u8 = 248;

/// A work unit's id: exactly [`UNIT_ID_LEN`] characters of `[0-9A-Za-z]`.
///
/// Ids are unique per node (the store redraws on collision), not across the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitId([u8; UNIT_ID_LEN]);

/// Why a string is not a valid [`UnitId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitIdError {
    /// The string did not have exactly [`UNIT_ID_LEN`] bytes.
    #[error("unit id {value:?} has {len} bytes, expected {UNIT_ID_LEN}")]
    WrongLength {
        /// The offending value.
        value: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The string held a character outside `[0-9A-Za-z]`.
    #[error("unit id {value:?} may only contain ASCII letters and digits")]
    BadCharacter {
        /// The offending value.
        value: String,
    },
}

impl UnitId {
    /// Draws a fresh id from the OS random source, each character uniform over the
    /// alphabet (rejection sampling, no modulo bias).
    ///
    /// # Errors
    /// The OS random source failed.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut id = [0u8; UNIT_ID_LEN];
        let mut filled = 0;
        while filled < UNIT_ID_LEN {
            // 32 bytes nearly always suffice: each byte is kept with probability 248/256.
            let mut pool = [0u8; 32];
            getrandom::fill(&mut pool)?;
            filled = fill_from_bytes(&mut id, filled, &pool);
        }
        Ok(Self(id))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        // Only ASCII alphanumerics are ever stored (checked by `FromStr` and `random`).
        std::str::from_utf8(&self.0).expect("invariant: unit ids are ASCII")
    }
}

/// Maps random `bytes` onto alphabet characters into `id[filled..]`, discarding bytes that
/// would bias the result; returns the new fill level.
fn fill_from_bytes(id: &mut [u8; UNIT_ID_LEN], mut filled: usize, bytes: &[u8]) -> usize {
    for &b in bytes {
        if filled == UNIT_ID_LEN {
            break;
        }
        if b < UNBIASED_LIMIT {
            id[filled] = ALPHABET[usize::from(b) % ALPHABET.len()];
            filled += 1;
        }
    }
    filled
}

impl fmt::Display for UnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for UnitId {
    type Err = UnitIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes: [u8; UNIT_ID_LEN] =
            s.as_bytes()
                .try_into()
                .map_err(|_| UnitIdError::WrongLength {
                    value: s.to_owned(),
                    len: s.len(),
                })?;
        if !bytes.iter().all(u8::is_ascii_alphanumeric) {
            return Err(UnitIdError::BadCharacter {
                value: s.to_owned(),
            });
        }
        Ok(Self(bytes))
    }
}

impl Serialize for UnitId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for UnitId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        value.parse().map_err(serde::de::Error::custom)
    }
}

/// A submitting node's name for one submission, chosen and recorded (durably) before the
/// submission leaves: a submitter that restarted without knowing whether its submission
/// arrived sends it again under the same nonce, and the running node answers with the unit
/// it already made for it instead of making a second one. Nonces are scoped to the
/// submitter's key, so one peer's nonces never reach another's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubmitNonce(pub [u8; 16]);

impl SubmitNonce {
    /// A fresh random nonce.
    ///
    /// # Errors
    /// When the OS random source fails.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for SubmitNonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl Serialize for SubmitNonce {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for SubmitNonce {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            return <[u8; 16]>::deserialize(d).map(Self);
        }
        let text = String::deserialize(d)?;
        let bad =
            || serde::de::Error::custom(format!("submit nonce {text:?} is not 32 hex digits"));
        if text.len() != 32 || !text.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(bytes))
    }
}

/// Where a work unit is in its life cycle. The numeric codes and names are Receptor's
/// (`workunitbase.go`), so `work status` output stays compatible.
///
/// Unlike Receptor's `IsComplete`, [`UnitState::is_terminal`] counts `Canceled` as terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnitState {
    /// Created, waiting for input, or a remote unit not yet started (code 0).
    Pending,
    /// The work is running (code 1).
    Running,
    /// The work finished successfully (code 2).
    Succeeded,
    /// The work failed, or could not be started or resumed (code 3).
    Failed,
    /// The work was cancelled on request (code 4).
    Canceled,
}

/// A state change that the life cycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a work unit cannot move from {from} to {to}")]
pub struct TransitionError {
    /// The state the unit was in.
    pub from: UnitState,
    /// The state that was asked for.
    pub to: UnitState,
}

impl UnitState {
    /// Every state, in code order.
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Canceled,
    ];

    /// Receptor's numeric code (`State` in the status JSON).
    pub fn code(self) -> u8 {
        match self {
            Self::Pending => 0,
            Self::Running => 1,
            Self::Succeeded => 2,
            Self::Failed => 3,
            Self::Canceled => 4,
        }
    }

    /// The state with Receptor's numeric `code`, if there is one.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// Receptor's `StateName` for this state.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Canceled => "Canceled",
        }
    }

    /// Whether the unit is finished for good: `Succeeded`, `Failed` or `Canceled`.
    pub fn is_terminal(self) -> bool {
        match self {
            Self::Pending | Self::Running => false,
            Self::Succeeded | Self::Failed | Self::Canceled => true,
        }
    }

    /// Moves to `to` if the life cycle allows it: Pending → Running, Failed or Canceled;
    /// Running → Succeeded, Failed or Canceled. Nothing leaves a terminal state, and staying
    /// in the same state is not a move.
    ///
    /// # Errors
    /// [`TransitionError`] for any other move.
    pub fn transition(self, to: Self) -> Result<Self, TransitionError> {
        use UnitState::{Canceled, Failed, Pending, Running, Succeeded};
        match (self, to) {
            (Pending, Running | Failed | Canceled) | (Running, Succeeded | Failed | Canceled) => {
                Ok(to)
            }
            _ => Err(TransitionError { from: self, to }),
        }
    }
}

impl fmt::Display for UnitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Serialised as Receptor's numeric code.
impl Serialize for UnitState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.code())
    }
}

impl<'de> Deserialize<'de> for UnitState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = u8::deserialize(d)?;
        Self::from_code(code)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown work unit state {code}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn parses_and_displays_valid_ids() {
        for s in ["abcd1234", "ZZZZZZZZ", "00000000", "aB3xY9z0"] {
            let id: UnitId = s.parse().unwrap();
            assert_eq!(id.to_string(), s);
            assert_eq!(id.as_str(), s);
        }
    }

    #[test]
    fn rejects_malformed_ids() {
        for s in ["", "abc", "abcd12345", "abcd 123"] {
            assert!(s.parse::<UnitId>().is_err(), "{s:?} accepted");
        }
        assert!(matches!(
            "abcd123".parse::<UnitId>(),
            Err(UnitIdError::WrongLength { len: 7, .. })
        ));
        assert!(matches!(
            "abcd-123".parse::<UnitId>(),
            Err(UnitIdError::BadCharacter { .. })
        ));
        // Eight bytes but not eight ASCII characters.
        assert!("abcdé12".parse::<UnitId>().is_err());
    }

    #[test]
    fn serde_uses_the_string_and_validates() {
        let id: UnitId = "Abc12345".parse().unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"Abc12345\"");
        let back: UnitId = serde_json::from_str("\"Abc12345\"").unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<UnitId>("\"Abc/2345\"").is_err());
    }

    #[test]
    fn random_ids_are_well_formed() {
        for _ in 0..1000 {
            let id = UnitId::random().unwrap();
            assert_eq!(id.as_str().parse::<UnitId>().unwrap(), id);
        }
    }

    #[test]
    fn byte_mapping_is_unbiased() {
        // Feed every byte value once: each of the 62 characters must come out exactly
        // 4 times, and the 8 biased bytes (248..=255) must be discarded.
        let mut counts: HashMap<u8, usize> = HashMap::new();
        let all: Vec<u8> = (0..=255).collect();
        for chunk in all.chunks(UNIT_ID_LEN) {
            let mut id = [0u8; UNIT_ID_LEN];
            let filled = fill_from_bytes(&mut id, 0, chunk);
            for &c in &id[..filled] {
                *counts.entry(c).or_default() += 1;
            }
        }
        assert_eq!(counts.len(), 62);
        assert!(counts.values().all(|&n| n == 4), "{counts:?}");
    }

    #[test]
    fn codes_and_names_match_receptor() {
        let expected = [
            (UnitState::Pending, 0, "Pending"),
            (UnitState::Running, 1, "Running"),
            (UnitState::Succeeded, 2, "Succeeded"),
            (UnitState::Failed, 3, "Failed"),
            (UnitState::Canceled, 4, "Canceled"),
        ];
        for (state, code, name) in expected {
            assert_eq!(state.code(), code);
            assert_eq!(UnitState::from_code(code), Some(state));
            assert_eq!(state.name(), name);
            assert_eq!(state.to_string(), name);
            assert_eq!(serde_json::to_string(&state).unwrap(), code.to_string());
        }
        assert_eq!(UnitState::from_code(5), None);
        assert!(serde_json::from_str::<UnitState>("5").is_err());
    }

    #[test]
    fn canceled_is_terminal() {
        use UnitState::*;
        assert!(!Pending.is_terminal());
        assert!(!Running.is_terminal());
        assert!(Succeeded.is_terminal());
        assert!(Failed.is_terminal());
        assert!(Canceled.is_terminal());
    }

    #[test]
    fn transition_matrix_allows_only_legal_moves() {
        use UnitState::*;
        let legal = [
            (Pending, Running),
            (Pending, Failed),
            (Pending, Canceled),
            (Running, Succeeded),
            (Running, Failed),
            (Running, Canceled),
        ];
        for from in UnitState::ALL {
            for to in UnitState::ALL {
                let result = from.transition(to);
                if legal.contains(&(from, to)) {
                    assert_eq!(result, Ok(to), "{from} -> {to}");
                } else {
                    assert_eq!(result, Err(TransitionError { from, to }), "{from} -> {to}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn random_sequences_never_leave_a_terminal_state(
            moves in proptest::collection::vec(0u8..5, 0..64)
        ) {
            let mut state = UnitState::Pending;
            let mut terminal: Option<UnitState> = None;
            for code in moves {
                let to = UnitState::from_code(code).unwrap();
                if let Ok(next) = state.transition(to) {
                    state = next;
                }
                if let Some(t) = terminal {
                    prop_assert_eq!(state, t);
                }
                if state.is_terminal() {
                    terminal = Some(state);
                }
            }
        }
    }
}
