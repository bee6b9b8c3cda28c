//! invertedindex: for every word, the documents (input paths as given) it appears in.
//!
//! A word is wordcount's (see [`super::wordcount`]). Output: `word<TAB>N<TAB>doc1,doc2,...`
//! with the N documents sorted in byte order, lines sorted by word in byte order. A chunk
//! comes from one document, so a map emits each of its words once.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use super::wordcount::for_each_lowercased_word;
use super::{params, partition_of, ChunkContext, Job, JobError, MapOutput, ReduceOutput};
use crate::codec::{put_bytes, Reader};

pub const KIND: &str = "invertedindex";

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {}

/// Builds the job; invertedindex takes no parameters.
pub fn build(params: &serde_json::Value) -> Result<Arc<dyn Job>, JobError> {
    let Params {} = params::parse(KIND, params)?;
    Ok(Arc::new(InvertedIndex))
}

/// The invertedindex job.
#[derive(Debug, Clone, Copy, Default)]
pub struct InvertedIndex;

impl Job for InvertedIndex {
    fn map_chunk(&self, ctx: &ChunkContext<'_>, data: &[u8]) -> Result<MapOutput, JobError> {
        let mut words: HashSet<Vec<u8>, foldhash::fast::FixedState> = HashSet::default();
        for_each_lowercased_word(data, |word| {
            if !words.contains(word) {
                words.insert(word.to_vec());
            }
        });
        let mut buckets: Vec<Vec<&[u8]>> = vec![Vec::new(); ctx.partitions.max(1) as usize];
        for word in &words {
            buckets[partition_of(word, ctx.partitions) as usize].push(word);
        }
        let partials = buckets
            .into_iter()
            .map(|mut entries| {
                entries.sort_unstable();
                let mut out = Vec::new();
                for word in entries {
                    put_bytes(&mut out, word);
                    put_bytes(&mut out, ctx.source.as_bytes());
                }
                out
            })
            .collect();
        Ok(MapOutput::from_lines(partials, data))
    }

    fn reduce_partition(&self, partials: Vec<Vec<u8>>) -> Result<ReduceOutput, JobError> {
        let mut index: BTreeMap<&[u8], BTreeSet<&[u8]>> = BTreeMap::new();
        for partial in &partials {
            let mut reader = Reader::new(partial);
            while !reader.is_empty() {
                let word = reader.bytes()?;
                let doc = reader.bytes()?;
                index.entry(word).or_default().insert(doc);
            }
        }
        let mut lines = Vec::new();
        for (word, docs) in &index {
            lines.extend_from_slice(word);
            lines.extend_from_slice(format!("\t{}\t", docs.len()).as_bytes());
            for (i, doc) in docs.iter().enumerate() {
                if i > 0 {
                    lines.push(b',');
                }
                lines.extend_from_slice(doc);
            }
            lines.push(b'\n');
        }
        Ok(ReduceOutput {
            lines,
            records: index.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_words_by_document() {
        let job = InvertedIndex;
        let mut partials = Vec::new();
        for (source, data) in [
            ("b.txt", &b"Hello world\nhello"[..]),
            ("a.txt", b"WORLD caf\xc3\xa9"),
            ("b.txt", b"world"),
        ] {
            let ctx = ChunkContext {
                source,
                offset: 0,
                first_line: 1,
                partitions: 1,
            };
            partials.push(job.map_chunk(&ctx, data).unwrap().partials.remove(0));
        }
        let out = job.reduce_partition(partials).unwrap();
        assert_eq!(
            String::from_utf8(out.lines).unwrap(),
            "café\t1\ta.txt\nhello\t1\tb.txt\nworld\t2\ta.txt,b.txt\n"
        );
        assert_eq!(out.records, 3);
    }

    #[test]
    fn takes_no_parameters() {
        assert!(build(&serde_json::Value::Null).is_ok());
        assert!(build(&serde_json::json!({"pattern": "x"})).is_err());
    }
}
