//! Deterministic sample data for demos, tests and benchmarks: the same seed and size give
//! the same bytes on every machine.
//!
//! The text corpus draws words from a synthetic vocabulary with a heavy head (log-uniform
//! ranks, close to Zipf's law in natural text), with occasional capitals and punctuation,
//! in lines of a few dozen words.

use std::io::{self, Write};

/// A small, fast, deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ra", "te", "su", "no", "vi", "da", "pe", "zu", "chi", "bor", "en", "al",
    "tra", "qui", "ex", "or", "um", "sta", "ne", "ri", "go", "fa", "ly", "dre", "ston", "mar",
    "ket", "cus", "tom",
];

/// The `rank`-th word of the synthetic vocabulary (distinct for distinct ranks).
pub fn vocabulary_word(rank: u64) -> String {
    let base = SYLLABLES.len() as u64;
    let mut word = String::new();
    let mut n = rank;
    loop {
        word.push_str(SYLLABLES[(n % base) as usize]);
        n /= base;
        if n == 0 {
            break;
        }
        n -= 1;
    }
    word
}

/// Writes about `size` bytes (whole lines, at least `size`) of text to `out`.
pub fn write_text(out: &mut impl Write, size: u64, seed: u64, vocabulary: u64) -> io::Result<u64> {
    let vocabulary = vocabulary.max(1);
    let words: Vec<String> = (0..vocabulary).map(vocabulary_word).collect();
    let mut rng = SplitMix64::new(seed);
    let ln_vocab = (vocabulary as f64).ln();
    let mut line = Vec::with_capacity(512);
    let mut written = 0u64;
    while written < size {
        line.clear();
        let count = 4 + rng.below(14);
        for i in 0..count {
            if i > 0 {
                line.push(b' ');
            }
            let rank = ((rng.unit() * ln_vocab).exp() as u64).saturating_sub(1) % vocabulary;
            let word = words[rank as usize].as_bytes();
            match rng.below(40) {
                0 => line.extend(word.iter().map(u8::to_ascii_uppercase)),
                1 | 2 => {
                    line.push(word[0].to_ascii_uppercase());
                    line.extend_from_slice(&word[1..]);
                }
                _ => line.extend_from_slice(word),
            }
            match rng.below(25) {
                0 => line.push(b','),
                1 => line.push(b'.'),
                _ => {}
            }
        }
        line.push(b'\n');
        out.write_all(&line)?;
        written += line.len() as u64;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_sized() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_text(&mut a, 10_000, 7, 1000).unwrap();
        write_text(&mut b, 10_000, 7, 1000).unwrap();
        assert_eq!(a, b);
        assert!(a.len() >= 10_000 && a.len() < 10_400);
        assert!(a.ends_with(b"\n"));
        let mut c = Vec::new();
        write_text(&mut c, 10_000, 8, 1000).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn vocabulary_words_are_distinct() {
        let words: std::collections::HashSet<String> = (0..50_000).map(vocabulary_word).collect();
        assert_eq!(words.len(), 50_000);
    }
}
