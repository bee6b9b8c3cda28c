//! Assembling a job's final output from its partitions' results.
//!
//! Each partition's result is `key\tvalue\n` lines sorted by key, and each key lives in
//! exactly one partition, so the global output is a k-way merge by key: streaming, no
//! re-sort, memory bounded by the partitions' results already in hand.
//!
//! A job whose output order is not the byte order of its first column (grep: by path, then
//! line *number*; groupby: by the tuple of key columns) stores each line as
//! `SORTKEY\tLINE` and says so in its [`ResultFormat`]: the merge orders by `SORTKEY` and
//! writes only `LINE`. [`SortKey`] builds keys whose byte order is the order of a tuple of
//! byte strings and numbers. A job may also give a header line, written first.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Write};

fn line_key(line: &[u8]) -> &[u8] {
    match memchr::memchr(b'\t', line) {
        Some(tab) => &line[..tab],
        None => line,
    }
}

/// Returns the line starting at `pos` (including its `\n`) and the next position.
fn next_line(data: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    if pos >= data.len() {
        return None;
    }
    let end = memchr::memchr(b'\n', &data[pos..]).map_or(data.len(), |i| pos + i + 1);
    Some((&data[pos..end], end))
}

/// How a job's partition results become its output; given by the job
/// ([`crate::jobs::Job::result_format`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResultFormat {
    /// A line written before the records (without its `\n`).
    pub header: Option<String>,
    /// Lines are `SORTKEY\tLINE`: merge by `SORTKEY`, write `LINE`.
    pub sort_key_prefix: bool,
}

/// A sort key: a tuple of parts encoded so that byte order is tuple order. A byte string is
/// written as lowercase hex, a number as 20 zero-padded digits, each followed by `.` (below
/// every hex digit, so a prefix sorts first). It never holds a tab or a newline.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct SortKey(Vec<u8>);

impl SortKey {
    pub fn new() -> Self {
        SortKey(Vec::new())
    }

    pub fn bytes(mut self, part: &[u8]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.0.reserve(part.len() * 2 + 1);
        for &byte in part {
            self.0.push(HEX[usize::from(byte >> 4)]);
            self.0.push(HEX[usize::from(byte & 15)]);
        }
        self.0.push(b'.');
        self
    }

    pub fn number(mut self, n: u64) -> Self {
        self.0.extend_from_slice(format!("{n:020}.").as_bytes());
        self
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Writes a job's output: the header if any, then the merge of its sorted partition
/// results (see [`ResultFormat`]). Every line written ends with `\n`.
pub fn write_results(
    results: &[Vec<u8>],
    format: &ResultFormat,
    out: &mut impl Write,
) -> io::Result<()> {
    if let Some(header) = &format.header {
        out.write_all(header.as_bytes())?;
        out.write_all(b"\n")?;
    }
    merge_each(results, |line| {
        let line = match (format.sort_key_prefix, memchr::memchr(b'\t', line)) {
            (false, _) => line,
            (true, Some(tab)) => &line[tab + 1..],
            (true, None) => &[],
        };
        out.write_all(line)?;
        out.write_all(b"\n")
    })
}

/// Writes the merge of sorted partition results, sorted by key in byte order. Every line
/// written ends with `\n`.
pub fn merge_sorted_results(results: &[Vec<u8>], out: &mut impl Write) -> io::Result<()> {
    merge_each(results, |line| {
        out.write_all(line)?;
        out.write_all(b"\n")
    })
}

/// Calls `f` with each line (without its `\n`) of the merge of sorted partition results.
fn merge_each(results: &[Vec<u8>], mut f: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
    let mut heap = BinaryHeap::new();
    for (index, data) in results.iter().enumerate() {
        if let Some((line, next)) = next_line(data, 0) {
            heap.push(Reverse((line_key(line), index, line, next)));
        }
    }
    while let Some(Reverse((_, index, line, next))) = heap.pop() {
        f(line.strip_suffix(b"\n").unwrap_or(line))?;
        if let Some((line, next)) = next_line(&results[index], next) {
            heap.push(Reverse((line_key(line), index, line, next)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_by_key_not_whole_line() {
        let results = vec![
            b"a\t1\nab\t5\nz\t1\n".to_vec(),
            Vec::new(),
            b"a-b\t2\nb\t3".to_vec(),
        ];
        let mut out = Vec::new();
        merge_sorted_results(&results, &mut out).unwrap();
        assert_eq!(out, b"a\t1\na-b\t2\nab\t5\nb\t3\nz\t1\n");
    }

    #[test]
    fn sort_keys_order_like_tuples() {
        let key = |s: &[u8], n: u64| SortKey::new().bytes(s).number(n);
        let mut keys = vec![
            key(b"b", 1),
            key(b"a/x", 2),
            key(b"a", 10),
            key(b"a", 9),
            key(b"", 5),
            key(b"a\xff", 0),
        ];
        keys.sort();
        let expected = vec![
            key(b"", 5),
            key(b"a", 9),
            key(b"a", 10),
            key(b"a/x", 2),
            key(b"a\xff", 0),
            key(b"b", 1),
        ];
        assert_eq!(keys, expected);
        assert!(!key(b"\t\n", 1).as_bytes().contains(&b'\t'));
    }

    #[test]
    fn writes_header_and_strips_sort_keys() {
        let results = vec![
            b"k2\tsecond\tx\n".to_vec(),
            b"k1\tfirst\nk3\tthird".to_vec(),
        ];
        let format = ResultFormat {
            header: Some("h1\th2".into()),
            sort_key_prefix: true,
        };
        let mut out = Vec::new();
        write_results(&results, &format, &mut out).unwrap();
        assert_eq!(out, b"h1\th2\nfirst\nsecond\tx\nthird\n");
    }
}
