//! Text others control, on its way to a terminal: a job's output, a worker's events, a
//! peer's adverts and replies all pass `warren::terminal`'s filter.

use warren::terminal::{Mode, Sanitizer, filter, json_safe};

use super::Reached;

/// The input through the terminal filter in the mode its first byte picks, whole and in
/// two pieces cut where its second byte says: the same output either way, output that is
/// safe to print, and a filter that leaves its own output unchanged.
pub fn terminal_filter(data: &[u8]) -> Reached {
    let mut reached = Reached::new();
    let [setup, cut, text @ ..] = data else {
        return reached;
    };
    let mode = if setup & 1 == 1 {
        Mode::Line
    } else {
        Mode::Colour
    };
    let cut = usize::from(*cut).min(text.len());
    let whole = run(mode, &[text]);
    assert_eq!(
        whole,
        run(mode, &[&text[..cut], &text[cut..]]),
        "split anywhere, same output"
    );
    assert_terminal_safe(&whole, mode == Mode::Colour);
    if mode == Mode::Line {
        assert!(
            !whole.iter().any(|b| matches!(b, b'\n' | b'\r' | b'\t')),
            "one line stays one line"
        );
    }
    let out = std::str::from_utf8(&whole).expect("filtered output is UTF-8");
    assert_eq!(filter(out, mode), out, "the filter keeps its own output");
    if let Ok(text) = std::str::from_utf8(text) {
        assert_eq!(
            filter(text, mode).as_bytes(),
            &whole[..],
            "whole-text form agrees"
        );
        let json = json_safe(text);
        assert!(
            !json.chars().any(|c| is_c1(c) || c == '\u{7f}'),
            "json_safe leaves no C1 character and no DEL"
        );
    }
    if whole.contains(&0x1b) {
        reached.push("sgr");
    }
    if whole.len() < text.len() {
        reached.push("dropped");
    }
    reached
}

fn run(mode: Mode, pieces: &[&[u8]]) -> Vec<u8> {
    let mut sanitizer = Sanitizer::new(mode);
    let mut out = Vec::new();
    for piece in pieces {
        sanitizer.push(piece, &mut out);
    }
    sanitizer.finish(&mut out);
    out
}

fn is_c1(c: char) -> bool {
    ('\u{80}'..='\u{9f}').contains(&c)
}

/// Asserts that `printed` is safe for a terminal: UTF-8 without C1 characters, no C0
/// control but `\n`, `\t`, `\r`, and (when `colour`) ESC only as an SGR colour sequence
/// (`ESC [` digits, `;`, `:` then `m`); without `colour`, no ESC at all.
///
/// # Panics
/// On the first unsafe byte, naming its offset.
pub fn assert_terminal_safe(printed: &[u8], colour: bool) {
    let text = std::str::from_utf8(printed).expect("printed text is UTF-8");
    assert!(
        !text.chars().any(is_c1),
        "a C1 control reached the terminal"
    );
    let mut i = 0;
    while i < printed.len() {
        match printed[i] {
            0x1b => {
                assert!(colour, "an escape sequence at {i} where none may pass");
                let rest = &printed[i + 1..];
                assert_eq!(rest.first(), Some(&b'['), "a non-CSI escape at {i}");
                let params = rest[1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit() || **b == b';' || **b == b':')
                    .count();
                assert_eq!(
                    rest.get(1 + params),
                    Some(&b'm'),
                    "a CSI other than SGR at {i}"
                );
                i += 2 + params + 1;
            }
            b'\n' | b'\t' | b'\r' => i += 1,
            0x00..=0x1f | 0x7f => panic!("control byte {:#04x} at {i}", printed[i]),
            _ => i += 1,
        }
    }
}
