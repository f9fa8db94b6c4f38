//! A reader of the flat JSON objects token endpoints answer with (`{"access_token": "...",
//! "expires_in": 3599, ...}`): top-level members whose values are strings, numbers, booleans or
//! null are returned as text; nested arrays and objects (e.g. `error_codes`) are skipped, up to
//! a fixed depth. Strict about syntax, bounded in everything: the input is capped by the caller
//! (64 KiB), nesting by [`MAX_DEPTH`], and numbers are kept as text (never converted here).
//!
//! Grammar: [RFC 8259](https://www.rfc-editor.org/rfc/rfc8259).

/// The deepest nesting skipped inside a member's value.
pub(crate) const MAX_DEPTH: usize = 32;

/// Why a body is not a JSON object (no part of the body is quoted: it may hold a token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JsonError {
    /// Byte offset of the problem.
    pub offset: usize,
    /// What was expected.
    pub what: &'static str,
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a JSON object: {} at byte {}", self.what, self.offset)
    }
}

/// A scalar member value: the decoded string, or the literal text of a number, `true`,
/// `false` or `null`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// A string, unescaped.
    Str(String),
    /// A number, `true`, `false` or `null`, as written.
    Literal(String),
}

impl Value {
    /// The value as text (strings unescaped, literals as written).
    pub(crate) fn text(&self) -> &str {
        match self {
            Value::Str(s) | Value::Literal(s) => s,
        }
    }
}

/// The members of a top-level JSON object with scalar values, in order. A member name given
/// twice at the top level is refused. Nested values are skipped.
pub(crate) fn parse_object(input: &[u8]) -> Result<Vec<(String, Value)>, JsonError> {
    let mut p = Parser { s: input, i: 0 };
    p.ws();
    p.expect(b'{', "`{`")?;
    let mut members = Vec::new();
    p.ws();
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        loop {
            p.ws();
            let key = p.string()?;
            p.ws();
            p.expect(b':', "`:`")?;
            p.ws();
            match p.peek() {
                Some(b'"') => members.push((key, Value::Str(p.string()?))),
                Some(b'{') | Some(b'[') => p.skip_nested()?,
                _ => members.push((key, Value::Literal(p.literal()?))),
            }
            p.ws();
            match p.next() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err(p.err("`,` or `}`")),
            }
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("end of input"));
    }
    // A name given twice is ambiguous (parsers differ on which one wins): refused, so that an
    // injected second `access_token` or `expires_in` is never believed.
    let mut names = std::collections::HashSet::with_capacity(members.len());
    if !members.iter().all(|(k, _)| names.insert(k.as_str())) {
        return Err(JsonError {
            offset: 0,
            what: "member names given once (one is given twice)",
        });
    }
    Ok(members)
}

/// The first member called `name`.
pub(crate) fn get<'a>(members: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    members.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, what: &'static str) -> JsonError {
        JsonError { offset: self.i, what }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8, what: &'static str) -> Result<(), JsonError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = self
                .next()
                .and_then(|c| (c as char).to_digit(16))
                .ok_or_else(|| self.err("four hex digits"))?;
            v = v * 16 + d;
        }
        Ok(v)
    }

    /// A string, unescaped; invalid UTF-8 and lone surrogates are refused.
    fn string(&mut self) -> Result<String, JsonError> {
        self.expect(b'"', "a string")?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let start = self.i;
            while matches!(self.peek(), Some(c) if c != b'"' && c != b'\\' && c >= 0x20) {
                self.i += 1;
            }
            out.extend_from_slice(&self.s[start..self.i]);
            match self.next() {
                Some(b'"') => break,
                Some(b'\\') => {
                    let c = match self.next() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if self.next() != Some(b'\\') || self.next() != Some(b'u') {
                                    return Err(self.err("a low surrogate"));
                                }
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("a low surrogate"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            char::from_u32(code).ok_or_else(|| self.err("a valid code point"))?
                        }
                        _ => return Err(self.err("an escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                _ => return Err(self.err("a closing quote")),
            }
        }
        String::from_utf8(out).map_err(|_| self.err("UTF-8"))
    }

    /// A number, `true`, `false` or `null`, checked against the grammar and kept as text.
    fn literal(&mut self) -> Result<String, JsonError> {
        let start = self.i;
        for word in ["true", "false", "null"] {
            if self.s[self.i..].starts_with(word.as_bytes()) {
                self.i += word.len();
                return Ok(word.to_string());
            }
        }
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let digits = |p: &mut Self| {
            let from = p.i;
            while matches!(p.peek(), Some(b'0'..=b'9')) {
                p.i += 1;
            }
            p.i - from
        };
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(self.err("a value")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if digits(self) == 0 {
                return Err(self.err("digits after `.`"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return Err(self.err("exponent digits"));
            }
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    /// Skips an array or object, checking its syntax, at most [`MAX_DEPTH`] deep. Iterative: a
    /// stack of open brackets, so hostile nesting cannot overflow the call stack.
    fn skip_nested(&mut self) -> Result<(), JsonError> {
        let mut stack: Vec<u8> = Vec::new();
        // Whether the next token in the innermost container is a value (vs. `,`/close).
        loop {
            self.ws();
            match self.next() {
                Some(open @ (b'{' | b'[')) => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(self.err("less nesting"));
                    }
                    stack.push(if open == b'{' { b'}' } else { b']' });
                    self.ws();
                    if self.peek() == Some(*stack.last().unwrap_or(&0)) {
                        self.i += 1;
                        stack.pop();
                        if stack.is_empty() {
                            return Ok(());
                        }
                        self.after_value(&mut stack)?;
                        if stack.is_empty() {
                            return Ok(());
                        }
                        continue;
                    }
                    if open == b'{' {
                        self.ws();
                        self.string()?;
                        self.ws();
                        self.expect(b':', "`:`")?;
                    }
                    continue;
                }
                Some(b'"') => {
                    self.i -= 1;
                    self.string()?;
                }
                Some(_) => {
                    self.i -= 1;
                    self.literal()?;
                }
                None => return Err(self.err("a value")),
            }
            self.after_value(&mut stack)?;
            if stack.is_empty() {
                return Ok(());
            }
        }
    }

    /// After a value inside a container: `,` (then, in an object, the next key and `:`) or the
    /// container's close (repeatedly, as closes end values of outer containers).
    fn after_value(&mut self, stack: &mut Vec<u8>) -> Result<(), JsonError> {
        loop {
            let Some(&close) = stack.last() else { return Ok(()) };
            self.ws();
            match self.next() {
                Some(b',') => {
                    if close == b'}' {
                        self.ws();
                        self.string()?;
                        self.ws();
                        self.expect(b':', "`:`")?;
                    }
                    return Ok(());
                }
                Some(c) if c == close => {
                    stack.pop();
                }
                _ => return Err(self.err("`,` or a closing bracket")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> Result<Vec<(String, Value)>, JsonError> {
        parse_object(s.as_bytes())
    }

    #[test]
    fn reads_token_answers() {
        let m =
            obj(r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":"3599","access_token":"eyJ0\u0041\/x"}"#)
                .unwrap();
        assert_eq!(get(&m, "expires_in").unwrap().text(), "3599");
        assert_eq!(get(&m, "ext_expires_in").unwrap().text(), "3599");
        assert_eq!(get(&m, "access_token").unwrap().text(), "eyJ0A/x");
        let m = obj(r#" { "error" : "invalid_client", "error_codes" : [7000215, {"a":[[],{}]}], "x": {"y": null}, "t": true } "#)
            .unwrap();
        assert_eq!(get(&m, "error").unwrap().text(), "invalid_client");
        assert!(get(&m, "error_codes").is_none());
        assert_eq!(get(&m, "t").unwrap(), &Value::Literal("true".into()));
        assert!(obj("{}").unwrap().is_empty());
        assert_eq!(
            get(&obj(r#"{"s":"\ud83d\ude00\n"}"#).unwrap(), "s").unwrap().text(),
            "😀\n"
        );
    }

    #[test]
    fn refuses_hostile_and_broken_input() {
        for bad in [
            "",
            "[]",
            "\"x\"",
            "{",
            "{\"a\"",
            "{\"a\":",
            "{\"a\":1",
            "{\"a\":1,}",
            "{\"a\":01}",
            "{\"a\":-}",
            "{\"a\":1.}",
            "{\"a\":1e}",
            "{\"a\":tru}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\\udc00\"}",
            "{\"a\":\"\\u12\"}",
            "{\"a\":\"ctl\u{1}\"}",
            "{\"a\":[1,]}",
            "{\"a\":[1 2]}",
            "{\"a\":{\"b\"}}",
            "{\"a\":{1:2}}",
            "{\"a\":[}",
            "{\"a\":1} x",
            "{\"a\":1}{}",
            "{a:1}",
        ] {
            assert!(obj(bad).is_err(), "{bad:?}");
        }
        assert!(parse_object(b"{\"a\":\"\xff\"}").is_err());
        // Duplicate names at the top level are refused (which would win is parser-specific).
        assert!(obj(r#"{"access_token":"a","access_token":"b","expires_in":1}"#).is_err());
        assert!(obj(r#"{"a":1,"n":{"a":1,"a":2}}"#).is_ok());
        // Deep nesting is refused, not a stack overflow.
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(obj(&deep).unwrap_err().what, "less nesting");
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(obj(&ok).is_ok());
        // Huge numbers stay text.
        let huge = format!("{{\"n\":{}}}", "9".repeat(60_000));
        assert_eq!(get(&obj(&huge).unwrap(), "n").unwrap().text().len(), 60_000);
        // Every truncation of a valid answer is refused, never a panic.
        let full =
            r#"{"access_token":"a\"b\u00e9","expires_on":"1700000000","n":[1,{"x":[true,null,-1.5e+3]}],"z":false}"#;
        assert!(obj(full).is_ok());
        for end in 0..full.len() {
            assert!(parse_object(&full.as_bytes()[..end]).is_err(), "{end}");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let alphabet = b"{}[]\":,\\u0123456789abcdefntrl-+.eE \x00\xff";
        for _ in 0..20_000 {
            let len = fastrand::usize(0..64);
            let s: Vec<u8> = (0..len).map(|_| alphabet[fastrand::usize(..alphabet.len())]).collect();
            let _ = parse_object(&s);
        }
    }
}
