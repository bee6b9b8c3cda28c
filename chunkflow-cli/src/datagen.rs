//! Deterministic sample data for demos, tests and benchmarks: the same seed and size give
//! the same bytes on every machine.
//!
//! The text corpus draws words from a synthetic vocabulary with a heavy head (log-uniform
//! ranks, close to Zipf's law in natural text), with occasional capitals and punctuation,
//! in lines of a few dozen words.
//!
//! The transaction data (`csv`, `jsonl`) is customer transactions — customer id, country,
//! category, amount with two decimals, UTC timestamp in 2024 — for groupby and custom jobs.
//! The same seed gives the same records in both formats. Some countries and categories
//! need CSV quoting (a comma, a quote) and some are not ASCII.

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

/// Countries of the transaction data (a heavy head: earlier entries are more frequent).
pub const COUNTRIES: &[&str] = &[
    "US",
    "DE",
    "FR",
    "GB",
    "Côte d'Ivoire",
    "Korea, Republic of",
    "日本",
    "BR",
    "IN",
    "España",
];

/// Categories of the transaction data.
pub const CATEGORIES: &[&str] = &[
    "Books",
    "Electronics",
    "Home, Garden",
    "Toys \"Kids\"",
    "Grocery",
    "Beauty",
    "Sports",
];

/// One generated transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub customer_id: String,
    pub country: &'static str,
    pub category: &'static str,
    /// The amount in cents.
    pub amount_cents: u64,
    /// `YYYY-MM-DDTHH:MM:SSZ`, in 2024.
    pub timestamp: String,
}

impl Transaction {
    /// The amount with two decimals: `12.05`.
    pub fn amount(&self) -> String {
        format!("{}.{:02}", self.amount_cents / 100, self.amount_cents % 100)
    }
}

/// Draws the next transaction.
pub fn next_transaction(rng: &mut SplitMix64) -> Transaction {
    // Log-uniform ranks give a heavy head, like real customers and countries.
    let skewed = |rng: &mut SplitMix64, n: usize| {
        (((rng.unit() * (n as f64 + 1.0).ln()).exp() as usize).saturating_sub(1)).min(n - 1)
    };
    let customer = skewed(rng, 50_000);
    let country = COUNTRIES[skewed(rng, COUNTRIES.len())];
    let category = CATEGORIES[rng.below(CATEGORIES.len() as u64) as usize];
    let amount_cents = 50 + rng.below(50_000) + if rng.below(100) == 0 { 1_000_000 } else { 0 };
    let second = rng.below(366 * 86_400);
    let (day_of_year, rem) = (second / 86_400, second % 86_400);
    let (month, day) = month_day_2024(day_of_year);
    Transaction {
        customer_id: format!("C{customer:06}"),
        country,
        category,
        amount_cents,
        timestamp: format!(
            "2024-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        ),
    }
}

/// Month and day of the `day`-th day (0-based) of the leap year 2024.
fn month_day_2024(mut day: u64) -> (u64, u64) {
    const DAYS: [u64; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    for (month, &days) in DAYS.iter().enumerate() {
        if day < days {
            return (month as u64 + 1, day + 1);
        }
        day -= days;
    }
    (12, 31)
}

fn csv_field(out: &mut Vec<u8>, field: &str) {
    if field.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(field.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(field.as_bytes());
    }
}

/// Writes about `size` bytes (whole records, at least `size`) of transactions as CSV with a
/// header row (RFC 4180 quoting, `\n` line ends).
pub fn write_transactions_csv(out: &mut impl Write, size: u64, seed: u64) -> io::Result<u64> {
    let header = b"customer_id,country,category,amount,timestamp\n";
    out.write_all(header)?;
    let mut written = header.len() as u64;
    let mut rng = SplitMix64::new(seed);
    let mut line = Vec::with_capacity(128);
    while written < size {
        let t = next_transaction(&mut rng);
        line.clear();
        for (i, field) in [
            t.customer_id.as_str(),
            t.country,
            t.category,
            &t.amount(),
            &t.timestamp,
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                line.push(b',');
            }
            csv_field(&mut line, field);
        }
        line.push(b'\n');
        out.write_all(&line)?;
        written += line.len() as u64;
    }
    Ok(written)
}

/// Writes about `size` bytes (whole lines) of the same transactions as JSON Lines, the
/// amount a JSON number with two decimals.
pub fn write_transactions_jsonl(out: &mut impl Write, size: u64, seed: u64) -> io::Result<u64> {
    let mut written = 0u64;
    let mut rng = SplitMix64::new(seed);
    while written < size {
        let t = next_transaction(&mut rng);
        let line = format!(
            "{{\"customer_id\":{},\"country\":{},\"category\":{},\"amount\":{},\"timestamp\":{}}}\n",
            serde_json::Value::from(t.customer_id.as_str()),
            serde_json::Value::from(t.country),
            serde_json::Value::from(t.category),
            t.amount(),
            serde_json::Value::from(t.timestamp.as_str()),
        );
        out.write_all(line.as_bytes())?;
        written += line.len() as u64;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_are_deterministic_and_parse() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_transactions_csv(&mut a, 20_000, 3).unwrap();
        write_transactions_csv(&mut b, 20_000, 3).unwrap();
        assert_eq!(a, b);
        assert!(a.len() >= 20_000);
        let mut reader = csv::Reader::from_reader(a.as_slice());
        let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert!(records.iter().all(|r| r.len() == 5));
        assert!(records.iter().any(|r| &r[1] == "Korea, Republic of"));
        let mut jsonl = Vec::new();
        write_transactions_jsonl(&mut jsonl, 20_000, 3).unwrap();
        let first: serde_json::Value =
            serde_json::from_slice(jsonl.split(|&b| b == b'\n').next().unwrap()).unwrap();
        assert_eq!(first["customer_id"], records[0][0]);
        assert_eq!(first["amount"].to_string(), records[0][3]);
        assert_eq!(month_day_2024(0), (1, 1));
        assert_eq!(month_day_2024(59), (2, 29));
        assert_eq!(month_day_2024(365), (12, 31));
    }

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
