//! Turning the `INPUT...` arguments into an ordered list of sources, and opening them.
//!
//! It exists so that every input problem (a missing path, an unreadable file, a FIFO or a
//! device, `-` given twice) is found and reported, naming the input, before anything is
//! published: [`expand_inputs`] opens every file once. Directories expand to every regular
//! file below them, recursively, sorted by path, so the order of sources (and a job's
//! result) does not depend on the file system's listing order.
//!
//! It also makes sure a job is cut from the bytes it says it was: each file's size and
//! modification time are recorded when it is expanded ([`InputSource::fingerprint`], stored
//! in the job's spec), and [`OpenInput::finish`] checks, once a file was read to its end,
//! that the bytes read match the recorded size and that neither the open file nor the path
//! changed, was replaced or was deleted meanwhile. Standard input has no such check: its
//! bytes are whatever was read.
//!
//! This module must not read records or cut chunks (that is [`crate::chunker`]'s work) and
//! must not decide anything about a source's content; it only says where bytes come from.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::job::InputFingerprint;

/// Where one input comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    /// A regular file; `display` is the path as the user gave it (joined below a directory);
    /// `stamp` is what the file was when it was expanded.
    File {
        path: PathBuf,
        display: String,
        stamp: FileStamp,
    },
    /// Standard input (`-`).
    Stdin,
}

/// What a file was at one moment: enough to tell that it changed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub size: u64,
    /// Nanoseconds since the Unix epoch; `None` where the file system keeps no such time.
    pub mtime_ns: Option<u64>,
    /// Device and inode (Unix): tells a file replaced under the same path. Never stored in a
    /// spec, since a copy of the same bytes elsewhere may resume a job.
    pub identity: Option<(u64, u64)>,
}

impl FileStamp {
    pub fn of(meta: &Metadata) -> FileStamp {
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|since| u64::try_from(since.as_nanos()).ok());
        #[cfg(unix)]
        let identity = {
            use std::os::unix::fs::MetadataExt;
            Some((meta.dev(), meta.ino()))
        };
        #[cfg(not(unix))]
        let identity = None;
        FileStamp {
            size: meta.len(),
            mtime_ns,
            identity,
        }
    }
}

/// How a file changed while it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputChange {
    /// Its size is not what was recorded (appended to, or truncated).
    Size { recorded: u64, now: u64 },
    /// Another number of bytes was read than was recorded.
    BytesRead { recorded: u64, read: u64 },
    /// Rewritten in place: same size, another modification time.
    Modified,
    /// Another file now has its path (renamed over, or deleted and created again).
    Replaced,
}

impl std::fmt::Display for InputChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputChange::Size { recorded, now } => {
                write!(f, "its size went from {recorded} to {now} bytes")
            }
            InputChange::BytesRead { recorded, read } => {
                write!(f, "{read} bytes were read but it had {recorded}")
            }
            InputChange::Modified => f.write_str("its modification time changed"),
            InputChange::Replaced => f.write_str("another file replaced it"),
        }
    }
}

/// How `now` differs from `recorded`, the most telling difference first; `None` if it does
/// not.
pub fn stamp_change(recorded: &FileStamp, now: &FileStamp) -> Option<InputChange> {
    if recorded.identity.is_some() && now.identity.is_some() && recorded.identity != now.identity {
        Some(InputChange::Replaced)
    } else if recorded.size != now.size {
        Some(InputChange::Size {
            recorded: recorded.size,
            now: now.size,
        })
    } else if recorded.mtime_ns != now.mtime_ns {
        Some(InputChange::Modified)
    } else {
        None
    }
}

impl InputSource {
    /// The name used in messages, chunk metadata and job output.
    pub fn display(&self) -> &str {
        match self {
            InputSource::File { display, .. } => display,
            InputSource::Stdin => "-",
        }
    }

    /// What a resume must find again: path, size and modification time (a name only for
    /// standard input).
    pub fn fingerprint(&self) -> InputFingerprint {
        match self {
            InputSource::File { display, stamp, .. } => InputFingerprint {
                path: display.clone(),
                size: Some(stamp.size),
                mtime_ns: stamp.mtime_ns,
            },
            InputSource::Stdin => InputFingerprint::stdin(),
        }
    }

    /// Opens the source for reading, counting the bytes read so that
    /// [`OpenInput::finish`] can tell whether the file changed while it was read. A file
    /// gone since it was expanded is [`InputError::DeletedBeforeReading`].
    pub fn open_checked(&self) -> Result<OpenInput, InputError> {
        let reader = match self {
            InputSource::File { path, display, .. } => match File::open(path) {
                Ok(file) => Reader::File(file),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    return Err(InputError::DeletedBeforeReading {
                        path: display.clone(),
                    })
                }
                Err(error) => {
                    return Err(InputError::Unreadable {
                        path: display.clone(),
                        error,
                    })
                }
            },
            InputSource::Stdin => Reader::Stdin(io::stdin()),
        };
        Ok(OpenInput {
            source: self.clone(),
            reader,
            bytes_read: 0,
        })
    }

    /// Opens the source for reading.
    pub fn open(&self) -> Result<Box<dyn Read + Send>, InputError> {
        match self {
            InputSource::File { path, display, .. } => File::open(path)
                .map(|f| Box::new(f) as Box<dyn Read + Send>)
                .map_err(|error| InputError::Unreadable {
                    path: display.clone(),
                    error,
                }),
            InputSource::Stdin => Ok(Box::new(io::stdin())),
        }
    }
}

enum Reader {
    File(File),
    Stdin(io::Stdin),
}

/// A source open for reading ([`InputSource::open_checked`]); it counts the bytes read.
pub struct OpenInput {
    source: InputSource,
    reader: Reader,
    bytes_read: u64,
}

impl Read for OpenInput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.reader {
            Reader::File(file) => file.read(buf)?,
            Reader::Stdin(stdin) => stdin.read(buf)?,
        };
        self.bytes_read += n as u64;
        Ok(n)
    }
}

impl OpenInput {
    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Called once the source was read to its end: checks that a file is still what it was
    /// when it was expanded — the open file and its path alike, and the bytes read against
    /// its recorded size — so an input appended to, truncated, rewritten, replaced or
    /// deleted while it was read is reported, naming it. Returns the bytes read.
    pub fn finish(self) -> Result<u64, InputError> {
        let (
            Reader::File(file),
            InputSource::File {
                path,
                display,
                stamp,
            },
        ) = (&self.reader, &self.source)
        else {
            return Ok(self.bytes_read);
        };
        let changed = |change| InputError::Changed {
            path: display.clone(),
            change,
        };
        let unreadable = |error| InputError::Unreadable {
            path: display.clone(),
            error,
        };
        let open_now = FileStamp::of(&file.metadata().map_err(unreadable)?);
        if let Some(change) = stamp_change(stamp, &open_now) {
            return Err(changed(change));
        }
        let path_now = match std::fs::metadata(path) {
            Ok(meta) => FileStamp::of(&meta),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(InputError::DeletedWhileReading {
                    path: display.clone(),
                })
            }
            Err(error) => return Err(unreadable(error)),
        };
        if let Some(change) = stamp_change(stamp, &path_now) {
            return Err(changed(change));
        }
        if self.bytes_read != stamp.size {
            return Err(changed(InputChange::BytesRead {
                recorded: stamp.size,
                read: self.bytes_read,
            }));
        }
        Ok(self.bytes_read)
    }
}

/// Why an input could not be used.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("input `{path}` does not exist")]
    Missing { path: String },
    #[error("input `{path}` cannot be read: {error}")]
    Unreadable { path: String, error: io::Error },
    #[error("input `{path}` is not a regular file or directory (a FIFO, socket or device); give a file, a directory or `-` for standard input")]
    NotRegular { path: String },
    #[error("standard input (`-`) is given more than once")]
    StdinTwice,
    #[error("no input given: name files, directories, or `-` for standard input")]
    Empty,
    #[error("input `{path}` was deleted before it was read")]
    DeletedBeforeReading { path: String },
    #[error("input `{path}` was deleted while being read")]
    DeletedWhileReading { path: String },
    #[error("input `{path}` changed during the submit ({change}); an input must not change until its submit ends")]
    Changed { path: String, change: InputChange },
}

/// Expands `INPUT...` into sources, in order: files as given; directories as every regular
/// file below them, recursively, sorted by path; `-` as standard input. Every file is opened
/// once here so that a missing or unreadable input is reported before anything is published.
pub fn expand_inputs(inputs: &[String]) -> Result<Vec<InputSource>, InputError> {
    if inputs.is_empty() {
        return Err(InputError::Empty);
    }
    let mut sources = Vec::new();
    let mut saw_stdin = false;
    for input in inputs {
        if input == "-" {
            if saw_stdin {
                return Err(InputError::StdinTwice);
            }
            saw_stdin = true;
            sources.push(InputSource::Stdin);
            continue;
        }
        let path = PathBuf::from(input);
        let meta = std::fs::metadata(&path).map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => InputError::Missing {
                path: input.clone(),
            },
            _ => InputError::Unreadable {
                path: input.clone(),
                error,
            },
        })?;
        if meta.is_dir() {
            walk_directory(&path, input, &mut sources)?;
        } else if meta.is_file() {
            let source = InputSource::File {
                path,
                display: input.clone(),
                stamp: FileStamp::of(&meta),
            };
            source.open()?;
            sources.push(source);
        } else {
            return Err(InputError::NotRegular {
                path: input.clone(),
            });
        }
    }
    Ok(sources)
}

fn walk_directory(
    dir: &Path,
    display: &str,
    sources: &mut Vec<InputSource>,
) -> Result<(), InputError> {
    let unreadable = |error| InputError::Unreadable {
        path: display.to_string(),
        error,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreadable)?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let name = entry.file_name();
        let child_display = format!(
            "{}/{}",
            display.trim_end_matches('/'),
            name.to_string_lossy()
        );
        let child = entry.path();
        // symlink_metadata: a symlinked directory is not followed (no cycles); a symlinked
        // file is read through the link.
        let link_meta =
            std::fs::symlink_metadata(&child).map_err(|error| InputError::Unreadable {
                path: child_display.clone(),
                error,
            })?;
        if link_meta.is_dir() {
            walk_directory(&child, &child_display, sources)?;
            continue;
        }
        let meta = match std::fs::metadata(&child) {
            Ok(meta) => meta,
            Err(_) if link_meta.is_symlink() => {
                tracing::warn!(path = %child_display, "skipping dangling symlink");
                continue;
            }
            Err(error) => {
                return Err(InputError::Unreadable {
                    path: child_display,
                    error,
                })
            }
        };
        if meta.is_file() {
            let source = InputSource::File {
                path: child,
                display: child_display,
                stamp: FileStamp::of(&meta),
            };
            source.open()?;
            sources.push(source);
        } else {
            tracing::warn!(path = %child_display, "skipping entry that is not a regular file");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_reports_missing_and_sorts_directories() {
        let dir = std::env::temp_dir().join(format!("chunkflow-expand-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("b")).unwrap();
        std::fs::write(dir.join("b/z.txt"), "z").unwrap();
        std::fs::write(dir.join("a.txt"), "a").unwrap();
        std::fs::write(dir.join("c.txt"), "c").unwrap();
        let root = dir.to_string_lossy().to_string();
        let got = expand_inputs(std::slice::from_ref(&root)).unwrap();
        let names: Vec<&str> = got.iter().map(|s| s.display()).collect();
        assert_eq!(
            names,
            vec![
                format!("{root}/a.txt"),
                format!("{root}/b/z.txt"),
                format!("{root}/c.txt")
            ]
        );
        let missing = format!("{root}/nope");
        match expand_inputs(std::slice::from_ref(&missing)) {
            Err(InputError::Missing { path }) => assert_eq!(path, missing),
            other => panic!("expected Missing, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn stamp(size: u64, mtime_ns: u64, inode: u64) -> FileStamp {
        FileStamp {
            size,
            mtime_ns: Some(mtime_ns),
            identity: Some((1, inode)),
        }
    }

    #[test]
    fn stamp_changes_name_the_most_telling_difference() {
        let recorded = stamp(10, 5, 7);
        assert_eq!(stamp_change(&recorded, &recorded), None);
        assert_eq!(
            stamp_change(&recorded, &stamp(12, 6, 7)),
            Some(InputChange::Size {
                recorded: 10,
                now: 12
            })
        );
        assert_eq!(
            stamp_change(&recorded, &stamp(10, 6, 7)),
            Some(InputChange::Modified)
        );
        assert_eq!(
            stamp_change(&recorded, &stamp(10, 5, 8)),
            Some(InputChange::Replaced)
        );
        let no_identity = FileStamp {
            identity: None,
            ..recorded
        };
        assert_eq!(stamp_change(&recorded, &no_identity), None);
    }

    /// A scratch directory removed at the end of the test.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("chunkflow-input-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        /// Writes `name` and expands it: its one source.
        fn source(&self, name: &str, contents: &[u8]) -> (PathBuf, InputSource) {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            let mut sources = expand_inputs(&[path.to_string_lossy().into_owned()]).unwrap();
            (path, sources.remove(0))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn read_all(input: &mut OpenInput) -> Vec<u8> {
        let mut data = Vec::new();
        input.read_to_end(&mut data).unwrap();
        data
    }

    #[test]
    fn an_unchanged_file_is_fingerprinted_and_finishes() {
        let scratch = Scratch::new("same");
        let (path, source) = scratch.source("a.txt", b"one\ntwo\n");
        let fingerprint = source.fingerprint();
        assert_eq!(fingerprint.path, path.to_string_lossy());
        assert_eq!(fingerprint.size, Some(8));
        assert!(fingerprint.mtime_ns.is_some());
        let mut input = source.open_checked().unwrap();
        assert_eq!(read_all(&mut input), b"one\ntwo\n");
        assert_eq!(input.finish().unwrap(), 8);
        assert_eq!(InputSource::Stdin.fingerprint(), InputFingerprint::stdin());
    }

    #[test]
    fn a_file_appended_to_or_truncated_while_read_is_named() {
        let scratch = Scratch::new("grow");
        let (path, source) = scratch.source("a.txt", b"one\ntwo\n");
        let mut input = source.open_checked().unwrap();
        let mut first = [0u8; 4];
        input.read_exact(&mut first).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, b"three\n").unwrap();
        read_all(&mut input);
        match input.finish() {
            Err(InputError::Changed {
                path: named,
                change,
            }) => {
                assert_eq!(named, path.to_string_lossy());
                assert_eq!(
                    change,
                    InputChange::Size {
                        recorded: 8,
                        now: 14
                    }
                );
            }
            other => panic!("expected Changed, got {other:?}"),
        }

        let (path, source) = scratch.source("b.txt", b"one\ntwo\n");
        let mut input = source.open_checked().unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4)
            .unwrap();
        assert_eq!(read_all(&mut input), b"one\n");
        let error = input.finish().unwrap_err().to_string();
        assert!(
            error.contains("b.txt") && error.contains("from 8 to 4 bytes"),
            "{error}"
        );
    }

    #[test]
    fn a_file_rewritten_replaced_or_deleted_while_read_is_named() {
        let scratch = Scratch::new("swap");
        // Rewritten in place with the same size: only the modification time tells.
        let (path, source) = scratch.source("a.txt", b"one\ntwo\n");
        let mut input = source.open_checked().unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::io::Write::write_all(&mut &file, b"ONE\n").unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        file.set_modified(later).unwrap();
        read_all(&mut input);
        assert!(matches!(
            input.finish(),
            Err(InputError::Changed {
                change: InputChange::Modified,
                ..
            })
        ));

        // Another file renamed over its path: the open file is intact, the path is not.
        let (path, source) = scratch.source("b.txt", b"one\ntwo\n");
        let mut input = source.open_checked().unwrap();
        let other = scratch.0.join("other.txt");
        std::fs::write(&other, b"uno\ndos\n").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert_eq!(read_all(&mut input), b"one\ntwo\n");
        assert!(matches!(
            input.finish(),
            Err(InputError::Changed {
                change: InputChange::Replaced,
                ..
            })
        ));

        // Deleted while open, and deleted before it was opened.
        let (path, source) = scratch.source("c.txt", b"one\n");
        let mut input = source.open_checked().unwrap();
        std::fs::remove_file(&path).unwrap();
        read_all(&mut input);
        let error = input.finish().unwrap_err().to_string();
        assert!(
            error.contains("c.txt") && error.contains("deleted while being read"),
            "{error}"
        );
        assert!(matches!(
            source.open_checked(),
            Err(InputError::DeletedBeforeReading { .. })
        ));
    }

    #[test]
    fn no_input_and_stdin_twice_are_refused() {
        assert!(matches!(expand_inputs(&[]), Err(InputError::Empty)));
        let twice = ["-".to_string(), "-".to_string()];
        assert!(matches!(expand_inputs(&twice), Err(InputError::StdinTwice)));
        let stdin = expand_inputs(&["-".to_string()]).unwrap();
        assert_eq!(stdin, vec![InputSource::Stdin]);
        assert_eq!(stdin[0].display(), "-");
    }
}
