//! Who may do what on the broker: nkey identities, their permissions as nats-server
//! configuration, and connecting as one of them.
//!
//! An identity is an nkey pair; the server knows only its public key and its permissions, the
//! client proves itself with the seed (kept in a file readable by its owner only). A NATS
//! `.creds` file (JWT plus seed, from an operator running decentralized auth) works as well.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::BusError;

/// Proof of identity for a connection.
#[derive(Clone)]
pub enum Credentials {
    /// An nkey seed (`SU…`).
    Nkey(String),
    /// A NATS `.creds` file (user JWT and seed).
    CredsFile(PathBuf),
}

/// Never shows a seed.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Nkey(seed) => match nkeys::KeyPair::from_seed(seed) {
                Ok(pair) => write!(f, "Nkey({})", pair.public_key()),
                Err(_) => f.write_str("Nkey(unreadable)"),
            },
            Credentials::CredsFile(path) => write!(f, "CredsFile({})", path.display()),
        }
    }
}

impl Credentials {
    /// Read a credentials file: an nkey seed file, or a NATS `.creds` file.
    pub fn from_file(path: &Path) -> Result<Credentials, BusError> {
        let unreadable = |why: String| BusError::Credentials {
            path: path.to_path_buf(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| unreadable(e.to_string()))?;
        if text.contains("BEGIN NATS USER JWT") {
            return Ok(Credentials::CredsFile(path.to_path_buf()));
        }
        let seed = text.trim();
        nkeys::KeyPair::from_seed(seed)
            .map_err(|_| unreadable("neither an nkey seed nor a NATS .creds file".into()))?;
        Ok(Credentials::Nkey(seed.to_string()))
    }

    /// Add these credentials to `options`.
    pub async fn apply(
        &self,
        options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, BusError> {
        match self {
            Credentials::Nkey(seed) => Ok(options.nkey(seed.clone())),
            Credentials::CredsFile(path) => {
                options
                    .credentials_file(path)
                    .await
                    .map_err(|e| BusError::Credentials {
                        path: path.clone(),
                        why: e.to_string(),
                    })
            }
        }
    }
}

/// A new identity: its public key (for the server) and its seed (for the client).
pub fn new_identity() -> Result<(String, Credentials), BusError> {
    let pair = nkeys::KeyPair::new_user();
    let seed = pair
        .seed()
        .map_err(|e| BusError::Server(format!("cannot make an nkey: {e}")))?;
    Ok((pair.public_key(), Credentials::Nkey(seed)))
}

/// The public key of an nkey seed.
pub fn public_key(credentials: &Credentials) -> Option<String> {
    match credentials {
        Credentials::Nkey(seed) => nkeys::KeyPair::from_seed(seed).ok().map(|p| p.public_key()),
        Credentials::CredsFile(_) => None,
    }
}

/// Write `seed` to `path`, readable and writable by its owner only (0600), atomically.
pub fn write_seed(path: &Path, credentials: &Credentials) -> Result<(), BusError> {
    let Credentials::Nkey(seed) = credentials else {
        return Err(BusError::Credentials {
            path: path.to_path_buf(),
            why: "only nkey seeds are written".into(),
        });
    };
    write_private(path, seed.as_bytes()).map_err(|e| BusError::Credentials {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

/// Write a secret to `path`, readable and writable by its owner only (0600), atomically: it
/// is never seen half-written nor with wider permissions.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let partial = path.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&partial, path)
}

/// What one identity may publish and subscribe to. Anything not allowed is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// May answer requests it received (micro endpoints), on their reply subjects only.
    pub allow_responses: bool,
}

impl Permissions {
    /// Everything (an administrator of a broker of its own, as in tests).
    pub fn all() -> Permissions {
        Permissions {
            publish: vec![">".into()],
            subscribe: vec![">".into()],
            allow_responses: false,
        }
    }
}

/// The nats-server `authorization` block for these users (public key, permissions). A client
/// without credentials of one of them is refused.
pub fn authorization_config(users: &[(String, Permissions)]) -> String {
    let list = |subjects: &[String]| {
        let quoted: Vec<String> = subjects.iter().map(|s| format!("{s:?}")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let mut out = String::from("authorization {\n  users = [\n");
    for (key, p) in users {
        out.push_str(&format!(
            "    {{ nkey: {key:?}, permissions: {{ publish: {{ allow: {} }}, \
             subscribe: {{ allow: {} }}{} }} }}\n",
            list(&p.publish),
            list(&p.subscribe),
            if p.allow_responses {
                ", allow_responses: true"
            } else {
                ""
            },
        ));
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_file_reads_back_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("order.nk");
        let (key, credentials) = new_identity().unwrap();
        write_seed(&path, &credentials).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let read = Credentials::from_file(&path).unwrap();
        assert_eq!(public_key(&read), Some(key.clone()));
        // Debug shows the public key, never the seed.
        let Credentials::Nkey(seed) = &read else {
            panic!("an nkey")
        };
        let shown = format!("{read:?}");
        assert!(shown.contains(&key) && !shown.contains(seed.as_str()));
    }

    #[test]
    fn anything_else_is_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk");
        std::fs::write(&path, "hello").unwrap();
        let e = Credentials::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("junk") && e.contains("nkey"), "{e}");
    }

    #[test]
    fn the_config_lists_each_user_with_its_permissions() {
        let p = Permissions {
            publish: vec!["orders.>".into()],
            subscribe: vec!["_INBOX_order.>".into()],
            allow_responses: true,
        };
        let text = authorization_config(&[("UKEY".into(), p)]);
        assert!(text.contains(r#"nkey: "UKEY""#), "{text}");
        assert!(
            text.contains(r#"publish: { allow: ["orders.>"] }"#),
            "{text}"
        );
        assert!(text.contains("allow_responses: true"), "{text}");
    }
}
