//! Helpers of the job tests (`jobs.rs`): the local runner, the custom-job example's
//! binaries, and independent references — a small RFC 4180 reader and decimal arithmetic in
//! integer cents — written without the library's code.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

use crate::helpers::*;

/// Asserts a producer run succeeded and returns its standard output.
pub fn stdout_of(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("output is UTF-8")
}

/// `producer submit --local ARGS...`: the job's result, computed in-process.
pub fn local(cluster: &Cluster, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["submit", "--local", "-q"];
    all.extend_from_slice(args);
    stdout_of(
        &cluster.producer(&all, env, None),
        "producer submit --local",
    )
}

/// `producer submit --wait ARGS...` then `producer result`: the distributed result.
pub fn distributed(cluster: &Cluster, args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let mut all = vec!["submit", "--wait", "-q"];
    all.extend_from_slice(args);
    let output = cluster.producer(&all, env, None);
    stdout_of(&output, "producer submit --wait");
    let job = job_id_from(&output);
    (job.clone(), cluster.result(&job))
}

/// Builds the custom-job example's binaries next to the stock ones (same target directory
/// and features as `helpers::bin_dir`, so dependencies are shared).
pub fn custom_bin_dir() -> &'static Path {
    static DONE: OnceLock<()> = OnceLock::new();
    let dir = bin_dir();
    DONE.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace)
            .args([
                "build",
                "--quiet",
                "-p",
                "custom-job",
                "--features",
                "custom-job/fault-injection",
            ])
            .env("CARGO_TARGET_DIR", workspace.join("target").join("e2e"))
            .status()
            .expect("run cargo build for the custom-job example");
        assert!(status.success(), "building the custom-job example failed");
    });
    dir
}

/// A process killed when dropped.
pub struct Spawned(pub Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts one of the example's services in the cluster's namespace.
pub fn spawn_custom(cluster: &Cluster, binary: &str) -> Spawned {
    custom_bin_dir();
    let log = std::fs::File::create(cluster.dir.join(format!("{binary}.log"))).unwrap();
    let child = cluster
        .command(binary)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
    Spawned(child)
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

/// A decimal with exactly two places, in cents: `Some(Ok(cents))`, `None` if empty,
/// `Some(Err(()))` if not such a number.
pub fn cents(text: &[u8]) -> Option<Result<i64, ()>> {
    let text = std::str::from_utf8(text).map_err(|_| ()).ok()?.trim();
    if text.is_empty() {
        return None;
    }
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let Some((whole, frac)) = digits.split_once('.') else {
        return Some(Err(()));
    };
    let ok = !whole.is_empty()
        && frac.len() == 2
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit());
    if !ok {
        return Some(Err(()));
    }
    let value = whole.parse::<i64>().unwrap() * 100 + frac.parse::<i64>().unwrap();
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
        if self.present == 0 {
            return format!("{}\t\t\t\t", self.count);
        }
        format!(
            "{}\t{}\t{}\t{}\t{}",
            self.count,
            format_cents(self.sum),
            format_cents(self.min.unwrap()),
            format_cents(self.max.unwrap()),
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
