//! The jobs users run (issue 4), end to end: each job's distributed result equals the
//! local runner's and an independent reference written here, over inputs with the nasty
//! cases and many chunk sizes; counters; the exec job's allow-list and failures; the
//! custom-job example.

use std::collections::{BTreeMap, BTreeSet};

use chunkflow_tests::cluster::*;
use chunkflow_tests::reference::*;

/// `generate_text` without its invalid UTF-8 (bytes 0xfe, 0xff), since `result` output is
/// read as UTF-8 here.
fn valid_text(seed: u64, lines: usize) -> Vec<u8> {
    let text: Vec<u8> = generate_text(seed, lines)
        .into_iter()
        .filter(|&b| b < 0xfe)
        .collect();
    assert!(std::str::from_utf8(&text).is_ok());
    text
}

/// Text files with CRLF, unicode, more than nine lines, an empty file, no final newline.
fn text_corpus(cluster: &Cluster) -> Vec<(String, Vec<u8>)> {
    let numbered: String = (1..=25).map(|i| format!("The order {i}\r\n")).collect();
    [
        ("t/a.txt", valid_text(21, 500)),
        ("t/b ü.txt", numbered.into_bytes()),
        ("t/empty.txt", Vec::new()),
        ("t/tail.txt", b"no order\nThe end without newline".to_vec()),
        ("z.txt", valid_text(22, 150)),
    ]
    .into_iter()
    .map(|(name, data)| (cluster.write_file(name, &data), data))
    .collect()
}

/// Lines as grep sees them: split at `\n`, a trailing `\r` dropped.
fn lines(data: &[u8]) -> Vec<&[u8]> {
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    if body.is_empty() {
        return Vec::new();
    }
    body.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect()
}

fn reference_grep(files: &[(String, Vec<u8>)], matches: impl Fn(&[u8]) -> bool) -> String {
    let mut sorted: Vec<&(String, Vec<u8>)> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = Vec::new();
    for (path, data) in sorted {
        for (i, line) in lines(data).into_iter().enumerate() {
            if matches(line) {
                out.extend_from_slice(format!("{path}:{}\t", i + 1).as_bytes());
                out.extend_from_slice(line);
                out.push(b'\n');
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn reference_index(files: &[(String, Vec<u8>)]) -> String {
    let mut index: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, data) in files {
        let text = String::from_utf8_lossy(data);
        let mut word = String::new();
        for c in text.chars().chain(std::iter::once(' ')) {
            if c.is_alphanumeric() {
                word.push(c);
            } else if !word.is_empty() {
                index
                    .entry(word.to_lowercase())
                    .or_default()
                    .insert(path.clone());
                word.clear();
            }
        }
    }
    index
        .into_iter()
        .map(|(w, docs)| {
            let docs: Vec<String> = docs.into_iter().collect();
            format!("{w}\t{}\t{}\n", docs.len(), docs.join(","))
        })
        .collect()
}

#[test]
fn grep_and_invertedindex_match_reference_and_local_runner() {
    let mut cluster = Cluster::new("jobsgrep");
    let files = text_corpus(&cluster);
    let inputs: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    cluster.worker(&[]);
    cluster.worker(&[]);
    cluster.reducer(&[]);

    let grep = reference_grep(&files, |l| {
        l.starts_with(b"The") || l.windows(5).any(|w| w == b"order")
    });
    assert!(grep.lines().count() > 40, "non-trivial grep: {grep}");
    assert!(grep.contains(":9\tThe order 9\n") && grep.contains(":10\tThe order 10\n"));
    let index = reference_index(&files);
    for (chunk_size, partitions) in [("1", "3"), ("100", "1"), ("4KiB", "7")] {
        let mut args = vec!["--job", "grep", "--pattern", "^The|order"];
        args.extend_from_slice(&["--chunk-size", chunk_size, "--partitions", partitions]);
        args.extend_from_slice(&inputs);
        let (job, result) = distributed(&cluster, &args, &[]);
        assert_eq!(result, grep, "grep, chunk size {chunk_size}");
        assert_eq!(local(&cluster, &args, &[]), grep, "local grep");
        let status = cluster.status(&job);
        let records: u64 = files.iter().map(|(_, d)| line_count(d)).sum();
        assert_eq!(status["counters"]["records_read"], records);
        assert_eq!(status["counters"]["records_skipped"], 0);
        assert_eq!(
            status["counters"]["output_records"],
            grep.lines().count() as u64
        );

        let mut args = vec!["--job", "invertedindex"];
        args.extend_from_slice(&["--chunk-size", chunk_size, "--partitions", partitions]);
        args.extend_from_slice(&inputs);
        let (_, result) = distributed(&cluster, &args, &[]);
        assert_eq!(result, index, "invertedindex, chunk size {chunk_size}");
        assert_eq!(local(&cluster, &args, &[]), index, "local invertedindex");
    }

    // An invalid pattern is refused before anything is stored.
    let keys = cluster.redis_keys().len();
    let bad = cluster.producer(
        &["submit", "--job", "grep", "--pattern", "(", inputs[0]],
        &[],
        None,
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--pattern \"(\" is not usable"));
    assert_eq!(cluster.redis_keys().len(), keys);
}

/// CSV with the nasty cases; returns (file contents, number of bad records).
fn nasty_csv(seed: u64, rows: usize, crlf: bool) -> (Vec<u8>, u64) {
    const COUNTRIES: &[&str] = &[
        "DE",
        "\"Korea, Republic of\"",
        "日本",
        "",
        "\"Quote \"\"Q\"\"\"",
        "Côte d'Ivoire",
    ];
    const CITIES: &[&str] = &["Berlin", "\"New\nYork\"", "東京", "tab\there", "\"a,b\""];
    let end = if crlf { "\r\n" } else { "\n" };
    let mut state = seed;
    let mut next = |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    let mut out = format!("country,city,amount,note{end}");
    let mut bad = 0;
    for i in 0..rows {
        let country = COUNTRIES[next(COUNTRIES.len() as u64) as usize];
        let city = CITIES[next(CITIES.len() as u64) as usize];
        let short = next(40) == 0;
        let amount = match next(20) {
            0 => String::new(),
            1 => {
                bad += u64::from(!short);
                "12.x".to_string()
            }
            2 => format!("-{}.{:02}", next(100), next(100)),
            _ => format!("{}.{:02}", next(100_000), next(100)),
        };
        let note = if i % 7 == 0 {
            format!("\"multi{end}line, note\"")
        } else {
            "plain".into()
        };
        if short {
            bad += 1;
            out.push_str(&format!("{country},{amount}{end}"));
        } else {
            out.push_str(&format!("{country},{city},{amount},{note}{end}"));
        }
        if i % 50 == 0 {
            out.push_str(end);
        }
    }
    (out.into_bytes(), bad)
}

/// The reference groupby over CSV files: (result, records read, bad records).
fn reference_groupby_csv(files: &[&[u8]]) -> (String, u64, u64) {
    let mut groups: BTreeMap<Vec<Vec<u8>>, Agg> = BTreeMap::new();
    let (mut read, mut bad) = (0, 0);
    for data in files {
        let records = parse_csv(data);
        for (_, fields) in records.iter().skip(1) {
            read += 1;
            let amount = cents(&fields.get(2).cloned().unwrap_or_default());
            if fields.len() != 4 || matches!(amount, Some(Err(NotCents))) {
                bad += 1;
                continue;
            }
            let key = vec![fields[0].clone(), fields[1].clone()];
            groups
                .entry(key)
                .or_default()
                .add(amount.map(Result::unwrap));
        }
    }
    let header = "country\tcity\tcount\tsum(amount)\tmin(amount)\tmax(amount)\tavg(amount)";
    (groups_text(header, &groups), read, bad)
}

#[test]
fn groupby_csv_is_exact_under_both_bad_record_policies_and_any_chunking() {
    let mut cluster = Cluster::new("jobsgroupcsv");
    let (a, bad_a) = nasty_csv(1, 400, false);
    let (b, bad_b) = nasty_csv(2, 300, true);
    let files = [
        (cluster.write_file("c/a.csv", &a), a.clone()),
        (cluster.write_file("c/b.csv", &b), b.clone()),
        (cluster.write_file("c/empty.csv", b""), Vec::new()),
        (
            cluster.write_file("c/header-only.csv", b"country,city,amount,note\n"),
            b"country,city,amount,note\n".to_vec(),
        ),
    ];
    let datas: Vec<&[u8]> = files.iter().map(|(_, d)| d.as_slice()).collect();
    let (expected, read, bad) = reference_groupby_csv(&datas);
    assert_eq!(
        bad,
        bad_a + bad_b,
        "the reference sees the planted bad records"
    );
    assert!(bad > 5 && expected.lines().count() > 10);
    assert!(
        expected.contains("Korea, Republic of\tNew\\nYork\t") && expected.contains("tab\\there")
    );
    cluster.worker(&[]);
    cluster.worker(&[]);
    cluster.reducer(&[]);
    let dir = cluster.dir.join("c").to_string_lossy().into_owned();
    let base = [
        "--job",
        "groupby",
        "--format",
        "csv",
        "--key",
        "country,city",
        "--agg",
        "count",
        "--agg",
        "sum:amount",
        "--agg",
        "min:amount",
        "--agg",
        "max:amount",
        "--agg",
        "avg:amount",
        "--on-bad-record",
        "skip",
    ];
    for (chunk_size, partitions) in [("1", "2"), ("64", "5"), ("1000", "1"), ("1MiB", "3")] {
        let mut args = base.to_vec();
        args.extend_from_slice(&["--chunk-size", chunk_size, "--partitions", partitions, &dir]);
        let (job, result) = distributed(&cluster, &args, &[]);
        assert_eq!(result, expected, "chunk size {chunk_size}");
        assert_eq!(
            local(&cluster, &args, &[]),
            expected,
            "local, chunk size {chunk_size}"
        );
        let status = cluster.status(&job);
        assert_eq!(status["counters"]["records_read"], read);
        assert_eq!(status["counters"]["records_skipped"], bad);
        assert_eq!(
            status["counters"]["output_records"],
            expected.lines().count() as u64 - 1
        );
        let shown = cluster.producer(&["result", &job], &[], None);
        assert!(String::from_utf8_lossy(&shown.stderr)
            .contains(&format!("{bad} bad records were skipped")));
    }

    // fail (the default): the job fails naming the file and the line of the bad record.
    let one_bad = b"country,city,amount,note\nDE,\"x\ny\",1.00,a\nDE,B,2.0z,b\nFR,P,3.00,c\n";
    let path = cluster.write_file("one-bad.csv", one_bad);
    let mut args = vec!["submit", "--wait", "-q"];
    args.extend_from_slice(&base[..base.len() - 2]);
    args.extend_from_slice(&["--chunk-size", "8", &path]);
    let failed = cluster.producer(&args, &[], None);
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains(&format!("`{path}` line 4")) && stderr.contains("2.0z"),
        "{stderr}"
    );
    let job = job_id_from(&failed);
    assert_eq!(cluster.status(&job)["state"], "failed");
    let local_args: Vec<&str> = args[3..].to_vec();
    let local_run = cluster.producer(
        &[&["submit", "--local"][..], &local_args].concat(),
        &[],
        None,
    );
    assert!(!local_run.status.success());
    assert!(String::from_utf8_lossy(&local_run.stderr).contains(&format!("`{path}` line 4")));
}

#[test]
fn groupby_jsonl_over_generated_transactions_matches_reference() {
    let mut cluster = Cluster::new("jobsgroupjsonl");
    let path = cluster.dir.join("tx.jsonl").to_string_lossy().into_owned();
    stdout_of(
        &cluster.producer(
            &[
                "generate", "jsonl", "--size", "300KiB", "--seed", "5", "-o", &path,
            ],
            &[],
            None,
        ),
        "generate",
    );
    let data = std::fs::read(&path).unwrap();
    // Reference: read `"country":"..."` and `"amount":N` from each line by hand.
    let mut groups: BTreeMap<Vec<Vec<u8>>, Agg> = BTreeMap::new();
    for line in lines(&data) {
        let value: serde_json::Value = serde_json::from_slice(line).unwrap();
        let country = value["country"].as_str().unwrap().as_bytes().to_vec();
        let text = std::str::from_utf8(line).unwrap();
        let amount = text
            .split("\"amount\":")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap();
        groups
            .entry(vec![country])
            .or_default()
            .add(Some(cents(amount.as_bytes()).unwrap().unwrap()));
    }
    let expected = groups_text(
        "country\tcount\tsum(amount)\tmin(amount)\tmax(amount)\tavg(amount)",
        &groups,
    );
    cluster.worker(&[]);
    cluster.reducer(&[]);
    let args = [
        "--job",
        "groupby",
        "--format",
        "jsonl",
        "--key",
        "country",
        "--agg",
        "count",
        "--agg",
        "sum:amount",
        "--agg",
        "min:amount",
        "--agg",
        "max:amount",
        "--agg",
        "avg:amount",
        "--chunk-size",
        "16KiB",
        &path,
    ];
    let (_, result) = distributed(&cluster, &args, &[]);
    assert_eq!(result, expected);
    assert_eq!(local(&cluster, &args, &[]), expected);
}

#[test]
fn exec_jobs_run_allowed_programs_only_and_report_failures() {
    let mut cluster = Cluster::new("jobsexec");
    let python = "/usr/bin/python3";
    let mapper = cluster.write_file(
        "words.sh",
        b"tr -s ' \\t\\r' '\\n\\n\\n' | grep -v '^$' | sed 's/$/\t1/'\n",
    );
    let reducer = cluster.write_file(
        "sum.py",
        b"import sys\ncounts = {}\nfor line in sys.stdin:\n    k, v = line.rstrip('\\n').split('\\t')\n    counts[k] = counts.get(k, 0) + int(v)\nfor k in sorted(counts):\n    print(f'{k}\\t{counts[k]}')\n",
    );
    let failing = cluster.write_file(
        "fail.sh",
        b"echo 'mapper exploded on purpose' >&2\nexit 7\n",
    );
    let allow = format!("words=/bin/sh {mapper};sum={python} {reducer};fail=/bin/sh {failing}");
    let env = [("CHUNKFLOW_ALLOW_EXEC", allow.as_str())];
    cluster.worker(&env);
    cluster.worker(&env);
    cluster.reducer(&env);
    let text = b"a b  a\r\nc\tb a\n\nlast b".to_vec();
    let input = cluster.write_file("in.txt", &text);
    let expected = "a\t3\nb\t3\nc\t1\nlast\t1\n";

    // An allowed mapper and reducer; the same result locally.
    for chunk_size in ["1", "8", "1MiB"] {
        let args = [
            "--job",
            "exec",
            "--mapper",
            "words",
            "--reducer",
            "sum",
            "--partitions",
            "3",
            "--chunk-size",
            chunk_size,
            &input,
        ];
        let (_, result) = distributed(&cluster, &args, &env);
        assert_eq!(result, expected, "chunk size {chunk_size}");
        assert_eq!(local(&cluster, &args, &env), expected);
    }
    // No reducer: the mapper's lines, sorted.
    let (_, result) = distributed(
        &cluster,
        &["--job", "exec", "--mapper", "words", &input],
        &env,
    );
    assert_eq!(
        result,
        "a\t1\na\t1\na\t1\nb\t1\nb\t1\nb\t1\nc\t1\nlast\t1\n"
    );

    // A name the producer's allow-list lacks is refused before anything is stored or run.
    let keys_before = cluster.redis_keys().len();
    let refused = cluster.producer(
        &[
            "submit",
            "--job",
            "exec",
            "--mapper",
            "rm-everything",
            &input,
        ],
        &env,
        None,
    );
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("`rm-everything` is not allowed"),
        "{stderr}"
    );
    assert!(
        refused.stdout.is_empty(),
        "no job id: nothing was submitted"
    );
    assert_eq!(cluster.redis_keys().len(), keys_before);

    // A producer without a list cannot know; the worker fails the job naming the NAME.
    let output = cluster.producer(
        &[
            "submit", "--wait", "--job", "exec", "--mapper", "missing", &input,
        ],
        &[],
        None,
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("mapper `missing` is not allowed on this worker")
            && stderr.contains("--allow-exec missing="),
        "{stderr}"
    );

    // A failing program fails the job with its standard error.
    let output = cluster.producer(
        &[
            "submit", "--wait", "--job", "exec", "--mapper", "fail", &input,
        ],
        &env,
        None,
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("mapper exploded on purpose") && stderr.contains("exit status: 7"),
        "{stderr}"
    );
    let local_fail = cluster.producer(
        &[
            "submit", "--local", "--job", "exec", "--mapper", "fail", &input,
        ],
        &env,
        None,
    );
    assert!(String::from_utf8_lossy(&local_fail.stderr).contains("mapper exploded on purpose"));
}

#[test]
fn custom_job_example_runs_on_its_own_binaries() {
    let cluster = Cluster::new("jobscustom");
    let path = cluster.dir.join("tx.csv").to_string_lossy().into_owned();
    stdout_of(
        &cluster.producer(
            &[
                "generate", "csv", "--size", "200KiB", "--seed", "9", "-o", &path,
            ],
            &[],
            None,
        ),
        "generate",
    );
    let data = std::fs::read(&path).unwrap();
    let records = parse_csv(&data);
    let header = &records[0].1;
    let column = |name: &[u8]| header.iter().position(|h| h == name).unwrap();
    let (customer, timestamp) = (column(b"customer_id"), column(b"timestamp"));
    let mut days: BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for (_, fields) in &records[1..] {
        days.entry(fields[timestamp][..10].to_vec())
            .or_default()
            .insert(fields[customer].clone());
    }
    let mut expected = String::from("day\tdistinct_customers\n");
    for (day, customers) in &days {
        expected.push_str(&format!(
            "{}\t{}\n",
            String::from_utf8_lossy(day),
            customers.len()
        ));
    }
    assert!(days.len() > 100);

    let _worker = spawn_custom(&cluster, "custom-worker");
    let _reducer = spawn_custom(&cluster, "custom-reducer");
    let run = |args: &[&str]| {
        let mut command = cluster.command("custom-producer");
        command.args(args);
        command.output().expect("run custom-producer")
    };
    let submitted = run(&[
        "submit",
        "--job",
        "distinct-customers",
        "--wait",
        "-q",
        "--chunk-size",
        "8KiB",
        "--partitions",
        "4",
        &path,
    ]);
    stdout_of(&submitted, "custom-producer submit");
    let job = job_id_from(&submitted);
    assert_eq!(
        stdout_of(&run(&["result", &job]), "custom-producer result"),
        expected
    );
    let local = run(&[
        "submit",
        "--local",
        "-q",
        "--job",
        "distinct-customers",
        &path,
    ]);
    assert_eq!(
        stdout_of(&local, "custom-producer submit --local"),
        expected
    );
    // The stock producer does not know the job: it refuses before publishing.
    let stock = cluster.producer(&["submit", "--job", "distinct-customers", &path], &[], None);
    assert!(
        String::from_utf8_lossy(&stock.stderr).contains("unknown job kind `distinct-customers`")
    );
}
