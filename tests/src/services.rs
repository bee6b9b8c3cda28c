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

/// A Redis server of the test's own, without persistence, on a free port: it can be
/// restarted (losing everything) without touching the shared one.
pub struct PrivateRedis {
    pub port: u16,
    child: Child,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free local port")
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
