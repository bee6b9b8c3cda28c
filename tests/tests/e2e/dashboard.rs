//! The web dashboard in a real headless browser (Debian's chromium): the page loads, shows
//! a running job's progress moving, then its final state. `scripts/test.sh` installs
//! chromium when it is missing; the test skips, saying why, only where it cannot be found.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chunkflow_tests::cluster::*;
use chunkflow_tests::monitor::*;
use chunkflow_tests::scenario::*;
use chunkflow_tests::services::*;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|path| path.is_file())
            })
        })
}

/// A `producer dashboard` process, killed on drop.
struct Dashboard {
    child: Child,
    addr: String,
}

impl Dashboard {
    fn start(cluster: &Cluster) -> Dashboard {
        let mut child = cluster
            .command("producer")
            .args(["dashboard", "--listen", "127.0.0.1:0", "--refresh", "250ms"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start producer dashboard");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("dashboard: http://")
            .and_then(|rest| rest.strip_suffix('/'))
            .unwrap_or_else(|| panic!("dashboard printed {line:?}"))
            .to_string();
        Dashboard { child, addr }
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn browser_command(browser: &Path, profile: &Path) -> Command {
    let mut command = Command::new(browser);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,860",
            // Lets the page's fetches and timers run before the DOM is dumped.
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// The rendered DOM of `url` after the page's scripts ran.
fn dump_dom(browser: &Path, profile: &Path, url: &str) -> String {
    let output = browser_command(browser, profile)
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(output.status.success(), "chromium --dump-dom failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `(state, progress)` of the job's row in the rendered jobs table.
fn job_row(dom: &str, job: &str) -> Option<(String, f64)> {
    let start = dom.find("<tr class=\"job")?;
    let rows = &dom[start..];
    let at = rows.find(&format!("data-job=\"{job}\""))?;
    let row = &rows[at..rows[at..].find('>')? + at];
    let attr = |name: &str| -> Option<String> {
        let from = row.find(&format!("{name}=\""))? + name.len() + 2;
        Some(row[from..from + row[from..].find('"')?].to_string())
    };
    Some((
        attr("data-state")?,
        attr("data-progress")?.parse().unwrap_or(0.0),
    ))
}

#[test]
fn dashboard_shows_a_running_job_moving_then_its_final_state() {
    let Some(browser) = chromium() else {
        println!(
            "SKIPPED dashboard browser test: no chromium on PATH (scripts/test.sh installs it \
             with apt-get when it can; it could not here)"
        );
        return;
    };
    let mut cluster = Cluster::new("dashboard");
    // Slow map (150 ms a chunk, one worker) so the job is seen running for a while.
    cluster.worker(&[
        ("CHUNKFLOW_FAULT", "map-delay-ms=150"),
        MONITORED[0],
        MONITORED[1],
    ]);
    cluster.reducer(MONITORED);
    let dashboard = Dashboard::start(&cluster);
    assert_eq!(http_get(&dashboard.addr, "/healthz").0, 200);
    let url = format!("http://{}/", dashboard.addr);
    let profile = cluster.dir.join("chromium-profile");

    let (path, _, expected) = text_input(&cluster, "in.txt", 21, 3_000);
    let (child, job) =
        cluster.submit_background(&["--chunk-size", "2KiB", "--partitions", "4"], &[&path]);

    let first = wait_for(
        "the page to show the job running",
        Duration::from_secs(60),
        || match job_row(&dump_dom(&browser, &profile, &url), &job) {
            Some((state, progress)) if state == "running" && progress > 0.0 && progress < 0.8 => {
                Some(progress)
            }
            _ => None,
        },
    );
    let dom = dump_dom(&browser, &profile, &url);
    assert!(dom.contains("Live workers and reducers"), "page rendered");
    assert!(dom.contains("data-role=\"worker\""), "live worker listed");
    assert!(
        dom.contains(&format!("{}.map", cluster.namespace)),
        "queue listed"
    );
    assert!(
        dom.contains("data-partition=\"3\""),
        "per-partition progress shown"
    );
    wait_for(
        "the progress bar to move",
        Duration::from_secs(60),
        || match job_row(&dump_dom(&browser, &profile, &url), &job) {
            Some((_, progress)) if progress > first => Some(()),
            _ => None,
        },
    );

    let screenshot = cluster.dir.join("dashboard.png");
    let status = browser_command(&browser, &profile)
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(&url)
        .stdout(Stdio::null())
        .status()
        .expect("run chromium");
    assert!(status.success());
    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real PNG"
    );
    if let Some(target) = std::env::var_os("CHUNKFLOW_SCREENSHOT") {
        std::fs::copy(&screenshot, target).expect("copy the screenshot");
    }

    let (exit, stderr) = cluster.finish_submit(child, Duration::from_secs(120));
    assert!(exit.success(), "{stderr}");
    assert_eq!(cluster.result(&job), expected);
    wait_for("the page to show success", Duration::from_secs(30), || {
        let dom = dump_dom(&browser, &profile, &url);
        let row = job_row(&dom, &job)?;
        let detail = dom.contains(&format!(
            "id=\"job-detail\" data-job=\"{job}\" data-state=\"succeeded\" data-progress=\"1\""
        ));
        (row == ("succeeded".to_string(), 1.0) && detail).then_some(())
    });
}
