//! Assembling a job's final output from its partitions' results.
//!
//! Each partition's result is `key\tvalue\n` lines sorted by key, and each key lives in
//! exactly one partition, so the global output is a k-way merge by key: streaming, no
//! re-sort, memory bounded by the partitions' results already in hand.

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

/// Writes the merge of sorted partition results, sorted by key in byte order. Every line
/// written ends with `\n`.
pub fn merge_sorted_results(results: &[Vec<u8>], out: &mut impl Write) -> io::Result<()> {
    let mut heap = BinaryHeap::new();
    for (index, data) in results.iter().enumerate() {
        if let Some((line, next)) = next_line(data, 0) {
            heap.push(Reverse((line_key(line), index, line, next)));
        }
    }
    while let Some(Reverse((_, index, line, next))) = heap.pop() {
        out.write_all(line)?;
        if !line.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
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
}
