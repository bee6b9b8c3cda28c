//! grep: every line that matches a regular expression, like `grep -n` over all inputs.
//!
//! Parameters: `{"pattern": REGEX}` (Rust `regex` syntax, matched against the bytes of each
//! line; the compiled program is size-limited so a pathological pattern is refused, not
//! run). A line is the text between line ends, without its `\n` and a trailing `\r`.
//!
//! Output: `PATH:LINE<TAB>text` for each matching line, PATH the input path as given and
//! LINE its 1-based number in that file, sorted by path (byte order) then line number. The
//! partitions store `SORTKEY<TAB>PATH:LINE<TAB>text` with a [`SortKey`] of (path, line),
//! so the result merge orders numerically (line 9 before line 10).

use std::sync::Arc;

use regex::bytes::{Regex, RegexBuilder};

use super::{
    params, partition_of, ChunkContext, Job, JobError, MapOutput, ReduceOutput, ResultFormat,
};
use crate::codec::{put_bytes, read_pairs};
use crate::output::SortKey;

pub const KIND: &str = "grep";

/// Limit on the compiled program of a pattern (the `regex` crate's `size_limit`).
pub const REGEX_SIZE_LIMIT: usize = 4 << 20;
/// Limit on the lazy DFA's cache per search thread.
pub const REGEX_DFA_SIZE_LIMIT: usize = 8 << 20;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    pattern: String,
}

/// Builds the job: `pattern` is required and must compile within the size limits.
pub fn build(params: &serde_json::Value) -> Result<Arc<dyn Job>, JobError> {
    let Params { pattern } = params::parse(KIND, params)
        .map_err(|e| JobError::new(format!("{e} (grep needs --pattern REGEX)")))?;
    let regex = RegexBuilder::new(&pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
        .build()
        .map_err(|e| JobError::new(format!("--pattern {pattern:?} is not usable: {e}")))?;
    Ok(Arc::new(Grep { regex }))
}

/// The grep job.
#[derive(Debug, Clone)]
pub struct Grep {
    regex: Regex,
}

/// Splits `data` into lines (without `\n` and a trailing `\r`), numbered from `first`.
pub fn numbered_lines(data: &[u8], first: u64) -> impl Iterator<Item = (u64, &[u8])> {
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    let empty = data.is_empty();
    data.split(|&b| b == b'\n')
        .filter(move |_| !empty)
        .enumerate()
        .map(move |(i, line)| (first + i as u64, line.strip_suffix(b"\r").unwrap_or(line)))
}

impl Job for Grep {
    fn map_chunk(&self, ctx: &ChunkContext<'_>, data: &[u8]) -> Result<MapOutput, JobError> {
        let mut buckets: Vec<Vec<(Vec<u8>, Vec<u8>)>> =
            vec![Vec::new(); ctx.partitions.max(1) as usize];
        for (number, line) in numbered_lines(data, ctx.first_line) {
            if !self.regex.is_match(line) {
                continue;
            }
            let key = SortKey::new()
                .bytes(ctx.source.as_bytes())
                .number(number)
                .into_bytes();
            let mut display = Vec::with_capacity(ctx.source.len() + line.len() + 24);
            display.extend_from_slice(ctx.source.as_bytes());
            display.extend_from_slice(format!(":{number}\t").as_bytes());
            display.extend_from_slice(line);
            buckets[partition_of(&key, ctx.partitions) as usize].push((key, display));
        }
        let partials = buckets
            .into_iter()
            .map(|entries| {
                let mut out = Vec::new();
                for (key, display) in entries {
                    put_bytes(&mut out, &key);
                    put_bytes(&mut out, &display);
                }
                out
            })
            .collect();
        Ok(MapOutput::from_lines(partials, data))
    }

    fn reduce_partition(&self, partials: Vec<Vec<u8>>) -> Result<ReduceOutput, JobError> {
        let mut entries = read_pairs(&partials)?;
        entries.sort_unstable();
        let mut lines = Vec::new();
        for (key, display) in &entries {
            lines.extend_from_slice(key);
            lines.push(b'\t');
            lines.extend_from_slice(display);
            lines.push(b'\n');
        }
        Ok(ReduceOutput {
            lines,
            records: entries.len() as u64,
        })
    }

    fn result_format(&self) -> ResultFormat {
        ResultFormat {
            header: None,
            sort_key_prefix: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::write_results;

    fn run(job: &Grep, chunks: &[(&str, u64, &[u8])], partitions: u32) -> String {
        let mut per_partition = vec![Vec::new(); partitions as usize];
        for &(source, first_line, data) in chunks {
            let ctx = ChunkContext {
                source,
                offset: 0,
                first_line,
                partitions,
            };
            for (p, partial) in job
                .map_chunk(&ctx, data)
                .unwrap()
                .partials
                .into_iter()
                .enumerate()
            {
                per_partition[p].push(partial);
            }
        }
        let results: Vec<Vec<u8>> = per_partition
            .into_iter()
            .map(|partials| job.reduce_partition(partials).unwrap().lines)
            .collect();
        let mut out = Vec::new();
        write_results(&results, &job.result_format(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn grep(pattern: &str) -> Grep {
        Grep {
            regex: Regex::new(pattern).unwrap(),
        }
    }

    #[test]
    fn numbers_lines_and_orders_numerically() {
        let lines: String = (1..=12).map(|i| format!("line {i}\r\n")).collect();
        let (a, b) = lines.split_at(lines.find("line 9").unwrap());
        let out = run(
            &grep("^line (9|10|1)$"),
            &[
                ("b.txt", 9, b.as_bytes()),
                ("a.txt", 1, a.as_bytes()),
                ("b.txt", 1, a.as_bytes()),
            ],
            3,
        );
        assert_eq!(
            out,
            "a.txt:1\tline 1\nb.txt:1\tline 1\nb.txt:9\tline 9\nb.txt:10\tline 10\n"
        );
    }

    #[test]
    fn unterminated_and_empty_lines() {
        assert_eq!(
            run(&grep("^$"), &[("f", 1, b"\n\nx\n\r\n")], 2),
            "f:1\t\nf:2\t\nf:4\t\n"
        );
        assert_eq!(run(&grep("z"), &[("f", 5, b"a\nz")], 1), "f:6\tz\n");
        assert_eq!(run(&grep("."), &[("f", 1, b"")], 1), "");
    }

    #[test]
    fn pattern_is_required_and_validated() {
        assert!(build(&serde_json::Value::Null).is_err());
        assert!(build(&serde_json::json!({"pattern": "("})).is_err());
        let huge = serde_json::json!({"pattern": "\\w{1000}{1000}"});
        let err = build(&huge).err().unwrap();
        assert!(err.message.contains("not usable"), "{}", err.message);
        assert!(build(&serde_json::json!({"pattern": "a+b"})).is_ok());
    }
}
