//! Text that came from outside (a balancer's names and replies, a
//! target's output) made safe to print for a person.
//!
//! A maintenance's last stderr line, a server name or an API error reaches
//! the operator's terminal; a control character in it is an order to that
//! terminal (OSC 52 writes the clipboard, cursor movement rewrites lines
//! already printed). [`sanitize`] replaces each one with a visible escape.
//! JSON output needs none of this: serde_json escapes control characters.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `s` with every control character (C0, DEL, C1) and every bidirectional
/// formatting character (which reorders what is shown: "Trojan Source")
/// replaced by a visible escape: `\n`, `\r`, `\t`, else `\u{1b}`. Text
/// without any is returned as is. Backslashes are kept, so an escape in
/// the output may also be a backslash the text held: it is for reading,
/// not for parsing back.
pub fn sanitize(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _infallible = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_orders_become_visible() {
        // OSC 52 (clipboard write), cursor up, erase line, a bell.
        let evil = "ok\u{1b}]52;c;ZWNobyBoaQ==\u{7}\u{1b}[1A\u{1b}[2Kdone";
        let clean = sanitize(evil);
        assert!(!clean.chars().any(char::is_control), "{clean}");
        assert_eq!(
            clean,
            "ok\\u{1b}]52;c;ZWNobyBoaQ==\\u{7}\\u{1b}[1A\\u{1b}[2Kdone"
        );
        assert_eq!(sanitize("a\nb\tc\r"), "a\\nb\\tc\\r");
        // C1 (8-bit CSI), DEL, a right-to-left override.
        assert_eq!(sanitize("\u{9b}2J\u{7f}"), "\\u{9b}2J\\u{7f}");
        assert_eq!(sanitize("web\u{202e}1s"), "web\\u{202e}1s");
    }

    #[test]
    fn plain_text_is_borrowed_untouched() {
        for s in ["web/s1", "état: prêt", "", "10.0.0.1:80 ✓"] {
            assert!(matches!(sanitize(s), Cow::Borrowed(b) if b == s), "{s}");
        }
    }
}
