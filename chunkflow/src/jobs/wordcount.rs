//! wordcount: how often each word occurs.
//!
//! A word is a maximal run of characters for which `char::is_alphanumeric()` is true,
//! lowercased with `str::to_lowercase()` (on the whole word, so a final sigma lowercases as
//! it does in a sequential program). Input is decoded as lossy UTF-8: invalid sequences
//! become U+FFFD, which is not alphanumeric. Line ends need no special case: `\r` and `\n`
//! are not alphanumeric, and a chunk boundary always falls after a `\n`.
//!
//! The tokenizer takes an ASCII fast path (a lookup table, in-place lowercasing, no
//! allocation for words already seen) and falls back to full Unicode only for words that
//! contain non-ASCII characters.

use std::collections::HashMap;
use std::sync::Arc;

use super::{partition_of, ChunkContext, Job, JobError, MapOutput, ReduceOutput};
use crate::codec::{put_bytes, put_varint, Reader};

pub const KIND: &str = "wordcount";

/// Builds the job; wordcount takes no parameters.
pub fn build(params: &serde_json::Value) -> Result<Arc<dyn Job>, JobError> {
    match params {
        serde_json::Value::Null => Ok(Arc::new(WordCount)),
        serde_json::Value::Object(map) if map.is_empty() => Ok(Arc::new(WordCount)),
        other => Err(JobError::new(format!(
            "wordcount takes no parameters, got {other}"
        ))),
    }
}

type CountMap = HashMap<Vec<u8>, u64, foldhash::fast::FixedState>;

fn new_count_map() -> CountMap {
    CountMap::with_hasher(foldhash::fast::FixedState::default())
}

/// Byte classes of ASCII: 0 separator, 1 lowercase letter or digit, 2 uppercase letter.
const fn ascii_class_table() -> [u8; 128] {
    let mut table = [0u8; 128];
    let mut b = 0;
    while b < 128 {
        let byte = b as u8;
        table[b] = if byte.is_ascii_uppercase() {
            2
        } else if byte.is_ascii_alphanumeric() {
            1
        } else {
            0
        };
        b += 1;
    }
    table
}
static ASCII_CLASS: [u8; 128] = ascii_class_table();

/// Whether the non-ASCII character starting at byte `i` of `text` is part of a word, and
/// its length.
#[inline]
fn unicode_class_at(text: &str, i: usize) -> (bool, usize) {
    // `i` is always a char boundary below `text.len()`: we only advance by whole chars.
    match text[i..].chars().next() {
        Some(c) => (c.is_alphanumeric(), c.len_utf8()),
        None => (false, 1),
    }
}

/// How a word was written, which decides how it is lowercased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WordCase {
    /// ASCII letters and digits, no uppercase: already its own key.
    AsciiLower,
    /// ASCII with at least one uppercase letter.
    AsciiMixed,
    /// Contains non-ASCII characters: needs `str::to_lowercase`.
    Unicode,
}

/// Calls `f(word, case)` for each word of `text`, before lowercasing.
pub fn for_each_word<'a>(text: &'a str, mut f: impl FnMut(&'a str, WordCase)) {
    let bytes = text.as_bytes();
    let n = bytes.len();
    let mut i = 0;
    while i < n {
        // Skip separators.
        let byte = bytes[i];
        if byte < 0x80 {
            if ASCII_CLASS[byte as usize] == 0 {
                i += 1;
                continue;
            }
        } else {
            let (is_word, len) = unicode_class_at(text, i);
            if !is_word {
                i += len;
                continue;
            }
        }
        // A word starts at `i`: scan it, noting uppercase and non-ASCII characters.
        let start = i;
        let mut upper = false;
        let mut unicode = false;
        while i < n {
            let byte = bytes[i];
            if byte < 0x80 {
                match ASCII_CLASS[byte as usize] {
                    0 => break,
                    class => {
                        upper |= class == 2;
                        i += 1;
                    }
                }
            } else {
                let (is_word, len) = unicode_class_at(text, i);
                if !is_word {
                    break;
                }
                unicode = true;
                i += len;
            }
        }
        let case = if unicode {
            WordCase::Unicode
        } else if upper {
            WordCase::AsciiMixed
        } else {
            WordCase::AsciiLower
        };
        f(&text[start..i], case);
    }
}

/// Calls `f` with each word of `data` (lossy UTF-8), lowercased: the definition of a word
/// shared by wordcount and invertedindex.
pub fn for_each_lowercased_word(data: &[u8], mut f: impl FnMut(&[u8])) {
    let text = match std::str::from_utf8(data) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(data),
    };
    let mut scratch: Vec<u8> = Vec::with_capacity(64);
    for_each_word(&text, |word, case| match case {
        WordCase::AsciiLower => f(word.as_bytes()),
        WordCase::AsciiMixed => {
            scratch.clear();
            scratch.extend(word.bytes().map(|b| b.to_ascii_lowercase()));
            f(&scratch);
        }
        WordCase::Unicode => f(word.to_lowercase().as_bytes()),
    });
}

/// Word counts of one chunk. Words that are already lowercase (the vast majority in real
/// text) are counted by reference into the chunk, with no allocation; the others are
/// lowercased into owned keys. A word may appear in both maps; the reducer adds them up.
#[derive(Default)]
pub struct ChunkCounts<'a> {
    pub borrowed: HashMap<&'a [u8], u64, foldhash::fast::FixedState>,
    pub owned: CountMap,
}

impl<'a> ChunkCounts<'a> {
    #[inline]
    fn bump_borrowed(&mut self, key: &'a [u8]) {
        *self.borrowed.entry(key).or_insert(0) += 1;
    }

    #[inline]
    fn bump_owned(&mut self, key: &[u8]) {
        match self.owned.get_mut(key) {
            Some(count) => *count += 1,
            None => {
                self.owned.insert(key.to_vec(), 1);
            }
        }
    }

    /// Every `(word, count)`; a word may occur twice (once per map).
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], u64)> {
        self.borrowed
            .iter()
            .map(|(k, v)| (*k, *v))
            .chain(self.owned.iter().map(|(k, v)| (k.as_slice(), *v)))
    }
}

/// Counts the lowercased words of `text`.
pub fn count_words<'a>(text: &'a str, counts: &mut ChunkCounts<'a>) {
    let mut scratch: Vec<u8> = Vec::with_capacity(64);
    for_each_word(text, |word, case| match case {
        WordCase::AsciiLower => counts.bump_borrowed(word.as_bytes()),
        WordCase::AsciiMixed => {
            scratch.clear();
            scratch.extend(word.bytes().map(|b| b.to_ascii_lowercase()));
            counts.bump_owned(&scratch);
        }
        WordCase::Unicode => {
            let lowered = word.to_lowercase();
            if lowered == word {
                counts.bump_borrowed(word.as_bytes());
            } else {
                counts.bump_owned(lowered.as_bytes());
            }
        }
    });
}

/// The wordcount job.
#[derive(Debug, Clone, Copy, Default)]
pub struct WordCount;

impl Job for WordCount {
    fn map_chunk(&self, ctx: &ChunkContext<'_>, data: &[u8]) -> Result<MapOutput, JobError> {
        // Validating first is much faster than lossy decoding when the input is valid.
        let text = match std::str::from_utf8(data) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(data),
        };
        // Distinct words grow much slower than text; this avoids most rehashing.
        let mut counts = ChunkCounts {
            borrowed: HashMap::with_capacity_and_hasher(
                (data.len() / 32).min(1 << 20),
                foldhash::fast::FixedState::default(),
            ),
            owned: new_count_map(),
        };
        count_words(&text, &mut counts);
        let partitions = ctx.partitions.max(1);
        let estimate = (counts.borrowed.len() + counts.owned.len()) * 12 / partitions as usize;
        let mut partials: Vec<Vec<u8>> = (0..partitions)
            .map(|_| Vec::with_capacity(estimate))
            .collect();
        for (word, count) in counts.entries() {
            let partial = &mut partials[partition_of(word, partitions) as usize];
            put_bytes(partial, word);
            put_varint(partial, count);
        }
        Ok(MapOutput::from_lines(partials, data))
    }

    fn reduce_partition(&self, partials: Vec<Vec<u8>>) -> Result<ReduceOutput, JobError> {
        let mut totals = new_count_map();
        for partial in &partials {
            let mut reader = Reader::new(partial);
            while !reader.is_empty() {
                let word = reader.bytes()?;
                let count = reader.varint()?;
                match totals.get_mut(word) {
                    Some(total) => *total += count,
                    None => {
                        totals.insert(word.to_vec(), count);
                    }
                }
            }
        }
        drop(partials);
        let mut entries: Vec<(Vec<u8>, u64)> = totals.into_iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut lines = Vec::with_capacity(entries.len() * 16);
        let mut number = itoa_buffer();
        for (word, count) in &entries {
            lines.extend_from_slice(word);
            lines.push(b'\t');
            lines.extend_from_slice(format_u64(&mut number, *count));
            lines.push(b'\n');
        }
        Ok(ReduceOutput {
            lines,
            records: entries.len() as u64,
        })
    }
}

fn itoa_buffer() -> [u8; 20] {
    [0; 20]
}

fn format_u64(buf: &mut [u8; 20], mut value: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, written the slow obvious way.
    fn reference(text: &str) -> std::collections::BTreeMap<String, u64> {
        let mut counts = std::collections::BTreeMap::new();
        let mut word = String::new();
        for c in text.chars().chain(std::iter::once(' ')) {
            if c.is_alphanumeric() {
                word.push(c);
            } else if !word.is_empty() {
                *counts.entry(word.to_lowercase()).or_insert(0) += 1;
                word.clear();
            }
        }
        counts
    }

    fn run(text: &[u8], partitions: u32) -> String {
        let ctx = ChunkContext {
            source: "t",
            offset: 0,
            first_line: 1,
            partitions,
        };
        let output = WordCount.map_chunk(&ctx, text).unwrap();
        assert_eq!(output.partials.len(), partitions as usize);
        let mut all = Vec::new();
        for partial in output.partials {
            all.extend(WordCount.reduce_partition(vec![partial]).unwrap().lines);
        }
        let mut lines: Vec<&str> = std::str::from_utf8(&all).unwrap().lines().collect();
        lines.sort_by(|a, b| a.split('\t').next().cmp(&b.split('\t').next()));
        lines.join("\n")
    }

    fn expected(text: &str) -> String {
        reference(text)
            .into_iter()
            .map(|(w, c)| format!("{w}\t{c}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn matches_definition_on_tricky_text() {
        let text = "Hello, hello HELLO! Straße STRASSE ΟΔΟΣ Σίσυφος café CAFÉ 123 a1b2\r\n\
                    日本語 テキスト x\u{0301}y naïve İstanbul ǅemal ﬁne ½ Ⅻ tab\tsep end";
        assert_eq!(run(text.as_bytes(), 3), expected(text));
        assert_eq!(run(text.as_bytes(), 1), expected(text));
    }

    #[test]
    fn invalid_utf8_splits_words() {
        let bytes = b"abc\xffdef ab\xc3";
        assert_eq!(run(bytes, 2), "ab\t1\nabc\t1\ndef\t1");
    }

    #[test]
    fn reduce_merges_partials() {
        let ctx = ChunkContext {
            source: "t",
            offset: 0,
            first_line: 1,
            partitions: 1,
        };
        let a = WordCount.map_chunk(&ctx, b"x y y\n").unwrap();
        let b = WordCount.map_chunk(&ctx, b"y z\n").unwrap();
        let out = WordCount
            .reduce_partition(vec![a.partials[0].clone(), b.partials[0].clone()])
            .unwrap();
        assert_eq!(out.lines, b"x\t1\ny\t3\nz\t1\n");
        assert_eq!(out.records, 3);
        assert_eq!(a.counters["records_read"], 1);
        assert_eq!(a.counters["bytes_read"], 6);
    }

    #[test]
    fn corrupt_partial_is_an_error() {
        assert!(WordCount.reduce_partition(vec![vec![9, b'a']]).is_err());
    }

    #[test]
    fn rejects_parameters() {
        assert!(build(&serde_json::json!({"x": 1})).is_err());
        assert!(build(&serde_json::Value::Null).is_ok());
    }
}
