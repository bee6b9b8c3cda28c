//! exec: external programs as mapper and reducer, Hadoop Streaming style.
//!
//! Parameters: `{"mapper": NAME, "reducer": NAME?}`. A NAME is looked up in the allow-list
//! the process was started with (`--allow-exec NAME=PROGRAM [ARGS]`): a task never carries
//! a command line, so whoever can submit a job can run only what the operator allowed.
//!
//! - The mapper reads a chunk (whole lines) on standard input and writes `key<TAB>value`
//!   lines (a line without a tab is a key with an empty value; a trailing `\r` is dropped).
//!   Its lines are partitioned by key.
//! - The reducer reads one partition's lines, sorted by key (then value) in byte order, so
//!   a key's lines are adjacent, and writes result lines. Without a reducer the mapper's
//!   lines, sorted, are the result.
//! - Each run has a time limit, a cap on its standard output, a cleared environment
//!   (only `PATH=/usr/local/bin:/usr/bin:/bin`), its own process group, and a deadline on
//!   its exit and on the end of its output: at the deadline its group is killed, and so is
//!   any process it left behind that still holds its pipes (a `setsid` grandchild), so no
//!   worker waits past `--exec-timeout`. A non-zero exit, a signal, a timeout or too much
//!   output fails the job with the end of the program's standard error.
//!
//! Where names are checked: a worker needs the mapper's name, a reducer the reducer's; a
//! missing one fails the job naming it. The producer checks both when it was given an
//! allow-list itself (the same `--allow-exec`, or `CHUNKFLOW_ALLOW_EXEC`), so a name no
//! one allowed is refused before anything is published; without one it cannot know the
//! workers' lists and leaves the check to them.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{params, partition_of, ChunkContext, Job, JobError, MapOutput, ReduceOutput};
use crate::codec::{put_bytes, read_pairs};

pub const KIND: &str = "exec";

/// `PATH` of a program's otherwise empty environment.
pub const EXEC_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Standard error kept for the failure message.
const STDERR_KEPT: usize = 4096;

/// An allowed program: `NAME=PROGRAM [ARGS]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub name: String,
    pub program: String,
    pub args: Vec<String>,
}

/// Why an `--allow-exec` entry cannot be read; each message quotes the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgramError {
    #[error("--allow-exec {text:?}: expected NAME=PROGRAM [ARGS]")]
    MissingName { text: String },
    #[error("--allow-exec {text:?}: {name}")]
    BadName { text: String, name: BadProgramName },
    #[error("--allow-exec {text:?}: the program is empty")]
    EmptyProgram { text: String },
}

/// A program name outside `[A-Za-z0-9._-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("program name {0:?} must be 1 to 64 letters, digits, `-`, `_` or `.`")]
pub struct BadProgramName(pub String);

impl Program {
    /// Parses `NAME=PROGRAM [ARGS]` (arguments separated by spaces; no shell quoting).
    pub fn parse(text: &str) -> Result<Program, ProgramError> {
        let (name, command) = text
            .split_once('=')
            .ok_or_else(|| ProgramError::MissingName {
                text: text.to_string(),
            })?;
        check_name(name).map_err(|name| ProgramError::BadName {
            text: text.to_string(),
            name,
        })?;
        let mut words = command.split_ascii_whitespace().map(str::to_string);
        let program = words.next().ok_or_else(|| ProgramError::EmptyProgram {
            text: text.to_string(),
        })?;
        Ok(Program {
            name: name.to_string(),
            program,
            args: words.collect(),
        })
    }
}

fn check_name(name: &str) -> Result<(), BadProgramName> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(BadProgramName(name.to_string()))
    }
}

/// Which process builds the job, hence which names must be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecRole {
    /// The producer: checks every name if it has an allow-list, none otherwise.
    #[default]
    Submit,
    /// A worker: needs the mapper.
    Map,
    /// A reducer: needs the reducer, if the job has one.
    Reduce,
    /// The local runner: needs both.
    Local,
}

/// The process's exec settings: allow-list, limits, and role.
#[derive(Debug, Clone)]
pub struct ExecSettings {
    pub allowed: BTreeMap<String, Program>,
    pub role: ExecRole,
    pub timeout: Duration,
    pub max_output: u64,
}

impl Default for ExecSettings {
    fn default() -> Self {
        ExecSettings {
            allowed: BTreeMap::new(),
            role: ExecRole::Submit,
            timeout: Duration::from_secs(600),
            max_output: 1 << 30,
        }
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    mapper: String,
    #[serde(default)]
    reducer: Option<String>,
}

/// Builds the job: names must be valid, and allowed as the role requires.
pub fn build(
    params: &serde_json::Value,
    settings: &Arc<ExecSettings>,
) -> Result<Arc<dyn Job>, JobError> {
    let p: Params = params::parse(KIND, params)
        .map_err(|e| JobError::new(format!("{e} (exec needs --mapper NAME)")))?;
    check_name(&p.mapper).map_err(|e| JobError::new(e.to_string()))?;
    if let Some(reducer) = &p.reducer {
        check_name(reducer).map_err(|e| JobError::new(e.to_string()))?;
    }
    let (need_mapper, need_reducer, process) = match settings.role {
        ExecRole::Submit => {
            let has_list = !settings.allowed.is_empty();
            (has_list, has_list, "producer")
        }
        ExecRole::Map => (true, false, "worker"),
        ExecRole::Reduce => (false, true, "reducer"),
        ExecRole::Local => (true, true, "producer --local"),
    };
    let lookup = |role: &str, name: &str| -> Result<Program, JobError> {
        settings.allowed.get(name).cloned().ok_or_else(|| {
            let allowed: Vec<&str> = settings.allowed.keys().map(String::as_str).collect();
            JobError::new(format!(
                "exec {role} `{name}` is not allowed on this {process}: start it with \
                 --allow-exec {name}=PROGRAM [ARGS] (allowed here: {})",
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            ))
        })
    };
    let mapper = if need_mapper {
        Some(lookup("mapper", &p.mapper)?)
    } else {
        settings.allowed.get(&p.mapper).cloned()
    };
    let reducer = match &p.reducer {
        Some(name) if need_reducer => Some(lookup("reducer", name)?),
        Some(name) => settings.allowed.get(name).cloned(),
        None => None,
    };
    Ok(Arc::new(Exec {
        mapper_name: p.mapper,
        mapper,
        reducer_name: p.reducer,
        reducer,
        timeout: settings.timeout,
        max_output: settings.max_output,
    }))
}

/// The exec job.
#[derive(Debug, Clone)]
pub struct Exec {
    mapper_name: String,
    mapper: Option<Program>,
    reducer_name: Option<String>,
    reducer: Option<Program>,
    timeout: Duration,
    max_output: u64,
}

/// Kills the process group a program was started in (it and whatever it started).
fn kill_group(pid: u32) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    // The group id is the program's pid (`process_group(0)`): never 0 or 1, so this cannot
    // signal our own group or every process.
    if let Some(pid) = pid.filter(|p| p.as_raw_nonzero().get() > 1) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// The inode of the pipe behind one of our ends of it (`None` off Linux).
fn pipe_inode(end: &impl AsRawFd) -> Option<u64> {
    std::fs::metadata(format!("/proc/self/fd/{}", end.as_raw_fd()))
        .ok()
        .map(|meta| meta.ino())
}

/// Kills every process but this one that holds one of `pipes` open: what a program left
/// behind outside its process group (a `setsid` or double-forked grandchild) and that would
/// otherwise keep its output open, and this worker waiting, forever. Returns how many.
fn kill_pipe_holders(pipes: &[u64]) -> usize {
    let me = std::process::id();
    let names: Vec<String> = pipes
        .iter()
        .map(|inode| format!("pipe:[{inode}]"))
        .collect();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if pid <= 1 || pid as u32 == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| names.iter().any(|name| target.as_os_str() == name.as_str()))
        });
        if let Some(pid) = holds.then(|| rustix::process::Pid::from_raw(pid)).flatten() {
            if rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok() {
                killed += 1;
            }
        }
    }
    killed
}

/// How long the pipe readers may take to see end-of-file once every holder was killed.
const PIPES_CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// Runs `program` with `input` on standard input; its standard output on success.
///
/// The program runs in a box it cannot leave: its own process group, and a deadline on
/// everything — its exit, and the end of its output. At the deadline (or when it writes
/// more than `max_output`) its group is killed, and so is every other process that still
/// holds one of its pipes (a grandchild that escaped the group with `setsid`), so the
/// pipes close and nothing here waits past the deadline.
pub fn run_program(
    role: &str,
    program: &Program,
    input: &[u8],
    timeout: Duration,
    max_output: u64,
) -> Result<Vec<u8>, JobError> {
    use std::os::unix::process::CommandExt;
    let what = format!("exec {role} `{}` ({})", program.name, program.program);
    let mut child = Command::new(&program.program)
        .args(&program.args)
        .env_clear()
        .env("PATH", EXEC_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| JobError::new(format!("{what} could not start: {e}")))?;
    let pid = child.id();
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        kill_group(pid);
        let _ = child.wait();
        return Err(JobError::new(format!("{what}: no pipes to the program")));
    };
    let pipes: Vec<u64> = [pipe_inode(&stdin), pipe_inode(&stdout), pipe_inode(&stderr)]
        .into_iter()
        .flatten()
        .collect();
    // Plain threads owning their pipe, not scoped ones: if a pipe never closes (a holder
    // that could not be killed), the thread is abandoned instead of blocking this call.
    let input = input.to_vec();
    std::thread::spawn(move || {
        // A program may exit without reading all of its input: not an error here.
        let _ = stdin.write_all(&input);
    });
    let errors = std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > 2 * STDERR_KEPT {
                kept.drain(..kept.len() - STDERR_KEPT);
            }
        }
        kept
    });
    let too_much = Arc::new(AtomicBool::new(false));
    let flag = too_much.clone();
    let out = std::thread::spawn(move || {
        let mut out = Vec::new();
        let limited = (&mut stdout).take(max_output + 1).read_to_end(&mut out);
        if out.len() as u64 > max_output {
            flag.store(true, Ordering::SeqCst);
            kill_group(pid);
        }
        limited.map(|_| out)
    });
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let mut exited = None;
    let outcome: Result<(), String> = loop {
        if exited.is_none() {
            match child.try_wait() {
                Ok(Some(status)) => exited = Some(status),
                Ok(None) => {}
                Err(e) => break Err(format!("could not be waited for: {e}")),
            }
        }
        let output_closed = out.is_finished() && errors.is_finished();
        if too_much.load(Ordering::SeqCst) || (exited.is_some() && output_closed) {
            break Ok(());
        }
        if Instant::now() >= deadline {
            break Err(match exited {
                None => format!("did not finish within {timeout:?} and was killed"),
                Some(_) => format!(
                    "exited, but a process it started kept its output open past the \
                     {timeout:?} limit; every process holding it was killed"
                ),
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    if outcome.is_err() || too_much.load(Ordering::SeqCst) {
        kill_group(pid);
        kill_pipe_holders(&pipes);
    }
    let status = match exited {
        Some(status) => Ok(status),
        None => child.wait(),
    };
    let pipes_deadline = Instant::now() + PIPES_CLOSE_WITHIN;
    while !(out.is_finished() && errors.is_finished()) && Instant::now() < pipes_deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stderr = if errors.is_finished() {
        errors.join().unwrap_or_default()
    } else {
        Vec::new()
    };
    let stderr_text = {
        let text = String::from_utf8_lossy(&stderr);
        let text = text.trim_end();
        if text.is_empty() {
            "(standard error was empty)".to_string()
        } else {
            format!("standard error: {text}")
        }
    };
    if too_much.load(Ordering::SeqCst) {
        return Err(JobError::new(format!(
            "{what} wrote more than {max_output} bytes of output and was killed; {stderr_text}"
        )));
    }
    if let Err(why) = outcome {
        return Err(JobError::new(format!("{what} {why}; {stderr_text}")));
    }
    let status = status.map_err(|e| {
        JobError::new(format!(
            "{what} could not be waited for: {e}; {stderr_text}"
        ))
    })?;
    if !status.success() {
        return Err(JobError::new(format!(
            "{what} failed ({status}); {stderr_text}"
        )));
    }
    if !out.is_finished() {
        return Err(JobError::new(format!(
            "{what}: its output did not close after it was killed; {stderr_text}"
        )));
    }
    match out.join() {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(JobError::new(format!("{what}: reading its output: {e}"))),
        Err(_) => Err(JobError::new(format!("{what}: the output reader panicked"))),
    }
}

fn lines_of(output: &[u8]) -> Vec<&[u8]> {
    let body = output.strip_suffix(b"\n").unwrap_or(output);
    if body.is_empty() {
        return Vec::new();
    }
    body.split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .collect()
}

fn line_key(line: &[u8]) -> &[u8] {
    memchr::memchr(b'\t', line).map_or(line, |tab| &line[..tab])
}

impl Job for Exec {
    fn map_chunk(&self, ctx: &ChunkContext<'_>, data: &[u8]) -> Result<MapOutput, JobError> {
        let mapper = self.mapper.as_ref().ok_or_else(|| {
            JobError::new(format!(
                "exec mapper `{}` is not allowed on this worker: start it with --allow-exec {}=PROGRAM [ARGS]",
                self.mapper_name, self.mapper_name
            ))
        })?;
        let output = run_program("mapper", mapper, data, self.timeout, self.max_output)?;
        let mut buckets: Vec<Vec<(&[u8], &[u8])>> =
            vec![Vec::new(); ctx.partitions.max(1) as usize];
        for line in lines_of(&output) {
            // Stored as (key, rest of the line from its tab on): the line comes back as is.
            let key = line_key(line);
            let value = &line[key.len()..];
            buckets[partition_of(key, ctx.partitions) as usize].push((key, value));
        }
        let partials = buckets
            .into_iter()
            .map(|mut entries| {
                entries.sort_unstable();
                let mut out = Vec::new();
                for (key, value) in entries {
                    put_bytes(&mut out, key);
                    put_bytes(&mut out, value);
                }
                out
            })
            .collect();
        Ok(MapOutput::from_lines(partials, data))
    }

    fn reduce_partition(&self, partials: Vec<Vec<u8>>) -> Result<ReduceOutput, JobError> {
        let mut pairs = read_pairs(&partials)?;
        pairs.sort_unstable();
        let mut input = Vec::new();
        for (key, rest) in &pairs {
            input.extend_from_slice(key);
            input.extend_from_slice(rest);
            input.push(b'\n');
        }
        let output = match (&self.reducer_name, &self.reducer) {
            (None, _) => input,
            (Some(_), Some(reducer)) => {
                if pairs.is_empty() {
                    Vec::new()
                } else {
                    run_program("reducer", reducer, &input, self.timeout, self.max_output)?
                }
            }
            (Some(name), None) => {
                return Err(JobError::new(format!(
                    "exec reducer `{name}` is not allowed on this reducer: start it with --allow-exec {name}=PROGRAM [ARGS]"
                )))
            }
        };
        // The result of a partition must be sorted by key for the final merge.
        let mut lines = lines_of(&output);
        lines.sort_unstable_by(|a, b| (line_key(a), *a).cmp(&(line_key(b), *b)));
        let mut out = Vec::with_capacity(output.len() + 1);
        for line in &lines {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        Ok(ReduceOutput {
            lines: out,
            records: lines.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(role: ExecRole, allowed: &[&str]) -> Arc<ExecSettings> {
        Arc::new(ExecSettings {
            allowed: allowed
                .iter()
                .map(|a| {
                    let p = Program::parse(a).unwrap();
                    (p.name.clone(), p)
                })
                .collect(),
            role,
            timeout: Duration::from_secs(10),
            max_output: 1 << 20,
        })
    }

    fn ctx(partitions: u32) -> ChunkContext<'static> {
        ChunkContext {
            source: "in",
            offset: 0,
            first_line: 1,
            partitions,
        }
    }

    #[test]
    fn parses_allow_exec() {
        let p = Program::parse("wc=/usr/bin/python3  -u  m.py").unwrap();
        assert_eq!(
            (p.name.as_str(), p.program.as_str()),
            ("wc", "/usr/bin/python3")
        );
        assert_eq!(p.args, vec!["-u", "m.py"]);
        assert!(Program::parse("wc").is_err());
        assert_eq!(
            Program::parse("w c=/bin/true").unwrap_err().to_string(),
            "--allow-exec \"w c=/bin/true\": program name \"w c\" must be 1 to 64 letters, digits, `-`, `_` or `.`"
        );
        assert!(Program::parse("wc=  ").is_err());
    }

    #[test]
    fn names_are_checked_where_they_run() {
        let params = serde_json::json!({"mapper": "m", "reducer": "r"});
        assert!(build(&params, &settings(ExecRole::Submit, &[])).is_ok());
        let err = build(&params, &settings(ExecRole::Submit, &["m=/bin/cat"]))
            .err()
            .unwrap();
        assert!(
            err.message.contains("reducer `r` is not allowed"),
            "{}",
            err.message
        );
        assert!(build(&params, &settings(ExecRole::Map, &["m=/bin/cat"])).is_ok());
        let err = build(&params, &settings(ExecRole::Map, &["r=/bin/cat"]))
            .err()
            .unwrap();
        assert!(
            err.message.contains("mapper `m`") && err.message.contains("--allow-exec m="),
            "{}",
            err.message
        );
        assert!(build(&params, &settings(ExecRole::Reduce, &["r=/bin/cat"])).is_ok());
        assert!(build(
            &serde_json::json!({"mapper": "a b"}),
            &settings(ExecRole::Submit, &[])
        )
        .is_err());
    }

    #[test]
    fn shell_mapper_and_reducer() {
        let s = Arc::new(ExecSettings {
            allowed: [
                Program {
                    name: "split".into(),
                    program: "/bin/sh".into(),
                    args: vec!["-c".into(), "tr -s ' ' '\\n' | sed 's/$/\t1/'".into()],
                },
                Program {
                    name: "sum".into(),
                    program: "/bin/sh".into(),
                    args: vec![
                        "-c".into(),
                        "awk -F'\t' '{s[$1]+=$2} END {for (k in s) print k \"\\t\" s[k]}'".into(),
                    ],
                },
                Program {
                    name: "env".into(),
                    program: "/bin/sh".into(),
                    args: vec![
                        "-c".into(),
                        "env | grep -v '^PWD=' | grep -v '^SHLVL=' | grep -v '^_='".into(),
                    ],
                },
            ]
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect(),
            role: ExecRole::Local,
            timeout: Duration::from_secs(10),
            max_output: 1 << 20,
        });
        let job = build(
            &serde_json::json!({"mapper": "split", "reducer": "sum"}),
            &s,
        )
        .unwrap();
        let a = job.map_chunk(&ctx(2), b"a b a\nc\n").unwrap();
        let b = job.map_chunk(&ctx(2), b"b a\n").unwrap();
        let mut result = Vec::new();
        for p in 0..2 {
            let out = job
                .reduce_partition(vec![a.partials[p].clone(), b.partials[p].clone()])
                .unwrap();
            result.extend(
                String::from_utf8(out.lines)
                    .unwrap()
                    .lines()
                    .map(str::to_string),
            );
        }
        result.sort();
        assert_eq!(result, vec!["a\t3", "b\t2", "c\t1"]);
        let env = build(&serde_json::json!({"mapper": "env"}), &s).unwrap();
        let out = env.map_chunk(&ctx(1), b"").unwrap();
        let lines = env.reduce_partition(out.partials).unwrap().lines;
        assert_eq!(
            String::from_utf8(lines).unwrap(),
            format!("PATH={EXEC_PATH}\n")
        );
    }

    #[test]
    fn failures_carry_stderr_timeouts_and_caps() {
        let program = |script: &str| Program {
            name: "p".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
        };
        let err = run_program(
            "mapper",
            &program("echo boom >&2; exit 3"),
            b"x",
            Duration::from_secs(5),
            100,
        )
        .unwrap_err();
        assert!(
            err.message.contains("boom") && err.message.contains("3"),
            "{}",
            err.message
        );
        let started = Instant::now();
        let err = run_program(
            "mapper",
            &program("sleep 30"),
            b"",
            Duration::from_millis(200),
            100,
        )
        .unwrap_err();
        assert!(err.message.contains("did not finish"), "{}", err.message);
        assert!(started.elapsed() < Duration::from_secs(10));
        let err = run_program(
            "mapper",
            &program("yes"),
            b"",
            Duration::from_secs(10),
            1000,
        )
        .unwrap_err();
        assert!(
            err.message.contains("more than 1000 bytes"),
            "{}",
            err.message
        );
        let err = run_program(
            "mapper",
            &Program {
                name: "n".into(),
                program: "/no/such".into(),
                args: vec![],
            },
            b"",
            Duration::from_secs(1),
            10,
        )
        .unwrap_err();
        assert!(err.message.contains("could not start"), "{}", err.message);
        let started = Instant::now();
        let err = run_program(
            "mapper",
            &program("sleep 0.2 & cat >/dev/null; echo k 1"),
            b"x",
            Duration::from_secs(5),
            100,
        );
        assert_eq!(
            err.unwrap(),
            b"k 1\n",
            "a short-lived background child is waited for"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            run_program(
                "mapper",
                &program("head -c 3"),
                &vec![b'z'; 1 << 20],
                Duration::from_secs(5),
                10
            )
            .unwrap(),
            b"zzz"
        );
    }

    /// A mapper that leaves a `setsid` grandchild holding its standard output (so closing
    /// the process group is not enough) is cut off at the time limit, and the grandchild
    /// is killed.
    #[test]
    fn a_detached_grandchild_holding_stdout_cannot_outlive_the_timeout() {
        let program = Program {
            name: "escape".into(),
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "setsid sleep 120 & echo \"grandchild $!\" >&2; cat >/dev/null; echo k 1".into(),
            ],
        };
        let started = Instant::now();
        let err =
            run_program("mapper", &program, b"a\n", Duration::from_secs(1), 1000).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "waited {:?}",
            started.elapsed()
        );
        assert!(
            err.message.contains("kept its output open"),
            "{}",
            err.message
        );
        let grandchild: u32 = err
            .message
            .split("grandchild ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no grandchild pid in {}", err.message));
        // Killed: gone, or a zombie waiting for its new parent to reap it.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .ok()
                .and_then(|stat| stat.rsplit(") ").next().map(|s| s.chars().next()));
            match state {
                None | Some(Some('Z')) | Some(Some('X')) => break,
                _ if Instant::now() > deadline => panic!("grandchild {grandchild} still alive"),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}
