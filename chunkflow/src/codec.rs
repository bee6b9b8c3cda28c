//! A compact binary encoding for intermediate (map → reduce) data.
//!
//! Partials can hold hundreds of thousands of keys per chunk, so they are not JSON: each
//! entry is `varint(len) bytes`, and numbers are LEB128 varints. Decoding never panics:
//! truncated or corrupt input is a [`CodecError`], which the reducer reports as lost or
//! corrupt intermediate data.

/// Corrupt or truncated intermediate data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt intermediate data at byte {position}: {what}")]
pub struct CodecError {
    pub position: usize,
    pub what: &'static str,
}

/// Appends `value` as an unsigned LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a length-prefixed byte string.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Reads values back from an encoded buffer.
pub struct Reader<'a> {
    data: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, position: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.position >= self.data.len()
    }

    fn error(&self, what: &'static str) -> CodecError {
        CodecError {
            position: self.position,
            what,
        }
    }

    pub fn varint(&mut self) -> Result<u64, CodecError> {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let byte = *self
                .data
                .get(self.position)
                .ok_or_else(|| self.error("truncated varint"))?;
            self.position += 1;
            if shift >= 64 || (shift == 63 && byte > 1) {
                return Err(self.error("varint overflows 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| self.error("length too large"))?;
        self.fixed(len)
    }

    /// The next `len` bytes, which have no length prefix.
    pub fn fixed(&mut self, len: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .position
            .checked_add(len)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| self.error("truncated byte string"))?;
        let slice = &self.data[self.position..end];
        self.position = end;
        Ok(slice)
    }
}

/// A `(key, value)` pair borrowed from an encoded partial.
pub type Pair<'a> = (&'a [u8], &'a [u8]);

/// Every `(bytes, bytes)` pair of some encoded partials, in order: the shape of the
/// partials of jobs that emit `(key, value)` byte strings.
pub fn read_pairs(partials: &[Vec<u8>]) -> Result<Vec<Pair<'_>>, CodecError> {
    let mut pairs = Vec::new();
    for partial in partials {
        let mut reader = Reader::new(partial);
        while !reader.is_empty() {
            pairs.push((reader.bytes()?, reader.bytes()?));
        }
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut out = Vec::new();
        for value in [0, 1, 127, 128, 300, u64::MAX] {
            put_varint(&mut out, value);
        }
        put_bytes(&mut out, b"hello");
        let mut reader = Reader::new(&out);
        for value in [0, 1, 127, 128, 300, u64::MAX] {
            assert_eq!(reader.varint().unwrap(), value);
        }
        assert_eq!(reader.bytes().unwrap(), b"hello");
        assert!(reader.is_empty());
    }

    #[test]
    fn corrupt_input_is_an_error_not_a_panic() {
        assert!(Reader::new(&[0x80]).varint().is_err());
        assert!(Reader::new(&[0xff; 11]).varint().is_err());
        assert!(Reader::new(&[5, b'a']).bytes().is_err());
    }
}
