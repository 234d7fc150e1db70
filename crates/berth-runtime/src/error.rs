use std::path::PathBuf;

/// Errors of the runtime. Messages are written for the person at the terminal: they say
/// what failed and on which object, as runc's do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container with id {0:?} already exists")]
    Exists(String),
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("invalid container id {0:?}: use letters, digits, '_', '-', '.' and '+' only")]
    InvalidId(String),
    #[error("cannot read bundle config {path}: {source}")]
    Config {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid bundle config {path}: {msg}")]
    InvalidConfig { path: PathBuf, msg: String },
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("cannot {action} container {id:?} in state {status}")]
    BadState {
        id: String,
        action: &'static str,
        status: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("cgroups: {0}")]
    Cgroup(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("hook {path} failed: {msg}")]
    Hook { path: PathBuf, msg: String },
    #[error("container init failed: {0}")]
    Init(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Attaches a description to an io::Error.
pub trait Context<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}
