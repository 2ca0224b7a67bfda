//! `ManifestError`: a manifest problem that points at the YAML, rendered like
//! rustc: `file:line:col`, the source line, a caret, and a hint.

use std::fmt;
use std::path::PathBuf;

use super::locate::Span;

#[derive(Debug, Clone)]
pub struct ManifestError {
    pub file: PathBuf,
    pub message: String,
    pub span: Option<Span>,
    /// The source line the span points into.
    pub source_line: Option<String>,
    pub hint: Option<String>,
    /// The stage the problem is in, when there is one.
    pub stage: Option<String>,
}

impl ManifestError {
    pub fn new(file: impl Into<PathBuf>, message: impl Into<String>) -> ManifestError {
        ManifestError {
            file: file.into(),
            message: message.into(),
            span: None,
            source_line: None,
            hint: None,
            stage: None,
        }
    }

    pub fn at(mut self, src: &str, span: Option<Span>) -> ManifestError {
        if let Some(mut span) = span {
            let line = src.lines().nth(span.line.saturating_sub(1)).unwrap_or("");
            if span.len <= 1 {
                // serde_yaml points at the first character: underline the whole word.
                let word = line
                    .chars()
                    .skip(span.col - 1)
                    .take_while(|c| c.is_alphanumeric() || "_-.".contains(*c))
                    .count();
                span.len = word.max(1);
            }
            self.source_line = src
                .lines()
                .nth(span.line.saturating_sub(1))
                .map(str::to_string);
            self.span = Some(span);
        }
        self
    }

    pub fn hint(mut self, hint: Option<String>) -> ManifestError {
        self.hint = hint;
        self
    }

    pub fn stage(mut self, stage: &str) -> ManifestError {
        self.stage = Some(stage.to_string());
        self
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.stage {
            Some(stage) => writeln!(f, "stage `{stage}`: {}", self.message)?,
            None => writeln!(f, "{}", self.message)?,
        }
        match self.span {
            Some(span) => write!(
                f,
                "  --> {}:{}:{}",
                self.file.display(),
                span.line,
                span.col
            )?,
            None => write!(f, "  --> {}", self.file.display())?,
        }
        if let (Some(span), Some(line)) = (self.span, &self.source_line) {
            let no = span.line.to_string();
            let pad = " ".repeat(no.len());
            write!(
                f,
                "\n{pad} |\n{no} | {line}\n{pad} | {}{}",
                " ".repeat(span.col - 1),
                "^".repeat(span.len.max(1))
            )?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  = hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestError {}

/// `did you mean "x"?` for the closest candidate, if any is close enough.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}
