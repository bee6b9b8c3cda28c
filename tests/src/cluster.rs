//! One test's cluster: a unique namespace (queue-name and key prefix) on the shared
//! RabbitMQ and Redis (or on another broker, [`Cluster::use_amqp`], or Redis,
//! [`Cluster::use_redis`]), the real `producer`, `worker` and `reducer` binaries run as
//! processes, a scratch directory for inputs and logs, and a cleanup on drop that kills the
//! processes and deletes every queue and key of the namespace. A cluster must never touch
//! another namespace: other tests and developers run beside it.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chunkflow::broker::topology::Topology;

use crate::binaries::{bin_dir, custom_bin_dir};
use crate::redis_cluster;
use crate::services::{wait_for, with_channel_at, AMQP_URL, REDIS_URL};

/// How long a foreground `producer` command may run before the test fails.
const PRODUCER_DEADLINE: Duration = Duration::from_secs(120);

/// A namespace no other test (in this process or another) uses.
fn unique_namespace(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or_default();
    let short: String = test
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(24)
        .collect();
    format!("t-{short}-{}-{n}-{nanos:x}", std::process::id())
}

/// Waits for `child` to exit and collects its output, killing it and panicking with
/// `what` after `timeout`: a process that hangs fails the test instead of hanging it.
fn output_within(child: Child, timeout: Duration, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => output.unwrap_or_else(|e| panic!("collect the output of {what}: {e}")),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{what} did not finish within {timeout:?}");
        }
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
            .expect("run kill");
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
            self.child.try_wait().expect("poll the child process")
        })
    }
}

/// One test's namespace, processes and scratch directory.
pub struct Cluster {
    pub namespace: String,
    pub dir: PathBuf,
    services: Vec<Service>,
    redis_url: String,
    amqp_url: String,
}

impl Cluster {
    pub fn new(test: &str) -> Cluster {
        let namespace = unique_namespace(test);
        let dir = std::env::temp_dir().join(format!("chunkflow-{namespace}"));
        fs::create_dir_all(&dir).expect("create the test's scratch directory");
        bin_dir();
        Cluster {
            namespace,
            dir,
            services: Vec::new(),
            redis_url: REDIS_URL.to_string(),
            amqp_url: AMQP_URL.to_string(),
        }
    }

    /// Points every process this cluster starts at another Redis (a private one, or the
    /// seeds of a Redis Cluster); the namespace's keys are deleted there at the end.
    pub fn use_redis(&mut self, url: &str) {
        self.redis_url = url.to_string();
    }

    /// The `REDIS_URL` of the processes this cluster starts.
    pub fn redis_url(&self) -> &str {
        &self.redis_url
    }

    /// Points every process this cluster starts, and the cluster's own queue inspection and
    /// cleanup, at another RabbitMQ: one URL, or the nodes of a RabbitMQ cluster separated
    /// by commas (`AMQP_URL` as the binaries read it).
    pub fn use_amqp(&mut self, url: &str) {
        self.amqp_url = url.to_string();
    }

    /// The `AMQP_URL` the cluster's processes are given.
    pub fn amqp_url(&self) -> &str {
        &self.amqp_url
    }

    pub fn command(&self, binary: &str) -> Command {
        let mut command = Command::new(bin_dir().join(binary));
        command
            .env("CHUNKFLOW_NAMESPACE", &self.namespace)
            .env("AMQP_URL", &self.amqp_url)
            .env("REDIS_URL", &self.redis_url)
            .env("RUST_LOG", "info")
            .env_remove("CHUNKFLOW_FAULT");
        command
    }

    fn spawn_service(&mut self, role: &'static str, env: &[(&str, &str)]) -> usize {
        let index = self.services.len();
        let log = fs::File::create(self.dir.join(format!("{role}-{index}.log")))
            .unwrap_or_else(|e| panic!("create the {role}'s log: {e}"));
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

    /// The pid of a worker or reducer started by this cluster.
    pub fn pid(&self, index: usize) -> u32 {
        self.services[index].pid()
    }

    pub fn log(&self, role: &str, index: usize) -> String {
        fs::read_to_string(self.dir.join(format!("{role}-{index}.log"))).unwrap_or_default()
    }

    /// Writes a file in the scratch directory and returns its path.
    pub fn write_file(&self, name: &str, contents: &[u8]) -> String {
        let path = self.dir.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create the input's directory");
        }
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path.to_string_lossy().into_owned()
    }

    /// Runs `producer ARGS`, waiting at most two minutes.
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
            let mut pipe = child.stdin.take().expect("stdin was piped");
            pipe.write_all(input).expect("write the producer's stdin");
        }
        output_within(child, PRODUCER_DEADLINE, &format!("producer {args:?}"))
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
        self.submit_background_with(extra, inputs, &[])
    }

    /// [`Cluster::submit_background`] with more environment (`CHUNKFLOW_FAULT`, another
    /// `AMQP_URL`...).
    pub fn submit_background_with(
        &self,
        extra: &[&str],
        inputs: &[&str],
        env: &[(&str, &str)],
    ) -> (Child, String) {
        let mut command = self.command("producer");
        command
            .args(["submit", "--job", "wordcount", "--wait"])
            .args(extra)
            .args(inputs)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn producer");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout was piped"))
            .read_line(&mut line)
            .expect("read the job id");
        let job = line.trim().to_string();
        assert!(!job.is_empty(), "producer printed no job id");
        (child, job)
    }

    /// Waits for a `submit --wait` started with [`Cluster::submit_background`] and returns
    /// its exit status and standard error.
    pub fn finish_submit(&self, child: Child, timeout: Duration) -> (ExitStatus, String) {
        let output = output_within(child, timeout, "submit --wait");
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
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

    /// `producer status JOB --json`.
    pub fn status(&self, job: &str) -> serde_json::Value {
        let output = self.producer(&["status", job, "--json"], &[], None);
        assert!(
            output.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("status --json is JSON")
    }

    /// Chunks committed so far (0 while unknown).
    pub fn committed(&self, job: &str) -> u64 {
        self.status(job)["chunks_committed"].as_u64().unwrap_or(0)
    }

    /// Ready messages in one of the namespace's queues.
    pub fn queue_depth(&self, queue: &str) -> u32 {
        let topology = Topology::new(&self.namespace);
        with_channel_at(&self.amqp_url, async |channel| {
            topology
                .ready_messages(channel, queue)
                .await
                .unwrap_or_else(|e| panic!("count the messages of {queue}: {e}"))
        })
    }

    pub fn topology(&self) -> Topology {
        Topology::new(&self.namespace)
    }

    /// Every Redis key of the namespace (on every master of a Redis Cluster).
    pub fn redis_keys(&self) -> Vec<String> {
        redis_cluster::namespace_keys(&self.redis_url, &self.namespace)
    }

    /// Deletes every queue, exchange and key of the namespace (on the shared broker and the
    /// shared Redis).
    pub fn cleanup_namespace(namespace: &str) {
        Cluster::cleanup_namespace_in(namespace, AMQP_URL, REDIS_URL);
    }

    /// Deletes every queue and exchange of the namespace on the broker at `amqp_url`, and
    /// its keys in the Redis that `redis_url` names (one server, or every master of a Redis
    /// Cluster).
    pub fn cleanup_namespace_in(namespace: &str, amqp_url: &str, redis_url: &str) {
        let topology = Topology::new(namespace);
        with_channel_at(amqp_url, async |channel| {
            // Deleting a missing queue is fine in RabbitMQ 3.10, but keep going whatever
            // happens.
            let _ = topology.delete(channel).await;
        });
        redis_cluster::delete_namespace(redis_url, namespace);
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
        Cluster::cleanup_namespace_in(&self.namespace, &self.amqp_url, &self.redis_url);
    }
}

/// The job id a `producer submit` printed (its only line of standard output).
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

/// A process killed when dropped.
pub struct Spawned(pub Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts one of the custom-job example's services in the cluster's namespace.
pub fn spawn_custom(cluster: &Cluster, binary: &str) -> Spawned {
    custom_bin_dir();
    let log = fs::File::create(cluster.dir.join(format!("{binary}.log")))
        .unwrap_or_else(|e| panic!("create the {binary}'s log: {e}"));
    let child = cluster
        .command(binary)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
    Spawned(child)
}
