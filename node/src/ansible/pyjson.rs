//! Python's `json.dumps` default formatting (`", "` and `": "` separators, `ensure_ascii`,
//! float `repr`), so the lines Warren writes equal ansible-runner's byte for byte.
//!
//! Pure formatting; no IO.

use serde_json::{Number, Value};

/// Appends `value` to `out` as Python's `json.dumps(value)` would print it.
pub(crate) fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(number) => write_number(out, number),
        Value::String(text) => write_str(out, text),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map.iter()),
    }
}

/// Appends an object with the entries in the given order (Python dicts keep insertion order).
pub(crate) fn write_object<'a>(
    out: &mut String,
    entries: impl Iterator<Item = (&'a String, &'a Value)>,
) {
    out.push('{');
    for (index, (key, value)) in entries.enumerate() {
        if index > 0 {
            out.push_str(", ");
        }
        write_str(out, key);
        out.push_str(": ");
        write_value(out, value);
    }
    out.push('}');
}

/// Appends a string literal with `ensure_ascii` escaping: everything outside printable ASCII
/// becomes `\uXXXX` (UTF-16 surrogate pairs beyond the BMP), as CPython's encoder does.
pub(crate) fn write_str(out: &mut String, text: &str) {
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(ch),
            _ => {
                let mut units = [0u16; 2];
                for unit in ch.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

fn write_number(out: &mut String, number: &Number) {
    match number.as_f64() {
        Some(float) if number.is_f64() => out.push_str(&float_repr(float)),
        _ => out.push_str(&number.to_string()),
    }
}

/// Python's `repr(float)`: the shortest round-tripping digits, positional for decimal
/// exponents in -4..16, else scientific with a signed exponent of at least two digits.
fn float_repr(float: f64) -> String {
    if float.is_nan() {
        return "NaN".to_owned();
    }
    if float.is_infinite() {
        return if float > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    // `{:e}` gives the shortest round-tripping digits: "-1.25e-7", "3e0".
    let sci = format!("{float:e}");
    let (mantissa, exponent) = sci
        .split_once('e')
        .expect("invariant: {:e} has an exponent");
    let exponent: i32 = exponent
        .parse()
        .expect("invariant: {:e} exponent is an integer");
    let (sign, mantissa) = mantissa
        .strip_prefix('-')
        .map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exponent) {
        let point = exponent + 1;
        let text = if point <= 0 {
            format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        };
        return format!("{sign}{text}");
    }
    let (first, rest) = digits.split_at(1);
    let fraction = if rest.is_empty() {
        String::new()
    } else {
        format!(".{rest}")
    };
    let exp_sign = if exponent < 0 { '-' } else { '+' };
    format!(
        "{sign}{first}{fraction}e{exp_sign}{:02}",
        exponent.unsigned_abs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dumps(value: &Value) -> String {
        let mut out = String::new();
        write_value(&mut out, value);
        out
    }

    #[test]
    fn formats_like_python_json_dumps() {
        let value = json!({"a": [1, true, null], "b": "x\"é\u{1F600}\n\u{7f}"});
        assert_eq!(
            dumps(&value),
            r#"{"a": [1, true, null], "b": "x\"\u00e9\ud83d\ude00\n\u007f"}"#
        );
    }

    #[test]
    fn floats_match_python_repr() {
        for (float, python) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1.5e-7, "1.5e-07"),
            (0.0001, "0.0001"),
            (123456.789, "123456.789"),
            (1e22, "1e+22"),
        ] {
            assert_eq!(float_repr(float), python, "{float}");
        }
    }
}
