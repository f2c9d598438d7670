//! Incremental parsing: [`ParseCache`] keeps what each YAML document said, so that a change re-reads only the
//! documents it touched.
//!
//! A file is split, without parsing it, before every line that is a YAML document marker at column 0 (`---`
//! then the end of the line or a blank), the marker staying with the document it starts. Each piece (a chunk:
//! one document, or a few when a `...` end marker separates them) is read on its own by
//! [`parse::read_chunk`] and kept under its file and text: a cheap hash, then a full comparison of the text.
//! What needs every object (duplicate names, VIPs and pod IPs, the count of kinds skipped) is redone over all
//! chunks in input order at every parse, so the result and the error are those of [`super::Mesh::from_documents`]:
//! documents are numbered per file as there, and when a chunk is not valid YAML on its own (the error may carry
//! line numbers), its file is read whole, as the uncached parse reads it. A file with a directive line (`%YAML`,
//! `%TAG`) is never split.
//!
//! Logs written while reading one object (an EndpointSlice without its Service label, a Gateway of another class)
//! come when the document is read, so once per change of it rather than at every parse.
//!
//! After each parse the cache holds only the chunks of that parse's input (the chunks not reached because of an
//! earlier error included), so memory follows the size of the config, not its history.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::parse::{self, Chunk, Parsed, Parser};
use super::ConfigError;

/// Per-document parse results, reused across parses of a changing config. See the module doc.
///
/// Used through [`super::Mesh::from_documents_cached`] and [`super::Mesh::load_dir_cached`]; one cache per
/// source of documents (a watched directory, an API-server watch).
#[derive(Default)]
pub struct ParseCache {
    /// By hash of (file, text); the entries compare both in full.
    entries: HashMap<u64, Vec<Entry>>,
    /// Bumped per parse; entries not used by the latest one are dropped.
    generation: u64,
    stats: ParseStats,
}

/// A chunk of the input: its text, hash, and what the cache holds for it.
type Planned<'a> = (&'a str, u64, Option<Arc<Chunk>>);

struct Entry {
    file: PathBuf,
    text: Box<str>,
    chunk: Arc<Chunk>,
    used: u64,
}

/// What a [`ParseCache`] did, since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseStats {
    /// Chunks (usually one document each) read with YAML: not in the cache.
    pub parsed: u64,
    /// Chunks taken from the cache.
    pub reused: u64,
    /// Files read whole because a chunk of theirs was not YAML on its own.
    pub whole_files: u64,
    /// Chunks held now.
    pub entries: usize,
}

impl ParseCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counters, and the number of chunks held.
    pub fn stats(&self) -> ParseStats {
        ParseStats {
            entries: self.entries.values().map(Vec::len).sum(),
            ..self.stats
        }
    }

    /// [`parse::parse`], reusing what earlier calls read.
    pub(super) fn parse(&mut self, docs: &[(PathBuf, String)]) -> Result<Parsed, ConfigError> {
        self.generation += 1;
        // Every chunk of the input, found in the cache (and so kept) or not.
        let mut plans = Vec::with_capacity(docs.len());
        for (file, text) in docs {
            let plan: Vec<_> = split(text)
                .into_iter()
                .map(|chunk| {
                    super::background::checkpoint();
                    let hash = key(file, chunk);
                    (chunk, hash, self.find(file, chunk, hash))
                })
                .collect();
            plans.push(plan);
        }
        let result = self.merge(docs, plans);
        let generation = self.generation;
        self.entries.retain(|_, v| {
            v.retain(|e| e.used == generation);
            !v.is_empty()
        });
        result
    }

    fn merge(
        &mut self,
        docs: &[(PathBuf, String)],
        plans: Vec<Vec<Planned<'_>>>,
    ) -> Result<Parsed, ConfigError> {
        let mut p = Parser::default();
        for ((file, text), plan) in docs.iter().zip(plans) {
            let split = plan.len() > 1;
            let mut chunks = Vec::with_capacity(plan.len());
            for (chunk, hash, cached) in plan {
                super::background::checkpoint();
                let chunk = match cached {
                    Some(c) => c,
                    None => self.get(file, chunk, hash),
                };
                let failed = chunk.failed;
                if split && chunk.yaml_error {
                    // Its error may name lines of the chunk: read the file whole, as the uncached parse does.
                    self.stats.whole_files += 1;
                    chunks = vec![self.get(file, text, key(file, text))];
                    break;
                }
                chunks.push(chunk);
                if failed {
                    break; // the error ends the parse: later chunks are not needed
                }
            }
            let mut base = 0;
            for chunk in &chunks {
                super::background::checkpoint();
                p.chunk(file, base, chunk)?;
                base += chunk.docs;
            }
        }
        Ok(p.out)
    }

    /// The cached chunk (marked used by this parse), if any.
    fn find(&mut self, file: &Path, text: &str, hash: u64) -> Option<Arc<Chunk>> {
        let entry = self
            .entries
            .get_mut(&hash)?
            .iter_mut()
            .find(|e| *e.text == *text && e.file == file)?;
        entry.used = self.generation;
        self.stats.reused += 1;
        Some(entry.chunk.clone())
    }

    /// The cached chunk, or read and cached now.
    fn get(&mut self, file: &Path, text: &str, hash: u64) -> Arc<Chunk> {
        if let Some(c) = self.find(file, text, hash) {
            return c;
        }
        self.stats.parsed += 1;
        let chunk = Arc::new(parse::read_chunk(file, text));
        self.entries.entry(hash).or_default().push(Entry {
            file: file.to_path_buf(),
            text: text.into(),
            chunk: chunk.clone(),
            used: self.generation,
        });
        chunk
    }
}

impl std::fmt::Debug for ParseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParseCache")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn key(file: &Path, text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    file.hash(&mut h);
    text.hash(&mut h);
    h.finish()
}

/// Splits `text` before each document marker line (see the module doc). Text before the first marker that holds
/// no document (blank and comment lines, `...`) stays with the first one, so that every chunk holds at least
/// one document (YAML reads a stream without any as one empty document). A file with a directive, or with no
/// marker after its first line, is one chunk.
pub(super) fn split(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut starts = Vec::new();
    let mut line = 0;
    while line < bytes.len() {
        let rest = &bytes[line..];
        if rest[0] == b'%' {
            return vec![text];
        }
        if marker(rest, b'-') && line > 0 {
            starts.push(line);
            super::background::checkpoint();
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => line += i + 1,
            None => break,
        }
    }
    if let Some(&first) = starts.first() {
        if !has_document(&text[..first]) {
            starts.remove(0);
        }
    }
    let mut chunks = Vec::with_capacity(starts.len() + 1);
    let mut from = 0;
    for start in starts {
        chunks.push(&text[from..start]);
        from = start;
    }
    chunks.push(&text[from..]);
    chunks
}

/// `---` (or `...`) then the end of the line or a blank.
fn marker(line: &[u8], c: u8) -> bool {
    line.len() >= 3
        && line[..3].iter().all(|&b| b == c)
        && matches!(line.get(3), None | Some(b' ' | b'\t' | b'\r' | b'\n'))
}

/// Whether some line holds more than blanks, a comment or a `...` end marker.
fn has_document(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start_matches(['\u{feff}', ' ', '\t', '\r']);
        !(l.is_empty() || l.starts_with('#') || marker(l.as_bytes(), b'.'))
    })
}
