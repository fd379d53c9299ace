//! Text armour for binary documents kept in files: a `BEGIN` line naming the kind, base64
//! lines, an `END` line, like PEM, so a certificate can be pasted into a config management
//! system or an email and still be recognised for what it is. No IO.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Width of a base64 line, as PEM uses.
const LINE_WIDTH: usize = 64;

/// Largest armoured document accepted: certificates and revocation lists are far smaller.
pub(super) const MAX_ARMORED_LEN: usize = 1 << 20;

/// Why armoured text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArmorError {
    /// No `-----BEGIN <label>-----` line.
    #[error("no \"-----BEGIN {label}-----\" line")]
    NoBegin {
        /// The label looked for.
        label: &'static str,
    },
    /// No matching `END` line.
    #[error("no \"-----END {label}-----\" line")]
    NoEnd {
        /// The label looked for.
        label: &'static str,
    },
    /// The body is not base64.
    #[error("the body is not base64")]
    BadBase64,
    /// The text is larger than any document of this kind.
    #[error("larger than {MAX_ARMORED_LEN} bytes")]
    TooLarge,
}

/// Armours `bytes` under `label`.
pub(super) fn encode(label: &str, bytes: &[u8]) -> String {
    let body = STANDARD.encode(bytes);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(LINE_WIDTH) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The bytes of the first document labelled `label` in `text`; lines outside it (comments a
/// user added) are ignored.
///
/// # Errors
/// [`ArmorError`] when the markers are missing or the body is not base64.
pub(super) fn decode(label: &'static str, text: &str) -> Result<Vec<u8>, ArmorError> {
    if text.len() > MAX_ARMORED_LEN {
        return Err(ArmorError::TooLarge);
    }
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut lines = text.lines().map(str::trim);
    if !lines.by_ref().any(|l| l == begin) {
        return Err(ArmorError::NoBegin { label });
    }
    let mut body = String::new();
    for line in lines {
        if line == end {
            return STANDARD.decode(body).map_err(|_| ArmorError::BadBase64);
        }
        body.push_str(line);
    }
    Err(ArmorError::NoEnd { label })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ignores_surrounding_lines() {
        let bytes: Vec<u8> = (0..=255).collect();
        let text = format!("# node1's certificate\n{}trailing\n", encode("X", &bytes));
        assert_eq!(decode("X", &text).unwrap(), bytes);
        assert!(text.lines().all(|l| l.len() <= LINE_WIDTH + 20));
    }

    #[test]
    fn refuses_missing_markers_and_bad_base64() {
        assert_eq!(
            decode("X", "nothing"),
            Err(ArmorError::NoBegin { label: "X" })
        );
        assert_eq!(
            decode("X", "-----BEGIN X-----\nAAAA\n"),
            Err(ArmorError::NoEnd { label: "X" })
        );
        assert_eq!(
            decode("X", "-----BEGIN X-----\n!!!\n-----END X-----\n"),
            Err(ArmorError::BadBase64)
        );
        assert_eq!(
            decode("Y", &encode("X", b"a")),
            Err(ArmorError::NoBegin { label: "Y" })
        );
    }
}
