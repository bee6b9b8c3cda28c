//! Cutting one source into chunks of whole records, streaming ([`Chunker`]).
//!
//! It exists so that the result of a job does not depend on where the cuts fall: a worker
//! always gets whole records. Where a record ends is [`crate::records`]' decision (a line,
//! or a quote-aware CSV record); where inputs come from is [`crate::input`]'s. This module
//! must not parse fields or look inside records beyond their ends, and must not open
//! inputs: it reads from whatever reader it is given. Rules:
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
//! the header.
//!
//! The chunker holds at most about `max(chunk_size, longest line) * 2` bytes, whatever
//! the size of the source, so standard input and files larger than memory stream through.

use std::io::{self, Read};

use crate::records::{first_record_end, last_record_end, RecordFormat};

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
}
