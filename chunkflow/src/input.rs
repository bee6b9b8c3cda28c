//! Turning the `INPUT...` arguments into an ordered list of sources, and opening them.
//!
//! It exists so that every input problem (a missing path, an unreadable file, a FIFO or a
//! device, `-` given twice) is found and reported, naming the input, before anything is
//! published: [`expand_inputs`] opens every file once. Directories expand to every regular
//! file below them, recursively, sorted by path, so the order of sources (and a job's
//! result) does not depend on the file system's listing order.
//!
//! This module must not read records or cut chunks (that is [`crate::chunker`]'s work) and
//! must not decide anything about a source's content; it only says where bytes come from.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Where one input comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    /// A regular file; `display` is the path as the user gave it (joined below a directory).
    File { path: PathBuf, display: String },
    /// Standard input (`-`).
    Stdin,
}

impl InputSource {
    /// The name used in messages, chunk metadata and job output.
    pub fn display(&self) -> &str {
        match self {
            InputSource::File { display, .. } => display,
            InputSource::Stdin => "-",
        }
    }

    /// Opens the source for reading.
    pub fn open(&self) -> Result<Box<dyn Read + Send>, InputError> {
        match self {
            InputSource::File { path, display } => File::open(path)
                .map(|f| Box::new(f) as Box<dyn Read + Send>)
                .map_err(|error| InputError::Unreadable {
                    path: display.clone(),
                    error,
                }),
            InputSource::Stdin => Ok(Box::new(io::stdin())),
        }
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
