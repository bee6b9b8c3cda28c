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

use super::{
    count_lines, input_counters, partition_of, ChunkContext, Job, JobError, MapOutput, ReduceOutput,
};
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

const fn ascii_alnum_table() -> [bool; 128] {
    let mut table = [false; 128];
    let mut b = 0;
    while b < 128 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    table
}
static ASCII_ALNUM: [bool; 128] = ascii_alnum_table();

/// Whether the character starting at byte `i` of `text` is part of a word, and its length.
#[inline]
fn class_at(text: &str, i: usize) -> (bool, usize) {
    let byte = text.as_bytes()[i];
    if byte < 0x80 {
        (ASCII_ALNUM[byte as usize], 1)
    } else {
        // `i` is always a char boundary below `text.len()`: we only advance by whole chars.
        match text[i..].chars().next() {
            Some(c) => (c.is_alphanumeric(), c.len_utf8()),
            None => (false, 1),
        }
    }
}

/// Calls `f(word, is_ascii)` for each word of `text`, before lowercasing.
pub fn for_each_word(text: &str, mut f: impl FnMut(&str, bool)) {
    let n = text.len();
    let mut i = 0;
    while i < n {
        let (is_word, len) = class_at(text, i);
        if !is_word {
            i += len;
            continue;
        }
        let start = i;
        let mut ascii = len == 1;
        i += len;
        while i < n {
            let (is_word, len) = class_at(text, i);
            if !is_word {
                break;
            }
            ascii &= len == 1;
            i += len;
        }
        f(&text[start..i], ascii);
    }
}

/// Calls `f` with each word of `data` (lossy UTF-8), lowercased: the definition of a word
/// shared by wordcount and invertedindex.
pub fn for_each_lowercased_word(data: &[u8], mut f: impl FnMut(&[u8])) {
    let text = String::from_utf8_lossy(data);
    let mut scratch: Vec<u8> = Vec::with_capacity(64);
    for_each_word(&text, |word, ascii| {
        if ascii {
            let bytes = word.as_bytes();
            if bytes.iter().any(u8::is_ascii_uppercase) {
                scratch.clear();
                scratch.extend(bytes.iter().map(u8::to_ascii_lowercase));
                f(&scratch);
            } else {
                f(bytes);
            }
        } else {
            f(word.to_lowercase().as_bytes());
        }
    });
}

/// Counts the lowercased words of `data` (lossy UTF-8) into `counts`.
pub fn count_words(data: &[u8], counts: &mut CountMap) {
    for_each_lowercased_word(data, |key| match counts.get_mut(key) {
        Some(count) => *count += 1,
        None => {
            counts.insert(key.to_vec(), 1);
        }
    });
}

/// Encodes `(word, count)` pairs sorted by word.
fn encode_partial(mut entries: Vec<(&[u8], u64)>) -> Vec<u8> {
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(entries.len() * 12);
    for (word, count) in entries {
        put_bytes(&mut out, word);
        put_varint(&mut out, count);
    }
    out
}

/// The wordcount job.
#[derive(Debug, Clone, Copy, Default)]
pub struct WordCount;

impl Job for WordCount {
    fn map_chunk(&self, ctx: &ChunkContext<'_>, data: &[u8]) -> Result<MapOutput, JobError> {
        let mut counts = new_count_map();
        count_words(data, &mut counts);
        let partitions = ctx.partitions.max(1) as usize;
        let mut buckets: Vec<Vec<(&[u8], u64)>> = vec![Vec::new(); partitions];
        for (word, &count) in &counts {
            buckets[partition_of(word, ctx.partitions) as usize].push((word.as_slice(), count));
        }
        let partials = buckets.into_iter().map(encode_partial).collect();
        Ok(MapOutput {
            partials,
            counters: input_counters(count_lines(data), 0, data.len() as u64),
        })
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

pub(crate) fn itoa_buffer() -> [u8; 20] {
    [0; 20]
}

pub(crate) fn format_u64(buf: &mut [u8; 20], mut value: u64) -> &[u8] {
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
