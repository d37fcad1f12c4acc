//! The server's log: etcd's `--log-level`, `--log-format` and `--log-outputs`.
//!
//! - `--log-format json` (the default, as etcd's) writes one JSON object per line; `text` (or
//!   etcd's `console`) writes human-readable lines, coloured only when every output is a terminal.
//! - `--log-outputs` is a comma-separated list of `stderr` (also `default`), `stdout`, or file paths
//!   (appended to, created if missing); every line goes to each of them.
//! - `MINI_ETCD_LOG`, when set, is a full filter (`mini_etcd=debug,h2=info`) that overrides the level.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;

use crate::error::{Error, Result};

/// Where log lines go.
#[derive(Clone, Debug)]
enum Output {
    Stderr,
    Stdout,
    File(Arc<File>),
}

/// Every output, as one writer: each line is written to all of them, one line at a time, so that
/// every output holds the same lines in the same order.
#[derive(Clone, Debug)]
pub struct Outputs(Vec<Output>, Arc<std::sync::Mutex<()>>);

impl Outputs {
    /// Parses `--log-outputs`, opening the files it names.
    pub fn parse(spec: &str) -> Result<Outputs> {
        let mut outputs = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            outputs.push(match part {
                "stderr" | "default" => Output::Stderr,
                "stdout" => Output::Stdout,
                path => Output::File(Arc::new(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| {
                            Error::InvalidArgument(format!(
                                "--log-outputs: cannot open {path}: {e}"
                            ))
                        })?,
                )),
            });
        }
        if outputs.is_empty() {
            return Err(Error::InvalidArgument(
                "--log-outputs: no output given (stderr, stdout or a file path)".into(),
            ));
        }
        Ok(Outputs(outputs, Arc::default()))
    }

    /// True if every output is a terminal: only then are lines coloured.
    fn all_terminals(&self) -> bool {
        self.0.iter().all(|o| match o {
            Output::Stderr => std::io::stderr().is_terminal(),
            Output::Stdout => std::io::stdout().is_terminal(),
            Output::File(_) => false,
        })
    }
}

/// One line being written to every output.
pub struct Tee<'a>(&'a Outputs);

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // A failing output (a full disk under a log file) must not stop the others.
        let mut first_error = None;
        let _one_line_at_a_time = self.0 .1.lock().unwrap_or_else(|e| e.into_inner());
        for o in &self.0 .0 {
            let r = match o {
                Output::Stderr => std::io::stderr().lock().write_all(buf),
                Output::Stdout => std::io::stdout().lock().write_all(buf),
                Output::File(f) => (&**f).write_all(buf),
            };
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Outputs {
    type Writer = Tee<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Tee(self)
    }
}

/// The log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
}

impl Format {
    /// Parses `--log-format`.
    pub fn parse(s: &str) -> Result<Format> {
        match s {
            "json" => Ok(Format::Json),
            "text" | "console" => Ok(Format::Text),
            other => Err(Error::InvalidArgument(format!(
                "--log-format: {other:?} is not json or text"
            ))),
        }
    }
}

/// Installs the process's logger. Call once, before anything logs.
pub fn init(level: &str, format: Format, outputs: Outputs) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MINI_ETCD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let ansi = format == Format::Text && outputs.all_terminals();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(outputs);
    match format {
        // Fields at the top level of each object, as etcd's (zap) lines have them.
        Format::Json => builder.json().flatten_event(true).init(),
        Format::Text => builder.init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_parse_streams_and_files_and_refuse_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("log");
        let o = Outputs::parse(&format!("default, stdout,{}", file.display())).expect("parse");
        assert!(matches!(
            o.0[..],
            [Output::Stderr, Output::Stdout, Output::File(_)]
        ));
        assert!(!o.all_terminals(), "a file is never a terminal");
        let mut tee = Outputs(vec![o.0[2].clone()], Arc::default());
        tee.make_writer().write_all(b"line\n").expect("write");
        tee = Outputs::parse(&file.display().to_string()).expect("reopen");
        tee.make_writer().write_all(b"more\n").expect("append");
        assert_eq!(
            std::fs::read_to_string(&file).expect("read"),
            "line\nmore\n"
        );
        assert!(Outputs::parse(" , ").is_err());
        assert!(Outputs::parse(&dir.path().join("no/such/dir").display().to_string()).is_err());
    }

    #[test]
    fn formats_are_etcds_names() {
        assert_eq!(Format::parse("json").ok(), Some(Format::Json));
        assert_eq!(Format::parse("text").ok(), Some(Format::Text));
        assert_eq!(Format::parse("console").ok(), Some(Format::Text));
        assert!(Format::parse("xml").is_err());
    }
}
