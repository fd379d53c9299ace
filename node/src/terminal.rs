//! Text that others control, made safe to print on a terminal.
//!
//! A job's output, a worker's events, a peer's adverts and a remote node's replies reach the
//! user's terminal. A terminal obeys escape sequences: OSC sets the window title or the
//! clipboard, CSI moves the cursor or asks the terminal to answer (typing into the shell),
//! DCS/APC/PM carry commands for the terminal itself. This module owns the one filter every
//! such text goes through: colour and style (SGR, `ESC [ digits ; digits m`) is kept,
//! `\n`, `\t` and `\r` are kept, and every other escape sequence, C0 and C1 control
//! character is dropped. Invalid UTF-8 becomes U+FFFD, so an 8-bit C1 byte can never reach
//! the terminal either.
//!
//! Sans-IO: [`Sanitizer`] turns input chunks into output bytes and keeps its state across
//! chunks, so a stream split anywhere gives the same output as the whole.

use std::borrow::Cow;

/// The longest SGR sequence kept, in bytes (`ESC [` and parameters). Real colour
/// sequences, 24-bit ones included, are well under it; longer ones are dropped.
const MAX_SGR_LEN: usize = 64;

/// The longest string sequence (OSC, DCS, APC, PM, SOS) skipped before the filter gives up
/// on finding its end and shows what follows as text: output is never swallowed forever.
const MAX_STRING_LEN: usize = 4096;

/// What the filter keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Output text: SGR colour, `\n`, `\t` and `\r` are kept.
    Colour,
    /// One line of a table or a message: no escape at all (colour would break the
    /// alignment), and `\n`, `\t`, `\r` become spaces so a value cannot forge extra lines.
    Line,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Plain text.
    Ground,
    /// Inside a multi-byte UTF-8 character that needs `need` more bytes.
    Utf8 { need: u8 },
    /// After ESC.
    Escape,
    /// After ESC and intermediate bytes (`ESC ( B`), until the final byte.
    EscIntermediate,
    /// Inside `ESC [`; `keep` while it can still be a kept SGR.
    Csi { keep: bool },
    /// Inside OSC, DCS, APC, PM or SOS, `len` bytes in.
    Skip { len: usize },
    /// ESC inside a skipped string: `\` ends it (ST).
    SkipEscape,
}

/// A streaming terminal filter (see the module docs).
#[derive(Debug, Clone)]
pub struct Sanitizer {
    mode: Mode,
    state: State,
    /// The bytes of an SGR or UTF-8 character not yet complete.
    pending: Vec<u8>,
}

impl Sanitizer {
    /// A filter in `mode`.
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            state: State::Ground,
            pending: Vec::new(),
        }
    }

    /// Filters `input`, appending what may be printed to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &byte in input {
            while !self.step(byte, out) {}
        }
    }

    /// Ends the input: an incomplete character becomes U+FFFD, an incomplete sequence is
    /// dropped.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let State::Utf8 { .. } = self.state {
            out.extend_from_slice(REPLACEMENT);
        }
        self.pending.clear();
        self.state = State::Ground;
    }

    /// Handles one byte; `false` when the byte must be handled again in the new state.
    fn step(&mut self, byte: u8, out: &mut Vec<u8>) -> bool {
        match self.state {
            State::Ground => self.ground(byte, out),
            State::Utf8 { need } => return self.utf8(byte, need, out),
            State::Escape => return self.escape(byte),
            State::EscIntermediate => return self.esc_intermediate(byte),
            State::Csi { keep } => return self.csi(byte, keep, out),
            State::Skip { len } => return self.skip(byte, len),
            State::SkipEscape => {
                if byte == b'\\' {
                    self.state = State::Ground;
                } else {
                    self.state = State::Escape;
                    return false;
                }
            }
        }
        true
    }

    fn ground(&mut self, byte: u8, out: &mut Vec<u8>) {
        match byte {
            0x1b => self.state = State::Escape,
            b'\n' | b'\t' | b'\r' => out.push(match self.mode {
                Mode::Colour => byte,
                Mode::Line => b' ',
            }),
            0x00..=0x1f | 0x7f => {}
            0x20..=0x7e => out.push(byte),
            0xc2..=0xdf => self.start_utf8(byte, 1),
            0xe0..=0xef => self.start_utf8(byte, 2),
            0xf0..=0xf4 => self.start_utf8(byte, 3),
            // A continuation byte without a lead, an 8-bit C1 byte, or a byte UTF-8 never uses.
            _ => out.extend_from_slice(REPLACEMENT),
        }
    }

    fn start_utf8(&mut self, lead: u8, need: u8) {
        self.pending.clear();
        self.pending.push(lead);
        self.state = State::Utf8 { need };
    }

    fn utf8(&mut self, byte: u8, need: u8, out: &mut Vec<u8>) -> bool {
        if byte & 0xc0 != 0x80 {
            out.extend_from_slice(REPLACEMENT);
            self.pending.clear();
            self.state = State::Ground;
            return false;
        }
        self.pending.push(byte);
        if need > 1 {
            self.state = State::Utf8 { need: need - 1 };
            return true;
        }
        match std::str::from_utf8(&self.pending) {
            Ok(text) if text.chars().all(|c| !is_c1(c)) => out.extend_from_slice(&self.pending),
            Ok(_) => {}
            Err(_) => out.extend_from_slice(REPLACEMENT),
        }
        self.pending.clear();
        self.state = State::Ground;
        true
    }

    fn escape(&mut self, byte: u8) -> bool {
        self.state = match byte {
            b'[' => {
                self.pending.clear();
                self.pending.extend_from_slice(b"\x1b[");
                State::Csi { keep: true }
            }
            b']' | b'P' | b'_' | b'^' | b'X' => State::Skip { len: 0 },
            0x1b => State::Escape,
            0x20..=0x2f => State::EscIntermediate,
            0x30..=0x7e => State::Ground,
            _ => {
                self.state = State::Ground;
                return false;
            }
        };
        true
    }

    fn esc_intermediate(&mut self, byte: u8) -> bool {
        match byte {
            0x20..=0x2f => true,
            0x30..=0x7e => {
                self.state = State::Ground;
                true
            }
            _ => {
                self.state = State::Ground;
                false
            }
        }
    }

    fn csi(&mut self, byte: u8, keep: bool, out: &mut Vec<u8>) -> bool {
        match byte {
            0x30..=0x3f => {
                let sgr_param = byte.is_ascii_digit() || byte == b';' || byte == b':';
                if keep && sgr_param && self.pending.len() < MAX_SGR_LEN {
                    self.pending.push(byte);
                } else {
                    self.drop_csi();
                }
                true
            }
            0x20..=0x2f => {
                self.drop_csi();
                true
            }
            0x40..=0x7e => {
                if keep && byte == b'm' && self.mode == Mode::Colour {
                    out.extend_from_slice(&self.pending);
                    out.push(b'm');
                }
                self.pending.clear();
                self.state = State::Ground;
                true
            }
            // A control character or ESC cancels the sequence, as terminals do.
            _ => {
                self.pending.clear();
                self.state = State::Ground;
                false
            }
        }
    }

    fn drop_csi(&mut self) {
        self.pending.clear();
        self.state = State::Csi { keep: false };
    }

    fn skip(&mut self, byte: u8, len: usize) -> bool {
        self.state = match byte {
            0x07 | 0x18 | 0x1a => State::Ground,
            0x1b => State::SkipEscape,
            // A newline ends what could be hidden: later lines always show.
            b'\n' => {
                self.state = State::Ground;
                return false;
            }
            _ if len >= MAX_STRING_LEN => State::Ground,
            _ => State::Skip { len: len + 1 },
        };
        true
    }
}

/// U+FFFD, in place of bytes that are not UTF-8.
const REPLACEMENT: &[u8] = "\u{fffd}".as_bytes();

/// A C1 control character (U+0080 to U+009F): some terminals obey it even as UTF-8.
fn is_c1(c: char) -> bool {
    ('\u{80}'..='\u{9f}').contains(&c)
}

/// Whether `text` would pass [`Mode::Colour`] unchanged without looking closer: no ESC, no
/// control character but `\n`, `\t`, `\r`, no C1.
fn is_plain(text: &str, mode: Mode) -> bool {
    let bytes_ok = text.bytes().all(|b| match b {
        b'\n' | b'\t' | b'\r' => mode == Mode::Colour,
        0x00..=0x1f | 0x7f => false,
        _ => true,
    });
    bytes_ok && !text.chars().any(is_c1)
}

/// Filters a whole text in `mode`; borrows it when nothing needs dropping.
pub fn filter(text: &str, mode: Mode) -> Cow<'_, str> {
    if is_plain(text, mode) {
        return Cow::Borrowed(text);
    }
    let mut out = Vec::with_capacity(text.len());
    let mut sanitizer = Sanitizer::new(mode);
    sanitizer.push(text.as_bytes(), &mut out);
    sanitizer.finish(&mut out);
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Output text for a terminal: colour kept, every other control sequence dropped.
pub fn sanitize(text: &str) -> Cow<'_, str> {
    filter(text, Mode::Colour)
}

/// One line for a table cell or message: no escapes, no line breaks.
pub fn one_line(text: &str) -> Cow<'_, str> {
    filter(text, Mode::Line)
}

/// Serialized JSON made safe to print unchanged in meaning: serde_json escapes C0 controls
/// inside strings but leaves C1 characters raw, which this writes as `\u00XX` escapes.
pub fn json_safe(json: &str) -> Cow<'_, str> {
    if !json.chars().any(is_c1) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if is_c1(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn colour(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut sanitizer = Sanitizer::new(Mode::Colour);
        sanitizer.push(bytes, &mut out);
        sanitizer.finish(&mut out);
        out
    }

    /// Every ESC in `out` starts `ESC [ [0-9;:]* m`; no other control character is there.
    fn assert_only_sgr(out: &[u8], allow_breaks: bool) {
        let text = std::str::from_utf8(out).expect("output is UTF-8");
        assert!(!text.chars().any(is_c1), "C1 in {text:?}");
        let mut i = 0;
        while i < out.len() {
            match out[i] {
                0x1b => {
                    assert_eq!(out.get(i + 1), Some(&b'['), "non-CSI escape in {text:?}");
                    let end = (i + 2..out.len())
                        .find(|&j| !matches!(out[j], b'0'..=b'9' | b';' | b':'))
                        .expect("a final byte");
                    assert_eq!(out[end], b'm', "non-SGR CSI in {text:?}");
                    i = end + 1;
                    continue;
                }
                b'\n' | b'\t' | b'\r' => assert!(allow_breaks, "line break in {text:?}"),
                0x00..=0x1f | 0x7f => panic!("control {:#x} in {text:?}", out[i]),
                _ => {}
            }
            i += 1;
        }
    }

    #[test]
    fn keeps_colour_and_drops_osc_title() {
        let text = "\x1b]0;pwned\x07\x1b[1;31mred\x1b[0m plain\n";
        assert_eq!(sanitize(text), "\x1b[1;31mred\x1b[0m plain\n");
        let st = "a\x1b]52;c;ZXZpbA==\x1b\\b";
        assert_eq!(sanitize(st), "ab");
    }

    #[test]
    fn drops_cursor_moves_queries_and_device_strings() {
        let cases = [
            ("x\x1b[2J\x1b[Hy", "xy"),
            ("q\x1b[6n\x1b[c\x1b[>0c", "q"),
            ("\x1b[?1049hkeep", "keep"),
            ("\x1bPq#0;2;0;0;0\x1b\\after", "after"),
            ("\x1b_apc\x1b\\\x1b^pm\x1b\\z", "z"),
            ("bell\x07back\x08\x7f", "bellback"),
            ("\x1bccharset\x1b(B", "charset"),
            ("c1\u{9b}31m\u{9d}0;t\u{9c}", "c131m0;t"),
            ("\x1b[38;2;10;20;30mrgb", "\x1b[38;2;10;20;30mrgb"),
            ("\x1b[4:3munder", "\x1b[4:3munder"),
        ];
        for (input, want) in cases {
            assert_eq!(sanitize(input), want, "{input:?}");
        }
    }

    #[test]
    fn an_unterminated_osc_does_not_hide_later_lines() {
        assert_eq!(sanitize("\x1b]0;title\nnext line"), "\nnext line");
        let long = format!("\x1b]0;{}visible", "x".repeat(MAX_STRING_LEN + 1));
        assert!(sanitize(&long).ends_with("visible"));
    }

    #[test]
    fn one_line_drops_colour_and_breaks() {
        assert_eq!(one_line("a\x1b[31mb\nc\td"), "ab c d");
        assert_eq!(one_line("plain"), "plain");
    }

    #[test]
    fn json_safe_escapes_c1_only() {
        assert_eq!(json_safe("{\"a\":\"\u{9b}6n\"}"), "{\"a\":\"\\u009b6n\"}");
        let parsed: serde_json::Value =
            serde_json::from_str(&json_safe("\"\u{9b}\"")).expect("valid JSON");
        assert_eq!(parsed, "\u{9b}");
        assert!(matches!(json_safe("{\"é\":1}"), Cow::Borrowed(_)));
    }

    #[test]
    fn invalid_utf8_and_raw_c1_bytes_become_replacement() {
        assert_eq!(colour(b"a\x9b31mb\xff"), "a\u{fffd}31mb\u{fffd}".as_bytes());
        assert_eq!(colour(b"\xe2\x82"), "\u{fffd}".as_bytes());
        assert_eq!(colour("é€😀".as_bytes()), "é€😀".as_bytes());
    }

    proptest! {
        #[test]
        fn output_never_holds_a_non_sgr_escape(
            input in proptest::collection::vec(any::<u8>(), 0..400),
            cut in 0usize..400,
        ) {
            let whole = colour(&input);
            assert_only_sgr(&whole, true);
            let cut = cut.min(input.len());
            let mut split = Vec::new();
            let mut sanitizer = Sanitizer::new(Mode::Colour);
            sanitizer.push(&input[..cut], &mut split);
            sanitizer.push(&input[cut..], &mut split);
            sanitizer.finish(&mut split);
            prop_assert_eq!(split, whole);
        }

        #[test]
        fn escape_heavy_input_leaves_only_sgr(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just(&b"\x1b"[..]), Just(&b"["[..]), Just(&b"]"[..]), Just(&b"m"[..]),
                    Just(&b";"[..]), Just(&b"1"[..]), Just(&b"?"[..]), Just(&b"\x07"[..]),
                    Just(&b"\\"[..]), Just(&b"P"[..]), Just(&b"\n"[..]), Just(&b"\xc2\x9b"[..]),
                    Just(&b"("[..]), Just(&b"H"[..]), Just(&b"a"[..]),
                ],
                0..120,
            ),
        ) {
            let input: Vec<u8> = parts.concat();
            assert_only_sgr(&colour(&input), true);
            let text = String::from_utf8_lossy(&input);
            let line = one_line(&text);
            assert_only_sgr(line.as_bytes(), false);
            prop_assert!(!line.contains('\x1b'));
        }

        #[test]
        fn text_without_controls_passes_unchanged(text in "[^\\x00-\\x1f\\x7f-\\u{9f}]{0,200}") {
            prop_assert_eq!(sanitize(&text), text.as_str());
        }
    }
}
