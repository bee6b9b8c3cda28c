//! Where records end: the one definition of a record boundary, shared by the producer's
//! chunker (so cuts fall between records) and the jobs (so a job finds the header copy at
//! the start of a chunk exactly where the chunker put it).
//!
//! A record is a line ([`RecordFormat::Lines`], the default) or a CSV record
//! ([`RecordFormat::CsvWithHeader`]: RFC 4180, a quoted field may hold `,`, `""` and line
//! ends, so a record may span several lines). The quote tracking is the state machine of
//! the `csv` crate's parser (a `"` opens a quoted field only at the start of a field; `""`
//! inside one is a quote), so the producer's cuts fall exactly where the workers' parser
//! sees record ends.
//!
//! These are pure functions over byte slices that start at a record boundary. This module
//! must not read sources, buffer, or parse fields: it only finds where records end.

/// How a source is made of records; chosen by the job ([`crate::jobs::Job::input_format`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordFormat {
    /// Records are lines ending in `\n`.
    #[default]
    Lines,
    /// RFC 4180 CSV with a header record; see the module docs.
    CsvWithHeader,
}

/// State of the CSV record scanner, mirroring `csv_core`'s parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CsvState {
    StartField,
    InField,
    InQuoted,
    QuoteInQuoted,
}

/// Scans `data`, which starts at a record boundary, and returns the end (just past the
/// `\n`) of every record ending in it, in order, through `f`; stops when `f` returns false.
fn scan_csv_records(data: &[u8], mut f: impl FnMut(usize) -> bool) {
    let mut state = CsvState::StartField;
    for (i, &byte) in data.iter().enumerate() {
        state = match (state, byte) {
            (CsvState::InQuoted, b'"') => CsvState::QuoteInQuoted,
            (CsvState::InQuoted, _) => CsvState::InQuoted,
            (CsvState::QuoteInQuoted, b'"') => CsvState::InQuoted,
            (CsvState::StartField, b'"') => CsvState::InQuoted,
            (_, b'\n') => {
                if !f(i + 1) {
                    return;
                }
                CsvState::StartField
            }
            (_, b',' | b'\r') => CsvState::StartField,
            (_, _) => CsvState::InField,
        };
    }
}

/// Length of the first CSV record of `data` (which starts at a record boundary), including
/// its line end; all of `data` if no record ends in it. The same scanner as the chunker's
/// cuts, so a job finds the header copy at the start of a chunk exactly.
pub fn csv_record_len(data: &[u8]) -> usize {
    first_record_end(RecordFormat::CsvWithHeader, data, 0).unwrap_or(data.len())
}

/// End of the last record that ends within `data` (which starts at a record boundary).
pub(crate) fn last_record_end(format: RecordFormat, data: &[u8]) -> Option<usize> {
    match format {
        RecordFormat::Lines => memchr::memrchr(b'\n', data).map(|i| i + 1),
        RecordFormat::CsvWithHeader => {
            let mut last = None;
            scan_csv_records(data, |end| {
                last = Some(end);
                true
            });
            last
        }
    }
}

/// End of the first record of `data` (which starts at a record boundary), searching lines
/// from `from` on (the bytes before it are known to hold no line end).
pub(crate) fn first_record_end(format: RecordFormat, data: &[u8], from: usize) -> Option<usize> {
    match format {
        RecordFormat::Lines => memchr::memchr(b'\n', &data[from..]).map(|i| from + i + 1),
        RecordFormat::CsvWithHeader => {
            let mut first = None;
            scan_csv_records(data, |end| {
                first = Some(end);
                false
            });
            first
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_records_end_after_each_newline() {
        let data = b"ab\ncd\nef";
        assert_eq!(first_record_end(RecordFormat::Lines, data, 0), Some(3));
        assert_eq!(first_record_end(RecordFormat::Lines, data, 3), Some(6));
        assert_eq!(last_record_end(RecordFormat::Lines, data), Some(6));
        assert_eq!(last_record_end(RecordFormat::Lines, b"no newline"), None);
    }

    #[test]
    fn csv_record_spans_quoted_line_ends_and_doubled_quotes() {
        let data = b"1,\"two\nlines, \"\"q\"\"\",3\r\n2,x\"y,4\n5";
        let first = csv_record_len(data);
        assert_eq!(&data[..first], b"1,\"two\nlines, \"\"q\"\"\",3\r\n");
        // A quote inside an unquoted field is a plain byte: the record ends at its `\n`.
        let second = csv_record_len(&data[first..]);
        assert_eq!(&data[first..first + second], b"2,x\"y,4\n");
        assert_eq!(
            last_record_end(RecordFormat::CsvWithHeader, data),
            Some(first + second)
        );
    }

    #[test]
    fn unfinished_csv_record_is_all_of_the_data() {
        let data = b"1,\"never closed\n2,3\n";
        assert_eq!(csv_record_len(data), data.len());
        assert_eq!(last_record_end(RecordFormat::CsvWithHeader, data), None);
    }
}
