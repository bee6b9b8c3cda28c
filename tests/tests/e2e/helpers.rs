//! Shared helpers of the end-to-end tests.
//!
//! Each test gets a [`Cluster`]: a unique namespace (queue-name and key prefix) on the
//! shared RabbitMQ and Redis, the real `producer`, `worker` and `reducer` binaries run as
//! processes, and a cleanup on drop that kills the processes and deletes every queue and
//! key of the namespace. Waits poll a condition until a deadline; nothing sleeps blindly.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chunkflow::broker::topology::Topology;
use chunkflow::store::keys::Keys;

pub const AMQP_URL: &str = chunkflow::config::DEFAULT_AMQP_URL;
pub const REDIS_URL: &str = chunkflow::config::DEFAULT_REDIS_URL;

/// Directory holding the `producer`, `worker` and `reducer` binaries, built once per test
/// process with the `fault-injection` feature (test-only hooks, off in normal builds).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        // A target dir of its own: no lock contention with the `cargo test` that runs us,
        // and the feature set never flips the main build's binaries.
        let target = workspace.join("target").join("e2e");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&workspace)
            .args([
                "build",
                "--quiet",
                "-p",
                "producer",
                "-p",
                "worker",
                "-p",
                "reducer",
                "--features",
                "producer/fault-injection,worker/fault-injection,reducer/fault-injection",
            ])
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("run cargo build for the binaries under test");
        assert!(status.success(), "building the binaries under test failed");
        target.join("debug")
    })
}

fn unique_namespace(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let short: String = test
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(24)
        .collect();
    format!("t-{short}-{}-{n}-{nanos:x}", std::process::id())
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Runs `f` against a fresh broker channel.
pub fn with_channel<T>(f: impl AsyncFnOnce(&lapin::Channel) -> T) -> T {
    runtime().block_on(async {
        let connection =
            lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
                .await
                .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("open channel");
        let value = f(&channel).await;
        let _ = connection.close(200, "test done".into()).await;
        value
    })
}

pub fn redis() -> redis::Connection {
    redis::Client::open(REDIS_URL)
        .unwrap()
        .get_connection()
        .expect("connect to Redis")
}

/// Polls `condition` every 25 ms until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A spawned worker or reducer.
pub struct Service {
    pub child: Child,
    pub role: &'static str,
}

impl Service {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let role = self.role;
        wait_for(&format!("{role} to exit"), timeout, || {
            self.child.try_wait().unwrap()
        })
    }
}

/// One test's namespace, processes and scratch directory.
pub struct Cluster {
    pub namespace: String,
    pub dir: PathBuf,
    services: Vec<Service>,
    redis_url: String,
}

impl Cluster {
    pub fn new(test: &str) -> Cluster {
        let namespace = unique_namespace(test);
        let dir = std::env::temp_dir().join(format!("chunkflow-{namespace}"));
        fs::create_dir_all(&dir).unwrap();
        bin_dir();
        Cluster {
            namespace,
            dir,
            services: Vec::new(),
            redis_url: REDIS_URL.to_string(),
        }
    }

    /// Points every process this cluster starts at another Redis (a private one).
    pub fn use_redis(&mut self, url: &str) {
        self.redis_url = url.to_string();
    }

    pub fn command(&self, binary: &str) -> Command {
        let mut command = Command::new(bin_dir().join(binary));
        command
            .env("CHUNKFLOW_NAMESPACE", &self.namespace)
            .env("AMQP_URL", AMQP_URL)
            .env("REDIS_URL", &self.redis_url)
            .env("RUST_LOG", "info")
            .env_remove("CHUNKFLOW_FAULT");
        command
    }

    fn spawn_service(&mut self, role: &'static str, env: &[(&str, &str)]) -> usize {
        let index = self.services.len();
        let log = fs::File::create(self.dir.join(format!("{role}-{index}.log"))).unwrap();
        let mut command = self.command(role);
        command
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {role}: {e}"));
        self.services.push(Service { child, role });
        index
    }

    /// Starts a worker; `env` may set `CHUNKFLOW_FAULT`.
    pub fn worker(&mut self, env: &[(&str, &str)]) -> usize {
        self.spawn_service("worker", env)
    }

    pub fn reducer(&mut self, env: &[(&str, &str)]) -> usize {
        self.spawn_service("reducer", env)
    }

    pub fn service(&mut self, index: usize) -> &mut Service {
        &mut self.services[index]
    }

    pub fn log(&self, role: &str, index: usize) -> String {
        fs::read_to_string(self.dir.join(format!("{role}-{index}.log"))).unwrap_or_default()
    }

    /// Writes a file in the scratch directory and returns its path.
    pub fn write_file(&self, name: &str, contents: &[u8]) -> String {
        let path = self.dir.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&path, contents).unwrap();
        path.to_string_lossy().into_owned()
    }

    /// Runs `producer ARGS`, waiting at most `timeout`.
    pub fn producer(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
        let mut command = self.command("producer");
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn producer");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input).unwrap();
        }
        let pid = child.id();
        let output = {
            // Deadline: a producer that hangs fails the test instead of hanging it.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(child.wait_with_output());
            });
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(output) => output.unwrap(),
                Err(_) => {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    panic!("producer {args:?} did not finish within 120 s");
                }
            }
        };
        output
    }

    /// `producer submit --job wordcount --wait EXTRA... INPUTS...`; asserts success and
    /// returns the job id.
    pub fn submit_wait(&self, extra: &[&str], inputs: &[&str], env: &[(&str, &str)]) -> String {
        let mut args = vec!["submit", "--job", "wordcount", "--wait"];
        args.extend_from_slice(extra);
        args.extend_from_slice(inputs);
        let output = self.producer(&args, env, None);
        assert!(
            output.status.success(),
            "submit failed: {}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        job_id_from(&output)
    }

    /// Starts `producer submit` in the background; returns it and the job id it printed.
    pub fn submit_background(&self, extra: &[&str], inputs: &[&str]) -> (Child, String) {
        let mut command = self.command("producer");
        command
            .args(["submit", "--job", "wordcount", "--wait"])
            .args(extra)
            .args(inputs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn producer");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let job = line.trim().to_string();
        assert!(!job.is_empty(), "producer printed no job id");
        (child, job)
    }

    pub fn result(&self, job: &str) -> String {
        let output = self.producer(&["result", job], &[], None);
        assert!(
            output.status.success(),
            "result failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("result is UTF-8")
    }

    pub fn status(&self, job: &str) -> serde_json::Value {
        let output = self.producer(&["status", job, "--json"], &[], None);
        assert!(
            output.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("status --json is JSON")
    }

    /// Ready messages in one of the namespace's queues.
    pub fn queue_depth(&self, queue: &str) -> u32 {
        let topology = Topology::new(&self.namespace);
        with_channel(async |channel| topology.ready_messages(channel, queue).await.unwrap())
    }

    pub fn topology(&self) -> Topology {
        Topology::new(&self.namespace)
    }

    /// Every Redis key of the namespace.
    pub fn redis_keys(&self) -> Vec<String> {
        let pattern = Keys::new(&self.namespace).namespace_pattern();
        let mut conn = redis();
        let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut conn).unwrap();
        keys
    }

    /// Deletes every queue, exchange and key of the namespace.
    pub fn cleanup_namespace(namespace: &str) {
        let topology = Topology::new(namespace);
        with_channel(async |channel| {
            // Delete one by one on fresh channels: deleting a missing queue is fine in
            // RabbitMQ 3.10, but keep going whatever happens.
            let _ = topology.delete(channel).await;
        });
        let pattern = Keys::new(namespace).namespace_pattern();
        let mut conn = redis();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query(&mut conn);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for service in &mut self.services {
            service.kill_hard();
        }
        if std::thread::panicking() {
            eprintln!(
                "logs of namespace {} kept in {}",
                self.namespace,
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
        Cluster::cleanup_namespace(&self.namespace);
    }
}

pub fn job_id_from(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "submit must print exactly the job id, got {stdout:?}"
    );
    lines[0].to_string()
}

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

/// Prints (and appends to `target/chaos-report.txt`) the one-line summary of a scenario:
/// chunks, deliveries, redeliveries, duplicates detected and dropped, result identical.
/// `identical` is `None` for scenarios whose expected outcome is a failed job.
pub fn report(cluster: &Cluster, scenario: &str, job: &str, identical: impl Into<Option<bool>>) {
    let identical: Option<bool> = identical.into();
    let status = cluster.status(job);
    let stat = |name: &str| status["deliveries"][name].as_u64().unwrap_or(0);
    let line = format!(
        "scenario {scenario}: state {}, chunks {}, deliveries {}, redeliveries {}, duplicates dropped {}, {}",
        status["state"].as_str().unwrap_or("?"),
        status["chunks_total"],
        stat("deliveries"),
        stat("redeliveries"),
        stat("duplicates"),
        match identical {
            Some(true) => "result identical: yes",
            Some(false) => "result identical: NO",
            None => "no result (the job failed or was cancelled, as the scenario expects)",
        },
    );
    println!("{line}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/chaos-report.txt");
    if let Ok(mut file) = fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(file, "{line}");
    }
}

/// Writes `lines` lines of text and returns (path, bytes, reference result).
pub fn text_input(
    cluster: &Cluster,
    name: &str,
    seed: u64,
    lines: usize,
) -> (String, Vec<u8>, String) {
    let data = generate_text(seed, lines);
    let path = cluster.write_file(name, &data);
    let expected = reference_wordcount(&[&data]);
    (path, data, expected)
}

/// Runs `rabbitmqctl ARGS`, asserting success (used by the exclusive scenarios).
#[allow(dead_code)]
pub fn rabbitmqctl(args: &[&str]) {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("run rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Cluster {
    /// Chunks committed so far (0 while unknown).
    pub fn committed(&self, job: &str) -> u64 {
        self.status(job)["chunks_committed"].as_u64().unwrap_or(0)
    }

    /// Waits for a `submit --wait` started with [`Cluster::submit_background`] and returns
    /// its exit status and standard error.
    pub fn finish_submit(&self, child: Child, timeout: Duration) -> (ExitStatus, String) {
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(timeout) {
            Ok(output) => {
                let output = output.unwrap();
                (
                    output.status,
                    String::from_utf8_lossy(&output.stderr).into_owned(),
                )
            }
            Err(_) => {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                panic!("submit --wait did not finish within {timeout:?}");
            }
        }
    }
}

/// A Redis server of the test's own, without persistence, on a free port: it can be
/// restarted (losing everything) without touching the shared one.
pub struct PrivateRedis {
    pub port: u16,
    child: Child,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Self::spawn(port);
        PrivateRedis { port, child }
    }

    fn spawn(port: u16) -> Child {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a private redis-server");
        wait_for(
            "the private Redis to listen",
            Duration::from_secs(20),
            || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
        );
        child
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server and starts an empty one on the same port.
    pub fn restart_empty(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.port);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
