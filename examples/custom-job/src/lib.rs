//! A custom chunkflow job: how many distinct customers bought something each day, from the
//! transaction CSV of `producer generate csv` (columns `customer_id` and `timestamp`).
//!
//! The job implements [`MapReduce`] with its own key (the day) and value (a set of customer
//! ids) types, serialized by serde; [`registry`] adds it to the stock jobs, and the three
//! binaries in `src/bin/` are the stock command lines over that registry:
//!
//! ```sh
//! cargo build --release -p custom-job
//! target/release/custom-worker & target/release/custom-reducer &
//! target/release/custom-producer generate csv --size 10MiB -o tx.csv
//! job=$(target/release/custom-producer submit --job distinct-customers --wait tx.csv)
//! target/release/custom-producer result "$job"
//! ```
//!
//! Output: a header `day<TAB>distinct_customers`, then one line per day, in date order.

use std::collections::BTreeSet;

use chunkflow::jobs::typed::{MapReduce, Record};
use chunkflow::jobs::{params, JobError, JobRegistry, RecordFormat};

/// The registry name of the job.
pub const KIND: &str = "distinct-customers";

/// Distinct customers per day.
#[derive(Debug, Clone, Copy, Default)]
pub struct DistinctCustomersPerDay;

impl MapReduce for DistinctCustomersPerDay {
    /// `YYYY-MM-DD`.
    type Key = String;
    /// The customers seen that day.
    type Value = BTreeSet<String>;

    fn input_format(&self) -> RecordFormat {
        RecordFormat::CsvWithHeader
    }

    fn map(
        &self,
        record: &Record<'_>,
        emit: &mut dyn FnMut(Self::Key, Self::Value),
    ) -> Result<(), JobError> {
        let field = |name: &str| {
            record
                .field_str(name)
                .ok_or_else(|| JobError::new(format!("no `{name}` column (or not UTF-8)")))
        };
        let timestamp = field("timestamp")?;
        let day = timestamp
            .get(..10)
            .ok_or_else(|| JobError::new(format!("timestamp {timestamp:?} has no date")))?;
        let customer = field("customer_id")?;
        emit(day.to_string(), BTreeSet::from([customer.to_string()]));
        Ok(())
    }

    fn combine(&self, _day: &String, values: Vec<Self::Value>) -> Result<Self::Value, JobError> {
        Ok(values.into_iter().flatten().collect())
    }

    fn reduce(&self, day: &String, values: Vec<Self::Value>) -> Result<Vec<String>, JobError> {
        let customers: BTreeSet<String> = values.into_iter().flatten().collect();
        Ok(vec![format!("{day}\t{}", customers.len())])
    }

    fn header(&self) -> Option<String> {
        Some("day\tdistinct_customers".to_string())
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// The stock jobs plus this one.
pub fn registry() -> JobRegistry {
    let mut registry = JobRegistry::stock();
    registry.register_typed(KIND, |p: &serde_json::Value| {
        let NoParams {} = params::parse(KIND, p)?;
        Ok(DistinctCustomersPerDay)
    });
    registry
}

#[cfg(test)]
mod tests {
    use super::*;
    use chunkflow::jobs::ChunkContext;

    #[test]
    fn counts_distinct_customers_per_day() {
        let job = registry().build(KIND, &serde_json::Value::Null).unwrap();
        let data = b"customer_id,amount,timestamp\nC1,1.00,2024-01-02T10:00:00Z\nC2,\"2,5\",2024-01-02T11:00:00Z\nC1,3.00,2024-01-02T12:00:00Z\nC1,3.00,2024-01-01T12:00:00Z\n";
        let ctx = ChunkContext {
            source: "t.csv",
            offset: 0,
            first_line: 2,
            partitions: 1,
        };
        let out = job.map_chunk(&ctx, data).unwrap();
        assert_eq!(out.counters["records_read"], 4);
        let result = job.reduce_partition(out.partials).unwrap();
        let lines = String::from_utf8(result.lines).unwrap();
        let lines: Vec<&str> = lines
            .lines()
            .map(|l| l.split_once('\t').unwrap().1)
            .collect();
        assert_eq!(lines, vec!["2024-01-01\t1", "2024-01-02\t2"]);
        assert!(registry()
            .build(KIND, &serde_json::json!({"x": 1}))
            .is_err());
    }
}
