//! Bearer tokens with scopes (`--tokens-file`): who may do what. The HTTP
//! check is `http::auth`.
//!
//! The file holds one token per line, `NAME SCOPES SHA256`:
//!
//! ```text
//! # name      scopes             SHA-256 of the token, hex
//! loader      write              5f2b…
//! analyst     read               9ac1…
//! ops         read,write,delete,admin  0d3e…
//! ```
//!
//! Only hashes are stored: the tokens themselves (`gifts_` and 43
//! characters, 256 random bits, from `gifts token new`) are shown once. A
//! presented token is hashed and compared with every stored hash in constant
//! time. SIGHUP reloads the file; a file that does not parse is refused
//! (at start: the service does not start; on reload: the old tokens stay).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// The reads: import list, citizens, birthdays, percentiles.
    Read,
    /// POST /imports, PATCH a citizen.
    Write,
    /// DELETE an import.
    Delete,
    /// Operations: /metrics.
    Admin,
}

impl Scope {
    /// Every scope, as written in the tokens file.
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Write, Scope::Delete, Scope::Admin];

    /// The name in the tokens file and the OpenAPI document.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Delete => "delete",
            Scope::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of the tokens file.
#[derive(Clone)]
struct Token {
    name: String,
    scopes: Vec<Scope>,
    hash: [u8; 32],
}

/// The tokens in force; replaced whole on reload.
pub struct Tokens {
    path: PathBuf,
    tokens: RwLock<Arc<Vec<Token>>>,
}

impl Tokens {
    /// Reads the tokens file; every line must parse.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let tokens = parse_file(path)?;
        Ok(Self {
            path: path.to_owned(),
            tokens: RwLock::new(Arc::new(tokens)),
        })
    }

    /// How many tokens are in force.
    pub fn len(&self) -> usize {
        self.tokens.read().expect("tokens lock").len()
    }

    /// Whether no token is in force (then every protected route answers 401).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the file again; on a parse error the old tokens stay.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let tokens = parse_file(&self.path)?;
        let n = tokens.len();
        *self.tokens.write().expect("tokens lock") = Arc::new(tokens);
        Ok(n)
    }

    /// The name and scopes of `presented`, if it is a token in force.
    /// Every stored hash is compared, in constant time.
    pub(crate) fn identify(&self, presented: &str) -> Option<(String, Vec<Scope>)> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let tokens = Arc::clone(&self.tokens.read().expect("tokens lock"));
        let mut found = None;
        for token in tokens.iter() {
            if bool::from(token.hash.ct_eq(&hash)) && found.is_none() {
                found = Some((token.name.clone(), token.scopes.clone()));
            }
        }
        found
    }
}

fn parse_file(path: &Path) -> anyhow::Result<Vec<Token>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the tokens file {}: {e}", path.display()))?;
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{}:{}", path.display(), n + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, scopes, hash] = fields[..] else {
            anyhow::bail!(
                "{}: expected NAME SCOPES SHA256 (see `gifts token new`)",
                at()
            );
        };
        let scopes = scopes
            .split(',')
            .map(|s| {
                Scope::parse(s).ok_or_else(|| {
                    anyhow::anyhow!("{}: unknown scope {s:?} (read, write, delete, admin)", at())
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let hash = decode_hex(hash)
            .ok_or_else(|| anyhow::anyhow!("{}: the hash must be 64 hex digits", at()))?;
        tokens.push(Token {
            name: name.to_owned(),
            scopes,
            hash,
        });
    }
    Ok(tokens)
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// A new token and its line for the tokens file.
pub fn new_token(name: &str, scopes: &[Scope]) -> anyhow::Result<(String, String)> {
    if name.is_empty() || name.contains(char::is_whitespace) || name.starts_with('#') {
        anyhow::bail!("the name must be one word (no spaces, not starting with #)");
    }
    if scopes.is_empty() {
        anyhow::bail!("give at least one scope: read, write, delete, admin");
    }
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let token = format!("gifts_{}", URL_SAFE_NO_PAD.encode(random));
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    Ok((token, format!("{name} {} {hash}", scopes.join(","))))
}

/// Parses `read,write` for `gifts token new --scopes`.
pub fn parse_scopes(text: &str) -> Result<Vec<Scope>, String> {
    text.split(',')
        .map(|s| {
            Scope::parse(s.trim())
                .ok_or_else(|| format!("unknown scope {s:?}: read, write, delete or admin"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_token_is_found_by_its_line_and_nothing_else_is() {
        let dir = tempfile::tempdir().unwrap();
        let (token, line) = new_token("analyst", &[Scope::Read]).unwrap();
        assert!(token.starts_with("gifts_") && token.len() == 49, "{token}");
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("# comment\n\n{line}\n")).unwrap();
        let tokens = Tokens::load(&path).unwrap();
        assert_eq!(
            tokens.identify(&token),
            Some(("analyst".into(), vec![Scope::Read]))
        );
        assert_eq!(tokens.identify("gifts_wrong"), None);
        assert_eq!(tokens.identify(""), None);
        assert!(
            !std::fs::read_to_string(&path).unwrap().contains(&token),
            "only the hash is stored"
        );
    }

    #[test]
    fn a_tokens_file_that_does_not_parse_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        for (text, wanted) in [
            ("only two", "expected NAME SCOPES SHA256"),
            (
                "a read,fly 0000000000000000000000000000000000000000000000000000000000000000",
                "unknown scope \"fly\"",
            ),
            ("a read 1234", "64 hex digits"),
        ] {
            std::fs::write(&path, text).unwrap();
            let error = Tokens::load(&path).err().expect("refused").to_string();
            assert!(error.contains(":1: ") && error.contains(wanted), "{error}");
        }
    }
}
