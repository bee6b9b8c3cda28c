//! Splitting input into chunks of whole records, streaming.
//!
//! This module owns two things: turning the `INPUT...` arguments into an ordered list of
//! sources ([`expand_inputs`]), and cutting one source into chunks ([`Chunker`]).
//!
//! A record is a line ([`RecordFormat::Lines`], the default) or a CSV record
//! ([`RecordFormat::CsvWithHeader`]: RFC 4180, a quoted field may hold `,`, `""` and line
//! ends, so a record may span several lines). Rules (the result of a job must not depend on
//! where the cuts fall):
//! - a chunk ends right after a `\n` that ends a record, or at the end of its source; it
//!   never splits a record;
//! - a chunk holds as many whole records as fit in `chunk_size` bytes;
//! - a record longer than `chunk_size` becomes a chunk of its own;
//! - a record longer than `max_record` is refused with the source and byte offset, so a
//!   binary file, a missing newline or an unclosed quote cannot make the producer buffer
//!   without limit.
//!
//! CSV: the first non-blank record of a source is its header. It is not a chunk of its own:
//! every chunk of the source starts with a copy of it (so a worker can name the columns of
//! any chunk), and the chunk's `offset` and `first_line` are those of its first record after
//! the header. The quote tracking is the state machine of the `csv` crate's parser (a `"`
//! opens a quoted field only at the start of a field; `""` inside one is a quote), so the
//! producer's cuts fall exactly where the workers' parser sees record ends.
//!
//! The chunker holds at most about `max(chunk_size, longest line) * 2` bytes, whatever
//! the size of the source, so standard input and files larger than memory stream through.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Where one input comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    /// A regular file; `display` is the path as the user gave it (joined below a directory).
    File { path: PathBuf, display: String },
    /// Standard input (`-`).
    Stdin,
}

impl InputSource {
    /// The name used in messages, chunk metadata and job output.
    pub fn display(&self) -> &str {
        match self {
            InputSource::File { display, .. } => display,
            InputSource::Stdin => "-",
        }
    }

    /// Opens the source for reading.
    pub fn open(&self) -> Result<Box<dyn Read + Send>, InputError> {
        match self {
            InputSource::File { path, display } => File::open(path)
                .map(|f| Box::new(f) as Box<dyn Read + Send>)
                .map_err(|error| InputError::Unreadable {
                    path: display.clone(),
                    error,
                }),
            InputSource::Stdin => Ok(Box::new(io::stdin())),
        }
    }
}

/// Why an input could not be used.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("input `{path}` does not exist")]
    Missing { path: String },
    #[error("input `{path}` cannot be read: {error}")]
    Unreadable { path: String, error: io::Error },
    #[error("input `{path}` is not a regular file or directory (a FIFO, socket or device); give a file, a directory or `-` for standard input")]
    NotRegular { path: String },
    #[error("standard input (`-`) is given more than once")]
    StdinTwice,
    #[error("no input given: name files, directories, or `-` for standard input")]
    Empty,
}

/// Expands `INPUT...` into sources, in order: files as given; directories as every regular
/// file below them, recursively, sorted by path; `-` as standard input. Every file is opened
/// once here so that a missing or unreadable input is reported before anything is published.
pub fn expand_inputs(inputs: &[String]) -> Result<Vec<InputSource>, InputError> {
    if inputs.is_empty() {
        return Err(InputError::Empty);
    }
    let mut sources = Vec::new();
    let mut saw_stdin = false;
    for input in inputs {
        if input == "-" {
            if saw_stdin {
                return Err(InputError::StdinTwice);
            }
            saw_stdin = true;
            sources.push(InputSource::Stdin);
            continue;
        }
        let path = PathBuf::from(input);
        let meta = std::fs::metadata(&path).map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => InputError::Missing {
                path: input.clone(),
            },
            _ => InputError::Unreadable {
                path: input.clone(),
                error,
            },
        })?;
        if meta.is_dir() {
            walk_directory(&path, input, &mut sources)?;
        } else if meta.is_file() {
            let source = InputSource::File {
                path,
                display: input.clone(),
            };
            source.open()?;
            sources.push(source);
        } else {
            return Err(InputError::NotRegular {
                path: input.clone(),
            });
        }
    }
    Ok(sources)
}

fn walk_directory(
    dir: &Path,
    display: &str,
    sources: &mut Vec<InputSource>,
) -> Result<(), InputError> {
    let unreadable = |error| InputError::Unreadable {
        path: display.to_string(),
        error,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreadable)?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let name = entry.file_name();
        let child_display = format!(
            "{}/{}",
            display.trim_end_matches('/'),
            name.to_string_lossy()
        );
        let child = entry.path();
        // symlink_metadata: a symlinked directory is not followed (no cycles); a symlinked
        // file is read through the link.
        let link_meta =
            std::fs::symlink_metadata(&child).map_err(|error| InputError::Unreadable {
                path: child_display.clone(),
                error,
            })?;
        if link_meta.is_dir() {
            walk_directory(&child, &child_display, sources)?;
            continue;
        }
        let meta = match std::fs::metadata(&child) {
            Ok(meta) => meta,
            Err(_) if link_meta.is_symlink() => {
                tracing::warn!(path = %child_display, "skipping dangling symlink");
                continue;
            }
            Err(error) => {
                return Err(InputError::Unreadable {
                    path: child_display,
                    error,
                })
            }
        };
        if meta.is_file() {
            let source = InputSource::File {
                path: child,
                display: child_display,
            };
            source.open()?;
            sources.push(source);
        } else {
            tracing::warn!(path = %child_display, "skipping entry that is not a regular file");
        }
    }
    Ok(())
}

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
fn last_record_end(format: RecordFormat, data: &[u8]) -> Option<usize> {
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
fn first_record_end(format: RecordFormat, data: &[u8], from: usize) -> Option<usize> {
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

/// One chunk of one source: whole records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub data: Vec<u8>,
    /// Byte offset of `data[0]` in its source.
    pub offset: u64,
    /// 1-based number of the first line of the chunk in its source.
    pub first_line: u64,
    /// Bytes at the start of `data` that are a copy of the source's header (CSV), not
    /// records of this chunk.
    pub header_len: usize,
}

/// Why a source could not be chunked.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("`{source_name}`: line {line} at byte offset {offset} is longer than the maximum record size of {limit} bytes; raise --max-record-size if the input really has such lines")]
    LineTooLong {
        source_name: String,
        offset: u64,
        line: u64,
        limit: u64,
    },
    #[error("`{source_name}`: read failed at byte offset {offset}: {error}")]
    Io {
        source_name: String,
        offset: u64,
        error: io::Error,
    },
}

/// Cuts one source into [`Chunk`]s; see the module docs for the rules.
pub struct Chunker<R> {
    reader: R,
    source_name: String,
    chunk_size: usize,
    max_record: usize,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    offset: u64,
    line: u64,
    format: RecordFormat,
    /// The CSV header, once read.
    header: Option<Vec<u8>>,
}

impl<R: Read> Chunker<R> {
    /// A chunker of whole lines.
    pub fn new(reader: R, source_name: &str, chunk_size: usize, max_record: usize) -> Self {
        Self::with_format(
            reader,
            source_name,
            chunk_size,
            max_record,
            RecordFormat::Lines,
        )
    }

    /// A chunker of whole records of `format`.
    pub fn with_format(
        reader: R,
        source_name: &str,
        chunk_size: usize,
        max_record: usize,
        format: RecordFormat,
    ) -> Self {
        assert!(chunk_size > 0, "chunk_size is validated to be positive");
        Chunker {
            reader,
            source_name: source_name.to_string(),
            chunk_size,
            max_record: max_record.max(1),
            buf: Vec::new(),
            start: 0,
            end: 0,
            eof: false,
            offset: 0,
            line: 1,
            format,
            header: None,
        }
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Reads until at least `want` bytes are buffered or the source ends.
    fn fill(&mut self, want: usize) -> Result<(), ChunkError> {
        while !self.eof && self.buffered() < want {
            if self.start > 0 && (self.start >= self.buf.len() / 2 || self.end == self.buf.len()) {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let needed = self.start + want;
            if self.buf.len() < needed {
                // Read in large blocks, but never grow past what was asked for by more than
                // a block: memory stays bounded by the chunk size and the longest line.
                let target = needed.max(self.end + 64 * 1024);
                self.buf.resize(target, 0);
            }
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    return Err(ChunkError::Io {
                        source_name: self.source_name.clone(),
                        offset: self.offset + self.buffered() as u64,
                        error,
                    })
                }
            }
        }
        Ok(())
    }

    /// Skips `len` buffered bytes that have been used.
    fn advance(&mut self, len: usize) {
        let consumed = &self.buf[self.start..self.start + len];
        self.line += memchr::memchr_iter(b'\n', consumed).count() as u64;
        self.start += len;
        self.offset += len as u64;
    }

    /// Reads the CSV header: the first record that is not a blank line (the `csv` parser
    /// skips blank lines too). `None` for a source with no record at all.
    fn read_header(&mut self) -> Result<Option<Vec<u8>>, ChunkError> {
        loop {
            self.fill(self.chunk_size.saturating_add(1))?;
            if self.buffered() == 0 {
                return Ok(None);
            }
            let buffered = &self.buf[self.start..self.end];
            let len = match first_record_end(self.format, buffered, 0) {
                Some(end) => end,
                None if self.eof => buffered.len(),
                None => self.long_record_len()?,
            };
            self.check_record(len)?;
            let record = &self.buf[self.start..self.start + len];
            let blank = record.iter().all(|&b| b == b'\n' || b == b'\r');
            let header = record.to_vec();
            self.advance(len);
            if !blank {
                return Ok(Some(header));
            }
        }
    }

    /// The next chunk, or `None` at the end of the source.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, ChunkError> {
        if self.format == RecordFormat::CsvWithHeader && self.header.is_none() {
            match self.read_header()? {
                Some(header) => self.header = Some(header),
                None => return Ok(None),
            }
        }
        self.fill(self.chunk_size.saturating_add(1))?;
        if self.buffered() == 0 {
            return Ok(None);
        }
        let len = if self.eof && self.buffered() <= self.chunk_size {
            self.buffered()
        } else {
            let window = &self.buf[self.start..self.start + self.chunk_size];
            match last_record_end(self.format, window) {
                Some(end) => end,
                None => self.long_record_len()?,
            }
        };
        let header = self.header.as_deref().unwrap_or_default();
        let mut data = Vec::with_capacity(header.len() + len);
        data.extend_from_slice(header);
        data.extend_from_slice(&self.buf[self.start..self.start + len]);
        let chunk = Chunk {
            offset: self.offset,
            first_line: self.line,
            header_len: header.len(),
            data,
        };
        self.advance(len);
        Ok(Some(chunk))
    }

    /// Length of the record at the start of the buffer, which is known to be longer than
    /// `chunk_size`: it becomes a chunk of its own, unless it exceeds `max_record`.
    fn long_record_len(&mut self) -> Result<usize, ChunkError> {
        let mut searched = self.chunk_size.min(self.buffered());
        loop {
            let buffered = &self.buf[self.start..self.end];
            if let Some(len) = first_record_end(self.format, buffered, searched) {
                return self.check_record(len).map(|()| len);
            }
            searched = self.buffered();
            if self.eof {
                return self.check_record(searched).map(|()| searched);
            }
            if searched > self.max_record {
                return self.check_record(searched).map(|()| searched);
            }
            let want = (searched * 2).min(self.max_record + 1).max(searched + 1);
            self.fill(want)?;
        }
    }

    fn check_record(&self, len: usize) -> Result<(), ChunkError> {
        // A line's length excludes its newline.
        let line_len = if self.buf[self.start + len - 1] == b'\n' {
            len - 1
        } else {
            len
        };
        if line_len > self.max_record {
            return Err(ChunkError::LineTooLong {
                source_name: self.source_name.clone(),
                offset: self.offset,
                line: self.line,
                limit: self.max_record as u64,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(input: &[u8], chunk_size: usize, max_record: usize) -> Vec<Chunk> {
        let mut chunker = Chunker::new(input, "t", chunk_size, max_record);
        let mut out = Vec::new();
        while let Some(chunk) = chunker.next_chunk().unwrap() {
            out.push(chunk);
        }
        out
    }

    #[test]
    fn chunks_cover_input_exactly_on_line_boundaries() {
        let input = b"alpha beta\ngamma\n\ndelta epsilon zeta\nlast line no newline";
        for size in 1..=input.len() + 3 {
            let got = chunks(input, size, 1 << 20);
            let joined: Vec<u8> = got.iter().flat_map(|c| c.data.clone()).collect();
            assert_eq!(joined, input, "chunk size {size}");
            let mut offset = 0;
            let mut line = 1;
            for (i, chunk) in got.iter().enumerate() {
                assert_eq!(chunk.offset, offset);
                assert_eq!(chunk.first_line, line);
                if i + 1 < got.len() {
                    assert_eq!(*chunk.data.last().unwrap(), b'\n', "size {size}");
                }
                // More than one line only if they fit.
                let lines = chunk.data.iter().filter(|&&b| b == b'\n').count();
                if chunk.data.len() > size {
                    assert!(lines <= 1, "oversized chunk must be a single line");
                }
                offset += chunk.data.len() as u64;
                line += lines as u64;
            }
        }
    }

    #[test]
    fn packs_lines_up_to_chunk_size() {
        let got = chunks(b"aa\nbb\ncc\n", 6, 100);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].data, b"aa\nbb\n");
        assert_eq!(got[1].data, b"cc\n");
        assert_eq!(got[1].first_line, 3);
    }

    #[test]
    fn long_line_is_own_chunk() {
        let got = chunks(b"a\nbbbbbbbbbb\nc\n", 4, 100);
        let datas: Vec<&[u8]> = got.iter().map(|c| c.data.as_slice()).collect();
        assert_eq!(datas, vec![&b"a\n"[..], b"bbbbbbbbbb\n", b"c\n"]);
    }

    #[test]
    fn line_longer_than_max_record_is_refused_with_offset() {
        let mut chunker = Chunker::new(&b"ok\nthis line is too long\n"[..], "f.txt", 4, 10);
        assert_eq!(chunker.next_chunk().unwrap().unwrap().data, b"ok\n");
        match chunker.next_chunk() {
            Err(ChunkError::LineTooLong {
                source_name,
                offset,
                line,
                limit,
            }) => {
                assert_eq!(source_name, "f.txt");
                assert_eq!(offset, 3);
                assert_eq!(line, 2);
                assert_eq!(limit, 10);
            }
            other => panic!("expected LineTooLong, got {other:?}"),
        }
    }

    #[test]
    fn line_of_exactly_max_record_is_accepted() {
        let got = chunks(b"0123456789\nx", 2, 10);
        assert_eq!(got[0].data, b"0123456789\n");
        assert_eq!(got[1].data, b"x");
    }

    #[test]
    fn unterminated_long_tail_is_refused() {
        let mut chunker = Chunker::new(&b"abcdefghijklmnop"[..], "f", 2, 8);
        assert!(matches!(
            chunker.next_chunk(),
            Err(ChunkError::LineTooLong { offset: 0, .. })
        ));
    }

    fn csv_records(data: &[u8], first_line: u64) -> Vec<(u64, Vec<Vec<u8>>)> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(data);
        let mut lines = crate::jobs::LineTracker::new(data, first_line);
        reader
            .byte_records()
            .map(|r| {
                let r = r.unwrap();
                let line = lines.line_at(r.position().unwrap().byte());
                (line, r.iter().map(<[u8]>::to_vec).collect())
            })
            .collect()
    }

    #[test]
    fn csv_chunks_end_on_record_boundaries_and_carry_the_header() {
        let input: &[u8] = b"\r\nid,text,n\r\n1,\"multi\nline, with \"\"quotes\"\"\",3\n2,plain,4\n\n3,\"a\"\"\n\",5\r\n4,x\"y,6\n5,\"\",7";
        let whole = csv_records(input, 1);
        let header = whole[0].1.clone();
        for size in 1..=input.len() + 2 {
            let mut chunker =
                Chunker::with_format(input, "t", size, 1 << 20, RecordFormat::CsvWithHeader);
            let mut records = vec![(whole[0].0, header.clone())];
            let mut offset = 0;
            while let Some(chunk) = chunker.next_chunk().unwrap() {
                let parsed = csv_records(&chunk.data[..chunk.header_len], 1);
                assert_eq!(parsed[0].1, header, "size {size}");
                assert_eq!(&chunk.data[..chunk.header_len], b"id,text,n\r\n");
                assert!(chunk.offset >= offset);
                offset = chunk.offset;
                let body = &chunk.data[chunk.header_len..];
                assert_eq!(
                    &input[chunk.offset as usize..chunk.offset as usize + body.len()],
                    body
                );
                records.extend(csv_records(body, chunk.first_line));
            }
            assert_eq!(records, whole, "chunk size {size}");
        }
    }

    #[test]
    fn csv_without_records_has_no_chunks() {
        for input in [&b""[..], b"a,b\n", b"\n\na,b", b"\r\n"] {
            let mut chunker = Chunker::with_format(input, "t", 4, 100, RecordFormat::CsvWithHeader);
            assert!(chunker.next_chunk().unwrap().is_none(), "{input:?}");
        }
    }

    #[test]
    fn unclosed_quote_is_refused_as_an_overlong_record() {
        let input = b"a,b\n1,\"never closed\n2,3\n4,5\n";
        let mut chunker = Chunker::with_format(&input[..], "f", 4, 10, RecordFormat::CsvWithHeader);
        assert!(matches!(
            chunker.next_chunk(),
            Err(ChunkError::LineTooLong { line: 2, .. })
        ));
    }

    #[test]
    fn empty_input_has_no_chunks() {
        assert!(chunks(b"", 10, 10).is_empty());
    }

    #[test]
    fn expand_reports_missing_and_sorts_directories() {
        let dir = std::env::temp_dir().join(format!("chunkflow-expand-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("b")).unwrap();
        std::fs::write(dir.join("b/z.txt"), "z").unwrap();
        std::fs::write(dir.join("a.txt"), "a").unwrap();
        std::fs::write(dir.join("c.txt"), "c").unwrap();
        let root = dir.to_string_lossy().to_string();
        let got = expand_inputs(std::slice::from_ref(&root)).unwrap();
        let names: Vec<&str> = got.iter().map(|s| s.display()).collect();
        assert_eq!(
            names,
            vec![
                format!("{root}/a.txt"),
                format!("{root}/b/z.txt"),
                format!("{root}/c.txt")
            ]
        );
        let missing = format!("{root}/nope");
        match expand_inputs(std::slice::from_ref(&missing)) {
            Err(InputError::Missing { path }) => assert_eq!(path, missing),
            other => panic!("expected Missing, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
