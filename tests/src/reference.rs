//! Inputs and independent sequential references. The references define each job's result
//! directly from its specification, file by file, and must never call the library's job
//! code: a result is checked against them, so sharing code would check nothing. The
//! inputs are deterministic (seeded) so that a failure can be replayed.

use std::collections::BTreeMap;

/// The sequential reference: the definition of wordcount, applied file by file, written
/// independently of the library.
pub fn reference_wordcount(files: &[&[u8]]) -> String {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for data in files {
        let text = String::from_utf8_lossy(data);
        let mut word = String::new();
        for c in text.chars().chain(std::iter::once('\n')) {
            if c.is_alphanumeric() {
                word.push(c);
            } else if !word.is_empty() {
                *counts.entry(word.to_lowercase()).or_default() += 1;
                word.clear();
            }
        }
    }
    // BTreeMap<String> orders by UTF-8 bytes, which is the result's byte order.
    counts
        .into_iter()
        .map(|(w, c)| format!("{w}\t{c}\n"))
        .collect()
}

pub fn line_count(data: &[u8]) -> u64 {
    let newlines = data.iter().filter(|&&b| b == b'\n').count() as u64;
    newlines + u64::from(!data.is_empty() && !data.ends_with(b"\n"))
}

/// Deterministic text with the nasty cases: mixed case, Unicode letters and digits,
/// punctuation, CRLF and CR, invalid UTF-8, long and empty lines.
pub fn generate_text(seed: u64, lines: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the",
        "The",
        "THE",
        "customer",
        "Customer",
        "order",
        "ORDER",
        "trend",
        "data",
        "Straße",
        "STRASSE",
        "café",
        "CAFÉ",
        "ΟΔΟΣ",
        "Σίσυφος",
        "日本語",
        "naïve",
        "x1",
        "42",
        "½",
        "İstanbul",
        "mapreduce",
        "Reduce",
        "chunk",
        "flow",
        "ǅemal",
        "ﬁne",
        "z",
    ];
    const SEPARATORS: &[&str] = &[" ", " ", " ", ", ", ". ", "\t", " - ", "!", "'", "(", ")"];
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut next = move |bound: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) as usize) % bound
    };
    let mut out = Vec::new();
    for line in 0..lines {
        let words = next(12);
        for w in 0..words {
            if w > 0 {
                out.extend_from_slice(SEPARATORS[next(SEPARATORS.len())].as_bytes());
            }
            out.extend_from_slice(WORDS[next(WORDS.len())].as_bytes());
            if next(50) == 0 {
                out.extend_from_slice(b"\xff\xfe");
            }
        }
        if line % 97 == 0 {
            out.extend_from_slice(&b"long".repeat(next(200)));
        }
        match next(10) {
            0 => out.extend_from_slice(b"\r\n"),
            1 => out.extend_from_slice(b"\r"),
            _ => out.push(b'\n'),
        }
    }
    out
}

/// An independent RFC 4180 reader: records with the line each starts on. Quoted fields
/// may hold commas, `""` and line ends; records end at `\n` or `\r\n` outside quotes; blank
/// lines are not records.
pub fn parse_csv(data: &[u8]) -> Vec<(u64, Vec<Vec<u8>>)> {
    let mut records = Vec::new();
    let (mut line, mut i) = (1u64, 0usize);
    while i < data.len() {
        let start_line = line;
        let mut fields = Vec::new();
        let mut field = Vec::new();
        let mut quoted = false;
        let mut at_field_start = true;
        loop {
            if i >= data.len() {
                fields.push(std::mem::take(&mut field));
                break;
            }
            let c = data[i];
            i += 1;
            if quoted {
                if c == b'"' && data.get(i) == Some(&b'"') {
                    field.push(b'"');
                    i += 1;
                } else if c == b'"' {
                    quoted = false;
                } else {
                    if c == b'\n' {
                        line += 1;
                    }
                    field.push(c);
                }
                continue;
            }
            match c {
                b'"' if at_field_start => {
                    quoted = true;
                    at_field_start = false;
                }
                b',' => {
                    fields.push(std::mem::take(&mut field));
                    at_field_start = true;
                }
                b'\r' if data.get(i) == Some(&b'\n') => {}
                b'\n' => {
                    line += 1;
                    fields.push(std::mem::take(&mut field));
                    break;
                }
                _ => {
                    field.push(c);
                    at_field_start = false;
                }
            }
        }
        let blank = fields.len() == 1 && fields[0].is_empty();
        if !blank {
            records.push((start_line, fields));
        }
    }
    records
}

/// A field that is not a decimal with exactly two places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotCents;

/// A decimal with exactly two places, in cents: `Some(Ok(cents))`, `None` if empty,
/// `Some(Err(NotCents))` if not such a number.
pub fn cents(text: &[u8]) -> Option<Result<i64, NotCents>> {
    let text = std::str::from_utf8(text).ok()?.trim();
    if text.is_empty() {
        return None;
    }
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let Some((whole, frac)) = digits.split_once('.') else {
        return Some(Err(NotCents));
    };
    let ok = !whole.is_empty()
        && frac.len() == 2
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit());
    if !ok {
        return Some(Err(NotCents));
    }
    // Both parts are checked to be ASCII digits; the generated amounts are far from i64's
    // limits.
    let digits_value = |part: &str| part.parse::<i64>().expect("checked: ASCII digits");
    let value = digits_value(whole) * 100 + digits_value(frac);
    Some(Ok(if negative { -value } else { value }))
}

/// Cents as a decimal with two places.
pub fn format_cents(value: i64) -> String {
    let sign = if value < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", value.abs() / 100, value.abs() % 100)
}

/// The average of `count` values summing to `sum` cents, rounded half away from zero to
/// six places.
pub fn format_average(sum: i64, count: i64) -> String {
    let numerator = i128::from(sum) * 10_000;
    let count = i128::from(count);
    let mut q = numerator / count;
    if (numerator % count).abs() * 2 >= count {
        q += numerator.signum();
    }
    let sign = if q < 0 { "-" } else { "" };
    format!("{sign}{}.{:06}", q.abs() / 1_000_000, q.abs() % 1_000_000)
}

/// Escapes `\`, tab, newline and carriage return as groupby writes key fields.
pub fn escape(field: &[u8]) -> String {
    String::from_utf8_lossy(field)
        .replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// Aggregates of one group, in cents.
#[derive(Debug, Default, Clone)]
pub struct Agg {
    pub count: i64,
    pub present: i64,
    pub sum: i64,
    pub min: Option<i64>,
    pub max: Option<i64>,
}

impl Agg {
    pub fn add(&mut self, value: Option<i64>) {
        self.count += 1;
        if let Some(v) = value {
            self.present += 1;
            self.sum += v;
            self.min = Some(self.min.map_or(v, |m| m.min(v)));
            self.max = Some(self.max.map_or(v, |m| m.max(v)));
        }
    }

    /// `count, sum, min, max, avg` columns.
    pub fn columns(&self) -> String {
        let (Some(min), Some(max)) = (self.min, self.max) else {
            // No value present in the group.
            return format!("{}\t\t\t\t", self.count);
        };
        format!(
            "{}\t{}\t{}\t{}\t{}",
            self.count,
            format_cents(self.sum),
            format_cents(min),
            format_cents(max),
            format_average(self.sum, self.present)
        )
    }
}

/// Groups as groupby prints them: sorted by the tuple of key byte strings.
pub fn groups_text(header: &str, groups: &BTreeMap<Vec<Vec<u8>>, Agg>) -> String {
    let mut out = format!("{header}\n");
    for (key, agg) in groups {
        let key: Vec<String> = key.iter().map(|k| escape(k)).collect();
        out.push_str(&format!("{}\t{}\n", key.join("\t"), agg.columns()));
    }
    out
}
