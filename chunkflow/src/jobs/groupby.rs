//! groupby: group records by key columns and aggregate, over CSV (RFC 4180, with a header
//! row) or JSON Lines.
//!
//! Parameters: `{"format": "csv"|"jsonl", "key": [COL...], "agg": ["count", "sum:COL",
//! "min:COL", "max:COL", "avg:COL"...], "on_bad_record": "fail"|"skip"}`.
//!
//! Values. A CSV field or JSON value that is empty, `null` or absent is *missing*: a key
//! column then groups under the empty string, and numeric aggregates ignore it. A key from
//! JSON is the string's text, or the JSON text of a number, boolean, object or array.
//! Numbers are decimals (`rust_decimal`: 28 significant digits), never floats: a number is
//! `-12.50`, `3`, `1e3`, or a JSON number or a string holding one. Sums are exact, so a sum
//! does not depend on chunking, partitioning or worker count.
//!
//! Aggregates: `count` counts the group's records; `sum` keeps the largest scale of its
//! inputs (`1.5 + 2.25 = 3.75`); `min`/`max` print the value as written (of equal values,
//! the one with more decimals); `avg` is the exact sum divided by the number of values
//! present, rounded half away from zero to 4 more decimals than the sum. An aggregate with
//! no value in its group is empty.
//!
//! Bad records (wrong number of CSV fields, invalid JSON or not an object, a number that
//! does not parse) fail the job naming the file and line, or with `skip` are counted in
//! `records_skipped` and left out. Blank lines are not records.
//!
//! Output: a header line (key columns, then `count`, `sum(COL)`...), then one line per
//! group — key columns then aggregates, tab-separated — sorted by the tuple of key columns
//! (byte order). In output fields, `\`, tab, newline and carriage return are written `\\`,
//! `\t`, `\n`, `\r`.

use std::collections::HashMap;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::grep::numbered_lines;
use super::{
    input_counters, params, partition_of, ChunkContext, Job, JobError, LineTracker, MapOutput,
    RecordFormat, ReduceOutput, ResultFormat,
};
use crate::codec::{put_bytes, put_varint, Reader};
use crate::output::SortKey;
use crate::records::csv_record_len;

pub const KIND: &str = "groupby";

/// Input format of a groupby.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Csv,
    Jsonl,
}

/// What to do with a record that cannot be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadRecordPolicy {
    #[default]
    Fail,
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AggKind {
    Count,
    Sum,
    Min,
    Max,
    Avg,
}

/// One aggregate: `count`, or an operation on a column.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Agg {
    kind: AggKind,
    column: Option<String>,
}

impl Agg {
    fn parse(text: &str) -> Result<Agg, JobError> {
        if text == "count" {
            return Ok(Agg {
                kind: AggKind::Count,
                column: None,
            });
        }
        let (op, column) = text.split_once(':').ok_or_else(|| {
            JobError::new(format!(
                "--agg {text:?}: expected count, sum:COL, min:COL, max:COL or avg:COL"
            ))
        })?;
        let kind = match op {
            "sum" => AggKind::Sum,
            "min" => AggKind::Min,
            "max" => AggKind::Max,
            "avg" => AggKind::Avg,
            _ => {
                return Err(JobError::new(format!(
                    "--agg {text:?}: unknown aggregate `{op}` (count, sum, min, max, avg)"
                )))
            }
        };
        if column.is_empty() {
            return Err(JobError::new(format!(
                "--agg {text:?}: the column name is empty"
            )));
        }
        Ok(Agg {
            kind,
            column: Some(column.to_string()),
        })
    }

    fn title(&self) -> String {
        match (&self.kind, &self.column) {
            (AggKind::Count, _) | (_, None) => "count".to_string(),
            (AggKind::Sum, Some(c)) => format!("sum({c})"),
            (AggKind::Min, Some(c)) => format!("min({c})"),
            (AggKind::Max, Some(c)) => format!("max({c})"),
            (AggKind::Avg, Some(c)) => format!("avg({c})"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    format: InputFormat,
    key: Vec<String>,
    #[serde(default)]
    agg: Vec<String>,
    #[serde(default)]
    on_bad_record: BadRecordPolicy,
}

/// Builds the job, validating the parameters.
pub fn build(params: &serde_json::Value) -> Result<Arc<dyn Job>, JobError> {
    let p: Params = params::parse(KIND, params).map_err(|e| {
        JobError::new(format!(
            "{e} (groupby needs --format csv|jsonl and --key COL[,COL...])"
        ))
    })?;
    if p.key.is_empty() || p.key.iter().any(String::is_empty) {
        return Err(JobError::new(
            "groupby needs --key COL[,COL...] with non-empty column names",
        ));
    }
    let aggs = p
        .agg
        .iter()
        .map(|a| Agg::parse(a))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::new(GroupBy {
        format: p.format,
        keys: p.key,
        aggs,
        policy: p.on_bad_record,
    }))
}

/// The groupby job.
#[derive(Debug, Clone)]
pub struct GroupBy {
    format: InputFormat,
    keys: Vec<String>,
    aggs: Vec<Agg>,
    policy: BadRecordPolicy,
}

/// Running numbers of one aggregate column in one group.
#[derive(Debug, Clone, Default, PartialEq)]
struct Numbers {
    present: u64,
    sum: Decimal,
    min: Option<Decimal>,
    max: Option<Decimal>,
}

/// Of two equal decimals, the one with more decimals, so the choice does not depend on
/// the order values arrive in.
fn pick(a: Decimal, b: Decimal, want: std::cmp::Ordering) -> Decimal {
    match a.cmp(&b) {
        std::cmp::Ordering::Equal if b.scale() > a.scale() => b,
        std::cmp::Ordering::Equal => a,
        order if order == want => a,
        _ => b,
    }
}

impl Numbers {
    fn add(&mut self, value: Decimal) -> Result<(), JobError> {
        self.merge(&Numbers {
            present: 1,
            sum: value,
            min: Some(value),
            max: Some(value),
        })
    }

    fn merge(&mut self, other: &Numbers) -> Result<(), JobError> {
        self.present += other.present;
        self.sum = self
            .sum
            .checked_add(other.sum)
            .ok_or_else(|| JobError::new("a sum overflows 96-bit decimals"))?;
        self.min = match (self.min, other.min) {
            (Some(a), Some(b)) => Some(pick(a, b, std::cmp::Ordering::Less)),
            (a, b) => a.or(b),
        };
        self.max = match (self.max, other.max) {
            (Some(a), Some(b)) => Some(pick(a, b, std::cmp::Ordering::Greater)),
            (a, b) => a.or(b),
        };
        Ok(())
    }
}

/// One group's aggregates.
#[derive(Debug, Clone, Default, PartialEq)]
struct Group {
    count: u64,
    numbers: Vec<Numbers>,
}

impl Group {
    fn merge(&mut self, other: &Group) -> Result<(), JobError> {
        self.count += other.count;
        for (mine, theirs) in self.numbers.iter_mut().zip(&other.numbers) {
            mine.merge(theirs)?;
        }
        Ok(())
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.count);
        for n in &self.numbers {
            put_varint(out, n.present);
            out.extend_from_slice(&n.sum.serialize());
            for value in [n.min, n.max] {
                match value {
                    Some(v) => {
                        out.push(1);
                        out.extend_from_slice(&v.serialize());
                    }
                    None => out.push(0),
                }
            }
        }
    }

    fn decode(reader: &mut Reader<'_>, aggs: usize) -> Result<Group, JobError> {
        fn decimal(reader: &mut Reader<'_>) -> Result<Decimal, JobError> {
            let bytes: [u8; 16] = reader
                .fixed(16)?
                .try_into()
                .map_err(|_| JobError::new("corrupt decimal in intermediate data"))?;
            Ok(Decimal::deserialize(bytes))
        }
        let count = reader.varint()?;
        let mut numbers = Vec::with_capacity(aggs);
        for _ in 0..aggs {
            let present = reader.varint()?;
            let sum = decimal(reader)?;
            let mut bounds = [None, None];
            for bound in &mut bounds {
                if reader.fixed(1)?[0] == 1 {
                    *bound = Some(decimal(reader)?);
                }
            }
            numbers.push(Numbers {
                present,
                sum,
                min: bounds[0],
                max: bounds[1],
            });
        }
        Ok(Group { count, numbers })
    }
}

/// Parses a decimal number: `12.50`, `-3`, `1e3` (surrounding ASCII blanks ignored).
/// `Ok(None)` for an empty field.
fn parse_number(text: &[u8]) -> Result<Option<Decimal>, String> {
    let trimmed = text.trim_ascii();
    if trimmed.is_empty() {
        return Ok(None);
    }
    let bad = || format!("{} is not a decimal number", params::excerpt(text));
    let s = std::str::from_utf8(trimmed).map_err(|_| bad())?;
    let parsed = if s.contains(['e', 'E']) {
        Decimal::from_scientific(s)
    } else {
        Decimal::from_str_exact(s)
    };
    parsed.map(Some).map_err(|_| bad())
}

/// Writes `field` with `\`, tab, newline and carriage return escaped.
fn push_escaped(out: &mut Vec<u8>, field: &[u8]) {
    for &byte in field {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(byte),
        }
    }
}

/// Decodes the hex parts of a groupby sort key back into the key columns.
fn key_columns(key: &[u8]) -> Result<Vec<Vec<u8>>, JobError> {
    let corrupt = || JobError::new("corrupt group key in intermediate data");
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(corrupt()),
    };
    let parts = key.strip_suffix(b".").ok_or_else(corrupt)?;
    parts
        .split(|&b| b == b'.')
        .map(|hex| {
            if hex.len() % 2 != 0 {
                return Err(corrupt());
            }
            hex.chunks(2)
                .map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?))
                .collect()
        })
        .collect()
}

/// Displays a decimal; zero is never negative.
fn decimal_text(mut value: Decimal) -> String {
    if value.is_zero() {
        value.set_sign_positive(true);
    }
    value.to_string()
}

/// The exact average, rounded half away from zero to 4 more decimals than the sum.
fn average(sum: Decimal, count: u64) -> Option<Decimal> {
    let scale = (sum.scale() + 4).min(28);
    let numerator = sum
        .mantissa()
        .checked_mul(10i128.pow(scale - sum.scale()))?;
    let denominator = i128::from(count);
    let (quotient, remainder) = (numerator / denominator, numerator % denominator);
    let rounded = if remainder.abs() * 2 >= denominator {
        quotient + numerator.signum()
    } else {
        quotient
    };
    Decimal::try_from_i128_with_scale(rounded, scale).ok()
}

/// Accumulates one chunk's groups.
struct Mapper<'a> {
    job: &'a GroupBy,
    ctx: &'a ChunkContext<'a>,
    groups: HashMap<Vec<u8>, Group, foldhash::fast::FixedState>,
    key: Vec<u8>,
    values: Vec<Option<Decimal>>,
    read: u64,
    skipped: u64,
}

impl Mapper<'_> {
    /// Handles a record's outcome: `Err(reason)` is a bad record.
    fn record(&mut self, line: u64, outcome: Result<(), String>) -> Result<(), JobError> {
        self.read += 1;
        match (outcome, self.job.policy) {
            (Ok(()), _) => Ok(()),
            (Err(_), BadRecordPolicy::Skip) => {
                self.skipped += 1;
                Ok(())
            }
            (Err(reason), BadRecordPolicy::Fail) => Err(JobError::new(format!(
                "`{}` line {line}: bad record: {reason} (--on-bad-record skip skips such records)",
                self.ctx.source
            ))),
        }
    }

    /// Adds the record whose key is in `self.key` and values in `self.values`.
    fn add(&mut self) -> Result<(), JobError> {
        let aggs = self.job.aggs.len();
        let group = match self.groups.get_mut(self.key.as_slice()) {
            Some(group) => group,
            None => self
                .groups
                .entry(self.key.clone())
                .or_insert_with(|| Group {
                    count: 0,
                    numbers: vec![Numbers::default(); aggs],
                }),
        };
        group.count += 1;
        for (numbers, value) in group.numbers.iter_mut().zip(&self.values) {
            if let Some(value) = value {
                numbers.add(*value)?;
            }
        }
        Ok(())
    }

    fn map_csv(&mut self, data: &[u8]) -> Result<u64, JobError> {
        let header_len = csv_record_len(data);
        let (header_bytes, records) = data.split_at(header_len);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(header_bytes);
        let mut header = csv::ByteRecord::new();
        if !reader.read_byte_record(&mut header).map_err(|e| {
            JobError::new(format!(
                "`{}`: reading the CSV header: {e}",
                self.ctx.source
            ))
        })? {
            return Ok(0);
        }
        let column = |name: &str| -> Result<usize, JobError> {
            header
                .iter()
                .position(|h| h == name.as_bytes())
                .ok_or_else(|| {
                    JobError::new(format!(
                        "`{}`: column `{name}` is not in the CSV header ({})",
                        self.ctx.source,
                        header
                            .iter()
                            .map(String::from_utf8_lossy)
                            .collect::<Vec<_>>()
                            .join(",")
                    ))
                })
        };
        let key_columns = self
            .job
            .keys
            .iter()
            .map(|k| column(k))
            .collect::<Result<Vec<_>, _>>()?;
        let agg_columns = self
            .job
            .aggs
            .iter()
            .map(|a| a.column.as_deref().map(column).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        let fields = header.len();
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(records);
        let mut record = csv::ByteRecord::new();
        let mut lines = LineTracker::new(records, self.ctx.first_line);
        loop {
            match reader.read_byte_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(JobError::new(format!("`{}`: CSV: {e}", self.ctx.source))),
            }
            let line = lines.line_at(record.position().map_or(0, |p| p.byte()));
            let outcome = self.parse_csv(&record, fields, &key_columns, &agg_columns);
            let good = outcome.is_ok();
            self.record(line, outcome)?;
            if good {
                self.add()?;
            }
        }
        Ok((data.len() - header_len) as u64)
    }

    fn parse_csv(
        &mut self,
        record: &csv::ByteRecord,
        fields: usize,
        key_columns: &[usize],
        agg_columns: &[Option<usize>],
    ) -> Result<(), String> {
        if record.len() != fields {
            return Err(format!(
                "{} fields where the header has {fields}",
                record.len()
            ));
        }
        self.key.clear();
        let mut key = SortKey::new();
        for &i in key_columns {
            key = key.bytes(&record[i]);
        }
        self.key.extend_from_slice(key.as_bytes());
        self.values.clear();
        for (agg, column) in self.job.aggs.iter().zip(agg_columns) {
            let value = match column {
                Some(i) => parse_number(&record[*i]).map_err(|e| {
                    format!(
                        "column `{}`: {e}",
                        agg.column.as_deref().unwrap_or_default()
                    )
                })?,
                None => None,
            };
            self.values.push(value);
        }
        Ok(())
    }

    fn map_jsonl(&mut self, data: &[u8]) -> Result<u64, JobError> {
        for (line, text) in numbered_lines(data, self.ctx.first_line) {
            if text.trim_ascii().is_empty() {
                continue;
            }
            let outcome = self.parse_json(text);
            let good = outcome.is_ok();
            self.record(line, outcome)?;
            if good {
                self.add()?;
            }
        }
        Ok(data.len() as u64)
    }

    fn parse_json(&mut self, text: &[u8]) -> Result<(), String> {
        let object: HashMap<String, &RawValue> = serde_json::from_slice(text)
            .map_err(|e| format!("not a JSON object ({e}): {}", params::excerpt(text)))?;
        let present = |name: &str| object.get(name).map(|v| v.get()).filter(|v| *v != "null");
        let mut key = SortKey::new();
        for name in &self.job.keys {
            key = match present(name) {
                None => key.bytes(b""),
                Some(raw) if raw.starts_with('"') => {
                    let text: String = serde_json::from_str(raw).map_err(|e| e.to_string())?;
                    key.bytes(text.as_bytes())
                }
                Some(raw) => key.bytes(raw.as_bytes()),
            };
        }
        self.key.clear();
        self.key.extend_from_slice(key.as_bytes());
        self.values.clear();
        for agg in &self.job.aggs {
            let value = match agg.column.as_deref().and_then(present) {
                None => None,
                Some(raw) => {
                    let text = if raw.starts_with('"') {
                        serde_json::from_str::<String>(raw).map_err(|e| e.to_string())?
                    } else {
                        raw.to_string()
                    };
                    parse_number(text.as_bytes()).map_err(|e| {
                        format!("field `{}`: {e}", agg.column.as_deref().unwrap_or_default())
                    })?
                }
            };
            self.values.push(value);
        }
        Ok(())
    }
}

impl Job for GroupBy {
    fn map_chunk(&self, ctx: &ChunkContext<'_>, data: &[u8]) -> Result<MapOutput, JobError> {
        let mut mapper = Mapper {
            job: self,
            ctx,
            groups: HashMap::default(),
            key: Vec::new(),
            values: Vec::new(),
            read: 0,
            skipped: 0,
        };
        let bytes = match self.format {
            InputFormat::Csv => mapper.map_csv(data)?,
            InputFormat::Jsonl => mapper.map_jsonl(data)?,
        };
        let mut buckets: Vec<Vec<(&Vec<u8>, &Group)>> =
            vec![Vec::new(); ctx.partitions.max(1) as usize];
        for (key, group) in &mapper.groups {
            buckets[partition_of(key, ctx.partitions) as usize].push((key, group));
        }
        let partials = buckets
            .into_iter()
            .map(|mut entries| {
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                let mut out = Vec::new();
                for (key, group) in entries {
                    put_bytes(&mut out, key);
                    group.encode(&mut out);
                }
                out
            })
            .collect();
        Ok(MapOutput {
            partials,
            counters: input_counters(mapper.read, mapper.skipped, bytes),
        })
    }

    fn reduce_partition(&self, partials: Vec<Vec<u8>>) -> Result<ReduceOutput, JobError> {
        let mut groups: std::collections::BTreeMap<&[u8], Group> = Default::default();
        for partial in &partials {
            let mut reader = Reader::new(partial);
            while !reader.is_empty() {
                let key = reader.bytes()?;
                let group = Group::decode(&mut reader, self.aggs.len())?;
                match groups.get_mut(key) {
                    Some(existing) => existing.merge(&group)?,
                    None => {
                        groups.insert(key, group);
                    }
                }
            }
        }
        let mut lines = Vec::new();
        for (key, group) in &groups {
            lines.extend_from_slice(key);
            // The sort key holds no tab: the line is `SORTKEY\tcolumns...\taggregates...`.
            for column in key_columns(key)? {
                lines.push(b'\t');
                push_escaped(&mut lines, &column);
            }
            for (agg, numbers) in self.aggs.iter().zip(&group.numbers) {
                lines.push(b'\t');
                let text = match agg.kind {
                    AggKind::Count => group.count.to_string(),
                    _ if numbers.present == 0 => String::new(),
                    AggKind::Sum => decimal_text(numbers.sum),
                    AggKind::Min => numbers.min.map(decimal_text).unwrap_or_default(),
                    AggKind::Max => numbers.max.map(decimal_text).unwrap_or_default(),
                    AggKind::Avg => average(numbers.sum, numbers.present)
                        .map(decimal_text)
                        .ok_or_else(|| JobError::new("an average does not fit a decimal"))?,
                };
                lines.extend_from_slice(text.as_bytes());
            }
            lines.push(b'\n');
        }
        Ok(ReduceOutput {
            lines,
            records: groups.len() as u64,
        })
    }

    fn input_format(&self) -> RecordFormat {
        match self.format {
            InputFormat::Csv => RecordFormat::CsvWithHeader,
            InputFormat::Jsonl => RecordFormat::Lines,
        }
    }

    fn result_format(&self) -> ResultFormat {
        let mut header = Vec::new();
        for (i, title) in self
            .keys
            .iter()
            .cloned()
            .chain(self.aggs.iter().map(Agg::title))
            .enumerate()
        {
            if i > 0 {
                header.push(b'\t');
            }
            push_escaped(&mut header, title.as_bytes());
        }
        ResultFormat {
            header: Some(String::from_utf8_lossy(&header).into_owned()),
            sort_key_prefix: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunker::Chunker;
    use crate::output::write_results;
    use std::str::FromStr;

    fn job(params: serde_json::Value) -> Arc<dyn Job> {
        build(&params).unwrap()
    }

    /// Runs the job over `input` cut at every chunk size in `sizes`; all must agree.
    fn run(
        job: &Arc<dyn Job>,
        input: &[u8],
        sizes: &[usize],
        partitions: u32,
    ) -> Result<(String, u64, u64), JobError> {
        let mut seen: Option<(String, u64, u64)> = None;
        for &size in sizes {
            let mut chunker =
                Chunker::with_format(input, "in.csv", size, 1 << 20, job.input_format());
            let mut per_partition = vec![Vec::new(); partitions as usize];
            let (mut read, mut skipped) = (0, 0);
            while let Some(chunk) = chunker.next_chunk().unwrap() {
                let ctx = ChunkContext {
                    source: "in.csv",
                    offset: chunk.offset,
                    first_line: chunk.first_line,
                    partitions,
                };
                let out = job.map_chunk(&ctx, &chunk.data)?;
                read += out.counters["records_read"];
                skipped += out.counters["records_skipped"];
                for (p, partial) in out.partials.into_iter().enumerate() {
                    per_partition[p].push(partial);
                }
            }
            let results: Vec<Vec<u8>> = per_partition
                .into_iter()
                .map(|p| job.reduce_partition(p).unwrap().lines)
                .collect();
            let mut out = Vec::new();
            write_results(&results, &job.result_format(), &mut out).unwrap();
            let got = (String::from_utf8(out).unwrap(), read, skipped);
            if let Some(previous) = &seen {
                assert_eq!(&got, previous, "chunk size {size}");
            }
            seen = Some(got);
        }
        Ok(seen.unwrap())
    }

    const CSV: &[u8] = b"country,city,amount,note\r\n\
        DE,Berlin,10.50,plain\n\
        FR,\"Paris, \"\"the\"\" city\",3,\"multi\nline\"\n\
        DE,Berlin,0.25,\n\
        DE,M\xc3\xbcnchen,,missing amount\n\
        \n\
        FR,\"Paris, \"\"the\"\" city\",-1.125,x\n\
        \xe6\x97\xa5\xe6\x9c\xac,\xe6\x9d\xb1\xe4\xba\xac,1e2,unicode\n";

    #[test]
    fn csv_groups_exactly_whatever_the_chunking() {
        let job = job(serde_json::json!({
            "format": "csv", "key": ["country", "city"],
            "agg": ["count", "sum:amount", "min:amount", "max:amount", "avg:amount"]
        }));
        let sizes: Vec<usize> = (1..=CSV.len() + 1).collect();
        let (out, read, skipped) = run(&job, CSV, &sizes, 3).unwrap();
        assert_eq!(
            out,
            "country\tcity\tcount\tsum(amount)\tmin(amount)\tmax(amount)\tavg(amount)\n\
             DE\tBerlin\t2\t10.75\t0.25\t10.50\t5.375000\n\
             DE\tMünchen\t1\t\t\t\t\n\
             FR\tParis, \"the\" city\t2\t1.875\t-1.125\t3\t0.9375000\n\
             日本\t東京\t1\t100\t100\t100\t100.0000\n"
        );
        assert_eq!((read, skipped), (6, 0));
    }

    #[test]
    fn bad_records_fail_with_line_or_are_skipped() {
        let input = b"k,v\na,1\nb,x1\nc\na,\"2\n\"\n";
        let fail = job(serde_json::json!({"format": "csv", "key": ["k"], "agg": ["sum:v"]}));
        let err = run(&fail, input, &[3, 100], 1).unwrap_err();
        assert!(
            err.message.contains("`in.csv` line 3") && err.message.contains("\"x1\""),
            "{}",
            err.message
        );
        let skip = job(
            serde_json::json!({"format": "csv", "key": ["k"], "agg": ["sum:v", "count"], "on_bad_record": "skip"}),
        );
        let (out, read, skipped) = run(&skip, input, &[1, 3, 7, 100], 2).unwrap();
        assert_eq!(out, "k\tsum(v)\tcount\na\t3\t2\n");
        assert_eq!((read, skipped), (4, 2));
    }

    #[test]
    fn jsonl_keys_and_numbers() {
        let input = br#"{"c":"DE","a":1.10}
{"c":"DE","a":"2.2"}

{"c":null,"a":12345678901234567890.12}
{"c":"tab\t\\here","a":null}
{"c":7,"a":-0.10}
not json
[1]
"#;
        let job = job(
            serde_json::json!({"format": "jsonl", "key": ["c"], "agg": ["sum:a", "count"], "on_bad_record": "skip"}),
        );
        let (out, read, skipped) = run(&job, input, &[1, 10, 1000], 2).unwrap();
        assert_eq!(
            out,
            "c\tsum(a)\tcount\n\t12345678901234567890.12\t1\n7\t-0.10\t1\n\
             DE\t3.30\t2\ntab\\t\\\\here\t\t1\n"
        );
        assert_eq!((read, skipped), (7, 2));
    }

    #[test]
    fn missing_column_fails_naming_it() {
        let job = job(serde_json::json!({"format": "csv", "key": ["nope"]}));
        let err = run(&job, b"a,b\n1,2\n", &[100], 1).unwrap_err();
        assert!(err.message.contains("column `nope`"), "{}", err.message);
    }

    #[test]
    fn parameters_are_validated() {
        assert!(build(&serde_json::json!({"format": "csv"})).is_err());
        assert!(build(&serde_json::json!({"format": "xml", "key": ["a"]})).is_err());
        assert!(
            build(&serde_json::json!({"format": "csv", "key": ["a"], "agg": ["median:x"]}))
                .is_err()
        );
        assert!(
            build(&serde_json::json!({"format": "csv", "key": ["a"], "agg": ["sum:"]})).is_err()
        );
        assert!(build(
            &serde_json::json!({"format": "csv", "key": ["a"], "on_bad_record": "ignore"})
        )
        .is_err());
    }

    #[test]
    fn averages_round_half_away_from_zero() {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        assert_eq!(average(d("1.00"), 3).unwrap().to_string(), "0.333333");
        assert_eq!(average(d("2.00"), 3).unwrap().to_string(), "0.666667");
        assert_eq!(average(d("-2.00"), 3).unwrap().to_string(), "-0.666667");
        assert_eq!(
            average(d("0.000001"), 2).unwrap().to_string(),
            "0.0000005000"
        );
    }
}
