//! The shared RabbitMQ and Redis as the tests reach them: a broker channel, a Redis
//! connection, the polling [`wait_for`], a private Redis a test may restart, and
//! `rabbitmqctl` for the exclusive scenarios. Other developers use the shared services at
//! the same time: nothing here stops, pauses, flushes or disconnects them unless a test
//! calls [`rabbitmqctl`] to do so on purpose (only the `exclusive` binary does).

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const AMQP_URL: &str = chunkflow::config::DEFAULT_AMQP_URL;
pub const REDIS_URL: &str = chunkflow::config::DEFAULT_REDIS_URL;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("build the tests' tokio runtime")
    })
}

/// Runs `future` to completion on the tests' runtime (from a test thread, not from inside
/// a runtime).
pub fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    runtime().block_on(future)
}

/// Runs `f` against a fresh channel on the shared broker.
pub fn with_channel<T>(f: impl AsyncFnOnce(&lapin::Channel) -> T) -> T {
    with_channel_at(AMQP_URL, f)
}

/// Runs `f` against a fresh channel on the broker at `amqp_url` (one URL, or the nodes of a
/// cluster: the first that answers), connected the way the binaries connect.
pub fn with_channel_at<T>(amqp_url: &str, f: impl AsyncFnOnce(&lapin::Channel) -> T) -> T {
    with_connection_at(amqp_url, async |connection| {
        let channel = connection.create_channel().await.expect("open channel");
        f(&channel).await
    })
}

/// Runs `f` against a fresh connection to the broker at `amqp_url` (see
/// [`with_channel_at`]).
pub fn with_connection_at<T>(amqp_url: &str, f: impl AsyncFnOnce(&lapin::Connection) -> T) -> T {
    runtime().block_on(async {
        let nodes = chunkflow::broker::topology::BrokerNodes::parse(amqp_url)
            .unwrap_or_else(|e| panic!("a valid RabbitMQ URL: {e}"));
        let connected =
            chunkflow::broker::topology::connect(&nodes, "test", Duration::from_secs(30))
                .await
                .unwrap_or_else(|e| panic!("connect to RabbitMQ: {e}"));
        let value = f(&connected.connection).await;
        let _ = connected.connection.close(200, "test done".into()).await;
        value
    })
}

/// A connection to the shared Redis.
pub fn redis() -> redis::Connection {
    redis::Client::open(REDIS_URL)
        .expect("a valid Redis URL")
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

/// Runs `rabbitmqctl ARGS`, asserting success (used by the exclusive scenarios).
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

/// A Redis server of the test's own, without automatic snapshots, on a free port: it can be
/// restarted (losing everything), or stopped with its data saved and started again,
/// without touching the shared one.
pub struct PrivateRedis {
    pub port: u16,
    child: Child,
    /// Where `SHUTDOWN SAVE` writes its snapshot, and a restart reads it.
    dir: std::path::PathBuf,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free local port")
            .port();
        let dir =
            std::env::temp_dir().join(format!("chunkflow-redis-{port}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the private Redis's directory");
        let child = Self::spawn(port, &dir);
        PrivateRedis { port, child, dir }
    }

    fn spawn(port: u16, dir: &std::path::Path) -> Child {
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
                "--dbfilename",
                "dump.rdb",
            ])
            .arg("--dir")
            .arg(dir)
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

    /// A connection to this server.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("a valid Redis URL")
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to the private Redis")
    }

    /// Kills the server and starts an empty one on the same port.
    pub fn restart_empty(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
        self.child = Self::spawn(self.port, &self.dir);
    }

    /// Stops the server with its data saved (`SHUTDOWN SAVE`): connections are refused
    /// until [`PrivateRedis::start_again`].
    pub fn stop_saving(&mut self) {
        // The server closes the connection instead of replying.
        let _ = redis::cmd("SHUTDOWN")
            .arg("SAVE")
            .query::<()>(&mut self.connection());
        let child = &mut self.child;
        wait_for("the private Redis to exit", Duration::from_secs(30), || {
            child.try_wait().ok().flatten()
        });
        assert!(
            self.dir.join("dump.rdb").exists(),
            "the private Redis saved its data"
        );
    }

    /// Starts the server again on the same port, with the data it saved.
    pub fn start_again(&mut self) {
        self.child = Self::spawn(self.port, &self.dir);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
