//! convoy's configuration: the TOML schema (`[node]`, `[[listeners]]`,
//! `[pools.NAME]` with `[[pools.NAME.servers]]`), its defaults, and
//! validation. Every error names the file, line, column, key and reason;
//! unknown keys are errors. `Config::to_toml` prints the normalized config
//! (every default filled in), which is what `convoy check` shows.
#![forbid(unsafe_code)]

pub mod compiled;
mod duration;
mod error;
mod locate;
pub mod rewrite;
mod types;
mod validate;

pub use duration::Dur;
pub use error::{ConfigError, ConfigErrors};
pub use types::*;

/// At most this many errors are reported from one file.
const MAX_ERRORS: usize = 50;

/// The reason of a TOML error (some syntax errors come without one).
fn reason_of(e: &toml::de::Error, text: &str, at: usize) -> String {
    let r = e.message().trim().to_string();
    if !r.is_empty() {
        return r;
    }
    match text.get(at..).and_then(|t| t.chars().next()) {
        Some(c) => format!("invalid TOML: unexpected character {c:?}"),
        None => "invalid TOML: unexpected end of file".to_string(),
    }
}

/// Blanks (with spaces, keeping every offset) the whole lines that
/// `span` touches; false if nothing was left to blank.
fn blank_lines(text: &mut String, span: &std::ops::Range<usize>) -> bool {
    let start = text[..span.start.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let end_at = span.end.max(span.start + 1).min(text.len());
    let end = text[end_at..].find('\n').map_or(text.len(), |i| end_at + i);
    if text[start..end].trim().is_empty() {
        return false;
    }
    let blank: String = text[start..end]
        .bytes()
        .map(|b| if b == b'\n' { '\n' } else { ' ' })
        .collect();
    text.replace_range(start..end, &blank);
    true
}

/// Every syntax error of `text`: after each, its line is blanked and the
/// rest is read again (a later error may follow from an earlier one).
fn syntax_errors(file: &str, text: &str) -> Vec<ConfigError> {
    let mut work = text.to_string();
    let mut out: Vec<ConfigError> = Vec::new();
    while out.len() < MAX_ERRORS {
        let Err(e) = work.parse::<toml::Table>() else {
            break;
        };
        let span = e.span().unwrap_or(0..0);
        let err = ConfigError::at(
            file,
            text,
            span.start,
            String::new(),
            reason_of(&e, &work, span.start),
        );
        if out.iter().any(|o| o.line == err.line) {
            break;
        }
        out.push(err);
        if !blank_lines(&mut work, &span) {
            break;
        }
    }
    out
}

impl Config {
    /// Parses and validates `text`; `file` is used in error messages only.
    /// Every error it can find is reported in one go: all syntax errors;
    /// else all errors of types and unknown keys (each bad line set aside
    /// in turn); else all errors of meaning (validation).
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigErrors> {
        let syntax = syntax_errors(file, text);
        if !syntax.is_empty() {
            return Err(ConfigErrors(syntax));
        }
        let mut work = text.to_string();
        let mut errors: Vec<ConfigError> = Vec::new();
        let mut set_aside: Vec<String> = Vec::new();
        let parsed = loop {
            match toml::from_str::<Config>(&work) {
                Ok(c) => break Some(c),
                Err(e) => {
                    let span = e.span().unwrap_or(0..0);
                    let key = locate::path_for_span(&work, &span);
                    let reason = reason_of(&e, &work, span.start);
                    let missing = reason.starts_with("missing field");
                    // A field missing only because its bad line was set
                    // aside is not another error.
                    let artifact =
                        missing && set_aside.iter().any(|k| reason.contains(&format!("`{k}`")));
                    if !artifact {
                        errors.push(ConfigError::at(file, text, span.start, key.clone(), reason));
                    }
                    // A missing field points at its table: nothing to set
                    // aside there.
                    if missing || errors.len() >= MAX_ERRORS || !blank_lines(&mut work, &span) {
                        break None;
                    }
                    let last = key.rsplit('.').next().unwrap_or("");
                    set_aside.push(last.split('[').next().unwrap_or("").to_string());
                }
            }
        };
        let mut cfg = match parsed {
            Some(c) if errors.is_empty() => c,
            Some(mut c) => {
                // The rest read without the bad lines: its errors of
                // meaning too, except about the keys set aside.
                c.normalize();
                for (path, reason) in validate::validate(&c) {
                    if set_aside
                        .iter()
                        .any(|k| !k.is_empty() && path.contains(k.as_str()))
                    {
                        continue;
                    }
                    let off = locate::span_for_path(text, &path);
                    errors.push(ConfigError::at(file, text, off, path, reason));
                }
                errors.sort_by_key(|e| (e.line, e.column));
                return Err(ConfigErrors(errors));
            }
            None => return Err(ConfigErrors(errors)),
        };
        cfg.normalize();
        let problems = validate::validate(&cfg);
        if problems.is_empty() {
            return Ok(cfg);
        }
        Err(ConfigErrors(
            problems
                .into_iter()
                .map(|(path, reason)| {
                    let off = locate::span_for_path(text, &path);
                    ConfigError::at(file, text, off, path, reason)
                })
                .collect(),
        ))
    }

    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&name, &text).map(|mut c| {
                // Relative file names in the config are relative to its
                // directory.
                if let Some(dir) = path.parent() {
                    c.resolve_paths(dir);
                }
                c
            }),
            Err(e) => Err(ConfigErrors(vec![ConfigError {
                file: name,
                line: 0,
                column: 0,
                key: String::new(),
                reason: format!("cannot read file: {e}"),
            }])),
        }
    }

    /// Makes relative file names absolute against `dir`.
    pub fn resolve_paths(&mut self, dir: &std::path::Path) {
        let fix = |p: &mut std::path::PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        for l in &mut self.listeners {
            if let Some(t) = &mut l.tls {
                for c in &mut t.certificates {
                    fix(&mut c.cert);
                    fix(&mut c.key);
                }
                if let Some(ca) = &mut t.client_ca {
                    fix(ca);
                }
            }
        }
        for p in self.pools.values_mut() {
            if let Some(t) = &mut p.tls {
                fix(&mut t.ca);
            }
        }
        if let Some(f) = &mut self.admin.token_file {
            fix(f);
        }
        if let Some(t) = &mut self.admin.tls {
            for c in &mut t.certificates {
                fix(&mut c.cert);
                fix(&mut c.key);
            }
            if let Some(ca) = &mut t.client_ca {
                fix(ca);
            }
        }
        if let Some(f) = self.cluster.as_mut().and_then(|c| c.key_file.as_mut()) {
            fix(f);
        }
        if let Some(f) = &mut self.node.upgrade_socket {
            fix(f);
        }
        if let Some(f) = &mut self.node.access_log {
            if f != "stderr" && f != "stdout" && std::path::Path::new(f.as_str()).is_relative() {
                *f = dir.join(&*f).to_string_lossy().into_owned();
            }
        }
    }

    /// The normalized config as TOML, with every default written out.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }

    /// The pool a listener uses (validation guarantees it exists).
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name)
    }
}

/// Parses "ADDR" or "ADDR/PREFIX" into a network address and prefix
/// length (host bits cleared).
pub fn parse_net(s: &str) -> Option<(std::net::IpAddr, u8)> {
    use std::net::IpAddr;
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = a.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = match p {
        Some(p) => p.trim().parse().ok().filter(|n| *n <= max)?,
        None => max,
    };
    Some((mask(ip, len), len))
}

/// `ip` with all but its first `len` bits cleared.
pub fn mask(ip: std::net::IpAddr, len: u8) -> std::net::IpAddr {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4((u32::from(v) & m).into())
        }
        IpAddr::V6(v) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6((u128::from(v) & m).into())
        }
    }
}

#[cfg(test)]
mod tests;
