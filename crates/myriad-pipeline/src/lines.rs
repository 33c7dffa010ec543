//! Splitting a byte stream into lines (NDJSON request bodies, polled responses), sans-IO and
//! bounded: chunks go in as they arrive, whole lines come out; a line longer than the limit
//! is not kept whole (its first `max_line_bytes` are, and it is marked cut).
//!
//! A line ends at `\n`; a `\r` before it is dropped; lines of only spaces and tabs (blank)
//! are skipped. The last line may lack its `\n` ([`LineSplitter::finish`]).

/// One line out of a [`LineSplitter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The line without its end (at most `max_line_bytes`).
    pub bytes: Vec<u8>,
    /// The line was longer than `max_line_bytes`: `bytes` is its start only.
    pub too_long: bool,
}

/// Cuts chunks into lines of at most `max_line_bytes` (see the [module docs](self)).
#[derive(Debug)]
pub struct LineSplitter {
    max_line_bytes: usize,
    current: Vec<u8>,
    cut: bool,
}

impl LineSplitter {
    /// A splitter keeping at most `max_line_bytes` of a line (at least 1).
    pub fn new(max_line_bytes: usize) -> LineSplitter {
        LineSplitter {
            max_line_bytes: max_line_bytes.max(1),
            current: Vec::new(),
            cut: false,
        }
    }

    /// Adds `chunk`; every line it completes is appended to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<Line>) {
        while !chunk.is_empty() {
            let (part, rest, ended) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &chunk[chunk.len()..], false),
            };
            let room = self.max_line_bytes.saturating_sub(self.current.len());
            if part.len() > room {
                self.cut = true;
            }
            self.current
                .extend_from_slice(&part[..part.len().min(room)]);
            if ended {
                self.end_line(out);
            }
            chunk = rest;
        }
    }

    /// The last line if it had no `\n` (and is not blank); the splitter is empty afterwards.
    pub fn finish(&mut self) -> Option<Line> {
        let mut out = Vec::new();
        self.end_line(&mut out);
        out.pop()
    }

    fn end_line(&mut self, out: &mut Vec<Line>) {
        let mut bytes = std::mem::take(&mut self.current);
        let too_long = std::mem::replace(&mut self.cut, false);
        if !too_long && bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        if too_long || bytes.iter().any(|b| !matches!(b, b' ' | b'\t' | b'\r')) {
            out.push(Line { bytes, too_long });
        }
    }
}

/// Why `bytes` is not one JSON value (`None`: it is). Nesting is bounded by serde_json's
/// recursion limit (128).
pub fn json_error(bytes: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .err()
        .map(|e| format!("not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], max: usize) -> Vec<(String, bool)> {
        let mut splitter = LineSplitter::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.push(chunk, &mut out);
        }
        out.extend(splitter.finish());
        out.into_iter()
            .map(|l| (String::from_utf8(l.bytes).unwrap(), l.too_long))
            .collect()
    }

    #[test]
    fn lines_span_chunks_and_blank_lines_are_skipped() {
        let got = split(&[b"{\"a\":1}\r\n{\"b\"", b":2}\n\n  \n{\"c\":3}"], 64);
        assert_eq!(
            got,
            vec![
                ("{\"a\":1}".into(), false),
                ("{\"b\":2}".into(), false),
                ("{\"c\":3}".into(), false),
            ]
        );
    }

    #[test]
    fn a_line_one_past_the_limit_is_cut_and_the_next_is_whole() {
        let got = split(&[b"12345\n123456", b"7\nab\n"], 5);
        assert_eq!(
            got,
            vec![
                ("12345".into(), false),
                ("12345".into(), true),
                ("ab".into(), false),
            ]
        );
    }

    #[test]
    fn json_lines_are_checked() {
        assert_eq!(json_error(b" {\"a\": [1, 2]} "), None);
        assert!(json_error(b"not json").unwrap().starts_with("not JSON"));
        assert!(json_error(b"{} {}").is_some());
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(json_error(deep.as_bytes()).is_some());
    }

    #[test]
    fn memory_stays_bounded_by_the_limit() {
        let mut splitter = LineSplitter::new(8);
        let mut out = Vec::new();
        for _ in 0..1000 {
            splitter.push(&[b'x'; 1000], &mut out);
        }
        assert!(out.is_empty());
        assert!(splitter.current.len() <= 8);
        let last = splitter.finish().unwrap();
        assert!(last.too_long);
        assert_eq!(last.bytes.len(), 8);
        assert_eq!(splitter.finish(), None);
    }
}
