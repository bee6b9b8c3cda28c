//! Single-threaded map + reduce of wordcount over a file, for profiling the pure core:
//! `cargo run --release --example mapbench -- FILE [CHUNK_SIZE]`.

// Test and benchmark code: a failed unwrap is a failed run, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::time::Instant;

use chunkflow::chunker::Chunker;
use chunkflow::jobs::{wordcount::WordCount, ChunkContext, Job};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("FILE");
    let chunk_size: usize = args.next().map_or(4 << 20, |s| s.parse().unwrap());
    let partitions = 8u32;
    let started = Instant::now();
    let file = std::fs::File::open(&path).unwrap();
    let mut chunker = Chunker::new(file, &path, chunk_size, 64 << 20);
    let mut per_partition: Vec<Vec<Vec<u8>>> = vec![Vec::new(); partitions as usize];
    let mut bytes = 0u64;
    let mut map_time = std::time::Duration::ZERO;
    while let Some(chunk) = chunker.next_chunk().unwrap() {
        bytes += chunk.data.len() as u64;
        let t = Instant::now();
        let ctx = ChunkContext {
            source: &path,
            offset: chunk.offset,
            first_line: chunk.first_line,
            partitions,
        };
        let out = WordCount.map_chunk(&ctx, &chunk.data).unwrap();
        map_time += t.elapsed();
        for (p, partial) in out.partials.into_iter().enumerate() {
            per_partition[p].push(partial);
        }
    }
    let t = Instant::now();
    let mut records = 0;
    for partials in per_partition {
        records += WordCount.reduce_partition(partials).unwrap().records;
    }
    let reduce_time = t.elapsed();
    let total = started.elapsed().as_secs_f64();
    let mib = bytes as f64 / (1 << 20) as f64;
    println!(
        "{mib:.0} MiB, {records} keys: map {:.2}s, reduce {:.2}s, total {total:.2}s = {:.1} MiB/s",
        map_time.as_secs_f64(),
        reduce_time.as_secs_f64(),
        mib / total
    );
}
