//! Where Tarantool is and as whom: `tarantool://USER:PASSWORD@HOST:PORT`
//! (or `tarantool://USER@HOST:PORT` with the password from a file), shown
//! without its password.

/// How to reach Tarantool.
#[derive(Clone, PartialEq, Eq)]
pub struct TarantoolAddress {
    /// `HOST:PORT`.
    pub host_port: String,
    /// User name.
    pub user: String,
    /// Password (never logged); `None` until `--storage-password-file` gives it.
    pub password: Option<Secret>,
}

impl std::fmt::Debug for TarantoolAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.password {
            Some(password) => write!(f, "tarantool://{}:{password}@{}", self.user, self.host_port),
            None => write!(f, "tarantool://{}@{}", self.user, self.host_port),
        }
    }
}

impl std::str::FromStr for TarantoolAddress {
    type Err = String;

    /// `tarantool://USER:PASSWORD@HOST:PORT`; the password may hold `@` and
    /// `:`. Without `:PASSWORD` the password must come from a file.
    fn from_str(s: &str) -> Result<Self, String> {
        let form = "expected tarantool://USER:PASSWORD@HOST:PORT";
        let rest = s.strip_prefix("tarantool://").ok_or(form)?;
        // The host part has no '@', so the last one ends the credentials.
        let (credentials, host_port) = rest.rsplit_once('@').ok_or(form)?;
        let (user, password) = match credentials.split_once(':') {
            Some((user, password)) => (user, Some(Secret::new(password))),
            None => (credentials, None),
        };
        let (host, port) = host_port.rsplit_once(':').ok_or(form)?;
        if user.is_empty() || host.is_empty() || port.parse::<u16>().is_err() {
            return Err(form.into());
        }
        Ok(TarantoolAddress {
            host_port: host_port.to_owned(),
            user: user.to_owned(),
            password,
        })
    }
}

/// A password: shown as `***` by `Debug` and `Display`, so it cannot end
/// up in a log or an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The password itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}
